"""Graph analysis for mixed precision: which nodes stay float in int8 builds and which stay fp32 in fp16 builds.

Groups, chosen per model by measurement (see docs/benchmarks/cpu.md):
- `first_conv`: convolutions that read the network input (3 input channels, little compute, large error).
- `depthwise`: grouped convolutions (int8 depthwise kernels are slower than fp32 ones in ONNX Runtime on x86).
- `heads`: the last convolutions, whose outputs feed no other convolution (box / landmark regressions).
- `early:N`: the first N convolutions in graph order (high-resolution, memory-bound layers where int8 adds
  quantize / layout-conversion passes without saving compute).
- `outside:PREFIX`: convolutions whose node name (the exporter's module path) does not start with PREFIX, e.g.
  `outside:/backbone/` keeps a detector's heads float and quantizes backbone + FPN only.
- `tail`: every non-convolution node downstream of the heads (reshape, softmax, prior decode): kept fp32 in fp16
  builds so that pixel coordinates are not rounded to fp16.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
FLOAT_GROUPS = ("first_conv", "depthwise", "heads")


def _index(model: onnx.ModelProto):
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for t in node.input:
            consumers[t].append(node)
    return consumers


def reaches_compute(model: onnx.ModelProto) -> dict[str, bool]:
    """node name -> whether some Conv/MatMul/Gemm lies strictly downstream of it."""
    consumers = _index(model)
    memo: dict[str, bool] = {}
    nodes = list(model.graph.node)
    for node in reversed(nodes):  # graph.node is topologically sorted
        memo[node.name] = any(
            c.op_type in COMPUTE_OPS or memo.get(c.name, False) for out in node.output for c in consumers.get(out, [])
        )
    return memo


def name_nodes(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def float_nodes(model: onnx.ModelProto, groups: tuple[str, ...]) -> dict[str, list[str]]:
    """Names of the Conv nodes of each requested group."""
    unknown = {g for g in groups if g not in FLOAT_GROUPS and not g.startswith(("early:", "outside:"))}
    if unknown:
        raise ValueError(f"unknown float groups {sorted(unknown)}")
    inputs = {i.name for i in model.graph.input}
    down = reaches_compute(model)
    init = {t.name: t for t in model.graph.initializer}
    out: dict[str, list[str]] = {g: [] for g in groups}
    early = max((int(g.split(":", 1)[1]) for g in groups if g.startswith("early:")), default=0)
    outside = [g for g in groups if g.startswith("outside:")]
    n_conv = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        for g in outside:
            if not node.name.startswith(g.split(":", 1)[1]):
                out[g].append(node.name)
        n_conv += 1
        if n_conv <= early:
            out[f"early:{early}"].append(node.name)
        if "first_conv" in groups and node.input[0] in inputs:
            out["first_conv"].append(node.name)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if "depthwise" in groups and group > 1:
            w = init.get(node.input[1])
            if w is None or w.dims[1] == 1:
                out["depthwise"].append(node.name)
        if "heads" in groups and not down[node.name]:
            out["heads"].append(node.name)
    return out


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    down = reaches_compute(model)
    return [n.name for n in model.graph.node if n.op_type not in COMPUTE_OPS and not down[n.name]]


# ------------------------------------------------------------------------------------- fp16: nodes kept fp32
# A model's `fp16_keep_ops` (export metadata) names op types an fp16 build keeps fp32: for transformers
# LayerNormalization (its variance overflows fp16) and Softmax. Softmax also keeps its attention MatMuls fp32:
# the MatMul that produces the logits (reached upstream through the scale / bias / layout ops in between, kept
# too) and the MatMuls that read the probabilities (the attention-weighted sum), where fp16 products overflow
# or lose the small weights.

_LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast")
_AFFINE_OPS = ("Mul", "Div", "Add", "Sub")
_MATMULS = ("MatMul", "Gemm")


def _constants(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs, and Identity / Cast copies of them (the torchscript exporter shares a
    weight through Identity nodes)."""
    consts = {t.name for t in model.graph.initializer}
    for n in model.graph.node:  # topological order
        if n.op_type == "Constant" or (n.op_type in ("Identity", "Cast") and all(t in consts for t in n.input)):
            consts.update(n.output)
    return consts


def _attention_matmuls(softmax: onnx.NodeProto, consts: set[str], producers: dict[str, onnx.NodeProto],
                       consumers: dict[str, list[onnx.NodeProto]], max_hops: int = 8) -> list[str]:
    out: list[str] = []
    # upstream: Softmax <- (layout / affine-with-a-constant ops)* <- MatMul
    chain: list[str] = []
    tensor = softmax.input[0]
    for _ in range(max_hops):
        node = producers.get(tensor)
        if node is None:
            break
        if node.op_type in _MATMULS:
            out += chain + [node.name]
            break
        live = [t for t in node.input if t and t not in consts]
        if node.op_type in _LAYOUT_OPS or (node.op_type in _AFFINE_OPS and len(live) == 1):
            chain.append(node.name)
            tensor = node.input[0] if node.op_type in _LAYOUT_OPS or not live else live[0]
            continue
        break
    # downstream: Softmax -> (layout ops)* -> MatMul
    frontier, hops = [softmax.output[0]], 0
    while frontier and hops < max_hops:
        nxt = []
        for t in frontier:
            for c in consumers.get(t, []):
                if c.op_type in _MATMULS:
                    out.append(c.name)
                elif c.op_type in _LAYOUT_OPS:
                    nxt += list(c.output)
        frontier, hops = nxt, hops + 1
    return out


def outside_scope(model: onnx.ModelProto, scope: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the nodes outside every prefix of `scope` (node names are the exporter's module paths); empty
    `scope` -> none. An fp16 build keeps these fp32: e.g. a detector's box geometry between its networks."""
    scope = tuple(scope or ())
    return [n.name for n in model.graph.node if scope and not n.name.startswith(scope)]


def fp16_keep_nodes(model: onnx.ModelProto, keep_ops: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the nodes an fp16 build keeps fp32 for `keep_ops` (op types; with "Softmax", its attention
    MatMuls too). Empty `keep_ops` -> nothing (the build is as before). Call name_nodes first."""
    keep_ops = tuple(keep_ops or ())
    if not keep_ops:
        return []
    consts = _constants(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = _index(model)
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in keep_ops:
            names.append(node.name)
        if node.op_type == "Softmax" and "Softmax" in keep_ops:
            names += _attention_matmuls(node, consts, producers, consumers)
    return list(dict.fromkeys(names))

"""Graph analysis for mixed precision: which nodes stay float in int8 builds and which stay fp32 in fp16 builds.

Groups, chosen per model by measurement (see docs/benchmarks/cpu.md):
- `first_conv`: convolutions that read the network input (3 input channels, little compute, large error).
- `depthwise`: grouped convolutions (int8 depthwise kernels are slower than fp32 ones in ONNX Runtime on x86).
- `heads`: the last convolutions, whose outputs feed no other convolution (box / landmark regressions).
- `early:N`: the first N convolutions in graph order (high-resolution, memory-bound layers where int8 adds
  quantize / layout-conversion passes without saving compute).
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
    unknown = {g for g in groups if g not in FLOAT_GROUPS and not g.startswith("early:")}
    if unknown:
        raise ValueError(f"unknown float groups {sorted(unknown)}")
    inputs = {i.name for i in model.graph.input}
    down = reaches_compute(model)
    init = {t.name: t for t in model.graph.initializer}
    out: dict[str, list[str]] = {g: [] for g in groups}
    early = max((int(g.split(":", 1)[1]) for g in groups if g.startswith("early:")), default=0)
    n_conv = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
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

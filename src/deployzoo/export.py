"""Export a registered model to ONNX (fixed or dynamic batch, dynamic H x W for original-size input), check it
with onnx.checker, and measure ONNX Runtime against eager PyTorch on the same input."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from deployzoo.checkpoint import file_sha256
from deployzoo.engine import RANDOM_WEIGHTS_WARNING, now_iso, versions
from deployzoo.files import atomic_write_file, check_output_file
from deployzoo.errors import DeployzooError
from deployzoo.models.base import DeployModule
from deployzoo.registry import ModelSpec, get_model
from deployzoo.weights import resolve_weights

log = logging.getLogger(__name__)

META_KEY = "deployzoo"
ORIGIN_PROBE_HW = (480, 640)


@dataclass
class ExportResult:
    path: Path
    meta: dict[str, Any]
    max_abs_diff: dict[str, float]


def parse_imgsz(imgsz: Any) -> Any:
    """'origin' | [H, W] | 'H W' | 'HxW' | int -> 'origin' or [H, W]."""
    if imgsz is None or imgsz == "origin" or imgsz == ["origin"]:
        return "origin"
    if isinstance(imgsz, (list, tuple)):
        vals = [str(v) for v in imgsz]
        if len(vals) == 1:
            return parse_imgsz(vals[0])
    else:
        vals = str(imgsz).lower().replace("x", " ").replace(",", " ").split()
        if vals == ["origin"]:
            return "origin"
    try:
        nums = [int(v) for v in vals]
    except ValueError:
        raise DeployzooError(f"--imgsz: expected 'origin' or H W, got {imgsz!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 32:
        raise DeployzooError(f"--imgsz: expected 'origin' or H W with both >= 32, got {imgsz!r}")
    return nums


def weights_info(weights: str | Path | None, seed: int) -> dict[str, Any]:
    if weights is None:
        return {"path": None, "sha256": None, "random": True, "seed": seed}
    p = Path(weights)
    return {"path": str(p.resolve()), "sha256": file_sha256(p), "random": False, "seed": None}


def build_deploy_module(spec: ModelSpec, variant: str, weights: str | Path | None, seed: int = 0) -> DeployModule:
    if weights is None:
        log.warning("%s %s: no --weights given, using random init (%s)", spec.name, variant, RANDOM_WEIGHTS_WARNING)
        torch.manual_seed(seed)
    net = spec.build(variant, weights)
    return spec.deploy(net).eval()


def probe_input(imgsz: Any, batch: int, seed: int = 0, norm: dict[str, Any] | None = None) -> torch.Tensor:
    """Random 8-bit-range pixels, normalised with `norm`'s mean / std (default: minus 120, as RetinaFace's mean)."""
    h, w = ORIGIN_PROBE_HW if imgsz == "origin" else imgsz
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, h, w, generator=g) * 255.0
    if norm is None:
        return x - 120.0
    mean = torch.tensor(norm.get("mean", [0.0] * 3), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(norm.get("std", [1.0] * 3), dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def export_onnx(
    model: str,
    out: str | Path,
    *,
    variant: str | None = None,
    weights: str | Path | None = None,
    weights_sha256: str | None = None,
    imgsz: Any = None,
    batch: int | None = 1,
    opset: int | None = None,
    exporter: str | None = None,
    seed: int = 0,
    check_parity: bool = True,
) -> ExportResult:
    """Export to ONNX. `batch=None` gives a dynamic batch axis (1..spec.max_batch advertised); `imgsz='origin'`
    dynamic H, W. `exporter` / `opset` default to the model's (ModelSpec.exporter, .opset). `weights`: a FILE,
    `official` or an http(s) URL (deployzoo.weights.resolve_weights; checked against `weights_sha256`)."""
    check_output_file(out, is_deployzoo_onnx, "an ONNX file exported by deployzoo")
    spec = get_model(model)
    variant = spec.check_variant(variant)
    exporter = exporter or spec.exporter
    opset = opset or spec.opset
    imgsz = parse_imgsz(imgsz if imgsz is not None else spec.default_imgsz[variant])
    if opset < 17:
        raise DeployzooError(f"--opset {opset}: deployzoo exports opset >= 17")
    if batch is not None and batch < 1:
        raise DeployzooError(f"--batch {batch}: must be >= 1")
    if spec.input.get("fixed_size") and imgsz != spec.default_imgsz[variant]:
        want = "x".join(map(str, spec.default_imgsz[variant]))
        raise DeployzooError(f"{spec.name}: the network takes {want} inputs only (--imgsz {want})")
    if spec.input.get("origin_only") and imgsz != "origin":
        raise DeployzooError(f"{spec.name}: pre-processing resizes each image itself (keep ratio, "
                             f"{'x'.join(map(str, spec.input.get('resize', [])))}); export with --imgsz origin")
    weights = resolve_weights(spec, variant, weights, sha256=weights_sha256)
    module = build_deploy_module(spec, variant, weights, seed)
    # dynamo specialises a dynamic batch axis traced at size 1 (timm's VOLO slices hit it): trace at 2
    spec_in = spec.input_for(variant)
    x = probe_input(imgsz, batch or (2 if exporter == "dynamo" else 1), seed, spec_in)
    inputs = graph_inputs(module, x)
    out = Path(out)
    in_names = list(module.input_names)
    in_name = in_names[0]
    dyn_axes: dict[str, dict[int, str]] = {n: ({0: "batch"} if batch is None else {}) for n in in_names}
    if imgsz == "origin":
        dyn_axes[in_name].update({2: "height", 3: "width"})
    out_axes = module.output_axes  # graphs whose outputs are not per-image (flat detections)
    for name in spec.output_names:
        if out_axes is not None:
            dyn_axes[name] = dict(out_axes.get(name, {}))
        else:
            dyn_axes[name] = ({0: "batch"} if batch is None else {}) | ({1: "anchors"} if imgsz == "origin" else {})
    meta = {
        "model": spec.name,
        "variant": variant,
        "task": spec.task,
        "input": dict(spec_in, name=in_name, imgsz=imgsz, dtype="float32", extra_inputs=in_names[1:]),
        "batch": {"dynamic": True, "min": 1, "max": spec.max_batch} if batch is None else {"dynamic": False, "size": batch},
        "outputs": list(spec.output_names),
        "postprocess": spec.post_for(variant),
        "fp16_keep_ops": list(spec.fp16_keep_ops),
        "fp16_scope": list(spec.fp16_scope),
        "weights": weights_info(weights, seed),
        "export": {"opset": opset, "exporter": exporter, "created": now_iso(), "versions": versions()},
    }

    def _write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(
                    module, inputs, str(tmp), input_names=in_names, output_names=list(spec.output_names),
                    opset_version=opset, dynamic_axes={k: v for k, v in dyn_axes.items() if v}, dynamo=False,
                )
            elif exporter == "dynamo":
                shapes = {}
                if batch is None:
                    shapes[0] = torch.export.Dim("batch", min=1, max=spec.max_batch)
                if imgsz == "origin":
                    shapes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
                if len(in_names) > 1:
                    raise DeployzooError(f"{spec.name}: its graph has several inputs; export it with --exporter torchscript")
                prog = torch.onnx.export(
                    module, inputs, input_names=in_names, output_names=list(spec.output_names),
                    opset_version=max(opset, 18), dynamic_shapes=({"x": shapes} if shapes else None), dynamo=True,
                )
                prog.save(str(tmp))
            else:
                raise DeployzooError(f"--exporter {exporter!r}: choose torchscript or dynamo")
        m = onnx.load(str(tmp))
        if batch is None and not m.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
            raise DeployzooError(f"{spec.name}: the {exporter} exporter fixed the batch axis; export with --batch N "
                                 "or the other exporter")
        meta["export"]["rewrites"] = simplify_activations(m)
        m.metadata_props.append(onnx.StringStringEntryProto(key=META_KEY, value=json.dumps(meta)))
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(tmp))

    atomic_write_file(out, _write)
    diffs: dict[str, float] = {}
    if check_parity:
        diffs = ort_vs_torch(out, module, imgsz, batch, spec_in)
    meta["export"]["ort_vs_torch_max_abs_diff"] = diffs
    return ExportResult(out, meta, diffs)


def simplify_activations(model: onnx.ModelProto) -> dict[str, int]:
    """Graph rewrite, model code untouched: LeakyRelu with alpha 0 (the official RetinaFace-R50 writes
    `LeakyReLU(negative_slope=0)`) is exactly Relu, which runtimes fuse into the preceding (quantized) Conv."""
    n = 0
    for node in model.graph.node:
        if node.op_type == "LeakyRelu":
            alpha = next((a.f for a in node.attribute if a.name == "alpha"), 0.01)
            if alpha == 0.0:
                node.op_type = "Relu"
                del node.attribute[:]
                n += 1
    return {"leakyrelu0_to_relu": n}


def graph_inputs(module: DeployModule, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every graph input for an image batch `x` (DeployModule.example_inputs)."""
    return tuple(module.example_inputs(x))


def ort_vs_torch(onnx_path: str | Path, module: DeployModule, imgsz: Any, batch: int | None,
                 norm: dict[str, Any] | None = None) -> dict[str, float]:
    """Max abs difference per output, ONNX Runtime (CPU) vs eager PyTorch, on random inputs (two sizes when
    the input size is dynamic, two batch sizes when the batch is), as the module's `parity` measures them (its
    own pairing for outputs whose length depends on the data, e.g. detections)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probes = [probe_input(imgsz, batch or 1, 1, norm)]
    if imgsz == "origin":
        probes.append(probe_input([333, 517], batch or 2, 2, norm))
    elif batch is None:
        probes.append(probe_input(imgsz, 2, 2, norm))
    names = [o.name for o in sess.get_outputs()]
    diffs: dict[str, float] = {}
    for x in probes:
        inputs = graph_inputs(module, x)
        got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})
        with torch.no_grad():
            ref = [t.numpy() for t in module(*inputs)]
        merge_worst(diffs, output_diffs(module, dict(zip(names, got)), dict(zip(names, ref))))
    return diffs


def output_diffs(module: DeployModule, got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Differences of one probe's outputs (DeployModule.parity: max abs difference per output by default)."""
    return module.parity(got, ref)


def merge_worst(acc: dict[str, float], d: dict[str, float]) -> None:
    """Keep the worst value per key over probes: the largest, or the smallest for `min_` keys (e.g. mask IoU)."""
    for k, v in d.items():
        acc[k] = max(acc.get(k, v), v) if not k.startswith("min_") else min(acc.get(k, v), v)


def is_deployzoo_onnx(path: str | Path) -> bool:
    """Whether `path` is an ONNX file that `export` wrote (the only kind of file `export -o` overwrites)."""
    try:
        read_onnx_meta(path)
        return True
    except DeployzooError:
        return False


def read_onnx_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise DeployzooError(f"{p}: ONNX file not found")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others
        raise DeployzooError(f"{p}: not a readable ONNX model ({type(exc).__name__})") from None
    for prop in m.metadata_props:
        if prop.key == META_KEY:
            return json.loads(prop.value)
    raise DeployzooError(f"{p}: ONNX file was not exported by deployzoo (no '{META_KEY}' metadata); use `deployzoo export`")

"""ONNX Runtime backend: fp32, fp16 (float16 graph, fp32 I/O, decode tail in fp32) and int8 (static QDQ,
calibrated, with the groups of convolutions that cost accuracy or speed kept in float)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from deployzoo.backends.base import Capabilities
from deployzoo.engine import Engine, engine_feeds
from deployzoo.errors import DeployzooError
from deployzoo.quant import recipes

if TYPE_CHECKING:
    from deployzoo.request import BuildRequest, Graph, Recipe

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"


def providers(device: str | None) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    if device in (None, "auto") or str(device).startswith("cuda"):
        if "CUDAExecutionProvider" in avail:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device not in (None, "auto"):
            raise DeployzooError(f"--device {device}: onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


def check_graph(session: Any, engine: Engine, path: Path) -> None:
    """The model file's own inputs, outputs and shapes agree with the manifest (input names, batch fixed or
    dynamic and its size, H x W fixed or dynamic and its value, output names); a mismatch is one line naming the
    manifest key."""
    where = engine.manifest_path
    spec, b = engine.input, engine.batch
    names = [i.name for i in session.get_inputs()]
    want = spec.input_names
    if names != want:
        raise DeployzooError(f"{where}: manifest key 'input.name' / 'input.extra_inputs' {want} disagree with the "
                             f"inputs of {path.name} {names}")
    shape = list(session.get_inputs()[0].shape)
    if len(shape) != 4:
        raise DeployzooError(f"{where}: {path.name} takes a {len(shape)}-d input, not N x C x H x W")
    fixed = [d if isinstance(d, int) else None for d in shape]
    if b.dynamic and fixed[0] is not None:
        raise DeployzooError(f"{where}: manifest key 'batch' says dynamic {b.min}..{b.max}, but "
                             f"{path.name} fixes the batch at {fixed[0]}")
    if not b.dynamic and fixed[0] != b.size:
        raise DeployzooError(f"{where}: manifest key 'batch.size' {b.size} disagrees with {path.name}'s batch "
                             f"{'axis (dynamic)' if fixed[0] is None else fixed[0]}")
    sz = spec.imgsz
    if not spec.origin and fixed[2:] != [None, None] and fixed[2:] != list(sz):
        raise DeployzooError(f"{where}: manifest key 'input.imgsz' {list(sz)} disagrees with {path.name}'s input H x W "
                             f"{fixed[2]} x {fixed[3]}")
    if spec.origin and None not in fixed[2:]:
        raise DeployzooError(f"{where}: manifest key 'input.imgsz' says 'origin' (any H x W), but {path.name} fixes "
                             f"it at {fixed[2]} x {fixed[3]}")
    outs = [o.name for o in session.get_outputs()]
    if outs != list(engine.outputs):
        raise DeployzooError(f"{where}: manifest key 'outputs' {list(engine.outputs)} disagrees with {path.name}'s "
                             f"outputs {outs}")


class OrtRunner:
    def __init__(self, engine: Engine, threads: int | None, device: str | None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if engine.input.origin:
            # every batch has its own H x W: ORT's memory patterns (planned per shape, kept for every shape seen)
            # only grow the arena; measured on Mask R-CNN COCO128 bs 4: 9.2 GiB peak with them, ~3-4 GiB without,
            # and no slower (docs/benchmarks/cpu.md)
            so.enable_mem_pattern = False
        self.engine = engine
        path = engine.model_path
        self.providers = providers(device)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise DeployzooError(f"{path}: ONNX Runtime cannot load the engine: {str(exc).splitlines()[0][:200]}") from None
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        check_graph(self.session, engine, path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, engine_feeds(self.engine.input, x))
        return dict(zip(self.output_names, outs))

    takes_tensors = False  # host arrays only (ORT's own CUDA stream; no torch tensors in or out)

    def synchronize(self) -> None:
        pass  # session.run returns when the outputs are on the host

    def peak_memory_bytes(self) -> int | None:
        return None


class OrtBackend:
    name = "ort"
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), devices=("cpu", "cuda"), uses_recipe=True)

    def build(self, graph: Graph, out_dir: Path, request: BuildRequest) -> dict[str, Any]:
        dst = out_dir / MODEL_FILE
        info: dict[str, Any] = {"model_file": MODEL_FILE, "providers": providers(None)}
        t0 = time.perf_counter()
        if request.precision == "fp32":
            shutil.copyfile(graph.path, dst)
        elif request.precision == "fp16":
            info["fp16"] = self._fp16(graph.path, dst, request.recipe)
        else:  # int8 (capabilities: BuildRequest.create refused anything else, and int8 without calibration)
            info["quantization"] = self._int8(graph, dst, request)
        info["build_seconds"] = round(time.perf_counter() - t0, 2)
        return info

    def load(self, engine: Engine, threads: int | None = None, device: str | None = None) -> OrtRunner:
        return OrtRunner(engine, threads, device)

    # ------------------------------------------------------------------ fp16
    @staticmethod
    def _fp16(src: Path, dst: Path, recipe: Recipe | None = None) -> dict[str, Any]:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(src))
        recipes.name_nodes(model)
        keep = recipes.tail_nodes(model)
        kept = set(keep)

        def keep_also(names: list[str]) -> int:
            new = [n for n in dict.fromkeys(names) if n not in kept]
            kept.update(new)
            keep.extend(new)
            return len(new)

        info: dict[str, Any] = {"rule": "post-head decode tail kept fp32; inputs/outputs fp32"}
        # per-model op types kept fp32 (the recipe's; empty for models without such ops: build unchanged)
        keep_ops = list(recipe.fp16_keep_ops if recipe else ())
        if keep_ops:
            info["keep_ops"] = keep_ops
            info["keep_ops_nodes"] = keep_also(recipes.fp16_keep_nodes(model, keep_ops))
            info["rule"] += f"; {', '.join(keep_ops)} (and the attention MatMuls around Softmax) kept fp32"
        scope = list(recipe.fp16_scope if recipe else ())
        if scope:  # only these modules run fp16: box decode, NMS and RoI geometry between them stay fp32
            keep_also(recipes.outside_scope(model, scope))
            info["fp16_scope"] = scope
            info["rule"] += f"; only nodes under {', '.join(scope)} in fp16"
        m16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep, disable_shape_infer=False)
        onnx.save(m16, str(dst))
        return {"fp32_nodes": len(keep), **info}

    # ------------------------------------------------------------------ int8
    @staticmethod
    def _int8(graph: Graph, dst: Path, request: BuildRequest) -> dict[str, Any]:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from deployzoo.quant.calib import CalibReader
        from deployzoo.registry import get_task

        src, recipe = graph.path, request.recipe
        calib = request.calibration.images  # read by build() before the backend is called
        groups = recipe.float_groups
        op_types = list(recipe.op_types)
        # op types whose outputs stay float (no QuantizeLinear after them; default none): for transformers the
        # MatMuls, so ORT runs them as int8 products with float outputs and LayerNorm / Softmax / GELU read float
        exclude_out = list(recipe.exclude_output_ops)
        extra: dict[str, Any] = {"CalibMovingAverage": False, "ActivationSymmetric": False}
        if exclude_out:
            extra["OpTypesToExcludeOutputQuantization"] = exclude_out
        # a fixed-batch graph is calibrated at its batch
        reader = CalibReader(calib, get_task(graph.task), graph.input, graph.batch.default())
        # a set with no usable image (or fewer than a fixed batch) is one line naming the calibration directory,
        # here, before the pre-pass and calibration; ORT would end in "No data is collected." after them
        reader.check_usable()
        pre = dst.with_name("pre_quant.onnx")
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - retry without the symbolic pass, then the plain graph
            # ORT's symbolic shape inference fails on some dynamo-exported transformer graphs (VOLO); ONNX shape
            # inference + the ORT graph optimisation of the pre-pass still work there
            log.info("quantization pre-processing: symbolic shape inference failed (%s); retrying without it", exc)
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            except Exception as exc2:  # noqa: BLE001 - fall back to the plain graph if the pre-pass fails
                log.warning("quantization pre-processing failed (%s); quantizing the exported graph as is", exc2)
                shutil.copyfile(src, pre)
        model = onnx.load(str(pre))
        recipes.name_nodes(model)
        onnx.save(model, str(pre))
        kept = recipes.float_nodes(model, groups)
        exclude = sorted({n for names in kept.values() for n in names} | set(recipes.tail_nodes(model)))
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[calib.method]
        quantize_static(
            str(pre), str(dst), reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            calibrate_method=method,
            op_types_to_quantize=op_types,
            nodes_to_exclude=exclude,
            extra_options=extra,
        )
        pre.unlink(missing_ok=True)
        if reader.used == 0:
            raise DeployzooError(f"{calib.root}: no readable calibration image")
        convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
        float_convs = sorted({n for names in kept.values() for n in names})
        return {
            "format": "QDQ", "activations": "uint8 per-tensor asymmetric", "weights": "int8 per-channel symmetric",
            "op_types": op_types, "float_groups": list(groups),
            **({"float_outputs": exclude_out} if exclude_out else {}),
            "float_convs": {g: len(v) for g, v in kept.items()},
            "int8_convs": convs - len(float_convs), "total_convs": convs,
            "calibration_images_used": reader.used,
        }

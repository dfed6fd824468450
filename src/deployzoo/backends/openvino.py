"""OpenVINO backend (CPU): our exported ONNX read by OpenVINO and saved as IR (model.xml + model.bin).

- fp32 forces INFERENCE_PRECISION_HINT f32: on a CPU with bf16 (AVX-512 BF16, AMX) OpenVINO otherwise runs bf16
  without saying so; bf16 and fp16 are that hint set to bf16 / f16 (the IR keeps fp32 weights), refused in one
  line on a CPU that lacks them (machine_problem: without FP16 OpenVINO runs an f16 hint as bf16);
- int8 is NNCF post-training quantization (nncf.quantize, fast bias correction) on the request's calibration
  images, pre-processed by the task as predict does; the parts NNCF leaves float run f32. The request's recipe
  says what stays float: its float groups (quant/recipes.py, e.g. chosen by the int8 planner) become NNCF's
  ignored scope, and MatMuls stay float unless its op types quantize MatMul / Gemm (a classifier's last linear
  layer loses the most for the least time). Activations are quantized asymmetrically (NNCF's MIXED preset, the
  one it uses for transformers): on MobileNetV1 x0.25 the symmetric default cost about a top-1 point more;
- the performance hint is a build option: LATENCY (one stream, the default) or THROUGHPUT (several streams; a
  batch is split into per-image requests run concurrently on an async infer queue when every output is per-image);
- the manifest records what the compiled model reports back: inference precision, streams, infer requests.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deployzoo.backends.base import Capabilities
from deployzoo.engine import Engine, engine_feeds
from deployzoo.errors import DeployzooError

if TYPE_CHECKING:
    from deployzoo.request import BuildRequest, Graph

log = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
HINT_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
PERF_HINTS = ("latency", "throughput")
READ_BACK = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}  # hint -> the type the compiled model reports
CPU_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}  # precision -> the OPTIMIZATION_CAPABILITIES entry it needs


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    return tuple(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def machine_problem(precision: str) -> str | None:
    """Why this CPU cannot run `precision` through OpenVINO (None: it can). Without FP16 OpenVINO runs an f16 hint
    as bf16 (or f32) and reports only that; we refuse instead of labelling a bf16 engine fp16."""
    need = CPU_CAPABILITY.get(precision)
    caps = cpu_capabilities() if need else ()
    if need is None or need in caps:
        return None
    can = ["fp32", *(p for p, c in CPU_CAPABILITY.items() if c in caps), "int8"]
    return (f"backend openvino: this CPU has no {precision} (OpenVINO's CPU capabilities: {', '.join(caps)}; it "
            f"would run another precision under that name): choose {', '.join(can)}")


def _ov():
    try:
        import openvino as ov
    except ImportError:  # pragma: no cover - a dependency; the message is for a broken install
        raise DeployzooError("backend openvino needs the openvino package (pip install openvino)") from None
    return ov


def compile_config(precision: str, options: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """OpenVINO CPU properties of an engine: its precision hint, performance hint, streams and threads."""
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": HINT_PRECISION[precision],
                           "PERFORMANCE_HINT": str(options.get("perf_hint", "latency")).upper()}
    if options.get("cpu_streams"):
        cfg["NUM_STREAMS"] = int(options["cpu_streams"])
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def _per_image_outputs(graph: Graph) -> bool:
    """Whether every output of the ONNX graph is per image (first axis = the input's batch axis), so a batch can
    be split into single-image requests and the outputs concatenated."""
    import onnx

    g = onnx.load(str(graph.path), load_external_data=False).graph
    first = g.input[0].type.tensor_type.shape.dim[0]
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        if not dims or dims[0].dim_param != first.dim_param or dims[0].dim_value != first.dim_value:
            return False
    return True


def read_back(compiled: Any) -> dict[str, Any]:
    """What the compiled model says it runs (not what was asked for)."""
    def prop(name: str) -> Any:
        try:
            v = compiled.get_property(name)
        except Exception:  # noqa: BLE001 - a property this OpenVINO version does not report
            return None
        return str(getattr(v, "name", v)) if not isinstance(v, (int, float, bool)) else v

    prec = prop("INFERENCE_PRECISION_HINT")
    return {"inference_precision": str(prec).replace("<Type: '", "").replace("'>", "") if prec else None,
            "performance_hint": prop("PERFORMANCE_HINT"), "streams": prop("NUM_STREAMS"),
            "infer_requests": prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
            "threads": prop("INFERENCE_NUM_THREADS")}


class OpenVinoRunner:
    takes_tensors = False  # host arrays in and out

    def __init__(self, engine: Engine, threads: int | None, device: str | None) -> None:
        if device not in (None, "auto", "cpu"):
            raise DeployzooError(f"--device {device}: the openvino backend runs on the CPU here")
        ov = _ov()
        self.engine = engine
        path = engine.model_path
        self.config = compile_config(engine.precision, dict(engine.options), threads)
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", self.config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with long texts
            raise DeployzooError(f"{path}: OpenVINO cannot load the engine: {str(exc).strip().splitlines()[0][:200]}"
                                 ) from None
        self.device = "cpu"
        ins = [next(iter(sorted(i.get_names())), "") for i in self.compiled.inputs]
        if sorted(ins) != sorted(engine.input.input_names):
            raise DeployzooError(f"{engine.manifest_path}: manifest inputs {engine.input.input_names} disagree with "
                                 f"{path.name}'s {ins}")
        self.ports = {}
        for port in self.compiled.outputs:
            hit = [n for n in port.get_names() if n in engine.outputs]
            if hit:
                self.ports[hit[0]] = port
        missing = [n for n in engine.outputs if n not in self.ports]
        if missing:
            raise DeployzooError(f"{engine.manifest_path}: manifest outputs {missing} are not outputs of {path.name}")
        self._local = threading.local()  # one infer request per calling thread (bench --streams N runs N threads)
        self._queue_lock = threading.Lock()
        ovinfo = engine.manifest.get("openvino") or {}
        self.split = bool(ovinfo.get("per_image_outputs")) and self.config["PERFORMANCE_HINT"] == "THROUGHPUT"
        self.queue = None
        if self.split:
            n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self.queue = ov.AsyncInferQueue(self.compiled, max(1, n))

    def _outputs(self, result: Any) -> dict[str, np.ndarray]:
        return {name: np.asarray(result[port]) for name, port in self.ports.items()}

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = engine_feeds(self.engine.input, x)
        n = next(iter(feeds.values())).shape[0]
        if self.queue is None or n == 1 or not self.engine.batch.dynamic:
            req = getattr(self._local, "request", None)
            if req is None:
                req = self._local.request = self.compiled.create_infer_request()
            return self._outputs(req.infer(feeds))
        parts: list[dict[str, np.ndarray] | None] = [None] * n

        def done(req: Any, i: int) -> None:
            parts[i] = {name: np.array(req.get_tensor(port).data) for name, port in self.ports.items()}

        with self._queue_lock:  # the queue already runs the images of one batch concurrently
            self.queue.set_callback(done)
            for i in range(n):
                self.queue.start_async({k: v[i:i + 1] for k, v in feeds.items()}, i)
            self.queue.wait_all()
        return {name: np.concatenate([p[name] for p in parts], 0) for name in self.ports}  # type: ignore[index]

    def synchronize(self) -> None:
        pass  # infer / wait_all return when the outputs are on the host

    def peak_memory_bytes(self) -> int | None:
        return None


def float_op_names(model: Any, graph: Graph, groups: tuple[str, ...]) -> list[str]:
    """OpenVINO's names of the convolutions in the recipe's float groups. OpenVINO keeps an ONNX Conv's node name
    as its convolution's friendly name, with "/WithoutBiases" appended when it split the bias off."""
    if not groups:
        return []
    import onnx

    from deployzoo.quant import recipes

    onnx_model = onnx.load(str(graph.path), load_external_data=False)
    recipes.name_nodes(onnx_model)
    try:
        wanted = {n for ns in recipes.float_nodes(onnx_model, tuple(groups)).values() for n in ns}
    except ValueError as exc:
        raise DeployzooError(f"{graph.path}: {exc}") from None
    found = {}
    for op in model.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            base = name.removesuffix("/WithoutBiases")
            if base in wanted:
                found[base] = name
    lost = sorted(wanted - set(found))
    if lost:
        raise DeployzooError(f"{graph.path}: OpenVINO has no convolution named like ONNX node {lost[0]} of float "
                             f"groups {', '.join(groups)}; cannot keep it float")
    return sorted(found.values())


class OpenVinoBackend:
    name = "openvino"
    capabilities = Capabilities(precisions=("fp32", "bf16", "fp16", "int8"), devices=("cpu",),
                                options=("perf_hint", "cpu_streams"), int8_float_groups=True,
                                requires=("openvino", "nncf"), machine_problem=machine_problem)

    def build(self, graph: Graph, out_dir: Path, request: BuildRequest) -> dict[str, Any]:
        ov = _ov()
        opts = request.options
        hint = (opts.perf_hint or "latency").lower()
        if hint not in PERF_HINTS:
            raise DeployzooError(f"--perf-hint {opts.perf_hint!r}: choose from {', '.join(PERF_HINTS)}")
        if opts.cpu_streams is not None and opts.cpu_streams < 1:
            raise DeployzooError(f"--cpu-streams {opts.cpu_streams}: must be >= 1")
        options = {"perf_hint": hint, **({"cpu_streams": int(opts.cpu_streams)} if opts.cpu_streams else {})}
        t0 = time.perf_counter()
        core = ov.Core()
        try:
            model = core.read_model(str(graph.path))
        except Exception as exc:  # noqa: BLE001
            raise DeployzooError(f"{graph.path}: OpenVINO cannot read the graph: "
                                 f"{str(exc).strip().splitlines()[0][:200]}") from None
        info: dict[str, Any] = {"model_file": MODEL_FILE, "options": options}
        if request.precision == "int8":
            model, info["quantization"] = self._int8(model, graph, request)
        ov.save_model(model, str(out_dir / MODEL_FILE), compress_to_fp16=False)
        compiled = core.compile_model(str(out_dir / MODEL_FILE), "CPU", compile_config(request.precision, options))
        info["openvino"] = {"version": ov.get_version(), **read_back(compiled),
                            "per_image_outputs": _per_image_outputs(graph)}
        want = READ_BACK[HINT_PRECISION[request.precision]]
        if info["openvino"]["inference_precision"] not in (None, want):  # checked up front; this is the last word
            raise DeployzooError(f"backend openvino: asked for {want} inference, the compiled model runs "
                                 f"{info['openvino']['inference_precision']}; not written as {request.precision}")
        info["build_seconds"] = round(time.perf_counter() - t0, 2)
        return info

    @staticmethod
    def _int8(model: Any, graph: Graph, request: BuildRequest) -> tuple[Any, dict[str, Any]]:
        # nncf imports torch's C++ extension loader, which logs "No CUDA runtime is found" on CPU machines
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        try:
            import nncf
        except ImportError:  # pragma: no cover - a dependency
            raise DeployzooError("backend openvino int8 needs nncf (pip install nncf)") from None
        from deployzoo.quant.calib import CalibReader
        from deployzoo.registry import get_task

        calib = request.calibration.images  # read by build() before the backend is called
        reader = CalibReader(calib, get_task(graph.task), graph.input, graph.batch.default())
        reader.check_usable()
        feeds = []
        while (f := reader.get_next()) is not None:
            feeds.append(f)
        if not feeds:
            raise DeployzooError(f"{calib.root}: no readable calibration image")
        logging.getLogger("nncf").setLevel(logging.WARNING)
        t0 = time.perf_counter()
        recipe = request.recipe
        quant_matmul = any(t in recipe.op_types for t in ("MatMul", "Gemm"))
        # a model whose recipe quantizes MatMuls is a transformer (VOLO): NNCF's transformer scheme keeps the
        # softmax / layer-norm paths float and quantizes the matmul inputs (ours on ORT does the same)
        transformer = "MatMul" in recipe.op_types
        kw: dict[str, Any] = ({"model_type": nncf.ModelType.TRANSFORMER} if transformer
                              else {"preset": nncf.QuantizationPreset.MIXED})
        names = float_op_names(model, graph, recipe.float_groups)
        types = [] if quant_matmul or not any(op.get_type_name() == "MatMul" for op in model.get_ops()) else ["MatMul"]
        if names or types:
            kw["ignored_scope"] = nncf.IgnoredScope(names=names, types=types)
        q = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), **kw)
        fq = sum(1 for op in q.get_ops() if op.get_type_name() == "FakeQuantize")
        return q, {"tool": f"nncf {nncf.__version__}",
                   "method": "nncf.quantize (fast bias correction, "
                             f"{'transformer model type' if transformer else 'mixed preset'})",
                   "float_groups": list(recipe.float_groups), "float_ops": len(names),
                   "float_op_types": types, "fake_quantize_ops": fq, "calibration_images_used": reader.used,
                   "seconds": round(time.perf_counter() - t0, 2)}

    def load(self, engine: Engine, threads: int | None = None, device: str | None = None) -> OpenVinoRunner:
        return OpenVinoRunner(engine, threads, device)

"""AOTInductor backend: the deploy module (network + in-graph decode) captured with `torch.export` and compiled
ahead of time by Inductor into a `.pt2` package for one device type (CUDA or CPU).

- precisions fp32 (TF32 switch on CUDA), fp16 and bf16 (autocast captured in the graph: convolutions / matmuls in
  the low precision, the decode tails in fp32); int8 is refused with the reason (see `INT8_MESSAGE`);
- fixed batch, or a dynamic batch range (`torch.export.Dim`, min..max from the exported graph, traced at the
  manifest's `opt_batch`); original-size engines also get dynamic H x W;
- channels-last and CUDA graphs per input shape as build options (backends/torch_common.py), shared with the
  eager `torch` backend;
- at build, the compiled package is run against eager PyTorch on two probe batches and the largest differences
  are written into the manifest (`parity_vs_eager`).

Loading needs the same torch version that compiled the package (AOTInductor's ABI); the manifest records it and
a mismatch is refused with a one-line message.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deployzoo.backends.base import Capabilities
from deployzoo.backends.torch_common import (OPTIONS, TensorRunner, autocast_wrap, build_options, check_graphable,
                                             resolve_device)
from deployzoo.backends.torch_eager import source_module
from deployzoo.engine import Engine
from deployzoo.errors import DeployzooError
from deployzoo.specs import BatchSpec, InputSpec

if TYPE_CHECKING:
    from deployzoo.request import BuildRequest, Graph

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt2"
# H and W range of original-size engines: export guards sizes below 33 (RetinaFace) / 65 px (Mask R-CNN's FPN),
# so smaller inputs are zero-padded bottom / right up to the minimum, as a batch's smaller images are
ORIGIN_RANGE = (96, 4096)
INT8_MESSAGE = ("backend aoti: int8 on this backend needs a quantization path we do not ship yet (no TensorRT on "
                "our GPU machines; torchao int8/fp8 not yet measured here); use --backend ort --precision int8, or "
                "fp16 / bf16 on aoti")


class _ExportWrapper(torch.nn.Module):
    """Tuple outputs and one signature for every deploy module (one or two input tensors): torch.export's
    dynamic_shapes then nest under the single varargs entry."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.inner(*xs))


def _dynamic_shapes(batch: BatchSpec, spec: InputSpec, n_inputs: int) -> tuple[Any, ...] | None:
    dims: list[dict[int, Any]] = [{} for _ in range(n_inputs)]
    if batch.dynamic:
        b = torch.export.Dim("batch", min=batch.min, max=batch.max if batch.max is not None else 64)
        for d in dims:
            d[0] = b
    if spec.origin:
        lo, hi = ORIGIN_RANGE
        dims[0][2] = torch.export.Dim("height", min=lo, max=hi)
        dims[0][3] = torch.export.Dim("width", min=lo, max=hi)
    if not any(dims):
        return None
    return (tuple(d or None for d in dims),)


def probe_batches(batch: BatchSpec, opts: dict[str, Any]) -> list[int]:
    if not batch.dynamic:
        return [int(batch.size)]
    lo, hi = batch.min, batch.max if batch.max is not None else 64
    opt = int(opts["opt_batch"])
    trace = opt if opt >= 2 or hi < 2 else 2  # a dim traced at 1 is specialised by torch.export
    return [trace] + [n for n in (lo, min(hi, trace + 1)) if n != trace][:1]


def _inputs(module: torch.nn.Module, spec: InputSpec, batch: int, hw: Any, seed: int,
            device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    from deployzoo.export import graph_inputs, probe_input

    x = probe_input(hw, batch, seed, {"mean": list(spec.mean), "std": list(spec.std)})
    ts = [t.to(device) for t in graph_inputs(module, x)]
    if channels_last:
        ts[0] = ts[0].contiguous(memory_format=torch.channels_last)
    return tuple(ts)


def _host(names: tuple[str, ...], outs: Any) -> dict[str, Any]:
    """Graph outputs by name as host arrays (floating ones in float32)."""
    return {n: (t.float() if t.is_floating_point() else t).cpu().numpy() for n, t in zip(names, outs)}


class AotiBackend:
    name = "aoti"
    capabilities = Capabilities(precisions=("fp32", "fp16", "bf16"), devices=("cpu", "cuda"), options=OPTIONS,
                                device_pipeline=True, refused={"int8": INT8_MESSAGE})

    def build(self, graph: Graph, out_dir: Path, request: BuildRequest) -> dict[str, Any]:
        from deployzoo.export import merge_worst, output_diffs

        where, spec, batch = graph.path, graph.input, graph.batch
        what = f"{graph.model} {graph.variant}"
        if request.options.cuda_graphs:
            raise DeployzooError(f"{where}: --cuda-graphs is not available on aoti: capturing an AOTInductor package "
                                 "in a CUDA graph failed on an H200 (torch 2.11: 'operation failed due to a previous "
                                 "error during capture'); build without it, or use --backend torch --cuda-graphs")
        opts = build_options(request.options, batch, where)
        dev = torch.device(opts["device"])
        base = source_module(graph).to(dev)
        check_graphable(base, opts, where)
        if opts["channels_last"]:
            base = base.to(memory_format=torch.channels_last)
        module = _ExportWrapper(autocast_wrap(base, request.precision, dev.type)).eval()
        hw = "origin" if spec.origin else list(spec.imgsz)
        batches = probe_batches(batch, opts)
        example = _inputs(base, spec, batches[0], hw, 0, dev, opts["channels_last"])
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                ep = torch.export.export(module, example, dynamic_shapes=_dynamic_shapes(batch, spec, len(example)))
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the first line says why
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            hint = (" (its code fixes the batch: export with --batch N for a fixed-batch aoti engine)"
                    if batch.dynamic and "batch" in first else "")
            raise DeployzooError(f"{where}: torch.export cannot capture {what} for aoti: {first}{hint}") from None
        t_export = time.perf_counter() - t0
        log.info("aoti: exported %s in %.1fs; compiling for %s (takes a minute or more)", what, t_export, dev)
        pkg = out_dir / MODEL_FILE
        try:
            with torch.inference_mode():
                torch._inductor.aoti_compile_and_package(ep, package_path=str(pkg))
        except Exception as exc:  # noqa: BLE001 - Inductor's errors: one line with the cause
            lines = [x for x in str(exc).strip().splitlines() if x.strip()]
            cause = lines[-1][:300] if lines else type(exc).__name__
            hint = (" (a dynamic-batch graph with data-dependent sizes: try a fixed-batch export, --batch N)"
                    if batch.dynamic else "")
            raise DeployzooError(f"{where}: AOTInductor cannot compile {what}: {cause}{hint}") from None
        t_compile = time.perf_counter() - t0 - t_export
        compiled = torch._inductor.aoti_load_package(str(pkg))
        parity: dict[str, float] = {}
        for i, n in enumerate(batches):
            xs = _inputs(base, spec, n, [333, 517] if hw == "origin" and i else hw, i + 1, dev, opts["channels_last"])
            with torch.inference_mode():
                got, ref = _host(graph.outputs, compiled(*xs)), _host(graph.outputs, module(*xs))
            merge_worst(parity, output_diffs(base, got, ref))
        return {
            "model_file": MODEL_FILE, "options": opts,
            "compile": {"export_seconds": round(t_export, 2), "compile_seconds": round(t_compile, 2),
                        "torch": torch.__version__, "device_type": dev.type, "probe_batches": batches,
                        "origin_hw_range": list(ORIGIN_RANGE) if hw == "origin" else None},
            "parity_vs_eager": parity,
        }

    def load(self, engine: Engine, threads: int | None = None, device: str | None = None) -> TensorRunner:
        engine_dir = engine.dir
        opts, comp = engine.options, engine.compile
        dev = resolve_device(device or opts.get("device"), engine_dir)
        built = comp.get("device_type", torch.device(opts.get("device", "cpu")).type)
        if dev.type != built:
            raise DeployzooError(f"{engine_dir}: this aoti engine was compiled for {built}; it cannot run on {dev} "
                                 f"(rebuild with --device {dev})")
        if comp.get("torch") and comp["torch"] != torch.__version__:
            raise DeployzooError(f"{engine_dir}: compiled with torch {comp['torch']}, this is torch "
                                 f"{torch.__version__}: AOTInductor packages need the same version (rebuild)")
        if threads:
            torch.set_num_threads(int(threads))
        path = engine.model_path
        if not path.is_file():
            raise DeployzooError(f"{path}: engine package missing")
        try:
            if dev.type == "cuda":
                compiled = torch._inductor.aoti_load_package(str(path), device_index=dev.index or 0)
            else:
                compiled = torch._inductor.aoti_load_package(str(path))
        except Exception as exc:  # noqa: BLE001
            raise DeployzooError(f"{path}: cannot load the AOTInductor package: {str(exc).splitlines()[0][:200]}") from None
        rng = comp.get("origin_hw_range")

        def fn(*ts: torch.Tensor) -> Any:
            if rng:
                h, w = ts[0].shape[2:]
                if max(h, w) > rng[1]:
                    raise DeployzooError(f"{engine_dir}: input {h}x{w} larger than the compiled H x W range "
                                         f"{rng[0]}..{rng[1]}")
                if min(h, w) < rng[0]:
                    img = torch.nn.functional.pad(ts[0], (0, max(0, rng[0] - w), 0, max(0, rng[0] - h)))
                    if img.dim() == 4 and ts[0].is_contiguous(memory_format=torch.channels_last):
                        img = img.contiguous(memory_format=torch.channels_last)
                    ts = (img, *ts[1:])
            return compiled(*ts)

        return TensorRunner(engine, fn, dev, torch.float32, engine_dir)

"""What the PyTorch-based backends (eager `torch`, compiled `aoti`) share: device resolution, precision dtypes,
channels-last, optional CUDA graphs per input shape, and a Runner that takes host arrays (`run`) or tensors already
on its device (`run_tensors`, used by the GPU pipeline so that images never return to the host).

Build options (the manifest's `options`) are the same for both backends, so that eager PyTorch is benchmarked
with exactly the settings of the compiled engine beside it:

- `device`: `cpu`, `cuda` or `cuda:N` (the engine's home; an AOTInductor package is compiled for one device type);
- `tf32`: allow TF32 matmuls / convolutions for fp32 on CUDA (default on, as cuDNN and cuBLAS users expect on
  Ampere and later; off gives true fp32);
- `channels_last`: NHWC memory format for the network and its image input (default on for CUDA, off for CPU);
- `cuda_graphs`: replay a captured CUDA graph per input shape after the first call (CUDA only; outputs whose
  size depends on the data, as Mask R-CNN's detections, cannot be captured and are refused at build);
- `opt_batch`: the batch a dynamic-batch engine is traced / tuned at (min <= opt <= max).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployzoo.engine import Engine, engine_feeds
from deployzoo.errors import DeployzooError
from deployzoo.models.base import DeployModule
from deployzoo.request import BuildOptions
from deployzoo.specs import BatchSpec

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPTIONS = ("device", "tf32", "channels_last", "cuda_graphs", "opt_batch")  # the BuildOptions these backends take


def resolve_device(device: str | None, where: str | Path = "--device") -> torch.device:
    """`None`/`auto` -> cuda if present else cpu; `cuda:N` checked against the GPUs this process sees."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise DeployzooError(f"{where}: unknown device {device!r} (cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeployzooError(f"{where}: device {device} asked for, but no CUDA device is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeployzooError(f"{where}: device {device} asked for, but only {torch.cuda.device_count()} CUDA "
                                 "device(s) are visible")
    elif dev.type != "cpu":
        raise DeployzooError(f"{where}: device type {dev.type!r} is not supported (cpu, cuda or cuda:N)")
    return dev


def build_options(opts: BuildOptions, batch: BatchSpec, where: str | Path) -> dict[str, Any]:
    """The request's options with the defaults filled in and checked; the result goes into the manifest as
    `options`."""
    dev = resolve_device(opts.device, where)
    cuda = dev.type == "cuda"
    out = {
        "device": str(dev),
        "tf32": (True if opts.tf32 is None else bool(opts.tf32)) and cuda,
        "channels_last": bool(cuda if opts.channels_last is None else opts.channels_last),
        "cuda_graphs": bool(opts.cuda_graphs),
    }
    if out["cuda_graphs"] and not cuda:
        raise DeployzooError(f"{where}: --cuda-graphs needs a CUDA device (this build is for {dev})")
    if batch.dynamic:
        lo, hi = batch.min, batch.max if batch.max is not None else 64
        opt = int(opts.opt_batch or min(max(lo, 8), hi))
        if not lo <= opt <= hi:
            raise DeployzooError(f"{where}: --opt-batch {opt} outside the engine's batch range {lo}..{hi}")
        out["opt_batch"] = opt
    elif opts.opt_batch not in (None, batch.size):
        raise DeployzooError(f"{where}: --opt-batch {opts.opt_batch} given for a fixed-batch engine (batch {batch.size})")
    return out


def check_graphable(module: DeployModule, opts: dict[str, Any], where: str | Path) -> None:
    """CUDA graphs replay fixed shapes: graphs with flat, data-dependent outputs (`output_axes`, e.g. Mask R-CNN's
    detections after NMS) cannot be captured."""
    if opts.get("cuda_graphs") and module.output_axes is not None:
        raise DeployzooError(f"{where}: --cuda-graphs: this graph's output sizes depend on the data (detections "
                             "after NMS), so it cannot be captured as a CUDA graph")


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def peak_device_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


class TensorRunner:
    """A Runner around a torch callable `fn(*inputs) -> outputs`. Inputs are cast / laid out as the build said
    (image in the engine's dtype and memory format, extra inputs as given); outputs come back float32 (floating
    ones) on the runner's device from `run_tensors`, on the host as numpy from `run`."""

    def __init__(self, engine: Engine, fn: Callable[..., Sequence[torch.Tensor]], device: torch.device,
                 input_dtype: torch.dtype, where: str | Path) -> None:
        self.engine = engine
        self.fn = fn
        self.torch_device = device
        self.device = str(device)
        opts = engine.options
        self.channels_last = bool(opts.get("channels_last"))
        self.input_dtype = input_dtype
        self.names = list(engine.outputs)
        self.image_name = engine.input.name
        self.order = engine.input.input_names
        self.use_graphs = bool(opts.get("cuda_graphs")) and device.type == "cuda"
        self._graphs: dict[tuple, tuple[Any, list[torch.Tensor], list[torch.Tensor]]] = {}
        self.tf32 = bool(opts.get("tf32")) if device.type == "cuda" else None
        self.where = where

    # ------------------------------------------------------------------ tensors on the device
    def _prepare(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        ts = []
        for name in self.order:
            t = feeds[name]
            if t.device != self.torch_device:
                t = t.to(self.torch_device, non_blocking=True)
            if name == self.image_name:  # compiled graphs assume the strides they were traced with
                t = t.to(self.input_dtype)
                t = t.contiguous(memory_format=torch.channels_last) if self.channels_last else t.contiguous()
            ts.append(t.contiguous() if name != self.image_name else t)
        return ts

    def _call(self, ts: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        if self.tf32 is not None:  # process-wide flags: set per call, so engines loaded side by side keep their own
            set_tf32(self.tf32)
        if not self.use_graphs:
            return self.fn(*ts)
        key = tuple((tuple(t.shape), t.dtype) for t in ts)
        g = self._graphs.get(key)
        if g is None:
            g = self._capture(ts)
            self._graphs[key] = g
        graph, static_in, static_out = g
        for s, t in zip(static_in, ts):
            s.copy_(t)
        graph.replay()
        return static_out

    def _capture(self, ts: list[torch.Tensor]) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
        """Warm up on a side stream (as torch.cuda.graphs requires), then capture one call on static buffers."""
        static_in = [t.clone() for t in ts]
        side = torch.cuda.Stream(self.torch_device)
        side.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.fn(*static_in)
        torch.cuda.current_stream(self.torch_device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_out = list(self.fn(*static_in))
        except Exception as exc:  # noqa: BLE001 - CUDA's capture errors come as several types
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise DeployzooError(f"{self.where}: capturing a CUDA graph failed ({first}); rebuild without "
                                 "--cuda-graphs") from None
        log.info("%s: captured a CUDA graph for input shapes %s", self.where, [tuple(t.shape) for t in ts])
        return graph, static_in, static_out

    @torch.inference_mode()
    def run_tensors(self, feeds: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Graph inputs as tensors (any device; moved to the runner's) -> {output: tensor on the runner's device}.
        With CUDA graphs the returned tensors are the graph's static outputs: valid until the next call."""
        if isinstance(feeds, torch.Tensor):
            feeds = {self.image_name: feeds}
        feeds = dict(feeds)
        img = feeds[self.image_name]
        for extra in self.order[1:]:
            if extra not in feeds:  # engine_feeds' default, without a host copy of the image
                if extra != "image_sizes":
                    raise DeployzooError(f"{self.where}: engine input {extra!r} needs a value (no default for it)")
                feeds[extra] = torch.tensor([list(img.shape[2:])], dtype=torch.int64).repeat(img.shape[0], 1)
        outs = self._call(self._prepare(feeds))
        return {n: (o.float() if o.is_floating_point() else o) for n, o in zip(self.names, outs)}

    def device_feeds(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """A host batch as the tensors the engine takes, already on its device in its dtype and layout (what
        bench's device timing feeds, so that no copy or cast is timed)."""
        feeds = engine_feeds(self.engine.input, x)
        host = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        return dict(zip(self.order, self._prepare(host)))

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.run_tensors(self.device_feeds(x))
        return {n: o.cpu().numpy() for n, o in outs.items()}

    takes_tensors = True

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def peak_memory_bytes(self) -> int | None:
        return peak_device_memory(self.torch_device)


def autocast_wrap(module: DeployModule, precision: str, device_type: str) -> torch.nn.Module:
    """fp16 / bf16 as autocast around the whole deploy module: convolutions and matmuls run in the low precision,
    while the decode tails the deploy wrappers write in float32 (`.float()` after the heads) stay float32."""
    if precision == "fp32":
        return module
    return _Autocast(module, DTYPES[precision], device_type)


class _Autocast(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, *xs: torch.Tensor) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(*xs)

"""The device pipeline: images stay on the engine's device from JPEG decode to the final detections.

Same contract as pipeline.run_batches (items in, `on_result(item, img, record)` / `on_skip(item, reason)` out, in
source order, batches of `batch`, a fixed-batch engine's last partial batch zero-padded), for runners that take
tensors (`run_tensors`, the torch-based backends) and tasks that have the tensor hooks (tasks/base.py):

- read: reader threads read each file's bytes into a uint8 tensor (pinned host memory when the device is CUDA);
  empty files and JPEGs without an end-of-image marker are skipped here, with the host pipeline's reasons;
- decode: per batch, one batched `torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on CUDA); a batch that
  fails is retried image by image, and non-JPEG files or JPEGs the device decoder refuses go to
  `torchvision.io.decode_image` on the CPU, then to the host decoder (OpenCV: BMP, TIFF, 16-bit ...), and the
  result is moved to the device; what none can decode is skipped with the host decoder's reason. The EXIF
  orientation follows the engine's `input.exif_orientation`, as the host reader does: the
  JPEG decoders here do not apply it (torchvision's CUDA decode_jpeg ignores `apply_exif_orientation`; the CPU
  one would apply it, but both paths do it the same way), so the tag is read from the bytes
  (`jpeg_exif_orientation`, OpenCV's rule) and the flip / transpose is applied to the decoded tensor on the
  device; non-JPEGs with the rule on go straight to the host decoder, whose OpenCV flags apply it exactly as
  cv2.imread does (torchvision's CPU decoders apply it for JPEG and PNG but not WebP);
- pre: the task's `prepare_tensors` on the device (resize / pad / normalise into the batch tensor);
- infer: `runner.run_tensors` on the batch tensor (no host round trip);
- post: the task's `postprocess_tensors` on the device (e.g. batched NMS); only final results reach the host.

Overlap: a producer thread does read (through its reader pool), decode and pre for batch k+1 while the calling
thread runs infer and post of batch k; prepared batches go through a bounded queue (at most `depth` waiting). On
CUDA the producer works on its own stream and hands each batch over with a recorded CUDA event, which the
consumer's stream waits on (and `record_stream` keeps the allocator from reusing the batch's memory too early).
On the CPU the same code runs without streams or events.

What is timed (StageTimes, seconds summed over the run): read in the reader threads (file -> tensor); decode
and pre in the producer thread, each ending with a synchronize of the producer's stream on CUDA, so they are wall
time until the stage's GPU work has finished (launch-only times would be near zero); infer from the call until
the consumer's stream has finished it; post until its results are on the host (the copy synchronizes). decode /
pre overlap infer / post, so stage sums can exceed the wall time, and on a busy GPU they include time shared with
the concurrent inference kernels. Synchronizing the producer's stream does not stall the consumer's. It also
means no kernel is pending on the producer's stream when decode_jpeg allocates its outputs there, which keeps
clear of torchvision's CUDA decoder writing into blocks still in use on the caller's stream (pytorch/vision PR
#9606). torchvision.io's decoders are deprecated since torchvision 0.29 in favour of TorchCodec (a DeprecationWarning).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from deployzoo.data.images import ImageError, SourceItem, check_encoded, jpeg_exif_orientation, read_item_bytes
from deployzoo.data.images import decode_image as host_decode_image
from deployzoo.errors import DeployzooError
from deployzoo.pipeline import Loaded, StageTimes, ordered_map, run_batches

log = logging.getLogger(__name__)

PIPELINES = ("auto", "host", "device")


def device_pipeline_reason(loaded: Loaded) -> str | None:
    """Why this engine cannot use the device pipeline, or None when it can."""
    runner, task, spec = loaded.runner, loaded.task, loaded.engine.input
    if not runner.takes_tensors:
        return f"the {loaded.engine.backend} backend's runner takes host arrays only (no run_tensors)"
    if not task.has_tensor_hooks:
        return f"task {task.name} has no tensor pre-/post-processing hooks"
    if task.runs_own_inference:
        return f"task {task.name} runs its own inference step (e.g. flip test)"
    if spec.extra_inputs:
        return f"the engine takes extra inputs ({', '.join(spec.extra_inputs)})"
    if not task.tensor_spec_ok(spec):
        return f"task {task.name}'s tensor hooks do not handle this engine's input spec"
    return None


def device_pipeline_ok(loaded: Loaded) -> bool:
    return device_pipeline_reason(loaded) is None


def choose_pipeline(loaded: Loaded, pipeline: str = "auto") -> str:
    """'host' or 'device'. auto: the device pipeline when it is possible and the runner is on CUDA."""
    if pipeline not in PIPELINES:
        raise DeployzooError(f"--pipeline {pipeline!r}: expected one of {', '.join(PIPELINES)}")
    if pipeline == "host":
        return "host"
    reason = device_pipeline_reason(loaded)
    if pipeline == "device":
        if reason is not None:
            raise DeployzooError(f"{loaded.engine_dir}: --pipeline device not possible: {reason} "
                                 "(use --pipeline host or auto)")
        return "device"
    return "device" if reason is None and loaded.runner.torch_device.type == "cuda" else "host"


def run_pipeline(loaded: Loaded, items: Iterable[SourceItem], *, pipeline: str = "auto", **kw: Any) -> str:
    """run_batches or run_batches_device, as `choose_pipeline` says; returns which ran ('host' or 'device')."""
    which = choose_pipeline(loaded, pipeline)
    (run_batches_device if which == "device" else run_batches)(loaded, items, **kw)
    return which


# ----------------------------------------------------------------------------------------------------- stages


@dataclass
class _Encoded:
    item: SourceItem
    data: torch.Tensor  # uint8, CPU (pinned on CUDA)
    label: str
    jpeg: bool


def _read_one(item: SourceItem, pin: bool, times: StageTimes) -> tuple[SourceItem, _Encoded | None, str | None]:
    t0 = time.perf_counter()
    try:
        data, label = read_item_bytes(item)
        check_encoded(data, label)
    except ImageError as exc:
        return item, None, str(exc)
    if pin:
        t = torch.empty(data.size, dtype=torch.uint8, pin_memory=True)
        t.numpy()[:] = data
    else:
        t = torch.from_numpy(data if data.flags.writeable else data.copy())
    enc = _Encoded(item, t, label, bool(data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8))
    times.add("read", time.perf_counter() - t0)
    return item, enc, None


def _read_prefetch(items: Iterable[SourceItem], pin: bool, times: StageTimes, workers: int,
                   depth: int) -> Iterator[tuple[SourceItem, _Encoded | None, str | None]]:
    """File bytes in a thread pool, at most `depth` files in flight, in source order."""
    return ordered_map(lambda item: _read_one(item, pin, times), items, workers, depth)


def apply_exif_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """A C x H x W tensor turned by an EXIF Orientation value (1..8) exactly as OpenCV's imread turns H x W x C
    images (imgcodecs ExifTransform): 2 flips left-right, 3 rotates 180, 4 flips up-down, 5 transposes, 6
    transposes then flips left-right (90 clockwise), 7 transposes then flips both, 8 transposes then flips
    up-down (90 counter-clockwise); anything else leaves it."""
    if orientation in (5, 6, 7, 8):
        img = img.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return img.flip(flips).contiguous() if flips else img.contiguous()


def _oriented(img: torch.Tensor, enc: _Encoded, exif_orientation: bool) -> torch.Tensor:
    return apply_exif_orientation(img, jpeg_exif_orientation(enc.data.numpy())) if exif_orientation else img


def _decode_fallback(enc: _Encoded, dev: torch.device, exif_orientation: bool = False) -> torch.Tensor:
    """torchvision's CPU decoders, then the host's (OpenCV) one; raises ImageError when nothing decodes it.
    With the EXIF orientation rule on, non-JPEGs go to the host decoder directly (OpenCV applies the PNG eXIf /
    WebP EXIF orientation as cv2.imread does; torchvision's decode_image does not for WebP)."""
    try:
        if exif_orientation and not enc.jpeg:
            raise ValueError("orientation: host decoder")
        img = decode_image(enc.data, mode=ImageReadMode.RGB)
        if img.dtype == torch.uint16:  # 16-bit PNG: the top byte, as the host reader does
            img = (img.to(torch.int32) >> 8).to(torch.uint8)
        elif img.dtype != torch.uint8:
            raise RuntimeError(f"unexpected dtype {img.dtype}")
        img = _oriented(img, enc, exif_orientation)
    except (RuntimeError, ValueError):
        arr = host_decode_image(enc.data.numpy(), enc.label, "RGB", exif_orientation)  # ImageError -> skipped
        img = torch.from_numpy(arr).permute(2, 0, 1)
    return img.contiguous().to(dev, non_blocking=True)


def decode_batch(encs: list[_Encoded], dev: torch.device,
                 exif_orientation: bool = False) -> list[tuple[torch.Tensor | None, str | None]]:
    """(3 x H x W uint8 RGB tensor on `dev`, None) or (None, reason) per encoded image: JPEGs in one batched
    decode_jpeg call on the device, the rest (and JPEGs it refuses) through the CPU fallbacks. `exif_orientation`:
    turn each image by its EXIF Orientation tag as cv2.imread does (the input spec's rule; module docstring)."""
    out: list[tuple[torch.Tensor | None, str | None]] = [(None, None)] * len(encs)
    jpeg = [i for i, e in enumerate(encs) if e.jpeg]
    decoded: dict[int, torch.Tensor] = {}
    if jpeg:
        try:
            imgs = decode_jpeg([encs[i].data for i in jpeg], mode=ImageReadMode.RGB, device=dev)
            decoded.update(zip(jpeg, imgs))
        except (RuntimeError, ValueError):  # one bad file fails the batch: find it
            for i in jpeg:
                try:
                    decoded[i] = decode_jpeg([encs[i].data], mode=ImageReadMode.RGB, device=dev)[0]
                except (RuntimeError, ValueError) as exc:
                    log.debug("%s: device JPEG decode failed (%s), trying the CPU decoders", encs[i].label, exc)
    for i, e in enumerate(encs):
        if i in decoded:
            out[i] = (_oriented(decoded[i], e, exif_orientation), None)
            continue
        try:
            out[i] = (_decode_fallback(e, dev, exif_orientation), None)
        except ImageError as exc:
            out[i] = (None, str(exc))
    return out


def _host_image(img: torch.Tensor, bgr: bool) -> np.ndarray:
    """An H x W x 3 numpy copy in the engine's colour order (what the host pipeline hands to on_result)."""
    a = img.permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(a[..., ::-1] if bgr else a)


@dataclass
class _Batch:
    items: list[SourceItem]
    images: list[np.ndarray | None]
    x: torch.Tensor
    metas: list[dict[str, Any]]
    event: Any  # torch.cuda.Event on CUDA, else None


_DONE = object()


def run_batches_device(
    loaded: Loaded,
    items: Iterable[SourceItem],
    *,
    batch: int,
    on_result: Callable[[SourceItem, np.ndarray | None, dict[str, Any]], None],
    on_skip: Callable[[SourceItem, str], None],
    times: StageTimes,
    keep_image: bool = False,
    workers: int = 4,
    post: dict[str, Any] | None = None,
    depth: int = 2,
) -> None:
    """Stream `items` through the engine with decode, pre- and post-processing on the runner's device (see the
    module docstring). Callbacks run in the calling thread."""
    reason = device_pipeline_reason(loaded)
    if reason is not None:
        raise DeployzooError(f"{loaded.engine_dir}: --pipeline device not possible: {reason} (use --pipeline host)")
    eng, task, runner = loaded.engine, loaded.task, loaded.runner
    eng.batch.check(batch, eng.dir)
    fixed = not eng.batch.dynamic
    spec = eng.input
    post = post or dict(eng.post)
    dev: torch.device = runner.torch_device
    cuda = dev.type == "cuda"
    bgr = spec.bgr
    exif = spec.exif_orientation  # the model's official reader's rule
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(msg: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            stream = torch.cuda.Stream(device=dev) if cuda else None
            on_stream = (torch.cuda.stream(stream) if cuda else contextlib.nullcontext())
            on_device = torch.cuda.device(dev) if cuda else contextlib.nullcontext()
            with on_device, on_stream, torch.inference_mode():
                _produce(stream)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
        finally:
            put(_DONE)

    def _produce(stream: Any) -> None:
        def stage_end() -> None:
            if stream is not None:
                stream.synchronize()

        skips: list[tuple[SourceItem, str]] = []
        ready: list[tuple[SourceItem, torch.Tensor]] = []
        chunk: list[_Encoded] = []

        def decode_chunk() -> None:
            t0 = time.perf_counter()
            res = decode_batch(chunk, dev, exif)
            stage_end()
            times.add("decode", time.perf_counter() - t0)
            for e, (img, err) in zip(chunk, res):
                if img is None:
                    skips.append((e.item, err or "not a decodable image"))
                else:
                    ready.append((e.item, img))
            chunk.clear()

        def emit(group: list[tuple[SourceItem, torch.Tensor]]) -> bool:
            t0 = time.perf_counter()
            imgs = [im for _, im in group]
            x, metas = task.prepare_tensors(imgs, spec, [it.meta for it, _ in group])
            n = len(group)
            if fixed and n < batch:
                x = torch.cat([x, x.new_zeros((batch - n, *x.shape[1:]))])
                metas = list(metas) + [metas[0]] * (batch - n)
            stage_end()
            times.add("pre", time.perf_counter() - t0)
            event = None
            if stream is not None:
                event = torch.cuda.Event()
                event.record(stream)
            host = [_host_image(im, bgr) for im in imgs] if keep_image else [None] * n
            msg = (list(skips), _Batch([it for it, _ in group], host, x, list(metas), event))
            skips.clear()
            return put(msg)

        for item, enc, err in _read_prefetch(items, cuda, times, workers, max(8, 2 * batch + workers)):
            if stop.is_set():
                return
            if enc is None:
                skips.append((item, err or "cannot read file"))
                continue
            chunk.append(enc)
            if len(ready) + len(chunk) >= batch:
                decode_chunk()
                while len(ready) >= batch:
                    if not emit(ready[:batch]):
                        return
                    del ready[:batch]
        if chunk:
            decode_chunk()
        while ready:
            if not emit(ready[:batch]):
                return
            del ready[:batch]
        put((list(skips), None))

    producer = threading.Thread(target=produce, name="dz-device-produce", daemon=True)
    producer.start()
    try:
        with torch.inference_mode():
            cur = torch.cuda.current_stream(dev) if cuda else None
            while True:
                msg = q.get()
                if msg is _DONE:
                    break
                if isinstance(msg, BaseException):
                    raise msg
                skipped, b = msg
                for item, err in skipped:
                    on_skip(item, err)
                if b is None:
                    continue
                if cur is not None:
                    cur.wait_event(b.event)
                    b.x.record_stream(cur)
                t0 = time.perf_counter()
                outs = runner.run_tensors(b.x)
                if cur is not None:
                    cur.synchronize()
                t1 = time.perf_counter()
                records = task.postprocess_tensors(outs, b.metas, post)[: len(b.items)]
                times.add("infer", t1 - t0)
                times.add("post", time.perf_counter() - t1)
                for item, img, rec in zip(b.items, b.images, records):
                    on_result(item, img, rec)
    finally:
        stop.set()
        while producer.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        producer.join()

"""The host streaming inference pipeline shared by predict and bench --e2e: images are read, decoded and
pre-processed in a thread pool (bounded prefetch), batched, run through the engine, post-processed, handed to a
sink. pipeline_device.py is its GPU-resident twin (decode, pre- and post-processing on the engine's device)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.backends.base import Runner
from deployzoo.data.images import ImageError, SourceItem, decode_for_spec, read_item_bytes
from deployzoo.engine import Engine
from deployzoo.registry import get_backend, get_task
from deployzoo.specs import InputSpec
from deployzoo.tasks.base import Prepared, Task

log = logging.getLogger(__name__)

STAGES = ("read", "decode", "pre", "infer", "post")


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over calls: read (file bytes), decode (bytes -> pixels), pre (network input),
    infer, post. The stages that run in worker threads overlap inference (their sums can exceed wall time)."""

    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, dt: float) -> None:
        with self.lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + dt


@dataclass
class Loaded:
    """An engine ready to run: what it is (validated once), its backend's runner, its task."""

    engine: Engine
    runner: Runner
    task: Task

    @property
    def engine_dir(self) -> Path:
        return self.engine.dir


def load_engine(engine_dir: str | Path, threads: int | None = None, device: str | None = None) -> Loaded:
    engine = Engine.load(engine_dir)
    runner = get_backend(engine.backend).load(engine, threads=threads, device=device)
    return Loaded(engine, runner, get_task(engine.task))


def _load_one(item: SourceItem, task: Any, spec: InputSpec, times: StageTimes) -> tuple[SourceItem, Any, Any]:
    t0 = time.perf_counter()
    try:
        data, label = read_item_bytes(item)
        t1 = time.perf_counter()
        img = decode_for_spec(data, label, spec)  # colour order and EXIF orientation rule of the engine
        t2 = time.perf_counter()
        prep = task.prepare(img, spec, item.meta)
    except ImageError as exc:  # unreadable, or unusable by the task (e.g. degenerate face landmarks)
        return item, None, str(exc)
    times.add("read", t1 - t0)
    times.add("decode", t2 - t1)
    times.add("pre", time.perf_counter() - t2)
    return item, (img, prep), None


def ordered_map(fn: Callable[[SourceItem], Any], items: Iterable[SourceItem], workers: int,
                depth: int) -> Iterator[Any]:
    """fn(item) for each item in a thread pool, at most `depth` items in flight, results in source order."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dz-read") as pool:
        pending: deque[Future] = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield fut.result()


def prefetch(items: Iterable[SourceItem], task: Any, spec: InputSpec, times: StageTimes,
             workers: int = 4, depth: int = 16) -> Iterator[tuple[SourceItem, Any, Any]]:
    """Read + decode + pre-process in a thread pool, at most `depth` images in flight, in source order."""
    return ordered_map(lambda item: _load_one(item, task, spec, times), items, workers, depth)


def run_batches(
    loaded: Loaded,
    items: Iterable[SourceItem],
    *,
    batch: int,
    on_result: Callable[[SourceItem, np.ndarray, dict[str, Any]], None],
    on_skip: Callable[[SourceItem, str], None],
    times: StageTimes,
    keep_image: bool = False,
    workers: int = 4,
    post: dict[str, Any] | None = None,
) -> None:
    """Stream `items` through the engine. A fixed-batch engine gets its last partial batch zero-padded."""
    eng, task, runner = loaded.engine, loaded.task, loaded.runner
    eng.batch.check(batch, eng.dir)
    fixed = not eng.batch.dynamic
    spec = eng.input
    post = post or dict(eng.post)
    buf: list[tuple[SourceItem, np.ndarray | None, Prepared]] = []

    def flush() -> None:
        if not buf:
            return
        preps = [p for _, _, p in buf]
        if fixed and len(preps) < batch:
            preps = preps + [Prepared(np.zeros_like(preps[0].tensor), preps[0].meta)] * (batch - len(preps))
        t0 = time.perf_counter()
        x = task.collate(preps, spec)
        outs = task.infer(runner, x, post)
        t1 = time.perf_counter()
        records = task.postprocess(outs, [p.meta for p in preps], post)[: len(buf)]
        times.add("infer", t1 - t0)
        times.add("post", time.perf_counter() - t1)
        for (item, img, _), rec in zip(buf, records):
            on_result(item, img, rec)
        buf.clear()

    for item, loaded_img, err in prefetch(items, task, spec, times, workers=workers, depth=max(8, 2 * batch + workers)):
        if err is not None:
            on_skip(item, err)
            continue
        img, prep = loaded_img
        buf.append((item, img if keep_image else None, prep))
        if len(buf) == batch:
            flush()
    flush()

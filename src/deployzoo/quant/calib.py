"""Calibration sets for int8: which images, how many, how they were chosen, and a reader that feeds them to the
calibrator pre-processed exactly as predict will pre-process real inputs."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.images import ImageError, SourceItem, list_source, load_item_for_spec
from deployzoo.specs import InputSpec
from deployzoo.engine import engine_feeds
from deployzoo.errors import DeployzooError
from deployzoo.progress import progress_bar
from deployzoo.tasks.base import task_source

log = logging.getLogger(__name__)

CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class CalibSet:
    root: Path
    items: list[SourceItem]
    method: str

    def describe(self) -> dict[str, Any]:
        names = "\n".join(sorted(i.name for i in self.items))
        return {
            "dir": str(self.root),
            "size": len(self.items),
            "method": self.method,
            "file_list_sha256": hashlib.sha256(names.encode()).hexdigest(),
            "files_head": [i.name for i in self.items[:5]],
        }


def make_calib_set(source: str | Path, size: int = 64, method: str = "minmax", seed: int = 0,
                   exclude: set[str] | None = None, task: Any | None = None) -> CalibSet:
    """Pick `size` images from `source` (a fixed-seed sample, sorted), never any file listed in `exclude`
    (resolved paths of the evaluation set): calibrating on evaluation images would flatter int8 accuracy.
    `task` reads the source its own way (e.g. face crops aligned from an IJB-C-layout landmark file)."""
    if method not in CALIB_METHODS:
        raise DeployzooError(f"--calib-method {method!r}: choose from {', '.join(CALIB_METHODS)}")
    if size < 1:
        raise DeployzooError(f"--calib-size {size}: must be >= 1")
    root, items = task_source(task, source) if task is not None else list_source(source)
    if exclude:
        clash = [i for i in items if str(i.path.resolve()) in exclude]
        if clash:
            raise DeployzooError(
                f"{source}: calibration set overlaps the evaluation set ({len(clash)} files, e.g. {clash[0].name}); "
                "use separate images"
            )
    if len(items) > size:
        items = sorted(random.Random(seed).sample(items, size), key=lambda i: i.name)
    return CalibSet(root, items, method)


class CalibReader:
    """onnxruntime.quantization.CalibrationDataReader over a CalibSet, batched as the model's input wants."""

    def __init__(self, calib: CalibSet, task: Any, spec: InputSpec, batch: int) -> None:
        self.calib, self.task, self.spec, self.batch = calib, task, spec, batch
        self.used = 0
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        pending = []
        with progress_bar(f"calibrate ({self.calib.method})", len(self.calib.items)) as bar:
            for item in self.calib.items:
                bar.advance()
                try:
                    img = load_item_for_spec(item, self.spec)  # colour order and EXIF orientation rule of the spec
                    pending.append(self.task.prepare(img, self.spec, item.meta))
                except ImageError as exc:
                    log.warning("calibration: skipping %s", exc)
                    continue
                if len(pending) == self.batch:
                    self.used += len(pending)
                    yield engine_feeds(self.spec, self.task.collate(pending, self.spec))
                    pending = []

    def check_usable(self) -> None:
        """Before any quantization work: at least one batch of the calibration images reads and pre-processes
        (a fixed-batch engine needs `batch` of them), else one line naming the calibration directory, how many
        images there are and the first cause. Reads only until it has found a batch."""
        items, need = self.calib.items, max(1, self.batch)
        ok, first = 0, None
        for item in items:
            try:
                self.task.prepare(load_item_for_spec(item, self.spec), self.spec, item.meta)
            except ImageError as exc:
                first = first or str(exc)
                continue
            ok += 1
            if ok >= need:
                return
        root, n = self.calib.root, len(items)
        if n == 0:
            raise DeployzooError(f"{root}: no calibration images")
        if ok == 0:
            what = "the 1 calibration image is not" if n == 1 else f"none of the {n} calibration images is"
            raise DeployzooError(f"{root}: {what} readable (first: {first})")
        if first is None:
            raise DeployzooError(f"{root}: {n} calibration image{'s' if n > 1 else ''}, fewer than the engine's fixed "
                                 f"batch {need}: give at least {need} (--calib-size)")
        are = "is" if ok == 1 else "are"
        raise DeployzooError(f"{root}: only {ok} of the {n} calibration images {are} readable, fewer than the engine's "
                             f"fixed batch {need} (first unreadable: {first})")

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._gen()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None
        self.used = 0

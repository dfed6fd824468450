"""What every task provides to the task-agnostic predict / bench / run code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deployzoo.specs import InputSpec


@dataclass
class Prepared:
    """One pre-processed image: the network input (C x H x W float32) and what post-processing needs."""

    tensor: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    name: str
    formats: tuple[str, ...]  # prediction file formats besides jsonl

    def prepare(self, img: np.ndarray, spec: InputSpec, meta: dict[str, Any] | None = None) -> Prepared:
        """`meta` is what the task's source listing attached to the item (e.g. face landmarks); raise
        data.images.ImageError for an item that cannot be used (it is skipped and reported)."""
        ...

    def collate(self, items: list[Prepared], spec: InputSpec) -> np.ndarray: ...

    def postprocess(
        self, outputs: dict[str, np.ndarray], metas: list[dict[str, Any]], post: dict[str, Any]
    ) -> list[dict[str, Any]]: ...

    def write_format(self, fmt: str, name: str, record: dict[str, Any], out_dir: Path) -> None: ...

    def render(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray: ...


# Optional task hooks, looked up with hasattr by the task-agnostic code:
# - list_source(source) -> (root, [SourceItem]): task-specific sources (e.g. an IJB-C root with landmarks);
#   the default is data.images.list_source.
# - infer(runner, x, post) -> outputs: how a collated batch is run (e.g. flip test: the batch and its mirror).
# - open_format(fmt, out_dir, items, resume) -> writer with write(item, record) and close(): formats that need
#   the whole item list up front (e.g. an N x D features array written by row).
# - always_formats: formats predict writes whatever --format says.
# Tensor hooks, for the device pipeline (pipeline_device.py: decode, pre- and post-processing on the engine's
# device, torch tensors throughout; a task without them, or whose `infer` hook is set, runs the host pipeline):
# - prepare_tensors(images, spec, metas) -> (batch, metas): `images` a list of uint8 3 x h x w RGB tensors on the
#   device, `metas` the items' source metas; returns the N x C x H x W float32 network input on that device and
#   the per-image metas post-processing needs (what `prepare` would have put in Prepared.meta).
# - postprocess_tensors(outputs, metas, post) -> records: `outputs` the runner's output tensors on its device;
#   does the selection there, batched (no per-image loop of tensor work), and copies only final results to the
#   host; the records are those `postprocess` gives.
# - tensor_spec_ok(spec) -> bool: whether the tensor hooks handle this engine input spec (default: yes).
# face_detection and classification have them; face_recognition (landmark alignment, flip test) and
# instance_segmentation (mask paste-back) keep the host pipeline.


def demo_sets(eval_root: Path, calib_root: Path, marker: str,
              write: Callable[[Path, bool], Any]) -> tuple[Path, Path]:
    """A run's generated demo: the evaluation set and a separate calibration set, each written by
    `write(root, is_calib)` unless an earlier run left it complete (ROOT/`marker` exists)."""
    for root, is_calib in ((eval_root, False), (calib_root, True)):
        if not (root / marker).exists():
            write(root, is_calib)
    return eval_root, calib_root


def task_source(task: Any, source: Any) -> tuple[Path, list[Any]]:
    """The items of `source` as `task` reads them (its own list_source hook, else plain image enumeration)."""
    if hasattr(task, "list_source"):
        return task.list_source(source)
    from deployzoo.data.images import list_source

    return list_source(source)

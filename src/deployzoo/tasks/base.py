"""What every task provides to the task-agnostic predict / bench / run code."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deployzoo.data import images
from deployzoo.specs import InputSpec


@dataclass
class Prepared:
    """One pre-processed image: the network input (C x H x W float32) and what post-processing needs."""

    tensor: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """What a task gives the task-agnostic predict / bench / run code. Subclasses implement the abstract methods;
    the others are hooks with defaults that a task overrides when it needs to (mmdeploy's BaseTask style): the
    generic code calls them all unconditionally, never probing for them."""

    name: ClassVar[str]
    suite: ClassVar[str]  # the dataset suite `run` scores this task with (registry.get_suite; suites/)
    formats: ClassVar[tuple[str, ...]] = ()  # prediction file formats besides jsonl
    always_formats: ClassVar[tuple[str, ...]] = ()  # formats predict writes whatever --format says

    # ------------------------------------------------------------------ host pipeline (required)
    @abstractmethod
    def prepare(self, img: np.ndarray, spec: InputSpec, meta: dict[str, Any] | None = None) -> Prepared:
        """`meta` is what the task's source listing attached to the item (e.g. face landmarks); raise
        data.images.ImageError for an item that cannot be used (it is skipped and reported)."""

    @abstractmethod
    def collate(self, items: list[Prepared], spec: InputSpec) -> Any:
        """The batch input: an N x C x H x W float32 array, or a dict of every graph input."""

    @abstractmethod
    def postprocess(self, outputs: dict[str, np.ndarray], metas: list[dict[str, Any]],
                    post: dict[str, Any]) -> list[dict[str, Any]]:
        """One JSON-able record per image of the batch."""

    @abstractmethod
    def render(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray:
        """The image with the record drawn on it (--save-img), in the colour order it came in (the engine's)."""

    # ------------------------------------------------------------------ hooks with defaults
    def vis_name(self, item: Any) -> str:
        """The --save-img file of a source item, relative to OUT/vis (one per record)."""
        return str(Path(item.name).with_suffix(".jpg"))

    def list_source(self, source: str | Path, post: dict[str, Any] | None = None) -> tuple[Path, list[Any]]:
        """(root, [SourceItem]) of a --source; default: the images of a directory, file or list file. A task
        overrides it for sources of its own (an IJB-C root with landmarks, a COCO root with its json); `post` is
        the run's post-processing settings (some say which items a source gives, e.g. min_face_score)."""
        return images.list_source(source)

    def agreement(self, reference: list[dict[str, Any]], tested: list[dict[str, Any]]) -> float:
        """How closely `tested` records follow `reference` records of the same images (the fp32 engine's), in
        [0, 1] (1: the same), NaN when there is nothing to compare; the int8 planner's measure (quant/planner.py).
        Default: this task has none."""
        from deployzoo.errors import DeployzooError

        raise DeployzooError(f"task {self.name}: no agreement measure between engines (the int8 planner needs one)")

    def infer(self, runner: Any, x: Any, post: dict[str, Any]) -> dict[str, np.ndarray]:
        """How a collated batch is run; default: once through the runner. Overridden by a task that runs its
        own inference step (e.g. flip test: the batch and its mirror), which keeps it on the host pipeline."""
        return runner.run(x)

    def open_format(self, fmt: str, out_dir: Path, items: list[Any], resume: bool) -> Any | None:
        """A writer (write(item, record), close()) for a format that needs the whole item list up front (an N x D
        features array written by row), or None (the default): write_format is called per record."""
        return None

    def write_format(self, fmt: str, name: str, record: dict[str, Any], out_dir: Path) -> None:
        """Write one record in `fmt` (one of `formats` without a writer from open_format); default: nothing."""

    # ------------------------------------------------------------------ device pipeline (optional)
    # pipeline_device.py: decode, pre- and post-processing on the engine's device, torch tensors throughout; a task
    # that does not override both tensor hooks, or that overrides `infer`, runs the host pipeline.
    def prepare_tensors(self, images: list[Any], spec: InputSpec,
                        metas: list[dict[str, Any] | None]) -> tuple[Any, list[dict[str, Any]]]:
        """`images` a list of uint8 3 x h x w RGB tensors on the device, `metas` the items' source metas; returns
        the N x C x H x W float32 network input on that device and the per-image metas post-processing needs
        (what `prepare` would have put in Prepared.meta)."""
        raise NotImplementedError(f"task {self.name} has no tensor pre-processing")

    def postprocess_tensors(self, outputs: dict[str, Any], metas: list[dict[str, Any]],
                            post: dict[str, Any]) -> list[dict[str, Any]]:
        """`outputs` the runner's output tensors on its device; the selection is done there, batched, and only
        final results are copied to the host; the records are those `postprocess` gives."""
        raise NotImplementedError(f"task {self.name} has no tensor post-processing")

    def tensor_spec_ok(self, spec: InputSpec) -> bool:
        """Whether the tensor hooks handle this engine input spec (default: yes)."""
        return True

    @property
    def has_tensor_hooks(self) -> bool:
        return (type(self).prepare_tensors is not Task.prepare_tensors
                and type(self).postprocess_tensors is not Task.postprocess_tensors)

    @property
    def runs_own_inference(self) -> bool:
        return type(self).infer is not Task.infer


def task_source(task: Task, source: Any, post: dict[str, Any] | None = None) -> tuple[Path, list[Any]]:
    """The items of `source` as `task` reads them (with the run's post-processing settings)."""
    return task.list_source(source, post)

"""The Suite interface: one dataset as `deployzoo run` uses it (the images to predict on, the calibration images
of its demo, the official scoring, the report's accuracy columns and the low-precision agreement with fp32).

A suite is one file in this package plus one line in registry._SUITES; a task names its suite (Task.suite).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar


def pct(fraction: float) -> str:
    """A report cell in percent: every accuracy and agreement number of report.md is a percentage with two
    decimals (report.json keeps the fractions the protocols return)."""
    return f"{100.0 * float(fraction):.2f}"


class Suite(ABC):
    """A dataset's evaluation. `__init__(data, work_dir, gt, demo_images)` opens the dataset at `data`, or writes
    the generated demo set (and a separate calibration set) under `work_dir` when `data` is "demo"; it sets
    `name` (what the report calls the data), `source` (what predict reads) and `calib_default` (the demo's
    calibration images, None for real data)."""

    pred_formats: ClassVar[tuple[str, ...]] = ()  # predict --format values the scoring reads
    accuracy_headers: ClassVar[tuple[str, ...]]  # the report's accuracy columns (the seed's table)
    agreement_header: ClassVar[str]  # what the agreement column measures
    agreement_nan: ClassVar[str]  # why an agreement is NaN
    agreement_definition: ClassVar[str]  # what the agreement number is, in one sentence (the report says it)
    plot_name: ClassVar[str] = ""  # the curve evaluate can plot (PR, ROC), "" for none
    calib_hint: ClassVar[str]  # where calibration images for this dataset come from
    demo_images: ClassVar[int] = 24  # size of the demo set when run does not say

    name: str
    source: Path
    calib_default: Path | None

    @abstractmethod
    def __init__(self, data: str, work_dir: Path, gt: Path | None = None, demo_images: int | None = None) -> None:
        ...

    @abstractmethod
    def settings(self, imgsz: Any, post: dict[str, Any]) -> str:
        """One paragraph for the report: the protocol's settings as this run applies them."""

    @abstractmethod
    def evaluate(self, pred_dir: Path, plot_path: Path | None = None, title: str | None = None) -> dict[str, Any]:
        """Score predict's output directory with the official protocol (JSON-able); plot to `plot_path`."""

    @abstractmethod
    def accuracy_cells(self, res: dict[str, Any], batch: int) -> list[Any]:
        """The report row's cells under `accuracy_headers` for one evaluate result."""

    def examples(self, pred_dirs: dict[str, Path]) -> list[str]:
        """Markdown for the report after the accuracy table: what the predictions of each precision (`pred_dirs`,
        fp32 first) say, image by image, where that helps read the numbers. Default: nothing."""
        return []

    def sample_warnings(self, res: dict[str, Any]) -> list[str]:
        """What in an evaluate result rests on too few samples to mean what its name says (the report warns)."""
        return []

    @abstractmethod
    def agreement(self, ref_dir: Path, pred_dir: Path) -> float:
        """How closely the predictions in `pred_dir` follow the fp32 engine's in `ref_dir` (NaN: nothing to
        compare, see `agreement_nan`)."""


def demo_sets(eval_root: Path, calib_root: Path, marker: str,
              write: Callable[[Path, bool], Any]) -> tuple[Path, Path]:
    """A run's generated demo: the evaluation set and a separate calibration set, each written by
    `write(root, is_calib)` unless an earlier run left it complete (ROOT/`marker` exists)."""
    for root, is_calib in ((eval_root, False), (calib_root, True)):
        if not (root / marker).exists():
            write(root, is_calib)
    return eval_root, calib_root

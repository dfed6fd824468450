"""What every task provides to the task-agnostic predict / bench / run code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass
class Prepared:
    """One pre-processed image: the network input (C x H x W float32) and what post-processing needs."""

    tensor: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    name: str
    formats: tuple[str, ...]  # prediction file formats besides jsonl

    def prepare(self, img: np.ndarray, spec: dict[str, Any]) -> Prepared: ...

    def collate(self, items: list[Prepared], spec: dict[str, Any]) -> np.ndarray: ...

    def postprocess(
        self, outputs: dict[str, np.ndarray], metas: list[dict[str, Any]], post: dict[str, Any]
    ) -> list[dict[str, Any]]: ...

    def write_format(self, fmt: str, name: str, record: dict[str, Any], out_dir: Path) -> None: ...

    def render(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray: ...

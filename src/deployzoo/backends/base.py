"""The backend interface: build an engine directory from an exported graph, load it into a Runner.

A backend is one file in this package plus one line in registry._BACKENDS; nothing else branches on its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    manifest: dict[str, Any]
    device: str

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """N x C x H x W float32 -> {output name: array} (numpy, on the host)."""
        ...

    def peak_memory_bytes(self) -> int | None:
        """Engine-side peak memory where the runtime can tell (device memory on GPUs), else None."""
        ...


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]
    needs_onnx: bool

    def build(
        self, onnx_path: Path, out_dir: Path, precision: str, meta: dict[str, Any], calib: Any | None
    ) -> dict[str, Any]:
        """Write the runtime's model file(s) into out_dir; return manifest entries (model_file, quantization, ...)."""
        ...

    def load(self, engine_dir: Path, manifest: dict[str, Any], threads: int | None = None,
             device: str | None = None) -> Runner: ...

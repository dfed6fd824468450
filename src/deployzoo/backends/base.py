"""The backend interface: build an engine directory from an exported graph, load it into a Runner.

A backend is one file in this package plus one line in registry._BACKENDS; nothing else branches on its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from deployzoo.engine import Engine


@runtime_checkable
class Runner(Protocol):
    """A loaded engine that runs host arrays. `takes_tensors` says whether it is also a TensorRunner."""

    engine: Engine
    device: str
    takes_tensors: ClassVar[bool]

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """N x C x H x W float32 (or every graph input by name) -> {output name: array} (numpy, on the host)."""
        ...

    def synchronize(self) -> None:
        """Wait for the work queued on the runner's device (a host runner: nothing to wait for)."""
        ...

    def peak_memory_bytes(self) -> int | None:
        """Engine-side peak memory where the runtime can tell (device memory on GPUs), else None."""
        ...


@runtime_checkable
class TensorRunner(Runner, Protocol):
    """A runner that also takes torch tensors on its device (the device pipeline, device timing)."""

    torch_device: Any  # torch.device

    def run_tensors(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """{input name: tensor} -> {output name: float32 tensor on the runner's device}."""
        ...

    def device_feeds(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, Any]:
        """A host batch as the tensors the engine takes, already on its device in its dtype and layout."""
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

    def load(self, engine: Engine, threads: int | None = None, device: str | None = None) -> Runner: ...

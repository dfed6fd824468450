"""The backend interface: build an engine directory from an exported graph, load it into a Runner.

A backend is one file in this package plus one line in registry._BACKENDS; nothing else branches on its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from deployzoo.engine import Engine

if TYPE_CHECKING:
    from deployzoo.request import BuildRequest, Graph


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares it can do; build, run and the CLI read this instead of probing the backend.

    - `precisions`: the precisions it builds; `refused`: precision -> why not (said instead of the generic line);
    - `devices`: device types its engines run on;
    - `options`: the build options it takes (request.BuildOptions fields: device, tf32, ... for the PyTorch
      backends; perf_hint, streams for OpenVINO); BuildRequest.create refuses the others;
    - `device_pipeline`: its runners take torch tensors on their device (TensorRunner), so predict can decode,
      pre- and post-process there;
    - `uses_recipe`: its low-precision builds follow the request's Recipe (float groups, op types kept fp32);
    - `int8_float_groups`: its int8 builds keep the recipe's float groups float and quantize only its op types
      (implied by uses_recipe; OpenVINO maps them to NNCF's ignored scope), so the int8 planner can vary them;
    - `requires`: the Python packages it needs (BuildRequest.create names the missing ones in one line);
    - `machine_problem`: precision -> why this machine cannot run it (None: it can), for what depends on the CPU
      (OpenVINO runs an fp16 request as bf16 on a CPU without fp16 and says nothing).
    """

    precisions: tuple[str, ...]
    devices: tuple[str, ...] = ("cpu",)
    options: tuple[str, ...] = ()
    device_pipeline: bool = False
    uses_recipe: bool = False
    int8_float_groups: bool = False
    refused: Mapping[str, str] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    machine_problem: Callable[[str], str | None] | None = None

    def missing(self) -> list[str]:
        """The required packages that are not installed."""
        import importlib.util

        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    @property
    def plans_int8(self) -> bool:
        """The int8 planner can vary which layer groups of its int8 builds stay float."""
        return "int8" in self.precisions and (self.uses_recipe or self.int8_float_groups)

    def precision_problem(self, backend: str, precision: str) -> str | None:
        """None if `precision` builds here, else the one line that says why not."""
        if precision in self.precisions:
            return self.machine_problem(precision) if self.machine_problem and not self.missing() else None
        return self.refused.get(precision) or (f"backend {backend}: precision {precision} not supported here "
                                               f"(choose {', '.join(self.precisions)})")


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
    capabilities: ClassVar[Capabilities]

    def build(self, graph: Graph, out_dir: Path, request: BuildRequest) -> dict[str, Any]:
        """Write the runtime's model file(s) for `request` (its precision, calibration images, options and recipe)
        from the exported `graph` into out_dir; return manifest entries (model_file, options, quantization, ...)."""
        ...

    def load(self, engine: Engine, threads: int | None = None, device: str | None = None) -> Runner: ...

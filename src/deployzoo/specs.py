"""The typed parts of an engine's description: its image input, its batch sizes, its files. The manifest on disk
is JSON; past engine.read_manifest (which validates it) everything reads these by attribute."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployzoo.errors import DeployzooError

_INPUT_FIELDS = ("name", "imgsz", "color", "mean", "std", "extra_inputs", "exif_orientation", "layout", "dtype")


@dataclass(frozen=True)
class InputSpec:
    """An engine's image input. `imgsz` is (H, W), or "origin" (each image at its own size); mean / std are per
    channel on the 0..255 scale in `color` order; `extra_inputs` are the graph's inputs after the image (Mask R-CNN's
    image_sizes); `exif_orientation` whether the model's official reader turns images by their EXIF tag; `params`
    holds the task's own pre-processing settings (resize, crop, interpolation, pad, resize_impl, ...)."""

    name: str = "images"
    imgsz: tuple[int, int] | str = "origin"
    color: str = "BGR"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    extra_inputs: tuple[str, ...] = ()
    exif_orientation: bool = False
    layout: str = "NCHW"
    dtype: str = "float32"
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        """From a manifest's (or the registry's) `input` object; absent keys take the defaults above."""
        sz = d.get("imgsz", "origin")
        return cls(
            name=str(d.get("name", "images")),
            imgsz="origin" if sz == "origin" else (int(sz[0]), int(sz[1])),
            color=str(d.get("color", "BGR")).upper(),
            mean=tuple(float(v) for v in d.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(float(v) for v in d.get("std", (1.0, 1.0, 1.0))),
            extra_inputs=tuple(d.get("extra_inputs", ())),
            exif_orientation=bool(d.get("exif_orientation", False)),
            layout=str(d.get("layout", "NCHW")),
            dtype=str(d.get("dtype", "float32")),
            params={k: v for k, v in d.items() if k not in _INPUT_FIELDS},
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form (from_dict(to_dict()) == self)."""
        return {"name": self.name, "imgsz": self.imgsz if self.origin else list(self.imgsz), "color": self.color,
                "mean": list(self.mean), "std": list(self.std), "extra_inputs": list(self.extra_inputs),
                "exif_orientation": self.exif_orientation, "layout": self.layout, "dtype": self.dtype,
                **dict(self.params)}

    @property
    def origin(self) -> bool:
        """Each image at its own size (no fixed H x W)."""
        return self.imgsz == "origin"

    @property
    def bgr(self) -> bool:
        return self.color == "BGR"

    @property
    def input_names(self) -> list[str]:
        return [self.name, *self.extra_inputs]


@dataclass(frozen=True)
class BatchSpec:
    """The batch sizes an engine takes: any of min..max (dynamic), or exactly `size` (fixed)."""

    dynamic: bool
    min: int = 1
    max: int | None = None
    size: int | None = None

    @classmethod
    def from_dict(cls, b: Mapping[str, Any]) -> BatchSpec:
        if b["dynamic"]:
            return cls(True, int(b.get("min", 1)), None if b.get("max") is None else int(b["max"]))
        return cls(False, size=int(b["size"]))

    def to_dict(self) -> dict[str, Any]:
        return {"dynamic": True, "min": self.min, "max": self.max} if self.dynamic else \
            {"dynamic": False, "size": self.size}

    def allows(self, n: int) -> bool:
        if self.dynamic:
            return self.min <= n <= (self.max if self.max is not None else 1 << 30)
        return n == self.size

    def default(self) -> int:
        """The batch to run when none is asked for: 1 on a dynamic engine, its size on a fixed one."""
        return max(1, self.min) if self.dynamic else int(self.size or 1)

    def rule(self) -> str:
        """The batch sizes this engine takes, in words."""
        return f"{self.min}..{self.max}" if self.dynamic else f"exactly {self.size} (fixed-batch engine)"

    def check(self, n: int, where: str | Path) -> None:
        if not self.allows(n):
            raise DeployzooError(f"{where}: batch {n} not supported by this engine: batch must be {self.rule()}")


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int

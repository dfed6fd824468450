"""What a model declares to the rest of deployzoo (ModelSpec) and how it says so (register_model).

Adding a model is one file under deployzoo/models/ that defines the network and registers a factory:

    @register_model("mymodel", aliases=("my-model",), order=50)
    def model_spec() -> ModelSpec:
        return ModelSpec(name="mymodel", task="classification", ...)

The registry (deployzoo.registry) imports every module of this package once, the first time a model is asked
for, so the decorator is all the wiring there is. Factories run on each get_model call (they are cheap: a spec,
no weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from deployzoo.errors import DeployzooError


class DeployModule(nn.Module):
    """What ModelSpec.deploy returns: the network with its in-graph decode, and what export, the parity check and
    the PyTorch backends need to know about its graph (class attributes; the defaults fit an image-in,
    per-image-out network)."""

    input_names: ClassVar[tuple[str, ...]] = ("images",)  # graph inputs; extra ones come from example_inputs
    output_names: ClassVar[tuple[str, ...]] = ()
    # None: per-image outputs (batch first, and an `anchors` axis at origin size); else output -> {axis: name}
    # for flat outputs whose sizes depend on the data (detections after NMS: no CUDA-graph capture)
    output_axes: ClassVar[dict[str, dict[int, str]] | None] = None

    def example_inputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """Every graph input for an image batch (e.g. per-image sizes inside the padding)."""
        return (images,)

    def parity(self, got: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
        """Differences of one probe's outputs, ONNX Runtime vs eager: the max abs difference per output (inf where
        shapes or the finite entries differ). Outputs whose length depends on the data measure their own."""
        return {k: max_abs_diff(got[k], ref[k]) for k in got}


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| over the finite entries; inf where only one side overflowed or the shapes differ."""
    if a.shape != b.shape:
        return float("inf")
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return float("inf")
    return float(np.abs(a[fa].astype(np.float64) - b[fb]).max()) if fa.any() else 0.0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    variants: tuple[str, ...]
    default_variant: str
    default_imgsz: dict[str, Any]  # variant -> [H, W] or "origin"
    input: dict[str, Any]  # color, mean, std, layout
    post: dict[str, Any]  # post-processing defaults
    weights: dict[str, Any]  # variant -> deployzoo.weights.WeightsSource: the official weights (file, URL, hash)
    build: Callable[[str, str | Path | None], nn.Module]  # eval-mode network from (variant, weights)
    deploy: Callable[[nn.Module], DeployModule]  # export wrapper: network + in-graph decode
    output_names: tuple[str, ...]
    seed_imgsz: dict[str, Any] = field(default_factory=dict)  # the sizes the seeds benchmark
    # variant -> int8 recipe: {"float_groups": conv groups kept float (quant/recipes.py), "op_types": op types quantized}
    int8_recipe: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    bench_batches: tuple[int, ...] = (1, 4, 8)  # `run`'s default benchmark batches (the seed's)
    predict_batch: int = 1  # `run`'s default batch for the accuracy pass
    exporter: str = "torchscript"  # the ONNX exporter that handles this architecture (export's default)
    opset: int = 17
    max_batch: int = 64  # upper end of a dynamic batch axis
    fp16_keep_ops: tuple[str, ...] = ()  # ONNX op types an fp16 build keeps fp32 (e.g. LayerNorm, Softmax)
    bench_imgsz: list[int] | None = None  # `run`'s benchmark H, W for origin-size engines (None: bench's 640 x 640)
    fp16_scope: tuple[str, ...] = ()  # if set, only nodes under these module paths run fp16 (the rest fp32)
    # variant -> entries merged over `input` / `post` (e.g. a weights convention's resize or class map)
    variant_input: dict[str, dict[str, Any]] = field(default_factory=dict)
    variant_post: dict[str, dict[str, Any]] = field(default_factory=dict)

    def input_for(self, variant: str) -> dict[str, Any]:
        return {**self.input, **self.variant_input.get(variant, {})}

    def post_for(self, variant: str) -> dict[str, Any]:
        return {**self.post, **self.variant_post.get(variant, {})}

    def check_variant(self, variant: str | None) -> str:
        v = variant or self.default_variant
        if v not in self.variants:
            raise DeployzooError(f"{self.name}: unknown variant {v!r} (choose from {', '.join(self.variants)})")
        return v


@dataclass(frozen=True)
class Registration:
    name: str
    factory: Callable[[], ModelSpec]
    aliases: tuple[str, ...]
    order: int  # listing order (model_names, CLI help); ties by name
    module: str


REGISTERED: dict[str, Registration] = {}


def register_model(name: str, aliases: tuple[str, ...] = (), order: int = 100):
    """Decorator: register a zero-argument ModelSpec factory under `name` (and `aliases`, all lower case)."""

    def deco(factory: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
        taken = {n: r for r in REGISTERED.values() for n in (r.name, *r.aliases)}
        for n in (name, *aliases):
            if n != n.strip().lower():
                raise DeployzooError(f"model name {n!r} ({factory.__module__}): names are lower case, no spaces")
            if n in taken and taken[n].module != factory.__module__:
                raise DeployzooError(f"model name {n!r} registered twice ({taken[n].module} and {factory.__module__})")
        REGISTERED[name] = Registration(name, factory, tuple(aliases), order, factory.__module__)
        return factory

    return deco

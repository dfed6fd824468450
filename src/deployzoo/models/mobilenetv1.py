"""MobileNetV1 x0.25, the ImageNet classifier that RetinaFace-mnet's backbone was pre-trained as
(biubug6/Pytorch_Retinaface `mobilenetV1X0.25_pretrain.tar`: a dict with `state_dict` under `module.` keys,
README top-1 46.58%). Same module tree as the RetinaFace body, plus its average pool and 1000-way fc.

Pre-processing it was trained with: torchvision's ImageNet recipe (RGB, resize shorter side to 256 bilinear,
centre crop 224, ImageNet mean / std).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deployzoo.checkpoint import apply_state_dict, load_state_dict
from deployzoo.errors import DeployzooError
from deployzoo.models.retinaface import BIUBUG6_DOWNLOAD, BIUBUG6_README, MobileNetV1
from deployzoo.models.base import DeployModule, ModelSpec, register_model
from deployzoo.weights import WeightsSource

VARIANTS = ("x0.25",)
NUM_CLASSES = 1000
OFFICIAL_WEIGHTS = {"x0.25": WeightsSource("mobilenetV1X0.25_pretrain.tar", published=BIUBUG6_README,
                                           manual=BIUBUG6_DOWNLOAD, note="top-1 46.58%")}
INPUT = {"layout": "NCHW", "color": "RGB", "mean": [0.485 * 255, 0.456 * 255, 0.406 * 255],
         "std": [0.229 * 255, 0.224 * 255, 0.225 * 255], "resize": 256, "crop": 224, "interpolation": "bilinear",
         "fixed_size": True,
         # the ImageNet evaluation reads with PIL, Image.open(path).convert('RGB') (torchvision ImageFolder's
         # pil_loader), which does not apply the EXIF Orientation tag: the stored pixels
         "exif_orientation": False}


class ClassifierDeploy(DeployModule):
    """Export wrapper of an ImageNet classifier: fp32 logits (softmax and top-k run on the host)."""

    output_names = ("logits",)

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.net(x).float(),)


def check_classes(sd: dict[str, torch.Tensor], key: str, path: str | Path, expect: int = NUM_CLASSES) -> None:
    """A classifier checkpoint for another label set is one clear line, not a shape-mismatch dump."""
    if key in sd and sd[key].shape[0] != expect:
        raise DeployzooError(f"{path}: {key} has {sd[key].shape[0]} classes, the model {expect} "
                             "(an ImageNet-1k checkpoint is needed)")


def build_model(variant: str, weights: str | Path | None = None) -> MobileNetV1:
    model = MobileNetV1(num_classes=NUM_CLASSES)
    if weights is not None:
        sd = load_state_dict(weights)
        check_classes(sd, "fc.weight", weights)
        hint = "this is a RetinaFace detector checkpoint, not the classifier pretrain" if any(
            k.startswith("body.") for k in sd) else ""
        apply_state_dict(model, sd, weights, hint=hint)
    return model.eval()


@register_model("mobilenetv1", order=30)
def model_spec() -> ModelSpec:
    """The registry entry (models/base.py)."""
    from deployzoo.tasks.classification import DEFAULT_POST

    return ModelSpec(
        name="mobilenetv1",
        task="classification",
        variants=VARIANTS,
        default_variant="x0.25",
        default_imgsz={"x0.25": [224, 224]},
        input=dict(INPUT),  # exif_orientation False: PIL's reader (models/mobilenetv1.py)
        post=dict(DEFAULT_POST),
        weights=dict(OFFICIAL_WEIGHTS),
        build=build_model,
        deploy=ClassifierDeploy,
        output_names=ClassifierDeploy.output_names,
        # measured on val_227 (docs/benchmarks/cpu.md): int8 depthwise convs cost ~11 top-1 points on this tiny
        # network, so they stay float with the first conv and the fc; the pointwise convs run int8.
        int8_recipe={"x0.25": {"float_groups": ("first_conv", "depthwise", "heads"), "op_types": ("Conv",)}},
        bench_batches=(1, 32),
    )

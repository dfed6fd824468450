"""Key mapping between mmdetection's `mask_rcnn_r50_fpn_1x_coco` checkpoints and torchvision's Mask R-CNN.

The mmdet names come from open-mmlab/mmdetection (v2.x and 3.x use the same ones):

- `configs/_base_/models/mask_rcnn_r50_fpn.py` (3.x: `mask-rcnn_r50_fpn.py`): ResNet-50 + FPN + RPNHead +
  StandardRoIHead(Shared2FCBBoxHead, FCNMaskHead), `num_classes=80`.
- `mmdet/models/backbones/resnet.py`, `mmdet/models/utils/res_layer.py`: `conv1`, `bn1`, `layer{1-4}.{i}` with
  `conv{1-3}`/`bn{1-3}` and `downsample.0/1` (mmcv `build_norm_layer` names a BatchNorm `bn<postfix>`), i.e. the
  same names as torchvision's ResNet.
- `mmdet/models/necks/fpn.py`: `lateral_convs.{i}` and `fpn_convs.{i}` are mmcv `ConvModule`s, which keep their
  conv as `.conv` (`mmcv/cnn/bricks/conv_module.py`); P6 is a stride-2 max-pool without weights in both.
- `mmdet/models/dense_heads/rpn_head.py`: `rpn_conv`, `rpn_cls` (sigmoid, 3 anchors), `rpn_reg` (3 x 4). Both
  libraries flatten the outputs as (H, W, anchor) with ratio-major anchors (0.5, 1, 2), so the channels line up.
- `mmdet/models/roi_heads/bbox_heads/convfc_bbox_head.py`, `bbox_head.py`: `shared_fcs.{0,1}`; `fc_cls` has
  `num_classes + 1` rows with the background LAST; `fc_reg` has `4 * num_classes` rows (no background).
- `mmdet/models/roi_heads/mask_heads/fcn_mask_head.py`: `convs.{i}` (ConvModule), `upsample` (deconv 2x2),
  `conv_logits` with `num_classes` channels (no background).

Mapping (mmdet -> torchvision `maskrcnn_resnet50_fpn(num_classes=81)`):

    backbone.<x>                          -> backbone.body.<x>
    neck.lateral_convs.{i}.conv           -> backbone.fpn.inner_blocks.{i}.0
    neck.fpn_convs.{i}.conv               -> backbone.fpn.layer_blocks.{i}.0
    rpn_head.rpn_conv / rpn_cls / rpn_reg -> rpn.head.conv.0.0 / cls_logits / bbox_pred
    roi_head.bbox_head.shared_fcs.{0,1}   -> roi_heads.box_head.fc6 / fc7
    roi_head.bbox_head.fc_cls   (81 rows) -> roi_heads.box_predictor.cls_score, rows reordered [80, 0..79]
    roi_head.bbox_head.fc_reg  (320 rows) -> roi_heads.box_predictor.bbox_pred, 4 zero rows prepended
    roi_head.mask_head.convs.{i}.conv     -> roi_heads.mask_head.{i}.0
    roi_head.mask_head.upsample           -> roi_heads.mask_predictor.conv5_mask
    roi_head.mask_head.conv_logits   (80) -> roi_heads.mask_predictor.mask_fcn_logits, zero channel 0 prepended

torchvision puts the background at class 0; moving mmdet's last row first leaves the softmax scores unchanged,
and the prepended background rows are never used by torchvision's post-processing. No rescaling is needed: mmdet's
`DeltaXYWHBBoxCoder` (`target_stds` 0.1, 0.1, 0.2, 0.2 in the R-CNN head, 1.0 in the RPN) multiplies the deltas
by the stds, torchvision's `BoxCoder` divides by weights (10, 10, 5, 5) and (1, 1, 1, 1): the same decode.
`num_batches_tracked` is dropped: torchvision's `FrozenBatchNorm2d` has none, and `nn.BatchNorm2d` (used when
the model is built without pretrained weights) keeps its own counter when the key is absent.

Not weights, so not handled here: torchvision rounds its base anchors, uses RoIAlign(aligned=False,
sampling_ratio=2) where mmdet uses aligned=True, sampling_ratio=0, and assigns RoIs to FPN levels with a
slightly different rule; outputs of the two frameworks are close, not identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from deployzoo.errors import DeployzooError

MMDET_NUM_CLASSES = 80
TV_NUM_CLASSES = MMDET_NUM_CLASSES + 1  # torchvision counts the background (class 0)
_RESNET50_BLOCKS = (3, 4, 6, 3)
_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _module_pairs() -> dict[str, str]:
    """mmdet module name -> torchvision module name, for every module with weights."""
    pairs = {"backbone.conv1": "backbone.body.conv1", "backbone.bn1": "backbone.body.bn1"}
    for layer, blocks in enumerate(_RESNET50_BLOCKS, start=1):
        for b in range(blocks):
            names = [f"conv{j}" for j in (1, 2, 3)] + [f"bn{j}" for j in (1, 2, 3)]
            names += ["downsample.0", "downsample.1"] if b == 0 else []
            for n in names:
                pairs[f"backbone.layer{layer}.{b}.{n}"] = f"backbone.body.layer{layer}.{b}.{n}"
    for i in range(4):
        pairs[f"neck.lateral_convs.{i}.conv"] = f"backbone.fpn.inner_blocks.{i}.0"
        pairs[f"neck.fpn_convs.{i}.conv"] = f"backbone.fpn.layer_blocks.{i}.0"
        pairs[f"roi_head.mask_head.convs.{i}.conv"] = f"roi_heads.mask_head.{i}.0"
    pairs |= {
        "rpn_head.rpn_conv": "rpn.head.conv.0.0",
        "rpn_head.rpn_cls": "rpn.head.cls_logits",
        "rpn_head.rpn_reg": "rpn.head.bbox_pred",
        "roi_head.bbox_head.shared_fcs.0": "roi_heads.box_head.fc6",
        "roi_head.bbox_head.shared_fcs.1": "roi_heads.box_head.fc7",
        "roi_head.bbox_head.fc_cls": "roi_heads.box_predictor.cls_score",
        "roi_head.bbox_head.fc_reg": "roi_heads.box_predictor.bbox_pred",
        "roi_head.mask_head.upsample": "roi_heads.mask_predictor.conv5_mask",
        "roi_head.mask_head.conv_logits": "roi_heads.mask_predictor.mask_fcn_logits",
    }
    return pairs


_MM2TV = _module_pairs()
_TV2MM = {v: k for k, v in _MM2TV.items()}


def _zeros_first(t: Tensor, n: int) -> Tensor:
    return torch.cat([t.new_zeros((n, *t.shape[1:])), t])


def _bg_first(t: Tensor) -> Tensor:  # mmdet rows [c0..c79, bg] -> torchvision [bg, c0..c79]
    return torch.cat([t[-1:], t[:-1]])


def _bg_last(t: Tensor) -> Tensor:
    return torch.cat([t[1:], t[:1]])


# module -> (expected rows, what the rows are, conversion); keyed by the source layout's module name
_TO_TV: dict[str, tuple[int, str, Callable[[Tensor], Tensor]]] = {
    "roi_head.bbox_head.fc_cls": (TV_NUM_CLASSES, "classes", _bg_first),
    "roi_head.bbox_head.fc_reg": (4 * MMDET_NUM_CLASSES, "rows", lambda t: _zeros_first(t, 4)),
    "roi_head.mask_head.conv_logits": (MMDET_NUM_CLASSES, "channels", lambda t: _zeros_first(t, 1)),
}
_TO_MM: dict[str, tuple[int, str, Callable[[Tensor], Tensor]]] = {
    "roi_heads.box_predictor.cls_score": (TV_NUM_CLASSES, "classes", _bg_last),
    "roi_heads.box_predictor.bbox_pred": (4 * TV_NUM_CLASSES, "rows", lambda t: t[4:]),
    "roi_heads.mask_predictor.mask_fcn_logits": (TV_NUM_CLASSES, "channels", lambda t: t[1:]),
}
_EXPECT_NOTE = {
    "classes": f"({MMDET_NUM_CLASSES} COCO classes + background)",
    "rows": "(4 per class; class-agnostic regression is not supported)",
    "channels": "(one mask per class)",
}


def is_mmdet_layout(sd: Mapping[str, Tensor]) -> bool:
    """True when the state_dict uses mmdet's two-stage detector names (`neck.*`, `roi_head.*`, `rpn_head.*`)."""
    return any(k.startswith(("neck.", "roi_head.", "rpn_head.")) for k in sd)


def _convert(
    sd: Mapping[str, Tensor],
    names: Mapping[str, str],
    special: Mapping[str, tuple[int, str, Callable[[Tensor], Tensor]]],
    where: str,
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    bad_shape: list[str] = []
    for key, value in sd.items():
        if key.endswith(".num_batches_tracked"):
            continue
        module, _, param = key.rpartition(".")
        if module not in names or param not in _PARAMS:
            unknown.append(key)
            continue
        if module in special:
            rows, what, fn = special[module]
            if value.ndim == 0 or value.shape[0] != rows:
                got = value.shape[0] if value.ndim else 0
                bad_shape.append(f"{module.rpartition('.')[2]} has {got} {what}, expected {rows} {_EXPECT_NOTE[what]}")
                continue
            value = fn(value)
        out[f"{names[module]}.{param}"] = value
    if unknown or bad_shape:
        parts = list(dict.fromkeys(bad_shape))
        if unknown:
            shown = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
            parts.append(f"{len(unknown)} key{'s' if len(unknown) > 1 else ''} cannot be mapped ({shown})")
        raise DeployzooError(f"{where}: not a Mask R-CNN R50-FPN COCO state_dict: " + "; ".join(parts))
    return out


def mmdet_to_torchvision(sd: Mapping[str, Tensor], path: str | Path) -> dict[str, Tensor]:
    """Rename and reshape an mmdet `mask_rcnn_r50_fpn` state_dict for torchvision's `maskrcnn_resnet50_fpn`
    built with `num_classes=81`. Raises DeployzooError naming `path` for keys or shapes that do not fit."""
    return _convert(sd, _MM2TV, _TO_TV, str(path))


def torchvision_to_mmdet(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `mmdet_to_torchvision`: drops the background regression rows / mask channel (class 0) and
    moves the background classifier row back to the end. `num_batches_tracked` entries are dropped."""
    return _convert(sd, _TV2MM, _TO_MM, "torchvision state_dict")

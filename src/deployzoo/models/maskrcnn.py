"""Mask R-CNN R50-FPN: torchvision's modules (the maintained implementation) with the weights of torchvision's
COCO releases (v1, v2) or of mmdetection's `mask_rcnn_r50_fpn_1x_coco` (keys mapped by models/maskrcnn_mmdet.py),
and one deploy graph that runs a whole padded batch: backbone + FPN, RPN, proposal selection, RoI heads, box
decode + NMS and the mask head, with every data-dependent step written as batched tensor ops so that the graph
exports to ONNX with dynamic batch and image size.

Where the two conventions differ, the difference is carried as variant config (`CONFIGS`), not as code forks:
- RoIAlign: torchvision `aligned=False`, sampling ratio 2; mmdetection `aligned=True`, sampling ratio 0 (adaptive).
- RoI -> FPN level: torchvision floor(4 + log2(sqrt(area) / 224 + 1e-6)) - 2; mmdetection
  floor(log2(sqrt(area) / 56 + 1e-6)) (the same rule up to where the epsilon sits).
- Anchor strides: torchvision divides the padded image size by the feature size (P6 of an 800-high batch: 61);
  mmdetection uses 4, 8, 16, 32, 64. Anchor shapes: torchvision rounds the base anchors, mmdetection does not.
- Box decode: mmdetection clamps log-size deltas on both sides, torchvision only above.
- Small boxes: torchvision drops proposals under 1e-3 px and detections under 1e-2 px; mmdetection drops
  proposals of zero width / height and keeps every detection.
- Classes: torchvision's 91 indices are COCO category ids (background 0, gaps "N/A"); mmdetection's 80
  contiguous classes are mapped to 81 with background 0 by the key mapping, then to category ids.
- Pre-processing (tasks/instance_segmentation.py): torchvision normalises, then resizes the float image with
  bilinear interpolate; mmdetection resizes the 8-bit image with OpenCV, then normalises. Same mean / std.
- Mask paste-back: torchvision's paste_masks_in_image (1-pixel padding, resize to the integer box), mmdetection's
  grid_sample over the box.
Test settings are equal in both: RPN 1000 per level before NMS 0.7, 1000 per image after; detections score > 0.05,
per-class NMS 0.5, 100 per image; masks 28 x 28 thresholded at 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deployzoo.checkpoint import apply_state_dict, load_state_dict
from deployzoo.data.coco import COCO_CATEGORY_IDS
from deployzoo.errors import DeployzooError
from deployzoo.models.base import DeployModule, ModelSpec, register_model
from deployzoo.weights import WeightsSource

VARIANTS = ("mmdet_1x", "tv_v1", "tv_v2")
TV_CATEGORY_IDS = tuple(range(91))  # torchvision's class index is the COCO category id (0 = background)
MASK_SIZE = 28
RESIZE = (800, 1333)  # shorter side, longer side cap: both conventions' test scale
PAD = 32
INPUT = {"layout": "NCHW", "color": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
         "resize": list(RESIZE), "pad": PAD, "origin_only": True,
         # torchvision's references (CocoDetection: Image.open(path).convert("RGB")) do not apply the EXIF
         # Orientation tag; mmdetection's loader does (registry.py's variant_input sets it per variant)
         "exif_orientation": False}
TEST_CFG = {"rpn_pre_nms": 1000, "rpn_post_nms": 1000, "rpn_nms": 0.7, "conf": 0.05, "iou": 0.5, "max_det": 100,
            "mask_thr": 0.5}
CONFIGS: dict[str, dict[str, Any]] = {
    "tv_v1": {"builder": "maskrcnn_resnet50_fpn", "num_classes": 91, "roi_aligned": False, "roi_sampling": 2,
              "roi_level": "torchvision", "anchor_strides": "image_over_grid", "anchor_round": True,
              "clamp_min_delta": False, "rpn_min_size": 1e-3, "det_min_size": 1e-2, "resize_impl": "torch",
              "paste": "torchvision"},
    "tv_v2": {"builder": "maskrcnn_resnet50_fpn_v2", "num_classes": 91, "roi_aligned": False, "roi_sampling": 2,
              "roi_level": "torchvision", "anchor_strides": "image_over_grid", "anchor_round": True,
              "clamp_min_delta": False, "rpn_min_size": 1e-3, "det_min_size": 1e-2, "resize_impl": "torch",
              "paste": "torchvision"},
    "mmdet_1x": {"builder": "maskrcnn_resnet50_fpn", "num_classes": 81, "roi_aligned": True, "roi_sampling": 0,
                 "roi_level": "mmdet", "anchor_strides": "fixed", "anchor_round": False,
                 "clamp_min_delta": True, "rpn_min_size": 0.0, "det_min_size": 0.0, "resize_impl": "cv2",
                 "paste": "mmdet"},
}
# The published files. Both zoos put the first 8 hex digits of the file's sha256 in its name: torchvision loads
# these with check_hash=True (torch.hub compares the `-HEX.` of the name with the sha256's start), OpenMMLab's
# tools/model_converters/publish_model.py names a checkpoint `NAME-{sha256[:8]}.pth`. No full hash is published.
OFFICIAL_WEIGHTS = {
    "tv_v1": WeightsSource(
        "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", hash_prefix="bf2d0c1e",
        url="https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        published="torchvision MaskRCNN_ResNet50_FPN_Weights.COCO_V1", note="box 37.9 / mask 34.6"),
    "tv_v2": WeightsSource(
        "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", hash_prefix="73cbd019",
        url="https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        published="torchvision MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1", note="box 47.4 / mask 41.8"),
    "mmdet_1x": WeightsSource(
        "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth", hash_prefix="d4b0c5d6",
        url="https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_1x_coco/"
            "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth",
        published="mmdetection configs/mask_rcnn README and metafile.yml",
        note="box 38.2 / mask 34.7; the seed reports 38.1"),
}
STRIDES = (4, 8, 16, 32, 64)
# the exported node-name prefixes of the networks (fp16 builds convert these only; geometry stays fp32)
NETWORK_SCOPES = ("/backbone/", "/rpn_head/", "/box_head/", "/box_predictor/", "/mask_head/", "/mask_predictor/")
BBOX_CLIP = math.log(1000.0 / 16)
NO_LIMIT = 1 << 30  # an NMS output bound no image reaches (a constant: the graph may not bake the traced count)


def category_ids(variant: str) -> list[int]:
    """Class index -> COCO category id (index 0, the background, -> 0)."""
    return list(TV_CATEGORY_IDS) if CONFIGS[variant]["num_classes"] == 91 else [0, *COCO_CATEGORY_IDS]


def build_model(variant: str, weights: str | Path | None = None) -> nn.Module:
    """torchvision's Mask R-CNN (eval mode) for `variant`, with `weights` loaded (torchvision or mmdetection
    layout; mmdetection keys are mapped), or random weights tuned to give detections (see _init_random)."""
    import torchvision.models.detection as det

    cfg = CONFIGS[variant]
    net = getattr(det, cfg["builder"])(weights=None, weights_backbone=None, num_classes=cfg["num_classes"])
    if weights is None:
        _init_random(net)
    else:
        sd = load_state_dict(weights)
        from deployzoo.models import maskrcnn_mmdet as mm

        if mm.is_mmdet_layout(sd):
            if variant != "mmdet_1x":
                raise DeployzooError(f"{weights}: an mmdetection checkpoint; use --variant mmdet_1x")
            sd = mm.mmdet_to_torchvision(sd, weights)
        apply_state_dict(net, sd, weights, hint=_hint(sd, variant))
    net.deployzoo_variant = variant  # the deploy graph reads the variant's config from here
    return net.eval()


def _hint(sd: dict[str, Tensor], variant: str) -> str:
    v2 = any(k.startswith("rpn.head.conv.1.") for k in sd)
    if v2 and variant != "tv_v2":
        return "this is a torchvision v2 checkpoint: --variant tv_v2"
    if not v2 and variant == "tv_v2" and any(k.startswith("roi_heads.box_head.fc6") for k in sd):
        return "this is a torchvision v1 checkpoint: --variant tv_v1"
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    if w is not None and w.shape[0] != CONFIGS[variant]["num_classes"]:
        return f"the checkpoint has {w.shape[0]} classes, variant {variant} {CONFIGS[variant]['num_classes']}"
    return ""


def _init_random(net: nn.Module) -> None:
    """Random weights that behave like trained ones where timing depends on it: torchvision's random init gives
    near-uniform class scores (~1/91, under the 0.05 threshold), so no detection would reach the mask head and
    a benchmark would skip the heads' usual load. Sharper class logits give the usual ~100 detections per image."""
    with torch.no_grad():
        cls = net.roi_heads.box_predictor.cls_score
        cls.weight.normal_(0.0, 0.01)
        cls.bias.zero_()


# --------------------------------------------------------------------------------------------- graph pieces
def batched_nms(boxes: Tensor, scores: Tensor, iou: float, score_thr: float, max_per_image: int) -> Tensor:
    """Greedy NMS per image of a batch: boxes B x N x 4, scores B x N -> (image, index) pairs, S x 2 int64, image
    by image, each by decreasing score; candidates need score > score_thr; at most max_per_image per image.
    Exported as ONNX NonMaxSuppression (one class), which has exactly these semantics."""
    return _BatchedNMS.apply(boxes, scores, iou, score_thr, max_per_image)


class _BatchedNMS(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, iou: float, score_thr: float, max_per_image: int) -> Tensor:
        from torchvision.ops import nms

        # a loop over images: torch.export therefore fixes the batch (aoti builds Mask R-CNN at a fixed batch).
        # One NMS call for the whole batch (images offset apart) keeps the batch symbolic under torch.export, but
        # Inductor (torch 2.14.1) then fails to compile the graph (OverflowError in the bounds of its
        # data-dependent sizes), at batch 1 too; this loop compiles (measured on the CPU).
        out = []
        for b in range(boxes.shape[0]):
            cand = torch.where(scores[b] > score_thr)[0]
            keep = cand[nms(boxes[b, cand], scores[b, cand], iou)][:max_per_image]
            out.append(torch.stack([torch.full_like(keep, b), keep], 1))
        return torch.cat(out) if out else boxes.new_zeros((0, 2), dtype=torch.int64)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, iou: float, score_thr: float, max_per_image: int) -> Any:
        scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)))
        sel = g.op("NonMaxSuppression", boxes, scores,
                   g.op("Constant", value_t=torch.tensor([max_per_image], dtype=torch.int64)),
                   g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                   g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)))
        return g.op("Gather", sel, g.op("Constant", value_t=torch.tensor([0, 2], dtype=torch.int64)), axis_i=1)


def decode(deltas: Tensor, boxes: Tensor, weights: tuple[float, float, float, float], clamp_min: bool) -> Tensor:
    """Delta (dx, dy, dw, dh) decode of ... x 4k deltas against ... x 4 boxes -> ... x k x 4 (x1 y1 x2 y2)."""
    d = deltas.reshape(*deltas.shape[:-1], -1, 4)
    w = (boxes[..., 2] - boxes[..., 0]).unsqueeze(-1)
    h = (boxes[..., 3] - boxes[..., 1]).unsqueeze(-1)
    cx = boxes[..., 0].unsqueeze(-1) + 0.5 * w
    cy = boxes[..., 1].unsqueeze(-1) + 0.5 * h
    dx, dy = d[..., 0] / weights[0], d[..., 1] / weights[1]
    dw = d[..., 2] / weights[2]
    dh = d[..., 3] / weights[3]
    dw = dw.clamp(-BBOX_CLIP, BBOX_CLIP) if clamp_min else dw.clamp(max=BBOX_CLIP)
    dh = dh.clamp(-BBOX_CLIP, BBOX_CLIP) if clamp_min else dh.clamp(max=BBOX_CLIP)
    pcx, pcy = dx * w + cx, dy * h + cy
    pw, ph = torch.exp(dw) * w, torch.exp(dh) * h
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], -1)


def clip_to(boxes: Tensor, hw: Tensor) -> Tensor:
    """Clip ... x 4 boxes to per-row (h, w) limits broadcastable to ... x 2."""
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), hw[..., 1:2].to(boxes.dtype))
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), hw[..., 0:1].to(boxes.dtype))
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def rank_in_group(group: Tensor, n_groups: Tensor | int) -> Tensor:
    """For a list already in priority order, each entry's 0-based position among entries of its own group."""
    onehot = (group.unsqueeze(1) == torch.arange(n_groups, device=group.device).unsqueeze(0)).to(torch.int64)
    return (onehot.cumsum(0) * onehot).sum(1) - 1


# --------------------------------------------------------------------------------------------- deploy graph
class MaskRCNNDeploy(DeployModule):
    """images (N x 3 x H x W, normalised, padded to a multiple of 32) + image_sizes (N x 2 int64, each image's
    resized h, w inside the padding) -> flat detections of the batch, every image's in decreasing score:
    boxes D x 4 (x1 y1 x2 y2 in the resized frame), scores D, labels D (class index), batch_index D, masks
    D x 28 x 28 (probability of the detected class)."""

    output_names = ("boxes", "scores", "labels", "batch_index", "masks")
    input_names = ("images", "image_sizes")
    output_axes = {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"},
                   "batch_index": {0: "detections"}, "masks": {0: "detections"}}

    def __init__(self, net: nn.Module, variant: str | None = None, test_cfg: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = dict(CONFIGS[variant or getattr(net, "deployzoo_variant", "tv_v1")])
        self.test = dict(TEST_CFG, **(test_cfg or {}))
        self.backbone = net.backbone
        self.rpn_head = net.rpn.head
        self.box_head = net.roi_heads.box_head
        self.box_predictor = net.roi_heads.box_predictor
        self.mask_head = net.roi_heads.mask_head
        self.mask_predictor = net.roi_heads.mask_predictor
        ag = net.rpn.anchor_generator
        bases = [ag.generate_anchors(s, a) for s, a in zip(ag.sizes, ag.aspect_ratios)]  # rounded (torchvision)
        if not self.cfg["anchor_round"]:
            bases = [_unrounded_anchors(s, a) for s, a in zip(ag.sizes, ag.aspect_ratios)]
        for i, b in enumerate(bases):
            self.register_buffer(f"base_anchors{i}", b, persistent=False)

    @staticmethod
    def example_inputs(images: Tensor) -> tuple[Tensor, Tensor]:
        """The graph inputs for a batch whose images fill the whole padded size."""
        n, _, h, w = images.shape
        return images, torch.tensor([[h, w]], dtype=torch.int64).repeat(n, 1)

    @staticmethod
    def parity(got: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
        """Two runs' detections compared: count difference over the batch's images, then for equal counts the
        largest box (px) and score differences, label mismatches and the smallest mask IoU at 0.5."""
        return detection_parity(got, ref)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        feats = list(self.backbone(images).values())  # P2..P5, P6 (max-pool)
        props, prop_img = self._proposals(images, image_sizes, feats)
        boxes, scores, labels, det_img = self._detections(feats[:4], props, prop_img, image_sizes)
        masks = self._masks(feats[:4], boxes, labels, det_img)
        return boxes, scores, labels, det_img, masks

    # ------------------------------------------------------------------ RPN
    def _anchors(self, level: int, feat: Tensor, images: Tensor) -> Tensor:
        fh, fw = feat.shape[-2], feat.shape[-1]
        if self.cfg["anchor_strides"] == "fixed":
            sy = sx = STRIDES[level]
        else:  # torchvision: padded image size // feature size (61 for P6 of an 800-high batch)
            sy, sx = images.shape[-2] // fh, images.shape[-1] // fw
        ys = torch.arange(fh, device=feat.device, dtype=torch.float32) * sy
        xs = torch.arange(fw, device=feat.device, dtype=torch.float32) * sx
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([gx, gy, gx, gy], -1).reshape(-1, 1, 4)
        return (shifts + getattr(self, f"base_anchors{level}").view(1, -1, 4)).reshape(-1, 4)

    def _proposals(self, images: Tensor, image_sizes: Tensor, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        from torchvision.models.detection import _utils as det_utils

        logits, deltas = self.rpn_head(feats)
        n = images.shape[0]
        boxes_l, scores_l, level_l = [], [], []
        for lvl, (f, o, d) in enumerate(zip(feats, logits, deltas)):
            anchors = self._anchors(lvl, f, images)  # (H W A) x 4
            o = o.permute(0, 2, 3, 1).reshape(n, -1)  # N x (H W A)
            d = d.view(n, -1, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
            k = det_utils._topk_min(o, self.test["rpn_pre_nms"], 1)
            top, idx = o.topk(k, dim=1)
            sel_d = torch.gather(d, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
            boxes_l.append(decode(sel_d, anchors[idx], (1.0, 1.0, 1.0, 1.0), self.cfg["clamp_min_delta"])[..., 0, :])
            scores_l.append(top)
            level_l.append(torch.full_like(idx, lvl))
        boxes = clip_to(torch.cat(boxes_l, 1), image_sizes.unsqueeze(1))
        scores = torch.sigmoid(torch.cat(scores_l, 1))
        level = torch.cat(level_l, 1)
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        m = self.cfg["rpn_min_size"]
        ok = (w >= m) & (h >= m) & (w > 0) & (h > 0)
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0))
        # NMS per level: levels moved apart by more than any coordinate (torchvision's batched_nms trick)
        off = (level.to(boxes.dtype) * (boxes.max() + 1.0)).unsqueeze(-1)
        sel = batched_nms(boxes + off, scores, self.test["rpn_nms"], -0.5, self.test["rpn_post_nms"])
        return boxes[sel[:, 0], sel[:, 1]], sel[:, 0]

    # ------------------------------------------------------------------ RoI heads
    def _roi_align(self, feats: list[Tensor], boxes: Tensor, img: Tensor, size: int) -> Tensor:
        from torchvision.ops import roi_align

        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if self.cfg["roi_level"] == "mmdet":
            lvl = torch.floor(torch.log2(torch.sqrt(area) / 56.0 + 1e-6)).clamp(0, 3)
        else:
            lvl = (torch.floor(4 + torch.log2(torch.sqrt(area) / 224.0 + 1e-6)) - 2).clamp(0, 3)
        lvl = lvl.to(torch.int64)
        rois = torch.cat([img.to(boxes.dtype).unsqueeze(1), boxes], 1)
        # in the features' dtype: under CPU autocast roi_align returns fp16 / bf16 from fp32 boxes (index_put
        # refuses mixed dtypes), under CUDA autocast fp32 from fp16 features
        out = feats[0].new_zeros((boxes.shape[0], feats[0].shape[1], size, size))
        for i, f in enumerate(feats):
            idx = torch.where(lvl == i)[0]
            pooled = roi_align(f, rois[idx], (size, size), spatial_scale=1.0 / STRIDES[i],
                               sampling_ratio=self.cfg["roi_sampling"], aligned=self.cfg["roi_aligned"])
            out = out.index_put((idx,), pooled.to(out.dtype))
        return out

    def _detections(self, feats: list[Tensor], props: Tensor, prop_img: Tensor,
                    image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.box_head(self._roi_align(feats, props, prop_img, 7))
        logits, deltas = self.box_predictor(x)
        c = logits.shape[1]
        boxes = clip_to(decode(deltas, props, (10.0, 10.0, 5.0, 5.0), self.cfg["clamp_min_delta"]),
                        image_sizes[prop_img].unsqueeze(1))[:, 1:]  # S x (C-1) x 4, background dropped
        scores = torch.softmax(logits, -1)[:, 1:]
        labels = torch.arange(1, c, device=props.device).unsqueeze(0).expand_as(scores)
        img = prop_img.unsqueeze(1).expand_as(scores)
        boxes, scores, labels, img = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1), img.reshape(-1)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        m = self.cfg["det_min_size"]
        scores = torch.where((w >= m) & (h >= m), scores, torch.full_like(scores, -1.0))
        # per-class NMS per image in one call: every (image, class) pair moved apart
        group = img * c + labels
        off = (group.to(boxes.dtype) * (boxes.max() + 1.0)).unsqueeze(-1)
        keep = batched_nms((boxes + off).unsqueeze(0), scores.unsqueeze(0), self.test["iou"], self.test["conf"],
                           NO_LIMIT)[:, 1]
        # NMS returns the survivors by decreasing score: keep each image's first max_det
        n_img = image_sizes.shape[0]
        keep = keep[rank_in_group(img[keep], n_img) < self.test["max_det"]]
        return boxes[keep], scores[keep], labels[keep], img[keep]

    def _masks(self, feats: list[Tensor], boxes: Tensor, labels: Tensor, img: Tensor) -> Tensor:
        x = self.mask_predictor(self.mask_head(self._roi_align(feats, boxes, img, 14)))  # D x C x 28 x 28
        idx = labels.view(-1, 1, 1, 1).expand(-1, 1, x.shape[-2], x.shape[-1])
        return torch.sigmoid(torch.gather(x, 1, idx)[:, 0])


def _unrounded_anchors(sizes: tuple[int, ...], ratios: tuple[float, ...]) -> Tensor:
    """mmdetection's base anchors (centre 0, not rounded), ratio-major like torchvision's."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    r = torch.as_tensor(ratios, dtype=torch.float32)
    hr = torch.sqrt(r)
    wr = 1 / hr
    ws = (wr[:, None] * scales[None, :]).view(-1)
    hs = (hr[:, None] * scales[None, :]).view(-1)
    return torch.stack([-ws, -hs, ws, hs], dim=1) / 2


def detection_parity(got: dict[str, Any], ref: dict[str, Any], mask_thr: float = 0.5) -> dict[str, float]:
    """The export tolerance's quantities for two sets of flat detections: the count difference over the batch's
    images; then each reference detection is paired with the closest unpaired detection of the same image and
    class (near-equal scores may trade places between runtimes), and the pairs give the largest box (px) and
    score differences and the smallest mask IoU at `mask_thr`."""
    import numpy as np

    g = {k: np.asarray(v) for k, v in got.items()}
    r = {k: np.asarray(v) for k, v in ref.items()}
    n_img = int(max(g["batch_index"].max(initial=-1), r["batch_index"].max(initial=-1))) + 1
    count = sum(abs(int((g["batch_index"] == b).sum()) - int((r["batch_index"] == b).sum())) for b in range(n_img))
    out = {"count_diff": float(count), "box_px": 0.0, "score": 0.0, "label_mismatch": 0.0, "min_mask_iou": 1.0}
    if count:
        return {**out, "box_px": float("inf"), "score": float("inf"), "min_mask_iou": 0.0}
    free = np.ones(len(g["scores"]), bool)
    for i in range(len(r["scores"])):
        cand = np.flatnonzero(free & (g["batch_index"] == r["batch_index"][i]) & (g["labels"] == r["labels"][i]))
        if not len(cand):
            out["label_mismatch"] += 1
            continue
        diff = np.abs(g["boxes"][cand] - r["boxes"][i]).max(1)
        j = cand[int(diff.argmin())]
        free[j] = False
        out["box_px"] = max(out["box_px"], float(diff.min()))
        out["score"] = max(out["score"], float(abs(g["scores"][j] - r["scores"][i])))
        mg, mr_ = g["masks"][j] >= mask_thr, r["masks"][i] >= mask_thr
        union = (mg | mr_).sum()
        out["min_mask_iou"] = min(out["min_mask_iou"], float((mg & mr_).sum() / union) if union else 1.0)
    return out


@register_model("maskrcnn", aliases=("mask_rcnn", "mask-rcnn"), order=50)
def model_spec() -> ModelSpec:
    """The registry entry (models/base.py)."""

    return ModelSpec(
        name="maskrcnn",
        task="instance_segmentation",
        variants=VARIANTS,
        default_variant="mmdet_1x",  # the seed's model
        default_imgsz={v: "origin" for v in VARIANTS},  # keep-ratio resize to 800 x 1333 in pre-processing
        seed_imgsz={v: [800, 1344] for v in VARIANTS},
        input=dict(INPUT),
        # exif_orientation per variant, the official reader's: torchvision's references read with PIL
        # (CocoDetection: Image.open(path).convert("RGB")), the stored pixels; mmdetection's LoadImageFromFile
        # reads mmcv.imfrombytes(bytes, flag='color') = cv2.imdecode(buf, cv2.IMREAD_COLOR), which turns the
        # image by its EXIF Orientation (mmcv's 'color_ignore_orientation' flag is the one that does not)
        variant_input={v: {"resize_impl": c["resize_impl"],
                           "exif_orientation": {"tv_v1": False, "tv_v2": False, "mmdet_1x": True}[v]}
                       for v, c in CONFIGS.items()},
        post=dict(TEST_CFG),
        variant_post={v: {"paste": c["paste"], "category_ids": category_ids(v)} for v, c in CONFIGS.items()},
        weights=dict(OFFICIAL_WEIGHTS),
        build=build_model,
        deploy=MaskRCNNDeploy,
        output_names=MaskRCNNDeploy.output_names,
        # backbone + FPN in int8, RPN / box / mask heads float (the recipe: heads carry the geometry)
        int8_recipe={v: {"float_groups": ("outside:/backbone/",), "op_types": ("Conv",)} for v in VARIANTS},
        bench_batches=(1, 4),
        bench_imgsz=[800, 1344],  # an 800 x 1333 image padded to 32, the seed's benchmark size
        max_batch=8,
        fp16_scope=NETWORK_SCOPES,
    )

"""mmdet mask_rcnn_r50_fpn <-> torchvision maskrcnn_resnet50_fpn key mapping (random weights, CPU, small input)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet50
from torchvision.models.detection import maskrcnn_resnet50_fpn

from deployzoo.checkpoint import load_state_dict
from deployzoo.errors import DeployzooError
from deployzoo.models.maskrcnn_mmdet import (
    MMDET_NUM_CLASSES,
    is_mmdet_layout,
    mmdet_to_torchvision,
    torchvision_to_mmdet,
)

H, W = 128, 160


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # min/max_size keep the 128x160 input unresized; score_thresh 0 so random weights still give detections
    m = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=81, min_size=H, max_size=W,
        rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_score_thresh=0.0, box_detections_per_img=10,
    )
    return m.eval()


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    m = _model(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # non-trivial BN statistics so their mapping is exercised
                mod.weight.uniform_(0.5, 1.0)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        # what an mmdet checkpoint can represent: no background box regression / mask logits
        p = m.roi_heads.box_predictor.bbox_pred
        p.weight[:4] = 0
        p.bias[:4] = 0
        q = m.roi_heads.mask_predictor.mask_fcn_logits
        q.weight[0] = 0
        q.bias[0] = 0
    return m


def test_mmdet_names_shapes_and_rows(original):
    tv = original.state_dict()
    mm = torchvision_to_mmdet(tv)
    assert is_mmdet_layout(mm) and not is_mmdet_layout(tv)
    shapes = {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.bn1.running_var": (64,),
        "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer4.2.bn3.bias": (2048,),
        "neck.lateral_convs.0.conv.weight": (256, 256, 1, 1),
        "neck.lateral_convs.3.conv.weight": (256, 2048, 1, 1),
        "neck.fpn_convs.3.conv.bias": (256,),
        "rpn_head.rpn_conv.weight": (256, 256, 3, 3),
        "rpn_head.rpn_cls.weight": (3, 256, 1, 1),
        "rpn_head.rpn_reg.weight": (12, 256, 1, 1),
        "roi_head.bbox_head.shared_fcs.0.weight": (1024, 256 * 7 * 7),
        "roi_head.bbox_head.shared_fcs.1.weight": (1024, 1024),
        "roi_head.bbox_head.fc_cls.weight": (81, 1024),
        "roi_head.bbox_head.fc_cls.bias": (81,),
        "roi_head.bbox_head.fc_reg.weight": (320, 1024),
        "roi_head.bbox_head.fc_reg.bias": (320,),
        "roi_head.mask_head.convs.3.conv.weight": (256, 256, 3, 3),
        "roi_head.mask_head.upsample.weight": (256, 256, 2, 2),
        "roi_head.mask_head.conv_logits.weight": (80, 256, 1, 1),
        "roi_head.mask_head.conv_logits.bias": (80,),
    }
    for k, s in shapes.items():
        assert tuple(mm[k].shape) == s, k
    # mmdet's ResNet uses torchvision's ResNet names (mmdet/models/backbones/resnet.py), minus the fc classifier
    want = {f"backbone.{k}" for k in resnet50().state_dict() if not k.startswith("fc.") and "num_batches" not in k}
    assert {k for k in mm if k.startswith("backbone.")} == want
    assert not any(k.endswith("num_batches_tracked") for k in mm)
    # background: torchvision row 0 <-> mmdet row 80; classes shift by one
    cls_w, cls_b = tv["roi_heads.box_predictor.cls_score.weight"], tv["roi_heads.box_predictor.cls_score.bias"]
    assert torch.equal(mm["roi_head.bbox_head.fc_cls.weight"][MMDET_NUM_CLASSES], cls_w[0])
    assert torch.equal(mm["roi_head.bbox_head.fc_cls.weight"][:MMDET_NUM_CLASSES], cls_w[1:])
    assert torch.equal(mm["roi_head.bbox_head.fc_cls.bias"][MMDET_NUM_CLASSES], cls_b[0])
    assert torch.equal(mm["roi_head.bbox_head.fc_reg.weight"], tv["roi_heads.box_predictor.bbox_pred.weight"][4:])
    logits_b = tv["roi_heads.mask_predictor.mask_fcn_logits.bias"]
    assert torch.equal(mm["roi_head.mask_head.conv_logits.bias"], logits_b[1:])


def test_mmdet_checkpoint_file_loads_into_torchvision(original, tmp_path):
    mm = torchvision_to_mmdet(original.state_dict())
    for k in list(mm):  # mmdet trains with nn.BatchNorm2d: its checkpoints carry these counters
        if k.startswith("backbone.") and k.endswith(".running_var"):
            mm[k.removesuffix("running_var") + "num_batches_tracked"] = torch.tensor(29316)
    path = tmp_path / "mask_rcnn_r50_fpn_1x_coco.pth"
    torch.save({"meta": {"mmdet_version": "2.28.2", "CLASSES": ["person"] * 80}, "state_dict": mm}, path)

    sd = load_state_dict(path)
    assert is_mmdet_layout(sd)
    reloaded = _model(1)
    key = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(reloaded.state_dict()[key], original.state_dict()[key])
    reloaded.load_state_dict(mmdet_to_torchvision(sd, path), strict=True)

    ref, got = original.state_dict(), reloaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k

    torch.manual_seed(2)
    img = torch.rand(3, H, W)
    with torch.no_grad():
        a, b = original([img])[0], reloaded([img])[0]
    assert len(a["boxes"]) > 0 and a.keys() == b.keys() == {"boxes", "labels", "scores", "masks"}
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_background_reorder_keeps_softmax_probabilities():
    torch.manual_seed(3)
    w, b = torch.randn(81, 1024) * 0.05, torch.randn(81)
    b[MMDET_NUM_CLASSES] = 20.0  # a distinctive background logit (mmdet: last row)
    tv = mmdet_to_torchvision({"roi_head.bbox_head.fc_cls.weight": w, "roi_head.bbox_head.fc_cls.bias": b}, "x.pth")
    x = torch.randn(4, 1024)
    p_mm = F.softmax(F.linear(x, w, b), dim=-1)
    w_tv, b_tv = tv["roi_heads.box_predictor.cls_score.weight"], tv["roi_heads.box_predictor.cls_score.bias"]
    p_tv = F.softmax(F.linear(x, w_tv, b_tv), dim=-1)
    torch.testing.assert_close(p_tv[:, 0], p_mm[:, MMDET_NUM_CLASSES])  # background
    torch.testing.assert_close(p_tv[:, 1:], p_mm[:, :MMDET_NUM_CLASSES])  # mmdet class c == torchvision label c + 1
    assert (p_tv.argmax(-1) == 0).all()


def test_unknown_key_is_an_error():
    sd = {
        "backbone.conv1.weight": torch.zeros(64, 3, 7, 7),
        "bbox_head.fc_cls.weight": torch.zeros(81, 1024),  # mmdet v1 naming (no roi_head.)
        "roi_head.bbox_head.fc_extra.weight": torch.zeros(4, 4),
        "backbone.bn1.num_batches_tracked": torch.tensor(7),  # ignored, not an error
    }
    with pytest.raises(DeployzooError, match=r"^ckpt/m\.pth: .*2 keys cannot be mapped \(bbox_head\.fc_cls\.weight, "
                       r"roi_head\.bbox_head\.fc_extra\.weight\)$") as e:
        mmdet_to_torchvision(sd, "ckpt/m.pth")
    assert "\n" not in str(e.value)


def test_wrong_class_count_is_an_error():
    sd = {"roi_head.bbox_head.fc_cls.weight": torch.zeros(91, 1024), "roi_head.bbox_head.fc_cls.bias": torch.zeros(91)}
    msg = r"^m\.pth: .*fc_cls has 91 classes, expected 81 \(80 COCO classes \+ background\)$"
    with pytest.raises(DeployzooError, match=msg):
        mmdet_to_torchvision(sd, "m.pth")
    with pytest.raises(DeployzooError, match=r"conv_logits has 81 channels, expected 80"):
        mmdet_to_torchvision({"roi_head.mask_head.conv_logits.weight": torch.zeros(81, 256, 1, 1)}, "m.pth")


def test_build_model_reads_each_layout_and_names_the_right_variant(original, tmp_path):
    """`--weights` of each release layout: an mmdetection file loads into mmdet_1x (keys mapped) and is refused
    for the torchvision variants; a torchvision v1 file given as v2 names the variant to use."""
    from deployzoo.models.maskrcnn import build_model

    mm = tmp_path / "mmdet.pth"
    torch.save({"meta": {"CLASSES": ["person"] * 80}, "state_dict": torchvision_to_mmdet(original.state_dict())}, mm)
    net = build_model("mmdet_1x", mm)
    assert torch.equal(net.roi_heads.box_predictor.cls_score.weight, original.roi_heads.box_predictor.cls_score.weight)
    with pytest.raises(DeployzooError, match=r"mmdet\.pth: an mmdetection checkpoint; use --variant mmdet_1x"):
        build_model("tv_v1", mm)
    tv = tmp_path / "tv_v1.pth"
    torch.save(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), tv)
    build_model("tv_v1", tv)
    with pytest.raises(DeployzooError, match=r"tv_v1\.pth: checkpoint does not fit.*--variant tv_v1"):
        build_model("tv_v2", tv)

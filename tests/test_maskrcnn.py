"""Mask R-CNN: the batched deploy graph against torchvision's own eager model, the mmdetection conventions,
pre-processing against torchvision's transform, ONNX export parity with dynamic batch and size."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from deployzoo.models import maskrcnn as mr
from deployzoo.specs import InputSpec
from deployzoo.tasks.instance_segmentation import InstanceSegmentationTask, resize_keep_ratio


def _torchvision_detections(net, images: torch.Tensor, sizes: list[tuple[int, int]]):
    from torchvision.models.detection.image_list import ImageList

    il = ImageList(images, sizes)
    feats = net.backbone(images)
    props, _ = net.rpn(il, feats)
    dets, _ = net.roi_heads(feats, props, sizes)
    return dets


@pytest.mark.parametrize("variant", ["tv_v1", "tv_v2"])
def test_deploy_graph_equals_torchvision_eager(variant):
    """Two images of different sizes in one padded batch: our batched proposal selection, RoI heads, NMS and
    mask head give torchvision's detections (random weights with sharpened class scores: ~100 detections)."""
    torch.manual_seed(0)
    net = mr.build_model(variant, None)
    dep = mr.MaskRCNNDeploy(net).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 256, 320, generator=g)
    sizes = [(256, 320), (200, 290)]
    images[1, :, 200:, :] = 0
    images[1, :, :, 290:] = 0
    with torch.no_grad():
        ref = _torchvision_detections(net, images, sizes)
        boxes, scores, labels, bi, masks = dep(images, torch.tensor(sizes))
    for b, d in enumerate(ref):
        m = bi == b
        assert len(d["boxes"]) == int(m.sum()) > 20
        torch.testing.assert_close(boxes[m], d["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(scores[m], d["scores"], atol=1e-5, rtol=0)
        assert torch.equal(labels[m], d["labels"])
        torch.testing.assert_close(masks[m], d["masks"][:, 0], atol=1e-5, rtol=0)
        assert (boxes[m][:, 2] <= sizes[b][1]).all() and (boxes[m][:, 3] <= sizes[b][0]).all()


def test_mmdet_conventions():
    # base anchors not rounded, centred on 0 (mmdetection AnchorGenerator, center_offset 0): size 32, ratio 0.5
    a = mr._unrounded_anchors((32,), (0.5, 1.0, 2.0))
    w, h = 32 / math.sqrt(0.5), 32 * math.sqrt(0.5)
    torch.testing.assert_close(a[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    torch.testing.assert_close(a[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    net = mr.build_model("mmdet_1x", None)
    dep = mr.MaskRCNNDeploy(net)
    assert dep.cfg["roi_aligned"] and dep.cfg["roi_sampling"] == 0
    # fixed strides: P6 anchors of a 800 x 1344 batch step by 64 (torchvision's padded // grid would give 61)
    feat = torch.zeros(1, 256, 13, 21)
    anchors = dep._anchors(4, feat, torch.zeros(1, 3, 800, 1344)).view(13, 21, 3, 4)
    assert float(anchors[1, 0, 1, 1] - anchors[0, 0, 1, 1]) == 64.0
    tv = mr.MaskRCNNDeploy(mr.build_model("tv_v1", None))
    assert float(tv._anchors(4, feat, torch.zeros(1, 3, 800, 1344)).view(13, 21, 3, 4)[1, 0, 1, 1]) == -256.0 + 61
    # class map: 81 classes, background 0 -> COCO ids with gaps; torchvision's 91 indices are the ids themselves
    ids = mr.category_ids("mmdet_1x")
    assert len(ids) == 81 and ids[1] == 1 and ids[12] == 13 and ids[80] == 90
    assert mr.category_ids("tv_v1")[13] == 13
    # RoI -> level, mmdetection's rule: floor(log2(sqrt(area) / 56 + 1e-6)) clamped to 0..3
    boxes = torch.tensor([[0, 0, 50, 50], [0, 0, 112, 112], [0, 0, 230, 230], [0, 0, 500, 500.0]])
    feats = [torch.full((1, 1, 64, 64), float(i)) for i in range(4)]
    out = dep._roi_align(feats, boxes, torch.zeros(4, dtype=torch.int64), 2)
    assert out[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_preprocessing_matches_torchvision_transform():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    spec = InputSpec.from_dict({**mr.INPUT, "resize_impl": "torch", "name": "images"})
    x, hw = resize_keep_ratio(img, spec)
    t = GeneralizedRCNNTransform(800, 1333, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
    il, _ = t([torch.from_numpy(img).permute(2, 0, 1).float() / 255.0])
    assert hw == tuple(il.image_sizes[0]) == (800, 1066)
    np.testing.assert_allclose(x, il.tensors[0, :, :800, :1066].numpy(), atol=1e-5)
    # mmdetection: cv2 resize of the 8-bit image to int(side * scale + 0.5), then normalise
    x2, hw2 = resize_keep_ratio(img, InputSpec.from_dict({**mr.INPUT, "resize_impl": "cv2"}))
    assert hw2 == (800, 1067) and x2.shape == (3, 800, 1067)
    # a batch of different sizes: padded to the largest, rounded up to 32, with each image's own size
    task = InstanceSegmentationTask()
    a = task.prepare(img, spec)
    b = task.prepare(rng.integers(0, 256, (100, 1000, 3), dtype=np.uint8), spec)
    feeds = task.collate([a, b], spec)
    assert feeds["images"].shape == (2, 3, 800, 1344) and feeds["image_sizes"].tolist() == [[800, 1066], [133, 1333]]
    assert not feeds["images"][1, :, 133:].any()
    # an image listed in an instances json with another size is refused (skipped by predict, with the reason)
    from deployzoo.data.images import ImageError

    with pytest.raises(ImageError, match=r"image is 500x375, the annotations say 10x20 \(detections would be"):
        task.prepare(img, spec, {"image_id": 1, "height": 20, "width": 10})
    # extreme aspect ratios still give a valid input (torchvision's own transform fails on the 0-pixel side)
    for shape in [(1, 3000, 3), (3000, 2, 3), (1, 1, 3)]:
        p = task.prepare(np.zeros(shape, np.uint8), spec)
        assert min(p.tensor.shape[1:]) >= 1 and max(p.tensor.shape[1:]) <= 1333


@pytest.fixture(scope="module")
def mmdet_export(tmp_path_factory):
    from deployzoo.export import export_onnx

    return export_onnx("maskrcnn", tmp_path_factory.mktemp("mr") / "m.onnx", variant="mmdet_1x", batch=None)


def _assert_parity(res):
    d = res.max_abs_diff
    assert d["count_diff"] == 0 and d["box_px"] < 1.0 and d["min_mask_iou"] > 0.99 and d["label_mismatch"] == 0
    assert res.meta["input"]["extra_inputs"] == ["image_sizes"] and res.meta["batch"]["dynamic"]


def test_export_onnx_dynamic_batch_and_size_matches_eager(mmdet_export, tmp_path):
    """The issue's tolerance: same detection count, boxes within 1 px, mask IoU > 0.99, at two batch sizes and
    two image sizes from one graph (mmdetection's aligned RoIAlign and torchvision's unaligned one)."""
    from deployzoo.export import export_onnx

    _assert_parity(mmdet_export)
    _assert_parity(export_onnx("maskrcnn", tmp_path / "tv.onnx", variant="tv_v1", batch=None))


@pytest.fixture(scope="module")
def mmdet_fp32(mmdet_export, tmp_path_factory):
    from deployzoo.build import build_engine

    return build_engine(mmdet_export.path, tmp_path_factory.mktemp("eng") / "fp32", precision="fp32")


def _write(path, img):
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def test_predict_writes_coco_results_for_unusual_images(mmdet_fp32, tmp_path):
    """Tiny, very wide and grayscale files in one batch: every image gets its detections in its own frame, the
    COCO results json lists them under the file's numeric id, masks are full-size RLEs."""
    import json

    import pycocotools.mask as mask_util

    from deployzoo.predict import predict

    rng = np.random.default_rng(0)
    src = tmp_path / "imgs"
    _write(src / "000000000007.jpg", rng.integers(0, 255, (3, 4, 3), dtype=np.uint8))  # tiny
    _write(src / "000000000008.jpg", rng.integers(0, 255, (24, 1500, 3), dtype=np.uint8))  # very wide
    _write(src / "000000000009.jpg", rng.integers(0, 255, (120, 90), dtype=np.uint8))  # grayscale file
    out = tmp_path / "pred"
    s = predict(mmdet_fp32, src, out, batch=3, save_img=True, show_progress=False)
    assert s.written == 3 and s.skipped == 0
    assert sorted(p.name for p in (out / "vis").iterdir()) == [f"00000000000{i}.jpg" for i in (7, 8, 9)]
    sizes = {7: (3, 4), 8: (24, 1500), 9: (120, 90)}
    res = json.loads((out / "coco_results.json").read_text())
    assert {r["image_id"] for r in res} == set(sizes)
    for r in res:
        h, w = sizes[r["image_id"]]
        x, y, bw, bh = r["bbox"]
        assert r["segmentation"]["size"] == [h, w] and 0 <= x and x + bw <= w + 0.01 and y + bh <= h + 0.01
        assert mask_util.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}).shape == (h, w)
        assert r["category_id"] in mr.category_ids("mmdet_1x")[1:]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sum(len(rec["detections"]) for rec in lines) == len(res)
    # an interrupted run (torn last line) resumes: the results json is rebuilt from every finished image
    whole = (out / "predictions.jsonl").read_text()
    (out / "predictions.jsonl").write_text(whole[: whole.rindex("{") + 20])
    (out / "coco_results.json").unlink()
    s = predict(mmdet_fp32, src, out, batch=3, resume=True, show_progress=False)
    assert s.resumed == 2 and s.written == 1
    again = json.loads((out / "coco_results.json").read_text())
    assert {r["image_id"] for r in again} == set(sizes)
    kept = [json.dumps(r) for r in res if r["image_id"] != 9]  # image 9 was re-run alone: other padding, other
    assert [json.dumps(r) for r in again if r["image_id"] != 9] == kept  # features near its border


def test_run_demo_reports_both_precisions_with_backbone_only_int8(tmp_path):
    """`deployzoo run maskrcnn --data demo`: the seed's accuracy table per precision, the end-to-end stage split,
    the throughput table; fp16 converts the networks only; int8 quantizes backbone + FPN convolutions only."""
    import json

    from conftest import run_cli

    out = tmp_path / "run"
    run_cli(["run", "maskrcnn", "-o", str(out), "--precisions", "fp32,fp16,int8", "--batches", "1", "--iters", "1",
             "--warmup", "1", "--demo-images", "2", "--calib-size", "1", "--no-reference", "--bench-imgsz", "320",
             "320"])
    md = (out / "report.md").read_text()
    assert "| Model | Precision | Batch | bbox mAP@[.5:.95] (%) | bbox mAP@.5 (%) | segm mAP@[.5:.95] (%) |" in md
    assert "| maskrcnn-mmdet_1x | int8 | 1 |" in md and "## End-to-end on the accuracy pass" in md
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["accuracy"]["fp32"]) >= {"bbox", "segm", "end_to_end"}
    assert rep["accuracy"]["fp32"]["bbox"]["AP"] >= 0.0 and rep["bench"][0]["input_hw"] == [320, 320]
    q = json.loads((Path(rep["engines"]["int8"]) / "manifest.json").read_text())["quantization"]
    assert q["int8_convs"] == 61 and q["float_convs"] == {"outside:/backbone/": 20}  # ResNet-50 53 + FPN 8
    assert (out / "predictions" / "int8" / "coco_results.json").is_file()
    fp16 = json.loads((Path(rep["engines"]["fp16"]) / "manifest.json").read_text())["fp16"]
    assert fp16["fp16_scope"][0] == "/backbone/" and fp16["fp32_nodes"] > 1000  # box geometry stays fp32


def test_fixed_input_size_export_is_refused(tmp_path):
    from deployzoo.errors import DeployzooError
    from deployzoo.export import export_onnx

    with pytest.raises(DeployzooError, match=r"maskrcnn: pre-processing resizes each image itself .*--imgsz origin"):
        export_onnx("maskrcnn", tmp_path / "m.onnx", imgsz=[800, 1344])


def test_aoti_refuses_a_dynamic_batch_graph_with_the_reason(mmdet_export, tmp_path):
    """torch.export specialises the deploy graph's batch: a dynamic-batch aoti build says to export a fixed one."""
    from deployzoo.build import build_engine
    from deployzoo.errors import DeployzooError

    with pytest.raises(DeployzooError, match="export with --batch N for a fixed-batch aoti engine"):
        build_engine(mmdet_export.path, tmp_path / "aoti", backend="aoti", options={"device": "cpu"})
    assert not (tmp_path / "aoti").exists()


def test_torch_runner_fills_image_sizes_for_tensor_inputs(mmdet_export, tmp_path):
    """run_tensors given only the image batch passes each image's full size as `image_sizes`, as run() does."""
    from deployzoo.build import build_engine
    from deployzoo.pipeline import load_engine

    r = load_engine(build_engine(mmdet_export.path, tmp_path / "t", backend="torch", options={"device": "cpu"})).runner
    x = np.random.default_rng(0).standard_normal((1, 3, 320, 416)).astype(np.float32)
    a = r.run(x)
    b = r.run_tensors({"images": torch.from_numpy(x)})
    assert a["boxes"].shape[0] > 0
    for k in a:
        np.testing.assert_array_equal(a[k], b[k].numpy())

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from deployzoo.specs import InputSpec
from deployzoo.tasks.face_detection import (FaceDetectionTask, collate, letterbox, preprocess, select, select_tensors,
                                            write_widerface_txt)


def select_batched(boxes, scores, lms, post):
    """The batched torch selection the task runs (host and device paths), split per image like `select`."""
    b, s, lm, img = select_tensors(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(lms), post)
    return [(b[img == i].numpy(), s[img == i].numpy(), lm[img == i].numpy()) for i in range(scores.shape[0])]


# the official-semantics cases run against the numpy reference and against the batched routine in use
SELECTS = pytest.mark.parametrize("sel", [select, select_batched], ids=["numpy", "batched"])


def py_cpu_nms_reference(dets: np.ndarray, thresh: float) -> list[int]:
    """The official RetinaFace NMS (Fast R-CNN py_cpu_nms), written out for the test."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def _random_boxes(rng, n, size=200.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(2, 60, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@SELECTS
@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_official_py_cpu_nms(seed, sel):
    rng = np.random.default_rng(seed)
    n = 300
    boxes = _random_boxes(rng, n)
    scores = rng.permutation(n).astype(np.float32) / n + 0.01  # distinct
    (b, s, _), = sel(boxes[None], scores[None], np.zeros((1, n, 10), np.float32),
                     {"conf": 0.0, "iou": 0.4, "top_k": 0, "max_det": 0})
    ref = py_cpu_nms_reference(np.concatenate([boxes, scores[:, None]], 1).astype(np.float64), 0.4)
    np.testing.assert_array_equal(b, boxes[ref])
    np.testing.assert_array_equal(s, scores[ref])


@SELECTS
def test_nms_without_pixel_offset_equals_torchvision(sel):
    # With the +1 convention removed (boxes already extended), the result is torchvision's NMS.
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 200)
    scores = rng.random(200).astype(np.float32)
    ours = sel(boxes[None] - np.array([0, 0, 1, 1], np.float32), scores[None], np.zeros((1, 200, 10), np.float32),
               {"conf": 0.0, "iou": 0.5, "top_k": 0, "max_det": 0})[0][1]
    tv = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(ours, scores[tv])


@SELECTS
def test_threshold_topk_maxdet_and_batch_isolation(sel):
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]]] * 2, np.float32)
    scores = np.array([[0.9, 0.8, 0.5, 0.01], [0.3, 0.2, 0.95, 0.6]], np.float32)
    lms = np.arange(2 * 4 * 10, dtype=np.float32).reshape(2, 4, 10)
    out = sel(boxes, scores, lms, {"conf": 0.02, "iou": 0.4, "top_k": 5000, "max_det": 750})
    np.testing.assert_allclose(out[0][1], [0.9, 0.5])  # duplicate suppressed, 0.01 under threshold
    np.testing.assert_allclose(out[1][1], [0.95, 0.6, 0.3])  # image 1 is not suppressed by image 0
    np.testing.assert_array_equal(out[0][2][0], lms[0, 0])
    out = sel(boxes, scores, lms, {"conf": 0.02, "iou": 0.4, "top_k": 1, "max_det": 750})
    np.testing.assert_allclose(out[1][1], [0.95])
    out = sel(boxes, scores, lms, {"conf": 0.02, "iou": 0.4, "top_k": 5000, "max_det": 2})
    np.testing.assert_allclose(out[1][1], [0.95, 0.6])


@SELECTS
def test_empty_selection(sel):
    out = sel(np.zeros((1, 5, 4), np.float32), np.zeros((1, 5), np.float32), np.zeros((1, 5, 10), np.float32),
              {"conf": 0.5})
    assert out[0][0].shape == (0, 4)


def test_preprocess_origin_is_bgr_minus_mean():
    img = np.full((5, 7, 3), (110, 120, 130), np.uint8)
    p = preprocess(img, InputSpec.from_dict({"imgsz": "origin", "mean": [104, 117, 123]}))
    assert p.tensor.shape == (3, 5, 7) and p.meta["scale"] == 1.0
    np.testing.assert_array_equal(p.tensor[:, 0, 0], [6, 3, 7])


def test_letterbox_maps_boxes_back_to_original_pixels():
    img = np.zeros((200, 400, 3), np.uint8)
    p = preprocess(img, InputSpec(imgsz=(100, 100)))
    assert p.tensor.shape == (3, 100, 100) and p.meta["scale"] == 0.25
    assert np.all(p.tensor[:, 50:, :] == 0)  # padding below the 50-row resized image
    task = FaceDetectionTask()
    outs = {"boxes": np.array([[[10, 5, 20, 15]]], np.float32), "scores": np.array([[0.9]], np.float32),
            "landmarks": np.tile(np.array([10, 5], np.float32), 5).reshape(1, 1, 10)}
    rec = task.postprocess(outs, [p.meta], {"conf": 0.5})[0]
    assert rec["boxes"] == [[40.0, 20.0, 80.0, 60.0]]
    assert rec["landmarks"][0][0] == [40.0, 20.0]
    r, s = letterbox(np.zeros((10, 30, 3), np.uint8), (64, 64))
    assert r.shape[:2] == (21, 64) and s == pytest.approx(64 / 30)


def test_collate_pads_bottom_right():
    a = preprocess(np.full((4, 6, 3), 200, np.uint8), InputSpec(mean=(104.0, 117.0, 123.0)))
    b = preprocess(np.full((5, 3, 3), 200, np.uint8), InputSpec(mean=(104.0, 117.0, 123.0)))
    x = collate([a, b])
    assert x.shape == (2, 3, 5, 6)
    assert np.all(x[0, :, 4:, :] == 0) and np.all(x[1, :, :, 3:] == 0)


def test_widerface_txt_is_official_layout(tmp_path):
    p = write_widerface_txt(tmp_path, "0--Parade/0_Parade_x_1.jpg", np.array([[10.7, 20.2, 30.9, 45.5]]),
                            np.array([0.875]))
    assert p == tmp_path / "0--Parade" / "0_Parade_x_1.txt"
    lines = p.read_text().splitlines()
    assert lines == ["0_Parade_x_1", "1", "10 20 20 25 0.875 "]

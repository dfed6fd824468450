"""Mask paste-back, RLE and category mapping (Mask R-CNN post-processing) on hand cases."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util

from deployzoo.data.coco import COCO_CATEGORY_IDS, encode_rle
from deployzoo.tasks.instance_segmentation import coco_results, masks_to_rles, paste_mask


def test_full_mask_fills_its_box_and_nothing_else():
    # box x1=10 y1=20 x2=38 y2=48 (28 x 28 px) in an 80 x 90 image: a mask of ones covers the box, give or take
    # the one-pixel border of the bilinear paste, and nothing further out
    out = paste_mask(np.ones((28, 28), np.float32), np.array([10, 20, 38, 48]), (80, 90))
    assert out.shape == (80, 90) and out.dtype == bool
    assert out[21:47, 11:37].all()
    outside = np.ones_like(out)
    outside[19:50, 9:40] = False
    assert not out[outside].any()


def test_left_half_mask_pastes_into_the_left_half_of_a_scaled_box():
    # a mask whose left 14 columns are 1 pasted into a 56 x 56 box at (0, 0): the left ~28 columns of the box
    m = np.zeros((28, 28), np.float32)
    m[:, :14] = 1.0
    out = paste_mask(m, np.array([0, 0, 56, 56]), (64, 64))
    cols = out[5:50].any(axis=0)
    assert cols[:26].all() and not cols[31:].any()


def test_threshold_and_rle_round_trip():
    probs = np.full((28, 28), 0.4, np.float32)
    assert not paste_mask(probs, np.array([0, 0, 28, 28]), (30, 30)).any()  # below 0.5: empty
    binary = np.zeros((7, 5), bool)
    binary[2:5, 1:3] = True
    rle = encode_rle(binary)
    assert rle["size"] == [7, 5] and isinstance(rle["counts"], str)
    back = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(back.astype(bool), binary) and mask_util.area(mask_util.encode(np.asfortranarray(back))) == 6


def test_coco_results_map_labels_and_boxes():
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    boxes = np.array([[10.0, 20.0, 40.0, 60.0]])
    rles = list(masks_to_rles(np.ones((1, 28, 28), np.float32), boxes, (100, 100)))
    r = coco_results(42, boxes, np.array([0.9]), np.array([11]), rles)[0]
    assert r["category_id"] == 13 and r["bbox"] == [10.0, 20.0, 30.0, 40.0] and r["image_id"] == 42
    assert r["segmentation"]["size"] == [100, 100]


def test_mmdet_paste_samples_pixel_centres_inside_the_box():
    # mmdetection's grid_sample paste: a box on whole pixels 10..38 x 20..48 gets exactly its 28 x 28 pixels
    out = paste_mask(np.ones((28, 28), np.float32), np.array([10, 20, 38, 48]), (80, 90), mode="mmdet")
    expect = np.zeros((80, 90), bool)
    expect[20:48, 10:38] = True
    assert np.array_equal(out, expect)
    # left half of the mask -> left half of a 2x box, to the pixel
    m = np.zeros((28, 28), np.float32)
    m[:, :14] = 1.0
    out = paste_mask(m, np.array([0, 0, 56, 56]), (64, 64), mode="mmdet")
    assert out[:56, :28].all() and not out[:, 28:].any() and not out[56:].any()
    # a box entirely outside the image pastes nothing
    assert not paste_mask(np.ones((28, 28), np.float32), np.array([70, 70, 90, 90]), (64, 64), mode="mmdet").any()

"""Task.agreement, the int8 planner's measure: hand cases per task."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deployzoo.errors import DeployzooError
from deployzoo.registry import get_task
from deployzoo.tasks.base import Task


def test_classification_is_top1_agreement():
    t = get_task("classification")
    ref = [{"topk": [[3, 0.9], [1, 0.1]]}, {"topk": [[5, 0.6], [2, 0.4]]}]
    assert t.agreement(ref, ref) == 1.0
    assert t.agreement(ref, [{"topk": [[3, 0.8]]}, {"topk": [[2, 0.5]]}]) == 0.5
    assert math.isnan(t.agreement([], []))


def test_face_detection_is_ap_against_confident_reference_boxes():
    t = get_task("face_detection")
    ref = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "scores": [0.9, 0.3]}]
    assert t.agreement(ref, ref) == 1.0  # the 0.3 box is not a reference face
    assert t.agreement(ref, [{"boxes": [[100, 100, 110, 110]], "scores": [0.9]}]) == 0.0
    assert math.isnan(t.agreement([{"boxes": [], "scores": []}], [{"boxes": [], "scores": []}]))


def test_face_recognition_is_mean_embedding_cosine():
    t = get_task("face_recognition")
    e = np.array([1.0, 0.0], np.float32)
    ref = [{"_embedding": e}, {"_embedding": e}]
    got = [{"_embedding": e}, {"_embedding": np.array([0.0, 1.0], np.float32)}]
    assert t.agreement(ref, got) == pytest.approx(0.5)


def test_instance_segmentation_compares_boxes_in_xywh():
    t = get_task("instance_segmentation")
    ref = [{"image_id": 1, "detections": [{"bbox": [10, 10, 20, 20], "score": 0.9, "category_id": 1}]}]
    moved = [{"image_id": 1, "detections": [{"bbox": [12, 11, 20, 20], "score": 0.8, "category_id": 1}]}]
    far = [{"image_id": 1, "detections": [{"bbox": [40, 40, 5, 5], "score": 0.8, "category_id": 1}]}]
    assert t.agreement(ref, moved) == 1.0 and t.agreement(ref, far) == 0.0


def test_a_task_without_a_measure_says_so():
    class Bare(get_task("classification").__class__):
        name = "bare"
        agreement = Task.agreement

    with pytest.raises(DeployzooError, match="task bare: no agreement measure"):
        Bare().agreement([], [])

"""Agreement of one engine's detections with another's (e.g. int8 against fp32): the reference engine's confident
detections are the ground truth, the tested engine's detections are scored by all-point interpolated AP."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from deployzoo.metrics.widerface import voc_ap


def detection_ap(
    gt_boxes: Sequence[np.ndarray], det_boxes: Sequence[np.ndarray], det_scores: Sequence[np.ndarray],
    iou: float = 0.5,
) -> float:
    """AP@iou of detections against ground-truth boxes (x1, y1, x2, y2), greedy matching by score."""
    n_gt = sum(len(g) for g in gt_boxes)
    if n_gt == 0:
        return float("nan")
    recs = []
    for img, (g, b, s) in enumerate(zip(gt_boxes, det_boxes, det_scores)):
        for j in range(len(s)):
            recs.append((float(s[j]), img, j))
    recs.sort(key=lambda r: -r[0])
    ious = [
        box_iou(torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4)), torch.as_tensor(np.asarray(g, np.float32).reshape(-1, 4))).numpy()
        for g, b in zip(gt_boxes, det_boxes)
    ]
    used = [np.zeros(len(g), bool) for g in gt_boxes]
    tp = np.zeros(len(recs))
    for k, (_, img, j) in enumerate(recs):
        if ious[img].shape[1] == 0:
            continue
        row = np.where(used[img], -1.0, ious[img][j])
        best = int(np.argmax(row))
        if row[best] >= iou:
            used[img][best] = True
            tp[k] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(recs) + 1)
    return voc_ap(recall, precision)


def agreement_ap(reference: Sequence[dict], tested: Sequence[dict], ref_score: float = 0.5, iou: float = 0.5) -> float:
    """AP of `tested` records against the `reference` records' boxes with score >= ref_score."""
    gts, boxes, scores = [], [], []
    for r, t in zip(reference, tested):
        rs = np.asarray(r["scores"], np.float32)
        gts.append(np.asarray(r["boxes"], np.float32).reshape(-1, 4)[rs >= ref_score])
        boxes.append(np.asarray(t["boxes"], np.float32).reshape(-1, 4))
        scores.append(np.asarray(t["scores"], np.float32))
    return detection_ap(gts, boxes, scores, iou)

"""The official WIDER FACE evaluation (Easy / Medium / Hard AP), vectorised.

Same definition as the original tool (the Python port in biubug6/Pytorch_Retinaface `widerface_evaluate`):
global min-max score normalisation; per image, predictions in file order are matched to the ground-truth face
of highest IoU ("+1" pixel convention); a match >= 0.5 on a face outside the setting's keep list marks the
proposal as ignored, on a kept face recalls it once; per threshold t = 1 - (k+1)/1000 the counts are read at
the LAST prediction whose score >= t (files are not re-sorted); AP is VOC's area under the precision envelope.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployzoo.data.widerface import SETTINGS, WiderGT, load_gt
from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

Preds = dict[str, dict[str, np.ndarray]]


@dataclass
class WiderResult:
    ap: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # setting -> (precision, recall) per threshold

    def to_json(self) -> dict[str, float]:
        return {s: float(self.ap[s]) for s in SETTINGS}


def _read_pred_file(path: Path) -> tuple[str, np.ndarray]:
    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployzooError(f"{path}: cannot read prediction file ({exc})") from None
    head, _, body = text.partition("\n")
    _, _, body = body.partition("\n")
    if not head.strip() and not body:
        raise DeployzooError(f"{path}: prediction file needs a name line and a count line")
    # the official key: basename of the name line with '.jpg' characters stripped from the right
    key = head.strip().split("/")[-1].rstrip(".jpg")
    rows = [ln for ln in body.splitlines() if ln.strip()]
    try:
        arr = np.array(body.split(), dtype=np.float64)
        if arr.size != 5 * len(rows):
            raise ValueError
    except ValueError:
        for i, line in enumerate(text.splitlines()[2:], start=3):
            parts = line.split()
            if parts and (len(parts) != 5 or not all(_is_float(v) for v in parts)):
                raise DeployzooError(f"{path}:{i}: malformed line {line.strip()[:60]!r} (expected x y w h score)") from None
        raise DeployzooError(f"{path}: malformed prediction lines") from None
    return key, arr.reshape(-1, 5)


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def read_predictions(pred_dir: str | Path, gt: WiderGT) -> Preds:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DeployzooError(f"{pred_dir}: prediction directory not found")
    preds: Preds = {}
    for event, names in zip(gt.events, gt.files):
        ev_dir = pred_dir / event
        if not ev_dir.is_dir():
            raise DeployzooError(f"{pred_dir}: predictions for event {event!r} missing (no {ev_dir.name}/ directory)")
        cur: dict[str, np.ndarray] = {}
        with os.scandir(ev_dir) as it:
            for entry in it:
                if entry.is_file() and entry.name.endswith(".txt"):
                    key, arr = _read_pred_file(Path(entry.path))
                    cur[key] = arr
        for n in names:
            if n not in cur:
                raise DeployzooError(f"{ev_dir}: no predictions for image {n!r} ({n}.txt missing)")
        preds[event] = cur
    return preds


def _normalise_scores(preds: Preds) -> None:
    """Official norm_score: (s - min) / (max - min) over all predictions, starting from max 0 and min 1."""
    lo, hi = 1.0, 0.0
    for ev in preds.values():
        for v in ev.values():
            if len(v):
                lo, hi = min(lo, float(v[:, 4].min())), max(hi, float(v[:, 4].max()))
    diff = hi - lo
    for ev in preds.values():
        for v in ev.values():
            if len(v):
                v[:, 4] = (v[:, 4] - lo) / diff


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of x1y1x2y2 boxes with the +1 pixel convention of the official bbox_overlaps."""
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = iw * ih
    ap = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    ag = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    ua = ap[:, None] + ag[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((iw > 0) & (ih > 0), inter / ua, 0.0)
    return out


def _best_match(pred: np.ndarray, gt_xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction: the highest IoU with any ground-truth face and that face's index (first on ties)."""
    p = pred[:, :4].copy()
    p[:, 2:] += p[:, :2]
    g = gt_xywh.copy()
    g[:, 2:] += g[:, :2]
    ov = _overlaps(p, g)
    return ov.max(axis=1), ov.argmax(axis=1)


def _image_pr(pred: np.ndarray, n_gt: int, keep_idx: np.ndarray, iou_thresh: float, thresholds: np.ndarray,
              best: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per-threshold (proposals, recalled) counts of one image, exactly as the official image_eval + img_pr_info."""
    n = pred.shape[0]
    max_ov, arg = best
    kept = np.zeros(n_gt, dtype=bool)
    if keep_idx.size:
        kept[keep_idx - 1] = True
    matched = max_ov >= iou_thresh
    proposal = ~(matched & ~kept[arg])  # matched to an ignored face -> not a proposal
    hit = matched & kept[arg]
    # a kept face is recalled at the first prediction that hits it
    first = np.zeros(n, dtype=np.int64)
    if hit.any():
        hit_idx = np.flatnonzero(hit)
        _, first_pos = np.unique(arg[hit_idx], return_index=True)
        np.add.at(first, hit_idx[first_pos], 1)
    pred_recall = np.cumsum(first)
    prop_cum = np.cumsum(proposal)
    # last index whose score >= t: the number of positions whose suffix-max score is >= t, minus one
    suffix_max = np.maximum.accumulate(pred[::-1, 4])[::-1]
    count = np.searchsorted(-suffix_max, -thresholds, side="right")  # suffix_max is non-increasing
    out = np.zeros((thresholds.size, 2))
    has = count > 0
    last = count[has] - 1
    out[has, 0] = prop_cum[last]
    out[has, 1] = pred_recall[last]
    return out


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate(pred: str | Path | Preds, gt: str | Path | WiderGT, iou_thresh: float = 0.5,
             thresh_num: int = 1000) -> WiderResult:
    gt = gt if isinstance(gt, WiderGT) else load_gt(gt)
    preds = read_predictions(pred, gt) if not isinstance(pred, dict) else {e: {k: v.copy() for k, v in d.items()}
                                                                           for e, d in pred.items()}
    _normalise_scores(preds)
    thresholds = 1.0 - (np.arange(thresh_num) + 1) / thresh_num
    pr = {s: np.zeros((thresh_num, 2)) for s in SETTINGS}
    count_face = dict.fromkeys(SETTINGS, 0)
    for i, event in enumerate(gt.events):
        ev_pred = preds[event]
        for j, name in enumerate(gt.files[i]):
            p = ev_pred[name]
            g = gt.boxes[i][j]
            for setting in SETTINGS:
                count_face[setting] += len(gt.keep[setting][i][j])
            if len(g) == 0 or len(p) == 0:
                continue
            best = _best_match(p, g)  # the IoU matching does not depend on the setting
            for setting in SETTINGS:
                pr[setting] += _image_pr(p, len(g), gt.keep[setting][i][j], iou_thresh, thresholds, best)
    ap: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for setting in SETTINGS:
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = pr[setting][:, 1] / pr[setting][:, 0]
            recall = pr[setting][:, 1] / count_face[setting]
        curves[setting] = (precision, recall)
        ap[setting] = voc_ap(recall, precision)
    return WiderResult(ap, curves)


def plot_pr(result: WiderResult, path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for s in SETTINGS:
        prec, rec = result.curves[s]
        ok = np.isfinite(prec)
        ax.plot(rec[ok], prec[ok], label=f"{s} AP {result.ap[s]:.4f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title or "WIDER FACE val PR")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


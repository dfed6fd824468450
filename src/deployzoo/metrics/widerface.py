"""The official WIDER FACE evaluation (Easy / Medium / Hard AP), vectorised.

It computes the same thing as the original tool (ported to Python in biubug6/Pytorch_Retinaface,
``widerface_evaluate/evaluation.py``):

1. Scores are min-max normalised over ALL predictions read, with the running max starting at 0 and the
   running min at 1 (so scores already inside [0, 1] are stretched to span it exactly).
2. Per image, boxes become x1 y1 x2 y2 (x2 = x + w) and IoU uses the "+1" pixel convention.
3. Predictions are taken in file order (never re-sorted). Each takes its highest-IoU face (the first on ties).
   At IoU >= 0.5, a face outside the setting's keep list makes the prediction "ignored" (not a proposal);
   a kept face is recalled the first time it is hit.
4. For threshold t = 1 - (k + 1) / 1000, k = 0..999, an image contributes its counts up to the LAST
   prediction whose score >= t. Images without faces or without predictions add nothing, but their kept
   faces still count in the recall denominator.
5. precision = recalled / proposals, recall = recalled / kept faces; AP is the VOC area under the precision
   envelope.

The original loops over predictions and thresholds in Python; here each image is a handful of numpy calls
shared by the three settings (tests/test_widerface_metric.py checks it against a literal transcription).

Reading differs from the official get_preds only where the official one would crash or misread: blank lines
and extra spaces or tabs are accepted, a line that is not exactly five numbers is an error (the official
tool silently uses the first five tokens, and skips a line that starts with a space), line 2 must be the box
count and match the boxes that follow (the official tool ignores it, so a file cut short scored silently),
and only ``*.txt`` files are read.

Boxes of negative width or height are accepted and scored exactly as the official tool scores them (x2 = x + w
lies left of x, so under the +1 convention they overlap no face unless w or h is inside (-1, 0)): one warning
per evaluation gives their number and the first file.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployzoo.data.widerface import SETTINGS, WiderGT, load_gt
from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

Preds = dict[str, dict[str, np.ndarray]]  # event -> image name (no .jpg) -> N x 5 (x, y, w, h, score)


@dataclass
class WiderResult:
    ap: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # setting -> (precision, recall), one entry per threshold
    thresholds: np.ndarray | None = None  # the normalised-score thresholds of the curve entries

    def to_json(self) -> dict[str, float]:
        return {s: float(self.ap[s]) for s in SETTINGS}


# --------------------------------------------------------------------------------------------- reading


def _slow_numbers(path: Path, body: bytes, first_line: int) -> np.ndarray:
    """float() per token, line by line; names the first line that is not five numbers."""
    rows: list[list[float]] = []
    for i, raw in enumerate(body.split(b"\n"), start=first_line):
        parts = raw.split()
        if not parts:
            continue
        try:
            if len(parts) != 5:
                raise ValueError
            rows.append([float(p) for p in parts])
        except ValueError:
            text = raw.decode("utf-8", "replace").strip()[:60]
            raise DeployzooError(f"{path}:{i}: malformed line {text!r} (expected 'x y w h score')") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def read_pred_file(path: str | Path) -> tuple[str, np.ndarray]:
    """One prediction file: (image key, N x 5 float64 x y w h score).

    Line 1 is the image name (a path is allowed); the key is its basename with '.jpg' characters stripped
    from the right, exactly as the official tool does (``rstrip('.jpg')``). Line 2 is the box count: a
    non-negative integer equal to the number of boxes (the official tool does not read it; here it catches a
    file cut short or a missing count line); it may be blank or absent only when no box follows. Each further
    non-blank line is 'x y w h score'. Errors name the file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read prediction file ({exc.strerror or exc})") from None
    head, _, rest = data.partition(b"\n")
    count_line, _, body = rest.partition(b"\n")
    try:
        name = head.rstrip(b"\r\n").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DeployzooError(f"{path}:1: image name is not UTF-8 text") from None
    if not name:
        raise DeployzooError(f"{path}:1: first line must be the image name")
    key = name.split("/")[-1].rstrip(".jpg")
    count_text = count_line.decode("utf-8", "replace").strip()
    if count_text and not re.fullmatch(r"[0-9]+", count_text):
        raise DeployzooError(f"{path}:2: count line {count_text[:40]!r} is not a box count (a non-negative integer)")
    arr = _read_boxes(path, body)
    if not count_text and len(arr):
        raise DeployzooError(f"{path}:2: count line '' is not a box count (a non-negative integer)")
    if count_text and int(count_text) != len(arr):
        raise DeployzooError(f"{path}:2: count line says {int(count_text)} boxes, the file has {len(arr)}")
    return key, arr


def _read_boxes(path: Path, body: bytes) -> np.ndarray:
    """The 'x y w h score' lines (from line 3) as N x 5 float64."""
    if not body.strip():
        return np.zeros((0, 5))
    try:  # numpy's C reader: exact (float()'s rounding) and it rejects rows of unequal length
        text = body.decode("utf-8")
        arr = np.loadtxt(text.split("\n"), dtype=np.float64, comments=None, ndmin=2)
        if arr.shape[1] == 5:
            return arr
    except (UnicodeDecodeError, ValueError):
        pass
    return _slow_numbers(path, body, 3)  # float() per token (as the official), or an error naming the line


def _box_line(path: Path, index: int) -> int:
    """The line number of box `index` (0-based) of a prediction file that read_pred_file has read."""
    lines = Path(path).read_bytes().split(b"\n")
    boxes = [i for i, raw in enumerate(lines[2:], start=3) if raw.split()]
    return boxes[index] if index < len(boxes) else 3 + index


def _negative(arr: np.ndarray) -> np.ndarray:
    """Indices of boxes of negative width or height."""
    return np.flatnonzero((arr[:, 2] < 0) | (arr[:, 3] < 0)) if len(arr) else np.zeros(0, np.int64)


_NEGATIVE_NOTE = ("scored as the official tool scores them (x2 = x + w lies left of x: they overlap no face "
                  "unless w or h is inside (-1, 0), so they count as false positives); check the box decoding")


def _warn_negative(where: str, found: list[tuple[str, int, int]], unit: str, first: str) -> None:
    """One warning for all boxes of negative width / height: found is (source, count, first index) per file."""
    if found:
        n = sum(c for _, c, _ in found)
        log.warning("%s: %d predicted boxes of negative width or height in %d %s (first: %s); %s", where, n,
                    len(found), unit, first, _NEGATIVE_NOTE)


def _read_event_dir(ev_dir: Path, negative: list[tuple[str, int, int]] | None = None) -> dict[str, np.ndarray]:
    """key -> boxes of every *.txt file of an event directory (sorted by file name); files holding boxes of
    negative width / height are appended to `negative` as (path, count, first box index)."""
    cur: dict[str, np.ndarray] = {}
    with os.scandir(ev_dir) as it:
        entries = sorted((e for e in it if e.is_file() and e.name.endswith(".txt")), key=lambda e: e.name)
    for entry in entries:
        key, arr = read_pred_file(entry.path)
        if key in cur:
            log.warning("%s: image %r is also in another file of %s; keeping this one", entry.path, key, ev_dir)
        cur[key] = arr
        neg = _negative(arr)
        if negative is not None and len(neg):
            negative.append((entry.path, len(neg), int(neg[0])))
    return cur


def read_predictions(pred_dir: str | Path, gt: WiderGT) -> Preds:
    """Read ``pred_dir/<event>/<name>.txt`` for every image of ``gt`` (the official layout).

    Event directories that the ground truth does not name are read too, as the official tool does: their
    scores take part in the global score normalisation (a warning says so). Boxes of negative width or height
    are kept (the official tool scores them) with one warning giving their number and the first file and line.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DeployzooError(f"{pred_dir}: prediction directory not found")
    preds: Preds = {}
    negative: list[tuple[str, int, int]] = []
    for event, names in zip(gt.events, gt.files):
        ev_dir = pred_dir / event
        if not ev_dir.is_dir():
            raise DeployzooError(f"{pred_dir}: predictions for event {event!r} missing (no {event}/ directory)")
        cur = _read_event_dir(ev_dir, negative)
        for n in names:
            if n not in cur:
                raise DeployzooError(f"{ev_dir}: no predictions for image {event}/{n} ({n}.txt missing)")
        preds[event] = cur
    known = set(gt.events)
    extra = sorted(e.name for e in os.scandir(pred_dir) if e.is_dir() and e.name not in known)
    for event in extra:
        preds[event] = _read_event_dir(pred_dir / event, negative)
    if extra:
        log.warning("%s: %d event dirs not in the ground truth (%s); their scores count in the score "
                    "normalisation, as in the official tool", pred_dir, len(extra), ", ".join(extra[:3]))
    if negative:
        src, _, idx = negative[0]
        _warn_negative(str(pred_dir), negative, "files", f"{src}:{_box_line(Path(src), idx)}")
    return preds


def _check_preds(preds: Preds, gt: WiderGT) -> Preds:
    """A float64 N x 5 copy of in-memory predictions, checked against the ground truth; boxes of negative
    width / height are kept (one warning, as for files)."""
    out: Preds = {}
    negative: list[tuple[str, int, int]] = []
    for event, d in preds.items():
        out[event] = {}
        for name, v in d.items():
            a = np.array(v, dtype=np.float64)
            if a.size == 0:
                a = a.reshape(0, 5)
            if a.ndim != 2 or a.shape[1] != 5:
                raise DeployzooError(f"predictions {event}/{name}: expected N x 5 (x y w h score), got {a.shape}")
            out[event][name] = a
            neg = _negative(a)
            if len(neg):
                negative.append((f"{event}/{name}", len(neg), int(neg[0])))
    if negative:
        src, _, idx = negative[0]
        _warn_negative("predictions", negative, "images", f"{src} box {idx + 1}")
    for event, names in zip(gt.events, gt.files):
        if event not in out:
            raise DeployzooError(f"predictions: event {event!r} missing")
        for n in names:
            if n not in out[event]:
                raise DeployzooError(f"predictions: image {event}/{n} missing")
    return out


# --------------------------------------------------------------------------------------------- evaluation


def _normalise_scores(preds: Preds) -> None:
    """Official norm_score, in place: (s - min) / (max - min) over all predictions, from max 0 and min 1."""
    lo, hi = 1.0, 0.0
    for event, ev in preds.items():
        for name, v in ev.items():
            if len(v):
                if not np.isfinite(v).all():  # the official result would depend on the directory listing order
                    raise DeployzooError(f"predictions for {event}/{name}: NaN or infinite values")
                lo, hi = min(float(v[:, 4].min()), lo), max(float(v[:, 4].max()), hi)
    diff = hi - lo
    if diff == 0:
        log.warning("all prediction scores equal %g: the official normalisation divides by zero (scores become "
                    "NaN and every AP 0); give the predictions distinct scores", lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        for ev in preds.values():
            for v in ev.values():
                if len(v):
                    v[:, 4] = (v[:, 4] - lo) / diff


def _best_match(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction: highest IoU with any face and that face's index (first on ties).

    The arithmetic is the official bbox_overlaps (Cython) term by term: x2 = x + w, widths and heights +1,
    IoU = iw * ih / (pred_area + gt_area - iw * ih), and 0 unless iw > 0 and ih > 0.
    """
    px1, py1 = pred_xywh[:, 0:1], pred_xywh[:, 1:2]
    px2, py2 = px1 + pred_xywh[:, 2:3], py1 + pred_xywh[:, 3:4]
    gx1, gy1 = gt_xywh[:, 0], gt_xywh[:, 1]
    gx2, gy2 = gx1 + gt_xywh[:, 2], gy1 + gt_xywh[:, 3]
    iw = np.minimum(px2, gx2)
    iw -= np.maximum(px1, gx1)
    iw += 1
    ih = np.minimum(py2, gy2)
    ih -= np.maximum(py1, gy1)
    ih += 1
    valid = iw > 0
    valid &= ih > 0
    inter = iw * ih
    ua = (px2 - px1 + 1) * (py2 - py1 + 1) + (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
    ua -= inter
    ov = np.zeros_like(inter)
    np.divide(inter, ua, out=ov, where=valid)
    arg = ov.argmax(axis=1)
    return ov[np.arange(len(ov)), arg], arg


def _image_counts(pred: np.ndarray, gt_xywh: np.ndarray, kept: np.ndarray, iou_thresh: float,
                  thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(proposals, recalled) per setting and threshold for one image: the official image_eval + img_pr_info.

    kept: S x K bool, face k counts for setting s. Returns two S x T arrays.
    """
    n = pred.shape[0]
    max_ov, arg = _best_match(pred, gt_xywh)
    matched = max_ov >= iou_thresh
    kept_arg = kept[:, arg]  # S x N: the matched face counts for the setting
    proposal = kept_arg | ~matched  # a match on an ignored face is not a proposal
    # a counted face is recalled by the first prediction that matches it (whatever the setting)
    m_idx = np.flatnonzero(matched)
    _, first = np.unique(arg[m_idx], return_index=True)
    first_pred = m_idx[first]
    recall_step = np.zeros((kept.shape[0], n), dtype=np.int64)
    recall_step[:, first_pred] = kept_arg[:, first_pred]
    # the LAST prediction with score >= t, in file order: suffix maxima are non-increasing, and the number
    # of positions whose suffix maximum is >= t is that index + 1
    suffix_max = np.maximum.accumulate(pred[::-1, 4])[::-1]
    count = np.searchsorted(-suffix_max, -thresholds, side="right")
    has = count > 0
    last = count[has] - 1
    props = np.zeros((kept.shape[0], thresholds.size))
    recs = np.zeros((kept.shape[0], thresholds.size))
    props[:, has] = np.cumsum(proposal, axis=1)[:, last]
    recs[:, has] = np.cumsum(recall_step, axis=1)[:, last]
    return props, recs


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC AP: area under the monotone (right-to-left running max) precision envelope."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate(pred: str | Path | Preds, gt: str | Path | WiderGT, iou_thresh: float = 0.5,
             thresh_num: int = 1000) -> WiderResult:
    """Official WIDER FACE AP for the easy / medium / hard settings.

    pred: a prediction directory (official layout) or {event: {image: N x 5 x y w h score}}.
    gt: a ground-truth directory (the four .mat files) or a loaded WiderGT.
    """
    if thresh_num < 1:
        raise DeployzooError(f"thresh_num must be >= 1, got {thresh_num}")
    t0 = time.perf_counter()
    gt = gt if isinstance(gt, WiderGT) else load_gt(gt)
    preds = _check_preds(pred, gt) if isinstance(pred, dict) else read_predictions(pred, gt)
    t1 = time.perf_counter()
    _normalise_scores(preds)
    thresholds = 1.0 - (np.arange(thresh_num) + 1) / thresh_num
    n_set = len(SETTINGS)
    proposals = np.zeros((n_set, thresh_num))
    recalled = np.zeros((n_set, thresh_num))
    count_face = np.zeros(n_set, dtype=np.int64)
    for i, event in enumerate(gt.events):
        ev_pred = preds[event]
        for j, name in enumerate(gt.files[i]):
            keeps = [gt.keep[s][i][j] for s in SETTINGS]
            count_face += [len(k) for k in keeps]
            p, g = ev_pred[name], gt.boxes[i][j]
            if len(g) == 0 or len(p) == 0:
                continue
            kept = np.zeros((n_set, len(g)), dtype=bool)
            for s, k in enumerate(keeps):
                kept[s, k - 1] = True
            a, b = _image_counts(p, g, kept, iou_thresh, thresholds)
            proposals += a
            recalled += b
    ap: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for s, setting in enumerate(SETTINGS):
            precision = recalled[s] / proposals[s]
            recall = recalled[s] / count_face[s]
            curves[setting] = (precision, recall)
            ap[setting] = voc_ap(recall, precision)
    log.debug("WIDER eval: read %.2fs, match %.2fs, AP %s", t1 - t0, time.perf_counter() - t1, ap)
    return WiderResult(ap, curves, thresholds)


def plot_pr(result: WiderResult, path: str | Path, title: str | None = None) -> Path:
    """PR curves of the three settings (AP in the legend) as a PNG; no global matplotlib state is touched."""
    from deployzoo.report import new_figure, save_figure

    fig, ax = new_figure((5, 4))
    for s in SETTINGS:
        prec, rec = result.curves[s]
        ok = np.isfinite(prec) & np.isfinite(rec)
        ax.plot(rec[ok], prec[ok], label=f"{s} AP {result.ap[s]:.4f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title or "WIDER FACE val PR")
    return save_figure(fig, path)

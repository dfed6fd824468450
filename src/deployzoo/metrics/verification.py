"""The face-verification protocol of insightface's ``.bin`` sets (LFW, CFP-FP, AgeDB-30, ...), vectorised.

It computes what ``recognition/arcface_torch/eval/verification.py`` computes (``evaluate`` with its
``calculate_roc`` / ``calculate_accuracy`` / ``calculate_val`` / ``calculate_val_far``):

1. The per-image embeddings (2P x D; with flip test, the caller has already added the flipped image's
   embedding, in float64 as insightface does) are converted to float64 and L2-normalised row-wise with
   ``sklearn.preprocessing.normalize``. Pair i is rows 2i and 2i+1; its distance is the squared L2 distance
   ``sum((e1 - e2) ** 2)`` (0..4).
2. The pairs are split into ``nrof_folds`` contiguous folds as ``KFold(n_splits, shuffle=False)`` does (the
   first ``P % n`` folds get one pair more); one fold means train = test = all pairs.
3. Accuracy: for thresholds ``np.arange(0, 4, 0.01)`` a pair is predicted "same" when ``dist < threshold``.
   On each fold's train pairs the best threshold is the first one of highest accuracy (``np.argmax``); the
   fold's accuracy is the accuracy of that threshold on its test pairs. Reported: the mean and the population
   std (``np.std``) over folds, insightface's ``Accuracy-Flip: %1.5f+-%1.5f``. The ROC curve is the per-fold
   test TPR / FPR at every threshold, averaged over folds (TPR or FPR is 0 where the fold has no positives
   or negatives, as in the original).
4. VAL@FAR: for thresholds ``np.arange(0, 4, 0.001)`` the train FAR is computed; if its maximum reaches
   ``far_target`` the threshold is the ``interp1d(far_train, thresholds, kind='slinear')`` value at
   ``far_target``, else 0. VAL and FAR of that threshold on the test pairs are averaged over folds
   (VAL's std too).

The original loops over thresholds in Python; here each fold is two ``np.searchsorted`` calls on the sorted
positive and negative distances (exact integer counts, so the same floats come out).

Two departures where the original cannot give a number:

* ``far_train`` always repeats values, and SciPy >= 1.9 refuses ``interp1d(kind='slinear')`` on duplicate x
  ("Expect x to not have duplicates", insightface issues #2152 / #2290, fixed there by pinning SciPy 1.8.1).
  The interpolation is therefore done here exactly as SciPy <= 1.8.1 did it (stable sort, then the degree-1
  B-spline with knots ``[x0, x..., x_last]`` evaluated by de Boor's recursion; tests check it against
  ``BSpline.construct_fast``), rather than by calling SciPy.
* ``calculate_val_far`` divides by the number of positive and of negative pairs and so raises
  ZeroDivisionError when a fold lacks one kind (e.g. ``small_lfw.bin``: 10 pairs, all positive). Here such
  a fold's VAL / FAR is NaN, and so are the means; the accuracy is unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployzoo.errors import DeployzooError

ACC_THRESHOLDS = np.arange(0, 4, 0.01)  # calculate_roc's grid (400)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)  # calculate_val's grid (4000)
ACC_THRESHOLDS.setflags(write=False)
VAL_THRESHOLDS.setflags(write=False)


@dataclass
class VerificationResult:
    accuracy_mean: float
    accuracy_std: float
    fold_accuracy: np.ndarray  # (n_folds,) test accuracy of each fold
    best_threshold: list[float]  # per fold, the squared-distance threshold chosen on its train pairs
    val_mean: float  # NaN where a fold lacks positive or negative pairs (see the module doc)
    val_std: float
    far_mean: float
    tpr: np.ndarray  # (400,) mean over folds of the test TPR at each of `thresholds`
    fpr: np.ndarray  # (400,)
    thresholds: np.ndarray = field(repr=False)  # ACC_THRESHOLDS
    n_pairs: int = 0
    n_folds: int = 10
    far_target: float = 1e-3

    def summary(self, name: str = "") -> str:
        """insightface's log line, e.g. ``[lfw]Accuracy-Flip: 0.99817+-0.00229``, plus VAL@FAR."""
        head = f"[{name}]" if name else ""
        return (f"{head}Accuracy-Flip: {self.accuracy_mean:1.5f}+-{self.accuracy_std:1.5f}  "
                f"VAL: {self.val_mean:1.5f}+-{self.val_std:1.5f} @ FAR={self.far_mean:1.5f}")

    def to_json(self) -> dict[str, Any]:
        """Plain Python numbers; NaN (VAL / FAR undefined) becomes None so the output is strict JSON."""
        return {
            "accuracy_mean": _num(self.accuracy_mean),
            "accuracy_std": _num(self.accuracy_std),
            "fold_accuracy": [_num(a) for a in self.fold_accuracy],
            "best_threshold": [_num(t) for t in self.best_threshold],
            "val_mean": _num(self.val_mean),
            "val_std": _num(self.val_std),
            "far_mean": _num(self.far_mean),
            "far_target": _num(self.far_target),
            "n_pairs": int(self.n_pairs),
            "n_folds": int(self.n_folds),
        }


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------------------- protocol


def kfold_splits(n_pairs: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays as ``KFold(n_folds, shuffle=False).split`` (insightface's LFold for 1)."""
    idx = np.arange(n_pairs)
    if n_folds == 1:
        return [(idx, idx)]
    sizes = np.full(n_folds, n_pairs // n_folds, dtype=np.int64)
    sizes[: n_pairs % n_folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [(np.concatenate([idx[:a], idx[b:]]), idx[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each pair (rows 2i, 2i+1) after sklearn's row-wise L2 normalisation."""
    from sklearn.preprocessing import normalize

    emb = normalize(np.asarray(embeddings, dtype=np.float64))
    diff = np.subtract(emb[0::2], emb[1::2])
    return np.sum(np.square(diff), 1)


class _Side:
    """The sorted distances of one set of pairs, split by label: counts below any threshold in O(log n)."""

    def __init__(self, dist: np.ndarray, same: np.ndarray) -> None:
        self.pos = np.sort(dist[same])
        self.neg = np.sort(dist[~same])
        self.n = dist.size

    def accepted(self, thresholds: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(true accepts, false accepts): positives and negatives with dist < threshold."""
        return (np.searchsorted(self.pos, thresholds, side="left"),
                np.searchsorted(self.neg, thresholds, side="left"))


def _rates(side: _Side, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """calculate_accuracy at every threshold: (tpr, fpr, acc)."""
    tp, fp = side.accepted(thresholds)
    n_pos, n_neg = side.pos.size, side.neg.size
    tpr = tp / n_pos if n_pos else np.zeros(len(thresholds))
    fpr = fp / n_neg if n_neg else np.zeros(len(thresholds))
    acc = (tp + (n_neg - fp)) / side.n
    return tpr, fpr, acc


def slinear_scipy18(x: np.ndarray, y: np.ndarray, x_new: float) -> float:
    """``scipy.interpolate.interp1d(x, y, kind='slinear')(x_new)`` as SciPy <= 1.8.1 computed it.

    interp1d sorted x stably, built ``make_interp_spline(x, y, k=1)`` (knots ``[x0, x..., x_last]``,
    coefficients y, no check for duplicate x) and evaluated it with de Boor's recursion: the interval is the
    last knot span starting at or before x_new (zero-length spans are skipped, the last span is used at the
    right end), and a zero-length span gives 0. x_new outside [x0, x_last] raised ValueError.
    """
    order = np.argsort(x, kind="mergesort")
    xs = np.asarray(x, dtype=np.float64)[order]
    ys = np.asarray(y, dtype=np.float64)[order]
    xv = float(x_new)
    if xv < xs[0] or xv > xs[-1]:
        raise ValueError(f"{xv} is outside the interpolation range [{xs[0]}, {xs[-1]}]")
    i = min(int(np.searchsorted(xs, xv, side="right")), xs.size - 1)
    xa, xb = float(xs[i - 1]), float(xs[i])
    if xb == xa:
        return 0.0
    w = 1.0 / (xb - xa)
    h0, h1 = w * (xb - xv), w * (xv - xa)
    return float(ys[i - 1]) * h0 + float(ys[i]) * h1


def _val_far(train: _Side, test: _Side, far_target: float) -> tuple[float, float]:
    """calculate_val for one fold; NaN where the original divides by zero."""
    if train.pos.size == 0 or train.neg.size == 0:
        return math.nan, math.nan
    _, fa = train.accepted(VAL_THRESHOLDS)
    far_train = fa / train.neg.size
    threshold = slinear_scipy18(far_train, VAL_THRESHOLDS, far_target) if far_train.max() >= far_target else 0.0
    ta, fa_test = test.accepted(threshold)
    val = float(ta) / test.pos.size if test.pos.size else math.nan
    far = float(fa_test) / test.neg.size if test.neg.size else math.nan
    return val, far


def _check_inputs(embeddings: Any, issame: Any, nrof_folds: int, far_target: float) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] == 0 or emb.dtype.kind not in "fiub":
        raise DeployzooError(f"embeddings: expected a 2P x D numeric array, got shape {emb.shape} {emb.dtype}")
    same = np.asarray(issame)
    if same.ndim != 1 or same.size == 0:
        raise DeployzooError(f"issame: expected a non-empty 1-D array of bools, got shape {same.shape}")
    if same.dtype != bool:
        if same.dtype.kind not in "iu" or not np.isin(same, (0, 1)).all():
            raise DeployzooError(f"issame: expected bools (or 0/1), got {same.dtype}")
        same = same.astype(bool)
    n_pairs = same.size
    if emb.shape[0] != 2 * n_pairs:
        raise DeployzooError(f"embeddings: {emb.shape[0]} rows for {n_pairs} pairs (expected 2 * {n_pairs} = "
                             f"{2 * n_pairs}: rows 2i and 2i+1 are pair i)")
    emb = emb.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
        raise DeployzooError(f"embeddings: row {bad[0]} (pair {bad[0] // 2}) is not finite (NaN or inf); "
                             f"{bad.size} bad row(s) in all")
    if isinstance(nrof_folds, bool) or not isinstance(nrof_folds, (int, np.integer)) or nrof_folds < 1:
        raise DeployzooError(f"nrof_folds must be an integer >= 1, got {nrof_folds!r}")
    if n_pairs < nrof_folds:
        raise DeployzooError(f"{n_pairs} pairs cannot be split into {nrof_folds} folds: every fold needs at "
                             f"least one test pair (10 pairs, like small_lfw.bin, make 10 folds of 1 pair; "
                             f"fewer pairs than folds is an error)")
    if not (isinstance(far_target, (int, float, np.floating)) and 0 < far_target <= 1):
        raise DeployzooError(f"far_target must be in (0, 1], got {far_target!r}")
    return emb, same


def evaluate(embeddings: np.ndarray, issame: np.ndarray | list[bool], nrof_folds: int = 10,
             far_target: float = 1e-3) -> VerificationResult:
    """The insightface verification protocol on per-image embeddings (2P x D) and pair labels (P,)."""
    emb, same = _check_inputs(embeddings, issame, nrof_folds, far_target)
    n_pairs, n_folds = same.size, int(nrof_folds)
    dist = pair_distances(emb)

    tprs = np.zeros((n_folds, ACC_THRESHOLDS.size))
    fprs = np.zeros((n_folds, ACC_THRESHOLDS.size))
    accuracy = np.zeros(n_folds)
    val = np.zeros(n_folds)
    far = np.zeros(n_folds)
    best: list[float] = []
    for k, (tr, te) in enumerate(kfold_splits(n_pairs, n_folds)):
        train, test = _Side(dist[tr], same[tr]), _Side(dist[te], same[te])
        _, _, acc_train = _rates(train, ACC_THRESHOLDS)
        b = int(np.argmax(acc_train))
        tprs[k], fprs[k], acc_test = _rates(test, ACC_THRESHOLDS)
        accuracy[k] = acc_test[b]
        best.append(float(ACC_THRESHOLDS[b]))
        val[k], far[k] = _val_far(train, test, float(far_target))

    return VerificationResult(
        accuracy_mean=float(np.mean(accuracy)), accuracy_std=float(np.std(accuracy)), fold_accuracy=accuracy,
        best_threshold=best, val_mean=float(np.mean(val)), val_std=float(np.std(val)),
        far_mean=float(np.mean(far)), tpr=np.mean(tprs, 0), fpr=np.mean(fprs, 0),
        thresholds=ACC_THRESHOLDS, n_pairs=n_pairs, n_folds=n_folds, far_target=float(far_target))

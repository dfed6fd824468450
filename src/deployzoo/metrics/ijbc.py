"""IJB-C 1:1 verification: TAR at FAR, exactly as insightface's ``recognition/arcface_torch/eval_ijbc.py``.

The official protocol, step by step (``features`` are per image, already the sum of the image's and its
mirror's embedding, in the row order of ``ijbc_name_5pts_score.txt``; float32 as the official stores them):

1. ``norm_score=False``: every image feature is L2-normalised (``f / sqrt(sum(f ** 2))``, float32); the
   official default (True) keeps the norms. ``detector_score=True`` (default): multiply by the faceness score.
2. Template pooling (``image2template_feature``): within a template, the images of one media (frames of one
   video, or one still) are averaged (``np.mean``, float32, a lone image is taken as is); the template feature
   is the float32 sum of its media features, in increasing media id order; templates are then L2-normalised
   (``sklearn.preprocessing.normalize``: an all-zero template stays zero; done here in numpy, same bits).
3. Scores (``verification``): cosine = ``np.sum(f1 * f2, -1)`` of the two normalised templates, float64.
4. ``fpr, tpr = sklearn.metrics.roc_curve(label, score)`` (drop_intermediate=True), AUC by ``auc(fpr, tpr)``,
   and TAR at each FAR read off the FLIPPED curve as ``min(zip(abs(fpr - far), range(len(fpr))))``: the point
   whose FPR is nearest to the FAR (which may be above it), the highest TPR among equally near points.

This module computes the same numbers without the official Python loops:

* pooling gathers the images of a block of templates "rank-major" (the k-th image of every media together)
  and adds one contiguous slice per k, then the same for media within templates: the additions happen in
  the official order, so template features are bit for bit the official ones;
* pair scores come from BLAS matrix products over tiles of (template1, template2) (the real pair list is a
  gallery x probe block at 23 % density). A product differs from the official ``np.sum(f1 * f2, -1)`` by less
  than ``2 * D * 2**-53``; every score that comes within 4x that bound of another score is recomputed with the
  official expression, so the scores sort, and tie, exactly as the official ones and the ROC (which depends
  only on that order) is bit for bit the official one;
* the ROC is built from the sorted negative and positive scores; it equals ``sklearn.metrics.roc_curve``
  (``sklearn_roc=True`` calls it instead: 6.6 s rather than 0.2 s on the full protocol on 2 cores;
  tests/test_ijbc.py and benchmarks/ijbc_eval_speed.py --sklearn-roc compare both);
* the pair file streams in a background thread (two parser threads) while the meta files are read and the
  templates pooled. The full-size protocol (469,375 x 512 features, 15.66M pairs) takes about 10 s on a
  2-core EPYC, with about 1.3 GB on top of the features (benchmarks/ijbc_eval_speed.py).

Where the official script would silently misbehave this raises instead: a pair naming a template that has no
image (official: scored against the first template, or an IndexError), meta files whose rows disagree, a
feature row count that does not match, NaN / infinite features, or an all-zero feature with
``norm_score=False`` (official: NaN, then a crash in ``normalize``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deployzoo.data.ijbc import (IJBCLayout, TemplateTable, find_layout, iter_pairs, read_faceness, read_templates,
                                 record_line)
from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

FAR_LEVELS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

_POOL_ROWS = 4096  # images gathered per pooling block
_TILE_BITS = (10, 11)  # a tile of one BLAS product: 2**10 templates1 x 2**11 templates2 (16 MB of scores)
_GATHER_VS_GEMM = 32  # one pair scored by gathering its two rows costs about this many product entries
_ROWDOT_BATCH = 8192


@dataclass
class IJBCResult:
    tar_at_far: dict[float, float]  # FAR level -> TAR (fraction, not percent)
    auc: float
    n_pairs: int
    n_pos: int
    n_neg: int
    n_templates: int
    n_images: int
    seconds: float
    fpr: np.ndarray  # the ROC as sklearn's roc_curve returns it (drop_intermediate=True), increasing FPR
    tpr: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    n_rescored: int = 0  # scores recomputed with the official expression because they nearly tie another
    scores: np.ndarray | None = None  # per pair, file order (evaluate(..., keep_scores=True))
    labels: np.ndarray | None = None
    # FAR level -> the score above which at most that fraction of the impostor pairs lie (`threshold_at_far`)
    threshold_at_far: dict[float, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"tar_at_far": {repr(float(k)): float(v) for k, v in self.tar_at_far.items()},
                "threshold_at_far": {repr(float(k)): float(v) for k, v in self.threshold_at_far.items()},
                "auc": float(self.auc), "n_pairs": self.n_pairs, "n_pos": self.n_pos, "n_neg": self.n_neg,
                "n_templates": self.n_templates, "n_images": self.n_images, "seconds": round(self.seconds, 3)}


# --------------------------------------------------------------------------------------------- templates


def _groups(keys_sorted: list[np.ndarray]) -> np.ndarray:
    """Start indices of the runs of equal (key1, key2, ...) in arrays sorted by those keys."""
    n = len(keys_sorted[0])
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys_sorted:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def _rank_major(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For groups of consecutive items (``starts`` from 0, ``counts``): (a permutation of the items that puts
    the k-th item of every group together, k = 0, 1, ..., longest groups first within each k; how many groups
    have more than k items, per k; the groups, longest first)."""
    by_len = np.argsort(-counts, kind="stable")
    pos = np.empty(len(counts), dtype=np.int64)
    pos[by_len] = np.arange(len(counts))
    item_group = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(len(item_group)) - starts[item_group]
    return np.lexsort((pos[item_group], rank)), np.bincount(rank), by_len


def _sum_rank_major(x: np.ndarray, n_per_rank: np.ndarray) -> np.ndarray:
    """Group sums of rank-major rows ``x`` (see _rank_major), in place: ((x0 + x1) + x2) + ... per group, in
    x's dtype, returned as the first n_per_rank[0] rows (groups longest first).

    That is the order numpy's ``sum(axis=0)`` / ``mean(axis=0)`` add rows in (``np.add.reduceat`` differs: it
    adds the first row to a pairwise sum of the others); each pass adds one contiguous slice.
    """
    acc = x[:n_per_rank[0]]
    off = int(n_per_rank[0])
    for nk in n_per_rank[1:]:
        acc[:nk] += x[off:off + nk]
        off += int(nk)
    return acc


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                      faceness: np.ndarray | None = None, *, norm_score: bool = True,
                      features_path: str = "features", image_names: Sequence[str] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The official ``image2template_feature``: (L2-normalised template features float64, sorted template ids).

    features: N x D per-image features (cast to float32 as the official stores them); templates / medias: N
    ids per row; faceness: N scores to multiply by (detector_score), or None. norm_score=False L2-normalises
    each image feature first. The result is bit for bit the official one (see the module docstring).
    """
    n, d = features.shape
    order = np.lexsort((medias, templates))  # stable: a media's images stay in file order, as np.where gives
    ts, ms = templates[order], medias[order]
    g_start = _groups([ts, ms])  # (template, media) groups, in sorted-row positions
    g_count = np.diff(np.r_[g_start, n])
    g_tpl = ts[g_start]
    t_gstart = _groups([g_tpl])  # first group of each template
    unique_templates = g_tpl[t_gstart]
    t_row = g_start[t_gstart]  # first sorted row of each template
    out = np.empty((len(unique_templates), d), dtype=np.float64)
    # blocks of whole templates, about _POOL_ROWS images each
    t_block = t_row // _POOL_ROWS
    b_first = np.flatnonzero(np.r_[True, t_block[1:] != t_block[:-1]])
    b_last = np.r_[b_first[1:], len(unique_templates)]
    faceness32 = None if faceness is None else np.asarray(faceness, dtype=np.float32)
    buf = np.empty((min(n, 2 * _POOL_ROWS), d), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for t0, t1 in zip(b_first, b_last):
            r0 = int(t_row[t0])
            r1 = int(t_row[t1]) if t1 < len(t_row) else n
            g0 = int(t_gstart[t0])
            g1 = int(t_gstart[t1]) if t1 < len(t_gstart) else len(g_start)
            gs, gc = g_start[g0:g1] - r0, g_count[g0:g1]
            perm, n_rank, g_by_len = _rank_major(gs, gc)
            rows = order[r0:r1][perm]
            if features.dtype == np.float32 and len(rows) <= len(buf):
                x = buf[:len(rows)]
                np.take(features, rows, axis=0, out=x)
            else:
                x = np.asarray(features[rows], dtype=np.float32)
            if not norm_score:
                x /= np.sqrt(np.sum(x ** 2, -1, keepdims=True))
            if faceness32 is not None:
                x *= faceness32[rows][:, np.newaxis]
            media = _sum_rank_major(x, n_rank)  # media sums, longest media first
            n_multi = int(n_rank[1]) if len(n_rank) > 1 else 0
            media[:n_multi] /= gc[g_by_len[:n_multi], np.newaxis].astype(np.float32)  # np.mean: sum / count
            tg = t_gstart[t0:t1] - g0
            perm_t, n_rank_t, t_by_len = _rank_major(tg, np.diff(np.r_[tg, g1 - g0]))
            g_pos = np.empty(len(gc), dtype=np.int64)
            g_pos[g_by_len] = np.arange(len(gc))
            tsum = _sum_rank_major(media[g_pos[perm_t]], n_rank_t)  # template sums over their media
            out[t0 + t_by_len] = tsum
    if not np.isfinite(out).all():
        _raise_bad_features(features, features_path, norm_score, image_names)
    return normalize_rows(out), unique_templates


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """``sklearn.preprocessing.normalize(x)`` (L2, rows) for a dense float64 array, in place, bit for bit:
    ``x / sqrt(einsum('ij,ij->i', x, x))``, rows with a norm below 10 * eps (all-zero rows) left as they are."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    x /= norms[:, np.newaxis]
    return x


def _raise_bad_features(features: np.ndarray, label: str, norm_score: bool,
                        names: Sequence[str] | None) -> None:
    """Name the first image row that made a template feature NaN or infinite."""
    bad: list[np.ndarray] = []
    zero: list[np.ndarray] = []
    for s in range(0, len(features), 65_536):
        blk = np.asarray(features[s:s + 65_536])
        bad.append(np.flatnonzero(~np.isfinite(blk).all(axis=1)) + s)
        if not norm_score:
            zero.append(np.flatnonzero(~blk.astype(np.float32).any(axis=1)) + s)
    bad_rows = np.concatenate(bad)

    def where(i: int) -> str:
        return f"row {i}" + (f" (image {names[i]})" if names is not None else "")

    if len(bad_rows):
        raise DeployzooError(f"{label}: {len(bad_rows)} feature rows with NaN or infinite values; the first is "
                             f"{where(int(bad_rows[0]))}")
    zero_rows = np.concatenate(zero) if zero else np.zeros(0, np.int64)
    if len(zero_rows):
        raise DeployzooError(f"{label}: {len(zero_rows)} all-zero feature rows cannot be L2-normalised "
                             f"(norm_score=False); the first is {where(int(zero_rows[0]))}")
    raise DeployzooError(f"{label}: template features overflow float32 (feature values too large)")


# --------------------------------------------------------------------------------------------- pair scores


def _compact(idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values of idx, sorted; each idx's position among them) for 0 <= idx < n."""
    present = np.zeros(n, dtype=bool)
    present[idx] = True
    pos = np.cumsum(present, dtype=np.int32) - 1
    return np.flatnonzero(present), pos[idx]


def _rowdot(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    out = np.empty(len(ia))
    for s in range(0, len(ia), _ROWDOT_BATCH):
        out[s:s + _ROWDOT_BATCH] = np.einsum("ij,ij->i", a[ia[s:s + _ROWDOT_BATCH]], b[ib[s:s + _ROWDOT_BATCH]])
    return out


def fast_scores(tfeat: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """Dot products ``tfeat[i1] . tfeat[i2]`` per pair (float64), from BLAS products over dense tiles.

    Each differs from the official ``np.sum(f1 * f2, -1)`` by at most ``2 * D * 2**-53`` for unit rows
    (both are dot products in float64, summed in different orders). Sparse tiles gather rows instead.
    """
    n = len(i1)
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    u1, r = _compact(i1, len(tfeat))
    u2, c = _compact(i2, len(tfeat))
    a, b = tfeat[u1], tfeat[u2]
    br, bc = _TILE_BITS
    n_ct = ((len(u2) - 1) >> bc) + 1
    n_tiles = (((len(u1) - 1) >> br) + 1) * n_ct
    key = r >> br
    key *= n_ct
    key += c >> bc
    counts = np.bincount(key, minlength=n_tiles)
    order = np.argsort(key.astype(np.uint16) if n_tiles <= 65_536 else key, kind="stable")  # radix for uint16
    del key
    rs, cs = r[order], c[order]  # in tile order, then local to the tile
    del r, c
    rs &= (1 << br) - 1
    cs &= (1 << bc) - 1
    vals = np.empty(n, dtype=np.float64)
    offs = np.r_[0, np.cumsum(counts)]
    for t in np.flatnonzero(counts):
        rt, ct = divmod(int(t), n_ct)
        at, bt = a[rt << br:(rt + 1) << br], b[ct << bc:(ct + 1) << bc]
        sl = slice(int(offs[t]), int(offs[t + 1]))
        if (sl.stop - sl.start) * _GATHER_VS_GEMM >= len(at) * len(bt):
            vals[sl] = (at @ bt.T)[rs[sl], cs[sl]]
        else:
            vals[sl] = _rowdot(at, bt, rs[sl], cs[sl])
    out[order] = vals
    return out


def official_scores(tfeat: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """The official expression ``np.sum(f1 * f2, -1)`` per pair (numpy's pairwise summation, row by row)."""
    out = np.empty(len(i1))
    for s in range(0, len(i1), _ROWDOT_BATCH):
        out[s:s + _ROWDOT_BATCH] = np.sum(tfeat[i1[s:s + _ROWDOT_BATCH]] * tfeat[i2[s:s + _ROWDOT_BATCH]], -1)
    return out


def _near_tie_clusters(neg: np.ndarray, pos: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] of the maximal runs of the merged sorted scores whose neighbours are at most tol apart."""
    los, his = [], []
    for arr in (neg, pos):
        for st in range(0, max(len(arr) - 1, 0), 1 << 20):  # blockwise: no full-size temporaries
            en = min(st + (1 << 20), len(arr) - 1)
            k = np.flatnonzero(arr[st + 1:en + 1] - arr[st:en] <= tol) + st
            los.append(arr[k])
            his.append(arr[k + 1])
    if len(neg) and len(pos):
        j = np.searchsorted(neg, pos)
        for nb in (neg[np.maximum(j - 1, 0)], neg[np.minimum(j, len(neg) - 1)]):
            close = np.abs(pos - nb) <= tol
            los.append(np.minimum(pos, nb)[close])
            his.append(np.maximum(pos, nb)[close])
    lo, hi = np.concatenate(los), np.concatenate(his)
    if not len(lo):
        return lo, hi
    o = np.argsort(lo, kind="stable")
    lo, hi = lo[o], hi[o]
    start = np.flatnonzero(np.r_[True, lo[1:] > np.maximum.accumulate(hi)[:-1]])
    return lo[start], np.maximum.reduceat(hi, start)


def _members(s: np.ndarray, lo: np.ndarray, hi: np.ndarray, smin: float, smax: float) -> np.ndarray:
    """Indices i with lo[k] <= s[i] <= hi[k] for some k (a bucket table first, then an exact check)."""
    nb = 1 << 20
    span = smax - smin
    if not span > 0:
        cand = np.arange(len(s))
    else:
        scale = (nb - 1) / span
        mark = np.zeros(nb + 1, dtype=np.int64)
        np.add.at(mark, np.clip(((lo - smin) * scale).astype(np.int64), 0, nb - 1), 1)
        np.add.at(mark, np.clip(((hi - smin) * scale).astype(np.int64), 0, nb - 1) + 1, -1)
        table = np.cumsum(mark[:nb]) > 0
        parts = []
        for st in range(0, len(s), 1 << 22):
            blk = s[st:st + (1 << 22)] - smin
            blk *= scale
            b = np.clip(blk.astype(np.int64), 0, nb - 1)
            parts.append(np.flatnonzero(table[b]) + st)
        cand = np.concatenate(parts)
    v = s[cand]
    k = np.searchsorted(lo, v, side="right") - 1
    ok = (k >= 0) & (v <= hi[np.maximum(k, 0)])
    return cand[ok]


def _patch_sorted(arr: np.ndarray, lo: np.ndarray, hi: np.ndarray, new_values: np.ndarray) -> bool:
    """Replace the values of ``arr`` (sorted) inside the [lo, hi] runs by ``new_values`` sorted."""
    a = np.searchsorted(arr, lo, side="left")
    b = np.searchsorted(arr, hi, side="right")
    lens = b - a
    if lens.sum() != len(new_values):
        return False
    idx = np.repeat(a - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(lens.sum())
    arr[idx] = np.sort(new_values)
    return True


def _sort2(x: np.ndarray) -> np.ndarray:
    """``np.sort(x)``, sorting the two halves in two threads (the sort releases the GIL) and merging them with
    one linear timsort pass."""
    if len(x) < 1 << 20:
        x.sort()
        return x
    h = len(x) // 2
    with ThreadPoolExecutor(max_workers=2) as ex:
        list(ex.map(np.ndarray.sort, (x[:h], x[h:])))
    return np.sort(x, kind="stable")


def pair_scores(tfeat: np.ndarray, i1: np.ndarray, i2: np.ndarray, labels: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(scores per pair, sorted negative scores, sorted positive scores, number rescored).

    The scores order and tie exactly as the official ones (see the module docstring): BLAS scores, then the
    official expression for every score that nearly ties another.
    """
    s = fast_scores(tfeat, i1, i2)
    is_neg = labels == 0
    neg = _sort2(s[is_neg])
    pos = np.sort(s[~is_neg])
    d = tfeat.shape[1]
    u = 2.0 ** -53
    gamma = d * u / (1 - d * u)  # |fl(a . b) - a . b| <= gamma * sum|a_i b_i| <= gamma for unit rows
    tol = 8 * 1.01 * gamma  # twice the largest gap two error-bounded scores may be misordered across
    lo, hi = _near_tie_clusters(neg, pos, tol)
    if not len(lo):
        return s, neg, pos, 0
    smin = min(neg[0] if len(neg) else np.inf, pos[0] if len(pos) else np.inf)
    smax = max(neg[-1] if len(neg) else -np.inf, pos[-1] if len(pos) else -np.inf)
    members = _members(s, lo, hi, smin, smax)
    zero = ~tfeat.any(axis=1)  # a zero template scores exactly 0 either way
    redo = members[~(zero[i1[members]] | zero[i2[members]])] if zero.any() else members
    s[redo] = official_scores(tfeat, i1[redo], i2[redo])
    m_neg = is_neg[members]
    if not (_patch_sorted(neg, lo, hi, s[members[m_neg]]) and _patch_sorted(pos, lo, hi, s[members[~m_neg]])):
        log.warning("near-tie patching was inconsistent; sorting all scores again")
        neg, pos = _sort2(s[is_neg]), np.sort(s[~is_neg])
    return s, neg, pos, len(redo)


# --------------------------------------------------------------------------------------------- ROC


def _runs(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run starts of a sorted array and the run lengths (int32); -0.0 and 0.0 are one value, as in roc_curve."""
    new_run = np.empty(len(arr), dtype=bool)
    new_run[:1] = True
    np.not_equal(arr[1:], arr[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)
    del new_run
    counts = np.empty(len(starts), dtype=np.int32)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1], casting="unsafe")
    counts[-1:] = len(arr) - starts[-1:]
    return starts, counts


def roc_from_sorted(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of ``sklearn.metrics.roc_curve(labels, scores)`` (drop_intermediate=True) from the sorted
    (ascending) negative and positive scores, bit for bit.

    roc_curve takes every distinct score as a threshold, from the highest: fps / tps count the negatives /
    positives at or above it; drop_intermediate keeps the first and last point and every point where the
    step (change of fps or of tps) changes. Here the steps are the per-value counts.
    """
    if not len(neg) or not len(pos):
        raise ValueError("the ROC needs both positive and negative scores")
    starts_n, cn = _runs(neg)
    starts_p, cp = _runs(pos)
    vp = pos[starts_p]
    at = np.searchsorted(neg, vp)  # first negative >= each distinct positive value
    k = np.searchsorted(starts_n, at)  # distinct negative values below it
    new = ~((at < len(neg)) & (neg[np.minimum(at, len(neg) - 1)] == vp))
    del starts_n
    cnt_neg = np.insert(cn, k[new], 0)  # every distinct score, ascending: how many negatives have it
    del cn
    cnt_pos = np.zeros(len(cnt_neg), dtype=np.int32)
    cnt_pos[k + np.cumsum(new) - new] = cp
    dn, dp = cnt_neg[::-1], cnt_pos[::-1]  # thresholds in decreasing order, as roc_curve
    if len(dn) > 2:
        keep = np.ones(len(dn), dtype=bool)
        keep[1:-1] = dn[2:] != dn[1:-1]
        keep[1:-1] |= dp[2:] != dp[1:-1]
        idx = np.flatnonzero(keep)
    else:
        idx = np.arange(len(dn))
    seg = np.r_[0, idx[:-1] + 1]  # fps / tps at the kept points, without full-length cumulative sums
    fps = np.r_[0.0, np.cumsum(np.add.reduceat(dn, seg, dtype=np.int64)).astype(np.float64)]
    tps = np.r_[0.0, np.cumsum(np.add.reduceat(dp, seg, dtype=np.int64)).astype(np.float64)]
    return fps / fps[-1], tps / tps[-1]


def threshold_at_far(neg_sorted: np.ndarray, far_levels: Sequence[float] = FAR_LEVELS) -> dict[float, float]:
    """For each FAR level x, the score t of the (k+1)-th highest impostor pair, k = floor(x * n_neg): accepting
    the pairs scored strictly above t accepts at most k impostors (fewer where scores tie at t). An operating
    point for `faces compare / search`; with k = 0 it is the highest impostor score."""
    n = len(neg_sorted)
    return {float(x): float(neg_sorted[n - min(int(math.floor(x * n)), n - 1) - 1]) for x in far_levels}


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far_levels: Sequence[float] = FAR_LEVELS) -> dict[float, float]:
    """The official read-off: on the flipped curve, the first point whose FPR is nearest to each FAR."""
    f, t = np.flipud(fpr), np.flipud(tpr)
    return {float(x): float(t[int(np.argmin(np.abs(f - x)))]) for x in far_levels}


# --------------------------------------------------------------------------------------------- evaluate


def _load_features(features: np.ndarray | str | Path, features_path: str | Path | None) -> tuple[np.ndarray, str]:
    if isinstance(features, (str, Path)):
        p = Path(features)
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DeployzooError(f"{p}: cannot read features as a .npy array ({exc})") from None
        return arr, str(features_path or p)
    return np.asarray(features), str(features_path) if features_path is not None else "features"


def _check_meta(layout: IJBCLayout, tt: TemplateTable, names: list[str]) -> None:
    if len(tt) != len(names):
        raise DeployzooError(f"{layout.tid_mid_path}: {len(tt)} lines but {layout.landmarks_path} has {len(names)} "
                             f"(both list every image, in the same order)")
    if tt.names != names:
        i = next(i for i, (a, b) in enumerate(zip(tt.names, names)) if a != b)
        raise DeployzooError(f"{layout.tid_mid_path}:{i + 1}: image {tt.names[i]!r}, but line {i + 1} of "
                             f"{layout.landmarks_path} is {names[i]!r} (both files must list the same images in "
                             f"the same order)")


def _check_features(feats: np.ndarray, label: str, names: list[str], lm_path: Path) -> None:
    if feats.ndim != 2 or feats.shape[1] < 1:
        raise DeployzooError(f"{label}: expected an N x D feature array (one row per line of {lm_path.name}), "
                             f"got shape {feats.shape}")
    if feats.dtype.kind not in "fiu":
        raise DeployzooError(f"{label}: features must be numbers, got dtype {feats.dtype}")
    if len(feats) != len(names):
        raise DeployzooError(f"{label}: {len(feats)} feature rows but {lm_path} has {len(names)} lines "
                             f"(one row per image, in its order)")


def _pair_indices(layout: IJBCLayout, unique_templates: np.ndarray, chunk_lines: int,
                  cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream the pair file into (template index 1, template index 2) int32 and labels int8."""
    path = layout.pair_path
    u = unique_templates
    base, span = int(u[0]), int(u[-1]) - int(u[0])
    table = None
    if span < 50_000_000:  # the official template2id table, offset by the smallest id
        table = np.full(span + 1, -1, dtype=np.int32)
        table[u - base] = np.arange(len(u), dtype=np.int32)

    def lookup(t: np.ndarray) -> np.ndarray:
        if table is not None:
            x = t - base
            ok = (x >= 0) & (x <= span)
            out = table[np.where(ok, x, 0)]
            out[~ok] = -1
            return out
        j = np.minimum(np.searchsorted(u, t), len(u) - 1)
        return np.where(u[j] == t, j, -1).astype(np.int32)

    p1, p2, labs = [], [], []
    for t1, t2, lab, first in iter_pairs(path, chunk_lines, workers=2):
        if cancel is not None and cancel.is_set():
            raise DeployzooError(f"{path}: reading cancelled")
        a, b = lookup(t1), lookup(t2)
        bad = (a < 0) | (b < 0)
        if bad.any():
            j = int(np.argmax(bad))
            t = int(t1[j] if a[j] < 0 else t2[j])
            raise DeployzooError(f"{path}:{record_line(path, first, j)}: template {t} has no images in "
                                 f"{layout.tid_mid_path.name}")
        p1.append(a)
        p2.append(b)
        labs.append(lab)
    if not labs:
        raise DeployzooError(f"{path}: no pairs")
    return np.concatenate(p1), np.concatenate(p2), np.concatenate(labs)


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def evaluate(features: np.ndarray | str | Path, layout_or_meta_dir: IJBCLayout | str | Path, *,
             detector_score: bool = True, norm_score: bool = True, features_path: str | Path | None = None,
             sklearn_roc: bool = False, keep_scores: bool = False, chunk_lines: int = 2_000_000) -> IJBCResult:
    """IJB-C 1:1 verification of per-image features: TAR at FAR_LEVELS, AUC and the ROC.

    features: N x D (flip-summed) features in the row order of ``ijbc_name_5pts_score.txt``, or a .npy path
    (memory-mapped); other dtypes are cast to float32, the official storage. layout_or_meta_dir: an
    IJBCLayout, the IJB-C root, its parent, or the meta directory.
    detector_score / norm_score: the official switches (both True by default, the official TestMode(N1D1F2)).
    features_path: how error messages name the features (default: the .npy path, else 'features').
    sklearn_roc: build the ROC with sklearn.metrics.roc_curve itself (same arrays, slower).
    keep_scores: keep the per-pair scores and labels in the result (file order).
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    layout = layout_or_meta_dir if isinstance(layout_or_meta_dir, IJBCLayout) else find_layout(layout_or_meta_dir)
    feats, label = _load_features(features, features_path)
    tt = read_templates(layout.tid_mid_path)
    # the pair file streams in other threads while this one reads the rest and pools (numpy's parser and
    # array operations release the GIL)
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ijbc-pairs") as pool:
        pairs = pool.submit(_timed, _pair_indices, layout, np.unique(tt.templates), chunk_lines, cancel)
        try:
            names, faceness = read_faceness(layout.landmarks_path)
            _check_meta(layout, tt, names)
            _check_features(feats, label, names, layout.landmarks_path)
            t = time.perf_counter()
            timings["read_meta"] = t - t_start
            tfeat, unique_templates = template_features(feats, tt.templates, tt.medias,
                                                        faceness if detector_score else None, norm_score=norm_score,
                                                        features_path=label, image_names=names)
        except BaseException:
            cancel.set()
            raise
        timings["pooling"] = time.perf_counter() - t
        (i1, i2, labels), timings["pairs"] = pairs.result()
    timings["meta+pooling+pairs (overlapped)"] = time.perf_counter() - t_start
    n_pos = int(np.count_nonzero(labels))
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        kind = "genuine (label 1)" if n_pos == 0 else "impostor (label 0)"
        raise DeployzooError(f"{layout.pair_path}: no {kind} pairs: the ROC is undefined")
    t = time.perf_counter()
    scores, neg, pos, n_rescored = pair_scores(tfeat, i1, i2, labels)
    del i1, i2
    timings["scoring"] = time.perf_counter() - t
    t = time.perf_counter()
    thresholds = threshold_at_far(neg)
    if sklearn_roc:
        from sklearn.metrics import roc_curve

        del neg, pos
        fpr, tpr, _ = roc_curve(labels, scores)
    else:
        fpr, tpr = roc_from_sorted(neg, pos)
        del neg, pos
    area = float(np.trapezoid(tpr, fpr))  # sklearn.metrics.auc for an increasing fpr
    tars = tar_at_far(fpr, tpr)
    timings["roc"] = time.perf_counter() - t
    seconds = time.perf_counter() - t_start
    log.debug("IJB-C: %s in %.2fs (%s)", tars, seconds, timings)
    return IJBCResult(tars, area, len(labels), n_pos, n_neg, len(unique_templates), len(names), seconds, fpr, tpr,
                      timings, n_rescored, scores if keep_scores else None, labels if keep_scores else None,
                      thresholds)


# --------------------------------------------------------------------------------------------- plot


def plot_roc(results: IJBCResult | Mapping[str, IJBCResult] | Sequence[IJBCResult], path: str | Path,
             title: str | None = None) -> Path:
    """ROC curves (TAR vs FAR, log FAR from 1e-6 to 1) as a PNG, one per result, with the FAR_LEVELS
    read-offs marked; a mapping gives the legend labels. No global matplotlib state is touched."""
    from deployzoo.report import new_figure, save_figure

    if isinstance(results, IJBCResult):
        items = [("", results)]
    elif isinstance(results, Mapping):
        items = list(results.items())
    else:
        items = [(f"run {i}", r) for i, r in enumerate(results)]
    fig, ax = new_figure((6, 4.5))
    lowest = 1.0
    for name, r in items:
        ok = r.fpr > 0
        tag = f"AUC {100 * r.auc:.2f}%, TAR@1e-4 {100 * r.tar_at_far.get(1e-4, np.nan):.2f}%"
        line, = ax.plot(r.fpr[ok], r.tpr[ok], lw=1.2, label=f"{name} ({tag})" if name else tag)
        fars = np.array(list(r.tar_at_far))
        tars = np.array(list(r.tar_at_far.values()))
        ax.plot(fars, tars, "o", ms=4, color=line.get_color())
        lowest = min(lowest, float(tars.min()) if len(tars) else 1.0)
    for x in FAR_LEVELS:
        ax.axvline(x, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    ax.set_ylim(max(0.0, min(0.9, lowest - 0.05)), 1.0)
    ax.set_xlabel("FAR (false positive rate)")
    ax.set_ylabel("TAR (true positive rate)")
    ax.grid(alpha=0.3, which="major")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "IJB-C 1:1 verification ROC")
    return save_figure(fig, path)

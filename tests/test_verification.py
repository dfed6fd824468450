"""insightface verification .bin sets (deployzoo.data.verification_bin) and their 10-fold protocol
(deployzoo.metrics.verification).

The reference below is a line-by-line transcription of insightface's
recognition/arcface_torch/eval/verification.py (LFold, calculate_roc, calculate_accuracy, calculate_val,
calculate_val_far, evaluate, and the normalise + mean/std of test()). Two changes, both marked: calculate_roc
also returns the chosen threshold per fold, and ``interpolate.interp1d(..., kind='slinear')`` is
``ref_interp1d_slinear``, which rebuilds what SciPy <= 1.8.1 did (SciPy >= 1.9 raises on the duplicate FAR
values the script always feeds it) from ``BSpline.construct_fast``, i.e. SciPy's own de Boor evaluation.
"""

from __future__ import annotations

import _codecs
import builtins
import math
import os
import pickle
import pickletools
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import sklearn.preprocessing
from scipy.interpolate import BSpline
from sklearn.model_selection import KFold

from deployzoo.data.verification_bin import VerificationSet, load_bin, write_bin
from deployzoo.errors import DeployzooError
from deployzoo.metrics.verification import (ACC_THRESHOLDS, VerificationResult, evaluate, kfold_splits,
                                            pair_distances, slinear_scipy18)

from conftest import FIXTURES, need_fixture

SMALL_LFW = FIXTURES / "lfw" / "small_lfw.bin"


# ============================================================================ the reference (insightface)


def ref_interp1d_slinear(x, y):
    """CHANGED: interp1d(x, y, kind='slinear') of SciPy <= 1.8.1 (sort, k=1 knots, no duplicate check)."""
    ind = np.argsort(x, kind="mergesort")
    x = np.array(x, dtype=np.float64)[ind]
    y = np.array(y, dtype=np.float64)[ind]
    spline = BSpline.construct_fast(np.r_[x[0], x, x[-1]], np.ascontiguousarray(y), 1)

    def f(x_new):
        x_new = np.asarray(x_new, dtype=np.float64)
        if (x_new < x[0]).any() or (x_new > x[-1]).any():
            raise ValueError("A value in x_new is outside the interpolation range.")
        return spline(x_new)

    return f


class LFold:
    def __init__(self, n_splits=2, shuffle=False):
        self.n_splits = n_splits
        if self.n_splits > 1:
            self.k_fold = KFold(n_splits=n_splits, shuffle=shuffle)

    def split(self, indices):
        if self.n_splits > 1:
            return self.k_fold.split(indices)
        else:
            return [(indices, indices)]


def calculate_roc(thresholds, embeddings1, embeddings2, actual_issame, nrof_folds=10, pca=0):
    assert (embeddings1.shape[0] == embeddings2.shape[0])
    assert (embeddings1.shape[1] == embeddings2.shape[1])
    nrof_pairs = min(len(actual_issame), embeddings1.shape[0])
    nrof_thresholds = len(thresholds)
    k_fold = LFold(n_splits=nrof_folds, shuffle=False)

    tprs = np.zeros((nrof_folds, nrof_thresholds))
    fprs = np.zeros((nrof_folds, nrof_thresholds))
    accuracy = np.zeros((nrof_folds))
    indices = np.arange(nrof_pairs)
    best_thresholds = []  # CHANGED: also report the threshold chosen per fold

    if pca == 0:
        diff = np.subtract(embeddings1, embeddings2)
        dist = np.sum(np.square(diff), 1)

    for fold_idx, (train_set, test_set) in enumerate(k_fold.split(indices)):
        # Find the best threshold for the fold
        acc_train = np.zeros((nrof_thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        for threshold_idx, threshold in enumerate(thresholds):
            tprs[fold_idx, threshold_idx], fprs[fold_idx, threshold_idx], _ = calculate_accuracy(
                threshold, dist[test_set], actual_issame[test_set])
        _, _, accuracy[fold_idx] = calculate_accuracy(
            thresholds[best_threshold_index], dist[test_set], actual_issame[test_set])
        best_thresholds.append(thresholds[best_threshold_index])

    tpr = np.mean(tprs, 0)
    fpr = np.mean(fprs, 0)
    return tpr, fpr, accuracy, best_thresholds


def calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))

    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def calculate_val(thresholds, embeddings1, embeddings2, actual_issame, far_target, nrof_folds=10):
    assert (embeddings1.shape[0] == embeddings2.shape[0])
    assert (embeddings1.shape[1] == embeddings2.shape[1])
    nrof_pairs = min(len(actual_issame), embeddings1.shape[0])
    nrof_thresholds = len(thresholds)
    k_fold = LFold(n_splits=nrof_folds, shuffle=False)

    val = np.zeros(nrof_folds)
    far = np.zeros(nrof_folds)

    diff = np.subtract(embeddings1, embeddings2)
    dist = np.sum(np.square(diff), 1)
    indices = np.arange(nrof_pairs)

    for fold_idx, (train_set, test_set) in enumerate(k_fold.split(indices)):
        # Find the threshold that gives FAR = far_target
        far_train = np.zeros(nrof_thresholds)
        for threshold_idx, threshold in enumerate(thresholds):
            _, far_train[threshold_idx] = calculate_val_far(threshold, dist[train_set], actual_issame[train_set])
        if np.max(far_train) >= far_target:
            f = ref_interp1d_slinear(far_train, thresholds)  # CHANGED: interpolate.interp1d(.., kind='slinear')
            threshold = f(far_target)
        else:
            threshold = 0.0

        val[fold_idx], far[fold_idx] = calculate_val_far(threshold, dist[test_set], actual_issame[test_set])

    val_mean = np.mean(val)
    far_mean = np.mean(far)
    val_std = np.std(val)
    return val_mean, val_std, far_mean


def calculate_val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    val = float(true_accept) / float(n_same)
    far = float(false_accept) / float(n_diff)
    return val, far


def ref_evaluate(embeddings, actual_issame, nrof_folds=10, pca=0, far_target=1e-3):
    # far_target: a parameter here (the original hard-codes 1e-3 below)
    thresholds = np.arange(0, 4, 0.01)
    embeddings1 = embeddings[0::2]
    embeddings2 = embeddings[1::2]
    tpr, fpr, accuracy, best = calculate_roc(thresholds, embeddings1, embeddings2, np.asarray(actual_issame),
                                             nrof_folds=nrof_folds, pca=pca)
    thresholds = np.arange(0, 4, 0.001)
    val, val_std, far = calculate_val(thresholds, embeddings1, embeddings2, np.asarray(actual_issame),
                                      far_target, nrof_folds=nrof_folds)
    return tpr, fpr, accuracy, val, val_std, far, best


def ref_test(embeddings, issame_list, nfolds=10, far_target=1e-3):
    """The tail of insightface's test(): normalise, evaluate, mean and std of the fold accuracies."""
    embeddings = sklearn.preprocessing.normalize(embeddings)
    tpr, fpr, accuracy, val, val_std, far, best = ref_evaluate(embeddings, issame_list, nrof_folds=nfolds,
                                                               far_target=far_target)
    acc2, std2 = np.mean(accuracy), np.std(accuracy)
    return dict(acc=acc2, std=std2, accuracy=accuracy, best=best, val=val, val_std=val_std, far=far, tpr=tpr,
                fpr=fpr)


# ============================================================================ helpers


def planted(n_pairs: int, dim: int = 32, seed: int = 0, noise: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Random embeddings, as insightface holds them (float64, flip sum not normalised): positives correlated."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(issame[:, None], a + noise * rng.normal(size=(n_pairs, dim)), rng.normal(size=(n_pairs, dim)))
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = a, b
    emb *= rng.uniform(0.5, 30, size=(2 * n_pairs, 1))  # unnormalised, like network outputs
    return emb, issame


def fixed_distance_pairs(issame_true: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pairs whose squared distance (after L2 normalisation) is 0.5 for true positives and 2.0 otherwise."""
    rng = np.random.default_rng(seed)
    n = issame_true.size
    emb = np.zeros((2 * n, 8))
    for i, same in enumerate(issame_true):
        q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # a random rotation per pair
        u, v = q[:, 0], q[:, 1]
        emb[2 * i] = u
        emb[2 * i + 1] = 0.75 * u + math.sqrt(1 - 0.75 ** 2) * v if same else v  # cos 0.75 -> 0.5; cos 0 -> 2
    return emb


def jpeg(seed: int, size: int = 112) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (size, size))
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def assert_same_result(ours: VerificationResult, ref: dict) -> None:
    assert ours.accuracy_mean == ref["acc"]
    assert ours.accuracy_std == ref["std"]
    np.testing.assert_array_equal(ours.fold_accuracy, ref["accuracy"])
    assert ours.best_threshold == [float(t) for t in ref["best"]]
    np.testing.assert_array_equal(ours.tpr, ref["tpr"])
    np.testing.assert_array_equal(ours.fpr, ref["fpr"])
    assert ours.val_mean == ref["val"]
    assert ours.val_std == ref["val_std"]
    assert ours.far_mean == ref["far"]


# ============================================================================ the protocol vs the reference


@pytest.mark.parametrize("n_pairs, folds, seed, noise", [(200, 10, 0, 2.0), (203, 10, 1, 2.5), (120, 5, 2, 2.0)])
def test_evaluate_equals_insightface(n_pairs, folds, seed, noise):
    emb, issame = planted(n_pairs, seed=seed, noise=noise)
    ref = ref_test(emb.copy(), list(issame), nfolds=folds)
    ours = evaluate(emb, issame, nrof_folds=folds)
    assert_same_result(ours, ref)
    assert 0.6 < ours.accuracy_mean < 1.0 and ours.accuracy_std > 0  # a non-trivial case
    assert len(set(ours.best_threshold)) > 1
    assert 0 < ours.val_mean < 1 and ours.far_mean <= 0.05
    assert ours.n_pairs == n_pairs and ours.n_folds == folds


def test_evaluate_equals_insightface_edge_cases():
    # one fold (insightface's LFold: train = test = all pairs)
    emb, issame = planted(60, seed=3)
    assert_same_result(evaluate(emb, issame, nrof_folds=1), ref_test(emb.copy(), issame, nfolds=1))
    # far_target = 1: the interpolation lands on the repeated last FAR value (a zero-length knot span -> 0)
    emb, issame = planted(80, seed=4, noise=0.5)
    ours = evaluate(emb, issame, nrof_folds=4, far_target=1.0)
    assert_same_result(ours, ref_test(emb.copy(), issame, nfolds=4, far_target=1.0))
    # float32 input: converted to float64 before normalising, like insightface's float64 embedding buffer
    emb, issame = planted(50, seed=5)
    e32 = emb.astype(np.float32)
    assert_same_result(evaluate(e32, issame, nrof_folds=5), ref_test(e32.astype(np.float64), issame, nfolds=5))


def test_slinear_matches_scipy_bspline_with_duplicates():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 40))
        x = np.sort(rng.integers(0, 5, n) / rng.integers(1, 7))
        x[0] = 0.0
        y = np.arange(n) * 0.001
        for xv in (*x[:: max(1, n // 5)], rng.uniform(0, x[-1]), x[-1], 1e-3):
            if xv > x[-1]:
                continue
            assert slinear_scipy18(x, y, xv) == float(ref_interp1d_slinear(x, y)(xv)), (x, xv)
    with pytest.raises(ValueError):
        slinear_scipy18(np.array([0.0, 0.5]), np.array([0.0, 1.0]), 0.7)


@pytest.mark.parametrize("n, k", [(10, 10), (23, 10), (200, 10), (7, 3), (5, 1)])
def test_kfold_splits_match_sklearn(n, k):
    ours = kfold_splits(n, k)
    ref = LFold(k).split(np.arange(n))
    for (tr, te), (rtr, rte) in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(tr, rtr)
        np.testing.assert_array_equal(te, rte)


# ============================================================================ known answers


def test_known_answer_perfect_separation():
    rng = np.random.default_rng(7)
    issame = rng.random(200) < 0.5
    emb = fixed_distance_pairs(issame)
    dist = pair_distances(emb)
    np.testing.assert_allclose(dist[issame], 0.5, atol=1e-12)
    np.testing.assert_allclose(dist[~issame], 2.0, atol=1e-12)
    r = evaluate(emb, issame)
    assert r.accuracy_mean == 1.0 and r.accuracy_std == 0.0
    assert list(r.fold_accuracy) == [1.0] * 10
    # the first grid threshold above every positive distance (np.argmax takes the first of the ties)
    first = float(ACC_THRESHOLDS[np.argmax(ACC_THRESHOLDS > dist[issame].max())])
    for t in r.best_threshold:
        assert 0.5 - 1e-9 < t <= 2.0 and dist[issame].max() < t <= dist[~issame].min()
        assert t == first
    assert r.val_mean == 1.0 and r.far_mean == 0.0
    assert r.tpr[0] == 0.0 and r.tpr[-1] == 1.0 and r.fpr[-1] == 1.0
    assert_same_result(r, ref_test(emb.copy(), issame))


def test_known_answer_flipped_labels():
    # 200 pairs, 10 folds of 20; fold k has flips[k] pairs whose label is wrong
    rng = np.random.default_rng(8)
    truth = rng.random(200) < 0.5
    emb = fixed_distance_pairs(truth, seed=1)
    flips = [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]
    labels = truth.copy()
    for k, m in enumerate(flips):
        idx = rng.choice(np.arange(20 * k, 20 * k + 20), size=m, replace=False)
        labels[idx] = ~labels[idx]
    r = evaluate(emb, labels)
    expected = np.array([(20 - m) / 20 for m in flips])
    np.testing.assert_array_equal(r.fold_accuracy, expected)
    assert r.accuracy_mean == np.mean(expected) and r.accuracy_std == np.std(expected)
    assert r.accuracy_mean == pytest.approx(1 - sum(flips) / 200, abs=1e-12)
    assert all(0.5 < t <= 2.0 for t in r.best_threshold)
    assert_same_result(r, ref_test(emb.copy(), labels))


def test_all_positive_pairs_give_accuracy_and_nan_val():
    # like small_lfw.bin: 10 pairs, all positive -> 10 folds of 1 pair; insightface's calculate_val_far would
    # divide by zero (no negatives), here VAL/FAR are NaN and to_json writes None
    emb = fixed_distance_pairs(np.ones(10, dtype=bool), seed=9)  # every distance 0.5
    r = evaluate(emb, np.ones(10, dtype=bool))
    assert r.n_folds == 10 and len(r.best_threshold) == 10
    assert r.accuracy_mean == 1.0 and all(0.5 < t <= 0.51 for t in r.best_threshold)
    assert math.isnan(r.val_mean) and math.isnan(r.far_mean)
    j = r.to_json()
    assert j["val_mean"] is None and j["accuracy_mean"] == 1.0
    assert all(type(v) in (float, int) or v is None for v in j.values() if not isinstance(v, list))
    assert "Accuracy-Flip: 1.00000+-0.00000" in r.summary("small_lfw")


# ============================================================================ evaluate input checks


def test_evaluate_rejects_bad_inputs():
    emb, issame = planted(20, seed=0)
    with pytest.raises(DeployzooError, match=r"39 rows for 20 pairs"):
        evaluate(emb[:-1], issame)
    bad = emb.copy()
    bad[7, 3] = np.nan
    bad[11, 0] = np.inf
    with pytest.raises(DeployzooError, match=r"row 7 \(pair 3\) is not finite.*2 bad row"):
        evaluate(bad, issame)
    with pytest.raises(DeployzooError, match=r"7 pairs cannot be split into 10 folds"):
        evaluate(emb[:14], issame[:7])
    evaluate(emb, issame, nrof_folds=20)  # as many pairs as folds: folds of one pair are allowed
    with pytest.raises(DeployzooError, match=r"issame: expected bools"):
        evaluate(emb, np.full(20, 0.5))
    with pytest.raises(DeployzooError, match=r"2P x D"):
        evaluate(emb[:, 0], issame)
    with pytest.raises(DeployzooError, match=r"nrof_folds"):
        evaluate(emb, issame, nrof_folds=0)
    with pytest.raises(DeployzooError, match=r"far_target"):
        evaluate(emb, issame, far_target=0)
    r01, rb = evaluate(emb, issame.astype(int), nrof_folds=5), evaluate(emb, issame, nrof_folds=5)  # 0/1 is fine
    assert r01.to_json() == rb.to_json()


# ============================================================================ .bin files: reading and writing


def test_write_load_roundtrip(tmp_path):
    images = [jpeg(i) for i in range(12)]
    issame = np.array([True, False, True, True, False, False])
    p = write_bin(tmp_path / "sub" / "demo.bin", images, issame)
    vs = load_bin(p)
    assert isinstance(vs, VerificationSet)
    assert vs.name == "demo" and len(vs) == 12 and vs.n_pairs == 6
    assert vs.images == images
    assert vs.issame.dtype == bool
    np.testing.assert_array_equal(vs.issame, issame)
    assert vs.decode(3).shape == (112, 112, 3) and vs.decode(3).dtype == np.uint8


def test_decode_color_order_and_errors(tmp_path):
    red = np.zeros((4, 5, 3), np.uint8)
    red[..., 2] = 255  # BGR red
    png = cv2.imencode(".png", red)[1].tobytes()
    p = write_bin(tmp_path / "c.bin", [png, b"not an image at all"], [False])
    vs = load_bin(p)
    assert vs.decode(0)[0, 0].tolist() == [255, 0, 0]
    assert vs.decode(0, color="BGR")[0, 0].tolist() == [0, 0, 255]
    with pytest.raises(DeployzooError, match=r"c\.bin: image 1 \(pair 0\) is not a decodable"):
        vs.decode(1)
    with pytest.raises(IndexError):
        vs.decode(2)


def test_write_bin_rejects_bad_input(tmp_path):
    with pytest.raises(DeployzooError, match=r"3 images for 2 pairs"):
        write_bin(tmp_path / "x.bin", [b"a", b"b", b"c"], [True, False])
    with pytest.raises(DeployzooError, match=r"image 1 is a str"):
        write_bin(tmp_path / "x.bin", [b"a", "b"], [True])
    with pytest.raises(DeployzooError, match=r"bools"):
        write_bin(tmp_path / "x.bin", [b"a", b"b"], [1])
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_load_bytes_any_protocol(tmp_path, protocol):
    images = [jpeg(i, 16) for i in range(4)] + [b""]  + [b"\x00'\"\\\n\xff"]  # empty, quotes, newline
    issame = [True, False, True]
    p = tmp_path / f"p{protocol}.bin"
    p.write_bytes(pickle.dumps((images, issame), protocol=protocol))
    vs = load_bin(p)
    assert vs.images == images and vs.issame.tolist() == issame


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
@pytest.mark.parametrize("column", [False, True])
def test_load_numpy_uint8_buffers(tmp_path, protocol, column):
    # cv2.imencode's output pickled as is: 1-D, or N x 1 as older OpenCV returned (small_lfw.bin)
    bufs = [cv2.imencode(".jpg", np.full((16, 16, 3), 40 * i, np.uint8))[1].reshape(-1) for i in range(4)]
    arrays = [b.reshape(-1, 1) if column else b for b in bufs]
    p = tmp_path / "np.bin"
    p.write_bytes(pickle.dumps((arrays, [True, False]), protocol=protocol))
    vs = load_bin(p)
    assert vs.images == [b.tobytes() for b in bufs]
    assert vs.decode(2).shape == (16, 16, 3)


def py2_pickle(bins: list[bytes], issame: list[bool], protocol: int) -> bytes:
    """What Python 2's cPickle writes for (list of str, list of bool): no globals, str opcodes."""
    if protocol == 0:
        out = b"((lp0\n"
        for b in bins:
            out += b"S" + repr(b)[1:].encode("ascii") + b"\np1\na"
        out += b"(lp2\n" + b"".join(b"I01\na" if s else b"I00\na" for s in issame) + b"tp3\n."
        return out
    out = b"\x80\x02]q\x00("
    for b in bins:
        out += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
    return out + b"e]q\x01(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e\x86q\x02."


@pytest.mark.parametrize("protocol", [0, 2])
def test_load_python2_pickles(tmp_path, protocol):
    bins = [jpeg(0, 16), b"ab'c", jpeg(1, 16), b"\xff\xd8\x00"]
    data = py2_pickle(bins, [True, False], protocol)
    if protocol == 2:  # (pickletools cannot decode protocol 0's non-ASCII STRING arguments)
        ops = {op.name for op, _, _ in pickletools.genops(data)}
        assert ops & {"SHORT_BINSTRING", "BINSTRING"} and not ops & {"GLOBAL", "STACK_GLOBAL"}
    assert pickle.loads(data, encoding="bytes") == (bins, [True, False])  # sanity of the hand-made pickle
    p = tmp_path / "agedb_30.bin"
    p.write_bytes(data)
    vs = load_bin(p)
    assert vs.name == "agedb_30" and vs.images == bins and vs.issame.tolist() == [True, False]


# ============================================================================ .bin files: refusing


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _refused(path: Path, pattern: str) -> str:
    with pytest.raises(DeployzooError) as ei:
        load_bin(path)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert re.search(pattern, msg), msg
    return msg


def test_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.bin"
    payload = ([_Reduce(os.system, (f"echo pwned > {marker}",)), b"x"], [True])
    p.write_bytes(pickle.dumps(payload, protocol=2))
    msg = _refused(p, r"refusing to unpickle global (posix|nt|os)\.system \(a \.bin set may only hold image")
    assert "image bytes and bools" in msg
    assert not marker.exists()
    p.write_bytes(pickle.dumps(_Reduce(os.system, (f"echo pwned > {marker}",)), protocol=0))
    _refused(p, r"refusing to unpickle global")
    assert not marker.exists()


def test_refuses_builtins_eval_and_others(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.bin"
    code = f"open({str(marker)!r}, 'w').write('x')"
    p.write_bytes(pickle.dumps(([_Reduce(builtins.eval, (code,))], []), protocol=4))
    _refused(p, r"refusing to unpickle global builtins\.eval")
    assert not marker.exists()
    p.write_bytes(pickle.dumps(_Reduce(builtins.__import__, ("os",)), protocol=2))
    _refused(p, r"global (builtins|__builtin__)\.__import__")
    # bytes() with an argument, and _codecs.encode with another codec, are refused too
    p.write_bytes(pickle.dumps(([_Reduce(bytes, (5,))], [True]), protocol=2))
    _refused(p, r"builtins\.bytes with arguments")
    p.write_bytes(pickle.dumps(([_Reduce(_codecs.encode, ("abc", "rot13"))], [True]), protocol=2))
    _refused(p, r"_codecs\.encode with encoding 'rot13'")
    assert not marker.exists()


def test_refuses_numpy_other_than_byte_buffers(tmp_path):
    p = tmp_path / "np.bin"
    p.write_bytes(pickle.dumps(([np.zeros(8, np.float32), np.zeros(8, np.float32)], [True]), protocol=3))
    _refused(p, r"refusing numpy array of dtype 'f4'")
    img = np.zeros((112, 112, 3), np.uint8)  # raw pixels instead of an encoded image
    p.write_bytes(pickle.dumps(([img, img], [True]), protocol=3))
    _refused(p, r"shape \(112, 112, 3\) is not a flat byte buffer")
    p.write_bytes(pickle.dumps(([b"a", b"b"], np.array([True])), protocol=4))
    _refused(p, r"dtype '\|?b1'")
    p.write_bytes(pickle.dumps(([b"a", b"b"], [np.bool_(True)]), protocol=4))
    _refused(p, r"refusing to unpickle global numpy\.(_core|core)\.multiarray\.scalar")
    p.write_bytes(pickle.dumps(np.array([b"a", b"b"], dtype=object), protocol=2))
    _refused(p, r"dtype 'O")


@pytest.mark.parametrize("obj, pattern", [
    ({"bins": [], "issame": []}, r"expected a 2-tuple \(bins, issame_list\), got a dict"),
    (([b"a", b"b"], [True], [1]), r"got a tuple of length 3"),
    (([b"a", "b"], [True]), r"bins\[1\] is a str, expected encoded image bytes"),
    ((b"ab", [True]), r"bins is a bytes, expected a list"),
    (([b"a", b"b"], [1]), r"issame_list\[0\] is a int, expected a bool"),
    (([b"a", b"b"], "T"), r"issame_list is a str"),
    (([b"a", b"b", b"c"], [True, False]), r"3 images for 2 pairs \(expected 2 per pair\)"),
    (([], []), r"holds no pairs"),
])
def test_refuses_wrong_structure(tmp_path, obj, pattern):
    p = tmp_path / "bad.bin"
    p.write_bytes(pickle.dumps(obj, protocol=4))
    _refused(p, pattern)


def test_refuses_garbage_and_missing(tmp_path):
    p = tmp_path / "garbage.bin"
    p.write_bytes(b"\x00\x01 this is not a pickle")
    _refused(p, r"not a readable \.bin pickle")
    good = pickle.dumps(([b"a", b"b"], [True]), protocol=4)
    p.write_bytes(good[: len(good) // 2])
    _refused(p, r"not a readable \.bin pickle")
    with pytest.raises(DeployzooError, match=r"missing\.bin: cannot read file"):
        load_bin(tmp_path / "missing.bin")


# ============================================================================ the real fixture


@need_fixture(SMALL_LFW)
@pytest.mark.fixtures
def test_small_lfw_fixture():
    vs = load_bin(SMALL_LFW)
    assert vs.name == "small_lfw"
    assert len(vs) == 20 and vs.n_pairs == 10
    assert vs.issame.dtype == bool and vs.issame.tolist() == [True] * 10
    for i in range(len(vs)):
        img = vs.decode(i)
        assert img.shape == (112, 112, 3) and img.dtype == np.uint8
        assert vs.images[i][:2] == b"\xff\xd8"
    # what the loader had to accept: numpy uint8 N x 1 arrays at protocol 3, only the numpy globals
    globals_ = {arg for op, arg, _ in pickletools.genops(SMALL_LFW.read_bytes()) if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    # the protocol runs on it (all pairs positive: accuracy defined, VAL/FAR not)
    emb = np.stack([cv2.resize(vs.decode(i), (8, 8)).reshape(-1) for i in range(len(vs))]).astype(np.float64)
    r = evaluate(emb, vs.issame)
    assert r.n_folds == 10 and 0 <= r.accuracy_mean <= 1 and r.to_json()["val_mean"] is None

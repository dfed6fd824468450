"""deployzoo.data.ijbc and deployzoo.metrics.ijbc against a literal transcription of the official IJB-C 1:1 eval.

The reference below follows insightface ``recognition/arcface_torch/eval_ijbc.py`` step by step: the same
meta reading (whitespace split instead of pandas, same values), the flip/norm/detector switches, the loops over
unique templates and medias with np.where, the template2id table and batches of 100000 pairs, sklearn's
roc_curve / auc, and the flipud + min(zip(abs(fpr - x), range(len(fpr)))) read-off. It is slow on purpose;
the vectorised evaluate() must give the same numbers (in fact the same bits).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import sklearn.preprocessing
from sklearn.metrics import auc, roc_curve

import deployzoo.metrics.ijbc as mij
from deployzoo.data.face_align import ARCFACE_TEMPLATE, align_face, similarity_transform
from deployzoo.data.ijbc import (IJBCLayout, find_layout, iter_pairs, read_faceness, read_landmarks, read_pairs,
                                 read_templates)
from deployzoo.demo.ijbc import write_demo, write_synthetic_meta
from deployzoo.errors import DeployzooError
from deployzoo.metrics.ijbc import (FAR_LEVELS, IJBCResult, evaluate, plot_roc, roc_from_sorted, tar_at_far,
                                    template_features)


# ============================================================================ the reference (official, literal)


def ref_read_template_media_list(path):
    ijb_meta = np.array([ln.split(" ") for ln in Path(path).read_text().splitlines() if ln], dtype=object)
    templates = ijb_meta[:, 1].astype(int)
    medias = ijb_meta[:, 2].astype(int)
    return templates, medias


def ref_read_template_pair_list(path):
    pairs = np.array([ln.split(" ") for ln in Path(path).read_text().splitlines() if ln], dtype=object)
    t1 = pairs[:, 0].astype(int)
    t2 = pairs[:, 1].astype(int)
    label = pairs[:, 2].astype(int)
    return t1, t2, label


def ref_faceness(img_list_path):
    with open(img_list_path) as img_list:
        files = img_list.readlines()
    faceness_scores = []
    for each_line in files:
        name_lmk_score = each_line.strip().split(" ")
        faceness_scores.append(name_lmk_score[-1])
    return np.array(faceness_scores).astype(np.float32)


def ref_image2template_feature(img_feats=None, templates=None, medias=None):
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:  # image features from the same video will be aggregated into one feature
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    template_norm_feats = sklearn.preprocessing.normalize(template_feats)
    return template_norm_feats, unique_templates


def ref_verification(template_norm_feats=None, unique_templates=None, p1=None, p2=None):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    sublists = [total_pairs[i:i + batchsize] for i in range(0, len(p1), batchsize)]
    for c, s in enumerate(sublists):
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        similarity_score = np.sum(feat1 * feat2, -1)
        score[s] = similarity_score.flatten()
    return score


def ref_evaluate(img_feats_flip_summed, meta_dir, use_norm_score=True, use_detector_score=True):
    """The official main block; img_input_feats is what the official computes after its flip-test 'add'."""
    templates, medias = ref_read_template_media_list(meta_dir / "ijbc_face_tid_mid.txt")
    p1, p2, label = ref_read_template_pair_list(meta_dir / "ijbc_template_pair_label.txt")
    faceness_scores = ref_faceness(meta_dir / "ijbc_name_5pts_score.txt")
    img_input_feats = img_feats_flip_summed
    if use_norm_score:
        img_input_feats = img_input_feats
    else:
        img_input_feats = img_input_feats / np.sqrt(np.sum(img_input_feats ** 2, -1, keepdims=True))
    if use_detector_score:
        img_input_feats = img_input_feats * faceness_scores[:, np.newaxis]
    template_norm_feats, unique_templates = ref_image2template_feature(img_input_feats, templates, medias)
    score = ref_verification(template_norm_feats, unique_templates, p1, p2)
    x_labels = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]
    fpr, tpr, _ = roc_curve(label, score)
    roc_auc = auc(fpr, tpr)
    fpr_f = np.flipud(fpr)
    tpr_f = np.flipud(tpr)
    row = []
    for fpr_iter in np.arange(len(x_labels)):
        _, min_index = min(list(zip(abs(fpr_f - x_labels[fpr_iter]), range(len(fpr_f)))))
        row.append(tpr_f[min_index])
    return {"tar": row, "auc": roc_auc, "fpr": fpr, "tpr": tpr, "score": score, "label": label,
            "template_norm_feats": template_norm_feats, "unique_templates": unique_templates}


# ============================================================================ fixtures


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> IJBCLayout:
    return write_demo(tmp_path_factory.mktemp("ijbc") / "IJBC", n_identities=12, images_per_identity=6, seed=0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A meta-only protocol of a few thousand pairs, with features that separate subjects imperfectly."""
    sm = write_synthetic_meta(tmp_path_factory.mktemp("ijbc_synth"), n_images=1500, n_templates=260,
                              n_pairs=6000, seed=3)
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((int(sm.subjects.max()) + 1, 64))
    feats = (centres[sm.subjects] * 0.35 + rng.standard_normal((len(sm.subjects), 64))
             * rng.uniform(0.5, 3.0, (len(sm.subjects), 1))).astype(np.float32)
    return sm, feats


def demo_features(demo: IJBCLayout, dim: int = 32, seed: int = 0) -> np.ndarray:
    n = len(read_templates(demo.tid_mid_path))
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)) * rng.uniform(0.2, 5.0, (n, 1))).astype(np.float32)


def assert_same_as_reference(res: IJBCResult, ref: dict) -> None:
    # the ROC is bit for bit the official one, so are the TARs
    np.testing.assert_array_equal(res.fpr, ref["fpr"])
    np.testing.assert_array_equal(res.tpr, ref["tpr"])
    assert res.auc == ref["auc"]
    assert list(res.tar_at_far.values()) == [float(v) for v in ref["tar"]]
    assert res.n_pairs == len(ref["label"]) and res.n_pos == int(ref["label"].sum())


# ============================================================================ evaluate vs the official


@pytest.mark.parametrize("norm_score", [True, False])
@pytest.mark.parametrize("detector_score", [True, False])
def test_demo_matches_official(demo, norm_score, detector_score):
    feats = demo_features(demo)
    res = evaluate(feats, demo, norm_score=norm_score, detector_score=detector_score, keep_scores=True)
    ref = ref_evaluate(feats, demo.meta_dir, use_norm_score=norm_score, use_detector_score=detector_score)
    assert_same_as_reference(res, ref)
    assert np.abs(res.scores - ref["score"]).max() < 1e-12
    for mine, theirs in zip(res.tar_at_far.values(), ref["tar"]):
        assert abs(mine - theirs) < 1e-4  # the brief's tolerance; in fact equal
    assert res.n_templates == 24 and res.n_images == 72 and res.n_pairs == 144 and res.n_pos == 12


@pytest.mark.parametrize("norm_score", [True, False])
def test_synthetic_matches_official(synth, norm_score):
    sm, feats = synth
    res = evaluate(feats, sm.layout.meta_dir, norm_score=norm_score, keep_scores=True, chunk_lines=997)
    ref = ref_evaluate(feats, sm.layout.meta_dir, use_norm_score=norm_score)
    assert_same_as_reference(res, ref)
    assert np.abs(res.scores - ref["score"]).max() < 1e-12
    assert 0.2 < res.tar_at_far[1e-1] < 1.0 and 0.5 < res.auc < 1.0  # a non-trivial curve
    assert res.n_neg == 6000 - res.n_pos


def test_threshold_at_far_accepts_at_most_that_many_impostors(synth):
    """The operating point kept for `faces compare / search`: above it at most floor(FAR x n_neg) impostor pairs,
    and it is an impostor score itself (one impostor fewer would not do); in the json beside the TARs."""
    sm, feats = synth
    res = evaluate(feats, sm.layout.meta_dir, keep_scores=True)
    neg = res.scores[res.labels == 0]
    assert list(res.threshold_at_far) == list(FAR_LEVELS)
    for far, t in res.threshold_at_far.items():
        k = int(np.floor(far * len(neg)))
        assert (neg > t).sum() <= k < (neg >= t).sum()
        assert t in neg
    assert res.threshold_at_far[1e-6] == neg.max() and res.threshold_at_far[1e-1] < res.threshold_at_far[1e-3]
    js = res.to_json()["threshold_at_far"]
    assert [float(k) for k in js] == list(FAR_LEVELS) and js["0.001"] == res.threshold_at_far[1e-3]


@pytest.mark.parametrize("tile_bits,ratio", [((3, 4), 32), ((3, 4), 10 ** 6), ((4, 3), 1)])
def test_scoring_tiles_and_gather_paths(synth, monkeypatch, tile_bits, ratio):
    """Many small tiles, scored by BLAS products (ratio 1), by gathering rows (huge ratio) or by a mix."""
    sm, feats = synth
    monkeypatch.setattr(mij, "_TILE_BITS", tile_bits)
    monkeypatch.setattr(mij, "_GATHER_VS_GEMM", ratio)
    res = evaluate(feats, sm.layout, keep_scores=True)
    ref = ref_evaluate(feats, sm.layout.meta_dir)
    assert_same_as_reference(res, ref)
    assert np.abs(res.scores - ref["score"]).max() < 1e-12


@pytest.mark.parametrize("pool_rows", [4096, 50, 3])
def test_template_features_bit_for_bit(synth, monkeypatch, pool_rows):
    """One pooling block, many, and templates larger than the gather buffer; float64 input is cast first."""
    sm, feats = synth
    monkeypatch.setattr(mij, "_POOL_ROWS", pool_rows)
    ref = ref_evaluate(feats, sm.layout.meta_dir)
    tt = read_templates(sm.layout.tid_mid_path)
    lm = read_landmarks(sm.layout.landmarks_path)
    tf, ut = template_features(feats.astype(np.float64) if pool_rows == 3 else feats, tt.templates, tt.medias,
                               lm.scores)
    np.testing.assert_array_equal(ut, ref["unique_templates"])
    np.testing.assert_array_equal(tf, ref["template_norm_feats"])  # same float32 additions, same order


def test_sklearn_roc_path_and_noisy_scores_still_exact(synth, monkeypatch, tmp_path):
    """The near-tie repair: even if the fast scores were off by 1e-14 (within the bound it assumes), the scores
    sort and tie exactly as the official ones. Duplicate pairs and identical templates make exact ties."""
    sm, feats = synth
    meta = copy_meta(sm.layout, tmp_path).meta_dir
    # duplicate some pair lines (exact ties) and give two templates identical images (identical features)
    lines = (meta / "ijbc_template_pair_label.txt").read_text().splitlines()
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(lines + lines[::7]) + "\n")
    feats = feats.copy()
    tt = read_templates(meta / "ijbc_face_tid_mid.txt")
    a, b = np.unique(tt.templates)[[3, 4]]
    ra, rb = np.flatnonzero(tt.templates == a), np.flatnonzero(tt.templates == b)
    feats[rb] = feats[ra[0]]
    ref = ref_evaluate(feats, meta)
    rng = np.random.default_rng(0)
    real_fast = mij.fast_scores
    monkeypatch.setattr(mij, "fast_scores", lambda t, i, j: real_fast(t, i, j) + rng.uniform(-1e-14, 1e-14, len(i)))
    res = evaluate(feats, meta)
    assert_same_as_reference(res, ref)
    assert res.n_rescored > len(lines[::7])  # every duplicated pair was in a near-tie cluster
    monkeypatch.setattr(mij, "fast_scores", real_fast)
    res2 = evaluate(feats, meta, sklearn_roc=True)
    assert_same_as_reference(res2, ref)


def test_normalize_rows_equals_sklearn():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 33)) * rng.uniform(1e-3, 1e3, (50, 1))
    x[[3, 17]] = 0.0
    np.testing.assert_array_equal(mij.normalize_rows(x.copy()), sklearn.preprocessing.normalize(x))


def test_roc_from_sorted_equals_sklearn():
    rng = np.random.default_rng(5)
    for trial in range(30):
        n = int(rng.integers(3, 400))
        lab = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(np.int8)
        lab[0], lab[1] = 0, 1
        s = np.round(rng.normal(lab * rng.uniform(0, 2), 1.0), int(rng.integers(0, 3)))  # many ties
        if trial % 3 == 0:
            s[rng.random(n) < 0.2] = 0.0
            s[rng.random(n) < 0.1] = -0.0
        fpr, tpr = roc_from_sorted(np.sort(s[lab == 0]), np.sort(s[lab == 1]))
        f2, t2, _ = roc_curve(lab, s)
        np.testing.assert_array_equal(fpr, f2)
        np.testing.assert_array_equal(tpr, t2)


def test_tar_read_off_matches_official_min_zip():
    rng = np.random.default_rng(1)
    x_labels = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]
    assert tuple(x_labels) == FAR_LEVELS  # 10 ** -6 == 1e-6 in Python
    for _ in range(20):
        n = 3000
        lab = (rng.random(n) < 0.3).astype(int)
        s = np.round(rng.normal(lab, 1.0), 1)
        fpr, tpr, _ = roc_curve(lab, s)
        mine = tar_at_far(fpr, tpr)
        f, t = np.flipud(fpr), np.flipud(tpr)
        for x in x_labels:
            _, i = min(list(zip(abs(f - x), range(len(f)))))
            assert mine[x] == t[i]


# ============================================================================ a case checked by hand


def test_hand_checked_tiny_case(tmp_path):
    """Six one-image templates with axis-aligned features, so the cosines tie exactly where they should:

        T10 = T60 = e1    T20 = (e1 + e2) / sqrt 2    T30 = e2    T40 = e3    T50 = -e1      (a = 1 / sqrt 2)

    score   pairs (label)
      1     10-60 (1)
      a     10-20 (1), 20-30 (0)                       a positive tied with a negative
      0     10-30 (1), 10-40 30-40 20-40 40-50 30-50 (0)
     -a     20-50 (0)
     -1     10-50 (0), 60-50 (1)

    4 positives, 8 negatives. Thresholds from the top give (fp, tp) = (0, 1), (1, 2), (6, 3), (7, 3), (8, 4);
    every middle point is a corner, so nothing is dropped and
        fpr = [0, 0, 1/8, 6/8, 7/8, 1]      tpr = [0, 1/4, 2/4, 3/4, 3/4, 1].
    Flipped: fpr [1, 7/8, 6/8, 1/8, 0, 0], tpr [1, 3/4, 3/4, 1/2, 1/4, 0].
    FAR 0.1: distances .9, .775, .65, .025, .1, .1 -> fpr 1/8 (ABOVE the FAR, but nearest): TAR 1/2.
    FAR 0.01 (and 1e-3 .. 1e-6): fpr 0 twice, equally near; the first in the flipped order has TPR 1/4 (the
    highest at that FPR), not 0.
    AUC = 1/8 * (1/4 + 1/2) / 2 + 5/8 * (1/2 + 3/4) / 2 + 1/8 * 3/4 + 1/8 * (3/4 + 1) / 2 = 0.640625.
    """
    meta = tmp_path / "meta"
    meta.mkdir()
    vec = {10: (1, 0, 0), 20: (1, 1, 0), 30: (0, 1, 0), 40: (0, 0, 1), 50: (-1, 0, 0), 60: (1, 0, 0)}
    names = [f"{i + 1}.jpg" for i in range(len(vec))]
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(f"{n} {t} {t * 7}\n" for n, t in zip(names, vec)))
    (meta / "ijbc_name_5pts_score.txt").write_text(
        "".join(f"{n} 1 1 2 1 1.5 2 1 3 2 3 0.9\n" for n in names))
    pairs = "10 60 1|10 20 1|20 30 0|10 30 1|10 40 0|30 40 0|20 40 0|40 50 0|30 50 0|20 50 0|10 50 0|60 50 1"
    (meta / "ijbc_template_pair_label.txt").write_text(pairs.replace("|", "\n") + "\n")
    feats = np.array(list(vec.values()), np.float32)
    res = evaluate(feats, meta)
    np.testing.assert_allclose(res.fpr, [0, 0, 1 / 8, 6 / 8, 7 / 8, 1])
    np.testing.assert_allclose(res.tpr, [0, 1 / 4, 2 / 4, 3 / 4, 3 / 4, 1])
    assert res.tar_at_far[1e-1] == 0.5
    for far in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        assert res.tar_at_far[far] == 0.25
    assert res.auc == pytest.approx(0.640625, abs=1e-15)
    assert (res.n_pairs, res.n_pos, res.n_neg, res.n_templates, res.n_images) == (12, 4, 8, 6, 6)
    assert_same_as_reference(res, ref_evaluate(feats, meta))


@pytest.mark.parametrize("big", [1, 10 ** 12])
def test_media_pooling_by_hand(tmp_path, big):
    """Template 5: media 1 = images (1, 0) and (3, 0) (mean (2, 0)), media 2 = (0, 4): template (2, 4).
    Template 9: one image (1, 2), so the pair's cosine is 1 (same direction); template 7 is (-1, -2): cos -1.
    With ids times 10**12 the template lookup cannot be a table (the official template2id would need TBs)."""
    meta = tmp_path / "meta"
    meta.mkdir()
    rows = [("a.jpg", 5 * big, 1), ("b.jpg", 9 * big, 3), ("c.jpg", 5 * big, 2), ("d.jpg", 5 * big, 1),
            ("e.jpg", 7 * big, 1)]
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in rows))
    (meta / "ijbc_name_5pts_score.txt").write_text("".join(f"{n} 1 1 2 1 1.5 2 1 3 2 3 0.5\n" for n, _, _ in rows))
    (meta / "ijbc_template_pair_label.txt").write_text(f"{5 * big} {9 * big} 1\n{5 * big} {7 * big} 0\n")
    feats = np.array([[1, 0], [1, 2], [0, 4], [3, 0], [-1, -2]], np.float32)
    res = evaluate(feats, meta, keep_scores=True)
    np.testing.assert_allclose(res.scores, [1.0, -1.0], atol=1e-12)
    tt = read_templates(meta / "ijbc_face_tid_mid.txt")
    tf, ut = template_features(feats, tt.templates, tt.medias)
    np.testing.assert_array_equal(ut, np.array([5, 7, 9]) * big)
    np.testing.assert_allclose(tf[0], np.array([2, 4]) / np.hypot(2, 4))


# ============================================================================ bad input


def copy_meta(demo: IJBCLayout, tmp_path) -> IJBCLayout:
    meta = tmp_path / "meta"
    meta.mkdir()
    for p in demo.meta_paths:
        (meta / p.name).write_bytes(p.read_bytes())
    return IJBCLayout(tmp_path, tmp_path / "loose_crop", meta)


def edit_line(path, lineno: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def raises_at(fn, *needles: str) -> str:
    with pytest.raises(DeployzooError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_landmark_file_errors(demo, tmp_path):
    lay = copy_meta(demo, tmp_path)
    p = lay.landmarks_path
    orig = p.read_text()
    first = orig.splitlines()[4].split()
    edit_line(p, 5, " ".join(first[:11]))
    msg = raises_at(lambda: read_landmarks(p), f"{p}:5:", "expected 12 fields", "got 11")
    assert "name, 5 x/y landmark pairs, faceness score" in msg
    p.write_text(orig)
    edit_line(p, 9, " ".join(first[:3] + ["12.x"] + first[4:]))
    raises_at(lambda: read_landmarks(p), f"{p}:9:", "'12.x'", "not a number")
    p.write_text(orig)
    edit_line(p, 3, " ".join(first[:5] + ["nan"] + first[6:]))
    raises_at(lambda: read_landmarks(p), f"{p}:3:", "finite")
    p.write_text(orig)
    edit_line(p, 2, "")
    raises_at(lambda: read_landmarks(p), f"{p}:2:", "blank line")
    p.write_text("\n\n")
    raises_at(lambda: read_landmarks(p), str(p), "empty")
    # the error surfaces through evaluate too
    p.write_text(orig)
    edit_line(p, 7, " ".join(first[:11]))
    raises_at(lambda: evaluate(demo_features(demo), lay), f"{p}:7:")


def test_landmarks_trailing_blank_lines_and_crlf_ok(demo, tmp_path):
    lay = copy_meta(demo, tmp_path)
    p = lay.landmarks_path
    ref = read_landmarks(demo.landmarks_path)
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\n  \n")
    got = read_landmarks(p)
    assert got.names == ref.names
    np.testing.assert_array_equal(got.landmarks, ref.landmarks)
    p.write_text(p.read_text().replace(" ", "  \t"))  # odd spacing: the line-by-line reader, same values
    got = read_landmarks(p)
    np.testing.assert_array_equal(got.scores, ref.scores)


def test_read_faceness(demo, tmp_path):
    lm = read_landmarks(demo.landmarks_path)
    names, scores = read_faceness(demo.landmarks_path)
    assert names == lm.names
    np.testing.assert_array_equal(scores, lm.scores)
    assert scores.dtype == np.float32
    lay = copy_meta(demo, tmp_path)
    p = lay.landmarks_path
    parts = p.read_text().splitlines()[5].split()
    edit_line(p, 6, " ".join(parts[:11] + ["0.9x"]))
    raises_at(lambda: read_faceness(p), f"{p}:6:", "'0.9x'")
    edit_line(p, 6, " ".join(parts[:10]))
    raises_at(lambda: read_faceness(p), f"{p}:6:", "got 10")


def test_landmarks_parsed_like_float(demo):
    lm = read_landmarks(demo.landmarks_path)
    lines = demo.landmarks_path.read_text().splitlines()
    assert lm.landmarks.dtype == np.float32 and lm.landmarks.shape == (72, 5, 2) and lm.scores.shape == (72,)
    for i in (0, 17, 71):
        parts = lines[i].strip().split(" ")
        assert lm.names[i] == parts[0]
        np.testing.assert_array_equal(lm.landmarks[i].ravel(), np.array([float(x) for x in parts[1:-1]], np.float32))
        assert lm.scores[i] == np.array([parts[-1]]).astype(np.float32)[0]


def test_template_file_errors(demo, tmp_path):
    lay = copy_meta(demo, tmp_path)
    p = lay.tid_mid_path
    orig = p.read_text()
    name, t, m = orig.splitlines()[10].split()
    edit_line(p, 11, f"{name} {t} {m} 5")
    raises_at(lambda: read_templates(p), f"{p}:11:", "expected 3 fields", "got 4")
    p.write_text(orig)
    edit_line(p, 6, f"{name} {t}.5 {m}")
    raises_at(lambda: read_templates(p), f"{p}:6:", "not an integer")
    p.write_text(orig)
    # names disagree with the 5pts file
    edit_line(p, 13, f"other.jpg {t} {m}")
    raises_at(lambda: evaluate(demo_features(demo), lay), f"{p}:13:", "'other.jpg'", "ijbc_name_5pts_score.txt")
    p.write_text(orig)
    p.write_text("\n".join(orig.splitlines()[:-1]) + "\n")
    raises_at(lambda: evaluate(demo_features(demo), lay), str(p), "71 lines", "72")


def test_pair_file_errors(demo, tmp_path):
    lay = copy_meta(demo, tmp_path)
    p = lay.pair_path
    orig = p.read_text()
    a, b, _ = orig.splitlines()[20].split()
    edit_line(p, 21, f"{a} {b} 2")
    raises_at(lambda: read_pairs(p), f"{p}:21:", "label must be 0 or 1")
    raises_at(lambda: read_pairs(p, chunk_lines=7), f"{p}:21:", "label must be 0 or 1")
    raises_at(lambda: evaluate(demo_features(demo), lay), f"{p}:21:")
    p.write_text(orig)
    edit_line(p, 30, f"{a} {b}")
    raises_at(lambda: read_pairs(p, chunk_lines=4), f"{p}:30:", "expected 3 fields", "got 2")
    # right number of fields in all, wrong per line
    lines = orig.splitlines()
    p.write_text("\n".join(lines[:50] + [f"{a} {b} 0 {a}", f"{b} 1"] + lines[52:]) + "\n")
    raises_at(lambda: read_pairs(p), f"{p}:51:", "got 4")
    p.write_text(orig)
    edit_line(p, 8, f"{a} x{b} 1")
    raises_at(lambda: read_pairs(p), f"{p}:8:", "'x", "not an integer")
    # a template that has no image: one above the largest id and one between existing ids
    for bad in (999_999, int(a) + 1):
        p.write_text(orig)
        edit_line(p, 40, f"{a} {bad} 0")
        raises_at(lambda: evaluate(demo_features(demo), lay), f"{p}:40:", f"template {bad} has no images",
                  "ijbc_face_tid_mid.txt")
    # the line number counts blank lines
    lines = orig.splitlines()
    lines[39] = f"{a} 999999 0"
    p.write_text("\n".join(lines[:10] + ["", ""] + lines[10:]) + "\n")
    raises_at(lambda: evaluate(demo_features(demo), lay, chunk_lines=16), f"{p}:42:", "template 999999")
    p.write_text("".join(ln + "\n" for ln in orig.splitlines() if ln.endswith(" 0")))
    raises_at(lambda: evaluate(demo_features(demo), lay), str(p), "no genuine")


def test_feature_errors(demo, tmp_path):
    feats = demo_features(demo)
    raises_at(lambda: evaluate(feats[:-2], demo, features_path="feats.npy"), "feats.npy", "70 feature rows",
              "ijbc_name_5pts_score.txt", "72")
    raises_at(lambda: evaluate(feats[:, 0], demo), "features", "N x D")
    bad = feats.copy()
    bad[[9, 40, 41], 3] = [np.nan, np.inf, -np.inf]
    msg = raises_at(lambda: evaluate(bad, demo, features_path="f.npy"), "f.npy", "3 feature rows", "row 9")
    assert "NaN" in msg
    npy = tmp_path / "feats.npy"
    np.save(npy, bad)
    raises_at(lambda: evaluate(npy, demo), str(npy), "row 9")
    zero = feats.copy()
    zero[[5, 60]] = 0
    raises_at(lambda: evaluate(zero, demo, norm_score=False), "2 all-zero feature rows", "row 5")
    evaluate(zero, demo)  # with the norms kept a zero image is fine (it adds nothing)


def test_find_layout(demo, tmp_path):
    assert find_layout(demo.root).meta_dir == demo.meta_dir
    assert find_layout(demo.root.parent).root == demo.root  # the parent holding IJBC/
    assert find_layout(demo.meta_dir).meta_dir == demo.meta_dir
    assert find_layout(demo.root, need_images=True).images_dir == demo.images_dir
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "ijbc_face_tid_mid.txt").write_text("1.jpg 1 1\n")
    msg = raises_at(lambda: find_layout(tmp_path, need_images=True), str(tmp_path), "missing")
    for part in ("ijbc_template_pair_label.txt", "ijbc_name_5pts_score.txt", "loose_crop"):
        assert part in msg
    raises_at(lambda: find_layout(tmp_path / "nope"), "not found")


# ============================================================================ pair streaming


def test_iter_pairs_chunking(synth, tmp_path):
    sm, _ = synth
    whole = read_pairs(sm.layout.pair_path, chunk_lines=10 ** 9)
    for workers in (1, 2):
        chunks = list(iter_pairs(sm.layout.pair_path, chunk_lines=7, workers=workers))
        assert all(len(c[0]) == 7 for c in chunks[:-1]) and [c[3] for c in chunks[:3]] == [1, 8, 15]
        for k in range(3):
            np.testing.assert_array_equal(np.concatenate([c[k] for c in chunks]), whole[k])
    assert whole[0].dtype == np.int64 and whole[2].dtype == np.int8 and len(whole[0]) == 6000
    # odd spacing, CRLF, blank lines and no final newline read the same
    text = sm.layout.pair_path.read_text()
    odd = tmp_path / "pairs.txt"
    odd.write_text("\n" + text.replace(" ", " \t ").replace("\n", "\r\n\r\n").rstrip())
    for n in (7, 1000, 10 ** 9):
        got = read_pairs(odd, chunk_lines=n)
        for k in range(3):
            np.testing.assert_array_equal(got[k], whole[k])


# ============================================================================ write_demo


def test_write_demo_deterministic_and_consistent(demo, tmp_path):
    again = write_demo(tmp_path / "again", seed=0)
    for p, q in zip(demo.meta_paths, again.meta_paths):
        assert p.read_bytes() == q.read_bytes()
    assert (demo.images_dir / "5.jpg").read_bytes() == (again.images_dir / "5.jpg").read_bytes()
    other = write_demo(tmp_path / "other", n_identities=3, images_per_identity=4, seed=1)
    assert other.tid_mid_path.read_bytes() != demo.tid_mid_path.read_bytes()

    tt, lm = read_templates(demo.tid_mid_path), read_landmarks(demo.landmarks_path)
    assert tt.names == lm.names == [f"{i + 1}.jpg" for i in range(72)]
    assert sorted(p.name for p in demo.images_dir.iterdir()) == sorted(tt.names)
    t1, t2, lab = read_pairs(demo.pair_path)
    assert set(t1) | set(t2) <= set(tt.templates) and lab.sum() == 12 and len(lab) == 144
    ut = np.unique(tt.templates)
    assert len(ut) == 24 and ut.min() >= 1000 and np.diff(ut).min() > 1  # sparse ids
    assert (lm.scores >= 0.5).all() and (lm.scores < 1).all()
    # media: some hold several images of a template (video frames), some one; one id spans two templates
    per_group = {}
    for t, m in zip(tt.templates, tt.medias):
        per_group[(t, m)] = per_group.get((t, m), 0) + 1
    assert max(per_group.values()) >= 2 and min(per_group.values()) == 1
    media_templates = {}
    for t, m in zip(tt.templates, tt.medias):
        media_templates.setdefault(m, set()).add(t)
    assert any(len(v) > 1 for v in media_templates.values())
    assert not np.all(np.diff(tt.templates) >= 0)  # rows are not sorted by template


def test_write_demo_landmarks_align(demo):
    tt, lm = read_templates(demo.tid_mid_path), read_landmarks(demo.landmarks_path)
    sizes, aligned = [], []
    for name, pts in zip(lm.names, lm.landmarks):
        img = cv2.imread(str(demo.images_dir / name))
        h, w = img.shape[:2]
        sizes.append((h, w))
        assert (pts[:, 0] > 0).all() and (pts[:, 0] < w).all() and (pts[:, 1] > 0).all() and (pts[:, 1] < h).all()
        assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # left/right as seen, eyes above nose above mouth
        assert max(pts[0, 1], pts[1, 1]) < pts[2, 1] < min(pts[3, 1], pts[4, 1])
        m = similarity_transform(pts, ARCFACE_TEMPLATE)
        mapped = pts @ m[:, :2].T + m[:, 2]
        assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 5.0  # a similarity of the template, up to identity offsets
        aligned.append(align_face(img, pts).astype(np.float32))
    hs, ws = zip(*sizes)
    assert 120 <= min(hs) and max(hs) <= 200 and len(set(sizes)) > 30
    a = np.stack(aligned)
    assert a.shape == (72, 112, 112, 3)
    # aligned crops of one identity look alike: the nearest neighbour (standardised pixels of the face region)
    # is of the same identity (chance: 1/12)
    ident = {}
    t1, t2, lab = read_pairs(demo.pair_path)
    for x, y in zip(t1[lab == 1], t2[lab == 1]):
        ident[x] = ident[y] = len(ident)
    who = np.array([ident[t] for t in tt.templates])
    flat = a[:, 16:104, 16:96].reshape(72, -1)
    flat = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)
    d = ((flat[:, None, :] - flat[None, :, :]) ** 2).mean(-1)
    np.fill_diagonal(d, np.inf)
    assert (who[d.argmin(1)] == who).mean() > 0.9


def test_write_demo_speed(tmp_path):
    import time

    t = time.perf_counter()
    write_demo(tmp_path / "d", seed=4)
    assert time.perf_counter() - t < 2.0


# ============================================================================ result, plot


def test_to_json_and_plot(demo, tmp_path):
    res = evaluate(demo_features(demo), demo)
    js = res.to_json()
    assert list(js["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert [float(k) for k in js["tar_at_far"]] == list(FAR_LEVELS)
    json.dumps(js)
    assert set(js) >= {"auc", "n_pairs", "n_pos", "n_neg", "n_templates", "n_images", "seconds"}
    assert set(res.timings) == {"read_meta", "pooling", "pairs", "meta+pooling+pairs (overlapped)", "scoring", "roc"}
    png = plot_roc({"random": res, "noisy": evaluate(demo_features(demo, seed=1), demo)}, tmp_path / "roc.png",
                   title="demo")
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200
    plot_roc(res, tmp_path / "one.png")

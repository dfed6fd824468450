"""faces compare / search: detect -> align -> embed -> cosine on a real photo with the real RetinaFace weights (the
recognizer has random weights: similarities are checked for what they must be whatever the weights, e.g. a face
against itself), the gallery index (incremental, rebuilt when images go), thresholds from verification runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MNET_WEIGHTS, astronaut_bgr, need_fixture, run_cli

from deployzoo.build import build_engine
from deployzoo.errors import DeployzooError
from deployzoo.export import export_onnx
from deployzoo.faces import (
    FaceModels,
    Threshold,
    build_index,
    compare,
    cosine,
    pick_face,
    search,
    threshold_from,
)
from deployzoo.metrics.verification import pair_distances
from deployzoo.pipeline import load_engine
from deployzoo.predict import predict


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> tuple[Path, Path]:
    if not MNET_WEIGHTS.exists():
        pytest.skip(f"needs {MNET_WEIGHTS} (../shared/fixtures is absent in a fresh clone)")
    d = tmp_path_factory.mktemp("faces_eng")
    export_onnx("retinaface", d / "mnet.onnx", variant="mobilenet0.25", weights=MNET_WEIGHTS, imgsz="origin",
                batch=None, check_parity=False)
    export_onnx("arcface", d / "r18.onnx", variant="r18", batch=None)
    return build_engine(d / "mnet.onnx", d / "mnet", precision="fp32"), build_engine(d / "r18.onnx", d / "r18",
                                                                                       precision="fp32")


@pytest.fixture(scope="module")
def models(engines) -> FaceModels:
    return FaceModels(load_engine(engines[0]), load_engine(engines[1]))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    img = astronaut_bgr()
    cv2.imwrite(str(d / "a.jpg"), img)
    cv2.imwrite(str(d / "a_mirror.jpg"), np.ascontiguousarray(img[:, ::-1]))
    two = np.full((512, 1024, 3), 90, np.uint8)  # the astronaut twice: mirrored, and at 0.6x on the right
    two[:, :512] = img[:, ::-1]
    small = cv2.resize(img, (307, 307))
    two[100:407, 640:947] = small
    cv2.imwrite(str(d / "two.jpg"), two)
    cv2.imwrite(str(d / "none.jpg"), np.full((240, 320, 3), 128, np.uint8))
    return d


def test_compare_a_face_with_itself_and_its_mirror(models, photos):
    thr = Threshold(0.999, "test")
    same = compare(models, photos / "a.jpg", photos / "a.jpg", threshold=thr)
    assert same["cosine"] > 0.99999 and same["same"] is True  # the same pixels give the same embedding
    a = same["a"]
    assert a["faces"] == 1 and a["score"] > 0.9 and len(a["box"]) == 4 and np.asarray(a["landmarks"]).shape == (5, 2)
    x1, y1, x2, y2 = a["box"]
    assert all(x1 <= px <= x2 and y1 <= py <= y2 for px, py in a["landmarks"])  # the points lie inside the box
    mirror = compare(models, photos / "a.jpg", photos / "a_mirror.jpg", threshold=thr)
    # the mirror's face sits at the mirrored place, and with the flip test its embedding is nearly the same
    assert abs((512 - mirror["b"]["box"][2]) - a["box"][0]) < 3
    assert 0.5 < mirror["cosine"] < same["cosine"]


def test_largest_or_best_face_of_an_image_with_two(models, photos):
    faces = models.faces([photos / "two.jpg"])[0]
    assert len(faces) == 2
    big = pick_face(faces, "largest", "two.jpg")
    assert big.box[2] < 512 and big.area == max(f.area for f in faces)  # the full-size astronaut on the left
    assert pick_face(faces, "best", "two.jpg").score == max(f.score for f in faces)
    res = compare(models, photos / "two.jpg", photos / "a.jpg")
    assert res["a"]["faces"] == 2 and 0.5 < res["cosine"] < 0.9999 and "same" not in res  # no threshold, no verdict


def test_min_face_score_is_the_cut_off(engines, photos):
    det, rec = load_engine(engines[0]), load_engine(engines[1])
    loose = FaceModels(det, rec, min_score=0.0).detect([photos / "a.jpg"])[0]
    strict = FaceModels(det, rec, min_score=0.5).detect([photos / "a.jpg"])[0]
    assert len(loose) > len(strict) == 1 and min(d["score"] for d in loose) < 0.5
    with pytest.raises(DeployzooError, match="min-face-score"):
        FaceModels(det, rec, min_score=1.5)


def test_search_index_is_incremental_and_matches_the_query_path(models, photos, tmp_path):
    gal = tmp_path / "gallery"
    (gal / "sub").mkdir(parents=True)
    for n in ("a.jpg", "none.jpg"):
        shutil.copy(photos / n, gal / n)
    shutil.copy(photos / "two.jpg", gal / "sub" / "two.jpg")
    idx = build_index(models, gal, tmp_path / "idx", show_progress=False)
    assert (idx.images, len(idx.rows), idx.computed) == (3, 3, 3)
    q, n = models.face_of(photos / "a.jpg", "largest")
    top = search(idx, q, top_k=2, threshold=Threshold(0.9999, "test"))
    # the query is a gallery image: its own index row is first with cosine 1 (the same embedding, bit for bit)
    assert top[0]["image"] == "a.jpg" and top[0]["cosine"] > 0.999999 and top[0]["same"] is True
    assert top[0]["box"] == q.box and top[0]["landmarks"] == q.landmarks and top[0]["rank"] == 1
    assert len(top) == 2 and top[1]["image"] == "sub/two.jpg" and top[1]["same"] is False
    feats_before = np.load(idx.dir / "embeddings" / "features.npy").copy()

    again = build_index(models, gal, tmp_path / "idx", show_progress=False)
    assert again.computed == 0 and len(again.rows) == 3  # nothing new: all from the index
    shutil.copy(photos / "a_mirror.jpg", gal / "a_mirror.jpg")
    grown = build_index(models, gal, tmp_path / "idx", show_progress=False)
    assert grown.computed == 1 and len(grown.rows) == 4  # only the new image's face is embedded
    feats = np.load(idx.dir / "embeddings" / "features.npy")
    assert np.array_equal(feats[:3], feats_before)  # the earlier rows are kept as they were
    assert {r["image"] for r in grown.rows} == {"a.jpg", "sub/two.jpg", "a_mirror.jpg"}

    (gal / "a.jpg").unlink()  # an image gone: its faces must not be found any more
    shrunk = build_index(models, gal, tmp_path / "idx", show_progress=False)
    assert shrunk.computed == 3 and {r["image"] for r in shrunk.rows} == {"sub/two.jpg", "a_mirror.jpg"}
    assert search(shrunk, q, top_k=10)[0]["image"] != "a.jpg"


def test_search_of_a_gallery_without_faces_is_one_line(models, photos, tmp_path):
    gal = tmp_path / "g"
    gal.mkdir()
    shutil.copy(photos / "none.jpg", gal / "none.jpg")
    with pytest.raises(DeployzooError, match=r"g: no face with detector score >= 0.5 in its 1 images"):
        build_index(models, gal, tmp_path / "idx", show_progress=False)


def test_arcface_rows_keep_box_landmarks_and_score(engines, photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photos / "two.jpg", src / "two.jpg")
    predict(engines[0], src, tmp_path / "det", show_progress=False)
    det = json.loads((tmp_path / "det" / "predictions.jsonl").read_text())
    predict(engines[1], tmp_path / "det" / "predictions.jsonl", tmp_path / "emb", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "emb" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        k = int(r["image"].rpartition("#face")[2])
        assert r["box"] == det["boxes"][k] and r["landmarks"] == det["landmarks"][k]
        assert r["score"] == pytest.approx(det["scores"][k], abs=1e-6)
    # the cut-off as an option of predict: every detection of the two faces' image at 0
    run_cli(["predict", str(engines[1]), "--source", str(tmp_path / "det" / "predictions.jsonl"), "-o",
             str(tmp_path / "all"), "--min-face-score", "0"])
    assert len((tmp_path / "all" / "rows.txt").read_text().split()) == len(det["scores"]) > 2


def test_cli_compare_with_a_threshold_from_a_verification_run(engines, photos, tmp_path, capsys):
    (tmp_path / "v.json").write_text(json.dumps({"best_threshold": [1.2, 1.4], "accuracy_mean": 0.9}))
    run_cli(["faces", "compare", str(photos / "a.jpg"), str(photos / "a_mirror.jpg"), "--detector", str(engines[0]),
             "--recognizer", str(engines[1]), "--threshold-from", str(tmp_path / "v.json"),
             "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["threshold"] == pytest.approx(0.35) and res["same"] is (res["cosine"] > 0.35)
    assert "cosine similarity" in out and ("SAME person" in out) is res["same"] and "threshold 0.3500" in out


def test_cli_search_prints_the_top_k(engines, photos, tmp_path, capsys):
    gal = tmp_path / "g"
    gal.mkdir()
    for n in ("a.jpg", "two.jpg"):
        shutil.copy(photos / n, gal / n)
    run_cli(["faces", "search", "--gallery", str(gal), "--query", str(photos / "a_mirror.jpg"), "--detector",
             str(engines[0]), "--recognizer", str(engines[1]), "--index", str(tmp_path / "idx"), "--top-k", "2",
             "--threshold", "0.5", "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "s.json").read_text())
    assert [m["rank"] for m in res["matches"]] == [1, 2] and res["gallery_faces"] == 3
    assert res["matches"][0]["cosine"] >= res["matches"][1]["cosine"]
    assert "gallery: 3 faces in 2 images (3 embedded now)" in out and " 1  " in out


@need_fixture(MNET_WEIGHTS)
def test_cli_errors_are_one_line(engines, photos, tmp_path, capsys):
    from deployzoo.cli import main

    base = ["faces", "compare", str(photos / "a.jpg")]
    cases = [
        (base + [str(photos / "none.jpg"), "--detector", str(engines[0]), "--recognizer", str(engines[1])],
         "none.jpg: no face with detector score >= 0.5"),
        (base + [str(tmp_path / "missing.jpg")], "missing.jpg: image not found"),
        (base + [str(photos / "a.jpg"), "--detector", str(engines[1])], ("is an engine of arcface (task face_recognition), "
                                                                         "not a face detection engine")),
        (base + [str(photos / "a.jpg"), "--detector", "arcface"], "--detector arcface: not a face detection model"),
        (base + [str(photos / "a.jpg"), "--recognizer", "arcface", "--precision", "int8"], "needs calibration images"),
        (base + [str(photos / "a.jpg"), "--threshold", "0.3", "--threshold-from", "x.json"], "give one of them"),
        (base + [str(photos / "a.jpg"), "--far", "1e-4"], "--far: chooses the IJB-C operating point"),
        (base + [str(photos / "a.jpg"), "--threshold", "2"], "--threshold: a cosine similarity is in [-1, 1]"),
        (base + [str(photos / "a.jpg"), "--face", "first"], "--face: expected one of largest, best"),
        (["faces", "search", "--gallery", str(tmp_path), "--query", str(photos / "a.jpg"), "--top-k", "0"],
         "--top-k: expected a positive integer"),
    ]
    for args, msg in cases:
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and msg in err[-1], (args, err)
        assert not any("Traceback" in line for line in err)


def test_threshold_from_verification_and_ijbc_results(tmp_path):
    v = tmp_path / "v.json"
    v.write_text(json.dumps({"best_threshold": [1.1, 1.3, None], "accuracy_mean": 0.99}))
    t = threshold_from(v)
    assert t.cosine == pytest.approx(1 - 1.2 / 2) and "10-fold" in t.source and "2 folds" in t.source
    with pytest.raises(DeployzooError, match="--far"):
        threshold_from(v, far=1e-4)
    ij = tmp_path / "ijbc.json"
    ij.write_text(json.dumps({"tar_at_far": {"0.0001": 0.8, "0.001": 0.9}, "n_neg": 12345,
                              "threshold_at_far": {"0.0001": 0.41, "0.001": 0.33}}))
    assert threshold_from(ij).cosine == 0.41 and "FAR 0.0001" in threshold_from(ij).source
    assert threshold_from(ij, far=1e-3).cosine == 0.33
    with pytest.raises(DeployzooError, match=r"--far 0.01: .* has thresholds at FAR 0.0001, 0.001"):
        threshold_from(ij, far=1e-2)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"tar_at_far": {"0.0001": 0.8}}))
    with pytest.raises(DeployzooError, match="older deployzoo"):
        threshold_from(old)
    for text, msg in (("[1, 2]", "neither"), ("{", "JSON file")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(DeployzooError, match=msg):
            threshold_from(tmp_path / "bad.json")


def test_the_cosine_threshold_gives_the_verification_protocols_verdicts():
    """insightface's `dist < t` on L2-normalised embeddings is `cos > 1 - t / 2` (||a - b||^2 = 2 - 2 cos)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 16)) + np.repeat(rng.normal(size=(1000, 16)), 2, axis=0) * rng.uniform(0, 2, (2000, 1))
    dist = pair_distances(emb)
    cos = np.array([cosine(emb[2 * i], emb[2 * i + 1]) for i in range(1000)])
    for t in (0.6, 1.0, 1.4):
        thr = Threshold(1 - t / 2, "")
        away = np.abs(dist - t) > 1e-9  # exact ties aside
        assert np.array_equal((dist < t)[away], np.array([thr.same(c) for c in cos])[away])


def test_cli_model_names_are_built_through_the_engine_cache(engines, photos, monkeypatch, capsys):
    """--detector / --recognizer as model names: one BuildRequest each, through the cache predict uses (the builds
    themselves are tested there; here the cache hands back the test's engines)."""
    import deployzoo.cache
    from deployzoo.engine import Engine

    asked = []

    def fake_cached_engine(request, *a, **k):
        asked.append(request)
        return Engine.load(engines[0] if request.model == "retinaface" else engines[1], verify=False)

    monkeypatch.setattr(deployzoo.cache, "cached_engine", fake_cached_engine)
    run_cli(["faces", "compare", str(photos / "a.jpg"), str(photos / "a.jpg"), "--detector-weights",
             str(MNET_WEIGHTS), "--recognizer-variant", "r18", "--threshold", "0.5"])
    assert [(r.model, r.variant, r.backend, r.precision) for r in asked] == [
        ("retinaface", "mobilenet0.25", "ort", "fp32"), ("arcface", "r18", "ort", "fp32")]
    assert asked[0].weights == MNET_WEIGHTS and asked[1].weights is None
    cap = capsys.readouterr()
    assert "SAME person" in cap.out and "random weights" in cap.err  # the random recognizer is said

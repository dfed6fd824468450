"""ArcFace IResNet: official state_dict layout, export parity, alignment, and predict over every source kind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from deployzoo.build import build_engine
from deployzoo.errors import DeployzooError
from deployzoo.export import build_deploy_module, export_onnx, probe_input
from deployzoo.models.iresnet import build_model
from deployzoo.pipeline import load_engine
from deployzoo.predict import predict
from deployzoo.registry import get_model
from deployzoo.data.face_align import ARCFACE_TEMPLATE, AlignmentError, align_face, similarity_transform
from deployzoo.tasks.face_recognition import mean_cosine, normalise

from conftest import FIXTURES, MNET_WEIGHTS, astronaut_bgr, need_fixture, run_cli

LFW_BIN = FIXTURES / "lfw" / "small_lfw.bin"


# ----------------------------------------------------------------------------------------------- model


def test_state_dict_layout_matches_arcface_torch_backbones():
    """Key names and shapes of arcface_torch/backbones/iresnet.py (what backbone.pth files hold)."""
    sd = build_model("r100").state_dict()
    expect = {
        "conv1.weight": (64, 3, 3, 3), "bn1.running_var": (64,), "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.0.bn2.bias": (64,),
        "layer1.0.prelu.weight": (64,), "layer1.0.conv2.weight": (64, 64, 3, 3), "layer1.0.bn3.running_mean": (64,),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1), "layer1.0.downsample.1.running_var": (64,),
        "layer2.12.conv2.weight": (128, 128, 3, 3), "layer3.29.bn3.weight": (256,), "layer4.2.prelu.weight": (512,),
        "bn2.weight": (512,), "fc.weight": (512, 512 * 7 * 7), "fc.bias": (512,), "features.running_var": (512,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layer2.13.conv1.weight" not in sd and "layer3.30.conv1.weight" not in sd
    n_params = sum(p.numel() for p in build_model("r100").parameters())
    assert abs(n_params / 1e6 - 65.2) < 0.1  # IResNet-100: 65.2M parameters


def test_checkpoint_with_module_prefix_loads_and_wrong_variant_is_named(tmp_path):
    torch.manual_seed(1)
    net = build_model("r18")
    ckpt = tmp_path / "backbone.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, ckpt)
    again = build_model("r18", ckpt)
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    with pytest.raises(DeployzooError, match=r"backbone\.pth.*missing keys.*pass --variant r18"):
        build_model("r34", ckpt)


def test_ort_matches_eager_on_random_weights_dynamic_batch(tmp_path):
    onnx_path = tmp_path / "r18.onnx"
    res = export_onnx("arcface", onnx_path, variant="r18", batch=None)
    assert res.meta["input"]["color"] == "RGB" and res.meta["input"]["mean"] == [127.5] * 3
    eng = build_engine(onnx_path, tmp_path / "fp32", precision="fp32")
    runner = load_engine(eng).runner
    torch.manual_seed(0)
    module = build_deploy_module(get_model("arcface"), "r18", None, seed=0)
    spec = get_model("arcface").input
    for b in (1, 5):
        x = probe_input([112, 112], b, seed=b, norm=spec)
        got = runner.run(x.numpy())["embedding"]
        with torch.no_grad():
            ref = module(x)[0].numpy()
        assert got.shape == (b, 512) and got.dtype == np.float32
        # embeddings have norms ~10: 1e-4 absolute is ~1e-5 relative
        assert np.abs(got - ref).max() < 1e-4
        assert mean_cosine(got, ref) > 1 - 1e-9


def test_fixed_input_size_is_enforced(tmp_path):
    with pytest.raises(DeployzooError, match="112x112 inputs only"):
        export_onnx("arcface", tmp_path / "x.onnx", variant="r18", imgsz="224 224", check_parity=False)


# ----------------------------------------------------------------------------------------------- alignment


def _rot(theta: float) -> np.ndarray:
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def test_similarity_transform_matches_a_hand_computed_one():
    # landmarks = the template rotated by 20 degrees, scaled by 2.5 and moved by (40, -7): the transform that maps
    # them back onto the template is the inverse, x -> R(-20deg) (x - t) / 2.5.
    theta, s, t = math.radians(20.0), 2.5, np.array([40.0, -7.0])
    src = (s * (_rot(theta) @ ARCFACE_TEMPLATE.T.astype(np.float64))).T + t
    m = similarity_transform(src)
    r_inv = _rot(-theta) / s
    expect = np.hstack([r_inv, (-r_inv @ t)[:, None]])
    np.testing.assert_allclose(m, expect, atol=1e-4)
    np.testing.assert_allclose((m[:, :2] @ src.T).T + m[:, 2], ARCFACE_TEMPLATE, atol=1e-3)


def test_align_face_puts_the_landmarks_on_the_template():
    img = np.zeros((300, 260, 3), np.uint8)
    theta, s, t = math.radians(-12.0), 1.8, np.array([30.0, 45.0])
    src = (s * (_rot(theta) @ ARCFACE_TEMPLATE.T.astype(np.float64))).T + t
    for x, y in src:
        cv2.circle(img, (int(round(x)), int(round(y))), 7, (255, 255, 255), -1)
    out = align_face(img, src.astype(np.float32))
    assert out.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:  # each dot lands (within a pixel) on its template point
        patch = out[round(y) - 1: round(y) + 2, round(x) - 1: round(x) + 2]
        assert patch.min() > 200


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.full((5, 2), np.nan), np.ones((5, 2)) * 50 + 0.1 * np.eye(5, 2)])
def test_degenerate_landmarks_raise(bad):
    with pytest.raises(AlignmentError, match="landmarks are"):
        similarity_transform(bad)


def test_normalise_is_arcface_preprocessing():
    img = np.array([[[0, 127, 255]]], np.uint8)
    x = normalise(img, [127.5] * 3, [127.5] * 3)
    np.testing.assert_allclose(x[:, 0, 0], [-1.0, -0.0039216, 1.0], atol=1e-6)  # (x / 255 - 0.5) / 0.5


# ----------------------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def r18_engine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("arc")
    export_onnx("arcface", d / "r18.onnx", variant="r18", batch=None)
    return build_engine(d / "r18.onnx", d / "fp32", precision="fp32")


@pytest.fixture(scope="module")
def faces_with_landmarks(tmp_path_factory) -> Path:
    """Five loose crops: the template's landmarks moved by known similarities; one with degenerate landmarks."""
    d = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    face = cv2.resize(astronaut_bgr()[40:260, 140:340], (160, 176))
    lines = []
    for i in range(5):
        img = np.clip(face.astype(np.int16) + rng.integers(-20, 20, face.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(d / f"f{i}.jpg"), img)
        pts = ARCFACE_TEMPLATE * 1.3 + np.array([8.0 + i, 10.0])
        if i == 3:
            pts = np.full((5, 2), 60.0)  # degenerate
        lines.append(f"f{i}.jpg " + " ".join(f"{v:.2f}" for v in pts.ravel()) + f" {0.9 - 0.1 * i:.2f}")
    (d / "landmarks.txt").write_text("\n".join(lines) + "\n")
    return d


def test_predict_landmarks_file_writes_features_by_row_and_skips_degenerate(r18_engine, faces_with_landmarks, tmp_path):
    out = tmp_path / "p"
    s = predict(r18_engine, faces_with_landmarks / "landmarks.txt", out, batch=2, show_progress=False)
    assert s.written == 4 and s.skipped == 1
    feats = np.load(out / "features.npy")
    assert feats.shape == (5, 512) and feats.dtype == np.float32
    assert np.isnan(feats[3]).all() and np.isfinite(feats[[0, 1, 2, 4]]).all()
    np.testing.assert_allclose(np.load(out / "faceness.npy"), [0.9, 0.8, 0.7, 0.6, 0.5], atol=1e-6)
    assert (out / "rows.txt").read_text().split() == [f"f{i}.jpg" for i in range(5)]
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["image"] == "f3.jpg" and "landmarks.txt:4" in skipped[0]["error"]
    assert "degenerate" in skipped[0]["error"]


def test_flip_test_is_the_sum_of_image_and_mirror_embeddings(r18_engine, faces_with_landmarks, tmp_path):
    predict(r18_engine, faces_with_landmarks / "landmarks.txt", tmp_path / "flip", show_progress=False)
    predict(r18_engine, faces_with_landmarks / "landmarks.txt", tmp_path / "noflip", post={"flip": False},
            show_progress=False)
    flip, plain = np.load(tmp_path / "flip" / "features.npy"), np.load(tmp_path / "noflip" / "features.npy")
    # rebuild row 0 by hand: align, normalise, run eager on the crop and on its mirror
    torch.manual_seed(0)
    module = build_deploy_module(get_model("arcface"), "r18", None, seed=0)
    img = cv2.cvtColor(cv2.imread(str(faces_with_landmarks / "f0.jpg")), cv2.COLOR_BGR2RGB)
    lmk = np.array(Path(faces_with_landmarks / "landmarks.txt").read_text().split()[1:11], np.float32).reshape(5, 2)
    x = torch.from_numpy(normalise(align_face(img, lmk), [127.5] * 3, [127.5] * 3))[None]
    with torch.no_grad():
        a, b = module(x)[0][0].numpy(), module(torch.flip(x, dims=[3]))[0][0].numpy()
    np.testing.assert_allclose(plain[0], a, atol=2e-3)
    np.testing.assert_allclose(flip[0], a + b, atol=4e-3)


def test_predict_resumes_and_keeps_finished_rows(r18_engine, faces_with_landmarks, tmp_path):
    out = tmp_path / "p"
    predict(r18_engine, faces_with_landmarks / "landmarks.txt", out, show_progress=False)
    full = np.load(out / "features.npy")
    # simulate an interruption after two images: their lines stay, later rows were never written
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # torn third line
    (out / "skipped.jsonl").write_text("")
    arr = np.load(out / "features.npy", mmap_mode="r+")
    arr[2:] = np.nan
    arr.flush()
    del arr
    with pytest.raises(DeployzooError, match="--resume"):
        predict(r18_engine, faces_with_landmarks / "landmarks.txt", out, show_progress=False)
    s = predict(r18_engine, faces_with_landmarks / "landmarks.txt", out, resume=True, show_progress=False)
    assert s.resumed == 2 and s.written == 2 and s.skipped == 1
    again = np.load(out / "features.npy")
    np.testing.assert_allclose(again, full, atol=1e-5, equal_nan=True)


def test_fixed_batch_engine_pads_the_last_batch(r18_engine, faces_with_landmarks, tmp_path):
    export_onnx("arcface", tmp_path / "b3.onnx", variant="r18", batch=3, check_parity=False)
    fixed = build_engine(tmp_path / "b3.onnx", tmp_path / "b3", precision="fp32")
    s = predict(fixed, faces_with_landmarks / "landmarks.txt", tmp_path / "fixed", show_progress=False)
    assert s.written == 4  # 3 + 1 padded to 3
    predict(r18_engine, faces_with_landmarks / "landmarks.txt", tmp_path / "dyn", batch=4, show_progress=False)
    np.testing.assert_allclose(np.load(tmp_path / "fixed" / "features.npy"), np.load(tmp_path / "dyn" / "features.npy"),
                               atol=1e-4, equal_nan=True)


def test_unaligned_image_without_landmarks_is_skipped_with_a_reason(r18_engine, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "aligned.png"), np.full((112, 112, 3), 128, np.uint8))
    cv2.imwrite(str(d / "big.png"), np.full((200, 150, 3), 128, np.uint8))
    s = predict(r18_engine, d, tmp_path / "p", show_progress=False)
    assert s.written == 1 and s.skipped == 1
    err = json.loads((tmp_path / "p" / "skipped.jsonl").read_text())["error"]
    assert "150x200" in err and "landmarks" in err


def test_landmarks_file_errors_name_the_line(r18_engine, tmp_path):
    bad = tmp_path / "lm.txt"
    bad.write_text("a.jpg 1 2 3 4 5 6 7 8 9 10 0.9\nb.jpg 1 2 3 4 5 6 7 8 9 x 0.9\n")
    with pytest.raises(DeployzooError, match=r"lm\.txt:2: landmarks are not numbers"):
        predict(r18_engine, bad, tmp_path / "p", show_progress=False)


@need_fixture(LFW_BIN)
def test_predict_on_a_bin_set_gives_one_row_per_image(r18_engine, tmp_path):
    s = predict(r18_engine, LFW_BIN, tmp_path / "p", batch=8, show_progress=False)
    assert s.written == 20 and s.skipped == 0
    feats = np.load(tmp_path / "p" / "features.npy")
    assert feats.shape == (20, 512) and np.isfinite(feats).all()
    assert (tmp_path / "p" / "rows.txt").read_text().split()[:2] == ["small_lfw/00000", "small_lfw/00001"]


@need_fixture(MNET_WEIGHTS)
@pytest.mark.slow
def test_retinaface_predictions_feed_arcface(r18_engine, tmp_path):
    """The detection -> alignment -> embedding chain on a real photo with real RetinaFace weights."""
    src = tmp_path / "photos"
    src.mkdir()
    cv2.imwrite(str(src / "astronaut.jpg"), astronaut_bgr())
    det = predict(_mnet_engine(tmp_path), src, tmp_path / "det", show_progress=False)
    assert det.written == 1
    s = predict(r18_engine, tmp_path / "det" / "predictions.jsonl", tmp_path / "emb", show_progress=False)
    assert s.written == 1  # one confident face
    rows = (tmp_path / "emb" / "rows.txt").read_text().split()
    assert rows == ["astronaut.jpg#face0"]
    assert np.load(tmp_path / "emb" / "faceness.npy")[0] > 0.9


def _mnet_engine(tmp_path: Path) -> Path:
    export_onnx("retinaface", tmp_path / "mnet.onnx", variant="mobilenet0.25", weights=MNET_WEIGHTS, imgsz="origin",
                batch=None, check_parity=False)
    return build_engine(tmp_path / "mnet.onnx", tmp_path / "mnet", precision="fp32")


# ----------------------------------------------------------------------------------------------- run + eval CLI


@pytest.mark.slow
def test_run_arcface_demo_gives_the_seed_table_and_eval_ijbc_agrees(tmp_path):
    out = tmp_path / "run"
    run_cli(["run", "arcface", "--variant", "r18", "--data", "demo", "--demo-images", "24", "--precisions", "fp32,int8",
          "--batches", "1,2", "--predict-batch", "8", "--iters", "2", "--warmup", "1", "-o", str(out)])
    md = (out / "report.md").read_text()
    rep = json.loads((out / "report.json").read_text())
    assert "| Model | Precision | Batch | TAR@FAR=1e-5 (%) | TAR@FAR=1e-4 (%) | mean cosine vs fp32 embeddings (%) |" in md
    assert "| arcface-r18 | fp32 | 8 |" in md
    assert {(r["backend"], r["precision"], r["batch"]) for r in rep["bench"]} == {
        (b, p, n) for b, p in [("torch", "fp32"), ("ort", "fp32"), ("ort", "int8")] for n in (1, 2)}
    tar = rep["accuracy"]["fp32"]["tar_at_far"]
    assert set(map(float, tar)) == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}
    assert rep["accuracy"]["int8"]["agreement_vs_fp32"] > 0.98  # int8 embeddings follow fp32 ones
    assert (out / "roc_fp32.png").stat().st_size > 1000
    # the stand-alone evaluator on the features the run wrote gives the run's numbers
    root = next((out / "data").glob("demo-ijbc-*"))
    run_cli(["eval", "ijbc", "--features", str(out / "predictions" / "fp32" / "features.npy"), "--meta", str(root / "meta"),
          "--json", str(tmp_path / "ijbc.json"), "--plot", str(tmp_path / "roc.png")])
    got = json.loads((tmp_path / "ijbc.json").read_text())["tar_at_far"]
    assert got == pytest.approx(tar, abs=1e-12)
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_eval_ijbc_errors_are_one_line(tmp_path, capsys):
    from deployzoo.cli import main
    from deployzoo.demo.ijbc import write_demo

    layout = write_demo(tmp_path / "ijbc", n_identities=4, images_per_identity=3, seed=0)
    n = len(layout.landmarks_path.read_text().splitlines())
    np.save(tmp_path / "f.npy", np.ones((n + 1, 8), np.float32))
    with pytest.raises(SystemExit) as e:
        main(["eval", "ijbc", "--features", str(tmp_path / "f.npy"), "--meta", str(layout.meta_dir)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "f.npy" in err and str(n) in err


@need_fixture(LFW_BIN)
def test_eval_verification_on_bin_features(r18_engine, tmp_path, capsys):
    predict(r18_engine, LFW_BIN, tmp_path / "p", show_progress=False)
    run_cli(["eval", "verification", "--features", str(tmp_path / "p" / "features.npy"), "--bin", str(LFW_BIN),
          "--json", str(tmp_path / "v.json")])
    res = json.loads((tmp_path / "v.json").read_text())
    assert res["n_pairs"] == 10 and res["n_folds"] == 10 and 0.0 <= res["accuracy_mean"] <= 1.0
    assert "Accuracy-Flip" in capsys.readouterr().out


def test_save_img_writes_each_aligned_face_once(r18_engine, faces_with_landmarks, tmp_path):
    """--save-img: one file per face (two rows of one image do not overwrite each other), the aligned crop at 2x,
    in the source's colours."""
    src = tmp_path / "two.txt"
    rows = (faces_with_landmarks / "landmarks.txt").read_text().splitlines()
    (tmp_path / "f0.jpg").write_bytes((faces_with_landmarks / "f0.jpg").read_bytes())
    src.write_text(f"{rows[0]}\n{rows[0].replace('f0.jpg 5', 'f0.jpg 6')}\n")
    out = tmp_path / "p"
    s = predict(r18_engine, src, out, save_img=True, show_progress=False)
    assert s.written == 2
    files = sorted(p.name for p in (out / "vis").iterdir())
    assert files == ["f0_face0.jpg", "f0_face1.jpg"]
    vis = cv2.imread(str(out / "vis" / "f0_face0.jpg"))
    assert vis.shape == (224, 224, 3)
    # the colours are the image's (BGR on disk): the aligned crop's mean colour, away from the text, matches
    from deployzoo.data.face_align import align_face

    img = cv2.imread(str(tmp_path / "f0.jpg"))
    pts = np.array([float(v) for v in rows[0].split()[1:11]]).reshape(5, 2)
    crop = cv2.resize(align_face(img, pts, 112), (224, 224), interpolation=cv2.INTER_NEAREST)
    assert np.abs(vis[60:].astype(float).mean((0, 1)) - crop[60:].astype(float).mean((0, 1))).max() < 4.0

"""The AOTInductor backend and the options shared with eager PyTorch, on the CPU (one compile per engine, small
models), plus CUDA tests that skip without a GPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FIXTURES, MNET_WEIGHTS, need_fixture, run_cli
from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.build import build_engine
from deployzoo.engine import read_manifest
from deployzoo.errors import DeployzooError
from deployzoo.files import write_json
from deployzoo.pipeline import load_engine
from deployzoo.predict import predict
from deployzoo.records import iter_records

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
COCO_IMAGES = FIXTURES / "coco128" / "images"


@pytest.fixture(scope="module")
def mnet_aoti(mnet_random_onnx, tmp_path_factory):
    """RetinaFace-mnet, original size (dynamic H x W) and dynamic batch, compiled for the CPU (about a minute)."""
    return build_engine(mnet_random_onnx, tmp_path_factory.mktemp("aoti") / "mnet", backend="aoti", precision="fp32",
                        options={"device": "cpu", "opt_batch": 2})


@pytest.fixture(scope="module")
def mnet_torch(mnet_random_onnx, tmp_path_factory):
    return build_engine(mnet_random_onnx, tmp_path_factory.mktemp("torch") / "mnet", backend="torch", precision="fp32",
                        options={"device": "cpu"})


def test_manifest_options_and_parity(mnet_aoti):
    m = read_manifest(mnet_aoti)
    assert m["backend"] == "aoti" and m["model_file"] == "model.pt2" and (mnet_aoti / "model.pt2").is_file()
    assert m["options"] == {"device": "cpu", "tf32": False, "channels_last": False, "cuda_graphs": False,
                            "opt_batch": 2}
    assert m["compile"]["device_type"] == "cpu" and m["compile"]["torch"] == torch.__version__
    assert m["compile"]["origin_hw_range"] == [96, 4096]
    # measured at build on two probe batches (480x640 at the traced batch 2, 333x517 at batch 1)
    assert m["compile"]["probe_batches"] == [2, 1]
    assert set(m["parity_vs_eager"]) == {"boxes", "scores", "landmarks"}
    assert max(m["parity_vs_eager"].values()) < 1e-2


def test_compiled_matches_eager_at_other_shapes(mnet_aoti, mnet_torch):
    """Batch and size never seen at build, and an image under the compiled minimum (zero-padded to 96)."""
    a, t = load_engine(mnet_aoti).runner, load_engine(mnet_torch).runner
    rng = np.random.default_rng(3)
    for shape in [(3, 3, 200, 150), (1, 3, 64, 300)]:
        x = (rng.random(shape, dtype=np.float32) * 255 - 117).astype(np.float32)
        got, ref = a.run(x), t.run(x)
        if shape[2] >= 96:
            assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
            for k in got:
                np.testing.assert_allclose(got[k], ref[k], atol=2e-3, rtol=1e-3)
        else:  # padded bottom / right: more anchors, but the scores of the real rows' detections are there
            assert got["scores"].shape[1] > ref["scores"].shape[1]
            assert np.isfinite(got["boxes"]).all()
    tensors = a.run_tensors({"images": torch.zeros(2, 3, 128, 128)})
    assert tensors["boxes"].device.type == "cpu" and tensors["boxes"].dtype == torch.float32


def test_predict_and_bench_through_the_common_stages(mnet_aoti, mnet_torch, image_dir, tmp_path):
    predict(mnet_aoti, image_dir, tmp_path / "a", batch=2)
    predict(mnet_torch, image_dir, tmp_path / "t", batch=2)
    got = {r["image"]: r for r in iter_records(tmp_path / "a")}
    ref = {r["image"]: r for r in iter_records(tmp_path / "t")}
    assert got.keys() == ref.keys() and len(got) == 4
    for name, r in ref.items():  # random weights: near-tied scores may swap at NMS, so compare the top of the list
        g = got[name]
        assert abs(len(g["boxes"]) - len(r["boxes"])) <= 0.1 * len(r["boxes"])
        np.testing.assert_allclose(np.array(g["scores"][:10]), np.array(r["scores"][:10]), atol=2e-3)
    rows = bench_engine(mnet_aoti, BenchConfig(batches=(1, 2), iters=2, warmup=1, imgsz=(160, 160)))
    eng = [r for r in rows if r["mode"] == "engine"]
    assert [r["batch"] for r in eng] == [1, 2] and all(r["throughput_ips"] > 0 and r["backend"] == "aoti" for r in eng)


def test_refusals(mnet_random_onnx, mnet_aoti, tmp_path):
    with pytest.raises(DeployzooError, match="int8 on this backend needs a quantization path we do not ship"):
        build_engine(mnet_random_onnx, tmp_path / "i8", backend="aoti", precision="int8", calib=tmp_path)
    with pytest.raises(DeployzooError, match="--cuda-graphs needs a CUDA device"):
        build_engine(mnet_random_onnx, tmp_path / "g", backend="torch", options={"device": "cpu", "cuda_graphs": True})
    for dev in ("cpu", "cuda"):  # refused before the device is looked at (capture failed on an H200)
        with pytest.raises(DeployzooError, match="--cuda-graphs is not available on aoti"):
            build_engine(mnet_random_onnx, tmp_path / "g", backend="aoti", options={"device": dev, "cuda_graphs": True})
    with pytest.raises(DeployzooError, match="channels_last applies only to the backends that take it \\(torch, aoti\\)"):
        build_engine(mnet_random_onnx, tmp_path / "o", backend="ort", options={"channels_last": True})
    with pytest.raises(DeployzooError, match="--opt-batch 99 outside the engine's batch range 1..64"):
        build_engine(mnet_random_onnx, tmp_path / "b", backend="aoti", options={"device": "cpu", "opt_batch": 99})
    with pytest.raises(DeployzooError, match="unknown device"):
        build_engine(mnet_random_onnx, tmp_path / "d", backend="torch", options={"device": "tpu:0"})
    if not torch.cuda.is_available():
        with pytest.raises(DeployzooError, match="no CUDA device is available"):
            load_engine(mnet_aoti, device="cuda:0")
    # a package from another torch version is refused, not run (AOTInductor's ABI)
    m = read_manifest(mnet_aoti)
    m["compile"]["torch"] = "0.0.1"
    fake = tmp_path / "other"
    fake.mkdir()
    shutil.copyfile(mnet_aoti / "model.pt2", fake / "model.pt2")  # the real package: only its torch differs
    write_json(fake / "manifest.json", m)
    with pytest.raises(DeployzooError, match="compiled with torch 0.0.1"):
        load_engine(fake)


def test_torch_backend_options_on_cpu(mnet_random_onnx, mnet_torch, tmp_path):
    """channels-last eager gives the same outputs as the default layout; bf16 autocast runs on the CPU too."""
    cl = build_engine(mnet_random_onnx, tmp_path / "cl", backend="torch", options={"device": "cpu",
                                                                                   "channels_last": True})
    bf = build_engine(mnet_random_onnx, tmp_path / "bf", backend="torch", precision="bf16", options={"device": "cpu"})
    x = (np.random.default_rng(0).random((2, 3, 128, 160), dtype=np.float32) * 255 - 117).astype(np.float32)
    ref = load_engine(mnet_torch).runner.run(x)
    got = load_engine(cl).runner.run(x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-3, rtol=1e-4)
    low = load_engine(bf).runner.run(x)
    assert low["scores"].dtype == np.float32
    assert np.abs(low["scores"] - ref["scores"]).max() < 0.05  # bf16 has 8 bits of mantissa
    assert json.loads((bf / "manifest.json").read_text())["precision"] == "bf16"


@pytest.mark.slow
def test_classifier_bf16_and_fixed_batch_through_the_cli(tmp_path, image_dir):
    """A second architecture, the CLI, a fixed batch and bf16 autocast captured in the compiled graph."""
    onnx = tmp_path / "mnv1.onnx"
    run_cli(["export", "mobilenetv1", "--batch", "2", "-o", str(onnx)])
    run_cli(["build", str(onnx), "--backend", "aoti", "--precision", "bf16", "--device", "cpu", "-o", str(tmp_path / "e")])
    m = read_manifest(tmp_path / "e")
    assert m["precision"] == "bf16" and m["batch"] == {"dynamic": False, "size": 2}
    assert m["parity_vs_eager"]["logits"] < 1e-2
    r = load_engine(tmp_path / "e").runner
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    assert r.run(x)["logits"].shape == (2, 1000)
    with pytest.raises(DeployzooError, match="batch 3 not supported"):
        predict(tmp_path / "e", image_dir, tmp_path / "p", batch=3)
    predict(tmp_path / "e", image_dir, tmp_path / "p", batch=2)  # 4 images: two full batches
    assert [len(r["topk"]) for r in iter_records(tmp_path / "p")] == [5] * 4


@pytest.mark.cuda
@cuda
def test_cuda_fp16_channels_last(mnet_random_onnx, tmp_path):
    """On a GPU: fp16 + channels-last, compiled, against eager fp32 on the same inputs."""
    eng = build_engine(mnet_random_onnx, tmp_path / "g", backend="aoti", precision="fp16",
                       options={"device": "cuda", "channels_last": True, "opt_batch": 4})
    ref = build_engine(mnet_random_onnx, tmp_path / "r", backend="torch", precision="fp32",
                       options={"device": "cuda", "tf32": False})
    a, t = load_engine(eng).runner, load_engine(ref).runner
    x = torch.randn(4, 3, 480, 640, device="cuda") * 50
    for _ in range(3):
        got = {k: v.clone() for k, v in a.run_tensors(x).items()}
    want = t.run_tensors(x)
    assert got["boxes"].device.type == "cuda" and got["scores"].dtype == torch.float32
    assert (got["scores"] - want["scores"]).abs().max().item() < 2e-2
    assert a.peak_memory_bytes() > 0


@pytest.mark.slow
def test_run_with_the_aoti_backend(tmp_path):
    """`run` goes through the same stages for aoti: build, predict + eval, bench beside the eager peer."""
    out = tmp_path / "run"
    run_cli(["run", "mobilenetv1", "--backend", "aoti", "--device", "cpu", "--data", "demo", "--demo-images", "6",
             "--precisions", "fp32", "--batches", "1", "--iters", "2", "--warmup", "1", "-o", str(out)])
    rep = json.loads((out / "report.json").read_text())
    assert {(r["backend"], r["precision"], r["batch"], r["timing"]) for r in rep["bench"]} == {
        ("torch", "fp32", 1, "device"), ("aoti", "fp32", 1, "device")}
    assert read_manifest(rep["engines"]["fp32"])["backend"] == "aoti"
    assert 0.0 <= rep["accuracy"]["fp32"]["top1"] <= 1.0
    assert "| aoti fp32 | 1 |" in (out / "report.md").read_text()


@need_fixture(MNET_WEIGHTS)
@need_fixture(COCO_IMAGES)
@pytest.mark.slow
def test_released_mnet_weights_same_faces_as_onnx_runtime(tmp_path):
    """With trained weights scores are not near-tied: the compiled engine finds the same confident faces as ORT
    on real photos (COCO128), a fixed 320 x 320 letterboxed engine."""
    from deployzoo.export import export_onnx

    onnx = export_onnx("retinaface", tmp_path / "m.onnx", variant="mobilenet0.25", weights=MNET_WEIGHTS,
                       imgsz=[320, 320], batch=None).path
    a = build_engine(onnx, tmp_path / "a", backend="aoti", options={"device": "cpu", "opt_batch": 4})
    o = build_engine(onnx, tmp_path / "o", backend="ort")
    src = tmp_path / "imgs"
    src.mkdir()
    for p in sorted(COCO_IMAGES.glob("*.jpg"))[:24]:
        (src / p.name).symlink_to(p)
    predict(a, src, tmp_path / "pa", batch=4)
    predict(o, src, tmp_path / "po", batch=4)
    ref = {r["image"]: r for r in iter_records(tmp_path / "po")}
    faces = 0
    for r in iter_records(tmp_path / "pa"):
        want = [b for b, s in zip(ref[r["image"]]["boxes"], ref[r["image"]]["scores"]) if s >= 0.5]
        got = [b for b, s in zip(r["boxes"], r["scores"]) if s >= 0.5]
        assert len(got) == len(want), r["image"]
        if want:
            np.testing.assert_allclose(np.array(got), np.array(want), atol=0.5)
        faces += len(want)
    assert faces >= 5  # COCO128's people: the comparison is not vacuous

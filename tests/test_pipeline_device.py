"""The device pipeline (pipeline_device.py) and the tasks' tensor hooks, on the CPU here (the same code runs on
CUDA; the `cuda`-marked tests at the end repeat the comparisons on a GPU when there is one).

On the CPU both decoders are libjpeg-turbo with the same defaults (checked below), face pre-processing at the
original size is exact, and the batched selection is the same computation as the host's, so the device pipeline's
detections equal the host pipeline's exactly, even with random weights (whose near-constant scores make every
tie-break visible)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.build import build_engine
from deployzoo.data.images import list_source, read_image
from deployzoo.errors import DeployzooError
from deployzoo.export import export_onnx
from deployzoo.pipeline import STAGES, Loaded, StageTimes, load_engine, run_batches
from deployzoo.pipeline_device import choose_pipeline, device_pipeline_ok, device_pipeline_reason, run_batches_device
from deployzoo.predict import predict
from deployzoo.registry import get_task
from deployzoo.specs import InputSpec
from deployzoo.tasks.classification import ClassificationTask
from deployzoo.tasks.face_detection import FaceDetectionTask, preprocess, select, select_tensors

from conftest import FIXTURES, MNET_WEIGHTS, engine_stub, need_fixture

COCO = FIXTURES / "coco128" / "images"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def torch_engine(mnet_random_onnx, tmp_path_factory) -> Path:
    """The random-weight RetinaFace-mnet (origin size, dynamic batch) on the eager torch backend, CPU."""
    return build_engine(mnet_random_onnx, tmp_path_factory.mktemp("teng") / "torch", backend="torch",
                        precision="fp32", options={"device": "cpu"})


def _collect(fn, loaded, items, batch, **kw):
    res, skipped, times = {}, {}, StageTimes()
    fn(loaded, items, batch=batch, on_result=lambda it, img, r: res.__setitem__(it.name, (img, r)),
       on_skip=lambda it, e: skipped.__setitem__(it.name, e), times=times, **kw)
    return res, skipped, times


def _strip(rec):
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def _assert_same_records(host, dev):
    assert host.keys() == dev.keys() and host
    for name in host:
        assert _strip(host[name][1]) == _strip(dev[name][1]), name


# ------------------------------------------------------------------------------------------- selection


@pytest.mark.parametrize("seed,post", [
    (0, {"conf": 0.3, "iou": 0.4, "top_k": 5000, "max_det": 750}),
    (1, {"conf": 0.3, "iou": 0.5, "top_k": 40, "max_det": 7}),
    (2, {"conf": 0.0, "iou": 0.3, "top_k": 0, "max_det": 0}),
    (3, {"conf": 0.9, "iou": 0.4, "top_k": 5000, "max_det": 750}),  # image 2 has nothing above conf
])
def test_batched_torch_selection_equals_numpy_select(seed, post):
    rng = np.random.default_rng(seed)
    n, a = 3, 400
    xy = rng.uniform(0, 200, (n, a, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 60, (n, a, 2))], -1).astype(np.float32)
    scores = (rng.integers(0, 20, (n, a)) / 20).astype(np.float32)  # many ties: stable order matters
    scores[2] = np.minimum(scores[2], 0.85)
    lms = np.repeat(np.arange(a, dtype=np.float32)[None, :, None], n, 0).repeat(10, 2)  # landmark = anchor index
    ref = select(boxes, scores, lms, post)
    b, s, lm, img = (t.numpy() for t in select_tensors(*map(torch.from_numpy, (boxes, scores, lms)), post))
    assert np.all(np.diff(img) >= 0)
    for i, (rb, rs, rl) in enumerate(ref):
        k = img == i
        np.testing.assert_array_equal(lm[k][:, 0].astype(int), rl[:, 0].astype(int))  # the same anchors, in order
        np.testing.assert_array_equal(b[k], rb)
        np.testing.assert_array_equal(s[k], rs)
    assert sum(len(r[1]) for r in ref) == len(s)


def test_postprocess_tensors_equals_host_postprocess():
    rng = np.random.default_rng(5)
    boxes = rng.uniform(0, 300, (2, 200, 4)).astype(np.float32)
    boxes[..., 2:] = boxes[..., :2] + rng.uniform(5, 50, (2, 200, 2)).astype(np.float32)
    outs = {"boxes": boxes, "scores": rng.random((2, 200), dtype=np.float32),
            "landmarks": rng.uniform(0, 300, (2, 200, 10)).astype(np.float32)}
    metas = [{"scale": 0.5, "orig_hw": (10, 10)}, {"scale": 1.0, "orig_hw": (10, 10)}]
    task, post = FaceDetectionTask(), {"conf": 0.1, "iou": 0.4, "top_k": 100, "max_det": 30}
    host = task.postprocess(outs, metas, post)
    dev = task.postprocess_tensors({k: torch.from_numpy(v) for k, v in outs.items()}, metas, post)
    assert [_strip(r) for r in host] == [_strip(r) for r in dev] and len(host[0]["boxes"]) == 30


# ------------------------------------------------------------------------------------------ pre-processing


def _rgb_tensor(img_bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img_bgr[..., ::-1])).permute(2, 0, 1).contiguous()


def test_face_prepare_tensors_origin_exact_and_letterbox_close(image_dir):
    imgs = [read_image(p) for p in sorted(image_dir.glob("*.jpg"))]
    task = FaceDetectionTask()
    spec = InputSpec(mean=(104.0, 117.0, 123.0), color="BGR")
    x, metas = task.prepare_tensors([_rgb_tensor(i) for i in imgs], spec)
    ref = task.collate([preprocess(i, spec) for i in imgs], spec)
    np.testing.assert_array_equal(x.numpy(), ref)
    assert [m["orig_hw"] for m in metas] == [i.shape[:2] for i in imgs]
    spec = dataclasses.replace(spec, imgsz=(160, 192))
    x, metas = task.prepare_tensors([_rgb_tensor(i) for i in imgs], spec)
    preps = [preprocess(i, spec) for i in imgs]
    d = np.abs(x.numpy() - task.collate(preps, spec))
    # torch bilinear (float, rounded to integer levels) vs cv2.INTER_LINEAR's fixed-point uint8 arithmetic
    assert d.max() <= 1.0 and d.mean() < 0.1, (d.max(), d.mean())
    assert [m["scale"] for m in metas] == [p.meta["scale"] for p in preps]


@pytest.mark.parametrize("interp,resize", [("bilinear", 256), ("bicubic", 233)])
def test_classification_prepare_tensors_close_to_pil(interp, resize):
    from skimage.data import astronaut, coffee

    spec = InputSpec.from_dict({"color": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                                "resize": resize, "crop": 224, "interpolation": interp})
    task = ClassificationTask()
    imgs = [astronaut(), coffee(), np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)]
    x, _ = task.prepare_tensors([torch.from_numpy(i).permute(2, 0, 1).contiguous() for i in imgs], spec)
    ref = task.collate([task.prepare(i, spec) for i in imgs], spec)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    d = np.abs(x.numpy() - ref) * std  # in grey levels
    # torchvision's antialiased tensor resize vs PIL's: within one level, and equal almost everywhere (measured
    # mean 0.007 on real photos and 0.03 on noise); stated tolerance: mean < 0.1 level, max <= 1 level
    assert x.shape == (3, 3, 224, 224) and d.max() <= 1.0 + 1e-3 and d.mean() < 0.1, (d.max(), d.mean())


def test_classification_postprocess_tensors_equals_host():
    logits = np.random.default_rng(0).normal(size=(4, 1000)).astype(np.float32) * 3
    logits[1, 10:15] = logits[1].max() + 1  # ties: stable order
    task = ClassificationTask()
    assert task.postprocess_tensors({"logits": torch.from_numpy(logits)}, [{}] * 4, {"topk": 5}) == \
        task.postprocess({"logits": logits}, [{}] * 4, {"topk": 5})


# ------------------------------------------------------------------------------------------ pipelines


def test_torchvision_cpu_decode_equals_host_decode(image_dir):
    files = sorted(image_dir.glob("*.jpg")) + (sorted(COCO.glob("*.jpg"))[:4] if COCO.is_dir() else [])
    for f in files:
        t = decode_jpeg(torch.from_numpy(np.fromfile(f, np.uint8)), mode=ImageReadMode.RGB)
        np.testing.assert_array_equal(t.permute(1, 2, 0).numpy(), read_image(f, "RGB"))


@pytest.mark.parametrize("source", ["synthetic", pytest.param("coco128", marks=need_fixture(COCO))])
def test_device_pipeline_equals_host_pipeline(torch_engine, image_dir, source):
    loaded = load_engine(torch_engine)
    assert device_pipeline_ok(loaded) and choose_pipeline(loaded, "auto") == "host"  # CPU runner: auto is host
    items = list_source(image_dir if source == "synthetic" else COCO)[1][:4]
    host, hs, ht = _collect(run_batches, loaded, items, 2, keep_image=True)
    dev, ds, dt = _collect(run_batches_device, loaded, items, 2, keep_image=True)
    _assert_same_records(host, dev)
    assert not hs and not ds
    for name in host:  # the image handed to on_result: the engine's colour order, as the host pipeline's
        np.testing.assert_array_equal(host[name][0], dev[name][0])
    assert set(dt.seconds) == set(STAGES) and all(dt.seconds[s] > 0 for s in STAGES)


@pytest.fixture(scope="module")
def fixed_letterbox_engine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fixed")
    onnx = export_onnx("retinaface", d / "fixed.onnx", imgsz=[128, 128], batch=2).path
    return build_engine(onnx, d / "eng", backend="torch", precision="fp32", options={"device": "cpu"})


def test_fixed_batch_letterbox_engine_pads_last_batch(fixed_letterbox_engine, tmp_path):
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(128, 128), (100, 128), (128, 90), (128, 60), (77, 128)]):  # no resize needed
        cv2.imwrite(str(tmp_path / f"im{i}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    loaded = load_engine(fixed_letterbox_engine)
    items = list_source(tmp_path)[1]
    host, _, _ = _collect(run_batches, loaded, items, 2)
    dev, _, _ = _collect(run_batches_device, loaded, items, 2)
    assert len(dev) == 5  # 2 + 2 + a last batch of 1 padded to 2
    _assert_same_records(host, dev)


def test_png_bmp_gray_fallback_and_unreadable_skips(torch_engine, image_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sorted(image_dir.glob("*.jpg"))[0], src / "a_good.jpg")
    rng = np.random.default_rng(2)
    pic = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "b_pic.png"), pic)  # torchvision CPU decode_image
    cv2.imwrite(str(src / "c_pic.bmp"), pic)  # not torchvision's: the host decoder
    cv2.imwrite(str(src / "d_gray.jpg"), pic[..., 0])  # grayscale JPEG -> 3 channels
    cv2.imwrite(str(src / "e_deep.png"), (pic.astype(np.uint16) * 257))  # 16-bit
    (src / "f_corrupt.jpg").write_bytes(bytes([0xFF, 0xD8]) + rng.bytes(400) + bytes([0xFF, 0xD9]))
    (src / "g_trunc.jpg").write_bytes((src / "a_good.jpg").read_bytes()[:600])
    (src / "h_empty.jpg").write_bytes(b"")
    (src / "i_text.png").write_text("not an image")
    loaded = load_engine(torch_engine)
    items = list_source(src)[1]
    host, hs, _ = _collect(run_batches, loaded, items, 2)
    dev, ds, _ = _collect(run_batches_device, loaded, items, 2)
    assert sorted(dev) == ["a_good.jpg", "b_pic.png", "c_pic.bmp", "d_gray.jpg", "e_deep.png"]
    _assert_same_records(host, dev)
    assert ds == hs and sorted(ds) == ["f_corrupt.jpg", "g_trunc.jpg", "h_empty.jpg", "i_text.png"]
    assert "empty file" in ds["h_empty.jpg"] and "truncated JPEG" in ds["g_trunc.jpg"]


def test_predict_device_pipeline_summary_and_stages(torch_engine, image_dir, tmp_path):
    s = predict(torch_engine, image_dir, tmp_path / "dev", batch=2, pipeline="device", show_progress=False)
    h = predict(torch_engine, image_dir, tmp_path / "host", batch=2, pipeline="host", show_progress=False)
    assert s.written == h.written == 4
    for summ, which in ((s, "device"), (h, "host")):
        assert list(summ.stage_seconds) == list(STAGES) and summ.stage_seconds["decode"] > 0
        assert json.loads((summ.out_dir / "summary.json").read_text())["pipeline"] == which
    assert (tmp_path / "dev" / "predictions.jsonl").read_text() == (tmp_path / "host" / "predictions.jsonl").read_text()
    with pytest.raises(DeployzooError, match="--pipeline 'gpu': expected one of auto, host, device"):
        predict(torch_engine, image_dir, tmp_path / "x", pipeline="gpu")


def test_forcing_device_pipeline_on_ort_engine_is_one_line_error(mnet_random_fp32, image_dir, tmp_path, capsys):
    from deployzoo.cli import main

    loaded = load_engine(mnet_random_fp32)
    assert not device_pipeline_ok(loaded) and choose_pipeline(loaded, "auto") == "host"
    with pytest.raises(SystemExit) as e:
        main(["predict", str(mnet_random_fp32), "--source", str(image_dir), "-o", str(tmp_path / "o"),
              "--pipeline", "device"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert "--pipeline device not possible" in err and "run_tensors" in err
    assert not (tmp_path / "o" / "predictions.jsonl").exists()


def test_host_only_tasks_are_refused_with_the_reason():
    runner = SimpleNamespace(run_tensors=lambda x: x, torch_device=torch.device("cpu"), device="cpu", takes_tensors=True)
    for task, why in (("face_recognition", "tensor"), ("instance_segmentation", "tensor")):
        loaded = Loaded(engine_stub(backend="torch"), runner, get_task(task))
        assert why in device_pipeline_reason(loaded)
        with pytest.raises(DeployzooError, match="--pipeline device not possible"):
            choose_pipeline(loaded, "device")


def test_bench_e2e_device_pipeline_reports_five_stages(torch_engine, image_dir):
    rows = bench_engine(torch_engine, BenchConfig(batches=(2,), iters=1, warmup=0, imgsz=(64, 64),
                                                  e2e_source=image_dir, pipeline="device"))
    e2e = [r for r in rows if r["mode"] == "e2e"]
    assert len(e2e) == 1 and e2e[0]["pipeline"] == "device" and e2e[0]["images"] == 4
    assert all(e2e[0][f"{s}_ms_per_img"] > 0 for s in STAGES)


# ------------------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("seed", range(3))
def test_cuda_batched_selection_equals_numpy_select(seed):
    rng = np.random.default_rng(seed)
    n, a = 4, 3000
    xy = rng.uniform(0, 400, (n, a, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 60, (n, a, 2))], -1).astype(np.float32)
    scores = rng.permutation(n * a).reshape(n, a).astype(np.float32) / (n * a)  # distinct
    lms = np.repeat(np.arange(a, dtype=np.float32)[None, :, None], n, 0).repeat(10, 2)
    post = {"conf": 0.2, "iou": 0.4, "top_k": 1000, "max_det": 100}
    ref = select(boxes, scores, lms, post)
    got = [t.cpu().numpy() for t in select_tensors(*(torch.from_numpy(v).cuda() for v in (boxes, scores, lms)), post)]
    for i, (_, rs, rl) in enumerate(ref):
        k = got[3] == i
        np.testing.assert_array_equal(got[2][k][:, 0], rl[:, 0])
        np.testing.assert_array_equal(got[1][k], rs)


@pytest.mark.cuda
@cuda
def test_cuda_pre_processing_close_to_host(image_dir):
    imgs = [read_image(p) for p in sorted(image_dir.glob("*.jpg"))]
    task = FaceDetectionTask()
    for imgsz in ("origin", [160, 192]):
        spec = InputSpec.from_dict({"imgsz": imgsz, "mean": [104.0, 117.0, 123.0], "color": "BGR"})
        x, _ = task.prepare_tensors([_rgb_tensor(i).cuda() for i in imgs], spec)
        d = np.abs(x.cpu().numpy() - task.collate([preprocess(i, spec) for i in imgs], spec))
        assert d.max() <= 1.0 and d.mean() < 0.1, (imgsz, d.max(), d.mean())
    from skimage.data import astronaut

    spec = InputSpec.from_dict({"color": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                                "resize": 233, "crop": 224, "interpolation": "bicubic"})
    ctask = ClassificationTask()
    x, _ = ctask.prepare_tensors([torch.from_numpy(astronaut()).permute(2, 0, 1).contiguous().cuda()], spec)
    d = np.abs(x.cpu().numpy() - ctask.collate([ctask.prepare(astronaut(), spec)], spec))
    d *= np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    # float (not uint8) antialiased resize on CUDA: measured on CPU as mean ~0.15, max 5 levels vs PIL
    assert d.mean() < 0.5 and d.max() <= 8, (d.mean(), d.max())


@pytest.mark.cuda
@cuda
def test_cuda_nvjpeg_decode_close_to_host(tmp_path):
    """nvJPEG against OpenCV's libjpeg-turbo on photos. On an H200 (torch 2.11) 16 COCO photos decoded identically
    (mean 0); JPEGs of uniform noise (the `image_dir` canvases) differ by a mean of 4-10 levels, from chroma
    upsampling, so they are not photos this bound is meant for."""
    from skimage.data import astronaut, coffee

    files = []
    for name, im in (("astronaut", astronaut()), ("coffee", coffee())):
        files.append(tmp_path / f"{name}.jpg")
        cv2.imwrite(str(files[-1]), im[:, :, ::-1])
    files += sorted(COCO.glob("*.jpg"))[:8] if COCO.is_dir() else []
    datas = [torch.from_numpy(np.fromfile(f, np.uint8)) for f in files]
    for f, t in zip(files, decode_jpeg(datas, mode=ImageReadMode.RGB, device="cuda")):
        d = np.abs(t.permute(1, 2, 0).cpu().numpy().astype(np.int16) - read_image(f, "RGB").astype(np.int16))
        assert d.mean() < 1.0, (f, d.mean(), d.max())


@pytest.mark.cuda
@cuda
@need_fixture(MNET_WEIGHTS)
@need_fixture(COCO)
def test_cuda_device_pipeline_matches_host_pipeline_real_weights(tmp_path):
    """The released RetinaFace-mnet on COCO images: the device pipeline on CUDA (nvJPEG, torch pre / post on the
    GPU) against the host pipeline on the CPU; confident detections must agree (decoders differ slightly)."""
    from deployzoo.metrics.agreement import agreement_ap

    onnx = export_onnx("retinaface", tmp_path / "m.onnx", variant="mobilenet0.25", weights=MNET_WEIGHTS,
                       imgsz="origin", batch=None).path
    eng = build_engine(onnx, tmp_path / "eng", backend="torch", precision="fp32", options={"device": "cuda"})
    gpu = load_engine(eng)
    assert choose_pipeline(gpu, "auto") == "device"
    items = list_source(COCO)[1][:16]
    dev, ds, dt = _collect(run_batches_device, gpu, items, 4)
    host, hs, _ = _collect(run_batches, load_engine(eng, device="cpu"), items, 4)
    assert dev.keys() == host.keys() and ds == hs
    names = sorted(host)
    ap = agreement_ap([_strip(host[n][1]) for n in names], [_strip(dev[n][1]) for n in names])
    assert ap > 0.95, ap
    assert all(dt.seconds[s] > 0 for s in STAGES)

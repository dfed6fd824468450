from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.build import build_engine
from deployzoo.engine import RANDOM_WEIGHTS_WARNING, read_manifest
from deployzoo.errors import DeployzooError
from deployzoo.export import build_deploy_module, export_onnx, probe_input, read_onnx_meta
from deployzoo.metrics.agreement import agreement_ap
from deployzoo.pipeline import load_engine
from deployzoo.predict import predict
from deployzoo.registry import get_model

# ORT fp32 vs eager PyTorch on random weights and random inputs scaled like mean-subtracted pixels:
# boxes/landmarks are in pixels (hundreds), scores are probabilities.
PARITY_ATOL = {"boxes": 5e-3, "landmarks": 5e-3, "scores": 1e-5}


def test_export_metadata_checker_and_parity(mnet_random_onnx):
    m = onnx.load(str(mnet_random_onnx))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    meta = read_onnx_meta(mnet_random_onnx)
    assert meta["input"]["imgsz"] == "origin" and meta["batch"]["dynamic"]
    assert meta["weights"]["random"] is True
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]


def test_ort_matches_eager_pytorch(mnet_random_fp32):
    loaded = load_engine(mnet_random_fp32)
    torch.manual_seed(0)
    module = build_deploy_module(get_model("retinaface"), "mobilenet0.25", None, seed=0)
    for shape in [(1, 120, 160), (3, 97, 131)]:
        x = probe_input([shape[1], shape[2]], shape[0], seed=5)
        got = loaded.runner.run(x.numpy())
        with torch.no_grad():
            ref = dict(zip(module.output_names, module(x)))
        for k, tol in PARITY_ATOL.items():
            assert np.abs(got[k] - ref[k].numpy()).max() < tol, k


def test_manifest_contents(mnet_random_fp32):
    m = read_manifest(mnet_random_fp32)
    assert m["precision"] == "fp32" and m["backend"] == "ort" and m["task"] == "face_detection"
    assert m["postprocess"] == {"conf": 0.02, "iou": 0.4, "top_k": 5000, "max_det": 750}
    assert m["input"]["mean"] == [104.0, 117.0, 123.0] and m["input"]["color"] == "BGR"
    assert RANDOM_WEIGHTS_WARNING in m["warnings"]
    assert len(m["source_graph"]["sha256"]) == 64 and "onnxruntime" in m["versions"]
    assert not any(p.name.startswith(".") for p in Path(mnet_random_fp32).parent.iterdir())  # no temp dirs left


def test_seed_precision_aliases_and_post_override(mnet_random_onnx, tmp_path):
    eng = build_engine(mnet_random_onnx, tmp_path / "e", precision="force_float32", post={"conf": 0.3, "max_det": 10})
    m = read_manifest(eng)
    assert m["precision"] == "fp32" and m["postprocess"]["conf"] == 0.3 and m["postprocess"]["max_det"] == 10
    with pytest.raises(DeployzooError, match="unknown precision"):
        build_engine(mnet_random_onnx, tmp_path / "x", precision="int4")
    with pytest.raises(DeployzooError, match="--calib"):
        build_engine(mnet_random_onnx, tmp_path / "y", precision="qint8_mixed_float16")


def test_fixed_batch_engine_rejects_other_batch_and_pads_last(tmp_path, image_dir):
    onnx_path = export_onnx("retinaface", tmp_path / "fixed.onnx", imgsz=[128, 128], batch=2).path
    eng = build_engine(onnx_path, tmp_path / "eng", precision="fp32")
    with pytest.raises(DeployzooError, match="batch 4 not supported.*exactly 2"):
        predict(eng, image_dir, tmp_path / "out", batch=4)
    # 4 images + 1 -> last batch of 1 padded to 2
    s = predict(eng, image_dir, tmp_path / "out2")
    assert s.written == 4
    with pytest.raises(DeployzooError, match="already exist"):
        predict(eng, image_dir, tmp_path / "out2")


def test_int8_agrees_with_fp32_and_records_calibration(mnet_random_onnx, mnet_random_fp32, image_dir, tmp_path):
    eng8 = build_engine(mnet_random_onnx, tmp_path / "int8", precision="int8", calib=image_dir, calib_size=3)
    m = read_manifest(eng8)
    cal = m["calibration"]
    assert cal["size"] == 3 and cal["method"] == "minmax" and len(cal["file_list_sha256"]) == 64
    q = m["quantization"]
    assert q["int8_convs"] > 0 and q["float_convs"]["heads"] == 9 and q["calibration_images_used"] == 3
    model = onnx.load(str(eng8 / m["model_file"]))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    x = probe_input([96, 128], 1, seed=3).numpy()
    a = load_engine(mnet_random_fp32).runner.run(x)
    b = load_engine(eng8).runner.run(x)
    # random weights give no detections to compare; the raw outputs must still track fp32 closely
    assert np.corrcoef(a["boxes"].ravel(), b["boxes"].ravel())[0, 1] > 0.99
    assert np.abs(a["scores"] - b["scores"]).mean() < 0.05


def test_fp16_build_keeps_fp32_io_and_decode(mnet_random_onnx, mnet_random_fp32, tmp_path):
    eng16 = build_engine(mnet_random_onnx, tmp_path / "fp16", precision="fp16")
    m = read_manifest(eng16)
    model = onnx.load(str(eng16 / m["model_file"]))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    x = probe_input([96, 128], 2, seed=4).numpy()
    a = load_engine(mnet_random_fp32).runner.run(x)
    b = load_engine(eng16).runner.run(x)
    assert b["boxes"].dtype == np.float32
    assert np.abs(a["boxes"] - b["boxes"]).max() < 2.0  # pixels
    assert np.abs(a["scores"] - b["scores"]).max() < 0.02


def test_torch_backend_reference_peer(mnet_random_onnx, mnet_random_fp32, tmp_path):
    eng = build_engine(mnet_random_onnx, tmp_path / "torch", backend="torch", precision="fp32")
    x = probe_input([64, 96], 1, seed=2).numpy()
    a = load_engine(mnet_random_fp32).runner.run(x)
    b = load_engine(eng).runner.run(x)
    for k, tol in PARITY_ATOL.items():
        assert np.abs(a[k] - b[k]).max() < tol


def test_predict_skips_bad_files_and_resumes(mnet_random_fp32, image_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(image_dir.iterdir()):
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    (src / "zero.png").write_bytes(b"")
    out = tmp_path / "out"
    s = predict(mnet_random_fp32, src, out, batch=2, formats=("jsonl", "widerface"), post={"conf": 0.5})
    assert (s.written, s.skipped) == (4, 2)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert set(rec) == {"image", "boxes", "scores", "landmarks"} and rec["image"] == "img_0.jpg"
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert {x["image"] for x in skipped} == {"broken.jpg", "zero.png"}
    assert (out / "images" / "img_0.txt").is_file()
    # simulate a crash: drop the last two lines and tear the one before
    kept = lines[:2]
    (out / "predictions.jsonl").write_text("\n".join(kept) + "\n" + lines[2][:10])
    s2 = predict(mnet_random_fp32, src, out, batch=2, formats=("jsonl", "widerface"), resume=True,
                 post={"conf": 0.5})  # the same settings as the run it continues (others are refused)
    assert (s2.resumed, s2.written, s2.skipped) == (4, 2, 0)
    final = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in final) == [f"img_{i}.jpg" for i in range(4)]
    assert final[:2] == [json.loads(x) for x in kept]
    assert all((out / "images" / f"img_{i}.txt").is_file() for i in range(4))


def test_bench_rows(mnet_random_fp32, image_dir):
    rows = bench_engine(mnet_random_fp32, BenchConfig(batches=(1, 2), iters=3, warmup=1, threads=1,
                                                      imgsz=(64, 64), e2e_source=image_dir))
    eng = [r for r in rows if r["mode"] == "engine"]
    assert [r["batch"] for r in eng] == [1, 2]
    for r in eng:
        assert r["throughput_ips"] > 0 and r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] and r["iters"] == 3
        assert r["input_hw"] == [64, 64] and r["engine_peak_rss_mib"] >= 0
    e2e = [r for r in rows if r["mode"] == "e2e"]
    assert len(e2e) == 2 and e2e[0]["images"] == 4
    assert all(e2e[0][f"{s}_ms_per_img"] > 0 for s in ("read", "decode", "pre", "infer", "post"))
    assert e2e[0]["pipeline"] == "host"  # ORT: the host pipeline


def test_agreement_ap_hand_case():
    ref = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.8]}]
    same = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "scores": [0.9, 0.8]}]
    assert agreement_ap(ref, same) == pytest.approx(1.0)
    # one hit at top rank, one false positive at rank 2, second face missed: P/R points (1, .5), (.5, .5) -> AP .5
    half = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "scores": [0.9, 0.7]}]
    assert agreement_ap(ref, half) == pytest.approx(0.5)


@pytest.mark.slow
def test_dynamo_exporter_dynamic_batch(tmp_path):
    r = export_onnx("retinaface", tmp_path / "dyn.onnx", imgsz=[96, 96], batch=None, exporter="dynamo")
    assert r.meta["export"]["exporter"] == "dynamo"
    assert all(v < PARITY_ATOL[k] for k, v in r.max_abs_diff.items())
    eng = build_engine(r.path, tmp_path / "eng", precision="fp32")
    x = probe_input([96, 96], 3, seed=1).numpy()
    assert load_engine(eng).runner.run(x)["boxes"].shape[0] == 3

from __future__ import annotations

import json
import subprocess
import sys

import torch

from deployzoo.cli import _join_imgsz, main


def _run(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_lists_retinaface(capsys):
    code, out, _ = _run(["models"], capsys)
    assert code == 0 and "retinaface" in out and "mobilenet0.25" in out and "resnet50" in out and "672x1024" in out
    # every backend with what it declares (Capabilities)
    import re

    # a precision this CPU lacks is marked (OpenVINO fp16 without FP16)
    assert re.search(r"\| openvino \| fp32, bf16( \(not on this CPU\))?, fp16( \(not on this CPU\))?, int8 \| cpu \| "
                     r"--perf-hint, --cpu-streams \|", out)
    assert "| ort | fp32, fp16, int8 | cpu, cuda | - | ok |" in out


def test_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = _run(["export", "retinaface", "--weights", str(bad), "-o", str(tmp_path / "m.onnx")], capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("deployzoo: error")]
    assert code == 2 and len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in err


def test_other_variant_checkpoint_error(tmp_path, capsys):
    from deployzoo.models.retinaface import RetinaFace

    p = tmp_path / "mnet.pth"
    torch.save(RetinaFace("mobilenet0.25").state_dict(), p)
    code, _, err = _run(["export", "retinaface", "--variant", "resnet50", "--weights", str(p), "-o",
                         str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and "missing keys" in err and "Traceback" not in err


def test_imgsz_two_tokens():
    assert _join_imgsz(["export", "--imgsz", "672", "1024", "-o", "x"]) == ["export", "--imgsz", "672,1024", "-o", "x"]
    assert _join_imgsz(["--imgsz", "origin"]) == ["--imgsz", "origin"]


def test_cli_export_build_predict_bench_end_to_end(tmp_path, image_dir, capsys):
    onnx_path = tmp_path / "m.onnx"
    code, out, _ = _run(["export", "retinaface", "--imgsz", "96", "128", "--dynamic-batch", "-o", str(onnx_path)], capsys)
    assert code == 0 and "max abs diff" in out
    eng = tmp_path / "eng"
    assert _run(["build", str(onnx_path), "--precision", "force_float32", "--conf", "0.5", "-o", str(eng)], capsys)[0] == 0
    code, out, _ = _run(["predict", str(eng), "--source", str(image_dir), "--batch", "2", "--format", "widerface",
                         "-o", str(tmp_path / "pred")], capsys)
    assert code == 0 and "4 images predicted" in out
    code, out, _ = _run(["bench", str(eng), "--batch", "1,2", "--iters", "2", "--warmup", "1", "--threads", "1",
                         "--json", str(tmp_path / "b.json")], capsys)
    assert code == 0 and "| Model |" in out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2]


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "deployzoo", "predict", "/nonexistent-engine", "--source", "/nonexistent",
                        "-o", "/tmp/x"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("deployzoo: error:") and "Traceback" not in r.stderr


def test_cli_eval_widerface_json_and_plot(tmp_path, capsys):
    import numpy as np

    from deployzoo.data.widerface import load_gt
    from deployzoo.demo.widerface import write_demo
    from deployzoo.tasks.face_detection import write_widerface_txt

    root = write_demo(tmp_path / "demo", n_images=6, seed=2)
    gt = load_gt(root / "ground_truth")
    for e, names, bl in zip(gt.events, gt.files, gt.boxes):
        for n, b in zip(names, bl):
            write_widerface_txt(tmp_path / "pred", f"{e}/{n}.jpg", np.c_[b[:, :2], b[:, :2] + b[:, 2:]],
                                np.linspace(0.9, 0.6, len(b)))
    code, out, _ = _run(["eval", "widerface", "--pred", str(tmp_path / "pred"), "--gt", str(root / "ground_truth"),
                         "--json", str(tmp_path / "ap.json"), "--plot", str(tmp_path / "pr.png")], capsys)
    assert code == 0 and "Easy   Val AP: 1.0000" in out
    assert json.loads((tmp_path / "ap.json").read_text()) == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    assert (tmp_path / "pr.png").stat().st_size > 1000
    code, _, err = _run(["eval", "widerface", "--pred", str(tmp_path / "nope"), "--gt", str(root / "ground_truth")],
                        capsys)
    assert code == 2 and "prediction directory not found" in err


def test_cli_predict_by_model_name_builds_once(tmp_path, image_dir, capsys, monkeypatch):
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path / "cache"))
    args = ["predict", "retinaface", "--variant", "mobilenet0.25", "--backend", "ort", "--precision", "fp32",
            "--imgsz", "origin", "--conf", "0.5", "--iou", "0.4", "--max-det", "50", "--source", str(image_dir)]
    code, out, err = _run(args + ["-o", str(tmp_path / "a")], capsys)
    assert code == 0 and "4 images predicted" in out and "random weights" in err
    engines = list((tmp_path / "cache" / "engines").iterdir())
    assert len(engines) == 1
    code, _, _ = _run(args + ["-o", str(tmp_path / "b")], capsys)
    assert code == 0 and list((tmp_path / "cache" / "engines").iterdir()) == engines
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["postprocess"]["max_det"] == 50 and summary["postprocess"]["conf"] == 0.5

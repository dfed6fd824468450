"""The whole pipeline on generated demo data, as a fresh machine runs it (random weights, no downloads)."""

from __future__ import annotations

import json

import pytest

from deployzoo.engine import RANDOM_WEIGHTS_WARNING

from conftest import MNET_WEIGHTS, need_fixture, run_cli


@pytest.mark.slow
def test_run_demo_random_weights_and_rerun_reuses_stages(tmp_path):
    out = tmp_path / "run"
    args = ["run", "retinaface", "--data", "demo", "--demo-images", "6", "--precisions", "fp32,int8",
            "--batches", "1,2", "--iters", "2", "--warmup", "1", "--bench-imgsz", "128", "128", "-o", str(out)]
    run_cli(args)
    md = (out / "report.md").read_text()
    rep = json.loads((out / "report.json").read_text())
    assert RANDOM_WEIGHTS_WARNING in md and rep["warnings"] == [RANDOM_WEIGHTS_WARNING]
    assert "| Model | Precision | Easy (%) | Medium (%) | Hard (%) | AP vs fp32 detections (%) |" in md
    # one unit in report.md, percent; report.json keeps the protocol's fractions
    acc = rep["accuracy"]
    row = next(line for line in md.splitlines() if line.startswith("| retinaface-mobilenet0.25 | int8 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == [f"{100 * acc['int8'][k]:.2f}" for k in ("easy", "medium", "hard")]
    agree = acc["int8"]["agreement_vs_fp32"]
    assert cells[5] == f"{100 * agree:.2f}" if agree == agree else cells[5].startswith("n/a")  # NaN: nothing to agree on
    assert "Accuracy and agreement are percentages (report.json keeps the protocols' fractions)." in md
    assert "| Model | Engine | Batch | Throughput (img/s) | p50 ms | p99 ms | Timing |" in md
    assert set(rep["accuracy"]) == {"fp32", "int8"}
    assert {(r["backend"], r["precision"], r["batch"]) for r in rep["bench"]} == {
        (b, p, n) for b, p in [("torch", "fp32"), ("ort", "fp32"), ("ort", "int8")] for n in (1, 2)}
    for f in ("pr_fp32.png", "pr_int8.png", "throughput.png"):
        assert (out / f).stat().st_size > 1000
    assert rep["calibration"]["size"] > 0
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}
    run_cli(args)  # second run: every stage comes from the cache
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()} == stamps


@need_fixture(MNET_WEIGHTS)
@pytest.mark.slow
def test_run_demo_real_weights_scores_the_faces(tmp_path):
    out = tmp_path / "run"
    run_cli(["run", "retinaface", "--weights", str(MNET_WEIGHTS), "--data", "demo", "--demo-images", "8",
          "--precisions", "fp32", "--batches", "1", "--iters", "2", "--warmup", "1", "--no-reference",
          "--bench-imgsz", "128", "128", "-o", str(out)])
    acc = json.loads((out / "report.json").read_text())["accuracy"]["fp32"]
    assert acc["easy"] > 0.9 and acc["hard"] > 0.8


@pytest.mark.slow
def test_run_resumes_an_interrupted_predict_and_replaces_other_engines_predictions(tmp_path):
    out = tmp_path / "run"
    args = ["run", "retinaface", "--data", "demo", "--demo-images", "6", "--precisions", "fp32", "--batches", "1",
            "--iters", "1", "--warmup", "0", "--no-reference", "--bench-imgsz", "64", "64", "-o", str(out)]
    run_cli(args)
    pred = out / "predictions" / "fp32" / "predictions.jsonl"
    lines = pred.read_text().splitlines()
    assert len(lines) == 6
    # interrupted run: the eval stage never finished, half of the predictions are on disk
    (out / "stages" / "eval-fp32.json").unlink()
    pred.write_text("\n".join(lines[:3]) + "\n")
    run_cli(args)
    assert pred.read_text().splitlines()[:3] == lines[:3] and len(pred.read_text().splitlines()) == 6
    # predictions left by another engine are not mixed in
    (out / "stages" / "eval-fp32.json").unlink()
    settings = out / "predictions" / "fp32" / "predict_settings.json"
    st = json.loads(settings.read_text())
    st["engine"]["sha256"] = "0" * 64  # written by another engine
    settings.write_text(json.dumps(st))
    pred.write_text('{"image": "stale.jpg", "boxes": [], "scores": [], "landmarks": []}\n')
    run_cli(args)
    names = [json.loads(x)["image"] for x in pred.read_text().splitlines()]
    assert "stale.jpg" not in names and len(names) == 6


@pytest.mark.slow
def test_default_precisions_leave_out_what_the_backend_does_not_build(tmp_path):
    """`run --backend torch` without --precisions: int8 (the default's second) is left out before any work, and
    the report says why; asked for explicitly, it is refused in one line."""
    out = tmp_path / "run"
    run_cli(["run", "mobilenetv1", "--backend", "torch", "--data", "demo", "--demo-images", "4", "--batches", "1",
             "--iters", "1", "--warmup", "0", "-o", str(out)])
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["accuracy"]) == {"fp32"}
    note = ("default precision int8 left out: backend torch: eager PyTorch runs fp32 / fp16 / bf16; int8 is built "
            "by --backend ort")
    assert note in rep["warnings"] and note in (out / "report.md").read_text()
    from deployzoo.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "mobilenetv1", "--backend", "torch", "--precisions", "fp32,int8", "-o", str(tmp_path / "r2")])
    assert exc.value.code == 2 and not (tmp_path / "r2" / "data").exists()


@pytest.mark.slow
def test_rebench_and_no_cache_measure_again_and_the_report_says_when(tmp_path):
    out = tmp_path / "run"
    args = ["run", "mobilenetv1", "--data", "demo", "--demo-images", "4", "--precisions", "fp32", "--batches", "1",
            "--iters", "2", "--warmup", "1", "--rounds", "2", "--no-reference", "-o", str(out)]
    run_cli(args)
    rep = json.loads((out / "report.json").read_text())
    (row,) = [r for r in rep["bench"] if r["mode"] == "engine"]
    assert row["rounds"] == 2 and len(row["throughput_rounds"]) == 2
    md = (out / "report.md").read_text()
    assert "2 interleaved rounds (every engine once per round; the median round shown)" in md
    assert f"Measured {row['measured']}" in md and "`--rebench` measures again" in md
    assert "| min-max over rounds | noisy |" in md
    stamp = lambda: {p.name: p.stat().st_mtime_ns for p in (out / "stages").iterdir()}  # noqa: E731
    first = stamp()
    run_cli(args + ["--rebench"])  # the benchmark again, the scores kept
    second = stamp()
    assert second["bench.json"] != first["bench.json"] and second["eval-fp32.json"] == first["eval-fp32.json"]
    run_cli(args + ["--no-cache"])  # every stage again
    third = stamp()
    assert all(third[k] != second[k] for k in ("bench.json", "eval-fp32.json"))

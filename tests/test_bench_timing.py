"""bench timing modes (device / host), concurrent streams, GPU facts and their markdown; CPU-sized engines."""

from __future__ import annotations

import importlib.util
import json
import threading
import time

import numpy as np
import pytest
import torch

from deployzoo.bench import BenchConfig, _time_batch, bench, bench_engine
from deployzoo.build import build_engine
from deployzoo.engine import gpu_info, nvidia_smi, versions
from deployzoo.errors import DeployzooError
from deployzoo.progress import progress_bar
from deployzoo.report import bench_markdown
from conftest import engine_stub, run_cli

HW = (64, 64)
FAST = dict(batches=(1,), iters=3, warmup=1, threads=1, imgsz=HW)


@pytest.fixture(scope="module")
def torch_cpu_engine(mnet_random_onnx, tmp_path_factory):
    return build_engine(mnet_random_onnx, tmp_path_factory.mktemp("teng") / "torch", backend="torch",
                        precision="fp32", options={"device": "cpu"})


def _check_row(r, timing, streams, iters_per_stream):
    assert r["timing"] == timing and r["streams"] == streams and r["mode"] == "engine"
    assert r["iters_per_stream"] == [iters_per_stream] * streams and r["iters"] == streams * iters_per_stream
    assert r["throughput_ips"] > 0 and 0 < r["min_ms"] <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["throughput_ips"] == pytest.approx(r["batch"] * r["iters"] / r["wall_s"])
    # every timed request of one stream lies inside the concurrent section's wall time
    assert r["mean_ms"] * r["iters"] / streams <= r["wall_s"] * 1000.0 * 1.01


def test_device_timing_is_default_for_torch_engines(torch_cpu_engine):
    rows = bench_engine(torch_cpu_engine, BenchConfig(**{**FAST, "batches": (1, 2), "iters": 4}))
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        _check_row(r, "device", 1, 4)
        assert "run_tensors" in r["timed"] and "synchronize" in r["timed"] and r["device"] == "cpu"
        assert r["device_info"] == gpu_info("cpu") == {}
    host = bench_engine(torch_cpu_engine, BenchConfig(**FAST, timing="host"))[0]
    _check_row(host, "host", 1, 3)
    assert "runner.run on a host array" in host["timed"]


def test_ort_always_host_timing(mnet_random_fp32):
    for asked in (None, "device", "host"):
        r = bench_engine(mnet_random_fp32, BenchConfig(**FAST, timing=asked))[0]
        _check_row(r, "host", 1, 3)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_two_streams_count_every_request(backend, torch_cpu_engine, mnet_random_fp32):
    eng = torch_cpu_engine if backend == "torch" else mnet_random_fp32
    r = bench_engine(eng, BenchConfig(**FAST, streams=2))[0]
    _check_row(r, "device" if backend == "torch" else "host", 2, 3)
    assert "2 concurrent streams" in r["timed"]


class FakeRunner:
    """A runner that sleeps per call and records what it was called with, from which threads, how many at once."""

    def __init__(self, fail: bool = False, sleep: float = 0.01) -> None:
        self.engine, self.takes_tensors = engine_stub(), True
        self.torch_device, self.device, self.image_name = torch.device("cpu"), "cpu", "images"
        self.fail, self.sleep = fail, sleep
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = self.unsynced = 0
        self.pending = False  # a call not yet followed by synchronize()
        self.calls: list[tuple[str, object, int]] = []  # (method, input, thread)

    def _call(self, how: str, x) -> dict:
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.calls.append((how, x, threading.get_ident()))
            self.unsynced += self.pending
            self.pending = True
        if self.fail and len(self.calls) > 2:
            raise RuntimeError("engine failed")
        time.sleep(self.sleep)
        with self.lock:
            self.inflight -= 1
        return {}

    def run(self, x):
        return self._call("run", x)

    def device_feeds(self, x):
        return {"images": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))}

    def run_tensors(self, feeds):
        return self._call("run_tensors", feeds)

    def synchronize(self):
        self.pending = False


def _time(runner, **cfg):
    cfg = BenchConfig(**{"iters": 5, "warmup": 1, **cfg})
    with progress_bar("t", None, enabled=False) as bar:
        return _time_batch(runner, 2, (8, 8), cfg, np.random.default_rng(0), bar, {})


def test_device_mode_feeds_device_tensors_and_synchronizes():
    fr = FakeRunner()
    r = _time(fr)
    assert r["timing"] == "device" and {c[0] for c in fr.calls} == {"run_tensors"} and len(fr.calls) == 6
    img = fr.calls[0][1]["images"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and tuple(img.shape) == (2, 3, 8, 8)
    assert fr.unsynced == 0 and not fr.pending  # every call (warm-up included) synchronised before the next / the end
    fh = FakeRunner()
    assert _time(fh, timing="host")["timing"] == "host"
    assert {c[0] for c in fh.calls} == {"run"} and isinstance(fh.calls[0][1], np.ndarray)
    assert fh.unsynced > 0  # host timing: runner.run's host outputs are the synchronisation


def test_streams_run_concurrently_on_own_inputs():
    fr = FakeRunner()
    r = _time(fr, streams=3)
    timed = fr.calls[1:]  # the first call is the serial warm-up
    assert r["iters"] == 15 and len(timed) == 3 * 6
    assert len({c[2] for c in timed}) == 3 and len({id(c[1]) for c in timed}) == 3  # 3 threads, 3 inputs
    assert fr.max_inflight == 3
    one = FakeRunner()
    _time(one)
    assert one.max_inflight == 1


def test_min_seconds_extends_the_timed_loop():
    r = _time(FakeRunner(sleep=0.005), iters=1, min_seconds=0.1, streams=2)
    assert r["wall_s"] >= 0.1 and r["iters"] > 2 and len(r["iters_per_stream"]) == 2


def test_a_failing_stream_raises_its_error_not_a_hang():
    with pytest.raises(RuntimeError, match="engine failed"):
        _time(FakeRunner(fail=True), streams=3)


@pytest.mark.parametrize("bad, msg", [({"streams": 0}, "--streams"), ({"timing": "foo"}, "--timing"),
                                      ({"iters": 0}, "--iters")])
def test_bad_config_is_a_one_line_error(bad, msg, mnet_random_fp32):
    with pytest.raises(DeployzooError, match=msg):
        bench([mnet_random_fp32], BenchConfig(**{**FAST, **bad}))


@pytest.mark.parametrize("args, msg", [(["--streams", "0"], "--streams 0"), (["--timing", "foo"], "--timing 'foo'")])
def test_cli_bad_streams_or_timing(args, msg, mnet_random_fp32, capsys):
    from deployzoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", str(mnet_random_fp32), *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("deployzoo: error")]
    assert e.value.code == 2 and len(lines) == 1 and msg in lines[0] and "Traceback" not in err


def test_cli_bench_streams_host_timing(torch_cpu_engine, mnet_random_fp32, tmp_path, capsys):
    js, md = tmp_path / "b.json", tmp_path / "b.md"
    run_cli(["bench", str(torch_cpu_engine), str(mnet_random_fp32), "--batch", "1", "--iters", "2", "--warmup", "1",
             "--threads", "1", "--imgsz", "64", "64", "--streams", "2", "--timing", "host", "--json", str(js),
             "--md", str(md)])
    res = json.loads(js.read_text())
    assert res["config"]["streams"] == 2 and res["config"]["timing"] == "host"
    assert [(r["backend"], r["timing"], r["streams"], r["iters"]) for r in res["rows"]] == \
        [("torch", "host", 2, 4), ("ort", "host", 2, 4)]
    assert res["gpu"] == gpu_info() and {"cuda", "cudnn", "torch", "onnxruntime"} <= set(res["versions"])
    text = md.read_text()
    assert "| Streams | Timing |" in text and "| 2 | host |" in text and "concurrent section" in text
    assert ("GPU:" in text) == bool(res["gpu"])


def test_markdown_gpu_line_and_rows_without_new_keys():
    row = {"mode": "engine", "model": "m-v", "backend": "ort", "precision": "fp32", "batch": 1, "input_hw": [8, 8],
           "throughput_ips": 10.0, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 2.0, "max_ms": 2.0, "iters": 5,
           "engine_peak_rss_mib": 1.0}  # a row cached before timing / streams existed
    res = {"machine": {"cpu": "c", "affinity_cores": 2, "memory_gib": 1.0}, "versions": {"torch": "x"},
           "created": "now", "rows": [row],
           "config": {"warmup": 1, "iters": 5, "threads": None, "imgsz_for_origin_engines": [640, 640]}}
    text = bench_markdown(res)
    assert "| 1 | host |" in text and "GPU:" not in text and "runner.run" in text
    dev = {"name": "NVIDIA Test", "compute_capability": "9.0", "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980,
           "driver_version": "570.1"}
    text = bench_markdown({**res, "rows": [{**row, "timing": "device", "streams": 4, "device_info": dev}]})
    gpu = [ln for ln in text.splitlines() if ln.startswith("GPU:")]
    assert gpu == ["GPU: NVIDIA Test (sm 9.0, driver 570.1, SM clock 1980 MHz, max 1980 MHz)."]
    assert "| 4 | device |" in text and "run_tensors" in text and "concurrent section" in text


def _fake_smi(tmp_path, monkeypatch, body: str) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_nvidia_smi_parsing_and_absence(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert nvidia_smi() == {}
    _fake_smi(tmp_path, monkeypatch, 'echo "NVIDIA H200, 570.86.15, 1755, 1980, 3201, 700.00, [N/A], Enabled"')
    assert nvidia_smi("0") == {"name": "NVIDIA H200", "driver_version": "570.86.15", "sm_clock_mhz": 1755,
                               "sm_clock_max_mhz": 1980, "mem_clock_mhz": 3201, "power_limit_w": 700,
                               "persistence_mode": "Enabled"}
    _fake_smi(tmp_path, monkeypatch, 'echo "A, 1, 2, 3, 4, 5, 6, Enabled"; echo "B, 1, 2, 3, 4, 5, 6, Enabled"')
    assert nvidia_smi() == {}  # two GPUs and none named
    _fake_smi(tmp_path, monkeypatch, "echo 'No devices were found'; exit 6")
    assert nvidia_smi() == {}
    _fake_smi(tmp_path, monkeypatch, "sleep 5")
    assert nvidia_smi(timeout=0.2) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_gpu_info_without_cuda_is_empty():
    assert gpu_info() == gpu_info("cuda:0") == gpu_info(0) == {}


def test_gpu_info_cpu_device_and_versions():
    assert gpu_info("cpu") == {}
    v = versions()
    assert {"python", "torch", "onnxruntime", "numpy", "cv2", "cuda", "cudnn"} <= set(v)
    assert v["cuda"] == (torch.version.cuda or "none")
    for dist in ("timm", "torchao"):
        assert (dist in v) == (importlib.util.find_spec(dist) is not None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_event_timing_and_gpu_facts(mnet_random_onnx, tmp_path):
    eng = build_engine(mnet_random_onnx, tmp_path / "cuda", backend="torch", precision="fp32",
                       options={"device": "cuda"})
    rows = bench_engine(eng, BenchConfig(batches=(1, 4), iters=10, warmup=3, imgsz=(128, 128)))
    for r in rows:
        _check_row(r, "device", 1, 10)
        assert "CUDA events" in r["timed"] and r["device"].startswith("cuda")
        info = r["device_info"]
        assert info["name"] == torch.cuda.get_device_name(0) and info["cuda_runtime"] == torch.version.cuda
        assert info["total_memory_mib"] > 0 and "." in info["compute_capability"]
    r2 = bench_engine(eng, BenchConfig(batches=(2,), iters=5, warmup=2, imgsz=(128, 128), streams=2))[0]
    _check_row(r2, "device", 2, 5)
    assert "one CUDA stream each" in r2["timed"]
    host = bench_engine(eng, BenchConfig(batches=(4,), iters=5, warmup=2, imgsz=(128, 128), timing="host"))[0]
    _check_row(host, "host", 1, 5)


# ------------------------------------------------------------------------------------ rounds and noise (issue 15)
def _row(engine, ips, measured="2026-12-04T05:00:00+00:00", batch=1):
    return {"engine": engine, "mode": "engine", "batch": batch, "streams": 1, "throughput_ips": ips,
            "measured": measured, "backend": "ort", "precision": "fp32"}


def test_rounds_merge_to_the_median_round_with_spread_and_noise():
    from deployzoo.bench import merge_rounds

    rounds = [[_row("a", 100.0), _row("b", 50.0)], [_row("a", 130.0, "2026-12-04T05:01:00+00:00"), _row("b", 51.0)],
              [_row("a", 110.0), _row("b", 49.0)]]
    a, b = merge_rounds(rounds)
    assert (a["engine"], b["engine"]) == ("a", "b")  # the first round's order
    assert a["throughput_ips"] == 110.0 and a["throughput_rounds"] == [100.0, 130.0, 110.0]
    assert (a["throughput_min"], a["throughput_max"], a["rounds"]) == (100.0, 130.0, 3)
    assert a["spread"] == pytest.approx(30 / 110, abs=1e-4) and a["noise"] == "rounds disagree by 27%"
    assert b["throughput_ips"] == 50.0 and b["noise"] is None  # 4% apart: not flagged
    assert a["measured"] == "2026-12-04T05:00:00+00:00"
    busy = merge_rounds(rounds, "load average 3.1 on 2 cores before it started")
    assert busy[1]["noise"] == "load average 3.1 on 2 cores before it started"
    assert merge_rounds([[_row("a", 100.0)]])[0]["noise"] is None  # one round: no spread to judge


def test_a_loaded_machine_is_named():
    from deployzoo.bench import LoadProbe, machine_noise

    assert machine_noise({"load1_before": 0.2, "cores": 2, "steal_pct": 0.0}) is None
    assert machine_noise({"load1_before": 1.5, "cores": 2, "steal_pct": 9.5}) == (
        "load average 1.5 on 2 cores before it started; 9.5% of CPU time stolen by the hypervisor")
    load = LoadProbe().result()
    assert load["cores"] >= 1 and set(load) == {"load1_before", "cores", "steal_pct"}


def test_bench_runs_interleaved_rounds(mnet_random_fp32, tmp_path):
    res = bench([mnet_random_fp32], BenchConfig(**{**FAST, "rounds": 2}))
    (row,) = res["rows"]
    assert row["rounds"] == 2 and len(row["throughput_rounds"]) == 2 and row["measured"]
    assert row["throughput_min"] <= row["throughput_ips"] <= row["throughput_max"]
    assert res["config"]["rounds"] == 2 and "steal_pct" in res["machine_load"]
    md = bench_markdown(res)
    assert "in 2 interleaved rounds" in md and "| min-max over rounds |" in md
    with pytest.raises(DeployzooError, match="--rounds 0"):
        bench([mnet_random_fp32], BenchConfig(**{**FAST, "rounds": 0}))

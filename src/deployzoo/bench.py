"""`deployzoo bench` (the seeds' mm_run / perf.sh): engine-only throughput and latency percentiles per batch size,
and with --e2e the stage split read / pre-process / infer / post-process on real files.

Engine-only timing has two modes: `device` (runners with `run_tensors`: the input already on the engine's device,
CUDA events on the worker's stream on a GPU, wall clock + synchronize on the CPU: inference only) and `host`
(`runner.run` on a host array: copies in and out included; the only mode for ONNX Runtime). `streams` N > 1 runs N
concurrent workers (threads, one CUDA stream each on a GPU) released together by a barrier: throughput is all
images over the wall time of the concurrent section, latency percentiles are over every request of every stream."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from deployzoo.backends.base import Runner
from deployzoo.engine import Engine, gpu_info, machine, now_iso, versions
from deployzoo.errors import DeployzooError
from deployzoo.pipeline import STAGES, StageTimes, load_engine, run_batches
from deployzoo.progress import progress_bar
from deployzoo.tasks.base import task_source

log = logging.getLogger(__name__)

DEFAULT_ORIGIN_HW = (640, 640)
TIMINGS = ("device", "host")
TIMED = {
    "device-cuda": "run_tensors on an input already on the GPU (engine dtype and layout), CUDA events on the worker's "
                   "stream around each call: inference only, no host copies",
    "device-cpu": "run_tensors on an input tensor already in place (engine dtype and layout), wall clock around each "
                  "call + synchronize: inference only, no host copies",
    "host": "runner.run on a host array: host->engine copy, inference, outputs back on the host",
}


class RssSampler:
    """Samples this process's RSS every `period` seconds in a thread; `.peak` is the highest seen."""

    def __init__(self, period: float = 0.005) -> None:
        self.proc = psutil.Process()
        self.period = period
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.period)

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def latency_stats(lat_s: list[float]) -> dict[str, float]:
    a = np.asarray(lat_s) * 1000.0
    return {
        "mean_ms": float(a.mean()), "min_ms": float(a.min()), "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)), "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
    }


@dataclass
class BenchConfig:
    batches: tuple[int, ...] = (1,)
    iters: int = 50
    warmup: int = 5
    threads: int | None = None
    device: str | None = None
    imgsz: tuple[int, int] | None = None  # for original-size engines
    e2e_source: str | Path | None = None
    e2e_limit: int | None = None
    pipeline: str = "auto"  # --e2e: auto | host | device (pipeline_device.choose_pipeline)
    min_seconds: float = 0.0
    timing: str | None = None  # device | host; None: device where the runner takes tensors, else host
    streams: int = 1
    rounds: int = 1  # bench(): every engine measured once per round, interleaved; rows are the median round


NOISE_SPREAD = 0.15  # rounds whose img/s spread (max - min) / median exceeds this are flagged

def check_config(cfg: BenchConfig) -> None:
    if cfg.timing not in (None, "auto", *TIMINGS):
        raise DeployzooError(f"--timing {cfg.timing!r}: expected one of {', '.join(TIMINGS)}")
    if not isinstance(cfg.streams, int) or cfg.streams < 1:
        raise DeployzooError(f"--streams {cfg.streams!r}: expected a positive integer (concurrent workers)")
    if not isinstance(cfg.rounds, int) or cfg.rounds < 1:
        raise DeployzooError(f"--rounds {cfg.rounds!r}: expected a positive integer (interleaved rounds)")
    if cfg.iters < 1 or cfg.warmup < 0:
        raise DeployzooError(f"--iters {cfg.iters} / --warmup {cfg.warmup}: need iters >= 1 and warmup >= 0")


def input_hw(engine: Engine, imgsz: tuple[int, int] | None) -> tuple[int, int]:
    if engine.input.origin:
        return tuple(imgsz or DEFAULT_ORIGIN_HW)  # type: ignore[return-value]
    return engine.input.imgsz  # type: ignore[return-value]


def bench_engine(engine_dir: str | Path, cfg: BenchConfig) -> list[dict[str, Any]]:
    """One row per batch size the engine accepts (engine-only), plus e2e rows when cfg.e2e_source is set."""
    check_config(cfg)
    gc.collect()
    base_rss = psutil.Process().memory_info().rss
    rows: list[dict[str, Any]] = []
    with RssSampler() as rss:
        loaded = load_engine(engine_dir, threads=cfg.threads, device=cfg.device)
        e = loaded.engine
        hw = input_hw(e, cfg.imgsz)
        common = {
            "engine": str(engine_dir), "model": e.label, "backend": e.backend, "precision": e.precision,
            "input_hw": list(hw), "origin_size_engine": e.input.origin,
            "device": loaded.runner.device, "threads": cfg.threads or "runtime default",
            "warnings": list(e.warnings), "measured": now_iso(),
        }
        rng = np.random.default_rng(0)
        ok = [b for b in cfg.batches if e.batch.allows(b)]
        if not ok:
            raise DeployzooError(f"{engine_dir}: none of the batch sizes {', '.join(map(str, cfg.batches))} runs on "
                                 f"this engine: batch must be {e.batch.rule()}")
        for b in sorted(set(cfg.batches) - set(ok)):
            log.warning("%s: batch %d not supported by this engine, skipped", engine_dir, b)
        with progress_bar(f"bench {e.label} {e.backend} {e.precision}",
                          len(ok) * cfg.streams * (cfg.warmup + cfg.iters)) as bar:
            for b in ok:
                rows.append(_time_batch(loaded.runner, b, hw, cfg, rng, bar, common))
        if cfg.e2e_source is not None:
            rows.extend(_bench_e2e(loaded, cfg, common))
    dev_info = gpu_info(loaded.runner.device)  # after the timed loops: the clocks and temperature under load
    for r in rows:
        r["device_info"] = dev_info
        r["engine_peak_rss_mib"] = round((rss.peak - base_rss) / 2**20, 1)
        r["process_peak_rss_mib"] = round(rss.peak / 2**20, 1)
        dev_peak = loaded.runner.peak_memory_bytes()
        if dev_peak is not None:
            r["device_peak_mib"] = round(dev_peak / 2**20, 1)
    return rows


def timing_mode(runner: Runner, asked: str | None) -> str:
    """`device` where the runner takes tensors on its device (`run_tensors`) and host was not asked, else `host`."""
    tensors = runner.takes_tensors
    if asked == "device" and not tensors:
        log.info("%s: no device-tensor path (ONNX Runtime takes host arrays): host timing", type(runner).__name__)
    return "device" if tensors and asked != "host" else "host"


def _time_batch(runner: Runner, b: int, hw: tuple[int, int], cfg: BenchConfig, rng: np.random.Generator, bar: Any,
                common: dict[str, Any]) -> dict[str, Any]:
    import torch

    spec = runner.engine.input  # random pixels, normalised as the engine's real inputs are
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    x = np.ascontiguousarray((rng.random((b, 3, *hw), dtype=np.float32) * 255.0 - mean) / std, dtype=np.float32)
    timing = timing_mode(runner, cfg.timing)
    tdev = runner.torch_device if runner.takes_tensors else None
    cuda = tdev is not None and tdev.type == "cuda"  # torch streams / events; ORT on CUDA runs its own stream
    sync = runner.synchronize
    n = cfg.streams
    inputs = [runner.device_feeds(x) if timing == "device" else x.copy() for _ in range(n)]
    call = runner.run_tensors if timing == "device" else runner.run
    sync()
    if n > 1:  # the first call (lazy init, CUDA graph capture) is not thread-safe: made alone, untimed
        call(inputs[0])
        sync()
    t_start = [0.0]

    def released() -> None:  # run once, when every worker has warmed up: the concurrent section starts
        sync()
        t_start[0] = time.perf_counter()

    barrier = threading.Barrier(n, action=released)

    def worker(i: int) -> list[float]:
        stream = torch.cuda.Stream(tdev) if cuda else None
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if cuda and timing == "device" else None
        lat: list[float] = []
        try:
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                for _ in range(cfg.warmup):
                    call(inputs[i])
                    bar.advance()
                if stream is not None:
                    stream.synchronize()
                barrier.wait()
                while len(lat) < cfg.iters or (time.perf_counter() - t_start[0]) < cfg.min_seconds:
                    if events is not None:
                        events[0].record(stream)
                        call(inputs[i])
                        events[1].record(stream)
                        events[1].synchronize()  # this stream only: the other workers keep running
                        lat.append(events[0].elapsed_time(events[1]) / 1000.0)
                    else:
                        t0 = time.perf_counter()
                        call(inputs[i])
                        if timing == "device":
                            sync()
                        lat.append(time.perf_counter() - t0)
                    bar.advance()
        except BaseException:
            barrier.abort()  # release the others instead of leaving them at the barrier
            raise
        return lat

    if n == 1:
        per_stream = [worker(0)]
    else:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="bench-stream") as ex:
            futs = [ex.submit(worker, i) for i in range(n)]
            errs = [e for e in (f.exception() for f in futs) if e is not None]
        if errs:  # the first real failure, not the BrokenBarrierError it caused in the other workers
            raise next((e for e in errs if not isinstance(e, threading.BrokenBarrierError)), errs[0])
        per_stream = [f.result() for f in futs]
    sync()
    wall = time.perf_counter() - t_start[0]
    lat = [t for s in per_stream for t in s]
    timed = TIMED["host" if timing == "host" else "device-cuda" if cuda else "device-cpu"]
    if n > 1:
        timed += (f"; {n} concurrent streams (threads{', one CUDA stream each' if cuda else ''}): throughput = all "
                  "images / wall time of the concurrent section, latency over every request")
    return {
        **common, "mode": "engine", "batch": b, "timing": timing, "streams": n, "iters": len(lat),
        "iters_per_stream": [len(s) for s in per_stream], "warmup": cfg.warmup, "wall_s": wall,
        "throughput_ips": b * len(lat) / wall, **latency_stats(lat), "timed": timed,
    }


def _bench_e2e(loaded: Any, cfg: BenchConfig, common: dict[str, Any]) -> list[dict[str, Any]]:
    from deployzoo.pipeline_device import choose_pipeline, run_batches_device

    which = choose_pipeline(loaded, cfg.pipeline)
    run = run_batches_device if which == "device" else run_batches
    _, items = task_source(loaded.task, cfg.e2e_source)  # type: ignore[arg-type]
    if cfg.e2e_limit:
        items = items[: cfg.e2e_limit]
    rows = []
    for b in cfg.batches:
        if not loaded.engine.batch.allows(b):
            continue
        # warm-up on the first batch of files
        run(loaded, items[:b], batch=b, on_result=lambda *a: None, on_skip=lambda *a: None, times=StageTimes())
        times = StageTimes()
        n = {"ok": 0, "skipped": 0}
        t0 = time.perf_counter()

        def ok(*_a: Any) -> None:
            n["ok"] += 1

        def skip(*_a: Any) -> None:
            n["skipped"] += 1

        run(loaded, items, batch=b, on_result=ok, on_skip=skip, times=times,
            workers=max(1, min(4, os.cpu_count() or 1)))
        wall = time.perf_counter() - t0
        per_img = {f"{s}_ms_per_img": 1000.0 * times.seconds[s] / max(1, n["ok"]) for s in STAGES}
        timed = ("files on disk -> predictions in memory; " + (
            f"device pipeline on {loaded.runner.device}: bytes read in reader threads, decode + pre on the device in a "
            "producer thread (own CUDA stream on a GPU, each stage synchronized at its end) overlapped with infer + "
            "post (batched on the device, results copied to the host)" if which == "device" else
            "host pipeline: read + decode + pre in a thread pool overlapped with infer, post on the host"))
        rows.append({
            **common, "mode": "e2e", "batch": b, "pipeline": which, "images": n["ok"], "skipped": n["skipped"],
            "throughput_ips": n["ok"] / wall if wall > 0 else 0.0, "wall_s": wall, **per_img, "timed": timed,
        })
    return rows


class LoadProbe:
    """How busy the machine was around a measurement: the 1-minute load average before it and the share of CPU time
    the hypervisor stole during it (/proc/stat; Linux only, None elsewhere)."""

    def __init__(self) -> None:
        self.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.cpu0 = self._cpu_times()

    @staticmethod
    def _cpu_times() -> list[int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                return [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    def result(self) -> dict[str, Any]:
        cpu1 = self._cpu_times()
        steal = None
        if self.cpu0 and cpu1 and len(cpu1) > 7:
            total = sum(cpu1) - sum(self.cpu0)
            steal = round(100.0 * (cpu1[7] - self.cpu0[7]) / total, 2) if total > 0 else 0.0
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return {"load1_before": None if self.load_before is None else round(self.load_before, 2), "cores": cores,
                "steal_pct": steal}


def machine_noise(load: dict[str, Any]) -> str | None:
    """Why the machine itself makes a measurement doubtful (None: it looked idle)."""
    why = []
    if load.get("load1_before") is not None and load["load1_before"] > 0.5 * load["cores"]:
        why.append(f"load average {load['load1_before']} on {load['cores']} cores before it started")
    if load.get("steal_pct") is not None and load["steal_pct"] > 5.0:
        why.append(f"{load['steal_pct']}% of CPU time stolen by the hypervisor")
    return "; ".join(why) or None


def merge_rounds(rounds: list[list[dict[str, Any]]], machine_why: str | None = None) -> list[dict[str, Any]]:
    """One row per (engine, mode, batch): the median round's row (by img/s), with every round's img/s, the
    min-max, the spread and a `noise` note when rounds disagree by more than NOISE_SPREAD or the machine was busy."""
    keyed: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rows in rounds:
        for r in rows:
            keyed.setdefault((r["engine"], r["mode"], r["batch"], r.get("streams")), []).append(r)
    out = []
    for rs in keyed.values():
        ips = [float(r["throughput_ips"]) for r in rs]
        order = sorted(range(len(rs)), key=lambda k: ips[k])
        med_row = dict(rs[order[(len(rs) - 1) // 2]])
        med = med_row["throughput_ips"]
        spread = (max(ips) - min(ips)) / med if med > 0 else 0.0
        notes = []
        if len(rs) > 1 and spread > NOISE_SPREAD:
            notes.append(f"rounds disagree by {100 * spread:.0f}%")
        if machine_why:
            notes.append(machine_why)
        med_row.update({"rounds": len(rs), "throughput_rounds": ips, "throughput_min": min(ips),
                        "throughput_max": max(ips), "spread": round(spread, 4), "noise": "; ".join(notes) or None,
                        "measured": min(r["measured"] for r in rs)})
        out.append(med_row)
    return out


def bench_rounds(engines: list[str | Path], cfg: BenchConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every engine once per round for cfg.rounds rounds (interleaved, so a slow minute of the machine does not
    fall on one engine only); (merged rows, machine load)."""
    probe = LoadProbe()
    one = BenchConfig(**{**cfg.__dict__, "rounds": 1})
    rounds = []
    for k in range(cfg.rounds):
        if cfg.rounds > 1:
            log.info("bench round %d of %d", k + 1, cfg.rounds)
        rounds.append([r for e in engines for r in bench_engine(e, one)])
    load = probe.result()
    return merge_rounds(rounds, machine_noise(load)), load


def bench(engines: list[str | Path], cfg: BenchConfig) -> dict[str, Any]:
    if not engines:
        raise DeployzooError("bench: give at least one ENGINE_DIR")
    check_config(cfg)
    rows, load = bench_rounds(list(engines), cfg)
    return {
        "created": now_iso(), "machine": machine(), "versions": versions(), "gpu": gpu_info(cfg.device),
        "machine_load": load,
        "config": {"batches": list(cfg.batches), "iters": cfg.iters, "warmup": cfg.warmup, "threads": cfg.threads,
                   "rounds": cfg.rounds,
                   "timing": cfg.timing or "device where the engine takes device tensors, else host",
                   "streams": cfg.streams,
                   "imgsz_for_origin_engines": list(cfg.imgsz or DEFAULT_ORIGIN_HW), "e2e_source": str(cfg.e2e_source) if cfg.e2e_source else None},
        "rows": rows,
    }

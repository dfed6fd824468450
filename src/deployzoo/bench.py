"""`deployzoo bench` (the seeds' mm_run / perf.sh): engine-only throughput and latency percentiles per batch size,
and with --e2e the stage split read / pre-process / infer / post-process on real files."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from deployzoo.engine import batch_allows, machine, now_iso, versions
from deployzoo.errors import DeployzooError
from deployzoo.pipeline import STAGES, StageTimes, load_engine, run_batches
from deployzoo.progress import progress_bar
from deployzoo.tasks.base import task_source

log = logging.getLogger(__name__)

DEFAULT_ORIGIN_HW = (640, 640)


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
    min_seconds: float = 0.0


def input_hw(manifest: dict[str, Any], imgsz: tuple[int, int] | None) -> tuple[int, int]:
    sz = manifest["input"].get("imgsz", "origin")
    if sz == "origin":
        return tuple(imgsz or DEFAULT_ORIGIN_HW)  # type: ignore[return-value]
    return int(sz[0]), int(sz[1])


def engine_label(m: dict[str, Any]) -> str:
    return f"{m['model']}-{m['variant']}"


def bench_engine(engine_dir: str | Path, cfg: BenchConfig) -> list[dict[str, Any]]:
    """One row per batch size the engine accepts (engine-only), plus e2e rows when cfg.e2e_source is set."""
    gc.collect()
    base_rss = psutil.Process().memory_info().rss
    rows: list[dict[str, Any]] = []
    with RssSampler() as rss:
        loaded = load_engine(engine_dir, threads=cfg.threads, device=cfg.device)
        m = loaded.manifest
        hw = input_hw(m, cfg.imgsz)
        common = {
            "engine": str(engine_dir), "model": engine_label(m), "backend": m["backend"], "precision": m["precision"],
            "input_hw": list(hw), "origin_size_engine": m["input"].get("imgsz") == "origin",
            "device": loaded.runner.device, "threads": cfg.threads or "runtime default",
            "warnings": m.get("warnings", []),
        }
        rng = np.random.default_rng(0)
        ok = [b for b in cfg.batches if batch_allows(m, b)]
        for b in sorted(set(cfg.batches) - set(ok)):
            log.info("%s: batch %d not supported by this engine, skipped", engine_dir, b)
        with progress_bar(f"bench {engine_label(m)} {m['backend']} {m['precision']}",
                          len(ok) * (cfg.warmup + cfg.iters)) as bar:
            for b in ok:
                rows.append(_time_batch(loaded.runner, b, hw, cfg, rng, bar, common))
        if cfg.e2e_source is not None:
            rows.extend(_bench_e2e(loaded, cfg, common))
    for r in rows:
        r["engine_peak_rss_mib"] = round((rss.peak - base_rss) / 2**20, 1)
        r["process_peak_rss_mib"] = round(rss.peak / 2**20, 1)
        dev_peak = loaded.runner.peak_memory_bytes()
        if dev_peak is not None:
            r["device_peak_mib"] = round(dev_peak / 2**20, 1)
    return rows


def _time_batch(runner: Any, b: int, hw: tuple[int, int], cfg: BenchConfig, rng: np.random.Generator, bar: Any,
                common: dict[str, Any]) -> dict[str, Any]:
    spec = runner.manifest["input"]  # random pixels, normalised as the engine's real inputs are
    mean = np.asarray(spec.get("mean", [0.0] * 3), dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.get("std", [1.0] * 3), dtype=np.float32).reshape(1, 3, 1, 1)
    x = np.ascontiguousarray((rng.random((b, 3, *hw), dtype=np.float32) * 255.0 - mean) / std, dtype=np.float32)
    for _ in range(cfg.warmup):
        runner.run(x)
        bar.advance()
    lat: list[float] = []
    t_all = time.perf_counter()
    while len(lat) < cfg.iters or (time.perf_counter() - t_all) < cfg.min_seconds:
        t0 = time.perf_counter()
        runner.run(x)
        lat.append(time.perf_counter() - t0)
        bar.advance()
    total = time.perf_counter() - t_all
    return {
        **common, "mode": "engine", "batch": b, "iters": len(lat), "warmup": cfg.warmup,
        "throughput_ips": b * len(lat) / total, **latency_stats(lat),
        "timed": "runner.run on a host array: host->engine copy, inference, outputs back on the host",
    }


def _bench_e2e(loaded: Any, cfg: BenchConfig, common: dict[str, Any]) -> list[dict[str, Any]]:
    _, items = task_source(loaded.task, cfg.e2e_source)  # type: ignore[arg-type]
    if cfg.e2e_limit:
        items = items[: cfg.e2e_limit]
    rows = []
    m = loaded.manifest
    for b in cfg.batches:
        if not batch_allows(m, b):
            continue
        # warm-up on the first batch of files
        run_batches(loaded, items[:b], batch=b, on_result=lambda *a: None, on_skip=lambda *a: None, times=StageTimes())
        times = StageTimes()
        n = {"ok": 0, "skipped": 0}
        t0 = time.perf_counter()

        def ok(*_a: Any) -> None:
            n["ok"] += 1

        def skip(*_a: Any) -> None:
            n["skipped"] += 1

        run_batches(loaded, items, batch=b, on_result=ok, on_skip=skip, times=times,
                    workers=max(1, min(4, os.cpu_count() or 1)))
        wall = time.perf_counter() - t0
        per_img = {f"{s}_ms_per_img": 1000.0 * times.seconds[s] / max(1, n["ok"]) for s in STAGES}
        rows.append({
            **common, "mode": "e2e", "batch": b, "images": n["ok"], "skipped": n["skipped"],
            "throughput_ips": n["ok"] / wall if wall > 0 else 0.0, "wall_s": wall, **per_img,
            "timed": "files on disk -> predictions in memory; read+pre run in a thread pool overlapped with infer",
        })
    return rows


def bench(engines: list[str | Path], cfg: BenchConfig) -> dict[str, Any]:
    if not engines:
        raise DeployzooError("bench: give at least one ENGINE_DIR")
    rows: list[dict[str, Any]] = []
    for e in engines:
        rows.extend(bench_engine(e, cfg))
    return {
        "created": now_iso(), "machine": machine(), "versions": versions(),
        "config": {"batches": list(cfg.batches), "iters": cfg.iters, "warmup": cfg.warmup, "threads": cfg.threads,
                   "imgsz_for_origin_engines": list(cfg.imgsz or DEFAULT_ORIGIN_HW), "e2e_source": str(cfg.e2e_source) if cfg.e2e_source else None},
        "rows": rows,
    }

"""`deployzoo run`: export -> build per precision -> predict + eval -> bench per batch -> report, the seeds'
one-click run.sh. Every stage's result is stored under RUN_DIR keyed by content, so a re-run skips what is done."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.cache import ensure_engine
from deployzoo.engine import RANDOM_WEIGHTS_WARNING, Engine, machine, now_iso, versions
from deployzoo.files import atomic_write_text, write_json
from deployzoo.errors import DeployzooError
from deployzoo.export import parse_imgsz
from deployzoo.pipeline import STAGES
from deployzoo.predict import SUMMARY_FILE, predict
from deployzoo.quant.calib import make_calib_set
from deployzoo.registry import backend_takes_options, get_model, get_task
from deployzoo.report import md_table, plot_throughput
from deployzoo.tasks.base import task_source

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    model: str
    out_dir: Path
    variant: str | None = None
    weights: Path | None = None
    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] | None = None  # None: the model's seed batches
    data: str = "demo"
    gt: Path | None = None
    calib: Path | None = None
    calib_size: int = 64
    calib_method: str = "minmax"
    backend: str = "ort"
    reference: bool = True
    imgsz: str | None = None
    bench_imgsz: str | None = None
    iters: int = 20
    warmup: int = 3
    threads: int | None = None
    demo_images: int | None = None  # None: the task's default
    predict_batch: int | None = None  # None: the model's default
    device: str | None = None  # cpu | cuda | cuda:N; None: cuda if present
    build_options: dict[str, Any] = field(default_factory=dict)  # torch / aoti build options (torch_common)


@dataclass
class RunReport:
    path: Path
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)


def _stage_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(path: Path, key: str) -> Any | None:
    if path.is_file():
        try:
            d = json.loads(path.read_text())
            if d.get("key") == key:
                return d["value"]
        except (json.JSONDecodeError, KeyError):
            pass
    return None


def _store(path: Path, key: str, value: Any) -> None:
    write_json(path, {"key": key, "value": value})


def _stage_split(pred_dir: Path) -> dict[str, Any] | None:
    """Throughput and per-image stage times of the predict pass that produced `pred_dir` (its summary.json)."""
    try:
        summ = json.loads((pred_dir / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    n = summ.get("written") or 0
    if not n or not summ.get("images_per_second"):
        return None
    return {"images": n, "images_per_second": summ["images_per_second"],
            "ms_per_image": {s: 1000.0 * summ["stage_seconds"].get(s, 0.0) / n for s in STAGES}}


def run_pipeline(cfg: RunConfig) -> RunReport:
    if not cfg.precisions:
        raise DeployzooError("--precisions: no precision given (e.g. fp32,int8)")
    spec = get_model(cfg.model)
    variant = spec.check_variant(cfg.variant)
    batches = cfg.batches or spec.bench_batches
    predict_batch = cfg.predict_batch or spec.predict_batch
    task = get_task(spec.task)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    demo = {"demo_images": cfg.demo_images} if cfg.demo_images else {}
    data = task.run_data(cfg.data, out / "data", cfg.gt, **demo)
    imgsz = parse_imgsz(cfg.imgsz if cfg.imgsz is not None else spec.default_imgsz[variant])
    bench_hw = parse_imgsz(cfg.bench_imgsz) if cfg.bench_imgsz else spec.bench_imgsz
    calib_set = None
    if "int8" in cfg.precisions:
        calib_dir = cfg.calib or data.calib_default
        if calib_dir is None:
            raise DeployzooError("int8 needs --calib with images separate from the evaluation set "
                                 f"({data.calib_hint})")
        _, eval_items = task_source(task, data.source)
        calib_set = make_calib_set(calib_dir, cfg.calib_size, cfg.calib_method,
                                   exclude={str(i.path.resolve()) for i in eval_items}, task=task)
    warnings = [RANDOM_WEIGHTS_WARNING] if cfg.weights is None else []

    def options(backend: str) -> dict[str, Any] | None:
        """Build options for the PyTorch backends (the eager peer gets the engines' own); ORT takes none."""
        if not backend_takes_options(backend):
            return None
        return {**cfg.build_options, **({"device": cfg.device} if cfg.device else {})}

    acc_rows, stage_rows, accuracy, engines = [], [], {}, {}
    ref_dir: Path | None = None
    for prec in cfg.precisions:
        eng = ensure_engine(spec.name, variant=variant, weights=cfg.weights, backend=cfg.backend, precision=prec,
                            imgsz=imgsz, batch=None, calib=calib_set if prec == "int8" else None, cache_dir=cache,
                            options=options(cfg.backend))
        e = engines[prec] = Engine.load(eng, verify=False)  # (predict and bench check its files when they load it)
        pred_dir = out / "predictions" / prec
        key = _stage_key({"engine": e.graph_sha256, "prec": prec, "created": e.created,
                          "data": str(data.source), "post": dict(e.post)})
        res = _cached(out / "stages" / f"eval-{prec}.json", key)
        if res is None:
            # resume an interrupted predict of this same engine and settings; any other predictions are replaced
            (pred_dir / "stage.key").unlink(missing_ok=True)  # the marker of older versions: predict keeps its own
            predict(eng, data.source, pred_dir, batch=predict_batch, formats=("jsonl", *data.pred_formats),
                    resume="auto", threads=cfg.threads, device=cfg.device)
            plot = out / f"{data.plot_name.lower()}_{prec}.png" if data.plot_name else None
            res = data.evaluate(pred_dir, plot, title=f"{spec.name} {variant} {prec}")
            _store(out / "stages" / f"eval-{prec}.json", key, res)
        accuracy[prec] = res
        stage = _stage_split(pred_dir)
        if stage:
            accuracy[prec]["end_to_end"] = stage
            stage_rows.append([f"{spec.name}-{variant}", prec, predict_batch, f"{stage['images_per_second']:.2f}",
                               *(f"{stage['ms_per_image'][s]:.1f}" for s in STAGES)])
        agree = None
        if prec == "fp32":
            ref_dir = pred_dir
        elif ref_dir is not None:
            agree = data.agreement(ref_dir, pred_dir)
        accuracy[prec]["agreement_vs_fp32"] = agree
        accuracy[prec]["agreement_metric"] = data.agreement_header
        if agree is None:
            agree_txt = "-"
        elif math.isnan(agree):  # the fp32 engine gave nothing to agree on
            agree_txt = f"n/a ({data.agreement_nan})"
        else:
            agree_txt = f"{agree:.4f}"
        acc_rows.append([f"{spec.name}-{variant}", prec, *data.accuracy_cells(res, predict_batch), agree_txt])
    # ---------------------------------------------------------------- bench
    bench_rows: list[dict[str, Any]] = []
    bench_targets = [(p, engines[p].dir) for p in cfg.precisions]
    if cfg.reference and cfg.backend != "torch":  # (a torch run's engines are the eager peer already)
        # the eager peer at fp32 and, on CUDA, at each low precision measured (autocast on the CPU is not a peer
        # anyone ships); built with the engines' own options (device, channels-last, TF32, CUDA graphs)
        from deployzoo.backends.torch_common import resolve_device

        cuda = resolve_device(cfg.device).type == "cuda"
        peer = ["fp32"] + [p for p in cfg.precisions if cuda and p in ("fp16", "bf16")]
        for i, p in enumerate(peer):
            ref_eng = ensure_engine(spec.name, variant=variant, weights=cfg.weights, backend="torch", precision=p,
                                    imgsz=imgsz, batch=None, cache_dir=cache, options=options("torch"))
            bench_targets.insert(i, (f"{p}-eager", ref_eng))
    bcfg = BenchConfig(batches=batches, iters=cfg.iters, warmup=cfg.warmup, threads=cfg.threads, device=cfg.device,
                       imgsz=None if bench_hw in (None, "origin") else tuple(bench_hw))
    for label, eng in bench_targets:
        key = _stage_key({"engine": str(eng), "created": Engine.load(eng, verify=False).created,
                          "cfg": bcfg.__dict__})
        rows = _cached(out / "stages" / f"bench-{label}.json", key)
        if rows is None:
            rows = bench_engine(eng, bcfg)
            _store(out / "stages" / f"bench-{label}.json", key, rows)
        bench_rows.extend(rows)
    plot_throughput(bench_rows, out / "throughput.png")
    # ---------------------------------------------------------------- report
    perf_rows = [[r["model"], f"{r['backend']} {r['precision']}", r["batch"], f"{r['throughput_ips']:.2f}",
                  f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", r.get("timing", "host")]
                 for r in bench_rows if r["mode"] == "engine"]
    hw = bench_rows[0]["input_hw"] if bench_rows else None
    post = dict(engines[cfg.precisions[0]].post)
    md = [f"# deployzoo run: {spec.name} {variant}", ""]
    if warnings:
        md += [f"> **WARNING: {w}**" for w in warnings] + [""]
    md += [
        "## Accuracy", f"Dataset: {data.name}. {data.settings(imgsz, post)}", "",
        md_table(["Model", "Precision", *data.accuracy_headers, data.agreement_header], acc_rows),
        "",
    ]
    if calib_set is not None:
        d = calib_set.describe()
        md += [f"int8 calibration: {d['size']} images from {d['dir']} ({d['method']}), file-list sha256 "
               f"{d['file_list_sha256'][:16]}, disjoint from the evaluation images.", ""]
    if stage_rows:
        md += ["## End-to-end on the accuracy pass",
               "Files on disk to predictions on disk (`predict`), per image: read + pre-process run in a thread pool "
               "beside inference, so stage times can sum to more than the wall time per image.", "",
               md_table(["Model", "Precision", "Batch", "img/s", *(f"{s} ms/img" for s in STAGES)], stage_rows), ""]
    md += [
        "## Throughput", f"Engine-only, input {hw[0]}x{hw[1]}, {cfg.warmup} warm-up + {cfg.iters} timed iterations per batch; "
        f"threads: {cfg.threads or 'runtime default'}. `torch ...` rows are eager PyTorch, the reference peer (same "
        "build options as the engines)." if hw else "",
        "Timing `device`: input already on the engine's device, inference only (the PyTorch-based backends); "
        "`host`: from a host array, copies in and out included (ONNX Runtime)." if hw else "",
        "", md_table(["Model", "Engine", "Batch", "Throughput (img/s)", "p50 ms", "p99 ms", "Timing"], perf_rows), "",
        "Plots: " + "".join(f"[{data.plot_name} {p}]({data.plot_name.lower()}_{p}.png), " for p in cfg.precisions
                            if data.plot_name) + "[throughput](throughput.png)", "",
    ]
    mach, ver = machine(), versions()
    md += [f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {mach['memory_gib']} GiB. Versions: "
           + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + f". Created {now_iso()}."]
    text = "\n".join(md) + "\n"
    report = {
        "model": spec.name, "variant": variant, "weights": str(cfg.weights) if cfg.weights else None,
        "warnings": warnings, "data": data.name, "imgsz": imgsz, "postprocess": post,
        "calibration": calib_set.describe() if calib_set else None,
        "accuracy": accuracy, "bench": bench_rows, "engines": {k: str(v.dir) for k, v in engines.items()},
        "machine": mach, "versions": ver, "created": now_iso(),
    }
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", text)
    return RunReport(out / "report.md", text, report)

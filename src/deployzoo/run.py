"""`deployzoo run`: export -> build per precision -> predict + eval -> bench per batch -> report, the seeds'
one-click run.sh. Every stage's result is stored under RUN_DIR keyed by content, so a re-run skips what is done."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deployzoo.bench import BenchConfig, bench_rounds
from deployzoo.cache import StageCache, cached_engine
from deployzoo.engine import RANDOM_WEIGHTS_WARNING, Engine, machine, now_iso, read_manifest, versions
from deployzoo.files import atomic_write_text, write_json
from deployzoo.errors import DeployzooError
from deployzoo.export import parse_imgsz
from deployzoo.pipeline import STAGES, StageTimes, load_engine, run_batches
from deployzoo.predict import SUMMARY_FILE, predict
from deployzoo.quant.calib import make_calib_set
from deployzoo.quant.planner import PLOT_FILE
from deployzoo.registry import backend_capabilities, get_model, get_suite, get_task
from deployzoo.request import BuildRequest, parse_float_groups
from deployzoo.suites.base import pct
from deployzoo.report import engine_rows, plot_throughput, run_markdown
from deployzoo.tasks.base import task_source
from deployzoo.weights import resolve_weights

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    model: str
    out_dir: Path
    variant: str | None = None
    weights: str | Path | None = None  # FILE, `official` or an http(s) URL (deployzoo.weights)
    weights_sha256: str | None = None  # expected sha256 (or prefix) of the weights
    precisions: tuple[str, ...] | None = None  # None: DEFAULT_PRECISIONS less those the backend does not build
    batches: tuple[int, ...] | None = None  # None: the model's seed batches
    data: str = "demo"
    gt: Path | None = None
    calib: Path | None = None
    calib_size: int = 64
    calib_method: str = "minmax"
    backend: str = "ort"
    reference: bool = True
    peers: tuple[str, ...] = ()  # other backends benchmarked beside the engines, at the precisions they build
    imgsz: str | None = None
    bench_imgsz: str | None = None
    iters: int = 20
    warmup: int = 3
    threads: int | None = None
    demo_images: int | None = None  # None: the suite's default
    predict_batch: int | None = None  # None: the model's default
    device: str | None = None  # cpu | cuda | cuda:N; None: cuda if present
    build_options: dict[str, Any] = field(default_factory=dict)  # torch / aoti build options (torch_common)
    rounds: int = 3  # interleaved benchmark rounds (bench.bench_rounds)
    rebench: bool = False  # measure the benchmark again instead of reusing RUN_DIR/stages
    no_cache: bool = False  # predict, score and measure again (engines are still reused)
    float_groups: str | tuple[str, ...] | None = None  # int8: layer groups kept float (None: the backend's default)
    max_drop: float | None = None  # int8 planned (quant/planner.py) within this drop on every backend that can
    cluster: Any = None  # a cluster.ClusterSpec: the accuracy pass's predict runs on Ray actors


@dataclass
class RunReport:
    path: Path
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)


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


@dataclass
class RunPlan:
    """What a run works with, worked out once from its RunConfig before any stage."""

    cfg: RunConfig
    spec: Any  # registry.ModelSpec
    variant: str
    data: Any  # the task's run data (evaluation suite)
    out: Path
    imgsz: Any
    bench_hw: Any
    batches: tuple[int, ...]
    predict_batch: int
    calib_set: Any | None
    warnings: list[str]
    stages: StageCache
    weights: Path | None = None  # the local checkpoint cfg.weights resolved to (None: random init)

    @property
    def label(self) -> str:
        return f"{self.spec.name}-{self.variant}"

    def options(self, backend: str) -> dict[str, Any] | None:
        """The run's build options that `backend` takes (the eager peer gets the engines' own); None if none."""
        takes = backend_capabilities(backend).options
        opts = {**self.cfg.build_options, **({"device": self.cfg.device} if self.cfg.device else {})}
        opts = {k: v for k, v in opts.items() if k in takes and v is not None}
        return opts or None

    def request(self, backend: str, precision: str) -> BuildRequest:
        return BuildRequest.create(self.spec.name, variant=self.variant, weights=self.weights, backend=backend,
                                   precision=precision, imgsz=self.imgsz, batch=None,
                                   calibration=self.calib_set if precision == "int8" else None,
                                   options=self.options(backend), float_groups=self.cfg.float_groups)

    def planned(self, backend: str, precision: str) -> bool:
        return precision == "int8" and self.cfg.max_drop is not None and backend_capabilities(backend).plans_int8

    def engine(self, backend: str, precision: str) -> Engine:
        """The cached (else exported and built; int8 planned with cfg.max_drop) engine of this run's model."""
        return cached_engine(self.request(backend, precision), self.out / "cache",
                             max_drop=self.cfg.max_drop if self.planned(backend, precision) else None)


DEFAULT_PRECISIONS = ("fp32", "int8")


def plan_run(cfg: RunConfig) -> RunPlan:
    """Check the configuration and prepare the data and calibration set; fails before any engine is built."""
    spec = get_model(cfg.model)
    variant = spec.check_variant(cfg.variant)
    caps = backend_capabilities(cfg.backend)
    notes: list[str] = []
    if cfg.precisions is None:  # the default: what this backend builds of it, said in the report
        dropped = [p for p in DEFAULT_PRECISIONS if caps.precision_problem(cfg.backend, p)]
        cfg = replace(cfg, precisions=tuple(p for p in DEFAULT_PRECISIONS if p not in dropped))
        for p in dropped:
            notes.append(f"default precision {p} left out: {caps.precision_problem(cfg.backend, p)}")
            log.warning(notes[-1])
    if not cfg.precisions:
        raise DeployzooError("--precisions: no precision given (e.g. fp32,int8)")
    for p in cfg.precisions:  # before any data is made or engine built
        problem = caps.precision_problem(cfg.backend, p)
        if problem:
            raise DeployzooError(f"--precisions {','.join(cfg.precisions)}: {problem}")
    for b in cfg.peers:  # unknown names and missing packages: one line before any work
        peer_caps = backend_capabilities(b)
        missing = peer_caps.missing()
        if missing:
            raise DeployzooError(f"--peers {b}: backend {b} needs {', '.join(missing)}")
        if not any(p in peer_caps.precisions for p in cfg.precisions):
            raise DeployzooError(f"--peers {b}: it builds none of --precisions {','.join(cfg.precisions)} "
                                 f"(it builds {', '.join(peer_caps.precisions)})")
    if cfg.max_drop is not None:
        if "int8" not in cfg.precisions:
            raise DeployzooError(f"--max-drop plans int8 engines: add int8 to --precisions {','.join(cfg.precisions)}")
        if not caps.plans_int8:
            raise DeployzooError(f"--max-drop: backend {cfg.backend} cannot keep layer groups of its int8 float")
        if not (cfg.max_drop >= 0 and math.isfinite(cfg.max_drop)):
            raise DeployzooError(f"--max-drop {cfg.max_drop}: expected points >= 0 (e.g. 0.5)")
    if cfg.float_groups is not None:
        parse_float_groups(cfg.float_groups)  # a bad group is one line before any work
    # a FILE as it is; `official` or a URL downloaded (or found in the cache) and checked, once, before any data
    weights = resolve_weights(spec, variant, cfg.weights, sha256=cfg.weights_sha256)
    task = get_task(spec.task)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = get_suite(task.suite)(cfg.data, out / "data", cfg.gt, cfg.demo_images)
    calib_set = None
    if "int8" in cfg.precisions:
        calib_dir = cfg.calib or data.calib_default
        if calib_dir is None:
            raise DeployzooError("int8 needs --calib with images separate from the evaluation set "
                                 f"({data.calib_hint})")
        _, eval_items = task_source(task, data.source)
        calib_set = make_calib_set(calib_dir, cfg.calib_size, cfg.calib_method,
                                   exclude={str(i.path.resolve()) for i in eval_items}, task=task)
    return RunPlan(
        cfg=cfg, spec=spec, variant=variant, data=data, out=out,
        imgsz=parse_imgsz(cfg.imgsz if cfg.imgsz is not None else spec.default_imgsz[variant]),
        bench_hw=parse_imgsz(cfg.bench_imgsz) if cfg.bench_imgsz else spec.bench_imgsz,
        batches=tuple(cfg.batches or spec.bench_batches), predict_batch=cfg.predict_batch or spec.predict_batch,
        calib_set=calib_set, warnings=[RANDOM_WEIGHTS_WARNING] * (weights is None) + notes,
        stages=StageCache(out / "stages"), weights=weights)


@dataclass
class AccuracyStage:
    engines: dict[str, Engine] = field(default_factory=dict)  # precision -> engine
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[list[Any]] = field(default_factory=list)  # the accuracy table
    stage_rows: list[list[Any]] = field(default_factory=list)  # end-to-end stage times of the predict passes


def warm_up(loaded: Any, source: Any, batch: int) -> None:
    """Two batches of the source through the engine, results dropped: the first calls' lazy initialisation (kernels,
    thread pools, decoders) would otherwise land in the first precision's stage times."""
    _, items = task_source(loaded.task, source)
    run_batches(loaded, items[: 2 * batch], batch=batch, on_result=lambda *a: None, on_skip=lambda *a: None,
                times=StageTimes(), workers=1)


def accuracy_stage(plan: RunPlan) -> AccuracyStage:
    """Per precision: build (or reuse) the engine, predict over the evaluation set (resuming an interrupted
    pass), score it, and measure its agreement with the fp32 engine's predictions."""
    cfg, data, res_all = plan.cfg, plan.data, AccuracyStage()
    ref_dir: Path | None = None
    for prec in cfg.precisions:
        e = res_all.engines[prec] = plan.engine(cfg.backend, prec)
        pred_dir = plan.out / "predictions" / prec

        def predict_and_score(e: Engine = e, pred_dir: Path = pred_dir, prec: str = prec) -> dict[str, Any]:
            # resume an interrupted predict of this same engine and settings; any other predictions are replaced
            (pred_dir / "stage.key").unlink(missing_ok=True)  # the marker of older versions: predict keeps its own
            if cfg.cluster is None:
                loaded: Any = load_engine(e.dir, threads=cfg.threads, device=cfg.device)
                warm_up(loaded, data.source, plan.predict_batch)  # lazy init off the stage times
            else:  # the Ray workers load it
                loaded = e.dir
            predict(loaded, data.source, pred_dir, batch=plan.predict_batch, formats=("jsonl", *data.pred_formats),
                    resume=False if cfg.no_cache else "auto", overwrite=cfg.no_cache, threads=cfg.threads,
                    device=cfg.device, cluster=cfg.cluster)
            plot = plan.out / f"{data.plot_name.lower()}_{prec}.png" if data.plot_name else None
            return data.evaluate(pred_dir, plot, title=f"{plan.spec.name} {plan.variant} {prec}")

        identity = {"engine": e.graph_sha256, "prec": prec, "created": e.created, "data": str(data.source),
                    "post": dict(e.post)}
        res = res_all.accuracy[prec] = plan.stages.get_or_compute(f"eval-{prec}", identity, predict_and_score,
                                                                  force=cfg.no_cache)
        for w in data.sample_warnings(res):  # the same for every precision: said once
            if w not in plan.warnings:
                plan.warnings.append(w)
        split = _stage_split(pred_dir)
        if split:
            res["end_to_end"] = split
            res_all.stage_rows.append([plan.label, prec, plan.predict_batch, f"{split['images_per_second']:.2f}",
                                       *(f"{split['ms_per_image'][s]:.1f}" for s in STAGES)])
        agree = None
        if prec == "fp32":
            ref_dir = pred_dir
        elif ref_dir is not None:
            agree = data.agreement(ref_dir, pred_dir)
        res["agreement_vs_fp32"] = agree
        res["agreement_metric"] = data.agreement_header
        if agree is None:
            agree_txt = "-"
        elif math.isnan(agree):  # the fp32 engine gave nothing to agree on
            agree_txt = f"n/a ({data.agreement_nan})"
        else:
            agree_txt = pct(agree)
        res_all.rows.append([plan.label, prec, *data.accuracy_cells(res, plan.predict_batch), agree_txt])
    return res_all


def bench_stage(plan: RunPlan, engines: dict[str, Engine]) -> list[dict[str, Any]]:
    """Engine-only benchmark rows of every precision's engine, the peer backends' engines at the precisions they
    build (cfg.peers) and, with cfg.reference, the eager peer."""
    cfg = plan.cfg
    targets = [(p, engines[p]) for p in cfg.precisions]
    if cfg.reference and cfg.backend != "torch":  # (a torch run's engines are the eager peer already)
        # the eager peer at fp32 and, on CUDA, at each low precision measured (autocast on the CPU is not a peer
        # anyone ships); built with the engines' own options (device, channels-last, TF32, CUDA graphs)
        from deployzoo.backends.torch_common import resolve_device

        cuda = resolve_device(cfg.device).type == "cuda"
        peer = ["fp32"] + [p for p in cfg.precisions if cuda and p in ("fp16", "bf16")]
        for i, p in enumerate(peer):
            targets.insert(i, (f"{p}-eager", plan.engine("torch", p)))
    for b in dict.fromkeys(cfg.peers):
        if b == cfg.backend or (b == "torch" and cfg.reference):
            continue  # already measured
        caps = backend_capabilities(b)
        targets.extend((f"{p}-{b}", plan.engine(b, p)) for p in cfg.precisions if p in caps.precisions)
    bcfg = BenchConfig(batches=plan.batches, iters=cfg.iters, warmup=cfg.warmup, threads=cfg.threads,
                       device=cfg.device, imgsz=None if plan.bench_hw in (None, "origin") else tuple(plan.bench_hw),
                       rounds=cfg.rounds)
    # every engine in one stage, interleaved round by round (a new peer measures them all again)
    identity = {"engines": [[str(e.dir), e.created] for _, e in targets], "cfg": bcfg.__dict__}

    def measure() -> dict[str, Any]:
        rows, load = bench_rounds([e.dir for _, e in targets], bcfg)
        return {"rows": rows, "machine_load": load}

    return plan.stages.get_or_compute("bench", identity, measure, force=cfg.rebench or cfg.no_cache)["rows"]


def int8_plans(plan: RunPlan) -> dict[str, dict[str, Any]]:
    """backend -> the int8 plan of its engine (cfg.max_drop), its plot copied into the run directory."""
    out: dict[str, dict[str, Any]] = {}
    for b in dict.fromkeys((plan.cfg.backend, *plan.cfg.peers)):
        if not plan.planned(b, "int8"):
            continue
        e = plan.engine(b, "int8")  # built already by the accuracy or bench stage
        out[b] = dict(e.manifest["int8_plan"])
        png = e.dir / PLOT_FILE
        if png.is_file():
            out[b]["plot"] = f"int8_plan_{b}.png"
            shutil.copyfile(png, plan.out / out[b]["plot"])
    return out


def run_pipeline(cfg: RunConfig) -> RunReport:
    """export -> build -> predict + eval -> bench -> report; each stage's result kept under cfg.out_dir."""
    plan = plan_run(cfg)
    cfg = plan.cfg  # the defaults filled in (precisions)
    acc = accuracy_stage(plan)
    bench_rows = bench_stage(plan, acc.engines)
    plot_throughput(bench_rows, plan.out / "throughput.png")
    post = dict(acc.engines[cfg.precisions[0]].post)
    plans = int8_plans(plan)
    used = list(dict.fromkeys([*(e.dir for e in acc.engines.values()), *(Path(r["engine"]) for r in bench_rows)]))
    mach, ver = machine(), versions()
    text = run_markdown(
        title=f"{plan.spec.name} {plan.variant}", warnings=plan.warnings, data=plan.data,
        settings=plan.data.settings(plan.imgsz, post), accuracy_rows=acc.rows,
        calibration=plan.calib_set.describe() if plan.calib_set is not None else None, stage_rows=acc.stage_rows,
        bench_rows=bench_rows, precisions=cfg.precisions, iters=cfg.iters, warmup=cfg.warmup, threads=cfg.threads,
        machine=mach, versions=ver, created=now_iso(), stages=STAGES, int8_plans=plans,
        engines=engine_rows([read_manifest(d) for d in used]),
        examples=plan.data.examples({p: plan.out / "predictions" / p for p in cfg.precisions}))
    report = {
        "model": plan.spec.name, "variant": plan.variant, "weights": str(plan.weights) if plan.weights else None,
        **({"weights_source": str(cfg.weights)} if cfg.weights and str(cfg.weights) != str(plan.weights) else {}),
        "warnings": plan.warnings, "data": plan.data.name, "imgsz": plan.imgsz, "postprocess": post,
        "calibration": plan.calib_set.describe() if plan.calib_set else None,
        "accuracy": acc.accuracy, "bench": bench_rows, "int8_plans": plans, "engines": {k: str(v.dir) for k, v in acc.engines.items()},
        "machine": mach, "versions": ver, "created": now_iso(),
    }
    write_json(plan.out / "report.json", report)
    atomic_write_text(plan.out / "report.md", text)
    return RunReport(plan.out / "report.md", text, report)

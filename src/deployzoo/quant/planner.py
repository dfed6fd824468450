"""int8 chosen by measurement: the fastest mix of int8 and float layer groups whose agreement with the fp32 engine
stays within a stated drop, measured on this machine.

`plan_int8(graph, out_dir, request, max_drop)`:
1. the calibration images are split: every 4th is held out (never calibrated on), the rest calibrate;
2. the fp32 engine of the same backend is built; its records on the held-out images are the reference, and its
   engine-only speed the baseline;
3. trials, each an int8 build with some groups of convolutions kept float (quant/recipes.py groups): everything
   int8, then each group alone kept float, which ranks the groups by sensitivity (how much of the all-int8 drop
   keeping it float wins back), then the most sensitive groups kept float together, one more at a time, until a
   mix is within the drop; and the model's own recipe (its registry entry) as a starting point;
4. the drop of a trial is 100 x (1 - the task's agreement with the fp32 records) on the held-out images
   (Task.agreement: top-1 agreement, AP against fp32's confident detections, embedding cosine, box AP);
5. once every trial is built, fp32 and the trials are timed in interleaved rounds (each engine once per round,
   engine-only img/s at the planning batch; the median round counts), so a slow minute of the machine does not
   favour the trials built before or after it;
6. the fastest trial within the drop is built into `out_dir`, with every trial in its manifest (`int8_plan`) and
   a speed-vs-drop plot (int8_plan.png). If no trial is within the drop, nothing is written and the error says
   which came closest; if the chosen mix is not faster than fp32, the manifest and the log say so in one line.

Backends whose int8 builds keep a recipe's float groups float (Capabilities.plans_int8: ORT through its recipe,
OpenVINO through NNCF's ignored scope) can be planned; the others build int8 their own way and are refused in
one line.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from deployzoo.bench import BenchConfig, bench_rounds
from deployzoo.build import build
from deployzoo.engine import Engine, is_engine_dir
from deployzoo.errors import DeployzooError
from deployzoo.files import check_output_dir
from deployzoo.pipeline import StageTimes, load_engine, run_batches
from deployzoo.quant import recipes
from deployzoo.quant.calib import CalibSet
from deployzoo.registry import backend_names, get_backend, get_model, get_task
from deployzoo.request import BuildRequest, Calibration, Graph, Recipe

log = logging.getLogger(__name__)

MIN_IMAGES = 8  # a quarter held out: at least 2 images to compare on, 6 to calibrate
BENCH = dict(iters=10, warmup=3, min_seconds=0.5)  # per engine and round: >= 10 iterations and 0.5 s
ROUNDS = 3
PLOT_FILE = "int8_plan.png"
# tasks whose agreement counts images (top-1 agreement): one image is 100 / n points of drop
PER_IMAGE_AGREEMENT = ("classification",)


@dataclass
class Trial:
    float_groups: tuple[str, ...]
    why: str  # all int8 / sensitivity of one group / most sensitive together / the model's recipe
    drop: float  # points: 100 x (1 - agreement with fp32) on the held-out images
    ips: float  # engine-only img/s
    vs_fp32: float  # ips / fp32's ips
    build_seconds: float
    chosen: bool = False


def split_calibration(cs: CalibSet) -> tuple[CalibSet, CalibSet]:
    """(calibrate, held out): every 4th image held out."""
    if len(cs.items) < MIN_IMAGES:
        raise DeployzooError(f"{cs.root}: the int8 planner needs at least {MIN_IMAGES} calibration images (a quarter "
                             f"is held out to measure the drop), got {len(cs.items)}: raise --calib-size")
    held = [it for k, it in enumerate(cs.items) if k % 4 == 3]
    cal = [it for k, it in enumerate(cs.items) if k % 4 != 3]
    return replace(cs, items=cal), replace(cs, items=held)


def engine_records(engine: Engine, items: list[Any]) -> list[dict[str, Any]]:
    """The task's records of `items` through the engine, in their order (batch 1, as predict would make them)."""
    got: list[dict[str, Any]] = []
    skipped: list[str] = []
    run_batches(load_engine(engine.dir), items, batch=1, on_result=lambda it, img, rec: got.append(rec),
                on_skip=lambda it, why: skipped.append(f"{it.name}: {why}"), times=StageTimes(), workers=2)
    if skipped:
        raise DeployzooError(f"int8 planner: held-out calibration images unusable ({skipped[0]})")
    return got  # run_batches yields in source order


def speeds(engines: list[Engine], batch: int, rounds: int = ROUNDS) -> list[float]:
    """Engine-only img/s of each engine: the median of `rounds` interleaved rounds (bench.bench_rounds)."""
    rows, _ = bench_rounds([e.dir for e in engines], BenchConfig(batches=(batch,), rounds=rounds, **BENCH))
    by_dir = {r["engine"]: float(r["throughput_ips"]) for r in rows}
    return [by_dir[str(e.dir)] for e in engines]


def available_groups(graph: Graph, recipe_groups: tuple[str, ...]) -> list[str]:
    """The float groups that name at least one convolution of this graph (recipes.FLOAT_GROUPS and the recipe's
    own, e.g. `early:27`)."""
    model = onnx.load(str(graph.path), load_external_data=False)
    recipes.name_nodes(model)
    out = []
    for g in dict.fromkeys((*recipes.FLOAT_GROUPS, *recipe_groups)):
        if any(recipes.float_nodes(model, (g,)).values()):
            out.append(g)
    return out


def plan_int8(graph: Graph, out_dir: str | Path, request: BuildRequest, max_drop: float) -> Engine:
    out_dir = Path(out_dir)
    check_output_dir(out_dir, is_engine_dir, "deployzoo engine directory")  # before minutes of trials
    if request.precision != "int8":
        raise DeployzooError(f"--max-drop plans int8 builds (this one is {request.precision})")
    if not (max_drop >= 0 and math.isfinite(max_drop)):
        raise DeployzooError(f"--max-drop {max_drop}: expected points >= 0 (e.g. 0.5)")
    caps = get_backend(request.backend).capabilities
    if not caps.plans_int8:
        can = [b for b in backend_names() if get_backend(b).capabilities.plans_int8]
        raise DeployzooError(f"--max-drop: the int8 planner varies which layer groups stay float; backend "
                             f"{request.backend} builds int8 its own way (plan with --backend {' or '.join(can)})")
    task = get_task(graph.task)
    calib = request.calibration.resolve(task)
    cal, held = split_calibration(calib.images)
    work = out_dir.parent / f".{out_dir.name}.plan"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    batch = graph.batch.default()
    try:
        fp32 = build(graph, work / "fp32", replace(request, precision="fp32", calibration=None))
        ref = engine_records(fp32, held.items)
        if math.isnan(task.agreement(ref, ref)):
            raise DeployzooError(f"{calib.images.root}: the fp32 engine finds nothing to compare on the "
                                 f"{len(held.items)} held-out calibration images (no confident detection); give "
                                 "calibration images with the objects the model detects")
        trials: list[Trial] = []
        built: list[Engine] = []

        def trial(groups: tuple[str, ...], why: str) -> Trial:
            for t in trials:
                if set(t.float_groups) == set(groups):
                    return t
            t0 = time.perf_counter()
            r = replace(request, calibration=Calibration.of_set(cal),
                        recipe=replace(request.recipe, float_groups=tuple(groups)))
            eng = build(graph, work / f"trial{len(trials)}", r)
            secs = time.perf_counter() - t0
            agree = task.agreement(ref, engine_records(eng, held.items))
            drop = 100.0 * (1.0 - agree) if not math.isnan(agree) else 100.0
            t = Trial(tuple(groups), why, drop, math.nan, math.nan, round(secs, 2))
            trials.append(t)
            built.append(eng)
            log.info("int8 plan: float [%s] drop %.2f", ", ".join(groups), drop)
            return t

        registry = Recipe.for_model(get_model(graph.model), graph.variant).float_groups  # ORT's starting point
        groups = available_groups(graph, (*request.recipe.float_groups, *registry))
        all8 = trial((), "all int8")
        singles = {g: trial((g,), "one group float (sensitivity)") for g in groups}
        order = sorted(groups, key=lambda g: all8.drop - singles[g].drop, reverse=True)
        if all8.drop > max_drop and not any(t.drop <= max_drop for t in singles.values()):
            for k in range(2, len(order) + 1):
                if trial(tuple(order[:k]), "most sensitive groups float").drop <= max_drop:
                    break
        for start, why in ((registry, "the model's recipe"), (request.recipe.float_groups, "the request's float groups")):
            if start:
                trial(tuple(start), why)
        log.info("int8 plan: timing fp32 and %d trials in %d interleaved rounds", len(trials), ROUNDS)
        base, *ips = speeds([fp32, *built], batch)
        for t, v in zip(trials, ips):
            t.ips, t.vs_fp32 = v, v / base
        step = 100.0 / len(held.items) if graph.task in PER_IMAGE_AGREEMENT else None  # one image's worth
        coarse = (f" (one of the {len(held.items)} held-out images is {step:.2f} points: more calibration images "
                  "make the measure finer)") if step and max_drop < step else ""
        ok = [t for t in trials if t.drop <= max_drop]
        if not ok:
            best = min(trials, key=lambda t: t.drop)
            raise DeployzooError(f"--max-drop {max_drop}: no int8 mix stays within it on this machine (closest: float "
                                 f"[{', '.join(best.float_groups)}], drop {best.drop:.2f}){coarse}; ship fp32 or "
                                 "allow more")
        chosen = max(ok, key=lambda t: t.ips)
        chosen.chosen = True
        beats = chosen.vs_fp32 > 1.0
        verdict = (f"int8 plan: float [{', '.join(chosen.float_groups)}], drop {chosen.drop:.2f} <= {max_drop}, "
                   f"x{chosen.vs_fp32:.2f} fp32's speed" + ("" if beats else
                                                           " (no int8 mix within the drop beats fp32 here)") + coarse)
        if beats:
            log.info(verdict)
        else:
            log.warning(verdict)
        plan = {"max_drop": max_drop, "metric": f"100 x (1 - {graph.task} agreement with fp32)",
                "held_out_images": len(held.items), "calibration_images": len(cal.items), "batch": batch,
                "fp32_ips": base, "timing_rounds": ROUNDS, "drop_step": step, "beats_fp32": beats, "verdict": verdict,
                "trials": [asdict(t) | {"float_groups": list(t.float_groups)} for t in trials]}
        final = replace(request, calibration=Calibration.of_set(cal),
                        recipe=replace(request.recipe, float_groups=chosen.float_groups))
        return build(graph, out_dir, final, extra_manifest={"int8_plan": plan},
                     extra_files=lambda d: plot_plan(plan, d / PLOT_FILE))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plot_plan(plan: dict[str, Any], path: str | Path) -> Path:
    """Speed (x fp32) against drop of every tried mix, the allowed drop dashed, the chosen mix ringed."""
    from deployzoo.report import new_figure, save_figure

    fig, ax = new_figure((6, 4))
    ts = plan["trials"]
    ax.scatter([t["drop"] for t in ts], [t["vs_fp32"] for t in ts], color="tab:blue", zorder=3)
    for t in ts:
        ax.annotate(", ".join(t["float_groups"]) or "all int8", (t["drop"], t["vs_fp32"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
        if t["chosen"]:
            ax.scatter([t["drop"]], [t["vs_fp32"]], s=160, facecolors="none", edgecolors="tab:red", zorder=4,
                       label="chosen")
    ax.axvline(plan["max_drop"], color="tab:gray", linestyle="--", label=f"max drop {plan['max_drop']}")
    ax.axhline(1.0, color="tab:gray", linestyle=":", label="fp32 speed")
    ax.set_xlabel(f"drop (points): {plan['metric']}, {plan['held_out_images']} held-out images")
    ax.set_ylabel(f"img/s / fp32's ({plan['fp32_ips']:.1f})")
    ax.set_title("int8 mixes tried: speed vs drop")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)

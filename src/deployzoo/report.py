"""Markdown / JSON tables and PNG plots for bench and run results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1.5 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def spread_cell(r: dict[str, Any]) -> str:
    """min-max img/s over the interleaved rounds ('-' for one round)."""
    if r.get("rounds", 1) < 2:
        return "-"
    return f"{r['throughput_min']:.1f}-{r['throughput_max']:.1f}"


def noise_note(rows: list[dict[str, Any]]) -> str:
    """The rows measured while the machine was noisy, in one sentence ('' when none)."""
    noisy = [f"{r['backend']} {r['precision']} bs{r['batch']} ({r['noise']})" for r in rows if r.get("noise")]
    return ("**Noisy:** " + "; ".join(noisy) + ". Differences smaller than the spread are not findings.") if noisy else ""


def throughput_table(rows: list[dict[str, Any]]) -> str:
    eng = [r for r in rows if r["mode"] == "engine"]
    body = [
        [r["model"], r["backend"], r["precision"], r["batch"], "x".join(map(str, r["input_hw"])), r.get("streams", 1),
         r.get("timing", "host"), round(r["throughput_ips"], 1), spread_cell(r), f"{r['p50_ms']:.1f}",
         f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}", r["iters"], r["engine_peak_rss_mib"],
         "yes" if r.get("noise") else ""]
        for r in eng
    ]
    return md_table(["Model", "Backend", "Precision", "Batch", "Input", "Streams", "Timing", "Throughput (img/s)",
                     "min-max over rounds", "p50 ms", "p90 ms", "p99 ms", "max ms", "iters", "engine RSS MiB",
                     "noisy"], body)


TIMING_TEXT = {
    "device": "`device` = one `run_tensors` call on an input already on the engine's device (CUDA events on the "
              "worker's stream on a GPU, wall clock + synchronize on the CPU): inference only",
    "host": "`host` = one `runner.run` on a host array (copy in, inference, copy out)",
}


GPU_FACTS = (("compute_capability", "sm {}"), ("total_memory_mib", "{} MiB"), ("driver_version", "driver {}"),
             ("cuda_runtime", "CUDA {}"), ("cudnn", "cuDNN {}"), ("sm_clock_mhz", "SM clock {} MHz"),
             ("sm_clock_max_mhz", "max {} MHz"), ("mem_clock_mhz", "memory clock {} MHz"),
             ("power_limit_w", "power limit {} W"), ("temperature_c", "{} C"), ("persistence_mode", "persistence {}"))


def gpu_line(g: dict[str, Any]) -> str:
    """One line of GPU facts (bench's `gpu` / a row's `device_info`); "" without a GPU."""
    if not g.get("name"):
        return ""
    return f"GPU: {g['name']} (" + ", ".join(fmt.format(g[k]) for k, fmt in GPU_FACTS if g.get(k) is not None) + ")."


def timed_text(result: dict[str, Any]) -> str:
    cfg, eng = result["config"], [r for r in result["rows"] if r["mode"] == "engine"]
    modes = sorted({r.get("timing", "host") for r in eng} & set(TIMING_TEXT))
    rounds = cfg.get("rounds", 1)
    text = (f"Timed: each iteration is {'; '.join(TIMING_TEXT[t] for t in modes) or 'one engine call'}. "
            f"{cfg['warmup']} warm-up iterations, then at least {cfg['iters']} timed per stream"
            + (f", in {rounds} interleaved rounds (every engine once per round; the median round is shown)"
               if rounds > 1 else "") + ". Latency is per batch")
    if any(r.get("streams", 1) > 1 for r in eng):
        text += (" and per request over all streams; with N streams, N threads (one CUDA stream each on a GPU) run at "
                 "once from a barrier and throughput is all images over the wall time of the concurrent section")
    return text + (f". Threads: {cfg['threads'] or 'runtime default'}. Original-size engines are fed "
                   f"{cfg['imgsz_for_origin_engines'][0]}x{cfg['imgsz_for_origin_engines'][1]}.")


def e2e_table(rows: list[dict[str, Any]]) -> str:
    e2e = [r for r in rows if r["mode"] == "e2e"]
    if not e2e:
        return ""
    body = [
        [r["model"], r["backend"], r["precision"], r["batch"], r.get("pipeline", "host"), r["images"],
         round(r["throughput_ips"], 1),
         *(f"{r.get(f'{s}_ms_per_img', 0.0):.1f}" for s in ("read", "decode", "pre", "infer", "post"))]
        for r in e2e
    ]
    return md_table(["Model", "Backend", "Precision", "Batch", "Pipeline", "Images", "e2e img/s", "read ms/img",
                     "decode ms/img", "pre ms/img", "infer ms/img", "post ms/img"], body)


def bench_markdown(result: dict[str, Any]) -> str:
    mach, ver = result["machine"], result["versions"]
    parts = [
        "## Throughput and latency (engine only)",
        throughput_table(result["rows"]),
        "",
        timed_text(result),
    ]
    noise = noise_note(result["rows"])
    if noise:
        parts += ["", noise]
    e2e = e2e_table(result["rows"])
    if e2e:
        parts += ["", "## End to end (files -> predictions)", e2e, "",
                  "Host pipeline: read, decode and pre run in a thread pool overlapped with infer. Device pipeline: read "
                  "in reader threads, decode and pre on the device in a producer thread overlapped with infer and post. "
                  "Per-image times are summed over threads, so they can add up to more than the wall time."]
    warns = sorted({w for r in result["rows"] for w in r.get("warnings", [])})
    if warns:
        parts += ["", "**Warnings:** " + "; ".join(warns)]
    # per engine, read after its timed loops (clocks and temperature under load); else the one bench() read first
    gpus = [g for g in dict.fromkeys(gpu_line(r.get("device_info") or {}) for r in result["rows"]) if g]
    gpus = gpus or [g for g in [gpu_line(result.get("gpu") or {})] if g]
    if gpus:
        parts += ["", *gpus]
    parts += ["", f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {mach['memory_gib']} GiB. "
              f"Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + f". {result['created']}"]
    return "\n".join(parts) + "\n"


def new_figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """(figure, axes) drawn off-screen with the Agg canvas; no global matplotlib state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out and write `fig` as a PNG at `path` (parent directories created)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_throughput(rows: list[dict[str, Any]], path: str | Path) -> Path:
    fig, ax = new_figure((6, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["mode"] != "engine":
            continue
        series.setdefault(f"{r['model']} {r['backend']} {r['precision']}", []).append((r["batch"], r["throughput_ips"]))
    for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (img/s)")
    ax.set_title("Throughput vs batch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def int8_plan_table(plan: dict[str, Any]) -> str:
    """The int8 planner's tried mixes (an engine manifest's `int8_plan`) as a markdown table."""
    rows = [[", ".join(t["float_groups"]) or "(none: all int8)", t["why"], f"{t['drop']:.2f}", f"{t['ips']:.1f}",
             f"{t['vs_fp32']:.2f}", "yes" if t["chosen"] else ""] for t in plan["trials"]]
    return md_table(["float groups", "why tried", "drop (points)", "img/s", "x fp32", "chosen"], rows)


def engine_rows(manifests: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per engine a run used: how long it took to build and what it reports about itself (parity with eager
    PyTorch and compile time for aoti, the precision OpenVINO runs, how int8 was quantized)."""
    rows = []
    for m in manifests:
        comp, notes = m.get("compile") or {}, []
        secs = m.get("build_seconds")
        if comp:
            secs = round(float(comp.get("export_seconds", 0)) + float(comp.get("compile_seconds", 0)), 2)
            notes.append(f"export {comp.get('export_seconds')} s + compile {comp.get('compile_seconds')} s")
        parity = m.get("parity_vs_eager")
        if parity:
            notes.append("max abs diff vs eager: " + ", ".join(f"{k} {v:.2g}" for k, v in parity.items()))
        ov = m.get("openvino") or {}
        if ov.get("inference_precision"):
            runs = "float parts run" if m["precision"] == "int8" else "runs"
            notes.append(f"{runs} {ov['inference_precision']} ({ov.get('performance_hint') or 'default'} hint)")
        q = m.get("quantization") or {}
        if q:
            what = q.get("method") or (f"{q['format']}, {q.get('int8_convs')} of {q.get('total_convs')} convolutions "
                                       "int8" if q.get("format") else q.get("tool") or "quantized")
            groups = q.get("float_groups")
            notes.append(f"int8: {what}" + (f", float groups {', '.join(groups)}" if groups else ""))
        if m.get("int8_plan"):
            notes.append(f"planned: {m['int8_plan']['verdict']}")
        rows.append([f"{m['backend']} {m['precision']}", "-" if secs is None else f"{float(secs):.1f}",
                     "; ".join(notes) or "-"])
    return rows


def run_markdown(*, title: str, warnings: list[str], data: Any, settings: str, accuracy_rows: list[list[Any]],
                 calibration: dict[str, Any] | None, stage_rows: list[list[Any]], bench_rows: list[dict[str, Any]],
                 precisions: Sequence[str], iters: int, warmup: int, threads: int | None, machine: dict[str, Any],
                 versions: dict[str, str], created: str, stages: Sequence[str],
                 int8_plans: dict[str, dict[str, Any]] | None = None,
                 engines: list[list[Any]] | None = None, examples: Sequence[str] = ()) -> str:
    """report.md of `deployzoo run`: accuracy per precision, end-to-end stage times (`stages`: the pipeline's
    stage names, the columns of stage_rows), engine throughput, machine."""
    md = [f"# deployzoo run: {title}", ""]
    if warnings:
        md += [f"> **WARNING: {w}**" for w in warnings] + [""]
    md += [
        "## Accuracy", f"Dataset: {data.name}. {settings}", "",
        md_table(["Model", "Precision", *data.accuracy_headers, f"{data.agreement_header} (%)"], accuracy_rows),
        "", f"{data.agreement_header[:1].upper()}{data.agreement_header[1:]}: {data.agreement_definition}. "
        "Accuracy and agreement are percentages (report.json keeps the protocols' fractions)"
        + ("; an int8 plan's drop is in points of the agreement." if int8_plans else "."), "",
    ]
    md += list(examples)
    if calibration is not None:
        d = calibration
        md += [f"int8 calibration: {d['size']} images from {d['dir']} ({d['method']}), file-list sha256 "
               f"{d['file_list_sha256'][:16]}, disjoint from the evaluation images.", ""]
    if stage_rows:
        md += ["## End-to-end on the accuracy pass",
               "Files on disk to predictions on disk (`predict`), per image: read + pre-process run in a thread pool "
               "beside inference, so stage times can sum to more than the wall time per image.", "",
               md_table(["Model", "Precision", "Batch", "img/s", *(f"{s} ms/img" for s in stages)], stage_rows), ""]
    eng_rows = [r for r in bench_rows if r["mode"] == "engine"]
    perf_rows = [[r["model"], f"{r['backend']} {r['precision']}", r["batch"], f"{r['throughput_ips']:.2f}",
                  f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", r.get("timing", "host"), spread_cell(r),
                  "yes" if r.get("noise") else ""] for r in eng_rows]
    hw = bench_rows[0]["input_hw"] if bench_rows else None
    rounds = max((r.get("rounds", 1) for r in eng_rows), default=1)
    when = sorted(r["measured"] for r in eng_rows if r.get("measured"))
    md += [
        "## Throughput", f"Engine-only, input {hw[0]}x{hw[1]}, {warmup} warm-up + {iters} timed iterations per batch"
        + (f", {rounds} interleaved rounds (every engine once per round; the median round shown)" if rounds > 1 else "")
        + f"; threads: {threads or 'runtime default'}. `torch ...` rows are eager PyTorch, the reference peer (same "
        "build options as the engines)." + (f" Measured {when[0]}" + (f" to {when[-1]}" if when[-1] != when[0] else "")
                                            + " (kept in RUN_DIR/stages: `--rebench` measures again)." if when else "")
        if hw else "",
        "Timing `device`: input already on the engine's device, inference only (the PyTorch-based backends); "
        "`host`: from a host array, copies in and out included (ONNX Runtime, OpenVINO)." if hw else "",
        "", md_table(["Model", "Engine", "Batch", "Throughput (img/s)", "p50 ms", "p99 ms", "Timing",
                      "min-max over rounds", "noisy"], perf_rows), "",
        *([noise_note(eng_rows), ""] if noise_note(eng_rows) else []),
        "Plots: " + "".join(f"[{data.plot_name} {p}]({data.plot_name.lower()}_{p}.png), " for p in precisions
                            if data.plot_name) + "[throughput](throughput.png)", "",
    ]
    if engines:
        md += ["## Engines", "Build time and what each engine's manifest says about it.", "",
               md_table(["Engine", "Built in (s)", "Notes"], engines), ""]
    for backend, plan in (int8_plans or {}).items():
        md += [f"## int8 plan ({backend}, --max-drop {plan['max_drop']})",
               f"Drop = {plan['metric']} on {plan['held_out_images']} held-out calibration images (never calibrated "
               f"on; the engine is calibrated on the other {plan['calibration_images']}). Speed: engine-only img/s "
               f"at batch {plan['batch']}, median of {plan.get('timing_rounds', 1)} interleaved rounds; fp32 "
               f"{plan['fp32_ips']:.1f} img/s.", "", int8_plan_table(plan), "", plan["verdict"] + ".",
               *(["", f"![speed vs drop]({plan['plot']})"] if plan.get("plot") else []), ""]
    md += [f"Machine: {machine['cpu']}, {machine['affinity_cores']} cores, {machine['memory_gib']} GiB. Versions: "
           + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform") + f". Created {created}."]
    return "\n".join(md) + "\n"

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


def throughput_table(rows: list[dict[str, Any]]) -> str:
    eng = [r for r in rows if r["mode"] == "engine"]
    body = [
        [r["model"], r["backend"], r["precision"], r["batch"], "x".join(map(str, r["input_hw"])),
         round(r["throughput_ips"], 1), f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}",
         f"{r['max_ms']:.1f}", r["iters"], r["engine_peak_rss_mib"]]
        for r in eng
    ]
    return md_table(["Model", "Backend", "Precision", "Batch", "Input", "Throughput (img/s)", "p50 ms", "p90 ms",
                     "p99 ms", "max ms", "iters", "engine RSS MiB"], body)


def e2e_table(rows: list[dict[str, Any]]) -> str:
    e2e = [r for r in rows if r["mode"] == "e2e"]
    if not e2e:
        return ""
    body = [
        [r["model"], r["backend"], r["precision"], r["batch"], r["images"], round(r["throughput_ips"], 1),
         f"{r['read_ms_per_img']:.1f}", f"{r['pre_ms_per_img']:.1f}", f"{r['infer_ms_per_img']:.1f}",
         f"{r['post_ms_per_img']:.1f}"]
        for r in e2e
    ]
    return md_table(["Model", "Backend", "Precision", "Batch", "Images", "e2e img/s", "read ms/img", "pre ms/img",
                     "infer ms/img", "post ms/img"], body)


def bench_markdown(result: dict[str, Any]) -> str:
    mach, ver, cfg = result["machine"], result["versions"], result["config"]
    parts = [
        "## Throughput and latency (engine only)",
        throughput_table(result["rows"]),
        "",
        f"Timed: each iteration is one `runner.run` on a host array (copy in, inference, copy out); "
        f"{cfg['warmup']} warm-up iterations, then at least {cfg['iters']} timed. Latency is per batch. "
        f"Threads: {cfg['threads'] or 'runtime default'}. Original-size engines are fed "
        f"{cfg['imgsz_for_origin_engines'][0]}x{cfg['imgsz_for_origin_engines'][1]}.",
    ]
    e2e = e2e_table(result["rows"])
    if e2e:
        parts += ["", "## End to end (files -> predictions)", e2e, "",
                  "read and pre run in a thread pool overlapped with infer; their per-image times are summed over threads."]
    warns = sorted({w for r in result["rows"] for w in r.get("warnings", [])})
    if warns:
        parts += ["", "**Warnings:** " + "; ".join(warns)]
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

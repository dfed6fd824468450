"""OpenVINO against our ONNX Runtime engines on this CPU (issue 14, first measurements of the openvino backend).

MobileNetV1 x0.25 (released ImageNet weights) at batch 1 and 32, and RetinaFace-mnet (released weights) at
640 x 640, batch 1 and 8: ORT fp32 / int8 (our per-variant recipe) and OpenVINO fp32 (f32 forced) / bf16 / int8
(NNCF default), each with the LATENCY hint, plus OpenVINO fp32 / int8 with the THROUGHPUT hint. Engine-only
throughput in interleaved rounds (every engine once per round; the median round is reported with the min-max
spread), top-1 / top-5 of every MobileNetV1 engine on the 1300 val_227 images. int8 of both backends is calibrated
on the same 128 COCO128 photos (minmax; disjoint from val_227).

usage: python benchmarks/cpu_openvino.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.cache import ensure_engine
from deployzoo.data.imagenet import read_labels
from deployzoo.engine import machine, now_iso, versions
from deployzoo.metrics.classification import evaluate, read_predictions
from deployzoo.predict import predict
from deployzoo.quant.calib import make_calib_set
from deployzoo.report import md_table

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/benchmarks")
ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ap.add_argument("--cache", default=None)
ap.add_argument("--rounds", type=int, default=3)
args = ap.parse_args()
fx = Path(args.fixtures)
cache = Path(args.cache or tempfile.mkdtemp(prefix="dz-ov-"))
THREADS = 2
calib = make_calib_set(fx / "coco128" / "images", 128, "minmax")
ENGINES = [("ort", "fp32", None), ("ort", "int8", None), ("openvino", "fp32", None), ("openvino", "bf16", None),
           ("openvino", "int8", None), ("openvino", "fp32", "throughput"), ("openvino", "int8", "throughput")]
MODELS = {
    "MobileNetV1 x0.25": dict(model="mobilenetv1", variant="x0.25", weights=fx / "retinaface" /
                              "mobilenetV1X0.25_pretrain.tar", imgsz=[224, 224], batches=(1, 32), iters=30),
    "RetinaFace-mnet 640": dict(model="retinaface", variant="mobilenet0.25", weights=fx / "retinaface" /
                                "mobilenet0.25_Final.pth", imgsz=[640, 640], batches=(1, 8), iters=15),
}


def label(backend: str, prec: str, hint: str | None) -> str:
    return f"{backend} {prec}" + (f" ({hint})" if hint else "")


engines = {}
for name, m in MODELS.items():
    for backend, prec, hint in ENGINES:
        engines[name, label(backend, prec, hint)] = ensure_engine(
            m["model"], variant=m["variant"], weights=m["weights"], backend=backend, precision=prec, imgsz=m["imgsz"],
            batch=None, calib=calib if prec == "int8" else None, cache_dir=cache,
            options={"perf_hint": hint} if hint else None)

runs: dict[tuple[str, str, int], list[dict]] = {}
for rnd in range(args.rounds):
    for (name, lab), eng in engines.items():
        m = MODELS[name]
        for r in bench_engine(eng, BenchConfig(batches=m["batches"], iters=m["iters"], warmup=3, threads=THREADS)):
            runs.setdefault((name, lab, r["batch"]), []).append(r)
            print(f"round {rnd + 1}: {name} {lab} bs{r['batch']}: {r['throughput_ips']:.1f} img/s", flush=True)

perf, rows = [], []
for (name, lab, bs), rs in runs.items():
    ips = [r["throughput_ips"] for r in rs]
    med = statistics.median(ips)
    ref = statistics.median(x["throughput_ips"] for x in runs[name, "ort fp32", bs])
    perf.append([name, lab, bs, f"{med:.1f}", f"{min(ips):.1f}-{max(ips):.1f}", f"{med / ref:.2f}",
                 f"{statistics.median(r['p50_ms'] for r in rs):.2f}"])
    rows.append({"model": name, "engine": lab, "batch": bs, "ips": ips, "rounds": rs})

labels = read_labels(fx / "imagenet" / "val_227" / "val.txt")
acc = []
for (name, lab), eng in engines.items():
    if not name.startswith("MobileNet"):
        continue
    out = cache / "pred" / lab.replace(" ", "_").replace("(", "").replace(")", "")
    predict(eng, fx / "imagenet" / "val_227" / "images", out, batch=32, overwrite=True, threads=THREADS,
            show_progress=False)
    res = evaluate(read_predictions(out), labels)
    acc.append([lab, f"{100 * res.top1:.2f}", f"{100 * res.top5:.2f}", res.n])
    print(f"{lab}: top-1 {100 * res.top1:.2f}", flush=True)

mach, ver = machine(), versions()
md = "\n".join([
    md_table(["Model", "Engine", "Batch", "img/s (median)", "min-max over rounds", "x ort fp32", "p50 ms"], perf), "",
    md_table(["MobileNetV1 x0.25 engine", "top-1 %", "top-5 %", "images"], acc), "",
    f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {THREADS} runtime threads, {args.rounds} interleaved "
    "rounds. Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform")
    + f". Created {now_iso()}. int8 calibration: 128 COCO128 images (minmax), file-list sha256 "
    f"{calib.describe()['file_list_sha256'][:16]}.",
])
print(md)
Path(args.out).mkdir(parents=True, exist_ok=True)
(Path(args.out) / "cpu_openvino_tables.md").write_text(md + "\n")
(Path(args.out) / "cpu_openvino.json").write_text(json.dumps({"bench": rows, "accuracy": acc, "machine": mach,
                                                              "versions": ver}, indent=1, default=str))

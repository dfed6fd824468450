"""The classifier CPU benchmark of docs/benchmarks/cpu.md: MobileNetV1 x0.25 (released ImageNet weights) at
batch 1 / 32, eager PyTorch vs ORT fp32 vs ORT int8, and top-1 / top-5 of each precision on the 1300 real
ImageNet val images of the fixtures (val_227); VOLO-D2 224 (random weights: its checkpoint is not on these
machines) at batch 1 / 8, same engines, with the top-1 agreement of int8 with fp32 on the first 128 val_227
images. int8 is calibrated on the COCO128 photos (disjoint): all 128 with --calib-method (default percentile) for
MobileNetV1, 32 with minmax for VOLO-D2 (ORT's percentile / entropy calibrators keep every activation of every
calibration image in memory: 128 images of VOLO-D2 exceed 24 GiB).

usage: python benchmarks/cpu_classifier.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
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
ap.add_argument("--calib-method", default="percentile")
args = ap.parse_args()
fx = Path(args.fixtures)
cache = Path(args.cache or tempfile.mkdtemp(prefix="dz-bench-"))
THREADS = 2
weights = fx / "retinaface" / "mobilenetV1X0.25_pretrain.tar"
val = fx / "imagenet" / "val_227"
labels = read_labels(val / "val.txt")
calib = make_calib_set(fx / "coco128" / "images", 128, args.calib_method)
rows, acc = [], []
for backend, prec in [("torch", "fp32"), ("ort", "fp32"), ("ort", "int8")]:
    eng = ensure_engine("mobilenetv1", variant="x0.25", weights=weights, backend=backend, precision=prec,
                        imgsz=[224, 224], batch=None, calib=calib if prec == "int8" else None, cache_dir=cache)
    for r in bench_engine(eng, BenchConfig(batches=(1, 32), iters=30, warmup=3, threads=THREADS)):
        rows.append(r)
        print(f"{backend} {prec} bs{r['batch']}: {r['throughput_ips']:.1f} img/s", flush=True)
    out = cache / "pred" / f"{backend}-{prec}"
    predict(eng, val / "images", out, batch=32, overwrite=True, threads=THREADS, show_progress=False)
    res = evaluate(read_predictions(out), labels)
    acc.append([f"{backend} {prec}" + (" (eager)" if backend == "torch" else ""), f"{100 * res.top1:.2f}",
                f"{100 * res.top5:.2f}", res.n])
# VOLO-D2: speed, and int8 vs fp32 agreement (random weights)
from deployzoo.metrics.classification import read_predictions as _rp  # noqa: E402

vcalib = make_calib_set(fx / "coco128" / "images", 32, "minmax")
sub = cache / "val128"
if not sub.is_dir():
    sub.mkdir(parents=True)
    for name in sorted(labels)[:128]:
        (sub / name).symlink_to((val / "images" / name).resolve())
vpred = {}
for backend, prec in [("torch", "fp32"), ("ort", "fp32"), ("ort", "int8")]:
    eng = ensure_engine("volo_d2", variant="d2_224", weights=None, backend=backend, precision=prec, batch=None,
                        calib=vcalib if prec == "int8" else None, cache_dir=cache)
    for r in bench_engine(eng, BenchConfig(batches=(1, 8), iters=10, warmup=2, threads=THREADS)):
        r["model"] = "VOLO-D2 224 (random weights)"
        rows.append(r)
        print(f"volo {backend} {prec} bs{r['batch']}: {r['throughput_ips']:.1f} img/s", flush=True)
    if backend == "ort":
        out = cache / "pred" / f"volo-{prec}"
        predict(eng, sub, out, batch=8, overwrite=True, threads=THREADS, show_progress=False)
        vpred[prec] = _rp(out)
same = sum(vpred["fp32"][k][:1] == vpred["int8"][k][:1] for k in vpred["fp32"]) / len(vpred["fp32"])
acc.append(["VOLO-D2 ort int8 vs ort fp32 (random weights): top-1 agreement", f"{100 * same:.2f}", "-",
            len(vpred["fp32"])])
perf = [[r["model"] if r["model"].startswith("VOLO") else "MobileNetV1 x0.25", f"{r['backend']} {r['precision']}" + (" (eager)" if r["backend"] == "torch" else ""),
         r["batch"], f"{r['throughput_ips']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", r["iters"]] for r in rows]
mach, ver = machine(), versions()
md = "\n".join([
    md_table(["Model", "Engine", "Batch", "Throughput (img/s)", "p50 ms", "p99 ms", "iters"], perf), "",
    md_table(["Engine", "top-1 %", "top-5 %", "images"], acc), "",
    f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {THREADS} runtime threads. Versions: "
    + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + f". Created {now_iso()}. int8 calibration: "
    f"128 COCO128 images ({args.calib_method}), file-list sha256 {calib.describe()['file_list_sha256'][:16]}.",
])
print(md)
Path(args.out).mkdir(parents=True, exist_ok=True)
(Path(args.out) / "cpu_classifier_tables.md").write_text(md + "\n")
(Path(args.out) / "cpu_classifier.json").write_text(json.dumps({"bench": rows, "accuracy": acc, "machine": mach,
                                                                "versions": ver}, indent=1, default=str))

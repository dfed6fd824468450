"""The CPU benchmark of docs/benchmarks/cpu.md, in one run: RetinaFace-mnet (640x640 and original size) and
RetinaFace-R50 (640x640), batch 1/4/8: eager PyTorch vs ORT fp32 vs ORT int8 vs ORT fp16; plus the agreement of
int8 (and fp16) detections with fp32 on real images (COCO128 + the astronaut photo).

usage: python benchmarks/cpu_retinaface.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--quick]
mnet uses the released weights from the fixtures; R50 uses random weights (its checkpoint is not available
here: speed only). int8 is calibrated on 64 ImageNet val_227 images, disjoint from the agreement images.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.cache import ensure_engine
from deployzoo.data.images import list_source, read_image
from deployzoo.engine import machine, now_iso, versions
from deployzoo.metrics.agreement import agreement_ap
from deployzoo.pipeline import load_engine
from deployzoo.quant.calib import make_calib_set
from deployzoo.report import md_table

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/benchmarks")
ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ap.add_argument("--cache", default=None)
ap.add_argument("--quick", action="store_true", help="2 iterations, batch 1 only (smoke test of the script)")
ap.add_argument("--only", default=None, help="run only the cases whose label starts with this (e.g. mnet)")
args = ap.parse_args()
fx = Path(args.fixtures)
cache = Path(args.cache or tempfile.mkdtemp(prefix="dz-bench-"))
calib = make_calib_set(fx / "imagenet" / "val_227" / "images", 64, "minmax")
batches = (1,) if args.quick else (1, 4, 8)
THREADS = 2

cases = [  # label, variant, weights, engine imgsz, bench input, iters
    ("mnet 640x640", "mobilenet0.25", fx / "retinaface" / "mobilenet0.25_Final.pth", [640, 640], (640, 640), 30),
    ("mnet origin (1024x768 input)", "mobilenet0.25", fx / "retinaface" / "mobilenet0.25_Final.pth", "origin",
     (768, 1024), 20),
    ("R50 640x640 (random weights)", "resnet50", None, [640, 640], (640, 640), 8),
]
if args.only:
    cases = [c for c in cases if c[0].startswith(args.only)]
engines: dict[tuple[str, str], Path] = {}
rows = []
for label, variant, weights, imgsz, hw, iters in cases:
    for backend, prec in [("torch", "fp32"), ("ort", "fp32"), ("ort", "int8"), ("ort", "fp16")]:
        eng = ensure_engine("retinaface", variant=variant, weights=weights, backend=backend, precision=prec,
                            imgsz=imgsz, batch=None, calib=calib if prec == "int8" else None, cache_dir=cache)
        engines[(label, f"{backend} {prec}")] = eng
        n = 2 if args.quick else (max(3, iters // 3) if prec == "fp16" else iters)
        for r in bench_engine(eng, BenchConfig(batches=batches, iters=n, warmup=2, threads=THREADS, imgsz=hw)):
            r["case"] = label
            rows.append(r)
            print(f"{label:30s} {backend} {prec} bs{r['batch']}: {r['throughput_ips']:.2f} img/s", flush=True)

# agreement of int8 / fp16 detections with fp32 on real images
imgs = [read_image(i.path) for i in list_source(fx / "coco128" / "images")[1]]
from skimage.data import astronaut  # noqa: E402

imgs.append(cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))


def detections(eng: Path) -> list[dict]:
    loaded = load_engine(eng, threads=THREADS)
    out = []
    for im in imgs:
        p = loaded.task.prepare(im, loaded.engine.input)
        out += loaded.task.postprocess(loaded.runner.run(p.tensor[None]), [p.meta], dict(loaded.engine.post))
    return out


agree = []
for label in [c[0] for c in cases if c[0].startswith("mnet")]:
    ref = detections(engines[(label, "ort fp32")])
    n_ref = int(sum((np.asarray(r["scores"]) >= 0.5).sum() for r in ref))
    for other in ("ort int8", "ort fp16", "torch fp32"):
        agree.append([label, other, round(agreement_ap(ref, detections(engines[(label, other)])), 4), n_ref])
        print("agreement", agree[-1], flush=True)

# ------------------------------------------------------------------ write the report
by = {(r["case"], r["backend"], r["precision"], r["batch"]): r for r in rows}
table = []
for label, *_ in cases:
    for b in batches:
        eager = by[(label, "torch", "fp32", b)]["throughput_ips"]
        fp32 = by[(label, "ort", "fp32", b)]["throughput_ips"]
        for backend, prec in [("torch", "fp32"), ("ort", "fp32"), ("ort", "int8"), ("ort", "fp16")]:
            r = by[(label, backend, prec, b)]
            table.append([label, "eager PyTorch" if backend == "torch" else f"ORT {prec}", b,
                          f"{r['throughput_ips']:.2f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                          f"{r['throughput_ips'] / eager:.2f}x", f"{r['throughput_ips'] / fp32:.2f}x", r["iters"],
                          r["engine_peak_rss_mib"]])
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
result = {"created": now_iso(), "machine": machine(), "versions": versions(), "threads": THREADS, "rows": rows,
          "agreement": agree, "calibration": calib.describe()}
suffix = f"_{args.only}" if args.only else ""
(out / f"cpu_retinaface{suffix}.json").write_text(json.dumps(result, indent=1, default=str))
md = md_table(["Case", "Engine", "Batch", "img/s", "p50 ms", "p99 ms", "vs eager", "vs ORT fp32", "iters",
               "engine RSS MiB"], table)
md += "\n\n" + md_table(["Case", "Engine", "AP vs ORT fp32 detections (score >= 0.5)", "fp32 faces"], agree) + "\n"
(out / f"cpu_retinaface{suffix}_tables.md").write_text(md)
print(md)

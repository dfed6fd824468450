"""The Mask R-CNN CPU benchmark of docs/benchmarks/cpu.md: mmdetection-convention Mask R-CNN R50-FPN (random
weights: no Mask R-CNN checkpoint is on these machines; the random init is sharpened so ~100 detections per image
reach the mask head, as with trained weights) at 800 x 1344 (an 800 x 1333 image padded to 32), batch 1:
eager PyTorch vs ORT fp32 vs ORT int8 (backbone + FPN int8, heads float, calibrated on COCO128 images outside the
timed set), engine-only; the stage split read / pre / infer / post on real COCO128 images; and the peak RSS of
`deployzoo predict` over all 128 COCO128 images at batch 1 and 4 (each a fresh process, /usr/bin/time).

usage: python benchmarks/cpu_maskrcnn.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--cache DIR]
       [--e2e-images 16] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.cache import ensure_engine
from deployzoo.engine import machine, now_iso, versions
from deployzoo.quant.calib import make_calib_set
from deployzoo.report import md_table

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/benchmarks")
ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ap.add_argument("--cache", default=None)
ap.add_argument("--e2e-images", type=int, default=16)
ap.add_argument("--skip-memory", action="store_true")
ap.add_argument("--memory-only", action="store_true", help="only the predict peak-RSS runs (engines from --cache)")
args = ap.parse_args()
fx = Path(args.fixtures)
cache = Path(args.cache or tempfile.mkdtemp(prefix="dz-bench-"))
coco = fx / "coco128"
THREADS = 2
# timed e2e images: the first N by name; calibration: 16 others
names = sorted(p.name for p in (coco / "images").glob("*.jpg"))
timed, rest = names[: args.e2e_images], names[args.e2e_images:]
sub = cache / "coco_timed" / "images"
calib_dir = cache / "coco_calib"
for d, files in ((sub, timed), (calib_dir, rest)):
    d.mkdir(parents=True, exist_ok=True)
    for n in files:
        if not (d / n).exists():
            (d / n).symlink_to((coco / "images" / n).resolve())
calib = make_calib_set(calib_dir, 16, "minmax")
rows = []
engines = {}
for backend, prec in ([] if args.memory_only else [("torch", "fp32"), ("ort", "fp32"), ("ort", "int8")]):
    eng = ensure_engine("maskrcnn", variant="mmdet_1x", backend=backend, precision=prec, batch=None,
                        calib=calib if prec == "int8" else None, cache_dir=cache)
    engines[(backend, prec)] = eng
    cfg = BenchConfig(batches=(1,), iters=5, warmup=1, threads=THREADS, imgsz=(800, 1344), e2e_source=sub)
    for r in bench_engine(eng, cfg):
        rows.append(r)
        print(f"{backend} {prec} {r['mode']} bs{r['batch']}: {r['throughput_ips']:.3f} img/s", flush=True)
perf = [[f"{r['backend']} {r['precision']}" + (" (eager)" if r["backend"] == "torch" else ""), r["batch"],
         f"{r['throughput_ips']:.3f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}", r["iters"]]
        for r in rows if r["mode"] == "engine"]
split = [[f"{r['backend']} {r['precision']}", r["batch"], r["images"], f"{r['throughput_ips']:.3f}",
          *(f"{r[f'{s}_ms_per_img']:.1f}" for s in ("read", "pre", "infer", "post"))]
         for r in rows if r["mode"] == "e2e"]
mem = []
if not args.skip_memory:
    eng = engines.get(("ort", "int8")) or ensure_engine("maskrcnn", variant="mmdet_1x", precision="int8", batch=None,
                                                         calib=calib, cache_dir=cache)
    for b in (1, 4):
        out = cache / "mem" / f"bs{b}"
        cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "deployzoo", "predict", str(eng),
               "--source", str(coco), "-o", str(out), "--batch", str(b), "--overwrite", "--threads", str(THREADS)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(p.stderr[-2000:])
        kib, secs = p.stderr.strip().splitlines()[-1].split()
        summ = json.loads((out / "summary.json").read_text())
        dets = sum(len(json.loads(line)["detections"]) for line in (out / "predictions.jsonl").open())
        mem.append(["ort int8", b, summ["written"], dets, f"{int(kib) / 1024:.0f}", f"{summ['images_per_second']:.3f}"])
        print(f"predict coco128 bs{b}: peak RSS {int(kib) / 1024:.0f} MiB, {secs} s, {dets} detections", flush=True)
mach, ver = machine(), versions()
parts = [
    md_table(["Engine", "Batch", "Throughput (img/s)", "p50 ms", "p99 ms", "iters"], perf), "",
    md_table(["Engine", "Batch", "images", "e2e img/s", "read ms/img", "pre ms/img", "infer ms/img",
              "post ms/img"], split), "",
]
if mem:
    parts += [md_table(["predict engine", "Batch", "images", "detections", "peak RSS MiB", "img/s"], mem), ""]
parts += [f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {THREADS} runtime threads. Versions: "
          + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + f". Created {now_iso()}. "
          f"int8 calibration: 16 COCO128 images outside the timed ones (minmax), file-list sha256 "
          f"{calib.describe()['file_list_sha256'][:16]}."]
md = "\n".join(parts)
print(md)
Path(args.out).mkdir(parents=True, exist_ok=True)
(Path(args.out) / "cpu_maskrcnn_tables.md").write_text(md + "\n")
(Path(args.out) / "cpu_maskrcnn.json").write_text(json.dumps({"bench": rows, "memory": mem, "machine": mach,
                                                              "versions": ver}, indent=1, default=str))

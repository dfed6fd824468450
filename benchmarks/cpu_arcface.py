"""The ArcFace CPU benchmark of docs/benchmarks/cpu.md, in one run: IResNet-50 and IResNet-100 at batch 1/8/64,
eager PyTorch vs ORT fp32 vs ORT int8 (and fp16), plus the agreement of int8 embeddings with fp32 ones on real
aligned faces (the 20 LFW faces of small_lfw.bin, and the faces RetinaFace finds in COCO128).

usage: python benchmarks/cpu_arcface.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--quick]

No IResNet checkpoint is available here: the networks have random weights (models/iresnet.py's init keeps
activations O(1)), so the numbers are speed and int8-vs-fp32 agreement, not recognition accuracy.
int8 is calibrated on faces that RetinaFace-mnet (released weights) finds in the ImageNet val_227 fixture images,
aligned with their landmarks: real faces, disjoint from the LFW and COCO faces the agreement is measured on.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.cache import ensure_engine
from deployzoo.engine import machine, now_iso, versions
from deployzoo.predict import predict
from deployzoo.quant.calib import make_calib_set
from deployzoo.registry import get_task
from deployzoo.report import md_table
from deployzoo.tasks.face_recognition import row_cosines

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/benchmarks")
ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ap.add_argument("--cache", default=None)
ap.add_argument("--quick", action="store_true", help="2 iterations, batch 1 only (smoke test of the script)")
ap.add_argument("--only", default=None, help="run only these variants, e.g. r50")
ap.add_argument("--precisions", default="torch:fp32,ort:fp32,ort:int8,ort:fp16")
args = ap.parse_args()
fx = Path(args.fixtures)
cache = Path(args.cache or tempfile.mkdtemp(prefix="dz-bench-"))
work = cache / "faces"
work.mkdir(parents=True, exist_ok=True)
THREADS = 2
MIN_SCORE, MIN_SIDE = 0.9, 24.0


def face_list(images: Path, name: str) -> Path:
    """Detect faces with RetinaFace-mnet (released weights) and write a landmarks file of the confident,
    not-tiny ones (absolute image paths), the input format predict / calibration read for ArcFace."""
    det_dir = work / f"det_{name}"
    if not (det_dir / "summary.json").is_file():
        eng = ensure_engine("retinaface", variant="mobilenet0.25", weights=fx / "retinaface" / "mobilenet0.25_Final.pth",
                            backend="ort", precision="fp32", imgsz=[640, 640], batch=None, cache_dir=cache)
        predict(eng, images, det_dir, overwrite=True, show_progress=False)
    lines = []
    for line in open(det_dir / "predictions.jsonl"):
        r = json.loads(line)
        for b, s, lm in zip(r["boxes"], r["scores"], r["landmarks"]):
            if s >= MIN_SCORE and min(b[2] - b[0], b[3] - b[1]) >= MIN_SIDE:
                pts = " ".join(f"{v:.2f}" for p in lm for v in p)
                lines.append(f"{(images / r['image']).resolve()} {pts} {s:.4f}")
    out = work / f"faces_{name}.txt"
    out.write_text("\n".join(lines) + "\n")
    return out


calib_faces = face_list(fx / "imagenet" / "val_227" / "images", "imagenet")
coco_faces = face_list(fx / "coco128" / "images", "coco")
lfw = fx / "lfw" / "small_lfw.bin"
calib = make_calib_set(calib_faces, 64, "minmax", task=get_task("face_recognition"))
batches = (1,) if args.quick else (1, 8, 64)
targets = [tuple(t.split(":")) for t in args.precisions.split(",")]
variants = [v for v in ("r50", "r100") if not args.only or v in args.only.split(",")]
iters = {"r50": {1: 30, 8: 8, 64: 3}, "r100": {1: 20, 8: 5, 64: 2}}

rows, agree = [], []
for variant in variants:
    engines = {}
    for backend, prec in targets:
        eng = ensure_engine("arcface", variant=variant, weights=None, backend=backend, precision=prec,
                            imgsz=[112, 112], batch=None, calib=calib if prec == "int8" else None, cache_dir=cache)
        engines[f"{backend} {prec}"] = eng
        for b in batches:
            n = 2 if args.quick else iters[variant][b]
            if prec == "fp16":
                n = max(2, n // 3)
            for r in bench_engine(eng, BenchConfig(batches=(b,), iters=n, warmup=1, threads=THREADS)):
                r["case"] = f"IResNet-{variant[1:]}"
                rows.append(r)
                print(f"{variant} {backend} {prec} bs{b}: {r['throughput_ips']:.2f} img/s", flush=True)
    # agreement with fp32 embeddings on real aligned faces (flip test on, as eval)
    feats = {}
    for label, eng in engines.items():
        for name, src in (("lfw", lfw), ("coco", coco_faces)):
            out = cache / "agree" / variant / label.replace(" ", "_") / name
            predict(eng, src, out, batch=8, overwrite=True, threads=THREADS, show_progress=False)
            feats[(label, name)] = np.load(out / "features.npy")
    for label in engines:
        if label == "ort fp32":
            continue
        for name in ("lfw", "coco"):
            cos = row_cosines(feats[("ort fp32", name)], feats[(label, name)])
            agree.append({"variant": variant, "engine": label, "faces": name, "n": int(cos.size),
                          "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())})
            print(agree[-1], flush=True)

perf = [[r["case"], f"{r['backend']} {r['precision']}" + (" (eager)" if r["backend"] == "torch" else ""), r["batch"],
         f"{r['throughput_ips']:.2f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", r["iters"]] for r in rows]
agr = [[f"IResNet-{a['variant'][1:]}", a["engine"], {"lfw": "LFW (small_lfw.bin)", "coco": "COCO128 faces"}[a["faces"]],
        a["n"], f"{a['mean_cosine']:.4f}", f"{a['min_cosine']:.4f}"] for a in agree]
mach, ver = machine(), versions()
md = "\n".join([
    md_table(["Model", "Engine", "Batch", "Throughput (img/s)", "p50 ms", "p99 ms", "iters"], perf),
    "",
    md_table(["Model", "Engine", "Faces", "n", "mean cosine vs ORT fp32", "min cosine"], agr),
    "",
    f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {THREADS} runtime threads. Versions: "
    + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + f". Created {now_iso()}. "
    f"Calibration: {calib.describe()['size']} faces found by RetinaFace-mnet in imagenet/val_227 (score >= {MIN_SCORE}, "
    f"side >= {MIN_SIDE:.0f} px), file-list sha256 {calib.describe()['file_list_sha256'][:16]}.",
])
print(md)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
if not args.quick:
    (out / "cpu_arcface_tables.md").write_text(md + "\n")
    (out / "cpu_arcface.json").write_text(json.dumps({"bench": rows, "agreement": agree, "machine": mach,
                                                       "versions": ver, "calibration": calib.describe()}, indent=1,
                                                      default=str))

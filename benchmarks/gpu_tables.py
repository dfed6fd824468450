"""The GPU benchmark tables of docs/benchmarks/gpu.md (the issue's H100 / H200 tables): for each model at its
seed size, eager PyTorch (backend torch) beside AOTInductor (backend aoti) at fp16 and bf16, built with the same
options (channels-last; CUDA graphs for eager's fixed shapes only: aoti refuses them, since capturing an
AOTInductor package failed on an H200), engine-only at the seed batches, plus end-to-end rows
(files on disk -> predictions, device pipeline: nvJPEG decode, pre- and post-processing on the GPU) where the task
has one. Random weights: speed does not depend on them (Mask R-CNN's random init keeps ~100 detections per image
so that its heads and mask paste carry their real load).

Results go to OUT/results.jsonl one engine at a time, so an interrupted run resumes where it stopped
(delete the file to start over); OUT/tables.md is rewritten from it after each engine.

usage: python benchmarks/gpu_tables.py --out OUT [--models rf_r50,rf_mnet,volo,r100,maskrcnn,mnv1]
           [--engines torch:fp16,torch:bf16,aoti:fp16,aoti:bf16] [--iters 100] [--warmup 20] [--device cuda]
           [--e2e-source ../shared/fixtures/coco128/images] [--batches 1,8,32] [--cuda-graphs/--no-cuda-graphs]
A CPU smoke run (what was checked on the 2-core development machine, where no GPU exists):
       python benchmarks/gpu_tables.py --out /tmp/g --device cpu --models mnv1 --engines torch:fp32,aoti:fp32 \
           --batches 1 --iters 3 --warmup 1 --no-cuda-graphs
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.cache import ensure_engine
from deployzoo.engine import gpu_info, machine, now_iso, versions
from deployzoo.errors import DeployzooError
from deployzoo.registry import backend_capabilities
from deployzoo.report import md_table

# name -> (model, variant, engine imgsz, bench H x W for origin-size engines, batches)
MODELS = {
    "rf_r50": ("retinaface", "resnet50", [672, 1024], None, (1, 8, 32)),
    "rf_mnet": ("retinaface", "mobilenet0.25", [1000, 1000], None, (1, 8, 32)),
    "volo": ("volo_d2", "d2_224", [224, 224], None, (1, 8, 32)),
    "r100": ("arcface", "r100", [112, 112], None, (1, 8, 32)),
    "maskrcnn": ("maskrcnn", "mmdet_1x", "origin", (800, 1344), (1, 4)),
    "mnv1": ("mobilenetv1", "x0.25", [224, 224], None, (1, 8, 32)),
}
GOALS = {"rf_r50": "fp16 >= 2500 img/s at bs 32, >= 1200 at bs 1", "rf_mnet": ">= 6000 img/s",
         "volo": ">= 6000 img/s", "r100": ">= 25000 img/s", "maskrcnn": ">= 150 img/s"}

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--models", default="rf_r50,rf_mnet,volo,r100,maskrcnn")
ap.add_argument("--engines", default="torch:fp16,torch:bf16,aoti:fp16,aoti:bf16")
ap.add_argument("--batches", default=None, help="override every model's batches, e.g. 1,8,32")
ap.add_argument("--iters", type=int, default=100)
ap.add_argument("--warmup", type=int, default=20)
ap.add_argument("--device", default="cuda")
ap.add_argument("--e2e-source", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coco128"
                                             / "images"))
ap.add_argument("--e2e-batch", type=int, default=32)
ap.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                help="CUDA graphs for the fixed-size eager engines (never aoti, never Mask R-CNN: data-dependent outputs)")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
results = out / "results.jsonl"
done = set()
if results.is_file():
    for line in results.read_text().splitlines():
        if line.strip():
            done.add(json.loads(line)["key"])


def write_tables() -> None:
    recs = [json.loads(x) for x in results.read_text().splitlines() if x.strip()] if results.is_file() else []
    rows, e2e, fails = [], [], []
    for rec in recs:
        if rec["key"].startswith("_"):
            continue
        if rec.get("error"):
            fails.append([rec["key"], rec["error"]])
            continue
        for r in rec["rows"]:
            eng = f"{r['backend']} {r['precision']}" + (" (eager)" if r["backend"] == "torch" else "")
            if r["mode"] == "engine":
                rows.append([r["model"], eng, r["batch"], f"{r['throughput_ips']:.1f}", f"{r['p50_ms']:.2f}",
                             f"{r['p99_ms']:.2f}", r.get("timing", "host")])
            else:
                e2e.append([r["model"], eng, r["batch"], r.get("pipeline", "host"), f"{r['throughput_ips']:.1f}",
                            *(f"{r.get(f'{s}_ms_per_img', 0.0):.3f}" for s in ("read", "decode", "pre", "infer", "post"))])
    mach = next((r for r in recs if r["key"] == "_machine"), {})
    gpu = mach.get("gpu") or {}
    ver = mach.get("versions") or {}
    md = ["# GPU tables (benchmarks/gpu_tables.py)", "", f"Created {now_iso()}. Device: "
          + (", ".join(f"{k} {v}" for k, v in gpu.items()) or str(mach.get("args", {}).get("device"))) + ". Versions: "
          + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + ".", "",
          md_table(["Model", "Precision", "Batch", "Throughput (img/s)", "p50 ms", "p99 ms", "Timing"], rows), "",
          "Timing `device`: input already on the engine's device, inference only (CUDA events on a GPU); `host`: "
          "from a host array, copies included (ONNX Runtime). e2e stage columns are ms per image.", ""]
    if e2e:
        md += ["End to end (files -> predictions):", "",
               md_table(["Model", "Engine", "Batch", "Pipeline", "img/s", "read", "decode", "pre", "infer", "post"],
                        e2e), ""]
    if fails:
        md += ["Not measured:", "", md_table(["Engine", "Why"], fails), ""]
    md += ["Goals: " + "; ".join(f"{k}: {v}" for k, v in GOALS.items()), ""]
    (out / "tables.md").write_text("\n".join(md) + "\n")


meta = {"key": "_machine", "machine": machine(), "versions": versions(), "gpu": gpu_info(args.device), "args": vars(args)}
if "_machine" not in done:
    with results.open("a") as f:
        f.write(json.dumps(meta, default=str) + "\n")
for name in args.models.split(","):
    model, variant, imgsz, bench_hw, batches = MODELS[name]
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
    for eng_spec in args.engines.split(","):
        backend, prec = eng_spec.split(":")
        key = f"{name}:{backend}:{prec}"
        if key in done:
            continue
        rec: dict = {"key": key}
        t0 = time.perf_counter()
        try:
            graphs = args.cuda_graphs and backend == "torch" and model != "maskrcnn" and args.device.startswith("cuda")
            opts = {"device": args.device, "channels_last": args.device.startswith("cuda"), "cuda_graphs": graphs} \
                if "device" in backend_capabilities(backend).options else None  # ORT takes its device at load
            build = dict(variant=variant, backend=backend, precision=prec, imgsz=imgsz, cache_dir=out / "cache",
                         options=opts)
            try:  # one dynamic-batch engine; graphs torch.export specialises (Mask R-CNN): one engine per batch
                engines = [(ensure_engine(model, batch=None, **build), batches)]
            except DeployzooError as exc:
                if "fixed-batch" not in str(exc):
                    raise
                rec["note"] = "one fixed-batch engine per batch (torch.export specialises this graph's batch)"
                engines = [(ensure_engine(model, batch=b, **build), (b,)) for b in batches]
            rec["build_seconds"] = round(time.perf_counter() - t0, 1)
            e2e = Path(args.e2e_source) if args.e2e_source and model != "arcface" \
                and Path(args.e2e_source).is_dir() else None  # arcface reads aligned faces, not photos
            e2e_batch = args.e2e_batch if model != "maskrcnn" else max(batches)
            rec["rows"] = []
            for eng, bs in engines:
                cfg = BenchConfig(batches=bs, iters=args.iters, warmup=args.warmup, device=args.device,
                                  imgsz=bench_hw, e2e_source=None, min_seconds=2.0)
                rec["rows"] += bench_engine(eng, cfg)
                if e2e is not None and (len(engines) == 1 or e2e_batch in bs):
                    ecfg = BenchConfig(batches=(e2e_batch,), iters=1, warmup=0, device=args.device,
                                       e2e_source=e2e, pipeline="auto")
                    rec["rows"] += [r for r in bench_engine(eng, ecfg) if r["mode"] == "e2e"]
        except Exception as exc:  # noqa: BLE001 - recorded, the next engine runs
            rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            rec["traceback"] = traceback.format_exc()[-3000:]
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        with results.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        msg = rec.get("error") or ", ".join(f"bs{r['batch']} {r['mode']} {r['throughput_ips']:.1f}" for r in rec["rows"])
        print(f"{key}: {msg} ({rec['seconds']} s)", flush=True)
        write_tables()
write_tables()
print(f"tables: {out / 'tables.md'}")

"""The CPU peer table of docs/benchmarks/cpu.md (issue 14 part 4): all five models, eager PyTorch (fp32, bf16
autocast) vs torch.compile (AOTInductor, `aoti`, fp32) vs ONNX Runtime (fp32, int8) vs OpenVINO (fp32, bf16,
int8), engine-only, in interleaved rounds (every engine once per round; the median round is reported with the
min-max spread), and the accuracy of every int8 / bf16 engine where real weights exist:

- MobileNetV1 x0.25 (released ImageNet weights), 224, batch 1 / 32: top-1 / top-5 on the 1300 val_227 images;
  int8 calibrated on the 128 COCO128 photos (disjoint from val_227);
- RetinaFace-mnet (released weights), 640 x 640, batch 1 / 8: detections against fp32's (the planner's measure:
  AP of the engine's detections against fp32's confident ones) on the 64 COCO128 photos it is not calibrated on;
- ArcFace IResNet-50, 112, batch 1 / 8; VOLO-D2 224, batch 1; Mask R-CNN R50-FPN (mmdet), 800 x 1344, batch 1:
  random weights (no checkpoint here), speed only; int8 calibrated on their demo suites' calibration split (ArcFace,
  VOLO) or 16 COCO128 photos (Mask R-CNN).

int8: ORT with the model's recipe (registry), OpenVINO with NNCF (mixed preset, MatMuls float unless the recipe
quantizes them, no float groups). aoti is skipped for VOLO-D2 and Mask R-CNN (compile minutes on 2 cores; Mask
R-CNN's dynamic batch is refused on aoti); OpenVINO bf16 / eager bf16 need a CPU with bf16.

usage: python benchmarks/cpu_peers.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--cache DIR]
       [--rounds 3] [--models mobilenetv1,retinaface,arcface,volo_d2,maskrcnn]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from deployzoo.bench import BenchConfig, bench_engine
from deployzoo.cache import ensure_engine
from deployzoo.data.imagenet import read_labels
from deployzoo.engine import machine, now_iso, versions
from deployzoo.errors import DeployzooError
from deployzoo.metrics.classification import evaluate, read_predictions
from deployzoo.pipeline import StageTimes, load_engine, run_batches
from deployzoo.predict import predict
from deployzoo.quant.calib import make_calib_set
from deployzoo.registry import get_suite, get_task
from deployzoo.report import md_table
from deployzoo.tasks.base import task_source

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/benchmarks")
ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ap.add_argument("--cache", default=None)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--models", default="mobilenetv1,retinaface,arcface,volo_d2,maskrcnn")
args = ap.parse_args()
fx = Path(args.fixtures)
cache = Path(args.cache or tempfile.mkdtemp(prefix="dz-peers-"))
cache.mkdir(parents=True, exist_ok=True)
THREADS = 2
coco = sorted((fx / "coco128" / "images").glob("*.jpg"))


def subset(name: str, files: list[Path]) -> Path:
    d = cache / name
    d.mkdir(exist_ok=True)
    for f in files:
        if not (d / f.name).exists():
            (d / f.name).symlink_to(f.resolve())
    return d


def demo_calib(model: str, n: int):
    task = get_task({"arcface": "face_recognition", "volo_d2": "classification"}[model])
    suite = get_suite(task.suite)("demo", cache / f"demo-{model}", None, None)
    return make_calib_set(suite.calib_default, n, "minmax", task=task)


ENGINES = [("torch", "fp32"), ("torch", "bf16"), ("aoti", "fp32"), ("ort", "fp32"), ("ort", "int8"),
           ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
MODELS = {
    "mobilenetv1": dict(label="MobileNetV1 x0.25 224", variant="x0.25", imgsz=[224, 224], batches=(1, 32), iters=30,
                        weights=fx / "retinaface" / "mobilenetV1X0.25_pretrain.tar",
                        calib=lambda: make_calib_set(fx / "coco128" / "images", 128, "minmax")),
    "retinaface": dict(label="RetinaFace-mnet 640", variant="mobilenet0.25", imgsz=[640, 640], batches=(1, 8),
                       iters=15, weights=fx / "retinaface" / "mobilenet0.25_Final.pth",
                       calib=lambda: make_calib_set(subset("coco_a", coco[:64]), 64, "minmax")),
    "arcface": dict(label="ArcFace IResNet-50 112", variant="r50", imgsz=[112, 112], batches=(1, 8), iters=15,
                    weights=None, calib=lambda: demo_calib("arcface", 32)),
    "volo_d2": dict(label="VOLO-D2 224", variant="d2_224", imgsz=None, batches=(1,), iters=5, weights=None,
                    calib=lambda: demo_calib("volo_d2", 32), skip=("aoti",)),
    "maskrcnn": dict(label="Mask R-CNN R50-FPN 800x1344", variant="mmdet_1x", imgsz=None, batches=(1,), iters=3,
                     weights=None, bench_imgsz=(800, 1344), warmup=1,
                     calib=lambda: make_calib_set(subset("coco_mask_calib", coco[64:80]), 16, "minmax"),
                     skip=("aoti",)),
}
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
simd = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))]

engines, skipped = {}, []
for key in args.models.split(","):
    m = MODELS[key]
    calib = m["calib"]()
    for backend, prec in ENGINES:
        if backend in m.get("skip", ()):
            skipped.append(f"{m['label']} {backend} {prec}: compile time / refused (see the docstring)")
            continue
        try:
            engines[key, f"{backend} {prec}"] = ensure_engine(
                key, variant=m["variant"], weights=m["weights"], backend=backend, precision=prec, imgsz=m["imgsz"],
                batch=None, calib=calib if prec == "int8" else None, cache_dir=cache)
        except DeployzooError as exc:  # e.g. bf16 on a CPU without it: said, not measured
            skipped.append(f"{m['label']} {backend} {prec}: {exc}")
            print(f"skip {m['label']} {backend} {prec}: {exc}", flush=True)

runs: dict[tuple[str, str, int], list[dict]] = {}
for rnd in range(args.rounds):
    for (key, lab), eng in engines.items():
        m = MODELS[key]
        cfg = BenchConfig(batches=m["batches"], iters=m["iters"], warmup=m.get("warmup", 3), threads=THREADS,
                          imgsz=m.get("bench_imgsz"))
        for r in bench_engine(eng, cfg):
            runs.setdefault((key, lab, r["batch"]), []).append(r)
            print(f"round {rnd + 1}: {m['label']} {lab} bs{r['batch']}: {r['throughput_ips']:.2f} img/s", flush=True)

perf, rows = [], []
for (key, lab, bs), rs in runs.items():
    ips = [r["throughput_ips"] for r in rs]
    med = statistics.median(ips)
    ref = runs.get((key, "ort fp32", bs))
    ref_med = statistics.median(x["throughput_ips"] for x in ref) if ref else float("nan")
    perf.append([MODELS[key]["label"], lab, bs, f"{med:.2f}", f"{min(ips):.2f}-{max(ips):.2f}", f"{med / ref_med:.2f}",
                 f"{statistics.median(r['p50_ms'] for r in rs):.2f}", rs[0].get("timing", "host")])
    rows.append({"model": key, "engine": lab, "batch": bs, "ips": ips, "rounds": rs})

# accuracy: MobileNetV1 top-1 on val_227; RetinaFace-mnet agreement with fp32 on the 64 photos not calibrated on
acc, agree = [], []
if "mobilenetv1" in args.models.split(","):
    labels = read_labels(fx / "imagenet" / "val_227" / "val.txt")
    for (key, lab), eng in engines.items():
        if key != "mobilenetv1":
            continue
        out = cache / "pred" / lab.replace(" ", "_")
        predict(eng, fx / "imagenet" / "val_227" / "images", out, batch=32, overwrite=True, threads=THREADS,
                show_progress=False)
        res = evaluate(read_predictions(out), labels)
        acc.append([lab, f"{100 * res.top1:.2f}", f"{100 * res.top5:.2f}", res.n])
        print(f"MobileNetV1 {lab}: top-1 {100 * res.top1:.2f}", flush=True)
if "retinaface" in args.models.split(","):
    task = get_task("face_detection")
    _, items = task_source(task, subset("coco_b", coco[64:]))

    def records(eng: Path) -> list[dict]:
        got: list[dict] = []
        run_batches(load_engine(eng, threads=THREADS), items, batch=1, on_result=lambda it, img, rec: got.append(rec),
                    on_skip=lambda it, why: None, times=StageTimes(), workers=2)
        return got

    ref = records(engines["retinaface", "ort fp32"])
    for (key, lab), eng in engines.items():
        if key == "retinaface" and lab != "ort fp32":
            a = task.agreement(ref, records(eng))
            agree.append([lab, f"{a:.4f}", len(items)])
            print(f"RetinaFace {lab}: agreement {a:.4f}", flush=True)

mach, ver = machine(), versions()
md = "\n".join([
    md_table(["Model", "Engine", "Batch", "img/s (median)", "min-max over rounds", "x ort fp32", "p50 ms", "timing"],
             perf), "",
    *([md_table(["MobileNetV1 x0.25 engine", "top-1 %", "top-5 %", "images"], acc), ""] if acc else []),
    *([md_table(["RetinaFace-mnet engine", "AP vs ORT fp32's confident detections", "photos"], agree), ""]
      if agree else []),
    *(["Not measured: " + "; ".join(skipped), ""] if skipped else []),
    f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {THREADS} runtime threads, {args.rounds} interleaved "
    f"rounds; lscpu SIMD flags: {' '.join(simd)}. Versions: "
    + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + f". Created {now_iso()}. Command: "
    f"python benchmarks/cpu_peers.py --models {args.models} --rounds {args.rounds}.",
])
print(md)
Path(args.out).mkdir(parents=True, exist_ok=True)
(Path(args.out) / "cpu_peers_tables.md").write_text(md + "\n")
(Path(args.out) / "cpu_peers.json").write_text(json.dumps({"bench": rows, "accuracy": acc, "agreement": agree,
                                                           "skipped": skipped, "lscpu_flags": flags, "machine": mach,
                                                           "versions": ver}, indent=1, default=str))

"""The int8 planner checked against the real accuracy protocol (issue 14 part 2): MobileNetV1 x0.25 (released
ImageNet weights) planned on ORT and on OpenVINO from the 128 COCO128 photos (minmax; every 4th held out), then
every tried mix built again from the same calibration images and scored on the 1300 val_227 ImageNet images
(never seen by the planner). The table puts the planner's drop (top-1 disagreement with fp32 on the held-out
photos) beside the real top-1 drop, with the planner's engine-only speed. RetinaFace-mnet 640 (released weights)
is planned on both backends too (its measure: AP of int8's detections against fp32's confident ones); there are no
WIDER FACE images here to score it on.

usage: python benchmarks/int8_plan.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--cache DIR]
                                      [--max-drop 100] [--backends ort,openvino]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from deployzoo.build import build
from deployzoo.data.imagenet import read_labels
from deployzoo.engine import machine, now_iso, versions
from deployzoo.export import export_onnx
from deployzoo.metrics.classification import evaluate, read_predictions
from deployzoo.predict import predict
from deployzoo.registry import get_task
from deployzoo.quant.planner import PLOT_FILE, plan_int8, split_calibration
from deployzoo.report import md_table
from deployzoo.request import BuildRequest, Calibration, Graph

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/benchmarks")
ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ap.add_argument("--cache", default=None)
ap.add_argument("--max-drop", type=float, default=100.0, help="100: every mix is kept, the planner returns")
ap.add_argument("--backends", default="ort,openvino")
ap.add_argument("--skip-retinaface", action="store_true")
args = ap.parse_args()
fx = Path(args.fixtures)
work = Path(args.cache or tempfile.mkdtemp(prefix="dz-plan-"))
work.mkdir(parents=True, exist_ok=True)
out_dir = Path(args.out)
out_dir.mkdir(parents=True, exist_ok=True)
THREADS = 2
val = fx / "imagenet" / "val_227"
labels = read_labels(val / "val.txt")
calib = Calibration(fx / "coco128" / "images", 128, "minmax")


def top1(engine_dir: Path, name: str) -> float:
    pred = work / "pred" / name
    predict(engine_dir, val / "images", pred, batch=32, overwrite=True, threads=THREADS, show_progress=False)
    return 100.0 * evaluate(read_predictions(pred), labels).top1


graphs = {
    "MobileNetV1 x0.25": dict(model="mobilenetv1", weights=fx / "retinaface" / "mobilenetV1X0.25_pretrain.tar",
                              imgsz=[224, 224]),
    "RetinaFace-mnet 640": dict(model="retinaface", variant="mobilenet0.25",
                                weights=fx / "retinaface" / "mobilenet0.25_Final.pth", imgsz=[640, 640]),
}
if args.skip_retinaface:
    del graphs["RetinaFace-mnet 640"]
tables, record = [], {"machine": machine(), "created": now_iso(), "plans": {}}
for name, g in graphs.items():
    onnx_path = work / f"{g['model']}.onnx"
    if not onnx_path.is_file():
        export_onnx(g["model"], onnx_path, variant=g.get("variant"), weights=g["weights"], imgsz=g["imgsz"],
                    batch=None)
    graph = Graph.read(onnx_path)
    for backend in args.backends.split(","):
        req = BuildRequest.for_graph(graph, backend=backend, precision="int8", calibration=calib)
        dest = work / f"{g['model']}-{backend}-planned"
        shutil.rmtree(dest, ignore_errors=True)
        eng = plan_int8(graph, dest, req, args.max_drop)
        plan = eng.manifest["int8_plan"]
        shutil.copyfile(dest / PLOT_FILE, out_dir / f"int8_plan_{g['model']}_{backend}.png")
        rows = []
        if g["model"] == "mobilenetv1":  # every mix scored on val_227 (same calibration subset as the planner's)
            cal, _ = split_calibration(calib.resolve(get_task(graph.task)).images)  # the planner's own split
            fp32_dir = work / f"mb-{backend}-fp32"
            shutil.rmtree(fp32_dir, ignore_errors=True)
            build(graph, fp32_dir, replace(req, precision="fp32", calibration=None))
            ref = top1(fp32_dir, f"{backend}-fp32")
            for k, t in enumerate(plan["trials"]):
                d = work / f"mb-{backend}-trial{k}"
                shutil.rmtree(d, ignore_errors=True)
                build(graph, d, replace(req, calibration=Calibration.of_set(cal),
                                        recipe=replace(req.recipe, float_groups=tuple(t["float_groups"]))))
                t["val227_top1"] = top1(d, f"{backend}-trial{k}")
                t["val227_drop"] = ref - t["val227_top1"]
                print(f"{name} {backend} float [{', '.join(t['float_groups'])}]: planner drop {t['drop']:.2f}, "
                      f"val_227 top-1 {t['val227_top1']:.2f} (drop {t['val227_drop']:.2f})", flush=True)
            plan["val227_fp32_top1"] = ref
        for t in plan["trials"]:
            rows.append([", ".join(t["float_groups"]) or "(none: all int8)", t["why"], f"{t['drop']:.2f}",
                         *([f"{t['val227_top1']:.2f}", f"{t['val227_drop']:.2f}"] if "val227_top1" in t else []),
                         f"{t['ips']:.1f}", f"{t['vs_fp32']:.2f}", "yes" if t["chosen"] else ""])
        heads = ["float groups", "why tried", "planner drop (points)",
                 *(["val_227 top-1 %", "val_227 drop"] if g["model"] == "mobilenetv1" else []),
                 "img/s", "x fp32", "chosen"]
        tables.append(f"**{name}, {backend}** (batch {plan['batch']}, fp32 {plan['fp32_ips']:.1f} img/s"
                      + (f", fp32 val_227 top-1 {plan['val227_fp32_top1']:.2f}" if "val227_fp32_top1" in plan else "")
                      + f"; {plan['held_out_images']} held-out, {plan['calibration_images']} calibration images; "
                      f"{plan['verdict']})\n\n" + md_table(heads, rows))
        record["plans"][f"{name} {backend}"] = plan
        print(tables[-1], flush=True)

record["versions"] = versions()  # read at the end: openvino / nncf are imported by then
mach, ver = record["machine"], record["versions"]
md = "\n\n".join(tables) + "\n\n" + (
    f"Machine: {mach['cpu']}, {mach['affinity_cores']} cores, {THREADS} runtime threads. Versions: "
    + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform") + f". Created {record['created']}. "
    f"Command: python benchmarks/int8_plan.py --max-drop {args.max_drop} --backends {args.backends}.")
(out_dir / "int8_plan_tables.md").write_text(md + "\n")
(out_dir / "int8_plan.json").write_text(json.dumps(record, indent=1, default=str))
print(md)

"""Peak RSS of `predict` and `eval widerface` on the demo data at 100 and 1000 images (streaming check).

usage: python benchmarks/predict_memory.py [--sizes 100,1000] [--weights mobilenet0.25_Final.pth]
Each measurement runs in its own process and reports that process's peak RSS (getrusage ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--sizes", default="100,1000")
ap.add_argument("--weights", default=str(Path(__file__).resolve().parents[2] / "shared/fixtures/retinaface/mobilenet0.25_Final.pth"))
ap.add_argument("--batch", type=int, default=4)
args = ap.parse_args()

CHILD = r"""
import json, resource, sys, time
from deployzoo.predict import predict
from deployzoo.metrics.widerface import evaluate
stage, eng, src, out, gt, batch = sys.argv[1:7]
t = time.perf_counter()
if stage == "predict":
    s = predict(eng, src, out, batch=int(batch), formats=("jsonl", "widerface"), show_progress=False)
    info = {"images": s.written, "skipped": s.skipped}
else:
    info = {"ap": evaluate(out, gt).to_json()}
info.update(stage=stage, seconds=round(time.perf_counter() - t, 1),
            peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
print(json.dumps(info))
"""

from deployzoo.cache import ensure_engine  # noqa: E402
from deployzoo.demo.widerface import write_demo  # noqa: E402

tmp = Path(tempfile.mkdtemp(prefix="dz-mem-"))
weights = args.weights if Path(args.weights).is_file() else None
eng = ensure_engine("retinaface", variant="mobilenet0.25", weights=weights, imgsz="origin", batch=None, cache_dir=tmp / "cache")
results = []
for n in (int(v) for v in args.sizes.split(",")):
    root = write_demo(tmp / f"demo{n}", n_images=n, n_events=10, seed=0)
    for stage in ("predict", "eval"):
        r = subprocess.run([sys.executable, "-c", CHILD, stage, str(eng), str(root / "WIDER_val" / "images"),
                            str(tmp / f"pred{n}"), str(root / "ground_truth"), str(args.batch)],
                           capture_output=True, text=True, check=True)
        info = json.loads(r.stdout.strip().splitlines()[-1])
        info["n"] = n
        results.append(info)
        print(json.dumps(info), flush=True)
print("weights:", weights or "random", "| batch", args.batch, "| engine", eng)

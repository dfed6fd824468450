"""Time the WIDER FACE evaluation on the real val ground truth (3226 images) with N predictions per image.

usage: python benchmarks/widerface_eval_speed.py [GT_DIR] [--per-image 750]
Writes the predictions to a temp dir in the official layout, then times read + evaluate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from deployzoo.data.widerface import load_gt
from deployzoo.metrics.widerface import evaluate
from deployzoo.tasks.face_detection import write_widerface_txt

ap = argparse.ArgumentParser()
ap.add_argument("gt", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/fixtures/widerface/ground_truth"))
ap.add_argument("--per-image", type=int, default=750)
args = ap.parse_args()
gt = load_gt(args.gt)
rng = np.random.default_rng(0)
with tempfile.TemporaryDirectory() as tmp:
    for e, names, bl in zip(gt.events, gt.files, gt.boxes):
        for n, b in zip(names, bl):
            k = args.per_image
            xy = rng.uniform(0, 1000, (k, 2))
            boxes = np.c_[xy, xy + rng.uniform(5, 200, (k, 2))]
            m = min(len(b), k)
            boxes[:m] = np.c_[b[:m, :2], b[:m, :2] + b[:m, 2:]] + rng.normal(0, 2, (m, 4))
            scores = np.sort(rng.random(k))[::-1]
            write_widerface_txt(Path(tmp), f"{e}/{n}.jpg", boxes, scores)
    t = time.perf_counter()
    res = evaluate(tmp, gt)
    dt = time.perf_counter() - t
print(f"{gt.n_images} images x {args.per_image} predictions: read + evaluate {dt:.2f} s; AP {res.to_json()}")

"""Time the WIDER FACE evaluation on the official val ground truth (3226 images).

usage: python benchmarks/widerface_eval_speed.py [GT_DIR] [--per-image 300] [--repeat 1]

Writes N predictions per image (the faces, jittered, plus random clutter with lower scores, sorted by score
as a detector writes them) in the official layout to a temp dir, then times read + evaluate
(deployzoo.metrics.widerface.evaluate) and prints the seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from deployzoo.data.widerface import load_gt
from deployzoo.metrics.widerface import evaluate

DEFAULT_GT = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "widerface" / "ground_truth"


def write_predictions(gt_dir: Path, out: Path, per_image: int, seed: int = 0) -> int:
    gt = load_gt(gt_dir)
    rng = np.random.default_rng(seed)
    for event, names, boxes in zip(gt.events, gt.files, gt.boxes):
        (out / event).mkdir(parents=True, exist_ok=True)
        for name, b in zip(names, boxes):
            p = np.c_[rng.uniform(0, 1000, (per_image, 2)), rng.uniform(5, 200, (per_image, 2))]
            m = min(len(b), per_image)
            p[:m] = b[:m] + rng.normal(0, 2, (m, 4))
            scores = rng.uniform(0.0, 0.5, per_image)
            scores[:m] = rng.uniform(0.4, 1.0, m)  # faces mostly outrank clutter
            rows = np.c_[np.round(p).astype(int), scores][np.argsort(-scores)]  # detector order: best first
            lines = [name, str(per_image)] + [f"{int(x)} {int(y)} {int(w)} {int(h)} {s:.6f} " for x, y, w, h, s in rows]
            (out / event / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return gt.n_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gt", nargs="?", type=Path, default=DEFAULT_GT, help="dir with the four WIDER val .mat files")
    ap.add_argument("--per-image", type=int, default=300, help="predictions per image")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs (the best is reported too)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        n = write_predictions(args.gt, Path(tmp), args.per_image)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = evaluate(tmp, args.gt)
            times.append(time.perf_counter() - t)
    print(f"{n} images x {args.per_image} predictions: read + evaluate {times[-1]:.2f} s "
          f"(best of {len(times)}: {min(times):.2f} s); AP {res.to_json()}")


if __name__ == "__main__":
    main()

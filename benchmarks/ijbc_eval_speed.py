"""Time the IJB-C 1:1 evaluation (deployzoo.metrics.ijbc.evaluate) at the real protocol size.

usage: python benchmarks/ijbc_eval_speed.py [--images 469375] [--templates 23124] [--pairs 15658489] [--dim 512]
                                            [--keep DIR] [--sklearn-roc] [--seed 0]

Writes a synthetic meta dir of that size (deployzoo.demo.ijbc.write_synthetic_meta: one gallery template per
subject, the rest probes, every probe paired with its gallery template plus random impostor pairs, sorted by
gallery template like the real pair file) and float32 features (subject centre + noise of random strength) to
a temp dir, or to DIR with --keep (and reused from DIR when it is already there). evaluate then runs in a
fresh process, so the peak RSS reported is its own: the features held in memory plus the evaluation.
--sklearn-roc also times sklearn.metrics.roc_curve on the same scores and checks it gives the same arrays.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2 ** 20


def prepare(root: Path, images: int, templates: int, pairs: int, dim: int, seed: int) -> float:
    """Meta files + features.npy under root (skipped when a matching set is there); returns seconds spent."""
    from deployzoo.demo.ijbc import write_synthetic_meta

    stamp = root / "benchmark.json"
    want = {"images": images, "templates": templates, "pairs": pairs, "dim": dim, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want and (root / "features.npy").exists():
        return 0.0
    t = time.perf_counter()
    sm = write_synthetic_meta(root, n_images=images, n_templates=templates, n_pairs=pairs, seed=seed)
    rng = np.random.default_rng(seed + 1)
    centres = rng.standard_normal((int(sm.subjects.max()) + 1, dim), dtype=np.float32)
    feats = np.lib.format.open_memmap(root / "features.npy", mode="w+", dtype=np.float32, shape=(images, dim))
    for s in range(0, images, 65_536):
        sub = sm.subjects[s:s + 65_536]
        noise = rng.standard_normal((len(sub), dim), dtype=np.float32)
        noise *= rng.uniform(2.0, 6.0, (len(sub), 1)).astype(np.float32)
        feats[s:s + len(sub)] = centres[sub] + noise
    feats.flush()
    del feats
    stamp.write_text(json.dumps(want))
    return time.perf_counter() - t


def run_child(root: Path, sklearn_roc: bool) -> None:
    """In a fresh process: load the features, evaluate, print one JSON line."""
    from deployzoo.metrics.ijbc import evaluate

    feats = np.load(root / "features.npy")  # fully in memory, as a caller holding the features would have them
    base = _rss_mib()
    res = evaluate(feats, root / "meta", features_path=root / "features.npy", keep_scores=sklearn_roc)
    out = {"timings": res.timings, "seconds": res.seconds, "rss_features": base, "peak_rss": _peak_rss_mib(),
           "result": res.to_json(), "n_rescored": res.n_rescored}
    if sklearn_roc:
        from sklearn.metrics import roc_curve

        t = time.perf_counter()
        fpr, tpr, _ = roc_curve(res.labels, res.scores)
        out["sklearn_roc_seconds"] = time.perf_counter() - t
        out["sklearn_roc_same"] = bool(np.array_equal(fpr, res.fpr) and np.array_equal(tpr, res.tpr))
    print(json.dumps(out))


def versions() -> str:
    import scipy
    import sklearn

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, scikit-learn {sklearn.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=469_375, help="image rows (real IJB-C: 469375)")
    ap.add_argument("--templates", type=int, default=23_124, help="templates (real IJB-C: 23124)")
    ap.add_argument("--pairs", type=int, default=15_658_489, help="template pairs (real IJB-C: 15658489)")
    ap.add_argument("--dim", type=int, default=512, help="feature dimension")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write (or reuse) the data in this directory")
    ap.add_argument("--sklearn-roc", action="store_true", help="also time sklearn's roc_curve on the scores")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        run_child(args.child, args.sklearn_roc)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        gen = prepare(root, args.images, args.templates, args.pairs, args.dim, args.seed)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(root)]
        if args.sklearn_roc:
            cmd.append("--sklearn-roc")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"evaluation failed:\n{proc.stderr.strip()}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    res = out["result"]
    print(f"IJB-C 1:1 evaluate, synthetic protocol: {args.images} images x {args.dim}-d float32, "
          f"{res['n_templates']} templates, {res['n_pairs']} pairs ({res['n_pos']} genuine)")
    print(f"machine: {versions()}")
    if gen:
        print(f"(writing the synthetic data took {gen:.1f} s, not counted)")
    print()
    print("| stage | seconds |")
    print("|---|---:|")
    names = {"read_meta": "read + check meta files (tid_mid, 5pts names + scores)",
             "pooling": "template pooling (media mean, template sum, normalise)",
             "pairs": "stream + parse pair file, template lookup (background thread, 2 parsers)",
             "meta+pooling+pairs (overlapped)": "= wall time of the three stages above, run concurrently",
             "scoring": "pair scores (BLAS tiles, sorts, near-tie rescoring)",
             "roc": "ROC, AUC, TAR read-off"}
    for k, v in out["timings"].items():
        print(f"| {names.get(k, k)} | {v:.2f} |")
    print(f"| **evaluate total** | **{out['seconds']:.2f}** |")
    if "sklearn_roc_seconds" in out:
        print(f"| (sklearn.metrics.roc_curve on the same scores, for comparison) | {out['sklearn_roc_seconds']:.2f} |")
    print()
    print(f"peak RSS {out['peak_rss']:.0f} MiB (features in memory alone: {out['rss_features']:.0f} MiB); "
          f"{out['n_rescored']} near-tie scores recomputed with the official expression")
    if "sklearn_roc_same" in out:
        print(f"sklearn roc_curve gives the same fpr/tpr arrays: {out['sklearn_roc_same']}")
    print("TAR@FAR:", ", ".join(f"{k}: {100 * v:.2f}%" for k, v in res["tar_at_far"].items()),
          f"AUC {100 * res['auc']:.4f}%")


if __name__ == "__main__":
    main()

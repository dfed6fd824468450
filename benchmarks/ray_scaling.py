"""predict on one process vs predict --cluster with 1 and 2 Ray workers, on this machine (docs/scaling.md).

usage: python benchmarks/ray_scaling.py [--out docs/benchmarks] [--fixtures ../shared/fixtures] [--images N]

RetinaFace-mnet (the released weights when the fixture is there, else random) at original size, ORT fp32, over the
COCO128 photos (real images of 480-640 px) repeated to --images. The cluster is a ray.cluster_utils.Cluster of
one raylet per worker (1 CPU each) started here, so "2 workers" is two nodes of one CPU each. Each row is one
whole `predict` call, start to end: for the cluster rows that includes connecting, shipping the engine through
the object store and starting the actors, which is reported on its own as well (the time to the first record).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/benchmarks")
ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
ap.add_argument("--images", type=int, default=256)
ap.add_argument("--batch", type=int, default=1)
args = ap.parse_args()

from deployzoo.build import build_engine  # noqa: E402
from deployzoo.cluster import ClusterSpec  # noqa: E402
from deployzoo.engine import machine, now_iso, versions  # noqa: E402
from deployzoo.export import export_onnx  # noqa: E402
from deployzoo.predict import predict  # noqa: E402
from deployzoo.report import md_table  # noqa: E402

fx = Path(args.fixtures)
work = Path(tempfile.mkdtemp(prefix="dz-ray-"))
weights = fx / "retinaface" / "mobilenet0.25_Final.pth"
export_onnx("retinaface", work / "mnet.onnx", variant="mobilenet0.25", weights=weights if weights.exists() else None,
            imgsz="origin", batch=None, check_parity=False)
eng = build_engine(work / "mnet.onnx", work / "mnet", precision="fp32")
src = work / "images"
src.mkdir()
coco = sorted((fx / "coco128" / "images").glob("*.jpg"))
for k in range(args.images):
    shutil.copy(coco[k % len(coco)], src / f"{k:05d}.jpg")


def first_record_seconds(out: Path, t0: float, stop: list[float]) -> None:
    pred = out / "predictions.jsonl"
    while not stop:
        if pred.is_file() and pred.stat().st_size > 0:
            stop.append(time.perf_counter() - t0)
            return
        time.sleep(0.005)


def timed(label: str, workers: int | None, threads: int | None) -> dict:
    import threading

    out = work / f"out-{label}"
    spec = None
    cluster = None
    if workers:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(workers - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        spec = ClusterSpec(cluster.address, workers=workers)
    first: list[float] = []
    t0 = time.perf_counter()
    watch = threading.Thread(target=first_record_seconds, args=(out, t0, first), daemon=True)
    watch.start()
    s = predict(eng, src, out, batch=args.batch, threads=threads, show_progress=False, cluster=spec)
    wall = time.perf_counter() - t0
    first.append(float("nan"))
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    stats = json.loads((out / "summary.json").read_text()).get("cluster", {})
    return {"setup": label, "workers": workers or 0, "threads": threads, "images": s.written, "seconds": round(wall, 2),
            "answered": stats.get("workers"), "driver_s": stats.get("driver_seconds"),
            "images_per_second": round(s.written / wall, 2), "first_record_s": round(first[0], 2),
            "steady_images_per_second": round((s.written - 1) / (wall - first[0]), 2) if wall > first[0] else None}


rows = [timed("local, ORT default threads", None, None), timed("local, 1 thread", None, 1),
        timed("cluster, 1 worker", 1, 1), timed("cluster, 2 workers", 2, 1)]
import ray  # noqa: E402

res = {"machine": machine(), "versions": {**versions(), "ray": ray.__version__}, "created": now_iso(), "images": args.images,
       "batch": args.batch, "weights": str(weights) if weights.exists() else "random", "rows": rows}
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "ray_scaling.json").write_text(json.dumps(res, indent=2) + "\n")
table = md_table(["Setup", "Workers (answered)", "Images", "Wall s", "img/s (wall)", "first record s", "img/s after it",
                  "driver s"],
                 [[r["setup"], f"{r['workers']} ({r['answered']})" if r["workers"] else "-", r["images"], r["seconds"],
                   r["images_per_second"], f"{r['first_record_s']:.2f}", r["steady_images_per_second"],
                   r["driver_s"] if r["driver_s"] is not None else "-"] for r in rows])
(out / "ray_scaling_tables.md").write_text(
    f"RetinaFace-mnet origin size, ORT fp32, batch {args.batch}, {args.images} COCO128 photos; "
    f"{res['machine']['cpu']}, {res['machine']['affinity_cores']} cores; Ray {ray.__version__}; {res['created']}.\n\n{table}\n")
print(table)
shutil.rmtree(work, ignore_errors=True)

"""predict --cluster on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and a
worker node, each a raylet of its own): the same files as local predict, byte for byte, in source order; a worker
killed mid-run is restarted by Ray and nothing is lost or written twice; --resume; one-line errors."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployzoo.errors import DeployzooError
from deployzoo.predict import predict

from conftest import astronaut_bgr, free_port, run_cli

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[data]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")

from deployzoo.cluster import ClusterSpec, import_ray  # noqa: E402

N_IMAGES = 48


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)  # one connection for the module (predict then reuses it)
    except Exception as exc:  # no room for two raylets here (ports, shared memory): say so, do not fail
        pytest.skip(f"cannot start a local two-node Ray cluster: {type(exc).__name__}: {exc}")
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """N_IMAGES photos of different sizes (the astronaut pasted at several scales on noise), one unreadable."""
    d = tmp_path_factory.mktemp("cluster_imgs")
    rng = np.random.default_rng(0)
    face = astronaut_bgr()
    for i in range(N_IMAGES - 1):
        h, w = int(rng.integers(160, 360)), int(rng.integers(160, 360))
        canvas = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        s = int(min(h, w) * rng.uniform(0.5, 1.0))
        canvas[:s, :s] = cv2.resize(face, (s, s))
        cv2.imwrite(str(d / f"p{i:03d}.jpg"), canvas)
    (d / "p999.jpg").write_bytes(b"not a jpeg")  # skipped, with the same reason on both paths
    return d


def _files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in ("predictions.jsonl", "skipped.jsonl")}


@pytest.fixture(scope="module")
def local(mnet_random_fp32, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "p"
    predict(mnet_random_fp32, photos, out, batch=4, formats=("jsonl", "widerface"), show_progress=False)
    return out


def test_cluster_predict_equals_local_predict(cluster, mnet_random_fp32, photos, local, tmp_path):
    out = tmp_path / "c"
    s = predict(mnet_random_fp32, photos, out, batch=4, formats=("jsonl", "widerface"), show_progress=False,
                cluster=ClusterSpec(cluster.address, workers=2))
    assert s.written == N_IMAGES - 1 and s.skipped == 1 and s.workers == 2  # both actors answered
    assert _files(out) == _files(local)  # the same records, in the same (source) order
    wider = sorted(p.relative_to(local) for p in local.rglob("*.txt"))
    assert wider and wider == sorted(p.relative_to(out) for p in out.rglob("*.txt"))
    assert all((local / p).read_bytes() == (out / p).read_bytes() for p in wider)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pipeline"] == "cluster" and summary["cluster"]["workers"] == 2
    assert summary["cluster"]["engine_from"] == ["shared path"]  # same machine: the directory itself


def test_run_cluster_scores_the_same_as_a_local_run(cluster, tmp_path):
    """`run --cluster`: the accuracy pass on the Ray workers gives the predictions and scores of a local run."""
    args = ["run", "mobilenetv1", "--precisions", "fp32", "--demo-images", "8", "--batches", "1", "--iters", "1",
            "--warmup", "0", "--no-reference"]
    run_cli([*args, "-o", str(tmp_path / "local")])
    run_cli([*args, "--cluster", cluster.address, "--workers", "2", "-o", str(tmp_path / "ray")])
    pred = Path("predictions") / "fp32"
    assert (tmp_path / "local" / pred / "predictions.jsonl").read_bytes() == \
        (tmp_path / "ray" / pred / "predictions.jsonl").read_bytes()
    summary = json.loads((tmp_path / "ray" / pred / "summary.json").read_text())
    assert summary["pipeline"] == "cluster" and summary["cluster"]["workers"] >= 1
    acc = [json.loads((tmp_path / d / "report.json").read_text())["accuracy"]["fp32"] for d in ("local", "ray")]
    assert [{k: a[k] for k in ("top1", "top5", "n", "n_missing")} for a in acc] == \
        [{k: acc[0][k] for k in ("top1", "top5", "n", "n_missing")}] * 2 and acc[1]["n"] == 8
    assert acc[1]["end_to_end"]["images"] == 8  # the cluster pass reports its own throughput and stage times
    assert acc[1]["end_to_end"]["ms_per_image"]["infer"] > 0 and acc[1]["end_to_end"]["ms_per_image"]["decode"] > 0


def _worker_pids() -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "PredictShard" in cmd or "MapWorker" in cmd:
            pids.append(p.pid)
    return pids


def test_a_killed_worker_is_restarted_and_nothing_is_lost_or_written_twice(cluster, mnet_random_fp32, photos,
                                                                            local, tmp_path):
    out = tmp_path / "k"
    killed: list[tuple[int, int]] = []

    def killer() -> None:  # once the first records are written, SIGKILL one worker process
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pred = out / "predictions.jsonl"
            n = pred.read_text().count("\n") if pred.is_file() else 0
            pids = _worker_pids()
            if n >= 2 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], n))
                return
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    s = predict(mnet_random_fp32, photos, out, batch=4, formats=("jsonl", "widerface"), show_progress=False,
                cluster=ClusterSpec(cluster.address, workers=2, ship_images=True, ship_engine=True))
    t.join()
    assert killed, "no worker process was found to kill"
    pid, written_then = killed[0]
    assert written_then < N_IMAGES, "the run had finished before the kill"
    names = [json.loads(line)["image"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(names) == len(set(names)) == N_IMAGES - 1  # nothing lost, nothing twice
    assert _files(out) == _files(local)
    assert s.written == N_IMAGES - 1
    # (this run also took the engine and the images through the object store: --ship-engine --ship-images)
    assert json.loads((out / "summary.json").read_text())["cluster"]["engine_from"] == ["object store"]


def test_cluster_resumes_a_local_run(cluster, mnet_random_fp32, photos, local, tmp_path):
    """An interrupted local run resumed on the cluster equals it resumed locally. 18 kept lines is not a multiple
    of the batch (4), so the batches after it differ from a fresh run's; the cluster must form the same ones."""
    import shutil

    out, ref = tmp_path / "r", tmp_path / "ref"
    predict(mnet_random_fp32, photos, out, batch=4, formats=("jsonl", "widerface"), show_progress=False)
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:18]))  # an interrupted run: 18 images kept
    shutil.copytree(out, ref)
    predict(mnet_random_fp32, photos, ref, batch=4, formats=("jsonl", "widerface"), show_progress=False, resume=True)
    run_cli(["predict", str(mnet_random_fp32), "--source", str(photos), "-o", str(out), "--batch", "4",
             "--format", "widerface", "--resume", "--cluster", cluster.address, "--workers", "2"])
    assert _files(out) == _files(ref)
    assert json.loads((out / "summary.json").read_text())["resumed"] == 18 + 1  # the kept lines and the skip


def test_arcface_features_on_the_cluster_equal_local(cluster, tmp_path):
    """Per-item metadata (landmarks, rows) travels to the workers and the features array is written by row."""
    from deployzoo.build import build_engine
    from deployzoo.data.face_align import ARCFACE_TEMPLATE
    from deployzoo.export import export_onnx

    export_onnx("arcface", tmp_path / "r18.onnx", variant="r18", batch=None)
    eng = build_engine(tmp_path / "r18.onnx", tmp_path / "r18", precision="fp32")
    src = tmp_path / "faces"
    src.mkdir()
    face = cv2.resize(astronaut_bgr()[40:260, 140:340], (160, 176))
    lines = []
    for i in range(6):
        cv2.imwrite(str(src / f"f{i}.jpg"), np.roll(face, 3 * i, axis=1))
        pts = ARCFACE_TEMPLATE * 1.3 + np.array([8.0 + i, 10.0])
        lines.append(f"f{i}.jpg " + " ".join(f"{v:.2f}" for v in pts.ravel()) + f" {0.9 - 0.05 * i:.2f}")
    (src / "landmarks.txt").write_text("\n".join(lines) + "\n")
    predict(eng, src / "landmarks.txt", tmp_path / "local", batch=2, show_progress=False)
    predict(eng, src / "landmarks.txt", tmp_path / "ray", batch=2, show_progress=False,
            cluster=ClusterSpec(cluster.address, workers=2))
    a, b = np.load(tmp_path / "local" / "features.npy"), np.load(tmp_path / "ray" / "features.npy")
    assert a.shape == (6, 512) and np.array_equal(a, b)
    assert (tmp_path / "local" / "predictions.jsonl").read_bytes() == (tmp_path / "ray" / "predictions.jsonl").read_bytes()


def test_one_line_refusals(cluster, mnet_random_fp32, photos, tmp_path, monkeypatch):
    ray.shutdown()  # not connected: the address is what predict connects to (last test of the module)
    with pytest.raises(DeployzooError, match="--save-img with --cluster"):
        predict(mnet_random_fp32, photos, tmp_path / "a", save_img=True, show_progress=False,
                cluster=ClusterSpec(cluster.address))
    with pytest.raises(DeployzooError, match="--workers 0"):
        ClusterSpec(cluster.address, workers=0).check()
    port = free_port()  # nothing listens there: refused at once, not after ray.init's minutes
    addr = f"127.0.0.1:{port}"
    with pytest.raises(DeployzooError, match=f"--cluster {addr}: nothing answers at 127.0.0.1:{port}"):
        predict(mnet_random_fp32, photos, tmp_path / "b", show_progress=False, cluster=ClusterSpec(addr))
    with pytest.raises(DeployzooError, match="^--cluster ray://h:10001: Ray Data does not run through Ray Client"):
        ClusterSpec("ray://h:10001").check()  # (measured: Ray Data's actors fail under Ray Client, ray 2.60)
    with pytest.raises(DeployzooError, match="--cluster nohost: expected auto, local or HOST:PORT"):
        predict(mnet_random_fp32, photos, tmp_path / "c", show_progress=False, cluster=ClusterSpec("nohost"))
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # a worker that cannot load the engine
        with pytest.raises(DeployzooError, match=r"^--cluster: the Ray run failed: --device cuda: onnxruntime has no "
                           r"CUDA provider here \(install onnxruntime-gpu\) \(0 of 48 images written; --resume"):
            predict(mnet_random_fp32, photos, tmp_path / "d", device="cuda", show_progress=False,
                    cluster=ClusterSpec(cluster.address, workers=1))
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(DeployzooError, match=r"--cluster needs Ray Data: pip install 'ray\[data\]'"):
        import_ray()


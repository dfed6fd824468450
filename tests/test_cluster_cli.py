"""`predict --cluster auto` from the command line against a cluster of two `ray start` processes on this machine
(a head and a worker node, as a user starts them), started and stopped by this test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deployzoo.predict import predict

from conftest import free_port

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")

RAY = Path(sys.executable).with_name("ray")
# every process of this test's cluster without Ray's token authentication (a token left in ~/.ray by another
# Ray on this machine would otherwise be required by some of them and not others)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """One `ray start --block` node; the process stays in the foreground, so terminating it stops the node."""
    return subprocess.Popen([str(RAY), "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
                             "--node-ip-address", "127.0.0.1", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=ENV)


def _stop(p: subprocess.Popen) -> None:
    """The node's whole process group: SIGKILL, since nothing of it needs to be kept (it would wait out a SIGTERM
    for 30 s)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(30)


@pytest.fixture(scope="module")
def ray_start(tmp_path_factory):
    if not RAY.is_file():
        pytest.skip(f"{RAY}: the ray command is not installed")
    logs = tmp_path_factory.mktemp("ray_logs")
    port = free_port()
    head = _start(["--head", "--port", str(port), "--include-dashboard=false"], logs / "head.log")
    nodes = [head]
    try:
        deadline = time.monotonic() + 90
        while True:  # the head answers once its GCS is up; then the worker node joins it
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"ray start --head did not come up: {(logs / 'head.log').read_text()[-500:]}")
                time.sleep(0.5)
        nodes.append(_start(["--address", f"127.0.0.1:{port}"], logs / "worker.log"))
        count = ("import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))" % port)
        while subprocess.run([sys.executable, "-c", count], capture_output=True, text=True, env=ENV,
                             timeout=60).stdout.strip() != "2":
            if nodes[1].poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"the second ray node did not join: {(logs / 'worker.log').read_text()[-500:]}")
            time.sleep(1)
        yield port
    finally:
        for p in reversed(nodes):
            _stop(p)
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # the address `auto` would find
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()  # (a killed head leaves it behind, and Ray would try it first)


def test_predict_cluster_auto_from_the_command_line(ray_start, mnet_random_fp32, image_dir, tmp_path):
    """auto: the cluster `ray start` made here (the address file it writes)."""
    local = tmp_path / "local"
    predict(mnet_random_fp32, image_dir, local, batch=2, show_progress=False)
    out = tmp_path / "c"
    cli = [str(Path(sys.executable).with_name("deployzoo")), "predict", str(mnet_random_fp32), "--source",
           str(image_dir), "-o", str(out), "--batch", "2", "--cluster", "auto", "--workers", "2"]
    res = subprocess.run(cli, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Ray worker" in res.stdout, res.stdout
    assert (out / "predictions.jsonl").read_bytes() == (local / "predictions.jsonl").read_bytes()
    assert json.loads((out / "summary.json").read_text())["cluster"]["address"] == "auto"

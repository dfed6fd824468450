"""Engine artifacts: a directory with the runtime's model file and a manifest.json that says everything needed
to run it (model, task, input spec, precision, batch range, post-processing, calibration, weights, versions)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from deployzoo.errors import DeployzooError

MANIFEST = "manifest.json"
FORMAT = "deployzoo-engine/1"
RANDOM_WEIGHTS_WARNING = "random weights: accuracy not meaningful"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("deployzoo", "torch", "torchvision", "onnx", "onnxruntime", "numpy", "cv2"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as absent
            out[mod] = "absent"
    try:
        import torch

        out["cuda"] = str(torch.version.cuda or "none")
        out["cudnn"] = str(torch.backends.cudnn.version() or "none") if torch.backends.cudnn.is_available() else "none"
    except Exception:  # noqa: BLE001 - torch absent or broken: recorded above
        pass
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("timm", "torchao"):  # metadata only: importing timm costs seconds; key absent when not installed
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


# nvidia-smi --query-gpu field -> key in gpu_info (values "[N/A]" / "[Not Supported]" leave the key out)
SMI_FIELDS = {"name": "name", "driver_version": "driver_version", "clocks.sm": "sm_clock_mhz",
              "clocks.max.sm": "sm_clock_max_mhz", "clocks.mem": "mem_clock_mhz", "power.limit": "power_limit_w",
              "temperature.gpu": "temperature_c", "persistence_mode": "persistence_mode"}


def nvidia_smi(gpu_id: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Clocks, power limit, temperature, driver of one GPU (`-i gpu_id`; without it, the only GPU) from nvidia-smi;
    {} when nvidia-smi is absent, fails, times out, or lists several GPUs and none was named."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    cmd = [exe, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits",
           *(["-i", gpu_id] if gpu_id else [])]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or len(lines) != 1:
        return {}
    vals = [v.strip() for v in lines[0].split(",")]
    if len(vals) != len(SMI_FIELDS):
        return {}
    out: dict[str, Any] = {}
    for key, v in zip(SMI_FIELDS.values(), vals):
        if not v or v.strip("[]") in ("N/A", "Not Supported", "Unknown Error"):
            continue
        try:
            f = float(v)
            out[key] = int(f) if f.is_integer() else f
        except ValueError:
            out[key] = v
    return out


def gpu_info(device: Any = None) -> dict[str, Any]:
    """What a benchmark on a GPU should record: name, compute capability, memory, CUDA runtime / cuDNN, and from
    nvidia-smi the driver, clocks (SM now / max, memory), power limit, temperature, persistence mode. `device`:
    None / "auto" (the current CUDA device), "cuda", "cuda:N" or N; {} without CUDA or for a non-CUDA device."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        dev = torch.device("cuda" if device in (None, "", "auto") else device)
        if dev.type != "cuda":
            return {}
        idx = torch.cuda.current_device() if dev.index is None else dev.index
        p = torch.cuda.get_device_properties(idx)
    except Exception:  # noqa: BLE001 - an unusable CUDA setup records nothing rather than failing a bench
        return {}
    out: dict[str, Any] = {
        "index": idx, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
        "total_memory_mib": round(p.total_memory / 2**20), "multiprocessors": p.multi_processor_count,
        "cuda_runtime": str(torch.version.cuda), "cudnn": str(torch.backends.cudnn.version()),
    }
    uuid = str(getattr(p, "uuid", "") or "")
    # CUDA's index is not nvidia-smi's under CUDA_VISIBLE_DEVICES: name the GPU by UUID, else the machine's only GPU
    if uuid and not uuid.startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"
    smi = (nvidia_smi(uuid) if uuid else {}) or nvidia_smi()
    out.update({k: v for k, v in smi.items() if k != "name"})
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import psutil

    return {
        "cpu": cpu,
        "cores_logical": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_write_file(path: str | Path, writer: Callable[[Path], Any]) -> None:
    """Call writer(tmp_path) then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_manifest(engine_dir: str | Path) -> dict[str, Any]:
    d = Path(engine_dir)
    m = d / MANIFEST
    if not d.is_dir():
        raise DeployzooError(f"{d}: not an engine directory (build one with `deployzoo build`)")
    if not m.is_file():
        raise DeployzooError(f"{d}: no {MANIFEST} in the engine directory")
    try:
        data = json.loads(m.read_text())
    except json.JSONDecodeError as exc:
        raise DeployzooError(f"{m}: malformed manifest ({exc.msg} at line {exc.lineno})") from None
    if data.get("format") != FORMAT:
        raise DeployzooError(f"{m}: unknown engine format {data.get('format')!r} (expected {FORMAT})")
    for key in ("model", "task", "backend", "precision", "model_file", "input", "batch"):
        if key not in data:
            raise DeployzooError(f"{m}: manifest misses key {key!r}")
    return data


def engine_feeds(spec: dict[str, Any], x: Any) -> dict[str, np.ndarray]:
    """Graph inputs by name for a batch, for an engine whose input spec (manifest["input"]) is `spec`: `x` is the
    image array, or a dict of every input (as a task's collate gives it); the image input comes back as contiguous
    float32. Extra inputs an image array does not carry get their defaults: `image_sizes` (each image's valid h, w
    inside the padded batch) = the whole padded size."""
    name = spec.get("name", "images")
    feeds = dict(x) if isinstance(x, dict) else {name: x}
    feeds[name] = np.ascontiguousarray(feeds[name], dtype=np.float32)
    for extra in spec.get("extra_inputs", ()):
        if extra in feeds:
            continue
        if extra != "image_sizes":
            raise DeployzooError(f"engine input {extra!r} needs a value (no default for it)")
        img = feeds[name]
        feeds[extra] = np.tile(np.array([img.shape[2:]], dtype=np.int64), (img.shape[0], 1))
    return feeds


def batch_allows(manifest: dict[str, Any], n: int) -> bool:
    b = manifest["batch"]
    if b.get("dynamic"):
        return b.get("min", 1) <= n <= b.get("max", 1 << 30)
    return n == b["size"]


def check_batch(manifest: dict[str, Any], n: int, where: str | Path) -> None:
    if batch_allows(manifest, n):
        return
    b = manifest["batch"]
    allowed = f"{b.get('min', 1)}..{b.get('max')}" if b.get("dynamic") else f"exactly {b['size']} (fixed-batch engine)"
    raise DeployzooError(f"{where}: batch {n} not supported by this engine: batch must be {allowed}")

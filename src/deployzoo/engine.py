"""Engine artifacts: a directory with the runtime's model file and a manifest.json that says everything needed
to run it (model, task, input spec, precision, batch range, post-processing, calibration, weights, versions)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.errors import DeployzooError
from deployzoo.specs import BatchSpec, FileRecord, InputSpec

MANIFEST = "manifest.json"
FORMAT = "deployzoo-engine/2"  # /2: `files` with sha256 + size, validated on load
RANDOM_WEIGHTS_WARNING = "random weights: accuracy not meaningful"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("deployzoo", "torch", "torchvision", "onnx", "onnxruntime", "numpy", "cv2"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as absent
            out[mod] = "absent"
    for mod in ("openvino", "nncf"):  # recorded when this process used them (importing them costs seconds)
        if mod in sys.modules:
            out[mod] = str(getattr(sys.modules[mod], "__version__", "?"))
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


def read_manifest(engine_dir: str | Path) -> dict[str, Any]:
    """The validated manifest of an engine directory; any problem is one line naming the manifest and the key."""
    d = Path(engine_dir)
    m = d / MANIFEST
    if not d.is_dir():
        raise DeployzooError(f"{d}: not an engine directory (build one with `deployzoo build`)")
    if not m.is_file():
        raise DeployzooError(f"{d}: no {MANIFEST} in the engine directory")
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DeployzooError(f"{m}: malformed manifest ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployzooError(f"{m}: cannot read the manifest ({getattr(exc, 'strerror', None) or exc})") from None
    validate_manifest(data, m)
    return data


def is_engine_dir(path: str | Path) -> bool:
    """Whether `path` is a directory that deployzoo built (its manifest names an engine format of ours), the
    only kind of directory `build -o` replaces."""
    m = Path(path) / MANIFEST
    try:
        fmt = json.loads(m.read_text(encoding="utf-8")).get("format", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(fmt, str) and fmt.startswith("deployzoo-engine/")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _bad(m: Path, key: str, problem: str) -> DeployzooError:
    return DeployzooError(f"{m}: manifest key {key!r} {problem}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def post_problem(post: dict[str, Any]) -> tuple[str, str] | None:
    """(key, problem) for the first post-processing setting out of its range, else None."""
    checks = {
        "conf": (lambda v: _is_num(v) and 0.0 <= v < 1.0, "must be a number in [0, 1)"),
        "iou": (lambda v: _is_num(v) and 0.0 < v <= 1.0, "must be a number in (0, 1]"),
        "rpn_nms": (lambda v: _is_num(v) and 0.0 < v <= 1.0, "must be a number in (0, 1]"),
        "mask_thr": (lambda v: _is_num(v) and 0.0 <= v <= 1.0, "must be a number in [0, 1]"),
        "max_det": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "top_k": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "topk": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "rpn_pre_nms": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "rpn_post_nms": (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
        "flip": (lambda v: isinstance(v, bool), "must be true or false"),
    }
    for key, (ok, problem) in checks.items():
        if key in post and not ok(post[key]):
            return key, f"{post[key]!r}: {problem}"
    return None


def validate_manifest(data: Any, m: Path) -> None:
    """Types and required keys of a manifest, and its agreement with the registry: the model and variant exist,
    the task is the model's, the outputs are those the task's post-processing reads, the post-processing has the
    model's settings in range. (The model file's own hash and shapes are checked when it is loaded.)"""
    from deployzoo.registry import PRECISIONS, backend_names, get_model

    if not isinstance(data, dict):
        raise DeployzooError(f"{m}: manifest is not a JSON object")
    if data.get("format") != FORMAT:
        hint = " (built by an older deployzoo: build it again)" if str(data.get("format", "")).startswith(
            "deployzoo-engine/") else ""
        raise DeployzooError(f"{m}: unknown engine format {data.get('format')!r} (expected {FORMAT}){hint}")
    types = {"model": str, "variant": str, "task": str, "backend": str, "precision": str, "model_file": str,
             "files": dict, "input": dict, "batch": dict, "outputs": list, "postprocess": dict}
    for key, typ in types.items():
        if key not in data:
            raise DeployzooError(f"{m}: manifest misses key {key!r}")
        if not isinstance(data[key], typ):
            raise _bad(m, key, f"must be a JSON {'object' if typ is dict else 'array' if typ is list else 'string'}, "
                       f"got {type(data[key]).__name__}")
    try:
        spec = get_model(data["model"])
    except DeployzooError as exc:
        raise _bad(m, "model", str(exc)) from None
    if data["variant"] not in spec.variants:
        raise _bad(m, "variant", f"{data['variant']!r} is not a variant of {spec.name} ({', '.join(spec.variants)})")
    if data["task"] != spec.task:
        raise _bad(m, "task", f"{data['task']!r} is not the task of {spec.name} ({spec.task})")
    if data["backend"] not in backend_names():
        raise _bad(m, "backend", f"{data['backend']!r} unknown (choose from {', '.join(backend_names())})")
    if data["precision"] not in PRECISIONS:
        raise _bad(m, "precision", f"{data['precision']!r} unknown (choose from {', '.join(PRECISIONS)})")
    mf = data["model_file"]
    if not mf or Path(mf).is_absolute() or ".." in Path(mf).parts or "/" in mf or "\\" in mf:
        raise _bad(m, "model_file", f"{mf!r} must be a file name inside the engine directory")
    files = data["files"]
    if mf not in files:
        raise _bad(m, "files", f"has no entry for the model file {mf!r}")
    for name, info in files.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or name == MANIFEST:
            raise _bad(m, "files", f"entry {name!r} must be a file name inside the engine directory")
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or not _SHA256.match(info["sha256"]):
            raise _bad(m, f"files.{name}", "must hold a sha256 (64 hex digits)")
        if not _is_int(info.get("bytes")) or info["bytes"] < 0:
            raise _bad(m, f"files.{name}", "must hold its size in bytes")
    _validate_input(data["input"], m)
    _validate_batch(data["batch"], m)
    outs = data["outputs"]
    if list(outs) != list(spec.output_names):
        raise _bad(m, "outputs", f"{outs} are not the outputs task {spec.task} reads for {spec.name} "
                   f"({list(spec.output_names)})")
    post = data["postprocess"]
    missing = [k for k in spec.post_for(data["variant"]) if k not in post]
    if missing:
        raise _bad(m, "postprocess", f"misses {', '.join(repr(k) for k in missing)}")
    bad = post_problem(post)
    if bad:
        raise _bad(m, f"postprocess.{bad[0]}", bad[1])


def _validate_input(spec: dict[str, Any], m: Path) -> None:
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise _bad(m, "input.name", "must be the graph's input name (a string)")
    sz = spec.get("imgsz")
    if not (sz == "origin" or (isinstance(sz, list) and len(sz) == 2 and all(_is_int(v) and v >= 1 for v in sz))):
        raise _bad(m, "input.imgsz", f"{sz!r} must be 'origin' or [H, W] with positive integers")
    if spec.get("color", "BGR") not in ("BGR", "RGB"):
        raise _bad(m, "input.color", f"{spec.get('color')!r} must be 'BGR' or 'RGB'")
    for key in ("mean", "std"):
        v = spec.get(key, [0.0, 0.0, 0.0] if key == "mean" else [1.0, 1.0, 1.0])
        if not (isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v)):
            raise _bad(m, f"input.{key}", f"{v!r} must be 3 numbers")
    if any(x == 0 for x in spec.get("std", [1.0, 1.0, 1.0])):
        raise _bad(m, "input.std", "must not contain 0")
    extra = spec.get("extra_inputs", [])
    if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
        raise _bad(m, "input.extra_inputs", "must be a list of input names")
    if "exif_orientation" in spec and not isinstance(spec["exif_orientation"], bool):
        raise _bad(m, "input.exif_orientation", "must be true or false")


def _validate_batch(b: dict[str, Any], m: Path) -> None:
    if not isinstance(b.get("dynamic"), bool):
        raise _bad(m, "batch.dynamic", "must be true or false")
    if b["dynamic"]:
        lo, hi = b.get("min", 1), b.get("max")
        if not (_is_int(lo) and _is_int(hi) and 1 <= lo <= hi):
            raise _bad(m, "batch", f"min {lo!r} / max {hi!r} must be integers with 1 <= min <= max")
    elif not (_is_int(b.get("size")) and b["size"] >= 1):
        raise _bad(m, "batch.size", f"{b.get('size')!r} must be an integer >= 1 (fixed-batch engine)")


def record_files(engine_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file a backend wrote into an engine directory (the manifest's `files`)."""
    from deployzoo.checkpoint import file_sha256

    return {p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(Path(engine_dir).iterdir()) if p.is_file() and p.name != MANIFEST}


def verify_files(engine_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Each file the manifest lists is there with its recorded size and sha256: a truncated, corrupted or swapped
    model file is refused before a runtime reads it."""
    from deployzoo.checkpoint import file_sha256

    d = Path(engine_dir)
    for name, info in manifest["files"].items():
        p = d / name
        if not p.is_file():
            raise DeployzooError(f"{p}: engine file missing (the manifest lists it); build the engine again")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise DeployzooError(f"{p}: engine file is {size} bytes, the manifest recorded {info['bytes']} "
                                 "(truncated or replaced); build the engine again")
        if file_sha256(p) != info["sha256"]:
            raise DeployzooError(f"{p}: engine file's sha256 differs from the manifest's (corrupted or replaced); "
                                 "build the engine again")


def engine_feeds(spec: InputSpec, x: Any) -> dict[str, np.ndarray]:
    """Graph inputs by name for a batch, for an engine whose input is `spec`: `x` is the image array, or a dict of
    every input (as a task's collate gives it); the image input comes back as contiguous float32. Extra inputs an
    image array does not carry get their defaults: `image_sizes` (each image's valid h, w inside the padded batch)
    = the whole padded size."""
    feeds = dict(x) if isinstance(x, dict) else {spec.name: x}
    feeds[spec.name] = np.ascontiguousarray(feeds[spec.name], dtype=np.float32)
    for extra in spec.extra_inputs:
        if extra in feeds:
            continue
        if extra != "image_sizes":
            raise DeployzooError(f"engine input {extra!r} needs a value (no default for it)")
        img = feeds[spec.name]
        feeds[extra] = np.tile(np.array([img.shape[2:]], dtype=np.int64), (img.shape[0], 1))
    return feeds


@dataclass(frozen=True)
class Engine:
    """A built engine, as its validated manifest describes it. `Engine.load(dir)` reads, validates and checks the
    files' hashes once; backends' load, the pipelines, predict, bench and run read its attributes. `manifest` is
    the JSON as read, for what is recorded verbatim (reports, bench rows)."""

    dir: Path
    model: str
    variant: str
    task: str
    backend: str
    precision: str
    model_file: str
    files: Mapping[str, FileRecord]
    input: InputSpec
    batch: BatchSpec
    outputs: tuple[str, ...]
    post: Mapping[str, Any]
    options: Mapping[str, Any]
    compile: Mapping[str, Any]
    weights: Mapping[str, Any]
    source_graph: Mapping[str, Any]
    calibration: Mapping[str, Any] | None
    warnings: tuple[str, ...]
    created: str
    manifest: Mapping[str, Any] = field(repr=False)

    @classmethod
    def load(cls, engine_dir: str | Path, verify: bool = True) -> Engine:
        """The engine in `engine_dir`: manifest read and validated, and (verify) every file's size and sha256
        checked against it. Any problem is one line naming the manifest key or the file."""
        d = Path(engine_dir)
        m = read_manifest(d)
        if verify:
            verify_files(d, m)
        return cls.from_manifest(m, d)

    @classmethod
    def from_manifest(cls, m: Mapping[str, Any], engine_dir: str | Path) -> Engine:
        """From a manifest validate_manifest accepted."""
        return cls(
            dir=Path(engine_dir), model=m["model"], variant=m["variant"], task=m["task"], backend=m["backend"],
            precision=m["precision"], model_file=m["model_file"],
            files={k: FileRecord(v["sha256"], int(v["bytes"])) for k, v in m["files"].items()},
            input=InputSpec.from_dict(m["input"]), batch=BatchSpec.from_dict(m["batch"]),
            outputs=tuple(m["outputs"]), post=dict(m["postprocess"]), options=dict(m.get("options") or {}),
            compile=dict(m.get("compile") or {}), weights=dict(m.get("weights") or {}),
            source_graph=dict(m.get("source_graph") or {}), calibration=m.get("calibration"),
            warnings=tuple(m.get("warnings") or ()), created=str(m.get("created", "")), manifest=dict(m),
        )

    @property
    def model_path(self) -> Path:
        return self.dir / self.model_file

    @property
    def model_sha256(self) -> str:
        return self.files[self.model_file].sha256

    @property
    def graph_sha256(self) -> str | None:
        """sha256 of the exported graph the engine was built from."""
        return self.source_graph.get("sha256")

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    @property
    def label(self) -> str:
        """`model-variant`, as reports name an engine."""
        return f"{self.model}-{self.variant}"

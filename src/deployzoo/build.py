"""`deployzoo build`: exported graph + backend + precision (+ calibration) -> engine directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deployzoo.checkpoint import file_sha256
from deployzoo.engine import (FORMAT, MANIFEST, RANDOM_WEIGHTS_WARNING, is_engine_dir, now_iso, post_problem,
                              record_files, validate_manifest, versions)
from deployzoo.files import atomic_dir, check_output_dir, describe_os_error, write_json
from deployzoo.errors import DeployzooError
from deployzoo.export import read_onnx_meta
from deployzoo.quant.calib import CalibSet, make_calib_set
from deployzoo.registry import canonical_precision, get_backend, get_task

log = logging.getLogger(__name__)


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    backend: str = "ort",
    precision: str = "fp32",
    calib: str | Path | CalibSet | None = None,
    calib_size: int = 64,
    calib_method: str = "minmax",
    post: dict[str, Any] | None = None,
    float_groups: tuple[str, ...] | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """`options` are backend build options (device, tf32, channels_last, cuda_graphs, opt_batch for the
    PyTorch-based backends; backends/torch_common.py); a backend that takes none refuses any that is set."""
    onnx_path = Path(onnx_path)
    out_dir = Path(out_dir)
    check_output_dir(out_dir, is_engine_dir, "deployzoo engine directory")
    precision = canonical_precision(precision)
    be = get_backend(backend)
    if precision not in be.precisions:
        if hasattr(be, "precision_error"):
            raise DeployzooError(be.precision_error(precision))
        raise DeployzooError(f"backend {backend}: precision {precision} not supported here (choose {', '.join(be.precisions)})")
    meta = read_onnx_meta(onnx_path)
    if float_groups is not None:
        meta["int8_float_groups"] = list(float_groups)
    postproc = dict(meta["postprocess"])
    for k, v in (post or {}).items():
        if v is not None:
            postproc[k] = v
    _check_post(postproc)
    cs: CalibSet | None = None
    if precision == "int8":
        if calib is None:
            raise DeployzooError("int8 needs calibration images: pass --calib DIR (separate from the evaluation set)")
        cs = calib if isinstance(calib, CalibSet) else make_calib_set(calib, calib_size, calib_method,
                                                                      task=get_task(meta["task"]))
        if cs.method != "minmax":
            log.warning("calibration method %s: ONNX Runtime keeps every activation of all %d calibration images in "
                        "memory (VOLO-D2 with 128 images exceeds 24 GiB); minmax streams", cs.method, len(cs.items))
    elif calib is not None:
        log.info("--calib ignored for precision %s", precision)
    with atomic_dir(out_dir) as tmp:
        set_opts = {k: v for k, v in (options or {}).items() if v is not None}
        takes = getattr(be, "takes_options", False)
        if set_opts and not takes:
            raise DeployzooError(f"backend {be.name}: build options {', '.join(sorted(set_opts))} apply to the "
                                 "PyTorch backends (torch, aoti) only")
        try:
            info = be.build(onnx_path, tmp, precision, meta, cs, *((set_opts,) if takes else ()))
        except OSError as exc:  # full or read-only output, mostly: name the engine being written
            raise DeployzooError(describe_os_error(exc, out_dir, exact=True)) from None
        warnings = [RANDOM_WEIGHTS_WARNING] if meta["weights"].get("random") else []
        manifest = {
            "format": FORMAT,
            "model": meta["model"],
            "variant": meta["variant"],
            "task": meta["task"],
            "backend": be.name,
            "precision": precision,
            "input": meta["input"],
            "batch": meta["batch"],
            "outputs": meta["outputs"],
            "postprocess": postproc,
            "calibration": cs.describe() if cs else None,
            "weights": meta["weights"],
            "source_graph": {"path": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path), **meta["export"]},
            "warnings": warnings,
            "created": now_iso(),
            "versions": versions(),
            **info,
        }
        manifest["files"] = record_files(tmp)
        validate_manifest(manifest, tmp / MANIFEST)
        write_json(tmp / MANIFEST, manifest)
    return out_dir


def _check_post(post: dict[str, Any]) -> None:
    bad = post_problem(post)
    if bad:
        key = bad[0].replace("_", "-")
        raise DeployzooError(f"--{key} {bad[1]}")

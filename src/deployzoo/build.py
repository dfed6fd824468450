"""`deployzoo build`: exported graph + BuildRequest (backend, precision, calibration, options, recipe) -> engine
directory (the runtime's model file + manifest.json)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from deployzoo.checkpoint import file_sha256
from deployzoo.engine import (FORMAT, MANIFEST, RANDOM_WEIGHTS_WARNING, Engine, is_engine_dir, now_iso, post_problem,
                              record_files, validate_manifest, versions)
from deployzoo.errors import DeployzooError
from deployzoo.files import atomic_dir, check_output_dir, describe_os_error, write_json
from deployzoo.registry import get_backend, get_task
from deployzoo.request import BuildRequest, Calibration, Graph

log = logging.getLogger(__name__)


def build(graph: Graph | str | Path, out_dir: str | Path, request: BuildRequest,
          extra_manifest: dict[str, Any] | None = None, extra_files: Callable[[Path], Any] | None = None) -> Engine:
    """Build `request` from the exported `graph` into `out_dir` (written whole or not at all) and return the
    engine. The request's model, variant, size and batch must be the graph's (BuildRequest.for_graph).
    `extra_manifest`: entries recorded beside the build's own (the int8 planner's trials); `extra_files` writes
    side files into the directory being built (the planner's plot), recorded with the others."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, is_engine_dir, "deployzoo engine directory")
    g = graph if isinstance(graph, Graph) else Graph.read(graph)
    _check_matches(g, request)
    be = get_backend(request.backend)
    postproc = {**g.postprocess, **dict(request.post)}
    _check_post(postproc)
    calib = request.calibration
    if request.needs_calibration:
        calib = calib.resolve(get_task(g.task))  # (BuildRequest.create refuses int8 without a calibration)
        if calib.images.method != "minmax":
            log.warning("calibration method %s: ONNX Runtime keeps every activation of all %d calibration images in "
                        "memory (VOLO-D2 with 128 images exceeds 24 GiB); minmax streams", calib.method,
                        len(calib.images.items))
        request = replace(request, calibration=calib)
    elif calib is not None:
        log.info("--calib ignored for precision %s", request.precision)
        calib = None
    with atomic_dir(out_dir) as tmp:
        try:
            info = be.build(g, tmp, request)
        except OSError as exc:  # full or read-only output, mostly: name the engine being written
            raise DeployzooError(describe_os_error(exc, out_dir, exact=True)) from None
        manifest = {
            "format": FORMAT,
            "model": g.model,
            "variant": g.variant,
            "task": g.task,
            "backend": be.name,
            "precision": request.precision,
            "input": g.meta["input"],
            "batch": g.batch.to_dict(),
            "outputs": list(g.outputs),
            "postprocess": postproc,
            "calibration": calib.images.describe() if calib is not None else None,
            "weights": dict(g.weights),
            "source_graph": {"path": str(g.path.resolve()), "sha256": file_sha256(g.path), **g.export},
            "warnings": [RANDOM_WEIGHTS_WARNING] if g.weights.get("random") else [],
            "created": now_iso(),
            "versions": versions(),
            **info,
            **(extra_manifest or {}),
        }
        if extra_files is not None:
            extra_files(tmp)
        manifest["files"] = record_files(tmp)
        validate_manifest(manifest, tmp / MANIFEST)
        write_json(tmp / MANIFEST, manifest)
    return Engine.from_manifest(manifest, out_dir)


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    backend: str = "ort",
    precision: str = "fp32",
    calib: str | Path | Any | None = None,
    calib_size: int = 64,
    calib_method: str = "minmax",
    post: dict[str, Any] | None = None,
    float_groups: tuple[str, ...] | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """`build` with the request made from keywords (the library's short form); returns the engine directory.
    `calib` is a directory or an already chosen quant.calib.CalibSet; `options` the BuildOptions fields."""
    check_output_dir(Path(out_dir), is_engine_dir, "deployzoo engine directory")
    cal = None
    if calib is not None:
        cal = calib if not isinstance(calib, (str, Path)) else Calibration(Path(calib), calib_size, calib_method)
    graph = Graph.read(onnx_path)
    request = BuildRequest.for_graph(graph, backend=backend, precision=precision, calibration=cal,
                                     options=options, float_groups=float_groups, post=post)
    return build(graph, out_dir, request).dir


def _check_matches(g: Graph, r: BuildRequest) -> None:
    from deployzoo.registry import get_model

    model = get_model(g.model).name
    size = g.input.imgsz
    batch = None if g.batch.dynamic else g.batch.size
    if (model, g.variant, size, batch) != (r.model, r.variant, r.imgsz, r.batch):
        raise DeployzooError(f"{g.path}: the graph is {model} {g.variant} {size} batch {batch or 'dynamic'}, the build "
                             f"request {r.model} {r.variant} {r.imgsz} batch {r.batch or 'dynamic'}")


def _check_post(post: dict[str, Any]) -> None:
    bad = post_problem(post)
    if bad:
        key = bad[0].replace("_", "-")
        raise DeployzooError(f"--{key} {bad[1]}")

"""Content-hashed engine cache: the same model, weights, shapes, backend, precision and calibration set build once."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from deployzoo import __version__
from deployzoo.build import build
from deployzoo.checkpoint import file_sha256
from deployzoo.engine import MANIFEST, Engine
from deployzoo.errors import DeployzooError
from deployzoo.export import export_onnx
from deployzoo.files import default_cache_dir, write_json  # noqa: F401 (default_cache_dir re-exported)
from deployzoo.registry import canonical_precision, get_model, get_task
from deployzoo.request import BuildRequest, Calibration, Graph

log = logging.getLogger(__name__)


def content_key(obj: Any) -> str:
    """sha256 of an object's canonical JSON: the identity of a cached graph, engine or stage result."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class StageCache:
    """Results of `run`'s stages stored as DIR/NAME.json = {key, value}; a stage whose identity (any JSON-able
    object: the engine, the settings, the data) is unchanged is not computed again."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def get_or_compute(self, name: str, identity: Any, compute: Callable[[], Any], force: bool = False) -> Any:
        """The value kept for (`name`, `identity`), else compute() kept; `force` computes it again."""
        path, key = self.root / f"{name}.json", content_key(identity)[:16]
        if path.is_file() and not force:
            try:
                d = json.loads(path.read_text())
                if d.get("key") == key:
                    return d["value"]
            except (json.JSONDecodeError, KeyError, AttributeError):
                pass
        value = compute()
        write_json(path, {"key": key, "value": value})
        return value


def cached_engine(request: BuildRequest, cache_dir: str | Path | None = None,
                  max_drop: float | None = None) -> Engine:
    """Export (if needed) and build (if needed) the engine of `request` under the cache; return it. The graph is
    keyed on what it depends on (model, variant, weights' sha256, size, batch), the engine on the request's whole
    identity (backend, precision, calibration file list, recipe, options). `max_drop`: an int8 engine planned by
    quant/planner.py (the fastest mix within that drop, timed on this machine), keyed on the drop too."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    wid = {"sha256": file_sha256(request.weights)} if request.weights else {"random_seed": request.seed}
    name = f"{request.model}-{request.variant}"
    onnx_path = cache / "onnx" / f"{name}-{content_key(request.graph_identity(wid, __version__))[:16]}.onnx"
    if not onnx_path.is_file():
        log.info("exporting %s %s -> %s", request.model, request.variant, onnx_path)
        export_onnx(request.model, onnx_path, variant=request.variant, weights=request.weights,
                    imgsz=request.imgsz if request.imgsz == "origin" else list(request.imgsz), batch=request.batch,
                    seed=request.seed)
    if request.needs_calibration:  # the engine's identity includes the calibration images' file list
        request = replace(request, calibration=request.calibration.resolve(get_task(get_model(request.model).task)))
    eng_id = request.engine_identity(wid, __version__)
    if max_drop is not None:
        eng_id = {**eng_id, "int8_plan_max_drop": max_drop}
    eng = cache / "engines" / f"{name}-{request.backend}-{request.precision}-{content_key(eng_id)[:16]}"
    if (eng / MANIFEST).is_file():
        try:
            engine = Engine.load(eng, verify=False)  # (predict and bench check its files when they load it)
            log.info("cached engine %s", eng)
            return engine
        except DeployzooError as exc:  # an engine of an older format, or damaged: build it again
            log.warning("cached engine not usable (%s); building it again", exc)
    if max_drop is not None:
        from deployzoo.quant.planner import plan_int8

        log.info("planning %s %s int8 within %s points -> %s", request.model, request.backend, max_drop, eng)
        return plan_int8(Graph.read(onnx_path), eng, request, max_drop)
    log.info("building %s %s %s -> %s", request.model, request.backend, request.precision, eng)
    return build(onnx_path, eng, request)


def ensure_engine(model: str, *, cache_dir: str | Path | None = None, calib: str | Path | Any | None = None,
                  calib_size: int = 64, calib_method: str = "minmax", **fields: Any) -> Path:
    """`cached_engine` with the request made from keywords (BuildRequest.create's: variant, weights, backend,
    precision, imgsz, batch, options, float_groups, seed); `calib` a directory or a chosen CalibSet. Returns the
    engine directory."""
    cal = None
    if calib is not None:
        cal = calib if not isinstance(calib, (str, Path)) else Calibration(Path(calib), calib_size, calib_method)
    if canonical_precision(fields.get("precision", "fp32")) != "int8":
        cal = None  # only int8 reads calibration images (a run passes its set to every precision)
    return cached_engine(BuildRequest.create(model, calibration=cal, **fields), cache_dir).dir

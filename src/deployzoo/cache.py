"""Content-hashed engine cache: the same model, weights, shapes, backend, precision and calibration set build once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployzoo import __version__
from deployzoo.build import build_engine
from deployzoo.checkpoint import file_sha256
from deployzoo.engine import MANIFEST, read_manifest
from deployzoo.errors import DeployzooError
from deployzoo.export import export_onnx, parse_imgsz
from deployzoo.files import write_json
from deployzoo.quant.calib import CalibSet, make_calib_set
from deployzoo.registry import canonical_precision, get_model, get_task

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEPLOYZOO_CACHE", Path.home() / ".cache" / "deployzoo")).expanduser()


def content_key(obj: Any) -> str:
    """sha256 of an object's canonical JSON: the identity of a cached graph, engine or stage result."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class StageCache:
    """Results of `run`'s stages stored as DIR/NAME.json = {key, value}; a stage whose identity (any JSON-able
    object: the engine, the settings, the data) is unchanged is not computed again."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def get_or_compute(self, name: str, identity: Any, compute: Callable[[], Any]) -> Any:
        path, key = self.root / f"{name}.json", content_key(identity)[:16]
        if path.is_file():
            try:
                d = json.loads(path.read_text())
                if d.get("key") == key:
                    return d["value"]
            except (json.JSONDecodeError, KeyError, AttributeError):
                pass
        value = compute()
        write_json(path, {"key": key, "value": value})
        return value


def ensure_engine(
    model: str,
    *,
    variant: str | None = None,
    weights: str | Path | None = None,
    backend: str = "ort",
    precision: str = "fp32",
    imgsz: Any = None,
    batch: int | None = None,
    calib: str | Path | CalibSet | None = None,
    calib_size: int = 64,
    calib_method: str = "minmax",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    float_groups: tuple[str, ...] | None = None,
    options: dict[str, Any] | None = None,
) -> Path:
    """Export (if needed) and build (if needed) an engine; return its directory."""
    spec = get_model(model)
    variant = spec.check_variant(variant)
    imgsz = parse_imgsz(imgsz if imgsz is not None else spec.default_imgsz[variant])
    precision = canonical_precision(precision)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    wid = {"sha256": file_sha256(weights)} if weights else {"random_seed": seed}
    graph_id = {"v": __version__, "model": spec.name, "variant": variant, "weights": wid, "imgsz": imgsz, "batch": batch}
    onnx_path = cache / "onnx" / f"{spec.name}-{variant}-{content_key(graph_id)[:16]}.onnx"
    if not onnx_path.is_file():
        log.info("exporting %s %s -> %s", spec.name, variant, onnx_path)
        export_onnx(spec.name, onnx_path, variant=variant, weights=weights, imgsz=imgsz, batch=batch, seed=seed)
    cs = None
    if precision == "int8" and calib is not None:
        cs = calib if isinstance(calib, CalibSet) else make_calib_set(calib, calib_size, calib_method,
                                                                      task=get_task(spec.task))
    options = {k: v for k, v in (options or {}).items() if v is not None}
    eng_id = {**graph_id, "backend": backend, "precision": precision, "calib": cs.describe() if cs else None,
              "float_groups": float_groups, **({"options": options} if options else {})}
    eng = cache / "engines" / f"{spec.name}-{variant}-{backend}-{precision}-{content_key(eng_id)[:16]}"
    if (eng / MANIFEST).is_file():
        try:
            read_manifest(eng)
            log.info("cached engine %s", eng)
            return eng
        except DeployzooError as exc:  # an engine of an older format, or damaged: build it again
            log.warning("cached engine not usable (%s); building it again", exc)
    log.info("building %s %s %s -> %s", spec.name, backend, precision, eng)
    return build_engine(onnx_path, eng, backend=backend, precision=precision, calib=cs, float_groups=float_groups,
                        options=options)

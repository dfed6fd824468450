"""COCO detection / instance-segmentation accuracy with the field's evaluator (pycocotools' COCOeval): bbox and
segm AP / AR from a COCO results json and an instances json, with one-line errors for inputs that pycocotools
would reject with a traceback (or silently mis-score)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from deployzoo.errors import DeployzooError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
ANN_KEYS = ("images", "annotations", "categories")


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise DeployzooError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_annotations(path: str | Path):
    """pycocotools COCO object of an instances json, after checking the keys it needs."""
    from pycocotools.coco import COCO

    path = Path(path)
    data = _read_json(path, "annotations")
    if not isinstance(data, dict):
        raise DeployzooError(f"{path}: expected a COCO instances object, got a JSON {type(data).__name__}")
    missing = [k for k in ANN_KEYS if k not in data]
    if missing:
        raise DeployzooError(f"{path}: not a COCO instances file, missing key(s) {', '.join(missing)}")
    need = {"images": ("id",), "categories": ("id",), "annotations": ("id", "image_id", "category_id", "bbox",
                                                                       "iscrowd", "area")}
    for key, keys in need.items():  # pycocotools indexes by these and fails with a bare KeyError without them
        for i, entry in enumerate(data[key]):
            lacking = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if lacking:
                raise DeployzooError(f"{path}: {key}[{i}] lacks {', '.join(lacking)}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_results(results: list[dict[str, Any]], coco: Any, path: str | Path) -> tuple[str, ...]:
    """The IoU types the results carry ('bbox', 'segm'); errors for malformed entries and for image / category
    ids the annotations do not have (pycocotools would assert or score them as false positives elsewhere)."""
    if not isinstance(results, list) or not results:
        raise DeployzooError(f"{path}: expected a non-empty JSON list of COCO results")
    img_ids, cat_ids = set(coco.getImgIds()), set(coco.getCatIds())
    has_box = has_seg = False
    for i, r in enumerate(results):
        if not isinstance(r, dict) or "image_id" not in r or "category_id" not in r or "score" not in r:
            raise DeployzooError(f"{path}: result [{i}] needs image_id, category_id and score")
        if r["image_id"] not in img_ids:
            raise DeployzooError(f"{path}: result [{i}] has image_id {r['image_id']}, not in the annotations")
        if r["category_id"] not in cat_ids:
            raise DeployzooError(f"{path}: result [{i}] has category_id {r['category_id']}, not in the annotations")
        has_box |= "bbox" in r
        has_seg |= "segmentation" in r
        if "segmentation" in r and not (isinstance(r["segmentation"], dict) and "counts" in r["segmentation"]):
            raise DeployzooError(f"{path}: result [{i}] segmentation must be RLE (size, counts)")
    if not (has_box or has_seg):
        raise DeployzooError(f"{path}: results have neither bbox nor segmentation")
    return tuple(t for t, ok in (("bbox", has_box), ("segm", has_seg)) if ok)


def evaluate(results: str | Path | list[dict[str, Any]], ann: str | Path | Any,
             iou_types: tuple[str, ...] | None = None) -> tuple[dict[str, dict[str, float]], str]:
    """({iou_type: {AP, AP50, ..., ARl}}, the standard printed summary) via pycocotools COCOeval."""
    from pycocotools.cocoeval import COCOeval

    coco = ann if hasattr(ann, "loadRes") else load_annotations(ann)
    path = results if isinstance(results, (str, Path)) else "results"
    res = _read_json(Path(results), "results") if isinstance(results, (str, Path)) else results
    types = check_results(res, coco, path)
    iou_types = iou_types or types
    out: dict[str, dict[str, float]] = {}
    text = io.StringIO()
    for t in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = coco.loadRes([dict(r) for r in res])
        ev = COCOeval(coco, dt, t)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev.summarize()
        text.write(f"IoU type {t}\n{buf.getvalue()}")
        out[t] = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    return out, text.getvalue()

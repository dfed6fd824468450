"""COCO detection / instance-segmentation accuracy with the field's evaluator (pycocotools' COCOeval): bbox and
segm AP / AR from a COCO results json and an instances json, with one-line errors for inputs that pycocotools
would reject with a traceback (or silently mis-score)."""

from __future__ import annotations

import contextlib
import io
import json
import math
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


def _shown(value: Any, limit: int = 60) -> str:
    """A value as the results file spells it (JSON: NaN, Infinity, true, null), cut to `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_rle(seg: Any, img: dict[str, Any] | None, where: str) -> None:
    """An RLE segmentation: size [height, width] (2 non-negative ints, the image's size when it is known) and
    counts, a compressed string or a list of non-negative run lengths covering the image."""
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
        raise DeployzooError(f"{where} segmentation must be RLE (size, counts)")
    size, counts = seg["size"], seg["counts"]
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
        raise DeployzooError(f"{where} segmentation size {_shown(size)}: expected [height, width], 2 non-negative ints")
    if img is not None and "height" in img and "width" in img and size != [img["height"], img["width"]]:
        raise DeployzooError(f"{where} segmentation size {_shown(size)}, but image {img.get('id')} is "
                             f"{img['height']} x {img['width']} (height x width)")
    if isinstance(counts, list):
        h, w = size
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts) or sum(counts) != h * w:
            raise DeployzooError(f"{where} segmentation counts: run lengths must be non-negative ints summing to "
                                 f"{h}*{w} = {h * w}")
    elif not isinstance(counts, str):
        raise DeployzooError(f"{where} segmentation counts must be an RLE string or a list of run lengths, "
                             f"got {type(counts).__name__}")


def check_results(results: list[dict[str, Any]], coco: Any, path: str | Path) -> tuple[str, ...]:
    """The IoU types the results carry ('bbox', 'segm'); one-line errors (naming `path` and the result index)
    for what pycocotools would crash on or silently mis-score:

    - a missing image_id / category_id / score, or ids the annotations do not have;
    - a score that is not a finite number (NaN / Infinity literals parse with Python's json);
    - a bbox that is not 4 finite numbers [x, y, w, h] or has a negative width / height (zero is allowed);
    - a segmentation that is not RLE: size must be [height, width] (2 non-negative ints, the image's size when
      the annotations give it), counts a compressed string or a list of run lengths summing to height * width;
    - results that differ in carrying a bbox or a segmentation (pycocotools' loadRes treats every result like
      result [0]). A segmentation result may carry `"bbox": []` (no box), as pycocotools allows.
    """
    if not isinstance(results, list) or not results:
        raise DeployzooError(f"{path}: expected a non-empty JSON list of COCO results")
    img_ids, cat_ids = set(coco.getImgIds()), set(coco.getCatIds())
    imgs = getattr(coco, "imgs", {})
    first_box = first_seg = None
    for i, r in enumerate(results):
        where = f"{path}: result [{i}]"
        if not isinstance(r, dict) or "image_id" not in r or "category_id" not in r or "score" not in r:
            raise DeployzooError(f"{where} needs image_id, category_id and score")
        try:
            known_img, known_cat = r["image_id"] in img_ids, r["category_id"] in cat_ids
        except TypeError:  # an unhashable id (a list, an object)
            known_img = known_cat = False
        if not known_img:
            raise DeployzooError(f"{where} has image_id {_shown(r['image_id'])}, not in the annotations")
        if not known_cat:
            raise DeployzooError(f"{where} has category_id {_shown(r['category_id'])}, not in the annotations")
        score = r["score"]
        if not (_is_number(score) and math.isfinite(score)):
            raise DeployzooError(f"{where} score {_shown(score)}: not a finite number")
        has_seg = "segmentation" in r
        has_box = "bbox" in r and not (has_seg and r["bbox"] == [])
        if has_box:
            bb = r["bbox"]
            if not (isinstance(bb, list) and len(bb) == 4 and all(_is_number(v) for v in bb)):
                raise DeployzooError(f"{where} bbox {_shown(bb)}: expected 4 numbers [x, y, w, h]")
            if not all(math.isfinite(v) for v in bb):
                raise DeployzooError(f"{where} bbox {_shown(bb)}: not finite")
            if bb[2] < 0 or bb[3] < 0:
                raise DeployzooError(f"{where} bbox {_shown(bb)}: negative width/height")
        if has_seg:
            _check_rle(r["segmentation"], imgs.get(r["image_id"]), where)
        if i == 0:
            first_box, first_seg = has_box, has_seg
        for name, has, first in (("bbox", has_box, first_box), ("segmentation", has_seg, first_seg)):
            if has != first:
                raise DeployzooError(f"{where} has {'a' if has else 'no'} {name}, result [0] has "
                                     f"{'one' if first else 'none'} (every result needs the same fields)")
    if not (first_box or first_seg):
        raise DeployzooError(f"{path}: results have neither bbox nor segmentation")
    return tuple(t for t, ok in (("bbox", first_box), ("segm", first_seg)) if ok)


def _for_pycocotools(r: dict[str, Any]) -> dict[str, Any]:
    """A copy of a checked result that pycocotools' loadRes takes: uncompressed RLE (counts a list of run
    lengths) becomes the compressed string (loadRes' mask area needs it)."""
    out = dict(r)
    seg = out.get("segmentation")
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        from pycocotools import mask as mask_utils

        h, w = seg["size"]
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": seg["counts"]}, h, w)
        out["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    return out


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
            dt = coco.loadRes([_for_pycocotools(r) for r in res])
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

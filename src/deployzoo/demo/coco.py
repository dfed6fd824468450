"""A synthetic COCO-layout instance segmentation set: drawn shapes with polygon / RLE annotations in an
instances json (deployzoo.data.coco reads it as it reads val2017)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployzoo.data.coco import COCO_CATEGORY_IDS, COCO_NAMES, encode_rle
from deployzoo.errors import DeployzooError
from deployzoo.files import atomic_dir

log = logging.getLogger(__name__)

DEMO_CATEGORY_IDS = (1, 3, 18, 44, 62)  # person, car, dog, bottle, chair
# saturated BGR colours, far from the demo's grey backgrounds and from each other
DEMO_COLOURS = ((0, 0, 230), (0, 200, 0), (230, 0, 0), (0, 230, 230), (230, 0, 230), (230, 230, 0))
DEMO_GREYS = (15, 60, 205, 245)  # shape levels of the grey demo image (background 105..150)
# --------------------------------------------------------------------------------------------- demo set


def coco_categories() -> list[dict[str, Any]]:
    """The 80 `categories` entries of an instances json (id, name, supercategory)."""
    return [{"id": cid, "name": name, "supercategory": sup} for cid, (name, sup) in zip(COCO_CATEGORY_IDS, COCO_NAMES)]


def _shape_mask(kind: str, cell: tuple[int, int, int, int], h: int, w: int,
                rng: np.random.Generator) -> tuple[np.ndarray, Any]:
    """(H x W binary mask, json segmentation) of one shape inside `cell` (x0, y0, x1, y1). Polygons (and
    rectangles) are rasterised by pycocotools from the very coordinates written to the json, ellipses are
    drawn and RLE-encoded, so the painted pixels are the ground-truth mask exactly."""
    import pycocotools.mask as mask_util

    x0, y0, x1, y1 = cell
    cw, ch = x1 - x0, y1 - y0
    sw, sh = int(rng.integers(cw // 3, cw * 4 // 5)), int(rng.integers(ch // 3, ch * 4 // 5))
    cx, cy = x0 + int(rng.integers(sw // 2 + 2, cw - sw // 2 - 1)), y0 + int(rng.integers(sh // 2 + 2, ch - sh // 2 - 1))
    if kind == "ellipse":
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (cx, cy), (sw // 2, sh // 2), 0, 0, 360, 1, -1)  # axis-aligned: stays in its cell
        return mask, encode_rle(mask)
    if kind == "rectangle":
        l, t, r, b = cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2
        poly = [l, t, r, t, r, b, l, b]
    else:  # a star-shaped polygon: vertices at sorted angles around the centre
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 9))))
        radii = rng.uniform(0.5, 1.0, len(angles))
        poly = [v for a, r in zip(angles, radii) for v in (cx + r * sw / 2 * np.cos(a), cy + r * sh / 2 * np.sin(a))]
    poly = [round(float(v), 1) for v in poly]
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects([poly], h, w)))
    return mask, [poly]


def _demo_image(image_id: int, h: int, w: int, grey: bool, rng: np.random.Generator,
                first_ann_id: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    import pycocotools.mask as mask_util

    base = rng.integers(105, 151, 1 if grey else 3)
    img = np.broadcast_to(base.astype(np.float64), (h, w, 3)).copy()
    rows, cols = (3, 2) if h > w else (2, 3)
    cells = [(w * c // cols, h * r // rows, w * (c + 1) // cols, h * (r + 1) // rows)
             for r in range(rows) for c in range(cols)]
    n = int(rng.integers(2, 5))
    palette = DEMO_GREYS if grey else DEMO_COLOURS
    colours = rng.permutation(len(palette))[:n]
    anns = []
    for k, cell_index in enumerate(rng.permutation(len(cells))[:n]):
        kind = ("rectangle", "ellipse", "polygon")[int(rng.integers(0, 3))]
        mask, seg = _shape_mask(kind, cells[cell_index], h, w, rng)
        img[mask.astype(bool)] = palette[colours[k]]
        rle = mask_util.encode(np.asfortranarray(mask))
        anns.append({"id": first_ann_id + k, "image_id": image_id,
                     "category_id": int(DEMO_CATEGORY_IDS[int(rng.integers(0, len(DEMO_CATEGORY_IDS)))]),
                     "bbox": [round(float(v), 2) for v in mask_util.toBbox(rle)],
                     "area": float(mask_util.area(rle)), "iscrowd": 0, "segmentation": seg})
    noise = rng.normal(0, 6, (h, w, 1) if grey else (h, w, 3))
    return np.clip(img + noise, 0, 255).astype(np.uint8), anns


def write_demo(root: str | Path, n_images: int = 8, seed: int = 0) -> Path:
    """A small COCO set in deployzoo's layout (ROOT/images/*.jpg + ROOT/annotations/instances_demo.json):
    generated images of varied sizes (some portrait, one grey) with 2-4 filled rectangles, ellipses and
    polygons in distinct colours on a noisy background, each an object of a real COCO category (polygon
    segmentations for polygons and rectangles, RLE for ellipses). Deterministic in `seed`; written into a
    temporary folder and renamed onto `root`, so an interrupted write leaves no half set. Exercises the whole
    pipeline on a fresh machine; a model's accuracy on it means nothing."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    with atomic_dir(root) as tmp:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        for i in range(n_images):
            image_id = i + 1
            w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
            if i % 3 == 1:
                w, h = h, w
            img, anns = _demo_image(image_id, h, w, grey=i == 2, rng=rng, first_ann_id=len(annotations) + 1)
            name = f"{image_id:012d}.jpg"
            if not cv2.imwrite(str(tmp / "images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise DeployzooError(f"{tmp / 'images' / name}: cannot write image")
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            annotations.extend(anns)
        data = {"info": {"description": f"deployzoo synthetic COCO demo set (seed {seed})"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": coco_categories()}
        (tmp / "annotations" / "instances_demo.json").write_text(json.dumps(data), encoding="utf-8")
    log.info("wrote COCO demo set %s: %d images, %d objects", root, len(images), len(annotations))
    return root

"""COCO instance sets: an image folder plus an instances json, in deployzoo's layout (`ROOT/images/` +
`ROOT/annotations/instances_*.json`, as ../shared/fixtures/coco128) or the official one (`ROOT/val2017/` +
`ROOT/annotations/instances_val2017.json`), and a small synthetic set in the first layout (`write_demo`).

The annotations are read with metrics.coco.load_annotations (the same object `evaluate` scores against), so a
set found here and its evaluation agree on which images and objects count."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployzoo.data.images import SourceItem
from deployzoo.files import atomic_dir
from deployzoo.errors import DeployzooError
from deployzoo.metrics.coco import load_annotations

log = logging.getLogger(__name__)

# COCO's 80 categories in their contiguous training order -> the category ids of instances_*.json (1..90, gaps)
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)


def encode_rle(binary: np.ndarray) -> dict:
    """COCO RLE (`size`, `counts` as str) of an H x W binary mask, via pycocotools."""
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


IMAGE_DIRS = ("images", "val2017")  # deployzoo's layout, then the official one
IMAGE_KEYS = ("id", "file_name", "height", "width")

# (name, supercategory) of COCO's 80 categories in contiguous order; the category ids are
# COCO_CATEGORY_IDS, zipped with these in coco_categories()
COCO_NAMES = (
    ("person", "person"), ("bicycle", "vehicle"), ("car", "vehicle"), ("motorcycle", "vehicle"),
    ("airplane", "vehicle"), ("bus", "vehicle"), ("train", "vehicle"), ("truck", "vehicle"), ("boat", "vehicle"),
    ("traffic light", "outdoor"), ("fire hydrant", "outdoor"), ("stop sign", "outdoor"),
    ("parking meter", "outdoor"), ("bench", "outdoor"), ("bird", "animal"), ("cat", "animal"), ("dog", "animal"),
    ("horse", "animal"), ("sheep", "animal"), ("cow", "animal"), ("elephant", "animal"), ("bear", "animal"),
    ("zebra", "animal"), ("giraffe", "animal"), ("backpack", "accessory"), ("umbrella", "accessory"),
    ("handbag", "accessory"), ("tie", "accessory"), ("suitcase", "accessory"), ("frisbee", "sports"),
    ("skis", "sports"), ("snowboard", "sports"), ("sports ball", "sports"), ("kite", "sports"),
    ("baseball bat", "sports"), ("baseball glove", "sports"), ("skateboard", "sports"), ("surfboard", "sports"),
    ("tennis racket", "sports"), ("bottle", "kitchen"), ("wine glass", "kitchen"), ("cup", "kitchen"),
    ("fork", "kitchen"), ("knife", "kitchen"), ("spoon", "kitchen"), ("bowl", "kitchen"), ("banana", "food"),
    ("apple", "food"), ("sandwich", "food"), ("orange", "food"), ("broccoli", "food"), ("carrot", "food"),
    ("hot dog", "food"), ("pizza", "food"), ("donut", "food"), ("cake", "food"), ("chair", "furniture"),
    ("couch", "furniture"), ("potted plant", "furniture"), ("bed", "furniture"), ("dining table", "furniture"),
    ("toilet", "furniture"), ("tv", "electronic"), ("laptop", "electronic"), ("mouse", "electronic"),
    ("remote", "electronic"), ("keyboard", "electronic"), ("cell phone", "electronic"), ("microwave", "appliance"),
    ("oven", "appliance"), ("toaster", "appliance"), ("sink", "appliance"), ("refrigerator", "appliance"),
    ("book", "indoor"), ("clock", "indoor"), ("vase", "indoor"), ("scissors", "indoor"), ("teddy bear", "indoor"),
    ("hair drier", "indoor"), ("toothbrush", "indoor"),
)
DEMO_CATEGORY_IDS = (1, 3, 18, 44, 62)  # person, car, dog, bottle, chair
# saturated BGR colours, far from the demo's grey backgrounds and from each other
DEMO_COLOURS = ((0, 0, 230), (0, 200, 0), (230, 0, 0), (0, 230, 230), (230, 0, 230), (230, 230, 0))
DEMO_GREYS = (15, 60, 205, 245)  # shape levels of the grey demo image (background 105..150)


@dataclass
class CocoSet:
    root: Path
    images_dir: Path  # items' files are images_dir / file_name
    ann_path: Path
    items: list[SourceItem]  # one per image of the json whose file exists, in image-id order
    # the annotations (pycocotools COCO), restricted to the items' images: what `metrics.coco.evaluate` scores
    coco: Any = field(default=None, repr=False)


def _images_dir(root: Path) -> Path:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DeployzooError(f"{root}: no images/ or val2017/ folder (expected ROOT/images + "
                         f"ROOT/annotations/instances_*.json, or ROOT/val2017 + ROOT/annotations/instances_val2017.json)")


def _find_annotations(root: Path, images_dir: Path) -> Path:
    """ROOT/annotations/instances_<images dir>.json (the official pairing), else the only instances_*.json."""
    ann_dir = root / "annotations"
    paired = ann_dir / f"instances_{images_dir.name}.json"
    if paired.is_file():
        return paired
    found = sorted(ann_dir.glob("instances_*.json")) if ann_dir.is_dir() else []
    if not found:
        raise DeployzooError(f"{ann_dir}: no instances_*.json (give the annotations file with --gt)")
    if len(found) > 1:
        raise DeployzooError(f"{ann_dir}: {len(found)} instances_*.json files ({', '.join(p.name for p in found)}); "
                             f"choose one with --gt")
    return found[0]


def _check_images(images: list[Any], ann_path: Path) -> None:
    for i, im in enumerate(images):
        lacking = [k for k in IMAGE_KEYS if k not in im]
        if lacking:
            raise DeployzooError(f"{ann_path}: images[{i}] lacks {', '.join(lacking)}")
        for k in ("height", "width"):
            if not isinstance(im[k], int) or im[k] <= 0:
                raise DeployzooError(f"{ann_path}: images[{i}] ({im['file_name']}) has {k} {im[k]!r}, "
                                     f"expected a positive integer")


def _restrict(coco: Any, image_ids: set[int]) -> None:
    """Drop the images not in `image_ids` (and their annotations) from `coco`, so they are not scored as misses."""
    d = coco.dataset
    d["images"] = [im for im in d["images"] if im["id"] in image_ids]
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] in image_ids]
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()


def find_set(root: str | Path, ann: str | Path | None = None) -> CocoSet:
    """The COCO set at `root` (see the module docstring for the layouts); `ann` overrides the instances json.
    Images of the json whose file is missing are skipped with a warning (and dropped from `coco`); all of them
    missing is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DeployzooError(f"{root}: COCO dataset directory not found")
    images_dir = _images_dir(root)
    ann_path = Path(ann) if ann is not None else _find_annotations(root, images_dir)
    coco = load_annotations(ann_path)
    images = coco.dataset["images"]
    _check_images(images, ann_path)
    if len(coco.imgs) != len(images):
        raise DeployzooError(f"{ann_path}: {len(images) - len(coco.imgs)} duplicate image id(s)")
    if not images:
        raise DeployzooError(f"{ann_path}: lists no images")
    items, missing = [], []
    for im in sorted(images, key=lambda im: im["id"]):
        path = images_dir / im["file_name"]
        if path.is_file():
            meta = {"image_id": im["id"], "height": im["height"], "width": im["width"]}
            items.append(SourceItem(path, im["file_name"], meta))
        else:
            missing.append(im["file_name"])
    if not items:
        raise DeployzooError(f"{ann_path}: none of its {len(missing)} images is in {images_dir} "
                             f"(first: {missing[0]})")
    if missing:
        log.warning("%s: %d of %d images not found in %s (first: %s); skipping them", ann_path, len(missing),
                    len(images), images_dir, missing[0])
        _restrict(coco, {it.meta["image_id"] for it in items})
    return CocoSet(root, images_dir, ann_path, items, coco)


def size_mismatch(meta: dict[str, Any] | None, image_hw: tuple[int, int]) -> str | None:
    """Why a decoded image cannot be scored against its json entry `meta` (height, width): its H x W differs
    and its boxes and masks would be in the wrong frame; None when the sizes agree."""
    h, w = int(image_hw[0]), int(image_hw[1])
    want_h, want_w = (meta or {}).get("height"), (meta or {}).get("width")
    if (h, w) == (want_h, want_w):
        return None
    return f"image is {w}x{h}, the annotations say {want_w}x{want_h} (detections would be scored in the wrong frame)"


def check_image_size(item: SourceItem, image_hw: tuple[int, int]) -> None:
    """Error naming the file when a decoded image's H x W is not the json's height x width."""
    why = size_mismatch(item.meta, image_hw)
    if why:
        raise DeployzooError(f"{item.path}: {why}")


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

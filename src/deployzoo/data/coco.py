"""COCO instance sets: an image folder plus an instances json, in deployzoo's layout (`ROOT/images/` +
`ROOT/annotations/instances_*.json`, as ../shared/fixtures/coco128) or the official one (`ROOT/val2017/` +
`ROOT/annotations/instances_val2017.json`); deployzoo.demo.coco writes a small synthetic set in the first layout.

The annotations are read with metrics.coco.load_annotations (the same object `evaluate` scores against), so a
set found here and its evaluation agree on which images and objects count."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.images import SourceItem
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
# COCO_CATEGORY_IDS, zipped with these in deployzoo.demo.coco.coco_categories()
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


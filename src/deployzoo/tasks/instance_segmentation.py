"""Instance segmentation task (Mask R-CNN on COCO): keep-ratio resize to 800 x 1333 and normalisation in the
weights' convention, batches of different sizes padded to a multiple of 32, 28 x 28 mask probabilities pasted
back into the original image, binarised, RLE-encoded one at a time (nothing holds all full-size masks of an image
or a dataset), class indices mapped to COCO category ids, COCO results json; `run` scores it with suites/coco.py.

It has no tensor hooks (tasks/base.py): it runs the host pipeline (`--pipeline device` is refused with a
one-line error)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from deployzoo.data.coco import COCO_CATEGORY_IDS, encode_rle, find_set, size_mismatch
from deployzoo.data.images import ImageError, SourceItem
from deployzoo.records import PRED_FILE, iter_records
from deployzoo.specs import InputSpec
from deployzoo.tasks.base import Prepared, Task

log = logging.getLogger(__name__)
RESULTS_FILE = "coco_results.json"


def paste_mask(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int], threshold: float = 0.5,
               mode: str = "torchvision") -> np.ndarray:
    """One M x M mask probability map pasted into its box (x1 y1 x2 y2, image pixels) of an H x W image and
    binarised at `threshold`. mode "torchvision": paste_masks_in_image (1-pixel padding, bilinear resize to the
    integer box); "mmdet": mmdetection's grid_sample of the mask over the pixel centres inside the box."""
    h, w = int(image_hw[0]), int(image_hw[1])
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    b = torch.as_tensor(np.asarray(box, dtype=np.float32).reshape(1, 4))
    if mode == "mmdet":
        return _paste_grid_sample(m, b[0], h, w) >= threshold
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    full = paste_masks_in_image(m, b, (h, w), padding=1)[0, 0]
    return (full >= threshold).numpy()


def _paste_grid_sample(m: torch.Tensor, box: torch.Tensor, h: int, w: int) -> np.ndarray:
    """mmdetection's _do_paste_mask for one mask: sample it at the pixel centres of the box's integer region
    (one pixel of margin), zero elsewhere."""
    x0, y0, x1, y1 = (float(v) for v in box)
    xa, ya = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
    xb, yb = min(int(math.ceil(x1)) + 1, w), min(int(math.ceil(y1)) + 1, h)
    full = np.zeros((h, w), dtype=np.float32)
    if xb <= xa or yb <= ya:
        return full
    gx = (torch.arange(xa, xb, dtype=torch.float32) + 0.5 - x0) / max(x1 - x0, 1e-6) * 2 - 1
    gy = (torch.arange(ya, yb, dtype=torch.float32) + 0.5 - y0) / max(y1 - y0, 1e-6) * 2 - 1
    grid = torch.stack([gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))], -1)[None]
    full[ya:yb, xa:xb] = torch.nn.functional.grid_sample(m, grid, align_corners=False)[0, 0].numpy()
    return full


def masks_to_rles(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int],
                  threshold: float = 0.5, mode: str = "torchvision") -> Iterator[dict]:
    """RLEs of N masks, pasted and encoded one at a time."""
    for m, b in zip(masks, boxes):
        yield encode_rle(paste_mask(m, b, image_hw, threshold, mode))


def coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 rles: list[dict] | None = None, category_ids: tuple[int, ...] = COCO_CATEGORY_IDS) -> list[dict]:
    """COCO results entries: bbox as [x, y, w, h], contiguous label -> category id, optional RLE segmentation."""
    out = []
    for k, (b, s, lab) in enumerate(zip(boxes.tolist(), scores.tolist(), labels.tolist())):
        r = {"image_id": int(image_id), "category_id": int(category_ids[int(lab)]),
             "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)],
             "score": round(float(s), 5)}
        if rles is not None:
            r["segmentation"] = rles[k]
        out.append(r)
    return out


# --------------------------------------------------------------------------------------------- pre-processing
def resize_keep_ratio(img: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Normalised C x H x W float32 of an H x W x 3 RGB image resized to fit `spec.params['resize']` (shorter side,
    longer-side cap) in the weights' convention, and its resized (h, w).
    - "torch" (torchvision): normalise, then F.interpolate bilinear by the scale (size floor(side * scale));
    - "cv2" (mmdetection): cv2.resize bilinear of the 8-bit image to int(side * scale + 0.5), then normalise."""
    short, long_ = (int(v) for v in spec.params.get("resize", (800, 1333)))
    h, w = img.shape[:2]
    scale = min(short / min(h, w), long_ / max(h, w))
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if spec.params.get("resize_impl", "torch") == "cv2":
        nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else img
        x = (resized.astype(np.float32) - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1)), (nh, nw)
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).to(torch.float32) / 255.0
    t = (t - torch.from_numpy(mean / 255.0).view(3, 1, 1)) / torch.from_numpy(std / 255.0).view(3, 1, 1)
    nh, nw = math.floor(h * scale), math.floor(w * scale)  # what interpolate's recomputed scale gives
    if min(nh, nw) < 1:  # an extreme aspect ratio: torchvision would fail, keep at least one pixel
        out = torch.nn.functional.interpolate(t[None], size=(max(nh, 1), max(nw, 1)), mode="bilinear",
                                              align_corners=False)[0]
    else:
        out = torch.nn.functional.interpolate(t[None], scale_factor=scale, mode="bilinear",
                                              recompute_scale_factor=True, align_corners=False)[0]
    return out.numpy(), (int(out.shape[1]), int(out.shape[2]))


def image_id_for(item: SourceItem, index: int) -> int:
    """The COCO image id of a source item: from the annotations when listed there, else a numeric file stem
    (COCO names are zero-padded ids), else 1 + the item's position."""
    meta = item.meta or {}
    if meta.get("image_id") is not None:
        return int(meta["image_id"])
    stem = Path(item.name).stem
    return int(stem) if stem.isdigit() else index + 1


class InstanceSegmentationTask(Task):
    name = "instance_segmentation"
    suite = "coco"
    formats: tuple[str, ...] = ("coco",)
    always_formats = ("coco",)

    def list_source(self, source: str | Path, post: dict[str, Any] | None = None) -> tuple[Path, list[SourceItem]]:
        """A COCO root (images + instances json: image ids and sizes from the json) or any image source."""
        from deployzoo.data.images import list_source

        src = Path(source)
        if src.is_dir() and (src / "annotations").is_dir():
            s = find_set(src)
            return s.images_dir, s.items
        root, items = list_source(src)
        return root, [SourceItem(i.path, i.name, {**(i.meta or {}), "image_id": image_id_for(i, k)}, i.data)
                      for k, i in enumerate(items)]

    def prepare(self, img: np.ndarray, spec: InputSpec, meta: dict[str, Any] | None = None) -> Prepared:

        meta = meta or {}
        h, w = img.shape[:2]
        why = size_mismatch(meta, (h, w)) if "height" in meta else None  # images listed in an instances json
        if why:
            raise ImageError(why)
        x, hw = resize_keep_ratio(img, spec)
        return Prepared(x, {"orig_hw": (h, w), "resized_hw": hw, "image_id": meta.get("image_id")})

    def collate(self, items: list[Prepared], spec: InputSpec) -> dict[str, np.ndarray]:
        """Zero-pad to the batch's largest h, w rounded up to a multiple of spec.params['pad'] (bottom / right)."""
        pad = int(spec.params.get("pad", 32))
        hmax = -(-max(p.tensor.shape[1] for p in items) // pad) * pad
        wmax = -(-max(p.tensor.shape[2] for p in items) // pad) * pad
        out = np.zeros((len(items), 3, hmax, wmax), dtype=np.float32)
        for i, p in enumerate(items):
            out[i, :, : p.tensor.shape[1], : p.tensor.shape[2]] = p.tensor
        sizes = np.array([p.tensor.shape[1:] for p in items], dtype=np.int64)
        return {spec.name: out, "image_sizes": sizes}

    def postprocess(self, outputs: dict[str, np.ndarray], metas: list[dict[str, Any]],
                    post: dict[str, Any]) -> list[dict[str, Any]]:
        """Per image: boxes back to the original frame, masks pasted and RLE-encoded, COCO result entries."""
        bi = outputs["batch_index"]
        cats = tuple(post.get("category_ids") or range(91))
        thr, mode = float(post.get("mask_thr", 0.5)), post.get("paste", "torchvision")
        conf = float(post.get("conf", 0.05))
        records = []
        for b, meta in enumerate(metas):
            sel = np.flatnonzero((bi == b) & (outputs["scores"] >= conf))
            (oh, ow), (rh, rw) = meta["orig_hw"], meta["resized_hw"]
            boxes = outputs["boxes"][sel].astype(np.float32) * np.array([ow / rw, oh / rh] * 2, dtype=np.float32)
            rles = list(masks_to_rles(outputs["masks"][sel], boxes, (oh, ow), thr, mode)) if "masks" in outputs else None
            dets = coco_results(meta.get("image_id") or 0, boxes, outputs["scores"][sel], outputs["labels"][sel],
                                rles, cats)
            records.append({"image_id": meta.get("image_id"), "detections": [
                {k: v for k, v in d.items() if k != "image_id"} for d in dets]})
        return records

    def open_format(self, fmt: str, out_dir: Path, items: list[SourceItem], resume: bool) -> "CocoResultsWriter":
        if fmt != "coco":
            raise ValueError(fmt)
        return CocoResultsWriter(out_dir)

    def write_format(self, fmt: str, name: str, record: dict[str, Any], out_dir: Path) -> None:
        raise ValueError(f"format {fmt} is written through open_format")

    def agreement(self, reference: list[dict[str, Any]], tested: list[dict[str, Any]]) -> float:
        """Box AP@0.5 of the tested detections against the reference's confident ones (score >= 0.5), classes
        pooled (masks follow their boxes)."""
        from deployzoo.metrics.agreement import agreement_ap

        def boxes(rec: dict[str, Any]) -> dict[str, Any]:
            b = [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                 for d in rec["detections"]]
            return {"boxes": b, "scores": [d["score"] for d in rec["detections"]]}

        return agreement_ap([boxes(r) for r in reference], [boxes(t) for t in tested])

    def render(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray:
        """BGR image with masks tinted and boxes drawn for detections scoring >= 0.5."""
        import pycocotools.mask as mask_util

        out = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        for k, d in enumerate(record["detections"]):
            if d["score"] < 0.5:
                continue
            color = np.array([(37 * k) % 255, (17 * k + 90) % 255, (91 * k + 180) % 255], dtype=np.float32)
            if "segmentation" in d:
                rle = dict(d["segmentation"], counts=d["segmentation"]["counts"].encode())
                m = mask_util.decode(rle).astype(bool)
                out[m] = (0.5 * out[m] + 0.5 * color).astype(np.uint8)
            x, y, w, h = (int(round(v)) for v in d["bbox"])
            cv2.rectangle(out, (x, y), (x + w, y + h), color.tolist(), 2)
            cv2.putText(out, f"{d['category_id']}:{d['score']:.2f}", (x, max(0, y - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, (255, 255, 255), 1)
        return out



class CocoResultsWriter:
    """coco_results.json (the COCO results list) written from predictions.jsonl when predict finishes, streamed
    entry by entry: the jsonl is the incremental, resumable record; the json is derived from it."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def write(self, item: SourceItem, record: dict[str, Any]) -> None:
        pass  # the record reaches predictions.jsonl; close() derives the results list from there

    def close(self) -> None:
        from deployzoo.files import atomic_write_file

        src = self.out_dir / PRED_FILE

        def _write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as fout:
                fout.write("[")
                first = True
                for rec in iter_records(src):
                    for d in rec.get("detections", ()):
                        fout.write(("" if first else ",\n") + json.dumps({"image_id": rec["image_id"], **d},
                                                                          separators=(",", ":")))
                        first = False
                fout.write("]\n")

        if src.is_file():
            atomic_write_file(self.out_dir / RESULTS_FILE, _write)

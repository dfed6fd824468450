"""Instance segmentation post-processing (Mask R-CNN): 28x28 mask probabilities pasted back into the original
image, binarised, RLE-encoded one at a time (nothing holds all full-size masks of an image or a dataset), and
contiguous class indices mapped to COCO category ids. The model and task around it are the next step."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

# COCO's 80 categories in their contiguous training order -> the category ids of instances_*.json (1..90, gaps)
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)


def paste_mask(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """One M x M mask probability map pasted into its box (x1 y1 x2 y2, image pixels) of an H x W image and
    binarised at `threshold`: torchvision's paste_masks_in_image (1-pixel padding, bilinear resize), per mask."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    b = torch.as_tensor(np.asarray(box, dtype=np.float32).reshape(1, 4))
    full = paste_masks_in_image(m, b, (int(image_hw[0]), int(image_hw[1])), padding=1)[0, 0]
    return (full >= threshold).numpy()


def encode_rle(binary: np.ndarray) -> dict:
    """COCO RLE (`size`, `counts` as str) of an H x W binary mask, via pycocotools."""
    import pycocotools.mask as mask_util

    rle = mask_util.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def masks_to_rles(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int],
                  threshold: float = 0.5) -> Iterator[dict]:
    """RLEs of N masks, pasted and encoded one at a time."""
    for m, b in zip(masks, boxes):
        yield encode_rle(paste_mask(m, b, image_hw, threshold))


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

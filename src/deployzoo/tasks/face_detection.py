"""Face detection task (RetinaFace): official pre-processing, threshold / top-k / NMS / keep-top-k, writers.

Two pre-processing paths: numpy / OpenCV on the host (`preprocess`, `collate`) and torch on the engine's device
(`prepare_tensors`, for the device pipeline). The selection is one batched torch routine (`select_tensors`) used by
both: on the host's arrays (as CPU tensors) and on the engine's output tensors where they are. `select` is the
per-image numpy / torchvision reference it is tested against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from deployzoo.specs import InputSpec
from deployzoo.tasks.base import Prepared, Task

DEFAULT_POST = {"conf": 0.02, "iou": 0.4, "top_k": 5000, "max_det": 750}


def letterbox(img: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Aspect-preserving resize into an H x W canvas, image at the top-left; returns (resized image, scale)."""
    h, w = img.shape[:2]
    r = min(hw[0] / h, hw[1] / w)
    nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return img, r


def _chw_minus_mean(img: np.ndarray, mean: np.ndarray, out: np.ndarray) -> None:
    """out[c, :h, :w] = img[..., c] - mean[c] in float32, one channel at a time (10x faster than a
    float copy of the whole image followed by a transposed copy)."""
    h, w = img.shape[:2]
    for c, ch in enumerate(cv2.split(img)):
        np.subtract(ch, mean[c], out=out[c, :h, :w], dtype=np.float32)


def preprocess(img_bgr: np.ndarray, spec: InputSpec) -> Prepared:
    """BGR float minus mean, C x H x W. `spec.imgsz` is 'origin' or (H, W) (letterbox, zero padding)."""
    imgsz = spec.imgsz
    mean = np.asarray(spec.mean, dtype=np.float32)
    oh, ow = img_bgr.shape[:2]
    if imgsz == "origin":
        scale = 1.0
        x = np.empty((3, oh, ow), dtype=np.float32)
        _chw_minus_mean(img_bgr, mean, x)
    else:
        resized, scale = letterbox(img_bgr, (int(imgsz[0]), int(imgsz[1])))
        x = np.zeros((3, int(imgsz[0]), int(imgsz[1])), dtype=np.float32)
        _chw_minus_mean(resized, mean, x)
    return Prepared(x, {"scale": scale, "orig_hw": (oh, ow)})


def collate(items: list[Prepared]) -> np.ndarray:
    """Stack into N x C x H x W; images of different sizes (origin mode) are zero-padded bottom/right."""
    if len(items) == 1:
        return items[0].tensor[None]
    hmax = max(p.tensor.shape[1] for p in items)
    wmax = max(p.tensor.shape[2] for p in items)
    out = np.zeros((len(items), 3, hmax, wmax), dtype=np.float32)
    for i, p in enumerate(items):
        out[i, :, : p.tensor.shape[1], : p.tensor.shape[2]] = p.tensor
    return out


def select(
    boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, post: dict[str, Any]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Official RetinaFace selection, per image of a batch: score > conf, top-k by score, NMS, keep-top-k.

    NMS uses the official `py_cpu_nms` pixel convention (areas and overlaps counted with +1), obtained exactly from
    torchvision's NMS by extending x2/y2 by one pixel. Returns per image (boxes Kx4, scores K, landmarks Kx10),
    sorted by score.
    """
    conf, iou, top_k, max_det = _post_params(post)
    sel_b, sel_s, sel_l, idx = [], [], [], []
    for i in range(scores.shape[0]):
        inds = np.flatnonzero(scores[i] > conf)
        order = inds[np.argsort(-scores[i, inds], kind="stable")][: top_k if top_k > 0 else None]
        sel_b.append(boxes[i, order])
        sel_s.append(scores[i, order])
        sel_l.append(landmarks[i, order])
        idx.append(np.full(order.size, i, dtype=np.int64))
    b = np.concatenate(sel_b).astype(np.float32)
    s = np.concatenate(sel_s).astype(np.float32)
    ids = np.concatenate(idx)
    if b.shape[0]:
        bt = torch.from_numpy(b.copy())
        bt[:, 2:] += 1.0
        keep = batched_nms(bt, torch.from_numpy(s), torch.from_numpy(ids), iou).numpy()
    else:
        keep = np.zeros(0, dtype=np.int64)
    lm = np.concatenate(sel_l).astype(np.float32)
    out = []
    for i in range(scores.shape[0]):
        k = keep[ids[keep] == i]
        k = k[np.argsort(-s[k], kind="stable")][: max_det if max_det > 0 else None]
        out.append((b[k], s[k], lm[k]))
    return out


def _post_params(post: dict[str, Any]) -> tuple[float, float, int, int]:
    return (float(post.get("conf", DEFAULT_POST["conf"])), float(post.get("iou", DEFAULT_POST["iou"])),
            int(post.get("top_k", DEFAULT_POST["top_k"])), int(post.get("max_det", DEFAULT_POST["max_det"])))


def select_tensors(
    boxes: torch.Tensor, scores: torch.Tensor, landmarks: torch.Tensor, post: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`select` for a whole batch in torch, on whatever device the tensors are (N x A x 4, N x A, N x A x 10).

    Same semantics and the same result as `select`, index for index: score > conf; per image the top_k by score
    (stable: equal scores keep anchor order); one batched NMS over all images with the image index as class and
    the official +1 pixel convention; per image the first max_det by score. No loop over images. Returns the kept
    (boxes K x 4, scores K, landmarks K x 10, image index K), ordered by image then by decreasing score.
    """
    conf, iou, top_k, max_det = _post_params(post)
    n, a = scores.shape
    dev = scores.device
    scores, boxes, landmarks = scores.float(), boxes.float(), landmarks.float()
    passed = scores > conf
    masked = torch.where(passed, scores, torch.full_like(scores, -float("inf")))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    count = passed.sum(dim=1)
    if top_k > 0:
        count = count.clamp(max=top_k)
    valid = torch.arange(a, device=dev)[None, :] < count[:, None]
    img, rank = valid.nonzero(as_tuple=True)  # image-major, then by rank: the candidates of `select`, in its order
    anchor = order[img, rank]
    b, s, lm = boxes[img, anchor], scores[img, anchor], landmarks[img, anchor]
    bt = b.clone()
    bt[:, 2:] += 1.0
    keep = batched_nms(bt, s, img, iou)
    keep = keep[torch.sort(s[keep], descending=True, stable=True).indices]
    keep = keep[torch.sort(img[keep], stable=True).indices]  # by image, by score within an image
    if max_det > 0 and keep.numel():
        ki = img[keep]
        per = torch.bincount(ki, minlength=n)
        start = torch.cumsum(per, 0) - per
        keep = keep[(torch.arange(keep.numel(), device=dev) - start[ki]) < max_det]
    return b[keep], s[keep], lm[keep], img[keep]


def _records(b: np.ndarray, s: np.ndarray, lm: np.ndarray, img: np.ndarray,
             metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-image records (original pixels) from the selection's flat host arrays, ordered by image."""
    ends = np.cumsum(np.bincount(img, minlength=len(metas)))[: len(metas)]
    starts = np.concatenate([[0], ends[:-1]])
    records = []
    for lo, hi, meta in zip(starts, ends, metas):
        r = meta["scale"]
        bi = b[lo:hi] / r
        li = (lm[lo:hi] / r).reshape(-1, 5, 2)
        si = s[lo:hi]
        records.append(
            {
                "boxes": np.round(bi.astype(np.float64), 2).tolist(),
                "scores": np.round(si.astype(np.float64), 6).tolist(),
                "landmarks": np.round(li.astype(np.float64), 2).tolist(),
                "_raw": (bi, si),
            }
        )
    return records


def _host_tensor(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def prepare_tensors(images: list[torch.Tensor], spec: InputSpec,
                    metas: list[dict[str, Any] | None] | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """`preprocess` + `collate` in torch on the images' device: uint8 3 x h x w RGB tensors -> N x 3 x H x W
    float32 in the spec's channel order (BGR for RetinaFace) minus mean, each image at the top-left of a zero
    canvas: the batch's largest size (`imgsz` origin) or `imgsz` [H, W] after an aspect-preserving resize
    (bilinear, half-pixel centres, no antialiasing, rounded to integer levels as cv2.INTER_LINEAR on uint8: equal to
    within one grey level)."""
    dev = images[0].device
    imgsz = spec.imgsz
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=dev).view(3, 1, 1)
    bgr = spec.bgr
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    if imgsz == "origin":
        hw = (max(h for h, _ in sizes), max(w for _, w in sizes))
    else:
        hw = (int(imgsz[0]), int(imgsz[1]))
    out = torch.zeros((len(images), 3, *hw), dtype=torch.float32, device=dev)
    out_metas = []
    for i, (im, (h, w)) in enumerate(zip(images, sizes)):
        x = im.flip(0) if bgr else im
        r = 1.0
        if imgsz != "origin":
            r = min(hw[0] / h, hw[1] / w)
            nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
            if (nh, nw) != (h, w):
                x = F.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                                  antialias=False)[0].round_().clamp_(0, 255)
        torch.sub(x, mean, out=out[i, :, : x.shape[1], : x.shape[2]])
        out_metas.append({"scale": r, "orig_hw": (h, w)})
    return out, out_metas


class FaceDetectionTask(Task):
    name = "face_detection"
    suite = "widerface"
    formats = ("widerface",)
    metric = "widerface"

    def prepare(self, img: np.ndarray, spec: InputSpec, meta: dict[str, Any] | None = None) -> Prepared:
        return preprocess(img, spec)

    def agreement(self, reference: list[dict[str, Any]], tested: list[dict[str, Any]]) -> float:
        """AP@0.5 of the tested detections against the reference's confident ones (score >= 0.5)."""
        from deployzoo.metrics.agreement import agreement_ap

        return agreement_ap(reference, tested)

    def collate(self, items: list[Prepared], spec: InputSpec) -> np.ndarray:
        return collate(items)

    def postprocess(
        self, outputs: dict[str, np.ndarray], metas: list[dict[str, Any]], post: dict[str, Any]
    ) -> list[dict[str, Any]]:
        sel = select_tensors(*(_host_tensor(outputs[k]) for k in ("boxes", "scores", "landmarks")), post)
        return _records(*(t.numpy() for t in sel), metas)

    # tensor hooks: the device pipeline (pipeline_device.py)
    def prepare_tensors(self, images: list[torch.Tensor], spec: InputSpec,
                        metas: list[dict[str, Any] | None] | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        return prepare_tensors(images, spec, metas)

    def postprocess_tensors(self, outputs: dict[str, torch.Tensor], metas: list[dict[str, Any]],
                            post: dict[str, Any]) -> list[dict[str, Any]]:
        """The batched selection on the device; only the kept detections come to the host."""
        sel = select_tensors(outputs["boxes"], outputs["scores"], outputs["landmarks"], post)
        return _records(*(t.cpu().numpy() for t in sel), metas)

    def tensor_spec_ok(self, spec: InputSpec) -> bool:
        sz = spec.imgsz
        return sz == "origin" or (isinstance(sz, (list, tuple)) and len(sz) == 2)

    def write_format(self, fmt: str, name: str, record: dict[str, Any], out_dir: Path) -> None:
        if fmt != "widerface":
            raise ValueError(fmt)
        write_widerface_txt(out_dir, name, *record["_raw"])

    def render(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray:
        out = img.copy()
        colors = [(0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0)]
        for box, score, pts in zip(record["boxes"], record["scores"], record["landmarks"]):
            if score < 0.5:
                continue
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 255), 2)
            cv2.putText(out, f"{score:.2f}", (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
            for (px, py), c in zip(pts, colors):
                cv2.circle(out, (int(round(px)), int(round(py))), 2, c, -1)
        return out


def write_widerface_txt(out_dir: Path, name: str, boxes: np.ndarray, scores: np.ndarray) -> Path:
    """The official prediction layout: OUT/<event>/<image>.txt with name, count, `x y w h score` lines.

    Coordinates are truncated with int() and w = int(x2) - int(x1), as the official test_widerface.py writes them.
    """
    rel = Path(name)
    event = rel.parent.name or "images"
    stem = rel.stem
    path = out_dir / event / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [stem, str(len(boxes))]
    for (x1, y1, x2, y2), s in zip(boxes.tolist(), scores.tolist()):
        ix1, iy1 = int(x1), int(y1)
        lines.append(f"{ix1} {iy1} {int(x2) - ix1} {int(y2) - iy1} {np.float32(s)} ")
    path.write_text("\n".join(lines) + "\n")
    return path

"""Image classification task (ImageNet classifiers: MobileNetV1, VOLO-D2): the weights' own eval transform
(resize the shorter side, centre crop, mean / std, as torchvision / timm do it with PIL), softmax + top-k, the
seed's result files; `run` scores it with suites/imagenet.py (top-1 / top-5 against labels).

The device pipeline's tensor hooks (`prepare_tensors`, `postprocess_tensors`) do the same in torch on the engine's
device: torchvision's tensor resize with antialiasing approximates PIL's resampling (close, not bit-equal: tested
to a mean absolute difference under one grey level), softmax + top-k on the device."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deployzoo.data.imagenet import NUM_CLASSES as NUM_IMAGENET_CLASSES
from deployzoo.specs import InputSpec
from deployzoo.tasks.base import Prepared, Task

DEFAULT_POST = {"topk": 5}
_PIL_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
               "lanczos": Image.LANCZOS}


def resize_center_crop(img: np.ndarray, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """Shorter side to `resize` (the longer one int(resize * long / short)), then the centre `crop` x `crop`:
    torchvision's Resize(int) + CenterCrop on a PIL image, which timm's eval transform also uses."""
    h, w = img.shape[:2]
    oh, ow = _resized_hw(h, w, resize)
    if (oh, ow) != (h, w):
        img = np.asarray(Image.fromarray(img).resize((ow, oh), _PIL_INTERP[interpolation]))
    if oh < crop or ow < crop:  # torchvision pads; only possible when resize < crop
        pad = np.zeros((max(oh, crop), max(ow, crop), 3), np.uint8)
        pad[(pad.shape[0] - oh) // 2:(pad.shape[0] - oh) // 2 + oh, (pad.shape[1] - ow) // 2:(pad.shape[1] - ow) // 2 + ow] = img
        img, oh, ow = pad, pad.shape[0], pad.shape[1]
    top, left = int(round((oh - crop) / 2.0)), int(round((ow - crop) / 2.0))
    return img[top:top + crop, left:left + crop]


def _resized_hw(h: int, w: int, resize: int) -> tuple[int, int]:
    return (int(resize * h / w), resize) if w <= h else (resize, int(resize * w / h))


_TENSOR_INTERP = ("bilinear", "bicubic", "nearest")


def resize_center_crop_tensor(img: torch.Tensor, resize: int, crop: int, interpolation: str = "bilinear") -> torch.Tensor:
    """`resize_center_crop` on a uint8 3 x H x W tensor (any device), with torchvision's tensor ops: shorter side
    to `resize` (antialiased, as PIL), centre crop (zero padding when smaller, as torchvision)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    h, w = int(img.shape[1]), int(img.shape[2])
    oh, ow = _resized_hw(h, w, resize)
    if (oh, ow) != (h, w):
        img = TF.resize(img, [oh, ow], interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.center_crop(img, [crop, crop])


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-index (sorted wnid) order, as torchvision ships them."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _with_name(rec: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """The record with `class`: the ImageNet-1k name of its top-1 class (a model of another class count: none)."""
    if rec["topk"] and n_classes == NUM_IMAGENET_CLASSES:
        rec["class"] = imagenet_class_names()[rec["topk"][0][0]]
    return rec


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ClassificationTask(Task):
    name = "classification"
    suite = "imagenet"
    formats: tuple[str, ...] = ()

    def prepare(self, img: np.ndarray, spec: InputSpec, meta: dict[str, Any] | None = None) -> Prepared:
        pp = spec.params
        crop = int(pp.get("crop", 224))
        x = resize_center_crop(img, int(pp.get("resize", 256)), crop, pp.get("interpolation", "bilinear"))
        mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
        return Prepared((x.transpose(2, 0, 1).astype(np.float32) - mean) / std, {})

    def collate(self, items: list[Prepared], spec: InputSpec) -> np.ndarray:
        return np.stack([p.tensor for p in items])

    def postprocess(self, outputs: dict[str, np.ndarray], metas: list[dict[str, Any]],
                    post: dict[str, Any]) -> list[dict[str, Any]]:
        k = int(post.get("topk", 5))
        probs = softmax(outputs["logits"])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [_with_name({"topk": [[int(c), round(float(p[c]), 6)] for c in t]}, probs.shape[1])
                for t, p in zip(top, probs)]

    def agreement(self, reference: list[dict[str, Any]], tested: list[dict[str, Any]]) -> float:
        """Share of images whose top-1 class is the reference's."""
        if not reference:
            return float("nan")
        return sum(r["topk"][0][0] == t["topk"][0][0] for r, t in zip(reference, tested)) / len(reference)

    # tensor hooks: the device pipeline (pipeline_device.py)
    def prepare_tensors(self, images: list[torch.Tensor], spec: InputSpec,
                        metas: list[dict[str, Any] | None] | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """uint8 3 x h x w RGB tensors -> N x 3 x crop x crop float32, (x - mean) / std, on their device."""
        dev = images[0].device
        crop, resize = int(spec.params.get("crop", 224)), int(spec.params.get("resize", 256))
        interp = spec.params.get("interpolation", "bilinear")
        bgr = spec.bgr
        x = torch.stack([resize_center_crop_tensor(im.flip(0) if bgr else im, resize, crop, interp) for im in images])
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        return (x.float() - mean) / std, [{} for _ in images]

    def postprocess_tensors(self, outputs: dict[str, torch.Tensor], metas: list[dict[str, Any]],
                            post: dict[str, Any]) -> list[dict[str, Any]]:
        """Softmax (float64, as the host path) and the top-k on the device; only N x k comes to the host."""
        k = int(post.get("topk", 5))
        probs = torch.softmax(outputs["logits"].double(), dim=1)
        p, c = torch.sort(probs, dim=1, descending=True, stable=True)
        p, c = p[:, :k].cpu().numpy(), c[:, :k].cpu().numpy()
        n = int(probs.shape[1])
        return [_with_name({"topk": [[int(ci), round(float(pi), 6)] for ci, pi in zip(cr, pr)]}, n)
                for cr, pr in zip(c, p)]

    def tensor_spec_ok(self, spec: InputSpec) -> bool:
        return spec.params.get("interpolation", "bilinear") in _TENSOR_INTERP

    def write_format(self, fmt: str, name: str, record: dict[str, Any], out_dir: Path) -> None:
        raise ValueError(fmt)

    def render(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray:
        """The image with its top-k classes (ImageNet names) and probabilities written on it."""
        import cv2

        out = np.ascontiguousarray(img).copy()
        scale = max(0.4, min(out.shape[:2]) / 400)
        names = imagenet_class_names()
        for k, (c, p) in enumerate(record["topk"]):
            name = names[c] if c < len(names) else f"class {c}"
            t = f"{p:.2f} {name}" if k else f"{name} {p:.2f}"
            y = int((20 + 22 * k) * scale)
            thick = 2 if k == 0 else 1
            cv2.putText(out, t, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
            cv2.putText(out, t, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (255, 255, 255), thick, cv2.LINE_AA)
        return out

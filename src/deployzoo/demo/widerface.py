"""A synthetic WIDER FACE val set: real face crops pasted on textured backgrounds, with ground truth in the
official .mat layout (deployzoo.data.widerface reads it as it reads the real files)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.widerface import GT_FILES, LABEL_KEYS, SETTINGS
from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- demo data

# The astronaut's face in skimage.data.astronaut() (a public-domain NASA portrait, 512 x 512), as x1, y1, x2, y2
# in pixels: cheek to cheek and hairline to chin. The official RetinaFace-mnet puts its box at about
# (178, 57, 270, 176) on this image at several scales, so the demo ground truth agrees with a WIDER detector.
FACE_BOX = (178, 60, 270, 176)
MIN_WIDTH = {"easy": 100, "medium": 50, "hard": 0}  # a face counts for a setting when wider than this


def _face_crop() -> np.ndarray:
    """The astronaut's face, BGR, cut at FACE_BOX."""
    import cv2
    from skimage.data import astronaut

    x1, y1, x2, y2 = FACE_BOX
    return np.ascontiguousarray(cv2.cvtColor(astronaut()[y1:y2, x1:x2], cv2.COLOR_RGB2BGR))


def _cell_array(items: list[Any]) -> np.ndarray:
    """An N x 1 object array: what savemat writes as an N x 1 cell (and loadmat gives back)."""
    arr = np.empty((len(items), 1), dtype=object)
    for i, it in enumerate(items):
        arr[i, 0] = it
    return arr


def _index_dtype(n: int) -> type:
    """MATLAB's choice for the gt_list indices in the real files: the smallest unsigned type that fits."""
    return np.uint8 if n <= np.iinfo(np.uint8).max else np.uint16


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured random background: coloured waves, a few blocks and pixel noise."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        fx, fy = rng.uniform(6, 40, 2)
        img[..., c] = (np.sin(xs / fx + rng.uniform(0, 6)) * 35 + np.cos(ys / fy + rng.uniform(0, 6)) * 35
                       + rng.uniform(70, 180))
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        bw, bh = int(rng.integers(20, w // 3)), int(rng.integers(20, h // 3))
        img[y0:y0 + bh, x0:x0 + bw] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 10, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _place_faces(rng: np.random.Generator, h: int, w: int, face_hw: tuple[int, int],
                 n: int) -> list[tuple[int, int, int, int]]:
    """Up to n non-overlapping (x, y, w, h) boxes with the face's aspect ratio, widths ~24..220 px."""
    fh, fw = face_hw
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(n):
        for _try in range(50):
            bw = int(rng.integers(24, 221))
            bh = max(2, int(round(bw * fh / fw)))
            if bw >= w or bh >= h:
                continue
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            if all(x + bw <= px or px + pw <= x or y + bh <= py or py + ph <= y for px, py, pw, ph in placed):
                placed.append((x, y, bw, bh))
                break
    return placed


def write_demo(root: str | Path, n_images: int = 24, n_events: int = 3, seed: int = 0,
               image_size: tuple[int, int] = (480, 640)) -> Path:
    """Write a small WIDER-layout dataset under ``root`` and return ``root``.

    Layout: ``WIDER_val/images/<event>/<name>.jpg``, ``ground_truth/wider_{face,easy,medium,hard}_val.mat``
    (same variables, nesting and dtypes as the official files) and ``wider_val.txt``. Each image pastes 1..4
    copies of a real face (the astronaut of skimage) at random scales and places onto a textured background;
    the pasted boxes are the ground truth. Easy keeps faces wider than 100 px, medium wider than 50, hard all.
    Deterministic for a seed.
    """
    import cv2
    from scipy.io import savemat

    if n_images < 1 or n_events < 1:
        raise DeployzooError(f"{root}: write_demo needs n_images >= 1 and n_events >= 1")
    root = Path(root)
    h, w = int(image_size[0]), int(image_size[1])
    rng = np.random.default_rng(seed)
    face = _face_crop()
    events = [f"{i}--Demo" for i in range(n_events)]
    files: list[list[str]] = [[] for _ in events]
    boxes: list[list[np.ndarray]] = [[] for _ in events]
    lines: list[str] = []
    for k in range(n_images):
        e = k % n_events
        name = f"{e}_Demo_demo_{seed}_{k}"
        img = _background(rng, h, w)
        placed = _place_faces(rng, h, w, face.shape[:2], int(rng.integers(1, 5)))
        for x, y, bw, bh in placed:
            interp = cv2.INTER_AREA if bw < face.shape[1] else cv2.INTER_LINEAR
            img[y:y + bh, x:x + bw] = cv2.resize(face, (bw, bh), interpolation=interp)
        rel = f"{events[e]}/{name}.jpg"
        out = root / "WIDER_val" / "images" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), img, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise DeployzooError(f"{out}: cannot write image")
        files[e].append(name)
        boxes[e].append(np.asarray(placed, dtype=np.int32).reshape(-1, 4))
        lines.append(rel)
    events_used = [i for i, f in enumerate(files) if f]  # n_events > n_images leaves some empty: drop them
    events = [events[i] for i in events_used]
    files = [files[i] for i in events_used]
    boxes = [boxes[i] for i in events_used]
    common: dict[str, Any] = {
        "event_list": _cell_array([np.array([ev]) for ev in events]),
        "file_list": _cell_array([_cell_array([np.array([f]) for f in fl]) for fl in files]),
        "face_bbx_list": _cell_array([_cell_array(bl) for bl in boxes]),
    }
    for key in LABEL_KEYS:  # attributes the evaluation ignores; zeros, uint8 K x 1 as in the real files
        common[key] = _cell_array([_cell_array([np.zeros((len(b), 1), np.uint8) for b in bl]) for bl in boxes])
    gt_dir = root / "ground_truth"
    gt_dir.mkdir(parents=True, exist_ok=True)
    savemat(str(gt_dir / GT_FILES["all"]), common)
    for s in SETTINGS:
        keep = [_cell_array([(np.flatnonzero(b[:, 2] > MIN_WIDTH[s]) + 1).astype(_index_dtype(len(b))).reshape(-1, 1)
                             for b in bl]) for bl in boxes]
        savemat(str(gt_dir / GT_FILES[s]), {**common, "gt_list": _cell_array(keep)})
    (root / "wider_val.txt").write_text("\n".join(lines) + "\n")
    log.info("wrote WIDER demo set %s: %d images, %d faces", root, n_images, sum(len(b) for bl in boxes for b in bl))
    return root

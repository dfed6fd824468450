"""A synthetic labelled classification set (flat images + val.txt), read by deployzoo.data.imagenet."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from deployzoo.data.imagenet import NUM_CLASSES


def write_demo(root: str | Path, n_images: int = 24, seed: int = 0, num_classes: int = NUM_CLASSES) -> Path:
    """A small flat labelled set (ROOT/images/*.jpg + ROOT/val.txt) of generated images (textured shapes of
    random colours and sizes) with random labels: exercises the whole pipeline on a fresh machine; accuracy
    on it means nothing."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_images):
        h, w = int(rng.integers(160, 400)), int(rng.integers(160, 400))
        img = np.full((h, w, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        img = np.clip(img.astype(np.int16) + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(2, 6))):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2)))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
        name = f"demo_{seed}_{i:05d}.jpg"
        cv2.imwrite(str(root / "images" / name), img)
        lines.append(f"{name} {int(rng.integers(0, num_classes))}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root

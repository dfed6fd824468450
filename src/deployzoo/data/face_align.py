"""5-point face alignment to the ArcFace 112x112 template (insightface's face_align / eval_ijbc.py):
a least-squares similarity transform (Umeyama, via scikit-image) from the detected landmarks to the template,
then an affine warp with a black border."""

from __future__ import annotations

import cv2
import numpy as np

from deployzoo.data.images import ImageError

INPUT_SIZE = 112
# Where the eyes, nose tip and mouth corners land in a 112x112 crop (insightface's `arcface_dst`; eval_ijbc.py
# writes it as a 96-wide template shifted by 8 px in x: the same points). Landmark order: left eye, right eye,
# nose tip, left mouth corner, right mouth corner, (x, y) in pixels.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


class AlignmentError(ImageError):
    """Landmarks that cannot define a face crop; the item is skipped and reported."""


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """2 x 3 least-squares similarity (rotation, uniform scale, translation) mapping `src` points onto `dst`
    (Umeyama's method, via scikit-image as insightface does). Raises AlignmentError when the points are degenerate."""
    from skimage.transform import SimilarityTransform

    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape:
        raise AlignmentError(f"expected {dst.shape[0]} landmarks, got {src.shape[0]}")
    if not np.isfinite(src).all():
        raise AlignmentError("landmarks are not finite")
    spread = np.sqrt(((src - src.mean(0)) ** 2).sum(1).mean())
    if spread < 1.0:
        raise AlignmentError(f"landmarks are degenerate (all within {spread:.2f} px of their centre)")
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tf = SimilarityTransform.from_estimate(src, dst)
        ok = bool(tf)
    else:  # pragma: no cover - older scikit-image
        tf = SimilarityTransform()
        ok = tf.estimate(src, dst)
    m = np.asarray(getattr(tf, "params", np.full((3, 3), np.nan)))[:2] if ok else np.full((2, 3), np.nan)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2])))) if np.isfinite(m).all() else float("nan")
    if not np.isfinite(m).all() or not 1e-3 < scale < 1e3:
        raise AlignmentError("landmarks are degenerate (no similarity transform fits them)")
    return m.astype(np.float32)


def align_face(img: np.ndarray, landmarks: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Warp `img` so that its 5 landmarks (x, y in pixels: left eye, right eye, nose, left / right mouth corner)
    land on the ArcFace template; black border, bilinear, as insightface's face_align."""
    m = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / INPUT_SIZE))
    return cv2.warpAffine(img, m, (size, size), borderValue=0.0)

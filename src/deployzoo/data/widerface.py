"""WIDER FACE: the official validation ground truth (.mat files) and a synthetic demo set in the same layout.

The official ground truth is four MATLAB v5 files:

* ``wider_face_val.mat``: ``event_list`` (E x 1 cells of event names), ``file_list`` (E x 1 cells, each an
  N_e x 1 cell of image names without ``.jpg``), ``face_bbx_list`` (E x 1 cells, each N_e x 1 cells of K x 4
  int32 ``x y w h`` boxes) plus per-face attribute labels (blur, pose, ...) that the evaluation does not use.
* ``wider_{easy,medium,hard}_val.mat``: the same variables plus ``gt_list``: per image, the 1-based indices of
  the faces that count for that difficulty (all other faces are "ignored"). MATLAB saved these with the
  smallest integer type that fits (uint8, or uint16 for images with more than 255 faces), so they are
  converted to int64 before any arithmetic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")
GT_FILES = {"all": "wider_face_val.mat", "easy": "wider_easy_val.mat", "medium": "wider_medium_val.mat",
            "hard": "wider_hard_val.mat"}
# per-face attribute variables of the real files (kept in the demo files so both have the same structure)
LABEL_KEYS = ("blur_label_list", "expression_label_list", "illumination_label_list", "invalid_label_list",
              "occlusion_label_list", "pose_label_list")


@dataclass
class WiderGT:
    events: list[str]
    files: list[list[str]]  # image names without .jpg, per event
    boxes: list[list[np.ndarray]]  # per event, per image: K x 4 float64 (x, y, w, h)
    keep: dict[str, list[list[np.ndarray]]]  # setting -> per event, per image: 1-based int64 face indices

    @property
    def n_images(self) -> int:
        return sum(len(f) for f in self.files)

    def n_faces(self, setting: str | None = None) -> int:
        """Number of annotated faces (setting None) or of faces kept by a difficulty setting."""
        if setting is None:
            return sum(len(b) for ev in self.boxes for b in ev)
        return sum(len(k) for ev in self.keep[setting] for k in ev)


# --------------------------------------------------------------------------------------------- reading


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    from scipy.io import loadmat

    if not path.is_file():
        raise DeployzooError(f"{path}: ground-truth file not found")
    try:
        m = loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError, ...
        raise DeployzooError(f"{path}: not a readable .mat file ({type(exc).__name__})") from None
    for k in keys:
        if k not in m:
            raise DeployzooError(f"{path}: missing variable {k!r}")
    return m


def _cells(x: Any) -> list[Any]:
    """The elements of a MATLAB cell array as loadmat returns it (an object array, usually N x 1)."""
    arr = np.asarray(x)
    if arr.dtype != object:
        raise TypeError(f"expected a cell array, got {arr.dtype} {arr.shape}")
    return list(arr.ravel())


def _cell_str(x: Any) -> str:
    arr = np.asarray(x)
    if arr.dtype == object:  # a 1 x 1 cell around the char array
        arr = np.asarray(arr.ravel()[0])
    if arr.dtype.kind != "U" or arr.size != 1:
        raise TypeError(f"expected a string, got {arr.dtype} {arr.shape}")
    return str(arr.ravel()[0])


def load_gt(gt_dir: str | Path) -> WiderGT:
    """Read the official WIDER FACE val ground truth (or one written by deployzoo.demo.widerface) from ``gt_dir``."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DeployzooError(f"{gt_dir}: ground-truth directory not found")
    path = gt_dir / GT_FILES["all"]
    m = _loadmat(path, ("face_bbx_list", "event_list", "file_list"))
    try:
        events = [_cell_str(e) for e in _cells(m["event_list"])]
        files = [[_cell_str(f) for f in _cells(fl)] for fl in _cells(m["file_list"])]
        boxes = [[np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in _cells(bl)]
                 for bl in _cells(m["face_bbx_list"])]
    except (IndexError, TypeError, ValueError) as exc:
        raise DeployzooError(f"{path}: unexpected structure ({exc})") from None
    if not (len(events) == len(files) == len(boxes)) or any(len(a) != len(b) for a, b in zip(files, boxes)):
        raise DeployzooError(f"{path}: event_list, file_list and face_bbx_list disagree in length")
    keep: dict[str, list[list[np.ndarray]]] = {}
    for setting in SETTINGS:
        p = gt_dir / GT_FILES[setting]
        gl = _loadmat(p, ("gt_list",))["gt_list"]
        try:
            # uint8 / uint16 in the real files: widen before anyone subtracts 1
            per = [[np.asarray(g).astype(np.int64).ravel() for g in _cells(ev)] for ev in _cells(gl)]
        except (IndexError, TypeError, ValueError) as exc:
            raise DeployzooError(f"{p}: unexpected gt_list structure ({exc})") from None
        if len(per) != len(events) or any(len(a) != len(b) for a, b in zip(per, files)):
            raise DeployzooError(f"{p}: gt_list does not match {GT_FILES['all']} (event or image counts differ)")
        for e, (ev_keep, ev_boxes) in enumerate(zip(per, boxes)):
            for j, (k, b) in enumerate(zip(ev_keep, ev_boxes)):
                if k.size and (k.min() < 1 or k.max() > len(b)):
                    raise DeployzooError(f"{p}: gt_list index out of range for {events[e]}/{files[e][j]} "
                                         f"({len(b)} faces)")
        keep[setting] = per
    gt = WiderGT(events, files, boxes, keep)
    log.debug("WIDER GT %s: %d events, %d images, %d faces", gt_dir, len(events), gt.n_images, gt.n_faces())
    return gt


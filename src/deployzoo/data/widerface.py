"""WIDER FACE: the official validation ground truth (.mat files) and a synthetic demo set in the same layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

SETTINGS = ("easy", "medium", "hard")
GT_FILES = {"all": "wider_face_val.mat", "easy": "wider_easy_val.mat", "medium": "wider_medium_val.mat",
            "hard": "wider_hard_val.mat"}


@dataclass
class WiderGT:
    events: list[str]
    files: list[list[str]]  # image names without .jpg, per event
    boxes: list[list[np.ndarray]]  # K x 4 float64 (x, y, w, h), per image
    keep: dict[str, list[list[np.ndarray]]]  # setting -> per image: 1-based indices of the faces it keeps

    @property
    def n_images(self) -> int:
        return sum(len(f) for f in self.files)


def _loadmat(path: Path, keys: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise DeployzooError(f"{path}: ground-truth file not found")
    try:
        m = loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError...
        raise DeployzooError(f"{path}: not a readable .mat file ({type(exc).__name__})") from None
    for k in keys:
        if k not in m:
            raise DeployzooError(f"{path}: missing variable {k!r}")
    return m


def _cell_str(x) -> str:
    return str(np.asarray(x).ravel()[0])


def load_gt(gt_dir: str | Path) -> WiderGT:
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DeployzooError(f"{gt_dir}: ground-truth directory not found")
    path = gt_dir / GT_FILES["all"]
    m = _loadmat(path, ("face_bbx_list", "event_list", "file_list"))
    try:
        events = [_cell_str(e[0]) for e in m["event_list"]]
        files = [[_cell_str(f[0]) for f in fl[0]] for fl in m["file_list"]]
        boxes = [[np.asarray(b[0], dtype=np.float64).reshape(-1, 4) for b in bl[0]] for bl in m["face_bbx_list"]]
    except (IndexError, TypeError, ValueError) as exc:
        raise DeployzooError(f"{path}: unexpected structure ({exc})") from None
    if not (len(events) == len(files) == len(boxes)) or any(len(a) != len(b) for a, b in zip(files, boxes)):
        raise DeployzooError(f"{path}: event_list, file_list and face_bbx_list disagree in length")
    keep: dict[str, list[list[np.ndarray]]] = {}
    for setting in SETTINGS:
        p = gt_dir / GT_FILES[setting]
        gl = _loadmat(p, ("gt_list",))["gt_list"]
        try:
            per = [[np.asarray(g[0], dtype=np.int64).ravel() for g in ev[0]] for ev in gl]
        except (IndexError, TypeError, ValueError) as exc:
            raise DeployzooError(f"{p}: unexpected gt_list structure ({exc})") from None
        if len(per) != len(events) or any(len(a) != len(b) for a, b in zip(per, files)):
            raise DeployzooError(f"{p}: gt_list does not match {GT_FILES['all']} (events or image counts differ)")
        for ev_keep, ev_boxes in zip(per, boxes):
            for k, b in zip(ev_keep, ev_boxes):
                if k.size and (k.min() < 1 or k.max() > len(b)):
                    raise DeployzooError(f"{p}: gt_list index out of range for an image with {len(b)} faces")
        keep[setting] = per
    return WiderGT(events, files, boxes, keep)


# --------------------------------------------------------------------------------------------- demo data


def _face_crop() -> np.ndarray:
    """The astronaut's face (skimage.data.astronaut, a public-domain NASA photo), BGR, tight box."""
    import cv2
    from skimage.data import astronaut

    img = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
    return img[62:172, 178:268].copy()  # x 178..268, y 62..172 (checked against the real detector)


def _obj_array(items: list) -> np.ndarray:
    arr = np.empty((len(items), 1), dtype=object)
    for i, it in enumerate(items):
        arr[i, 0] = it
    return arr


def write_demo(root: str | Path, n_images: int = 24, n_events: int = 3, seed: int = 0,
               image_size: tuple[int, int] = (480, 640)) -> Path:
    """Write a small WIDER-layout dataset: WIDER_val/images/<event>/<name>.jpg and ground_truth/*.mat.

    Each image pastes 1..4 copies of a real face at random scales onto a textured background; the pasted boxes
    are the ground truth. Easy keeps faces wider than 100 px, medium wider than 50, hard all of them.
    """
    import cv2
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    face = _face_crop()
    fh, fw = face.shape[:2]
    h, w = image_size
    events = [f"{i}--Demo" for i in range(n_events)]
    files: list[list[str]] = [[] for _ in events]
    boxes: list[list[np.ndarray]] = [[] for _ in events]
    keeps: dict[str, list[list[np.ndarray]]] = {s: [[] for _ in events] for s in SETTINGS}
    min_w = {"easy": 100, "medium": 50, "hard": 0}
    lines = []
    for k in range(n_images):
        e = k % n_events
        name = f"{e}_Demo_demo_{seed}_{k}"
        ys, xs = np.mgrid[0:h, 0:w]
        base = (np.sin(xs / rng.uniform(8, 40)) * 40 + np.cos(ys / rng.uniform(8, 40)) * 40 + 100).astype(np.float32)
        img = np.dstack([base + rng.uniform(-40, 40) for _ in range(3)])
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 5))):
            for _try in range(30):
                bw = int(rng.uniform(24, 220))
                bh = max(2, int(round(bw * fh / fw)))
                if bw >= w or bh >= h:
                    continue
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                if all(x + bw < px or px + pw < x or y + bh < py or py + ph < y for px, py, pw, ph in placed):
                    img[y:y + bh, x:x + bw] = cv2.resize(face, (bw, bh), interpolation=cv2.INTER_AREA)
                    placed.append((x, y, bw, bh))
                    break
        rel = Path("WIDER_val") / "images" / events[e] / f"{name}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        files[e].append(name)
        b = np.asarray(placed, dtype=np.int32).reshape(-1, 4)
        boxes[e].append(b)
        for s in SETTINGS:
            keeps[s][e].append((np.flatnonzero(b[:, 2] > min_w[s]) + 1).astype(np.uint8).reshape(-1, 1))
        lines.append(f"{events[e]}/{name}.jpg")
    gt = root / "ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    common = {
        "event_list": _obj_array([np.array([ev]) for ev in events]),
        "file_list": _obj_array([_obj_array([np.array([f]) for f in fl]) for fl in files]),
        "face_bbx_list": _obj_array([_obj_array(bl) for bl in boxes]),
    }
    savemat(str(gt / GT_FILES["all"]), common)
    for s in SETTINGS:
        savemat(str(gt / GT_FILES[s]), {**common, "gt_list": _obj_array([_obj_array(kl) for kl in keeps[s]])})
    (root / "wider_val.txt").write_text("\n".join(lines) + "\n")
    return root

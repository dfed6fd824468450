"""Face recognition task (ArcFace): 5-point alignment to the ArcFace 112x112 template, normalisation, flip test,
and the features writer (an N x D array by row, resumable).

Sources it reads (besides a folder of already aligned 112x112 crops):
- an IJB-C root (`loose_crop/` + `meta/ijbc_name_5pts_score.txt`): rows in the order of the landmarks file;
- a landmarks file in the same format (`name x1 y1 ... x5 y5 [score]`, names relative to the file);
- a RetinaFace `predictions.jsonl` from `deployzoo predict retinaface` (one row per detected face);
- a verification `.bin` set (aligned faces as JPEG bytes, e.g. lfw.bin).

It has no tensor hooks (tasks/base.py): alignment and the flip test run on the host pipeline (`--pipeline
device` is refused with a one-line error).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.face_align import INPUT_SIZE, AlignmentError, align_face
from deployzoo.data.images import SourceItem, list_source
from deployzoo.files import atomic_write_text
from deployzoo.errors import DeployzooError
from deployzoo.specs import InputSpec
from deployzoo.tasks.base import Prepared, Task

log = logging.getLogger(__name__)

DEFAULT_POST = {"flip": True}
FEATURES_FILE = "features.npy"
FACENESS_FILE = "faceness.npy"
ROWS_FILE = "rows.txt"
MIN_FACE_SCORE = 0.5  # faces of a RetinaFace predictions.jsonl used as rows


def normalise(img: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W float32, (x - mean) / std per channel."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (img.transpose(2, 0, 1).astype(np.float32) - mean) / std


# --------------------------------------------------------------------------------------------- sources


def _looks_like_ijbc(p: Path) -> bool:
    return p.is_dir() and any((q / "meta").is_dir() or (q / "loose_crop").is_dir() for q in (p, p / "IJBC"))


def ijbc_items(root: Path) -> tuple[Path, list[SourceItem]]:
    from deployzoo.data.ijbc import find_layout, read_landmarks

    layout = find_layout(root, need_images=True)
    table = read_landmarks(layout.landmarks_path)
    items = [
        SourceItem(layout.images_dir / name, name,
                   {"row": i, "landmarks": table.landmarks[i], "score": float(table.scores[i]),
                    "where": f"{layout.landmarks_path}:{i + 1}"})
        for i, name in enumerate(table.names)
    ]
    return layout.images_dir, items


def landmark_file_items(path: Path) -> tuple[Path, list[SourceItem]]:
    """`name x1 y1 ... x5 y5 [score]` per line; names relative to the file's directory."""
    items: list[SourceItem] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) not in (11, 12):
                raise DeployzooError(f"{path}:{lineno}: expected 11 or 12 fields (name, 5 x/y landmark pairs, "
                                     f"optional score), got {len(parts)}")
            try:
                vals = np.array([float(v) for v in parts[1:]], dtype=np.float32)
            except ValueError:
                raise DeployzooError(f"{path}:{lineno}: landmarks are not numbers") from None
            score = float(vals[10]) if vals.size == 11 else float("nan")
            items.append(SourceItem(path.parent / parts[0], parts[0],
                                    {"row": len(items), "landmarks": vals[:10].reshape(5, 2), "score": score,
                                     "where": f"{path}:{lineno}"}))
    if not items:
        raise DeployzooError(f"{path}: landmarks file lists no images")
    return path.parent, items


def detection_items(path: Path, min_score: float = MIN_FACE_SCORE) -> tuple[Path, list[SourceItem]]:
    """One row per face with score >= min_score in a RetinaFace predictions.jsonl; the images are found through
    the `source` recorded in the summary.json beside it."""
    summary = path.parent / "summary.json"
    try:
        src = Path(json.loads(summary.read_text())["source"])
    except (OSError, json.JSONDecodeError, KeyError):
        raise DeployzooError(f"{path}: cannot find the images it was predicted on (no readable 'source' in {summary})") from None
    root, images = list_source(src)
    by_name = {i.name: i.path for i in images}
    items: list[SourceItem] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                faces = list(zip(rec["boxes"], rec["scores"], rec["landmarks"]))
                img = rec["image"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DeployzooError(f"{path}:{lineno}: not a face-detection record (image, boxes, scores, landmarks)") from None
            if img not in by_name:
                raise DeployzooError(f"{path}:{lineno}: image {img} not found under {root}")
            for k, (box, score, lmk) in enumerate(faces):
                if score >= min_score:
                    items.append(SourceItem(by_name[img], f"{img}#face{k}",
                                            {"row": len(items), "landmarks": np.asarray(lmk, np.float32).reshape(5, 2),
                                             "score": float(score), "box": box, "where": f"{path}:{lineno}"}))
    if not items:
        raise DeployzooError(f"{path}: no face with score >= {min_score}")
    return root, items


def min_face_score(value: Any) -> float:
    """The face score cut-off (None: MIN_FACE_SCORE), checked to be a number in [0, 1]."""
    if value is None:
        return MIN_FACE_SCORE
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DeployzooError(f"--min-face-score: expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise DeployzooError(f"--min-face-score: expected a number in [0, 1], got {value!r}")
    return v


def bin_items(path: Path) -> tuple[Path, list[SourceItem]]:
    from deployzoo.data.verification_bin import load_bin

    vs = load_bin(path)
    return path.parent, [SourceItem(path, f"{vs.name}/{i:05d}", {"row": i}, data)
                         for i, data in enumerate(vs.images)]


# --------------------------------------------------------------------------------------------- writer


class FeatureWriter:
    """features.npy (N x D float32, row = the item's row; rows not computed are NaN), faceness.npy (N,) and
    rows.txt (the name of each row). The array is a memory map written in place, so an interrupted run keeps
    every finished row and `--resume` fills in the rest. A source that has grown since (its earlier rows first,
    unchanged, as a RetinaFace predictions.jsonl grows when its predict resumes over more images) is resumed
    too: the array gets the new rows, as NaN, and only they are computed."""

    def __init__(self, out_dir: Path, items: list[SourceItem], resume: bool) -> None:
        self.path = out_dir / FEATURES_FILE
        self.n = 1 + max((int((i.meta or {}).get("row", k)) for k, i in enumerate(items)), default=-1)
        self.arr: np.ndarray | None = None
        scores = np.full(self.n, np.nan, dtype=np.float32)
        names = [""] * self.n
        for k, item in enumerate(items):
            row = int((item.meta or {}).get("row", k))
            scores[row] = (item.meta or {}).get("score", np.nan)
            names[row] = item.name
        if resume and self.path.is_file():
            self.arr = np.load(self.path, mmap_mode="r+")
            if self.arr.ndim == 2 and self.arr.shape[0] < self.n and self._earlier_rows(out_dir) == names[: self.arr.shape[0]]:
                self._grow()
            if self.arr.ndim != 2 or self.arr.shape[0] != self.n:
                raise DeployzooError(f"{self.path}: holds {self.arr.shape[0]} rows but the source has {self.n}; "
                                     "use --overwrite")
        elif self.path.exists():
            self.path.unlink()
        np.save(out_dir / FACENESS_FILE, scores)
        atomic_write_text(out_dir / ROWS_FILE, "\n".join(names) + "\n")
        self.pending = 0

    @staticmethod
    def _earlier_rows(out_dir: Path) -> list[str] | None:
        try:
            return (out_dir / ROWS_FILE).read_text(encoding="utf-8").split("\n")[:-1]
        except OSError:
            return None

    def _grow(self) -> None:
        """The array with NaN rows added up to self.n (written beside it, then moved over it)."""
        old = self.arr
        tmp = self.path.with_name(self.path.name + ".grow")
        new = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(self.n, old.shape[1]))
        new[: old.shape[0]] = old
        new[old.shape[0]:] = np.nan
        new.flush()
        del new, old
        self.arr = None
        tmp.replace(self.path)
        self.arr = np.load(self.path, mmap_mode="r+")

    def write(self, item: SourceItem, record: dict[str, Any]) -> None:
        emb = record["_embedding"]
        if self.arr is None:
            self.arr = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(self.n, emb.size))
            self.arr[:] = np.nan
        if emb.size != self.arr.shape[1]:
            raise DeployzooError(f"{self.path}: has {self.arr.shape[1]} columns, the engine gives {emb.size}; use --overwrite")
        self.arr[record["row"]] = emb
        self.pending += 1
        if self.pending >= 256:
            self.flush()

    def flush(self) -> None:
        if self.arr is not None and isinstance(self.arr, np.memmap):
            self.arr.flush()
        self.pending = 0

    def close(self) -> None:
        self.flush()
        self.arr = None


# --------------------------------------------------------------------------------------------- task


class FaceRecognitionTask(Task):
    name = "face_recognition"
    suite = "ijbc"
    formats = ("npy",)
    always_formats = ("npy",)
    metric = "ijbc"

    def list_source(self, source: str | Path, post: dict[str, Any] | None = None) -> tuple[Path, list[SourceItem]]:
        """`post["min_face_score"]`: the detector score a face of a RetinaFace predictions.jsonl needs to become a
        row (default MIN_FACE_SCORE)."""
        src = Path(source)
        if not src.exists():
            raise DeployzooError(f"{src}: source not found")
        if _looks_like_ijbc(src):
            return ijbc_items(src)
        suffix = src.suffix.lower()
        if suffix == ".bin":
            return bin_items(src)
        if suffix == ".jsonl":
            return detection_items(src, min_face_score((post or {}).get("min_face_score")))
        if suffix == ".txt" and _is_landmark_file(src):
            return landmark_file_items(src)
        root, items = list_source(src)
        return root, [SourceItem(i.path, i.name, {"row": k}) for k, i in enumerate(items)]

    def prepare(self, img: np.ndarray, spec: InputSpec, meta: dict[str, Any] | None = None) -> Prepared:
        meta = meta or {}
        size = INPUT_SIZE if spec.origin else int(spec.imgsz[0])
        lmk = meta.get("landmarks")
        if lmk is not None:
            try:
                img = align_face(img, lmk, size)
            except AlignmentError as exc:
                raise AlignmentError(f"{meta.get('where', 'landmarks')}: {exc}") from None
        elif img.shape[:2] != (size, size):
            raise AlignmentError(f"image is {img.shape[1]}x{img.shape[0]}, not an aligned {size}x{size} face crop, and "
                                 "no landmarks were given (use an IJB-C root, a landmarks file or a RetinaFace "
                                 "predictions.jsonl as the source)")
        x = normalise(img, spec.mean, spec.std)
        return Prepared(x, {"row": meta.get("row", 0), "score": meta.get("score"), "crop": img,
                            "box": meta.get("box"), "landmarks": lmk})

    def collate(self, items: list[Prepared], spec: InputSpec) -> np.ndarray:
        return np.stack([p.tensor for p in items])

    def infer(self, runner: Any, x: np.ndarray, post: dict[str, Any]) -> dict[str, np.ndarray]:
        """Flip test (default on): embedding of the batch plus embedding of its mirror image."""
        out = runner.run(x)
        if post.get("flip", True):
            flipped = runner.run(np.ascontiguousarray(x[..., ::-1]))
            out = {k: out[k] + flipped[k] for k in out}
        return out

    def postprocess(self, outputs: dict[str, np.ndarray], metas: list[dict[str, Any]],
                    post: dict[str, Any]) -> list[dict[str, Any]]:
        emb = outputs["embedding"].astype(np.float32, copy=False)
        records = []
        for e, meta in zip(emb, metas):
            rec: dict[str, Any] = {"row": int(meta["row"]), "norm": round(float(np.linalg.norm(e)), 6),
                                   "_embedding": e}
            if meta.get("score") is not None and np.isfinite(meta["score"]):
                rec["score"] = round(float(meta["score"]), 6)  # the detector's (faceness) score
            if meta.get("box") is not None:  # where the face is in the source image, x1 y1 x2 y2
                rec["box"] = [round(float(v), 2) for v in meta["box"]]
            if meta.get("landmarks") is not None:  # the 5 points it was aligned with, in the source image
                rec["landmarks"] = np.round(np.asarray(meta["landmarks"], np.float64), 2).reshape(5, 2).tolist()
            if meta.get("crop") is not None:
                rec["_crop"] = meta["crop"]  # the aligned face (--save-img)
            records.append(rec)
        return records

    def agreement(self, reference: list[dict[str, Any]], tested: list[dict[str, Any]]) -> float:
        """Mean cosine similarity of the embeddings (the IJB-C scores are cosines of them)."""
        if not reference:
            return float("nan")
        return mean_cosine(np.stack([r["_embedding"] for r in reference]), np.stack([t["_embedding"] for t in tested]))

    def open_format(self, fmt: str, out_dir: Path, items: list[SourceItem], resume: bool) -> FeatureWriter:
        if fmt != "npy":
            raise ValueError(fmt)
        return FeatureWriter(out_dir, items, resume)

    def write_format(self, fmt: str, name: str, record: dict[str, Any], out_dir: Path) -> None:
        raise ValueError(f"format {fmt} is written through open_format")

    def render(self, img: np.ndarray, record: dict[str, Any]) -> np.ndarray:
        """The aligned face the embedding was taken from, at 2x, with its embedding norm and detector score."""
        import cv2

        crop = record.get("_crop")
        out = cv2.resize(crop if crop is not None else img, (2 * INPUT_SIZE, 2 * INPUT_SIZE),
                         interpolation=cv2.INTER_NEAREST)
        text = [f"norm {record['norm']:.2f}"] + ([f"det {record['score']:.2f}"] if "score" in record else [])
        for k, t in enumerate(text):
            y = 16 + 18 * k
            cv2.putText(out, t, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, t, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        return out

    def vis_name(self, item: SourceItem) -> str:
        """One file per face: an image with several faces (landmark rows) gets one per row."""
        stem = str(Path(item.name).with_suffix(""))
        return f"{stem}_face{int(item.meta['row'])}.jpg" if item.meta.get("landmarks") is not None else f"{stem}.jpg"



def _is_landmark_file(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if parts and not parts[0].startswith("#"):
                return len(parts) in (11, 12)
    return False


def read_features(pred_dir: Path) -> np.ndarray:
    path = Path(pred_dir) / FEATURES_FILE if Path(pred_dir).is_dir() else Path(pred_dir)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DeployzooError(f"{path}: not a readable .npy features file ({exc})") from None


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows, over the rows that are finite in both (float64)."""
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    a, b = np.asarray(a[ok], np.float64), np.asarray(b[ok], np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows (rows that are finite in both); NaN when there are none."""
    cos = row_cosines(a, b)
    return float(cos.mean()) if cos.size else float("nan")

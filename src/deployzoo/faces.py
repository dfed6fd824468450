"""Faces end to end: detect (a face-detection engine, RetinaFace) -> align (its 5 landmarks, the ArcFace template)
-> embed (a face-recognition engine, ArcFace) -> cosine similarity. `deployzoo faces compare` and `faces search`.

The two stages are the tasks' own (tasks/face_detection.py, tasks/face_recognition.py) run through the host
pipeline, so a face embedded here is the one `predict arcface --source DETECTIONS.jsonl` writes, bit for bit.

A gallery is indexed once into a directory of two predict outputs, `detections/` (the detector over the gallery)
and `embeddings/` (the recognizer over those detections: features.npy by row, predictions.jsonl with each row's
image, box, landmarks and detector score). Both are written incrementally, so an interrupted index goes on where it
stopped, and a gallery that gains images only has the new ones computed.

Thresholds are cosine similarities. One taken from a verification run is converted from that run's measure:
- `eval verification --json` (the insightface 10-fold protocol) keeps each fold's best squared L2 distance between
  L2-normalised embeddings; d < t is "same", and ||a - b||^2 = 2 - 2 cos(a, b), so the cosine threshold is
  1 - mean(t) / 2;
- `eval ijbc --json` keeps, for each FAR level, the score above which at most that fraction of the impostor pairs
  lie (`threshold_at_far`); an IJB-C score is the cosine of two template features, and a template of one image is
  that image's feature, so the threshold applies to two single images as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.images import SourceItem, list_source
from deployzoo.errors import DeployzooError
from deployzoo.files import default_cache_dir, write_json
from deployzoo.pipeline import Loaded, StageTimes, run_batches
from deployzoo.records import PRED_FILE
from deployzoo.tasks.face_recognition import (
    FEATURES_FILE,
    ROWS_FILE,
    detection_items,
    min_face_score,
)

log = logging.getLogger(__name__)

FACE_CHOICES = ("largest", "best")  # which face of an image compare / the query use
ROLES = {"detector": ("retinaface", "face_detection"), "recognizer": ("arcface", "face_recognition")}  # model, task
INDEX_FILE = "index.json"
DEFAULT_FAR = 1e-4


# --------------------------------------------------------------------------------------------- faces


@dataclass
class Face:
    """One detected, aligned and embedded face."""

    image: str  # the image it is in (a path for compare / a query, the gallery-relative name in an index)
    index: int  # its detection's position in the detector's record of that image (the k of `IMAGE#faceK`)
    box: list[float]  # x1 y1 x2 y2, source pixels
    score: float  # detector score
    landmarks: list[list[float]]  # 5 x 2, source pixels
    embedding: np.ndarray = field(repr=False)  # the recognizer's output (flip test: image + mirror), not normalised

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "face": self.index, "box": self.box, "score": round(self.score, 6),
                "landmarks": self.landmarks, "norm": round(float(np.linalg.norm(self.embedding)), 6)}


def unit(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (float64)."""
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(a) @ unit(b))


def check_face_choice(how: str) -> str:
    if how not in FACE_CHOICES:
        raise DeployzooError(f"--face: expected one of {', '.join(FACE_CHOICES)}, got {how!r}")
    return how


def pick_face(faces: list[Face], how: str, where: str) -> Face:
    """The face of an image to use: the largest box, or the highest detector score."""
    check_face_choice(how)
    if not faces:
        raise DeployzooError(f"{where}: no face found")
    if how == "largest":
        return max(faces, key=lambda f: (f.area, f.score))
    return max(faces, key=lambda f: (f.score, f.area))


def check_engine_task(role: str, where: Any, model: str, task: str) -> None:
    """An engine given as --detector / --recognizer must be of that role's task."""
    example, want = ROLES[role]
    if task != want:
        raise DeployzooError(f"--{role} {where}: is an engine of {model} (task {task}), not a "
                             f"{want.replace('_', ' ')} engine (e.g. {example})")


class FaceModels:
    """A detector and a recognizer engine, loaded once; faces of images in memory (compare, a search query)."""

    def __init__(self, detector: Loaded, recognizer: Loaded, *, min_score: float | None = None,
                 det_post: dict[str, Any] | None = None, rec_post: dict[str, Any] | None = None) -> None:
        for role, loaded in (("detector", detector), ("recognizer", recognizer)):
            check_engine_task(role, loaded.engine_dir, loaded.engine.model, loaded.engine.task)
        self.detector, self.recognizer = detector, recognizer
        self.min_score = min_face_score(min_score)
        self.det_post = {**detector.engine.post, **{k: v for k, v in (det_post or {}).items() if v is not None}}
        self.rec_post = {**recognizer.engine.post, **{k: v for k, v in (rec_post or {}).items() if v is not None}}

    def warnings(self) -> list[str]:
        out = []
        for flag, loaded in (("detector", self.detector), ("recognizer", self.recognizer)):
            out += [f"{flag} {loaded.engine.model} ({loaded.engine_dir}): {w}" for w in loaded.engine.warnings]
        return out

    def detect(self, paths: list[Path]) -> list[list[dict[str, Any]]]:
        """Per image, its detections with score >= min_score: {index, box, score, landmarks}."""
        items = [SourceItem(Path(p), str(p)) for p in paths]
        found: list[list[dict[str, Any]]] = []  # run_batches hands results over in source order

        def on_result(item: SourceItem, img: Any, rec: dict[str, Any]) -> None:
            found.append([{"index": k, "box": box, "score": float(s), "landmarks": lmk}
                          for k, (box, s, lmk) in enumerate(zip(rec["boxes"], rec["scores"], rec["landmarks"]))
                          if s >= self.min_score])

        run_batches(self.detector, items, batch=self.detector.engine.batch.default(), on_result=on_result,
                    on_skip=_raise_skip, times=StageTimes(), post=self.det_post)
        return found

    def faces(self, paths: list[Path]) -> list[list[Face]]:
        """Per image, every face with score >= min_score, embedded. A face whose landmarks cannot be aligned is
        left out with a warning."""
        dets = self.detect(paths)
        items = []
        for pos, (p, faces) in enumerate(zip(paths, dets)):
            for d in faces:
                items.append(SourceItem(Path(p), f"{p}#face{d['index']}", {
                    "row": len(items), "landmarks": np.asarray(d["landmarks"], np.float32).reshape(5, 2),
                    "score": d["score"], "box": d["box"], "where": f"{p} face {d['index']}", "det": d, "pos": pos}))
        emb: dict[int, np.ndarray] = {}

        def on_result(item: SourceItem, img: Any, rec: dict[str, Any]) -> None:
            emb[item.meta["row"]] = np.asarray(rec["_embedding"], np.float32).copy()

        def on_skip(item: SourceItem, err: str) -> None:
            log.warning("%s: left out (%s)", item.name, err)

        run_batches(self.recognizer, items, batch=self.recognizer.engine.batch.default(), on_result=on_result,
                    on_skip=on_skip, times=StageTimes(), post=self.rec_post)
        out: list[list[Face]] = [[] for _ in paths]
        for it in items:
            if it.meta["row"] in emb:
                d = it.meta["det"]
                out[it.meta["pos"]].append(Face(str(it.path), d["index"], list(d["box"]), d["score"], d["landmarks"],
                                                emb[it.meta["row"]]))
        return out

    def face_of(self, path: Path, how: str) -> tuple[Face, int]:
        """The face of one image to use (`pick_face`) and how many faces it has."""
        faces = self.faces([path])[0]
        if not faces:
            raise DeployzooError(f"{path}: no face with detector score >= {self.min_score} (--min-face-score)")
        return pick_face(faces, how, str(path)), len(faces)


def _raise_skip(item: SourceItem, err: str) -> None:
    raise DeployzooError(err if str(item.path) in err else f"{item.path}: {err}")


# --------------------------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Threshold:
    cosine: float  # "same person" when the cosine similarity is above this
    source: str  # where it came from, in words

    def same(self, cos: float) -> bool:
        return cos > self.cosine


def threshold_from(path: Path, far: float | None = None) -> Threshold:
    """The cosine threshold of a verification run: the json of `eval verification --json` or `eval ijbc --json`
    (module doc: how each is converted)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read the --threshold-from file ({exc.strerror or exc})") from None
    except ValueError:
        raise DeployzooError(f"{path}: --threshold-from needs a JSON file (eval verification / eval ijbc --json)") from None
    if isinstance(d, dict) and isinstance(d.get("best_threshold"), list):
        if far is not None:
            raise DeployzooError(f"--far: {path} is a 10-fold verification result (one best-accuracy threshold), "
                                 "not an IJB-C one with thresholds by FAR")
        t = [x for x in d["best_threshold"] if isinstance(x, (int, float)) and math.isfinite(x)]
        if not t:
            raise DeployzooError(f"{path}: best_threshold holds no number")
        dist = float(np.mean(t))
        acc = d.get("accuracy_mean")
        how = (f"{path}: the 10-fold best threshold of a verification run (mean squared distance {dist:.3f} over "
               f"{len(t)} folds" + (f", accuracy {acc:.5f}" if isinstance(acc, (int, float)) else "") + ")")
        return Threshold(1.0 - dist / 2.0, how)
    if isinstance(d, dict) and isinstance(d.get("tar_at_far"), dict):
        levels = d.get("threshold_at_far")
        if not isinstance(levels, dict):
            raise DeployzooError(f"{path}: an IJB-C result without threshold_at_far (written by an older deployzoo); "
                                 "run `deployzoo eval ijbc ... --json` again")
        want = DEFAULT_FAR if far is None else float(far)
        key = next((k for k in levels if math.isclose(float(k), want, rel_tol=1e-9)), None)
        if key is None:
            raise DeployzooError(f"--far {want:g}: {path} has thresholds at FAR {', '.join(sorted(levels, key=float))}")
        tar = d["tar_at_far"].get(key)
        how = (f"{path}: IJB-C 1:1 at FAR {float(key):g}" + (f" (TAR {100 * tar:.2f}%" if isinstance(tar, (int, float))
                                                             else " (") + f", {d.get('n_neg', '?')} impostor pairs)")
        return Threshold(float(levels[key]), how)
    raise DeployzooError(f"{path}: neither an `eval verification --json` nor an `eval ijbc --json` result")


def check_threshold(value: float) -> Threshold:
    if not -1.0 <= value <= 1.0:
        raise DeployzooError(f"--threshold: a cosine similarity is in [-1, 1], got {value}")
    return Threshold(float(value), "--threshold")


# --------------------------------------------------------------------------------------------- compare


def compare(models: FaceModels, a: Path, b: Path, *, face: str = "largest",
            threshold: Threshold | None = None) -> dict[str, Any]:
    """The cosine similarity of the chosen face of each image, and the verdict at `threshold` if there is one."""
    fa, na = models.face_of(Path(a), face)
    fb, nb = models.face_of(Path(b), face)
    cos = cosine(fa.embedding, fb.embedding)
    out: dict[str, Any] = {"cosine": round(cos, 6), "face": face,
                           "a": {**fa.to_json(), "faces": na}, "b": {**fb.to_json(), "faces": nb}}
    if threshold is not None:
        out.update(threshold=round(threshold.cosine, 6), threshold_from=threshold.source,
                   same=threshold.same(cos))
    return out


# --------------------------------------------------------------------------------------------- search


@dataclass
class GalleryIndex:
    dir: Path
    gallery: Path
    rows: list[dict[str, Any]]  # per embedded face: image (gallery-relative), face, box, score, landmarks
    embeddings: np.ndarray  # unit rows, one per entry of `rows`
    images: int
    computed: int  # faces embedded by this call (0: all came from the index as it was)
    skipped: int  # faces whose landmarks could not be aligned


def default_index_dir(gallery: Path, models: FaceModels) -> Path:
    """Under the cache: one index per (gallery directory, detector, recognizer, score cut-off)."""
    key = json.dumps([str(Path(gallery).resolve()), models.detector.engine.model_sha256,
                      models.recognizer.engine.model_sha256, models.min_score, models.det_post, models.rec_post],
                     sort_keys=True, default=str)
    return default_cache_dir() / "faces" / f"{Path(gallery).resolve().name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _recorded_names(path: Path) -> set[str]:
    names = set()
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    names.add(json.loads(line)["image"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: predict's resume cuts it off
    return names


def build_index(models: FaceModels, gallery: Path, index_dir: Path | None = None, *, rebuild: bool = False,
                show_progress: bool = True) -> GalleryIndex:
    """Detect and embed every face of the gallery's images into `index_dir` (default: default_index_dir), or
    reuse what an earlier call computed there: images already detected and faces already embedded are kept when
    the engines and settings are the same; a gallery that lost images is indexed again from the start."""
    from deployzoo.predict import SKIP_FILE, predict

    gallery = Path(gallery).resolve()
    if not gallery.is_dir():
        raise DeployzooError(f"{gallery}: --gallery must be a directory of images")
    index_dir = Path(index_dir) if index_dir else default_index_dir(gallery, models)
    det_dir, emb_dir = index_dir / "detections", index_dir / "embeddings"
    _, images = list_source(gallery)
    names = {i.name for i in images}
    recorded = _recorded_names(det_dir / PRED_FILE) | _recorded_names(det_dir / SKIP_FILE)
    fresh = rebuild or not recorded <= names
    det = predict(models.detector, gallery, det_dir, resume=False if fresh else "auto", overwrite=fresh,
                  post=models.det_post, show_progress=show_progress)
    try:
        _, items = detection_items(det_dir / PRED_FILE, models.min_score)
    except DeployzooError:
        raise DeployzooError(f"{gallery}: no face with detector score >= {models.min_score} in its {len(images)} "
                             f"images (--min-face-score)") from None
    rows_path = emb_dir / ROWS_FILE
    old_rows = rows_path.read_text(encoding="utf-8").split("\n")[:-1] if rows_path.is_file() else []
    again = fresh or old_rows != [i.name for i in items][: len(old_rows)]  # new faces come after the old ones
    post = {**models.rec_post, "min_face_score": models.min_score}
    emb = predict(models.recognizer, det_dir / PRED_FILE, emb_dir, resume=False if again else "auto", overwrite=again,
                  post=post, show_progress=show_progress)
    feats = np.load(emb_dir / FEATURES_FILE, mmap_mode="r")
    by_row: dict[int, dict[str, Any]] = {}
    with open(emb_dir / PRED_FILE, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            name, _, k = rec["image"].rpartition("#face")
            by_row[int(rec["row"])] = {"image": name, "face": int(k), "box": rec.get("box"), "score": rec.get("score"),
                                       "landmarks": rec.get("landmarks")}
    ok = [r for r in sorted(by_row) if np.isfinite(feats[r]).all()]
    write_json(index_dir / INDEX_FILE, {"gallery": str(gallery), "images": len(images), "faces": len(ok),
                                        "detector": str(models.detector.engine_dir),
                                        "recognizer": str(models.recognizer.engine_dir),
                                        "min_face_score": models.min_score})
    log.debug("gallery index %s: %d faces of %d images (%d detected and %d embedded now)", index_dir, len(ok),
             len(images), det.written, emb.written)
    return GalleryIndex(index_dir, gallery, [by_row[r] for r in ok],
                        unit(np.asarray(feats[ok])) if ok else np.zeros((0, feats.shape[1])), len(images),
                        emb.written, emb.skipped)


def search(index: GalleryIndex, query: Face, top_k: int = 5,
           threshold: Threshold | None = None) -> list[dict[str, Any]]:
    """The gallery faces most similar to `query`, best first."""
    if top_k < 1:
        raise DeployzooError(f"--top-k: expected a positive integer, got {top_k}")
    if not len(index.rows):
        return []
    cos = index.embeddings @ unit(query.embedding)
    order = np.argsort(-cos, kind="stable")[:top_k]
    out = []
    for rank, r in enumerate(order, 1):
        m = {"rank": rank, "cosine": round(float(cos[r]), 6), **index.rows[r]}
        if threshold is not None:
            m["same"] = threshold.same(float(cos[r]))
        out.append(m)
    return out

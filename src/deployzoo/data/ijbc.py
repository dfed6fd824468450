"""IJB-C (insightface release): the meta files of the 1:1 verification protocol and a synthetic look-alike.

Layout of the insightface release (``IJB_release/IJBC``)::

    ROOT/loose_crop/<name>.jpg                  one loose face crop per row of the tables below
    ROOT/meta/ijbc_face_tid_mid.txt             'name template_id media_id'            (469,375 lines)
    ROOT/meta/ijbc_name_5pts_score.txt          'name x1 y1 ... x5 y5 faceness_score'  (same rows, same order)
    ROOT/meta/ijbc_template_pair_label.txt      'template1 template2 label', label 1 = same person (15,658,489 lines)

The five landmarks are, in this order, left eye, right eye, nose tip, left and right mouth corner, in pixels of
the loose crop; the official evaluation (insightface ``recognition/arcface_torch/eval_ijbc.py``) aligns each
crop to the ArcFace template with a similarity transform (``data.face_align``). A template is a set of images of one
person (stills and video frames); a media is one still or one video, and frames of one video share a media id.

Reading is strict: a line that is not the expected number of fields, a field that is not a number, a
non-finite number or a blank line inside a table raises ``DeployzooError("path:line: ...")``. Blank lines at
the end of a file and Windows line ends are accepted. The fast paths parse with numpy's C parsers; whenever
they refuse a block, a line-by-line pass over that block names the offending line.

``write_demo`` writes a small synthetic set in this layout (drawn faces, real landmarks), and
``write_synthetic_meta`` only the meta files at any size (for the full-size speed benchmark).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployzoo.data.face_align import ARCFACE_TEMPLATE
from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

TID_MID_FILE = "ijbc_face_tid_mid.txt"
PAIR_FILE = "ijbc_template_pair_label.txt"
LANDMARK_FILE = "ijbc_name_5pts_score.txt"
IMAGES_DIR = "loose_crop"
META_DIR = "meta"

_LANDMARK_FIELDS = "name, 5 x/y landmark pairs, faceness score"
_TEMPLATE_FIELDS = "name, template id, media id"
_PAIR_FIELDS = "template1, template2, label"
_PAIR_SEPS = np.array([32, 32, 10], dtype=np.uint8)  # ' ', ' ', '\n'



# --------------------------------------------------------------------------------------------- layout


@dataclass
class IJBCLayout:
    """Where an IJB-C copy lives; the three meta files are properties."""

    root: Path
    images_dir: Path
    meta_dir: Path

    @property
    def tid_mid_path(self) -> Path:
        return self.meta_dir / TID_MID_FILE

    @property
    def pair_path(self) -> Path:
        return self.meta_dir / PAIR_FILE

    @property
    def landmarks_path(self) -> Path:
        return self.meta_dir / LANDMARK_FILE

    @property
    def meta_paths(self) -> tuple[Path, Path, Path]:
        return self.tid_mid_path, self.pair_path, self.landmarks_path


def find_layout(path: str | Path, *, need_images: bool = False) -> IJBCLayout:
    """The IJB-C layout at ``path``.

    ``path`` may be the IJB-C root (with ``meta/`` and ``loose_crop/``), a parent holding an ``IJBC`` directory
    (the insightface ``IJB_release``), or the meta directory itself. The three meta files must exist; the image
    directory only when ``need_images`` (evaluating precomputed features does not read images).
    """
    path = Path(path)
    if not path.is_dir():
        raise DeployzooError(f"{path}: IJB-C directory not found")
    if (path / TID_MID_FILE).exists() or (path / PAIR_FILE).exists() or (path / LANDMARK_FILE).exists():
        root, meta = path.parent, path  # the meta directory itself
    elif (path / "IJBC").is_dir() and not (path / META_DIR).is_dir():
        root = path / "IJBC"
        meta = root / META_DIR
    else:
        root, meta = path, path / META_DIR
    layout = IJBCLayout(root, root / IMAGES_DIR, meta)
    missing = [str(p.relative_to(root)) for p in layout.meta_paths if not p.is_file()]
    if need_images and not layout.images_dir.is_dir():
        missing.append(IMAGES_DIR + "/")
    if missing:
        raise DeployzooError(f"{root}: not a complete IJB-C layout, missing {', '.join(missing)}")
    return layout


# --------------------------------------------------------------------------------------------- parsing helpers


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DeployzooError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")  # same line count; a lone \r is left for the strict parser to refuse
    return data


def _decode(path: Path, data: bytes, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + first_line
        raise DeployzooError(f"{path}:{line}: not UTF-8 text") from None


def _canonical(body: bytes) -> bool:
    """Fields separated by single spaces, lines by single newlines, nothing else: each line's field count is
    then its space count + 1, and numpy's C parsers can read the numbers in one call."""
    return not (b"\t" in body or b"\r" in body or b"  " in body or b"\n " in body or b" \n" in body
                or b"\n\n" in body or b"\x0b" in body or b"\x0c" in body or body[:1] in (b" ", b"\n"))


def _c_numbers(text: str | bytes, dtype: type) -> np.ndarray | None:
    """numpy's C text parser over whitespace-separated numbers; None where it stops early."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return np.fromstring(text, dtype=dtype, sep=" ")
    except (ValueError, Warning):
        return None


def _parse_int(tok: str) -> int:
    if not tok.isascii() or "_" in tok:  # int() would accept '1_000' and non-ASCII digits
        raise ValueError(tok)
    v = int(tok)
    if not -(2 ** 63) <= v < 2 ** 63:
        raise ValueError(tok)
    return v


def _parse_float(tok: str) -> float:
    if not tok.isascii() or "_" in tok:
        raise ValueError(tok)
    return float(tok)


def _line_records(path: Path, text: str, n_fields: int, fields: str, parse) -> tuple[list[str], list[list]]:
    """The strict line-by-line table reader: (names, other fields parsed), or an error naming the line."""
    names: list[str] = []
    rows: list[list] = []
    for i, raw in enumerate(text.split("\n"), start=1):
        parts = raw.split()
        if not parts:
            raise DeployzooError(f"{path}:{i}: blank line inside the table (every line must be {fields})")
        if len(parts) != n_fields:
            raise DeployzooError(f"{path}:{i}: expected {n_fields} fields: {fields}; got {len(parts)}")
        try:
            rows.append([parse(p) for p in parts[1:]])
        except ValueError:
            bad = next(p for p in parts[1:] if not _parses(parse, p))
            raise DeployzooError(f"{path}:{i}: {bad[:40]!r} is not a{'n integer' if parse is _parse_int else ' number'}"
                                 f" (expected {fields})") from None
        names.append(parts[0])
    return names, rows


def _parses(parse, tok: str) -> bool:
    try:
        parse(tok)
        return True
    except ValueError:
        return False


def _table_lines(path: Path, what: str, n_fields: int, fields: str) -> tuple[str, list[str], bool]:
    """(text, its lines, whether every line is exactly n_fields single-space-separated fields)."""
    data = _read_bytes(path, what)
    body = data.rstrip(b" \t\r\n\x0b\x0c")  # blank lines at the end are fine
    if not body:
        raise DeployzooError(f"{path}: empty {what} (expected lines of {n_fields} fields: {fields})")
    text = _decode(path, body)
    lines = text.split("\n")
    k = n_fields - 1
    return text, lines, _canonical(body) and all(ln.count(" ") == k for ln in lines)


def _read_table(path: Path, what: str, n_fields: int, fields: str, dtype: type) -> tuple[list[str], np.ndarray]:
    """A whitespace-separated table 'name v1 ... vK', one row per line: (names, N x K array)."""
    text, lines, simple = _table_lines(path, what, n_fields, fields)
    k = n_fields - 1
    if simple:
        parts = [ln.partition(" ") for ln in lines]
        vals = _c_numbers(" ".join([p[2] for p in parts]), dtype)
        if vals is not None and vals.size == len(lines) * k:
            return [p[0] for p in parts], vals.reshape(len(lines), k)
    parse = _parse_int if np.dtype(dtype).kind == "i" else _parse_float
    names, rows = _line_records(path, text, n_fields, fields, parse)
    return names, np.asarray(rows, dtype=dtype).reshape(len(rows), k)


# --------------------------------------------------------------------------------------------- tables


@dataclass
class LandmarkTable:
    """``ijbc_name_5pts_score.txt``: per image row, its name, 5 x 2 landmarks (pixels) and faceness score."""

    names: list[str]
    landmarks: np.ndarray  # N x 5 x 2 float32
    scores: np.ndarray  # N float32

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TemplateTable:
    """``ijbc_face_tid_mid.txt``: per image row, its name, template id and media id."""

    names: list[str]
    templates: np.ndarray  # N int64
    medias: np.ndarray  # N int64

    def __len__(self) -> int:
        return len(self.names)


def read_landmarks(path: str | Path) -> LandmarkTable:
    """Read ``ijbc_name_5pts_score.txt``: 'name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 faceness_score' per line.

    Numbers are parsed as float64 and stored as float32, as the official script does (``float(x)`` then
    ``np.float32``; the score via ``np.array(strings).astype(np.float32)``, the same rounding).
    """
    path = Path(path)
    names, vals = _read_table(path, "landmark file", 12, _LANDMARK_FIELDS, np.float64)
    bad = ~np.isfinite(vals).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise DeployzooError(f"{path}:{i + 1}: landmarks and faceness score must be finite numbers "
                             f"(image {names[i]!r})")
    return LandmarkTable(names, vals[:, :10].astype(np.float32).reshape(-1, 5, 2), vals[:, 10].astype(np.float32))


def read_faceness(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(names, faceness scores float32) of ``ijbc_name_5pts_score.txt``: what the evaluation uses of it.

    Every line must still be 12 fields; the landmark fields are not parsed (4x faster than read_landmarks on
    the real file). Whatever the fast path refuses goes to ``read_landmarks``, which names the bad line.
    """
    path = Path(path)
    _, lines, simple = _table_lines(path, "landmark file", 12, _LANDMARK_FIELDS)
    if simple:
        vals = _c_numbers(" ".join([ln.rpartition(" ")[2] for ln in lines]), np.float64)
        if vals is not None and vals.size == len(lines) and np.isfinite(vals).all():
            return [ln.partition(" ")[0] for ln in lines], vals.astype(np.float32)
    lm = read_landmarks(path)
    return lm.names, lm.scores


def read_templates(path: str | Path) -> TemplateTable:
    """Read ``ijbc_face_tid_mid.txt``: 'name template_id media_id' per line, ids integers."""
    path = Path(path)
    names, vals = _read_table(path, "template/media file", 3, _TEMPLATE_FIELDS, np.int64)
    return TemplateTable(names, np.ascontiguousarray(vals[:, 0]), np.ascontiguousarray(vals[:, 1]))


def _line_chunks(path: Path, chunk_lines: int) -> Iterator[tuple[bytes, int]]:
    """(bytes of up to chunk_lines whole lines, number of their first line), read block by block."""
    block = max(1 << 16, min(chunk_lines * 16, 1 << 26))
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DeployzooError(f"{path}: pair file not found") from None
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read pair file ({exc.strerror or exc})") from None
    with f:
        pending = b""
        line_no = 1
        while True:
            data = f.read(block)
            if not data:
                break
            buf = pending + data if pending else data
            nl = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
            start = 0
            for j in range(len(nl) // chunk_lines):
                end = int(nl[(j + 1) * chunk_lines - 1]) + 1
                yield buf[start:end], line_no
                line_no += chunk_lines
                start = end
            pending = buf[start:]
        if pending:
            yield pending, line_no


def _parse_pair_chunk(path: Path, chunk: bytes, first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if b"\r" in chunk:
        chunk = chunk.replace(b"\r\n", b"\n")
    stripped = chunk.rstrip(b" \t\r\n\x0b\x0c")
    if not stripped:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
    body = stripped + b"\n"
    n = body.count(b"\n")
    vals = None
    a = np.frombuffer(body, dtype=np.uint8)
    seps = a[a < 48]  # everything but digits (and letters, refused next)
    if (len(seps) == 3 * n and (seps.reshape(-1, 3) == _PAIR_SEPS).all()
            and not body.translate(None, b"0123456789 \n")):
        vals = _c_numbers(body, np.int64)  # each line: digits, space, digits, space, digits, newline
        if vals is not None and vals.size != 3 * n:  # an empty field ('1  2', ' 1 2')
            vals = None
    if vals is None:  # other spacing, signs, blank lines: numpy's loadtxt, still C
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                arr = np.loadtxt(io.BytesIO(body), dtype=np.int64, comments=None, ndmin=2)
            if arr.shape[1] == 3:
                vals = arr.ravel()
        except (ValueError, Warning):
            pass
    if vals is not None:
        lab = vals[2::3]
        if ((lab == 0) | (lab == 1)).all():
            return vals[0::3].copy(), vals[1::3].copy(), lab.astype(np.int8)
    arr = _pair_lines(path, _decode(path, body, first_line), first_line)  # names the bad line
    return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].astype(np.int8)


def _pair_lines(path: Path, text: str, first_line: int) -> np.ndarray:
    """The strict line-by-line pair reader (K x 3 int64), or an error naming the line."""
    rows: list[list[int]] = []
    for i, raw in enumerate(text.split("\n"), start=first_line):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DeployzooError(f"{path}:{i}: expected 3 fields: {_PAIR_FIELDS}; got {len(parts)}")
        try:
            row = [_parse_int(p) for p in parts]
        except ValueError:
            bad = next(p for p in parts if not _parses(_parse_int, p))
            raise DeployzooError(f"{path}:{i}: {bad[:40]!r} is not an integer (expected {_PAIR_FIELDS})") from None
        if row[2] not in (0, 1):
            raise DeployzooError(f"{path}:{i}: label must be 0 or 1, got {parts[2][:40]!r}")
        rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def iter_pairs(path: str | Path, chunk_lines: int = 2_000_000, workers: int = 1
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Stream ``ijbc_template_pair_label.txt``: per chunk of ``chunk_lines`` lines, (t1 int64, t2 int64, label
    int8, number of the chunk's first line).

    The file is never held in memory as a whole (at most workers + 1 chunks). Lines must be three integers
    with label 0 or 1; blank lines are skipped (so a chunk may hold fewer records than lines). A malformed line
    raises ``path:line: ...`` (the first one in the file). workers > 1 parses chunks in that many threads
    (numpy's parser releases the GIL); chunks still come in file order.
    """
    path = Path(path)
    if chunk_lines < 1:
        raise DeployzooError(f"{path}: chunk_lines must be >= 1, got {chunk_lines}")
    if workers <= 1:
        for chunk, first in _line_chunks(path, chunk_lines):
            yield (*_parse_pair_chunk(path, chunk, first), first)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ijbc-parse") as ex:
        pending: deque = deque()
        for chunk, first in _line_chunks(path, chunk_lines):
            pending.append((ex.submit(_parse_pair_chunk, path, chunk, first), first))
            if len(pending) > workers:
                fut, f0 = pending.popleft()
                yield (*fut.result(), f0)
        while pending:
            fut, f0 = pending.popleft()
            yield (*fut.result(), f0)


def read_pairs(path: str | Path, chunk_lines: int = 2_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole pair file as (t1 int64, t2 int64, label int8); see ``iter_pairs``."""
    parts = list(iter_pairs(path, chunk_lines))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def record_line(path: str | Path, first_line: int, k: int) -> int:
    """Line number of the k-th (0-based) non-blank line at or after line ``first_line`` (for error messages)."""
    with open(path, "rb") as f:
        seen = -1
        for i, raw in enumerate(f, start=1):
            if i < first_line or not raw.strip():
                continue
            seen += 1
            if seen == k:
                return i
    return first_line + k


# --------------------------------------------------------------------------------------------- demo data


@dataclass
class _Look:
    """What one demo identity looks like, in the 112 x 112 ArcFace frame (BGR colours)."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    mark: tuple[float, float, float]
    face_axes: tuple[float, float]
    face_cy: float
    hair_style: int
    brow: float  # thickness
    brow_tilt: float
    iris_r: float
    nose_style: int
    mark_shape: int
    mark_xy: tuple[float, float]
    glasses: bool
    offsets: np.ndarray  # 5 x 2 landmark offsets from ARCFACE_TEMPLATE


def _look(rng: np.random.Generator) -> _Look:
    def colour(lo: float, hi: float) -> tuple[float, float, float]:
        return tuple(float(v) for v in rng.uniform(lo, hi, 3))  # type: ignore[return-value]

    base = np.array([[120, 160, 210], [90, 130, 180], [60, 90, 140], [140, 180, 230], [80, 110, 150]])
    skin = base[int(rng.integers(0, len(base)))] + rng.uniform(-15, 15, 3)
    return _Look(
        skin=tuple(float(v) for v in np.clip(skin, 0, 255)),  # type: ignore[arg-type]
        hair=colour(0, 160), iris=colour(20, 220), lips=colour(40, 200), mark=colour(0, 255),
        face_axes=(float(rng.uniform(36, 44)), float(rng.uniform(48, 56))), face_cy=float(rng.uniform(62, 68)),
        hair_style=int(rng.integers(0, 4)), brow=float(rng.uniform(1.5, 4.0)), brow_tilt=float(rng.uniform(-4, 4)),
        iris_r=float(rng.uniform(2.8, 4.8)), nose_style=int(rng.integers(0, 2)), mark_shape=int(rng.integers(0, 3)),
        mark_xy=(float(rng.choice([32, 80])) + float(rng.uniform(-3, 3)), float(rng.uniform(70, 84))),
        glasses=bool(rng.random() < 0.3), offsets=rng.uniform(-2.5, 2.5, (5, 2)).astype(np.float32))


class _Pen:
    """cv2 drawing in ArcFace-frame coordinates through a similarity ``m`` (sub-pixel, anti-aliased)."""

    SHIFT = 4

    def __init__(self, img: np.ndarray, m: np.ndarray) -> None:
        self.img, self.m = img, m
        self.scale = float(np.hypot(m[0, 0], m[1, 0]))
        self.angle = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))

    def pt(self, xy) -> tuple[int, int]:
        x, y = self.m[:, :2] @ np.asarray(xy, dtype=np.float64) + self.m[:, 2]
        return int(round(x * 16)), int(round(y * 16))

    def ellipse(self, c, axes, colour, angle: float = 0.0, thickness: int = -1, arc=(0, 360)) -> None:
        import cv2

        ax = (max(1, int(round(axes[0] * self.scale * 16))), max(1, int(round(axes[1] * self.scale * 16))))
        t = thickness if thickness < 0 else max(1, int(round(thickness * self.scale)))
        cv2.ellipse(self.img, self.pt(c), ax, angle + self.angle, arc[0], arc[1], colour, t, cv2.LINE_AA, self.SHIFT)

    def poly(self, pts, colour) -> None:
        import cv2

        cv2.fillPoly(self.img, [np.array([self.pt(p) for p in pts], np.int32)], colour, cv2.LINE_AA, self.SHIFT)

    def line(self, a, b, colour, thickness: float) -> None:
        import cv2

        cv2.line(self.img, self.pt(a), self.pt(b), colour, max(1, int(round(thickness * self.scale))), cv2.LINE_AA,
                 self.SHIFT)


def _draw_face(pen: _Pen, look: _Look, lm: np.ndarray, mouth_open: float) -> None:
    """The face of ``look`` with its features on the landmarks ``lm`` (ArcFace frame)."""
    fx, fy = look.face_axes
    cx, cy = 56.0, look.face_cy
    hair = look.hair
    if look.hair_style in (0, 1):  # hair behind the head
        pen.ellipse((cx, cy - 8), (fx + 6, fy + 4), hair)
    pen.ellipse((cx - fx, cy), (5, 9), look.skin)  # ears
    pen.ellipse((cx + fx, cy), (5, 9), look.skin)
    pen.ellipse((cx, cy), (fx, fy), look.skin)
    if look.hair_style == 0:  # fringe
        pen.ellipse((cx, cy - fy + 10), (fx + 1, 16), hair, arc=(180, 360))
    elif look.hair_style == 1:  # side parting
        pen.poly([(cx - fx - 2, cy - 10), (cx - fx, cy - fy + 4), (cx + fx, cy - fy + 2), (cx + 6, cy - fy + 16)], hair)
    elif look.hair_style == 2:  # cap
        pen.ellipse((cx, cy - fy + 12), (fx + 4, 18), hair, arc=(180, 360))
        pen.line((cx - fx - 6, cy - fy + 12), (cx + fx + 14, cy - fy + 12), hair, 3)
    dark = tuple(0.35 * c for c in hair)
    for e, sgn in ((lm[0], -1), (lm[1], 1)):  # brows, eyes
        tilt = look.brow_tilt * sgn
        pen.line((e[0] - 8, e[1] - 9 + tilt), (e[0] + 8, e[1] - 9 - tilt), dark, look.brow)
        pen.ellipse(e, (7.5, 4.2), (245, 245, 245))
        pen.ellipse(e, (look.iris_r, look.iris_r), look.iris)
        pen.ellipse(e, (1.6, 1.6), (15, 15, 15))
        if look.glasses:
            pen.ellipse(e, (11, 8), (30, 30, 30), thickness=2)
    if look.glasses:
        pen.line((lm[0][0] + 11, lm[0][1]), (lm[1][0] - 11, lm[1][1]), (30, 30, 30), 2)
    shade = tuple(0.75 * c for c in look.skin)
    n = lm[2]
    if look.nose_style == 0:
        pen.poly([(n[0], n[1] - 14), (n[0] - 5, n[1] + 2), (n[0] + 5, n[1] + 2)], shade)
    else:
        pen.line((n[0], n[1] - 14), (n[0] + 2, n[1]), shade, 2)
        pen.ellipse((n[0] - 4, n[1] + 1), (2, 1.5), shade)
        pen.ellipse((n[0] + 4, n[1] + 1), (2, 1.5), shade)
    ml, mr = lm[3], lm[4]
    mc = (ml + mr) / 2
    half = float(np.hypot(*(mr - ml))) / 2
    ang = float(np.degrees(np.arctan2(mr[1] - ml[1], mr[0] - ml[0])))
    pen.ellipse(mc, (half, 2.0 + mouth_open), look.lips, angle=ang)
    pen.line(ml, mr, (40, 20, 30), 1)
    mx, my = look.mark_xy
    if look.mark_shape == 0:
        pen.ellipse((mx, my), (3.5, 3.5), look.mark)
    elif look.mark_shape == 1:
        pen.poly([(mx - 3, my - 3), (mx + 3, my - 3), (mx + 3, my + 3), (mx - 3, my + 3)], look.mark)
    else:
        pen.poly([(mx, my - 4), (mx - 4, my + 3), (mx + 4, my + 3)], look.mark)


def _demo_image(rng: np.random.Generator, look: _Look) -> tuple[np.ndarray, np.ndarray]:
    """One loose crop of ``look`` (BGR uint8, 120..200 px a side) and its 5 landmarks in its pixels."""
    h, w = (int(v) for v in rng.integers(120, 201, 2))
    side = min(h, w)
    scale = rng.uniform(0.55, 0.78) * side / 112.0
    theta = np.radians(rng.uniform(-15, 15))
    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.06, 0.06, 2) * side
    r = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    m = np.empty((2, 3))
    m[:, :2] = r
    m[:, 2] = centre - r @ np.array([56.0, 66.0])
    import cv2

    # background: a tilted colour gradient and a few blobs
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    a = rng.uniform(0, 2 * np.pi)
    t = ((np.cos(a) * xs + np.sin(a) * ys) / max(h, w) + 1) / 2
    img = (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(8, 30)),
                   tuple(float(v) for v in rng.uniform(0, 255, 3)), -1, cv2.LINE_AA)
    lm = ARCFACE_TEMPLATE + look.offsets + rng.normal(0, 0.4, (5, 2)).astype(np.float32)
    _draw_face(_Pen(img, m), look, lm, mouth_open=float(rng.uniform(0, 2.5)))
    gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-20, 20)
    out = img.astype(np.float32) * gain + bias + rng.normal(0, 3.0, img.shape).astype(np.float32)
    img = np.clip(out, 0, 255).astype(np.uint8)
    pix = lm.astype(np.float64) @ m[:, :2].T + m[:, 2]
    return img, pix.astype(np.float32)


def _media_groups(n: int) -> list[int]:
    """Group sizes 2, 1, 2, 1, ... summing to n: some media hold two frames of a video, some a single still."""
    sizes: list[int] = []
    while n > 0:
        s = min(n, 2 if len(sizes) % 2 == 0 else 1)
        sizes.append(s)
        n -= s
    return sizes


def write_demo(root: str | Path, n_identities: int = 12, images_per_identity: int = 6, seed: int = 0) -> IJBCLayout:
    """Write a small synthetic IJB-C set under ``root`` and return its layout.

    Each identity gets a drawn face (its own skin, hair, eye and lip colours, shapes and a mark) seen in
    ``images_per_identity`` loose crops of 120..200 px with random rotation, scale, shift, brightness and
    background; the 5 landmarks written are where the eyes, nose and mouth corners were drawn, so
    ``data.face_align.align_face`` gives an upright 112 x 112 face. Scores are in [0.5, 1).

    Each identity is split into two templates: a 'gallery' one with 1..k-1 images and a 'probe' one with the
    rest. Within a template, images are grouped into media of 2, 1, 2, ... (video frames and stills), and the
    last media of the gallery template and the first of the probe template share a media id (the same video
    in two templates). Template and media ids are sparse integers in the thousands, the rows are shuffled.
    Pairs: every gallery template with every probe template (label 1 for the same identity), sorted.
    Deterministic for a seed.
    """
    import cv2

    if n_identities < 2 or images_per_identity < 2:
        raise DeployzooError(f"{root}: write_demo needs n_identities >= 2 and images_per_identity >= 2")
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_id, k = int(n_identities), int(images_per_identity)
    tids = 1000 + np.cumsum(rng.integers(2, 150, 2 * n_id))  # sparse: never two consecutive ids
    tids = rng.permutation(tids).reshape(n_id, 2)  # (gallery, probe) template id per identity
    media_pool = rng.permutation(20_000 + np.cumsum(rng.integers(2, 90, n_id * k)))
    rows: list[tuple[int, int, int]] = []  # (identity, template id, media id)
    mi = 0
    for i in range(n_id):
        n_a = 1 + i % (k - 1)
        shared = -1
        for t, n_t in ((tids[i, 0], n_a), (tids[i, 1], k - n_a)):
            sizes = _media_groups(n_t)
            for g, size in enumerate(sizes):
                if t == tids[i, 1] and g == 0 and shared >= 0:
                    mid = shared
                else:
                    mid = int(media_pool[mi])
                    mi += 1
                rows += [(i, int(t), mid)] * size
            shared = mid
    order = rng.permutation(len(rows))
    looks = [_look(rng) for _ in range(n_id)]
    img_dir, meta_dir = root / IMAGES_DIR, root / META_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    meta_dir.mkdir(parents=True, exist_ok=True)
    tid_lines, lm_lines = [], []
    for r, j in enumerate(order):
        ident, tid, mid = rows[j]
        name = f"{r + 1}.jpg"
        img, lm = _demo_image(rng, looks[ident])
        if not cv2.imwrite(str(img_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise DeployzooError(f"{img_dir / name}: cannot write image")
        score = np.floor(rng.uniform(0.5, 1.0) * 1e6) / 1e6
        tid_lines.append(f"{name} {tid} {mid}")
        lm_lines.append(name + " " + " ".join(f"{v:.3f}" for v in lm.ravel()) + f" {score:.6f}")
    pairs = sorted((int(tids[a, 0]), int(tids[b, 1]), int(a == b)) for a in range(n_id) for b in range(n_id))
    (meta_dir / TID_MID_FILE).write_text("\n".join(tid_lines) + "\n")
    (meta_dir / LANDMARK_FILE).write_text("\n".join(lm_lines) + "\n")
    (meta_dir / PAIR_FILE).write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    log.info("wrote IJB-C demo set %s: %d identities, %d images, %d templates, %d pairs", root, n_id, len(rows),
             2 * n_id, len(pairs))
    return IJBCLayout(root, img_dir, meta_dir)


# --------------------------------------------------------------------------------------------- synthetic meta


@dataclass
class SyntheticMeta:
    """What ``write_synthetic_meta`` wrote: the layout and, per image row, its subject (to make features)."""

    layout: IJBCLayout
    subjects: np.ndarray  # N int64, subject index of each row
    n_pos: int
    n_neg: int


def _write_lines(path: Path, columns: list, fmt: str, rows_per_write: int = 1_000_000) -> None:
    n = len(columns[0])
    with open(path, "w") as f:
        for s in range(0, n, rows_per_write):
            cols = [c[s:s + rows_per_write].tolist() for c in columns]  # Python numbers format faster
            f.write("".join(fmt % row for row in zip(*cols)))


def write_synthetic_meta(root: str | Path, n_images: int = 469_375, n_templates: int = 23_124,
                         n_pairs: int = 15_658_489, seed: int = 0) -> SyntheticMeta:
    """Write only the three meta files of an IJB-C-like protocol of any size (no images), for benchmarks/tests.

    Structure as in the real protocol: one gallery template per subject (subjects = templates / 6.55) and the
    other templates are probes of random subjects; every probe is paired with its subject's gallery template
    (label 1; only n_pairs / 2 random probes when n_pairs < 2 x probes) and random other (gallery, probe)
    combinations make up the negatives (fewer when there are not enough); pairs are sorted by the gallery
    template. Template ids are sparse (up to 8 x n_templates), images per template are skewed, and
    consecutive images of a template share a media id with probability 1/2 (video frames).
    """
    root = Path(root)
    if n_templates < 3 or n_images < n_templates or n_pairs < 1:
        raise DeployzooError(f"{root}: write_synthetic_meta needs n_images >= n_templates >= 3 and n_pairs >= 1")
    rng = np.random.default_rng(seed)
    n_sub = int(min(max(2, round(n_templates / 6.55)), n_templates - 1))
    n_probe = n_templates - n_sub
    tids = rng.permutation(rng.choice(np.arange(1, 8 * n_templates + 1), n_templates, replace=False)).astype(np.int64)
    gallery, probes = tids[:n_sub], tids[n_sub:]
    probe_sub = np.concatenate([rng.permutation(n_sub)[:min(n_sub, n_probe)],
                                rng.integers(0, n_sub, max(0, n_probe - n_sub))]).astype(np.int64)
    tpl_sub = np.concatenate([np.arange(n_sub), probe_sub])
    # images per template: 1 + a skewed share of the rest
    w = rng.lognormal(0.0, 1.2, n_templates)
    per = 1 + rng.multinomial(n_images - n_templates, w / w.sum())
    tpl_of_row = np.repeat(np.arange(n_templates), per)
    new_media = rng.random(n_images) < 0.5
    new_media[np.r_[0, np.cumsum(per)[:-1]]] = True
    media_idx = np.cumsum(new_media) - 1
    mids = rng.choice(np.arange(1, 4 * n_images + 1), int(media_idx[-1]) + 1, replace=False).astype(np.int64)
    # pairs: linear index gallery * n_probe + probe
    pos = probe_sub * n_probe + np.arange(n_probe)
    if n_pairs < 2 * n_probe:  # small protocols: keep room for negatives
        pos = np.sort(rng.choice(pos, max(1, n_pairs // 2), replace=False))
    total = n_sub * n_probe
    n_neg = int(min(n_pairs - len(pos), total - n_probe))
    if 2 * n_neg >= total - n_probe:  # most combinations: choose among all of them
        every = np.arange(total, dtype=np.int64)
        every = every[(every // n_probe) != probe_sub[every % n_probe]]
        neg = rng.choice(every, n_neg, replace=False)
    else:  # a minority: draw, drop repeats, draw again (each round at least halves what is missing)
        neg = np.zeros(0, np.int64)
        while len(neg) < n_neg:
            draw = rng.integers(0, total, int((n_neg - len(neg)) * 1.3) + 16)
            draw = draw[(draw // n_probe) != probe_sub[draw % n_probe]]
            neg = np.unique(np.concatenate([neg, draw]))
        neg = rng.choice(neg, n_neg, replace=False) if len(neg) > n_neg else neg
    lin = np.sort(np.concatenate([pos, neg]))
    g, p = lin // n_probe, lin % n_probe
    label = (probe_sub[p] == g).astype(np.int64)
    meta = root / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    names = np.array([f"{i + 1}.jpg" for i in range(n_images)], dtype=object)
    _write_lines(meta / TID_MID_FILE, [names, tids[tpl_of_row], mids[media_idx]], "%s %d %d\n")
    lm = ARCFACE_TEMPLATE[None] * rng.uniform(1.0, 1.6, (n_images, 1, 1)) + rng.uniform(0, 40, (n_images, 1, 2))
    lm = np.round(lm.reshape(n_images, 10), 3)
    score = np.floor(rng.uniform(0.5, 1.0, n_images) * 1e6) / 1e6
    _write_lines(meta / LANDMARK_FILE, [names, *lm.T, score], "%s" + " %.3f" * 10 + " %.6f\n")
    _write_lines(meta / PAIR_FILE, [gallery[g], probes[p], label], "%d %d %d\n")
    return SyntheticMeta(IJBCLayout(root, root / IMAGES_DIR, meta), tpl_sub[tpl_of_row], int(label.sum()),
                         int(len(label) - label.sum()))

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

deployzoo.demo.ijbc's ``write_demo`` writes a small synthetic set in this layout (drawn faces, real landmarks),
and ``write_synthetic_meta`` only the meta files at any size (for the full-size speed benchmark).
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


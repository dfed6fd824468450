"""Robust image reading and source enumeration shared by every task."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployzoo.errors import DeployzooError
from deployzoo.specs import InputSpec

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
LIST_EXTS = {".txt", ".lst", ".list"}


class ImageError(DeployzooError):
    """An image that cannot be used; predict skips it and counts it."""


def read_image(path: str | Path, color: str = "BGR") -> np.ndarray:
    """Read any common image as H x W x 3 uint8 in `color` order (BGR or RGB).

    Grayscale is replicated to 3 channels, alpha is dropped, 16-bit is scaled to 8-bit. Empty, truncated and
    undecodable files raise ImageError naming the file.
    """
    p = Path(path)
    return decode_image(read_file_bytes(p), str(p), color)


def read_file_bytes(path: Path) -> np.ndarray:
    """A file's bytes as a uint8 array; an unreadable file raises ImageError naming it (a dangling symbolic link
    says so, with its target)."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        why = _link_problem(Path(path))
        if why:
            raise ImageError(f"{path}: {why}") from None
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _link_problem(path: Path) -> str | None:
    """'dangling symbolic link (-> TARGET)' (or '... loop ...') when `path` is a symbolic link that leads to no
    file, else None."""
    try:
        if not path.is_symlink():
            return None
        target = os.readlink(path)
    except OSError:
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target})"
        return f"dangling symbolic link (-> {target})"
    return None


def check_encoded(data: np.ndarray, label: str) -> None:
    """The checks every decoder gets before decoding: empty file, JPEG without its end-of-image marker."""
    if data.size == 0:
        raise ImageError(f"{label}: empty file (0 bytes)")
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8:
        tail = data[-65536:].tobytes()
        if b"\xff\xd9" not in tail:
            raise ImageError(f"{label}: truncated JPEG (no end-of-image marker)")


# IMREAD_UNCHANGED: the stored pixels, EXIF Orientation ignored (OpenCV applies it for any other flags without
# IMREAD_IGNORE_ORIENTATION). ANYDEPTH | ANYCOLOR: the stored depth and gray / colour kept as UNCHANGED keeps them,
# alpha dropped by the decoder (what the BGRA -> BGR step below does) and the orientation applied exactly as
# cv2.imread(path, IMREAD_COLOR) applies it: JPEG APP1, PNG eXIf and WebP EXIF chunks (OpenCV 5.1, checked
# pixel for pixel in tests/test_faults_inputs.py). TIFF orientation is libtiff's, under either flag.
_FLAGS_STORED = cv2.IMREAD_UNCHANGED
_FLAGS_ORIENTED = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def decode_image(data: np.ndarray | bytes, label: str, color: str = "BGR",
                 exif_orientation: bool = False) -> np.ndarray:
    """Decode encoded image bytes (a file's content, or an image held in a container such as a .bin set);
    `label` names the image in errors.

    `exif_orientation`: False (the default, and what engines built before the input-spec key get) returns the
    stored pixels, as PIL's Image.open(...).convert('RGB') does; True turns the image by its EXIF Orientation
    tag as cv2.imread(path, cv2.IMREAD_COLOR) and cv2.imdecode(buf, cv2.IMREAD_COLOR) do. Which one a model
    wants is its official reader's (`exif_orientation` of the model's input spec: decode_for_spec)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    check_encoded(data, label)
    img = cv2.imdecode(data, _FLAGS_ORIENTED if exif_orientation else _FLAGS_STORED)
    if img is None or img.size == 0:
        raise ImageError(f"{label}: not a decodable image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float64) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 2:
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if color.upper() == "RGB":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def decode_for_spec(data: np.ndarray | bytes, label: str, spec: InputSpec) -> np.ndarray:
    """decode_image with the colour order and EXIF orientation rule of an engine's input spec."""
    return decode_image(data, label, spec.color, spec.exif_orientation)


def jpeg_exif_orientation(data: np.ndarray | bytes) -> int:
    """The EXIF Orientation (1..8) of JPEG bytes as OpenCV's JPEG decoder reads it, 1 when there is none or it is
    unusable: the first APP1 segment before the scan that starts with 'Exif\\0\\0', a TIFF header (II / MM, 42),
    tag 0x0112 of type SHORT in IFD0, value 1..8. For decoders that do not apply it themselves (torchvision's
    CUDA decode_jpeg ignores apply_exif_orientation); never raises."""
    try:  # a view, not a copy of the file: only the header segments are read
        b = memoryview(np.ascontiguousarray(data).reshape(-1) if isinstance(data, np.ndarray) else data).cast("B")
        if bytes(b[:2]) != b"\xff\xd8":
            return 1
        i = 2
        while i + 4 <= len(b):
            if b[i] != 0xFF:
                return 1
            marker = b[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # no length
                i += 2
                continue
            if marker in (0xD9, 0xDA):  # end of image, start of scan: no header marker after this
                return 1
            seg_len = int.from_bytes(b[i + 2:i + 4], "big")
            if seg_len < 2:
                return 1
            if marker == 0xE1 and bytes(b[i + 4:i + 10]) == b"Exif\x00\x00":
                return _tiff_orientation(bytes(b[i + 10:i + 2 + seg_len]))
            i += 2 + seg_len
    except (IndexError, ValueError, TypeError):
        pass
    return 1


def _tiff_orientation(t: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(t[:2])
    if order is None or int.from_bytes(t[2:4], order) != 42:
        return 1
    ifd = int.from_bytes(t[4:8], order)
    n = int.from_bytes(t[ifd:ifd + 2], order)
    for k in range(n):
        e = t[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
        if len(e) < 12:
            return 1
        if int.from_bytes(e[:2], order) == 0x0112:
            v = int.from_bytes(e[8:10], order) if int.from_bytes(e[2:4], order) == 3 else 0
            return v if 1 <= v <= 8 else 1
    return 1


@dataclass(frozen=True)
class SourceItem:
    path: Path  # where to read it
    name: str  # the key written to predictions (relative to the source, '/' separated)
    # what a task attaches to an item (face landmarks, faceness score, output row, source file line)
    meta: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    data: bytes | None = field(default=None, compare=False, hash=False, repr=False)  # encoded image held in memory
    shipped: bool = field(default=False, compare=False, hash=False)  # `data` is the file's bytes, sent to a worker


def load_item(item: SourceItem, color: str = "BGR") -> np.ndarray:
    """The decoded image of an item: from its in-memory bytes when it has them, else from its file."""
    return decode_image(*read_item_bytes(item), color)


def load_item_for_spec(item: SourceItem, spec: InputSpec) -> np.ndarray:
    """load_item as an engine's input spec reads images: its colour order and orientation rule."""
    return decode_for_spec(*read_item_bytes(item), spec)


def read_item_bytes(item: SourceItem) -> tuple[np.ndarray, str]:
    """An item's encoded bytes (uint8 array) and the label that names it in errors; the pipelines' read stage."""
    if item.data is not None:
        return np.frombuffer(item.data, dtype=np.uint8), str(item.path) if item.shipped else f"{item.path}[{item.name}]"
    return read_file_bytes(Path(item.path)), str(item.path)


def wider_images_dir(root: Path) -> Path | None:
    for cand in (root / "WIDER_val" / "images", root / "val" / "images", root / "images"):
        if cand.is_dir() and any(c.is_dir() for c in cand.iterdir()):
            return cand
    return None


def list_source(source: str | Path) -> tuple[Path, list[SourceItem]]:
    """Enumerate a DIR (recursive), a WIDER FACE root, a single image FILE or a LIST file of paths.

    In a DIR, symbolic links to files count as the files; a dangling one with an image name is listed too, so
    that reading it reports it (ImageError: predict lists it in skipped.jsonl); links to directories are not
    followed (no loops, no images counted twice)."""
    src = Path(source)
    if not src.exists():
        why = _link_problem(src)
        raise DeployzooError(f"{src}: source not found" + (f": {why}" if why else ""))
    if src.is_dir():
        root = wider_images_dir(src) or src
        files = sorted(_walk_images(root))
        items = [SourceItem(p, p.relative_to(root).as_posix()) for p in files]
        if not items:
            raise DeployzooError(f"{src}: no images found (extensions {', '.join(sorted(IMAGE_EXTS))})")
        return root, items
    if src.suffix.lower() in LIST_EXTS:
        return _list_file(src)
    return src.parent, [SourceItem(src, src.name)]


def _walk_images(root: Path) -> list[Path]:
    """Image-named regular files (or links to them) and dangling links under `root`; directory links not entered."""
    out: list[Path] = []
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        d = Path(dirpath)
        for name in names:
            p = d / name
            if p.suffix.lower() in IMAGE_EXTS and (p.is_file() or (p.is_symlink() and not p.exists())):
                out.append(p)
    return out


def _list_file(lst: Path) -> tuple[Path, list[SourceItem]]:
    """One entry per line (first field; blank lines and '#' comments skipped). Relative entries are relative to
    the list's directory, else to the WIDER images directory beside it. An absolute entry is that file, except
    one that is missing there but exists relative to the list (WIDER's wider_val.txt writes
    '/0--Parade/0_Parade_....jpg'); a missing absolute entry is kept as written (path and name), so that the skip
    names what the list says."""
    base = lst.parent
    wider = wider_images_dir(base)
    items: list[SourceItem] = []
    try:
        lines = lst.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DeployzooError(f"{lst}: list file is not UTF-8 text") from None
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        entry = entry.split()[0]
        p = Path(entry)
        if p.is_absolute() and (p.exists() or p.is_symlink()):
            items.append(SourceItem(p, p.name))
            continue
        rel = entry.lstrip("/")
        q = base / rel
        if not q.exists() and wider is not None and (wider / rel).exists():
            q = wider / rel
        if p.is_absolute() and not q.exists():
            items.append(SourceItem(p, entry))
        else:
            items.append(SourceItem(q, rel))
    if not items:
        raise DeployzooError(f"{lst}: list file names no images")
    return base, items

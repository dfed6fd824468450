"""Robust image reading and source enumeration shared by every task."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployzoo.errors import DeployzooError

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
    """A file's bytes as a uint8 array; an unreadable file raises ImageError naming it."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def check_encoded(data: np.ndarray, label: str) -> None:
    """The checks every decoder gets before decoding: empty file, JPEG without its end-of-image marker."""
    if data.size == 0:
        raise ImageError(f"{label}: empty file (0 bytes)")
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8:
        tail = data[-65536:].tobytes()
        if b"\xff\xd9" not in tail:
            raise ImageError(f"{label}: truncated JPEG (no end-of-image marker)")


def decode_image(data: np.ndarray | bytes, label: str, color: str = "BGR") -> np.ndarray:
    """Decode encoded image bytes (a file's content, or an image held in a container such as a .bin set);
    `label` names the image in errors."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    check_encoded(data, label)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
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


@dataclass(frozen=True)
class SourceItem:
    path: Path  # where to read it
    name: str  # the key written to predictions (relative to the source, '/' separated)
    # what a task attaches to an item (face landmarks, faceness score, output row, source file line)
    meta: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    data: bytes | None = field(default=None, compare=False, hash=False, repr=False)  # encoded image held in memory


def load_item(item: SourceItem, color: str = "BGR") -> np.ndarray:
    """The decoded image of an item: from its in-memory bytes when it has them, else from its file."""
    return decode_image(*read_item_bytes(item), color)


def read_item_bytes(item: SourceItem) -> tuple[np.ndarray, str]:
    """An item's encoded bytes (uint8 array) and the label that names it in errors; the pipelines' read stage."""
    if item.data is not None:
        return np.frombuffer(item.data, dtype=np.uint8), f"{item.path}[{item.name}]"
    return read_file_bytes(Path(item.path)), str(item.path)


def wider_images_dir(root: Path) -> Path | None:
    for cand in (root / "WIDER_val" / "images", root / "val" / "images", root / "images"):
        if cand.is_dir() and any(c.is_dir() for c in cand.iterdir()):
            return cand
    return None


def list_source(source: str | Path) -> tuple[Path, list[SourceItem]]:
    """Enumerate a DIR (recursive), a WIDER FACE root, a single image FILE or a LIST file of paths."""
    src = Path(source)
    if not src.exists():
        raise DeployzooError(f"{src}: source not found")
    if src.is_dir():
        root = wider_images_dir(src) or src
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        items = [SourceItem(p, p.relative_to(root).as_posix()) for p in files]
        if not items:
            raise DeployzooError(f"{src}: no images found (extensions {', '.join(sorted(IMAGE_EXTS))})")
        return root, items
    if src.suffix.lower() in LIST_EXTS:
        return _list_file(src)
    return src.parent, [SourceItem(src, src.name)]


def _list_file(lst: Path) -> tuple[Path, list[SourceItem]]:
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
        if not p.is_absolute() or not p.exists():
            rel = entry.lstrip("/")
            p = base / rel
            if not p.exists() and wider is not None and (wider / rel).exists():
                p = wider / rel
            items.append(SourceItem(p, rel))
        else:
            items.append(SourceItem(p, p.name))
    if not items:
        raise DeployzooError(f"{lst}: list file names no images")
    return base, items

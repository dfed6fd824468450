"""insightface's face-verification ``.bin`` sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...), read safely.

A ``.bin`` set is a pickle of ``(bins, issame_list)``: ``bins`` holds 2*P encoded JPEG/PNG images, pair i being
images 2i and 2i+1, and ``issame_list`` P bools (True: same identity). insightface reads it with
``pickle.load(f, encoding='bytes')`` (recognition/arcface_torch/eval/verification.py, ``load_bin``). The files
met in practice hold the image bytes in one of these ways, all accepted here:

* Python 2 ``str`` (the original insightface sets, protocol 2): ``SHORT_BINSTRING``/``BINSTRING`` opcodes,
  which ``encoding='bytes'`` turns into ``bytes``. No global is referenced.
* Python 3 ``bytes``: ``SHORT_BINBYTES``/``BINBYTES`` (protocol >= 3), or, at protocol 0-2, a call of
  ``_codecs.encode(<str>, 'latin1')`` (and ``builtins.bytes()`` for an empty one).
* 1-D or N x 1 uint8 numpy arrays, as returned by ``cv2.imencode`` (``small_lfw.bin`` in the shared fixtures
  is such a file: protocol 3, ``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray`` + ``numpy.dtype``
  then ``BUILD``); insightface's loader hands them to ``mx.image.imdecode``, which takes numpy buffers as
  well as bytes. Protocol 5 writes them through ``numpy._core.numeric._frombuffer``.

A pickle can run any callable it names, so nothing here calls ``pickle.load`` on the file. The unpickler
resolves globals from an allow-list of stand-ins that never touch the real module: ``_codecs.encode`` only
with the latin-1 codec, ``builtins.bytes`` only with no argument, and the numpy names only to rebuild a flat
uint8 buffer (any other dtype, shape or state is refused). Every other global is refused with a one-line
DeployzooError, before anything is called.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

WHAT = "a .bin set may only hold image bytes and bools"


class _Refused(Exception):
    """Raised by the stand-ins; load_bin prefixes the file name."""


# ------------------------------------------------------------------------------ allow-listed stand-ins


def _codecs_encode(obj: Any = None, encoding: Any = "utf-8", errors: Any = "strict", *extra: Any) -> bytes:
    """``_codecs.encode`` as protocol-0..2 pickles of ``bytes`` use it: latin-1 text -> the same bytes."""
    if extra or errors != "strict" or not isinstance(obj, str):
        raise _Refused("refusing _codecs.encode with arguments other than (str, 'latin1')")
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise _Refused(f"refusing _codecs.encode with encoding {encoding!r} (only 'latin1' encodes bytes)")
    try:
        return obj.encode("latin-1")
    except UnicodeEncodeError:
        raise _Refused("_codecs.encode argument is not latin-1 text") from None


def _empty_bytes(*args: Any) -> bytes:
    """``builtins.bytes()``: how protocol 0-2 write an empty bytes object; nothing else is allowed."""
    if args:
        raise _Refused("refusing builtins.bytes with arguments (only bytes() is allowed)")
    return b""


class _NdarrayName:
    """Stands for ``numpy.ndarray``; it is only ever passed to _reconstruct, never called."""

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any):
        raise _Refused("refusing to construct numpy.ndarray directly")


class _Dtype:
    """Stands for a ``numpy.dtype``; only uint8 ('u1') is accepted."""

    __slots__ = ("name",)

    def __new__(cls, name: Any = None, align: Any = False, copy: Any = True, *extra: Any) -> _Dtype:
        # __new__, not __init__: NEWOBJ calls only __new__, so the check cannot be bypassed
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if extra or name not in ("u1", "|u1", "uint8", "B"):
            raise _Refused(f"refusing numpy array of dtype {name!r} ({WHAT})")
        self = super().__new__(cls)
        self.name = "u1"
        return self

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byteorder, subdescr, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or not 8 <= len(state) <= 9 or state[2:5] != (None, None, None):
            raise _Refused("unexpected numpy dtype state for uint8")
        if not all(s is None or isinstance(s, (int, str, bytes)) for s in state):
            raise _Refused("unexpected numpy dtype state for uint8")


class _Array:
    """Stands for a uint8 numpy array; after unpickling it is replaced by its bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data

    @staticmethod
    def _check(raw: Any, dtype: Any, shape: Any) -> bytes:
        if not isinstance(dtype, _Dtype):
            raise _Refused(f"numpy array with dtype {type(dtype).__name__} ({WHAT})")
        if not isinstance(shape, tuple) or not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 8:
            raise _Refused(f"numpy array with invalid shape {shape!r}")
        if sum(s != 1 for s in shape) > 1:
            # an encoded image is one flat byte string: N or N x 1 (cv2.imencode); never a 2-D image
            raise _Refused(f"numpy array of shape {shape} is not a flat byte buffer (an encoded image)")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape):
            raise _Refused(f"numpy array data does not match its shape {shape}")
        return bytes(raw)

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, rawdata); the legacy form has no version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("unexpected numpy array state")
        if len(state) == 5:
            if type(state[0]) is not int:
                raise _Refused("unexpected numpy array state")
            state = state[1:]
        shape, dtype, fortran, raw = state
        if fortran not in (0, 1):  # bools are ints
            raise _Refused("unexpected numpy array state")
        if self.data is not None:
            raise _Refused("numpy array state set twice")
        self.data = self._check(raw, dtype, shape)


def _np_reconstruct(subtype: Any = None, shape: Any = None, dtypecode: Any = None, *extra: Any) -> _Array:
    """``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')``: an empty array, filled by BUILD."""
    if extra or subtype is not _NdarrayName or shape != (0,) or dtypecode not in (b"b", "b"):
        raise _Refused("refusing numpy _reconstruct of anything but a plain ndarray")
    return _Array()


def _np_frombuffer(buf: Any = None, dtype: Any = None, shape: Any = None, order: Any = "C", *extra: Any) -> _Array:
    """``numpy._core.numeric._frombuffer(buffer, dtype, shape, order)``: how protocol 5 writes arrays."""
    if extra or order not in ("C", "F", b"C", b"F"):
        raise _Refused("refusing numpy _frombuffer with unexpected arguments")
    return _Array(_Array._check(buf, dtype, shape))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _Dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
}


class _BinUnpickler(pickle.Unpickler):
    """Resolves globals only from _ALLOWED; everything else is refused before it can be called."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        found = _ALLOWED.get((module, name))
        if found is None:
            shown = f"{module}.{name}"[:120]
            raise _Refused(f"refusing to unpickle global {shown} ({WHAT})")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refusing a persistent id (a .bin set has none)")


# ------------------------------------------------------------------------------------------- the set


@dataclass
class VerificationSet:
    """A loaded ``.bin`` set. ``len()`` counts images (2 per pair); pair i is images 2i and 2i+1."""

    name: str  # the file stem: 'lfw', 'cfp_fp', 'agedb_30', ...
    images: list[bytes]  # encoded JPEG/PNG, 2 * n_pairs
    issame: np.ndarray  # (n_pairs,) bool
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_pairs(self) -> int:
        return len(self.issame)

    def decode(self, i: int, color: str = "RGB") -> np.ndarray:
        """Image i as H x W x 3 uint8, RGB (as insightface's mx.image.imdecode gives) or BGR."""
        if color.upper() not in ("RGB", "BGR"):
            raise ValueError(f"color must be 'RGB' or 'BGR', not {color!r}")
        if not -len(self.images) <= i < len(self.images):
            raise IndexError(f"image index {i} out of range for {len(self.images)} images")
        i = i % len(self.images)
        buf = np.frombuffer(self.images[i], dtype=np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None or img.size == 0:
            raise DeployzooError(f"{self.path or self.name}: image {i} (pair {i // 2}) is not a decodable "
                                 f"JPEG/PNG ({len(self.images[i])} bytes)")
        if color.upper() == "RGB":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(img)


def _as_bytes(path: Path, i: int, item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, _Array):
        if item.data is None:
            raise DeployzooError(f"{path}: bins[{i}] is a numpy array without data")
        return item.data
    raise DeployzooError(f"{path}: bins[{i}] is {_kind(item)}, expected encoded image bytes")


def _kind(obj: Any) -> str:
    if isinstance(obj, _Array):
        return "a uint8 numpy array"
    return f"a {type(obj).__name__}"


def _check_structure(path: Path, obj: Any) -> tuple[list[bytes], np.ndarray]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        n = f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""
        raise DeployzooError(f"{path}: expected a 2-tuple (bins, issame_list), got {_kind(obj)}{n}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise DeployzooError(f"{path}: bins is {_kind(bins)}, expected a list of encoded images")
    if not isinstance(issame, (list, tuple)):
        raise DeployzooError(f"{path}: issame_list is {_kind(issame)}, expected a list of bools")
    images = [_as_bytes(path, i, b) for i, b in enumerate(bins)]
    for i, s in enumerate(issame):
        if not isinstance(s, bool):
            raise DeployzooError(f"{path}: issame_list[{i}] is {_kind(s)}, expected a bool")
    if len(images) != 2 * len(issame):
        raise DeployzooError(f"{path}: {len(images)} images for {len(issame)} pairs (expected 2 per pair)")
    if not issame:
        raise DeployzooError(f"{path}: the set holds no pairs")
    return images, np.asarray(issame, dtype=bool).reshape(-1)


def load_bin(path: str | Path) -> VerificationSet:
    """Read an insightface verification ``.bin`` set without trusting the pickle (see the module doc)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DeployzooError(f"{p}: cannot read file ({exc.strerror or exc})") from None
    try:
        obj = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise DeployzooError(f"{p}: {exc}") from None
    except RecursionError:
        raise DeployzooError(f"{p}: not a readable .bin pickle (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
        msg = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise DeployzooError(f"{p}: not a readable .bin pickle ({type(exc).__name__}"
                             f"{': ' + msg if msg else ''})") from None
    images, issame = _check_structure(p, obj)
    log.debug("%s: %d pairs (%d same)", p, len(issame), int(issame.sum()))
    return VerificationSet(name=p.stem, images=images, issame=issame, path=p)


def write_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool] | np.ndarray,
              protocol: int = 4) -> Path:
    """Write ``(bins, issame_list)`` as insightface does (list of bytes, list of bools); returns the path."""
    p = Path(path)
    same = np.asarray(issame)
    if same.ndim != 1 or (same.size and same.dtype != bool):
        raise DeployzooError(f"{p}: issame must be a 1-D sequence of bools")
    bins: list[bytes] = []
    for i, b in enumerate(images):
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise DeployzooError(f"{p}: image {i} is a {type(b).__name__}, expected encoded image bytes")
        bins.append(bytes(b))
    if len(bins) != 2 * len(same):
        raise DeployzooError(f"{p}: {len(bins)} images for {len(same)} pairs (expected 2 per pair)")
    payload = (bins, [bool(s) for s in same])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)
    tmp.replace(p)
    return p

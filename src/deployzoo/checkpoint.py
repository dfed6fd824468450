"""Safe checkpoint loading shared by every model: weights_only unpickling, wrapper dicts, `module.` prefixes,
and one-line errors that name the file and the keys that do not fit."""

from __future__ import annotations

import hashlib
import logging
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "net", "module")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# what torch's weights-only unpickler says when it refuses a global, a call or an opcode of a well-formed pickle
_REFUSAL = re.compile(r"Unsupported global|unsupported GLOBAL|is blocked|was not an allowed global|Unsupported operand"
                      r"|Trying to call reduce|Can only create new object|must be imported to load|persistent_load"
                      r"|Can only (?:append|setitem|extend|build)")
# the generic lines around that reason in torch's "Weights only load failed" message
_WRAPPER_LINES = ("Please file an issue", "Check the documentation", "In PyTorch 2.6", "(1) ", "(2) ",
                  "This file can still be loaded")


def _torch_reason(exc: BaseException, limit: int = 140) -> str:
    """The first meaningful line of a torch.load error, short: torch's "Weights only load failed" wrapper
    (which tells how to load unsafely) is dropped, as are the sentences after the first. The unpickler's own
    exceptions on garbage (EOFError without a message, KeyError '101', IndexError, ...) get their type."""
    reason = ""
    for raw in str(exc).replace("\033[1m", "").replace("\033[0m", "").splitlines():
        line = raw.strip()
        for prefix in ("Weights only load failed.", "WeightsUnpickler error:"):
            if line.startswith(prefix):
                line = line[len(prefix):].strip()
        if line and not line.startswith(_WRAPPER_LINES):
            reason = line
            break
    end = re.search(r"\.\s", reason)
    if end:
        reason = reason[: end.start() + 1]
    if not reason:
        return (f"{type(exc).__name__} (the file ends early: truncated?)" if isinstance(exc, EOFError)
                else type(exc).__name__)
    if not isinstance(exc, (pickle.UnpicklingError, RuntimeError)):  # the unpickler tripping over garbage
        reason = f"{type(exc).__name__}: {_short(reason, 60)} (truncated or corrupt?)"
    return _short(reason, limit)


def _well_formed_pickle(path: Path) -> bool:
    """Whether the file holds whole pickles, as torch read them: the data.pkl of a zip checkpoint; else the
    pickles a legacy torch file starts with (magic number, protocol, system info, object, storage keys: up to
    five) or a single pickle up to the end of the file. Each is walked opcode by opcode with pickletools.genops
    (nothing is executed). Random bytes fail this: an unknown opcode or the end of the file comes long before
    five STOPs."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if name is None:
                    return False
                with z.open(name) as f:
                    for _ in pickletools.genops(f):
                        pass
            return True
        size = path.stat().st_size
        with open(path, "rb") as f:
            for _ in range(5):
                if f.tell() >= size:
                    break
                for _ in pickletools.genops(f):
                    pass
        return True
    except Exception:  # noqa: BLE001 - any failure to walk the opcodes means "not a well-formed pickle"
        return False


def _opcode_name(reason: str) -> str:
    """' (pickle opcode NAME)' for torch's 'Unsupported operand N'."""
    m = re.search(r"Unsupported operand (\d+)", reason)
    if m:
        code = chr(int(m.group(1))) if int(m.group(1)) < 256 else ""
        op = next((o for o in pickletools.opcodes if o.code == code), None)
        if op is not None:
            return f" (pickle opcode {op.name})"
    return ""


def _readable(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            f.read(1)
        return True
    except OSError:
        return False


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from a legacy or zip torch file with `weights_only=True`.

    Accepts a bare state_dict or a dict wrapping one (`state_dict`, `model`, ...); strips `module.` prefixes.
    A file torch cannot load is one line: `refused to load: ...` when torch's weights-only unpickler refused a
    global, call or opcode of a well-formed pickle (a pickle of arbitrary objects, possibly malicious: nothing
    of it runs), else `not a readable torch checkpoint: <torch's reason>` (truncated, corrupt, random bytes,
    not a checkpoint). torch wraps both kinds in the same "Weights only load failed" message (random bytes come
    out as "Unsupported operand N"), so the file's opcodes are walked (pickletools, nothing executed) to tell
    them apart.
    """
    p = Path(path)
    if not p.is_file():
        raise DeployzooError(f"{p}: checkpoint file not found")
    if p.stat().st_size == 0:
        raise DeployzooError(f"{p}: checkpoint file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # torch warns of any pickle protocol but 2 (random bytes too)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except OSError as exc:
        if exc.filename is not None or not _readable(p):  # the file itself could not be read
            raise DeployzooError(f"{p}: cannot read checkpoint ({exc.strerror or exc})") from None
        # torch's zip reader raises a bare OSError (EINVAL) for an archive cut short: the content is the problem
        raise DeployzooError(f"{p}: not a readable torch checkpoint: {type(exc).__name__}: {exc.strerror or exc} "
                             "(truncated or corrupt?)") from None
    except Exception as exc:  # noqa: BLE001 - garbage trips the unpickler in many ways (KeyError, IndexError, ...)
        reason = _torch_reason(exc)
        if isinstance(exc, pickle.UnpicklingError) and _REFUSAL.search(reason) and _well_formed_pickle(p):
            raise DeployzooError(
                f"{p}: refused to load: the pickle holds objects other than tensors/containers "
                f"(weights_only=True) - {reason}{_opcode_name(reason)}"
            ) from None
        raise DeployzooError(f"{p}: not a readable torch checkpoint: {reason}") from None
    sd = _unwrap(obj, p)
    return strip_prefix(sd, "module.")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
        break
    raise DeployzooError(f"{path}: no state_dict of tensors found in the checkpoint (top-level type {type(obj).__name__})")


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def _fmt_keys(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > n else ''})"


def apply_state_dict(
    model: torch.nn.Module,
    sd: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    optional_suffixes: Iterable[str] = ("num_batches_tracked",),
    hint: str = "",
) -> None:
    """Load `sd` into `model` strictly; any mismatch is one line naming the file and the offending keys."""
    own = model.state_dict()
    optional = tuple(optional_suffixes)
    missing = [k for k in own if k not in sd and not k.endswith(optional)]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing keys {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_fmt_keys(unexpected)}")
        if shape:
            parts.append(f"shape mismatch {_fmt_keys(shape, 2)}")
        raise DeployzooError(f"{path}: checkpoint does not fit the model: " + "; ".join(parts) + (f" ({hint})" if hint else ""))
    model.load_state_dict({k: v for k, v in sd.items()}, strict=False)

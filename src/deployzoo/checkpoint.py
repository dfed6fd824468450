"""Safe checkpoint loading shared by every model: weights_only unpickling, wrapper dicts, `module.` prefixes,
and one-line errors that name the file and the keys that do not fit."""

from __future__ import annotations

import hashlib
import logging
import pickle
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


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from a legacy or zip torch file with `weights_only=True`.

    Accepts a bare state_dict or a dict wrapping one (`state_dict`, `model`, ...); strips `module.` prefixes.
    """
    p = Path(path)
    if not p.is_file():
        raise DeployzooError(f"{p}: checkpoint file not found")
    if p.stat().st_size == 0:
        raise DeployzooError(f"{p}: checkpoint file is empty (0 bytes)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "Unsupported operand" in str(exc):
            raise DeployzooError(
                f"{p}: refused to load: the pickle holds objects other than tensors/containers "
                f"(weights_only=True) - {_short(exc, 120)}"
            ) from None
        raise DeployzooError(f"{p}: not a readable torch checkpoint (truncated or corrupt): {_short(exc)}") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError, TypeError) as exc:
        raise DeployzooError(f"{p}: not a readable torch checkpoint (truncated or corrupt): {_short(exc)}") from None
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

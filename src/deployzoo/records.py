"""A predict output's records: PRED_DIR/predictions.jsonl, one JSON object per image, written whole lines at a
time, and skipped.jsonl beside it. Readers (tasks' writers and agreement, eval, run) and the writer's resume
logic share these; a torn last line of an interrupted run is never read as a record."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PRED_FILE = "predictions.jsonl"
SKIP_FILE = "skipped.jsonl"


def iter_records(pred_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The complete records of a predict output (PRED_DIR/predictions.jsonl, or that file), in order; a torn last
    line of an interrupted run is left out."""
    path = Path(pred_dir)
    path = path / PRED_FILE if path.is_dir() else path
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                yield json.loads(line)


def done_keys(path: Path) -> set[str]:
    """Image keys already in a jsonl file; a torn last line (crash mid-write) is cut off."""
    if not path.is_file():
        return set()
    keys: set[str] = set()
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                keys.add(json.loads(raw)["image"])
            except (json.JSONDecodeError, KeyError, TypeError):
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        log.warning("%s: dropping a torn last line left by an interrupted run", path)
        with open(path, "rb+") as f:
            f.truncate(good_bytes)
    return keys


def count_records(pred_dir: str | Path) -> int:
    """Complete lines in PRED_DIR/predictions.jsonl (0 when there is none)."""
    path = Path(pred_dir) / PRED_FILE
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.endswith(b"\n") and raw.strip())

"""`deployzoo predict`: run an engine over images and write predictions incrementally (resumable)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployzoo.data.images import SourceItem
from deployzoo.engine import write_json
from deployzoo.errors import DeployzooError
from deployzoo.pipeline import Loaded, StageTimes, load_engine, run_batches
from deployzoo.pipeline_device import choose_pipeline, run_batches_device
from deployzoo.progress import progress_bar
from deployzoo.tasks.base import task_source

log = logging.getLogger(__name__)

PRED_FILE = "predictions.jsonl"
SKIP_FILE = "skipped.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass
class PredictSummary:
    out_dir: Path
    images: int = 0
    written: int = 0
    skipped: int = 0
    resumed: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "out_dir"}
        d["out_dir"] = str(self.out_dir)
        d["images_per_second"] = round(self.written / self.seconds, 3) if self.seconds > 0 else None
        return d


def iter_records(pred_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The complete records of a predict output (PRED_DIR/predictions.jsonl, or that file), in order; a torn last
    line of an interrupted run is left out."""
    path = Path(pred_dir)
    path = path / PRED_FILE if path.is_dir() else path
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                yield json.loads(line)


def _done_keys(path: Path) -> set[str]:
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


def predict(
    engine: str | Path | Loaded,
    source: str | Path,
    out_dir: str | Path,
    *,
    batch: int | None = None,
    formats: tuple[str, ...] = ("jsonl",),
    save_img: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    threads: int | None = None,
    device: str | None = None,
    workers: int = 4,
    post: dict[str, Any] | None = None,
    show_progress: bool = True,
    pipeline: str = "auto",
) -> PredictSummary:
    """`pipeline`: 'host' (decode / pre / post on the CPU, pipeline.py), 'device' (on the runner's device,
    pipeline_device.py; needs a tensor runner and a task with tensor hooks) or 'auto' (device when possible and the
    runner is on CUDA, else host)."""
    loaded = engine if isinstance(engine, Loaded) else load_engine(engine, threads=threads, device=device)
    m, task = loaded.manifest, loaded.task
    which = choose_pipeline(loaded, pipeline)
    formats = tuple(dict.fromkeys((*formats, *getattr(task, "always_formats", ()))))
    for fmt in formats:
        if fmt != "jsonl" and fmt not in task.formats:
            raise DeployzooError(f"--format {fmt}: not a format of task {m['task']} (jsonl, {', '.join(task.formats)})")
    if batch is None:
        batch = 1 if m["batch"].get("dynamic") else int(m["batch"]["size"])
    root, items = task_source(task, source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path, skip_path = out_dir / PRED_FILE, out_dir / SKIP_FILE
    summary = PredictSummary(out_dir, images=len(items), warnings=list(m.get("warnings", [])))
    if pred_path.exists() and pred_path.stat().st_size > 0 and not (resume or overwrite):
        raise DeployzooError(f"{pred_path}: predictions already exist; pass --resume to continue or --overwrite")
    if overwrite and not resume:
        for p in (pred_path, skip_path):
            p.unlink(missing_ok=True)
    done = _done_keys(pred_path) | _done_keys(skip_path) if resume else set()
    todo: list[SourceItem] = [i for i in items if i.name not in done]
    summary.resumed = len(items) - len(todo)
    merged = dict(m["postprocess"])
    merged.update({k: v for k, v in (post or {}).items() if v is not None})
    times = StageTimes()
    t_start = time.perf_counter()
    vis_dir = out_dir / "vis"
    # formats that need the whole item list up front (e.g. a features array by row)
    writers = {fmt: task.open_format(fmt, out_dir, items, resume) for fmt in formats
               if fmt != "jsonl" and hasattr(task, "open_format")}
    with open(pred_path, "a", encoding="utf-8") as fp, open(skip_path, "a", encoding="utf-8") as fs, \
            progress_bar(f"predict {m['model']} {m['precision']}", len(todo), enabled=show_progress) as bar:

        def on_result(item: SourceItem, img: np.ndarray | None, rec: dict[str, Any]) -> None:
            for fmt in formats:
                if fmt in writers:
                    writers[fmt].write(item, rec)
                elif fmt != "jsonl":
                    task.write_format(fmt, item.name, rec, out_dir)
            if save_img and img is not None:
                dst = vis_dir / Path(item.name).with_suffix(".jpg")
                dst.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(dst), task.render(img, rec))
            line = {"image": item.name, **{k: v for k, v in rec.items() if not k.startswith("_")}}
            fp.write(json.dumps(line, separators=(",", ":")) + "\n")
            fp.flush()
            summary.written += 1
            bar.advance()

        def on_skip(item: SourceItem, err: str) -> None:
            log.warning("skipping %s", err)
            fs.write(json.dumps({"image": item.name, "error": err}) + "\n")
            fs.flush()
            summary.skipped += 1
            bar.advance()

        try:
            run = run_batches_device if which == "device" else run_batches
            run(loaded, todo, batch=batch, on_result=on_result, on_skip=on_skip, times=times,
                keep_image=save_img, workers=workers, post=merged)
        finally:
            for w in writers.values():
                w.close()
        os.fsync(fp.fileno())
    summary.seconds = round(time.perf_counter() - t_start, 3)
    summary.stage_seconds = {k: round(v, 3) for k, v in times.seconds.items()}
    info = summary.to_json()
    info["engine"] = {k: m.get(k) for k in ("model", "variant", "backend", "precision", "input", "batch")}
    info["engine_dir"] = str(loaded.engine_dir)
    info["postprocess"] = merged
    info["source"] = str(Path(source))
    info["batch"] = batch
    info["pipeline"] = which
    write_json(out_dir / SUMMARY_FILE, info)
    if summary.skipped:
        log.warning("%d of %d images skipped (unreadable or unusable); see %s", summary.skipped, len(items), skip_path)
    return summary

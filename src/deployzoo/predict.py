"""`deployzoo predict`: run an engine over images and write predictions incrementally (resumable)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deployzoo.data.images import SourceItem
from deployzoo.engine import now_iso
from deployzoo.errors import DeployzooError
from deployzoo.files import DirLock, check_not_cwd, describe_os_error, write_json
from deployzoo.pipeline import Loaded, StageTimes, load_engine, run_batches
from deployzoo.pipeline_device import choose_pipeline, run_batches_device
from deployzoo.progress import progress_bar
from deployzoo.records import PRED_FILE, SKIP_FILE, count_records, done_keys
from deployzoo.tasks.base import task_source

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
SETTINGS_FILE = "predict_settings.json"  # engine + pre/post-processing + formats + source, written at the start
OWN_FILES = (PRED_FILE, SKIP_FILE, SUMMARY_FILE, SETTINGS_FILE, DirLock.NAME)


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
    workers: int | None = None  # --cluster: the Ray worker processes that answered

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "out_dir" and not (k == "workers" and v is None)}
        d["out_dir"] = str(self.out_dir)
        d["images_per_second"] = round(self.written / self.seconds, 3) if self.seconds > 0 else None
        return d


def predict_kept(out_dir: str | Path) -> str:
    """What an interrupted predict leaves, and how to go on (the CLI's Ctrl-C line)."""
    n = count_records(out_dir)
    if not n:
        return f"no image was predicted yet into {out_dir}; run the command again"
    return (f"the {n} images predicted so far are kept in {Path(out_dir) / PRED_FILE}; run the same command with "
            "--resume to continue")


def check_predict_dir(out_dir: Path) -> None:
    """`-o` of predict: absent, empty, or an earlier predict output (its own files are there); never a plain file,
    the working directory or a directory of other content."""
    check_not_cwd(out_dir)
    if out_dir.is_symlink() and not out_dir.is_dir():
        raise DeployzooError(f"{out_dir}: is a dangling symbolic link; give an output directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise DeployzooError(f"{out_dir}: exists and is a file; -o names the output directory predict writes")
    if out_dir.is_dir():
        try:
            names = {p.name for p in out_dir.iterdir()}
        except OSError as exc:
            raise DeployzooError(f"{out_dir}: cannot list the directory ({exc.strerror or exc})") from None
        if names and not names & set(OWN_FILES):
            raise DeployzooError(f"{out_dir}: exists and is not a predict output (it holds other files); give a new "
                                 "or empty directory")


def settings_identity(loaded: Loaded, post: dict[str, Any], formats: tuple[str, ...],
                      source: str | Path) -> dict[str, Any]:
    """What makes two predict runs' records interchangeable: the engine's model file (by hash) with its input
    spec (pre-processing), the post-processing settings, the formats written and the source."""
    e = loaded.engine
    return {
        "engine": {"dir": str(e.dir.resolve()), "model": e.model, "variant": e.variant, "backend": e.backend,
                   "precision": e.precision, "model_file": e.model_file, "sha256": e.model_sha256},
        "input": e.input.to_dict(), "postprocess": post, "formats": list(formats), "source": str(Path(source).resolve()),
    }


def _settings_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What the earlier run did differently, in words (None if nothing that makes its records unusable here)."""
    if old.get("engine", {}).get("sha256") != new["engine"]["sha256"]:
        o = old.get("engine", {})
        return (f"used a different engine ({o.get('dir')} {o.get('precision')}, model sha256 "
                f"{str(o.get('sha256'))[:12]}; now {new['engine']['dir']} {new['engine']['precision']}, "
                f"{str(new['engine']['sha256'])[:12]})")
    if old.get("input") != new["input"]:
        return "used another pre-processing (the engine's input spec differs)"
    op, np_ = old.get("postprocess", {}), new["postprocess"]
    diff = [f"{k} {op.get(k)!r} -> {np_.get(k)!r}" for k in sorted(set(op) | set(np_)) if op.get(k) != np_.get(k)]
    if diff:
        return "used other post-processing settings (" + ", ".join(diff) + ")"
    if old.get("formats") != new["formats"]:
        return f"wrote other --format outputs ({', '.join(old.get('formats', []))} -> {', '.join(new['formats'])})"
    if old.get("source") != new["source"]:
        return f"read another --source ({old.get('source')} -> {new['source']})"
    return None


def _read_settings(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


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
    cluster: Any = None,
) -> PredictSummary:
    """`pipeline`: 'host' (decode / pre / post on the CPU, pipeline.py), 'device' (on the runner's device,
    pipeline_device.py; needs a tensor runner and a task with tensor hooks) or 'auto' (device when possible and the
    runner is on CUDA, else host).

    `resume`: True continues an earlier run into `out_dir` (refused if the engine, pre/post-processing, formats or
    source differ: OUT/predict_settings.json records them); "auto" continues it when they are the same and starts
    over otherwise (`run` uses this). A second predict into the same directory is refused while one runs.

    `cluster` (a cluster.ClusterSpec): the images are run by Ray actors (cluster.py); the records are the same and
    are written here in the same order, incrementally, with the same resume."""
    out_dir = Path(out_dir)
    check_predict_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployzooError(describe_os_error(exc, out_dir)) from None
    with DirLock(out_dir, "predict"):
        return _predict(engine, source, out_dir, batch=batch, formats=formats, save_img=save_img, resume=resume,
                        overwrite=overwrite, threads=threads, device=device, workers=workers, post=post,
                        show_progress=show_progress, pipeline=pipeline, cluster=cluster)


def _predict(engine: str | Path | Loaded, source: str | Path, out_dir: Path, *, batch: int | None,
             formats: tuple[str, ...], save_img: bool, resume: bool | str, overwrite: bool, threads: int | None,
             device: str | None, workers: int, post: dict[str, Any] | None, show_progress: bool,
             pipeline: str, cluster: Any = None) -> PredictSummary:
    if cluster is not None:  # the workers load the engine; here only what it is
        if save_img:
            raise DeployzooError("--save-img with --cluster: not supported yet (the rendered images stay on the "
                                 "workers); predict without --cluster to render")
        if pipeline == "device":
            raise DeployzooError("--pipeline device with --cluster: the workers run the host pipeline")
        if isinstance(engine, Loaded):
            loaded = engine
        else:
            from deployzoo.engine import Engine
            from deployzoo.registry import get_task

            e = Engine.load(engine)
            loaded = Loaded(e, None, get_task(e.task))  # type: ignore[arg-type]
        which = "cluster"
    else:
        loaded = engine if isinstance(engine, Loaded) else load_engine(engine, threads=threads, device=device)
        which = choose_pipeline(loaded, pipeline)
    eng, task = loaded.engine, loaded.task
    formats = tuple(dict.fromkeys((*formats, *task.always_formats)))
    for fmt in formats:
        if fmt != "jsonl" and fmt not in task.formats:
            raise DeployzooError(f"--format {fmt}: not a format of task {eng.task} (jsonl, {', '.join(task.formats)})")
    if batch is None:
        batch = eng.batch.default()
    merged = dict(eng.post)
    merged.update({k: v for k, v in (post or {}).items() if v is not None})
    root, items = task_source(task, source, merged)
    pred_path, skip_path, settings_path = out_dir / PRED_FILE, out_dir / SKIP_FILE, out_dir / SETTINGS_FILE
    summary = PredictSummary(out_dir, images=len(items), warnings=list(eng.warnings))
    ident = settings_identity(loaded, merged, formats, source)
    earlier = (pred_path.is_file() and pred_path.stat().st_size > 0) or (skip_path.is_file()
                                                                          and skip_path.stat().st_size > 0)
    old = _read_settings(settings_path) if earlier else None
    change = _settings_change(old, ident) if old is not None else None
    if resume == "auto":  # continue the same run, start over for any other
        resume, overwrite = change is None and old is not None, change is not None or old is None
    if earlier and not (resume or overwrite):
        raise DeployzooError(f"{pred_path}: predictions already exist; pass --resume to continue or --overwrite")
    if resume and earlier:
        if change is not None:
            raise DeployzooError(f"{out_dir}: cannot --resume: the earlier run {change}; use --overwrite to start "
                                 "over, or another -o")
        if old is None:
            log.warning("%s: no %s (written by an older deployzoo): cannot check that engine and settings are those "
                        "of the earlier run", out_dir, SETTINGS_FILE)
    if overwrite and not resume:
        for p in (pred_path, skip_path, out_dir / SUMMARY_FILE):
            p.unlink(missing_ok=True)
    write_json(settings_path, {**ident, "written": now_iso()})
    done = done_keys(pred_path) | done_keys(skip_path) if resume else set()
    todo: list[SourceItem] = [i for i in items if i.name not in done]
    summary.resumed = len(items) - len(todo)
    times = StageTimes()
    cluster_stats: dict[str, Any] = {}
    t_start = time.perf_counter()
    vis_dir = out_dir / "vis"
    # formats that need the whole item list up front (e.g. a features array by row)
    opened = {fmt: task.open_format(fmt, out_dir, items, resume) for fmt in formats if fmt != "jsonl"}
    writers = {fmt: w for fmt, w in opened.items() if w is not None}
    # unbuffered: each record is one write of whole lines, so a failed write (full disk) leaves nothing buffered
    # for close() to fail on again, and a torn line at worst, which --resume cuts off
    with open(pred_path, "ab", buffering=0) as fp, open(skip_path, "ab", buffering=0) as fs, \
            progress_bar(f"predict {eng.model} {eng.precision}", len(todo), enabled=show_progress) as bar:

        def write_result(item: SourceItem, img: np.ndarray | None, rec: dict[str, Any]) -> None:
            for fmt in formats:
                if fmt in writers:
                    writers[fmt].write(item, rec)
                elif fmt != "jsonl":
                    task.write_format(fmt, item.name, rec, out_dir)
            if save_img and img is not None:
                vis = task.render(img, rec)  # in the engine's colour order; files are written BGR
                save_rendered(vis_dir / task.vis_name(item), vis if eng.input.bgr else vis[..., ::-1])
            line = {"image": item.name, **{k: v for k, v in rec.items() if not k.startswith("_")}}
            write_all(fp, json.dumps(line, separators=(",", ":")) + "\n")

        def on_result(item: SourceItem, img: np.ndarray | None, rec: dict[str, Any]) -> None:
            try:
                write_result(item, img, rec)
            except OSError as exc:  # full disk, read-only or removed output: say where and what is kept
                raise DeployzooError(f"{describe_os_error(exc, out_dir)}; the {summary.resumed + summary.written} "
                                     "images finished before are kept: make room and run again with --resume") from None
            summary.written += 1
            bar.advance()

        def on_skip(item: SourceItem, err: str) -> None:
            log.warning("skipping %s", err)
            try:
                write_all(fs, json.dumps({"image": item.name, "error": err}) + "\n")
            except OSError as exc:
                raise DeployzooError(f"{describe_os_error(exc, skip_path)}; run again with --resume") from None
            summary.skipped += 1
            bar.advance()

        try:
            if cluster is not None:
                from deployzoo.cluster import run_on_cluster

                ran = run_on_cluster(loaded, todo, batch=batch, post=merged, spec=cluster, on_result=on_result,
                                     on_skip=on_skip, threads=threads, device=device, times=times)
                summary.workers, cluster_stats = ran.get("workers"), ran
            else:
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
    info["engine"] = {"model": eng.model, "variant": eng.variant, "backend": eng.backend, "precision": eng.precision,
                      "input": eng.input.to_dict(), "batch": eng.batch.to_dict()}
    info["engine_dir"] = str(loaded.engine_dir)
    info["postprocess"] = merged
    info["source"] = str(Path(source))
    info["batch"] = batch
    info["pipeline"] = which
    if cluster is not None:
        info["cluster"] = {"address": cluster.address, "workers_asked": cluster.workers,  # "workers": answered
                           "gpus_per_worker": cluster.gpus_per_worker, "ship_images": cluster.ship_images,
                           "ship_engine": cluster.ship_engine,
                           **cluster_stats}
    write_json(out_dir / SUMMARY_FILE, info)
    if summary.skipped:
        log.warning("%d of %d images skipped (unreadable or unusable); see %s", summary.skipped, len(items), skip_path)
    return summary


def save_rendered(dst: Path, img: np.ndarray) -> None:
    """Write a rendered image (--save-img); a failure (unwritable, full, unencodable) is an error, not a skip."""
    ok, buf = cv2.imencode(dst.suffix or ".jpg", img)
    if not ok:
        raise DeployzooError(f"{dst}: cannot encode the rendered image")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as f:
        f.write(buf.tobytes())


def write_all(f: Any, text: str) -> None:
    """Write `text` to an unbuffered binary file, looping over short writes."""
    view = memoryview(text.encode("utf-8"))
    while view:
        n = f.write(view)
        view = view[n:]

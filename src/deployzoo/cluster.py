"""`predict --cluster`: a source's images sharded over a Ray cluster with Ray Data.

The driver (the `predict` process) lists the source and what is left to do (resume), and makes a Ray Dataset of
one row per engine batch of items, in source order (each item's position, path, name and the task's metadata;
the encoded bytes too for items held in memory, e.g. a .bin set, or with `ship_images`), so that the images that
share a batch, and so the zero-padding of original-size batches, are local predict's whatever blocks Ray Data
makes. `map_batches` runs them through a pool of `workers` actors
(`PredictShard`), each holding the engine, loaded once from its directory: the path itself where the worker can
read it and finds the same manifest (one machine, a shared filesystem), else a copy unpacked from an archive the
driver put once into Ray's object store. An actor runs the host pipeline (pipeline.run_batches: the task's pre-
and post-processing, the engine) over its rows and returns one row per input row, the record or the reason the
image was skipped. With `preserve_order` the driver receives them in source order and writes them through the
same writers as local predict (predictions.jsonl, the task's files, skipped.jsonl) as they arrive.

Fault tolerance is Ray Data's: its actor pools default to `max_restarts=-1` and `max_task_retries=-1`, so a dead
actor is restarted and its unfinished batches retried; a killed worker costs the batch it held, not the run.
Nothing is written twice because the driver writes each source position once, in order.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.images import SourceItem
from deployzoo.errors import DeployzooError

ITEMS_PER_CALL = 16  # source items per actor call at most (rounded down to whole engine batches, at least one)


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how wide: `address` is 'auto' (the cluster `ray start` made on this machine), 'local' (a
    one-machine Ray started for this run) or a GCS address HOST:PORT. This process is the driver, so it must run
    on a node of the cluster: Ray Client (ray://) is refused, since Ray Data does not run through it."""

    address: str
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    ship_images: bool = False  # send encoded images through the object store (no shared filesystem)
    ship_engine: bool = False  # unpack the engine from the object store even where its directory is readable

    def check(self) -> ClusterSpec:
        if self.address.startswith("ray://"):
            raise DeployzooError(f"--cluster {self.address}: Ray Data does not run through Ray Client (ray://), as Ray's "
                                 "maintainers say (ray-project/ray#48682); run deployzoo on a node of the cluster "
                                 "with --cluster auto, e.g. `ray job submit -- deployzoo predict ... --cluster auto`")
        if self.workers < 1:
            raise DeployzooError(f"--workers {self.workers}: expected a positive number of Ray actors")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise DeployzooError("--gpus-per-worker must be >= 0 and the CPUs per worker > 0")
        return self


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise DeployzooError(f"--cluster needs Ray Data: pip install 'ray[data]' ({exc})") from None
    return ray


def connect(spec: ClusterSpec) -> Callable[[], None]:
    """ray.init for `spec` (unless this process is already connected); returns what undoes it."""
    ray = import_ray()
    if ray.is_initialized():
        return lambda: None
    addr = spec.address  # "local": Ray's own word for a new instance here (never one a `ray start` left behind)
    if addr not in ("local", "auto"):
        _probe(addr)
    env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    local = {"include_dashboard": False} if addr == "local" else {}
    try:
        ray.init(address=addr, runtime_env=env, logging_level=logging.WARNING, log_to_driver=False, **local)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError: which one depends on the address form
        raise DeployzooError(f"--cluster {spec.address}: cannot connect to a Ray cluster ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no reason given'})") from None
    return ray.shutdown


def _probe(address: str, timeout: float = 5.0) -> None:
    """A TCP connect to HOST:PORT first: ray.init waits minutes on an address where nothing listens, this says so
    at once."""
    hostport = address.rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise DeployzooError(f"--cluster {address}: expected auto, local or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DeployzooError(f"--cluster {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
                             "is the Ray head running (ray start --head)?") from None


def pack_engine(engine_dir: Path) -> bytes:
    """The engine directory as an uncompressed tar (its files are already compressed or incompressible)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(Path(engine_dir).rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                tar.add(p, arcname=p.relative_to(engine_dir).as_posix())
    return buf.getvalue()


def _engine_here(engine_dir: str, sha256: str) -> Path | None:
    """The driver's engine directory when this worker can read it and it holds the same engine."""
    from deployzoo.engine import Engine

    p = Path(engine_dir)
    try:
        return p if p.is_dir() and Engine.load(p, verify=False).model_sha256 == sha256 else None
    except (DeployzooError, OSError):
        return None


class PredictShard:
    """A Ray Data actor: the engine loaded once; each batch of rows run through the task's host pipeline."""

    def __init__(self, engine_dir: str, sha256: str, archive: Any, batch: int, post: dict[str, Any],
                 threads: int | None, device: str | None, ship_engine: bool = False) -> None:
        from deployzoo.pipeline import load_engine

        here = None if ship_engine else _engine_here(engine_dir, sha256)
        self.engine_from = "shared path" if here is not None else "object store"
        if here is None:  # another machine (or asked to): unpack the driver's copy from the object store
            import ray

            blob = ray.get(archive[0])  # (in a list: a top-level ref would be resolved before a restart)
            self._tmp = tempfile.TemporaryDirectory(prefix="deployzoo-engine-")
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
                tar.extractall(self._tmp.name, filter="data")
            here = Path(self._tmp.name)
        self.loaded = load_engine(here, threads=threads, device=device)  # verifies the files' hashes
        self.batch, self.post = batch, post

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from deployzoo.pipeline import StageTimes, run_batches

        chunks = [pickle.loads(c) for c in rows["chunk"]]  # each a list of (pos, path, name, meta, data, shipped)
        items = [SourceItem(Path(p), n, m, d, sh and d is not None) for chunk in chunks for _, p, n, m, d, sh in chunk]
        out: dict[str, tuple[str, Any]] = {}

        def on_result(item: SourceItem, img: Any, rec: dict[str, Any]) -> None:
            out[item.name] = ("ok", {k: v for k, v in rec.items() if k != "_crop"})

        def on_skip(item: SourceItem, err: str) -> None:
            out[item.name] = ("skip", err)

        # the chunks are whole engine batches (the last one may be short), so the batches are local predict's
        times = StageTimes()
        run_batches(self.loaded, items, batch=self.batch, on_result=on_result, on_skip=on_skip, times=times,
                    workers=2, post=self.post)
        results = [pickle.dumps([(pos, *out[name]) for pos, _, name, *_ in chunk]) for chunk in chunks]
        return {"result": np.array(results, dtype=object),
                "worker": np.array([os.getpid()] * len(chunks)),
                "engine_from": np.array([self.engine_from] * len(chunks)),
                # this call's stage seconds, on its first row only (the driver sums them over calls)
                "stages": np.array([pickle.dumps(times.seconds)] + [b""] * (len(chunks) - 1), dtype=object)}


def run_on_cluster(loaded: Any, items: list[SourceItem], *, batch: int, post: dict[str, Any], spec: ClusterSpec,
                   on_result: Callable[[SourceItem, Any, dict[str, Any]], None],
                   on_skip: Callable[[SourceItem, str], None], threads: int | None = None,
                   device: str | None = None, times: Any = None) -> dict[str, Any]:
    """Stream `items` through `spec.workers` Ray actors; the callbacks get every item once, in source order (the
    same contract as pipeline.run_batches); `times` (a StageTimes) gets the workers' stage seconds, summed over
    them. Returns what the run was like: the distinct worker processes that
    answered, seconds to the first record (connecting, shipping the engine, starting the actors), and the seconds
    the driver spent on the records (unpickling them and the callbacks: its ceiling, records / driver_seconds)."""
    if not items:
        return {"workers": 0}
    spec.check()
    ray = import_ray()
    t0 = time.perf_counter()
    done = connect(spec)
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results in source order, so the driver writes as they come
        ctx.enable_progress_bars = False  # predict draws its own, from the records as they arrive
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # not an INFO line per dataset
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor that its bars are off
        logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)  # failures: our one line says them
        eng = loaded.engine
        archive = ray.put(pack_engine(eng.dir))
        # one Ray row per engine batch of items, in source order: Ray Data may split and bundle blocks as it likes
        # without changing which images share a batch (original-size batches are zero-padded to their largest)
        chunks = [[(k, str(i.path), i.name, i.meta,
                    i.data if i.data is not None else (_read(i) if spec.ship_images else None),
                    i.data is None and spec.ship_images)
                   for k, i in enumerate(items[c:c + batch], start=c)] for c in range(0, len(items), batch)]
        per_call = max(1, min(ITEMS_PER_CALL // batch, -(-len(chunks) // spec.workers)))  # batches per actor call
        rows = [{"chunk": pickle.dumps(chunk)} for chunk in chunks]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // per_call)))
        ds = ds.map_batches(
            PredictShard, batch_size=per_call, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=spec.workers),
            num_cpus=spec.cpus_per_worker, num_gpus=spec.gpus_per_worker or None,
            fn_constructor_kwargs={"engine_dir": str(Path(eng.dir).resolve()), "sha256": eng.model_sha256,
                                   "archive": [archive], "batch": batch, "post": post,
                                   # an actor's runtime threads: its CPUs unless --threads says otherwise
                                   "threads": threads if threads is not None else max(1, int(spec.cpus_per_worker)),
                                   "device": device, "ship_engine": spec.ship_engine})
        # (actor restarts and batch retries: Ray Data's actor-pool defaults, -1 and -1)
        seen: set[int] = set()
        workers: set[int] = set()
        engine_from: set[str] = set()
        first = driver = 0.0
        for row in _rows_or_one_line(ds, lambda: len(seen), len(items)):
            t = time.perf_counter()
            first = first or t - t0
            for pos, kind, value in pickle.loads(row["result"]):
                if pos in seen:  # (a retried batch whose first answer already arrived: never written twice)
                    continue
                seen.add(pos)
                if kind == "ok":
                    on_result(items[pos], None, value)
                else:
                    on_skip(items[pos], value)
            workers.add(int(row["worker"]))
            if times is not None and len(row["stages"]):  # (a retried call's are counted too: work done)
                for stage, sec in pickle.loads(row["stages"]).items():
                    times.add(stage, sec)
            engine_from.add(str(row["engine_from"]))
            driver += time.perf_counter() - t
        missing = len(items) - len(seen)
        if missing:
            raise DeployzooError(f"--cluster: {missing} of {len(items)} images came back from no worker; run again "
                                 "with --resume")
        return {"workers": len(workers), "engine_from": sorted(engine_from), "first_record_seconds": round(first, 3),
                "driver_seconds": round(driver, 3)}
    finally:
        done()


def _rows_or_one_line(ds: Any, done: Callable[[], int], total: int) -> Any:
    """The dataset's result rows; a failure of the Ray run (an actor that cannot load the engine, a lost cluster)
    as one line, with the worker's own error where Ray's message carries one, and what was kept."""
    try:
        yield from ds.iter_rows()
    except DeployzooError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's errors come as many types; the message says which
        text = str(exc)
        ours = [ln.strip() for ln in text.splitlines() if "DeployzooError:" in ln]
        why = ours[-1].split("DeployzooError:", 1)[1].strip() if ours else \
            f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else 'no reason given'}"
        raise DeployzooError(f"--cluster: the Ray run failed: {why} ({done()} of {total} images written; "
                             "--resume continues)") from None


def _read(item: SourceItem) -> bytes | None:
    try:
        return Path(item.path).read_bytes()
    except OSError:
        return None  # the worker reads the path itself and reports why (the item is skipped with that reason)

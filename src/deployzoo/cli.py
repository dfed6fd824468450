"""Command line: one command per stage; each parses arguments and calls the stage's function."""

from __future__ import annotations

import importlib
import json
import logging
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from deployzoo import __version__
from deployzoo.errors import DeployzooError, Interrupted
from deployzoo.request import request_options

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Trained PyTorch model -> exported, built, scored and benchmarked inference engine.")
eval_app = typer.Typer(no_args_is_help=True, help="Score predictions with a dataset's official protocol.")
app.add_typer(eval_app, name="eval")
faces_app = typer.Typer(no_args_is_help=True, help="Faces end to end: detect -> align -> embed -> compare or search.")
app.add_typer(faces_app, name="faces")

log = logging.getLogger("deployzoo")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        raise DeployzooError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise DeployzooError(f"{what}: expected positive integers, got {text!r}")
    return vals


_BUILD_OPTIONS = ("tf32", "channels_last", "cuda_graphs", "opt_batch", "perf_hint", "cpu_streams")  # BuildOptions but --device


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"deployzoo {__version__}")
        raise typer.Exit()


DEFAULT_MAX_DROP = 0.5  # --plan without --max-drop: points of the task's agreement with fp32 (issue 14)
_SIGINT_SEEN: list[bool] = []  # non-empty once Ctrl-C reached this process (see _sigint)


def _sigint(signum: int, frame: object) -> None:
    """Python's own SIGINT behaviour (raise KeyboardInterrupt), remembering that it happened: a KeyboardInterrupt
    raised inside a C extension's import or callback can come out as another exception (pybind11's
    `ImportError: initialization failed`, a RuntimeError from a callback), which is still an interruption."""
    _SIGINT_SEEN.append(True)
    raise KeyboardInterrupt


@contextmanager
def _on_interrupt(kept: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C inside the block ends the command with exit status 130 and one line: `kept()` says what was kept
    and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {kept()}") from None
    except Exception:
        if _SIGINT_SEEN:  # the interrupt, re-dressed by a C extension on its way out
            raise Interrupted(f"interrupted: {kept()}") from None
        raise


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("deployzoo").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL", "onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def models() -> None:
    """List models, variants, tasks, default input sizes and official weights (file, download URL, sha256)."""
    from deployzoo.registry import backend_capabilities, backend_names, get_model, model_names
    from deployzoo.report import md_table

    rows = []
    for name in model_names():
        s = get_model(name)
        for v in s.variants:
            size = s.default_imgsz[v]
            src = s.weights.get(v)
            rows.append([name, v + (" (default)" if v == s.default_variant else ""), s.task,
                         size if isinstance(size, str) else "x".join(map(str, size)),
                         "x".join(map(str, s.seed_imgsz.get(v, []))) or "-", src or "-",
                         src.download_text() if src else "-", src.hash_text() if src else "-"])
    typer.echo(md_table(["model", "variant", "task", "default input", "seed input", "official weights",
                         "download (--weights official)", "sha256"], rows))
    brows = []
    for b in backend_names():
        caps = backend_capabilities(b)
        missing = caps.missing()
        precs = [p + (" (not on this CPU)" if not missing and caps.precision_problem(b, p) else "")
                 for p in caps.precisions]
        brows.append([b, ", ".join(precs), ", ".join(caps.devices),
                      ", ".join(f"--{o.replace('_', '-')}" for o in caps.options) or "-",
                      f"missing {', '.join(missing)}" if missing else "ok"])
    typer.echo("\n" + md_table(["backend", "precisions", "devices", "build options", "installed"], brows))
    typer.echo("\nprecision aliases: force_float32, force_float16, qint8_mixed_float16")


@app.command()
@request_options("variant", "weights", "weights_sha256", "imgsz")
def export(
    model: str = typer.Argument(..., help="Model name (see `deployzoo models`)."),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write."),
    batch: int = typer.Option(1, help="Fixed batch size."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Dynamic batch axis."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (>= 17; default: the model's, 17 or 18)."),
    exporter: Optional[str] = typer.Option(None, help="torchscript or dynamo (default: the model's)."),
    req: dict = None,  # request_options' values
) -> None:
    """Export a model to ONNX and print the ORT-vs-PyTorch max abs difference."""
    from deployzoo.export import export_onnx

    with _on_interrupt(lambda: f"{output} not written (an export is written whole or not at all); run it again"):
        r = export_onnx(model, output, **req, batch=None if dynamic_batch else batch, opset=opset, exporter=exporter)
    typer.echo(f"wrote {r.path} (onnx.checker passed)")
    what = "detections" if "count_diff" in r.max_abs_diff else "max abs diff"  # detection graphs: paired detections
    typer.echo(f"ORT vs PyTorch {what}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.max_abs_diff.items()))
    if r.meta["weights"]["random"]:
        typer.echo("WARNING: random weights: accuracy not meaningful", err=True)


@app.command()
@request_options("backend", "precision", "calib", "calib_size", "calib_method", "float_groups", "device",
                 *_BUILD_OPTIONS)
def build(
    onnx_path: Path = typer.Argument(..., help="ONNX file from `deployzoo export`."),
    output: Path = typer.Option(..., "-o", "--output", help="Engine directory to write."),
    conf: Optional[float] = typer.Option(None, help="Score threshold (default 0.02)."),
    iou: Optional[float] = typer.Option(None, help="NMS IoU threshold (default 0.4)."),
    max_det: Optional[int] = typer.Option(None, help="Detections kept per image after NMS (default 750)."),
    top_k: Optional[int] = typer.Option(None, help="Candidates kept before NMS (default 5000)."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="int8: plan the mix of int8 and float layer "
                                             "groups: the fastest one whose agreement with fp32 on held-out "
                                             "calibration images drops at most this many points (e.g. 0.5)."),
    plan: bool = typer.Option(False, "--plan", help=f"int8: plan the mix within --max-drop, default "
                              f"{DEFAULT_MAX_DROP} points."),
    req: dict = None,  # request_options' values
) -> None:
    """Build an engine directory (model file + manifest.json) at a precision."""
    from deployzoo.build import build as build_request
    from deployzoo.request import BuildRequest, Graph, request_kwargs

    with _on_interrupt(lambda: f"no engine written to {output} (a build is written whole or not at all; an engine "
                       "already there is unchanged); run the build again"):
        graph = Graph.read(onnx_path)
        request = BuildRequest.for_graph(graph, **request_kwargs(req),
                                         post={"conf": conf, "iou": iou, "max_det": max_det, "top_k": top_k})
        if plan and max_drop is None:
            max_drop = DEFAULT_MAX_DROP
        if max_drop is not None:
            from deployzoo.quant.planner import plan_int8
            from deployzoo.report import int8_plan_table

            eng = plan_int8(graph, output, request, max_drop)
            typer.echo(int8_plan_table(eng.manifest["int8_plan"]))
            typer.echo(eng.manifest["int8_plan"]["verdict"])
        else:
            eng = build_request(graph, output, request)
    typer.echo(f"wrote engine {eng.dir}")


def _cluster_spec(address: Optional[str], workers: int, gpus: float, cpus: float = 1.0, ship_images: bool = False,
                  ship_engine: bool = False):
    """--cluster and its options as a cluster.ClusterSpec (None without --cluster)."""
    if address is None:
        return None
    from deployzoo.cluster import ClusterSpec

    return ClusterSpec(address, workers, gpus, cpus, ship_images, ship_engine).check()


@app.command()
@request_options(*_BUILD_OPTIONS)
@request_options("variant", "weights", "weights_sha256", "backend", "precision", "imgsz", "calib", "calib_size",
                 "calib_method", "float_groups", prefix="(model name) ")
def predict(
    engine: str = typer.Argument(..., help="Engine directory, or a model name to build (cached) and run."),
    source: Path = typer.Option(..., help="Image DIR, FILE, LIST (.txt) or WIDER FACE root; for arcface also an IJB-C "
                                "root, a landmarks .txt, a RetinaFace predictions.jsonl or a .bin set; for maskrcnn a COCO root "
                                "(images/ or val2017/ + annotations/: image ids and sizes from the json)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output directory."),
    batch: Optional[int] = typer.Option(None, help="Batch size (default: 1, or the engine's fixed batch)."),
    fmt: list[str] = typer.Option(["jsonl"], "--format", help="jsonl (always written) and/or widerface."),
    save_img: bool = typer.Option(False, "--save-img", help="Render predictions into OUT/vis/."),
    resume: bool = typer.Option(False, help="Continue an interrupted run, skipping images already written."),
    overwrite: bool = typer.Option(False, help="Replace existing predictions."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda:N."),
    dynamic_batch: bool = typer.Option(True, help="(model name) dynamic batch engine."),
    conf: Optional[float] = typer.Option(None, help="Score threshold override."),
    iou: Optional[float] = typer.Option(None, help="NMS IoU override."),
    max_det: Optional[int] = typer.Option(None, help="Max detections override."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="(face recognition) flip test (default on)."),
    min_face_score: Optional[float] = typer.Option(None, help="(face recognition) detector score a face of a "
                                                   "RetinaFace predictions.jsonl source needs to become a row "
                                                   "(default 0.5)."),
    pipeline: str = typer.Option("auto", help="auto | host | device: decode / pre / post on the CPU (host) or on "
                                 "the engine's device (torch-based backends; auto: device when on CUDA)."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Shard the images over a Ray cluster: auto (the "
                                          "one `ray start` runs here), local (start one on this machine), "
                                          "HOST:PORT (a GCS address; run on a node of the cluster). Same outputs as without."),
    workers: int = typer.Option(2, "--workers", help="(--cluster) Ray actors, each holding the engine."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="(--cluster) GPUs per actor."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="(--cluster) CPUs per actor."),
    ship_images: bool = typer.Option(False, "--ship-images", help="(--cluster) send the image bytes through Ray's "
                                     "object store (workers without the source on a shared filesystem)."),
    ship_engine: bool = typer.Option(False, "--ship-engine", help="(--cluster) load the engine from the copy in "
                                     "Ray's object store even where its directory is readable (it is used "
                                     "anyway where the worker cannot read it or finds another engine there)."),
    req: dict = None,  # request_options' values
) -> None:
    """Run an engine (or a model, built on the fly) over images; write OUT/predictions.jsonl."""
    from deployzoo.cache import cached_engine
    from deployzoo.predict import predict as run_predict
    from deployzoo.predict import predict_kept
    from deployzoo.registry import backend_capabilities, model_names
    from deployzoo.request import BuildRequest, request_kwargs

    formats = tuple(dict.fromkeys(["jsonl", *[f.strip() for x in fmt for f in x.split(",") if f.strip()]]))
    if not Path(engine).exists() and engine.lower() in model_names():
        with _on_interrupt(lambda: "the engine build was abandoned (nothing cached half-built) and no image was "
                           "predicted; run the command again"):
            if device and "device" in backend_capabilities(req["backend"]).options:
                req["device"] = device  # the engine is built for the device it runs on
            request = BuildRequest.create(engine, batch=None if dynamic_batch else (batch or 1), **request_kwargs(req))
            engine_dir = cached_engine(request).dir
        typer.echo(f"engine: {engine_dir}", err=True)
    else:
        engine_dir = Path(engine)
    spec = _cluster_spec(cluster, workers, gpus_per_worker, cpus_per_worker, ship_images, ship_engine)
    with _on_interrupt(lambda: predict_kept(output)):
        s = run_predict(engine_dir, source, output, batch=batch, formats=formats, save_img=save_img, resume=resume,
                        overwrite=overwrite, threads=threads, device=device, pipeline=pipeline, cluster=spec,
                        post={"conf": conf, "iou": iou, "max_det": max_det, "flip": flip,
                              "min_face_score": min_face_score})
    typer.echo(f"{s.written} images predicted ({s.resumed} already done, {s.skipped} skipped as unreadable or "
               f"unusable) in {s.seconds:.1f}s" + (f" by {s.workers} Ray worker{'s' if s.workers > 1 else ''}" if s.workers else "")
               + f" -> {s.out_dir}/predictions.jsonl")
    for w in s.warnings:
        typer.echo(f"WARNING: {w}", err=True)


@eval_app.command("widerface")
def eval_widerface(
    pred: Path = typer.Option(..., help="Prediction dir in the WIDER layout (predict --format widerface)."),
    gt: Path = typer.Option(..., help="Directory with wider_face_val.mat and wider_{easy,medium,hard}_val.mat."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write {easy, medium, hard} AP here."),
    plot: Optional[Path] = typer.Option(None, help="PR-curve PNG."),
    iou: float = typer.Option(0.5, help="IoU threshold (official 0.5)."),
) -> None:
    """Official WIDER FACE Easy / Medium / Hard AP."""
    from deployzoo.files import write_json
    from deployzoo.metrics.widerface import evaluate, plot_pr

    res = evaluate(pred, gt, iou_thresh=iou)
    ap = res.to_json()
    typer.echo("\n".join(f"{k.capitalize():6s} Val AP: {v:.4f}" for k, v in ap.items()))
    if json_out:
        write_json(json_out, ap)
    if plot:
        plot_pr(res, plot)


@eval_app.command("ijbc")
def eval_ijbc(
    features: Path = typer.Option(..., help="N x D float32 .npy in the row order of ijbc_name_5pts_score.txt "
                                  "(predict arcface --source IJBC_ROOT writes OUT/features.npy)."),
    meta: Path = typer.Option(..., help="IJB-C meta directory (or the IJB-C root holding meta/)."),
    detector_score: bool = typer.Option(True, "--detector-score/--no-detector-score",
                                        help="Weight image features by the faceness score (official default)."),
    norm_score: bool = typer.Option(True, "--norm-score/--no-norm-score",
                                    help="Keep image feature norms (official default); off: L2-normalise images first."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write {tar_at_far: {FAR: TAR}} here."),
    plot: Optional[Path] = typer.Option(None, help="ROC PNG."),
) -> None:
    """IJB-C 1:1 verification, the official protocol: TAR at FAR 1e-6 ... 1e-1."""
    from deployzoo.files import write_json
    from deployzoo.metrics.ijbc import evaluate, plot_roc
    from deployzoo.tasks.face_recognition import read_features

    res = evaluate(read_features(features), meta, detector_score=detector_score, norm_score=norm_score,
                   features_path=features)
    out = res.to_json()
    typer.echo(f"IJB-C 1:1 ({out['n_pairs']} pairs, {out['n_templates']} templates): " + ", ".join(
        f"TAR@FAR={k} {100 * v:.2f}%" for k, v in out["tar_at_far"].items()))
    if json_out:
        write_json(json_out, out)
    if plot:
        plot_roc({features.stem: res}, plot)


@eval_app.command("verification")
def eval_verification(
    features: Path = typer.Option(..., help="2P x D .npy in the image order of the .bin set "
                                  "(predict arcface --source SET.bin writes OUT/features.npy)."),
    bin_path: Path = typer.Option(..., "--bin", help="The insightface .bin set (lfw.bin, cfp_fp.bin, agedb_30.bin)."),
    folds: int = typer.Option(10, help="Cross-validation folds (standard: 10)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the accuracy here."),
) -> None:
    """LFW-style verification accuracy: 10-fold, best threshold per fold (the insightface protocol)."""
    import numpy as np

    from deployzoo.data.verification_bin import load_bin
    from deployzoo.files import write_json
    from deployzoo.metrics.verification import evaluate
    from deployzoo.tasks.face_recognition import read_features

    vs = load_bin(bin_path)
    res = evaluate(np.asarray(read_features(features)), vs.issame, nrof_folds=folds)
    out = res.to_json()
    typer.echo(f"{vs.name}: Accuracy-Flip {out['accuracy_mean']:.5f}+-{out['accuracy_std']:.5f} "
               f"({out['n_pairs']} pairs, {out['n_folds']} folds)")
    if json_out:
        write_json(json_out, out)


@eval_app.command("imagenet")
def eval_imagenet(
    pred: Path = typer.Option(..., help="predictions.jsonl (or its directory) from `predict` of a classifier."),
    labels: Path = typer.Option(..., help="Labels file (`<image> <class>` per line, e.g. val.txt), or a directory of "
                                "class sub-folders (classes in sorted order, or --synsets order)."),
    synsets: Optional[Path] = typer.Option(None, help="synset_words.txt: class order of sub-folder labels."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write {top1, top5, n} here."),
    out_dir: Optional[Path] = typer.Option(None, help="Write eval_labels.txt, eval_result_1.txt, eval_result_5.txt, "
                                           "eval_result.txt here (default: beside the predictions)."),
    allow_missing: bool = typer.Option(False, help="Score only the predicted images when some labelled ones have none."),
) -> None:
    """ImageNet top-1 / top-5 accuracy, images matched to labels by file name."""
    from deployzoo.data.imagenet import find_set, read_labels
    from deployzoo.files import write_json
    from deployzoo.metrics.classification import evaluate, read_predictions, write_seed_files

    found = find_set(labels, synsets=synsets) if labels.is_dir() else None
    lab = found.labels if found is not None else read_labels(labels)
    # a synset list says how many classes there are; otherwise evaluate's rule (ImageNet's 1000, or the labels')
    n_classes = len(found.class_names) if found is not None and synsets and found.class_names else None
    res = evaluate(read_predictions(pred), lab, allow_missing=allow_missing, pred_path=str(pred),
                   labels_path=str(labels), num_classes=n_classes)
    typer.echo(f"top1: {res.top1:.6f}  top5: {res.top5:.6f}  (n={res.n}"
               + (f", {res.n_missing} labelled images without prediction left out)" if res.n_missing else ")"))
    write_seed_files(res, out_dir or (pred if pred.is_dir() else pred.parent))
    if json_out:
        write_json(json_out, res.to_json())


@eval_app.command("coco")
def eval_coco(
    pred: Path = typer.Option(..., help="COCO results json (bbox [x,y,w,h], score, category_id, RLE segmentation)."),
    ann: Path = typer.Option(..., help="COCO instances json of the images."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write {bbox: {AP, AP50, ...}, segm: {...}} here."),
) -> None:
    """COCO bbox / segm AP and AR with pycocotools' COCOeval (each type the results carry)."""
    from deployzoo.files import write_json
    from deployzoo.metrics.coco import evaluate

    stats, text = evaluate(pred, ann)
    typer.echo(text.rstrip())
    if json_out:
        write_json(json_out, stats)


@app.command()
def bench(
    engines: list[Path] = typer.Argument(..., help="One or more engine directories (compared in one run)."),
    batch: str = typer.Option("1", help="Batch sizes, e.g. 1,4,8."),
    iters: int = typer.Option(50, help="Timed iterations per batch size."),
    warmup: int = typer.Option(5, help="Warm-up iterations."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads (default: runtime's choice)."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda:N."),
    imgsz: Optional[str] = typer.Option(None, help="Input H W for original-size engines (default 640 640)."),
    timing: Optional[str] = typer.Option(None, help="device (input already on the engine's device, CUDA events on a "
                                         "GPU) | host (host arrays, copies timed; ORT always). Default: device where "
                                         "the engine takes device tensors."),
    rounds: int = typer.Option(3, help="Interleaved rounds: every engine once per round; each row is the median round, "
                               "with the min-max and a noise flag (rounds > 15% apart, a loaded machine)."),
    streams: int = typer.Option(1, help="Concurrent workers (threads, one CUDA stream each on a GPU); throughput is "
                                "their aggregate."),
    e2e: bool = typer.Option(False, "--e2e", help="Also time files -> predictions with the stage split."),
    source: Optional[Path] = typer.Option(None, help="Images for --e2e."),
    limit: Optional[int] = typer.Option(None, help="At most this many --e2e images."),
    pipeline: str = typer.Option("auto", help="--e2e pipeline: auto | host | device (as predict --pipeline)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result as JSON."),
    md_out: Optional[Path] = typer.Option(None, "--md", help="Write the markdown tables."),
) -> None:
    """Throughput (img/s) and latency percentiles per batch size (--streams concurrent); --e2e adds read/pre/infer/post."""
    from deployzoo.bench import BenchConfig
    from deployzoo.bench import bench as run_bench
    from deployzoo.files import atomic_write_text, write_json
    from deployzoo.export import parse_imgsz
    from deployzoo.report import bench_markdown

    if e2e and source is None:
        raise DeployzooError("--e2e needs --source DIR")
    hw = parse_imgsz(imgsz) if imgsz else None
    cfg = BenchConfig(batches=_ints(batch, "--batch"), iters=iters, warmup=warmup, threads=threads, device=device,
                      imgsz=None if hw in (None, "origin") else tuple(hw), e2e_source=source if e2e else None,
                      e2e_limit=limit, timing=timing, streams=streams, pipeline=pipeline, rounds=rounds)
    with _on_interrupt(lambda: "no benchmark result written (bench writes its tables when every engine is "
                       "measured); run it again"):
        result = run_bench([str(e) for e in engines], cfg)
    md = bench_markdown(result)
    typer.echo(md)
    if json_out:
        write_json(json_out, result)
    if md_out:
        atomic_write_text(md_out, md)


@app.command()
@request_options("variant", "weights", "weights_sha256", "imgsz", "calib", "calib_size", "calib_method",
                 "float_groups", "backend", *_BUILD_OPTIONS,
                 helps={"weights": "Checkpoint FILE, `official` (the model zoo's published file, downloaded and "
                                   "hash-checked into the cache) or an http(s) URL; none = random init (accuracy "
                                   "not meaningful).",
                        "calib": "int8 calibration images (default: demo's calib split).",
                        "imgsz": "'origin' (official WIDER protocol) or 'H W' (default: the model's).",
                        "backend": "Backend of the built engines: ort | openvino | aoti | torch."})
def run(
    model: str = typer.Argument(..., help="Model name."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory (report.md, report.json, plots)."),
    precisions: Optional[str] = typer.Option(None, help="Comma-separated precisions (default: fp32,int8, less "
                                             "what the backend does not build)."),
    batches: Optional[str] = typer.Option(None, help="Batch sizes to benchmark (default: the seed's, e.g. 1,4,8)."),
    predict_batch: Optional[int] = typer.Option(None, help="Batch of the accuracy pass (default: the seed's)."),
    data: str = typer.Option("demo", help="Dataset root (WIDER FACE: WIDER_val/images + ground_truth; IJB-C: "
                             "loose_crop + meta; ImageNet val; COCO: images/ or val2017/ + annotations/) or 'demo' "
                             "(generated)."),
    gt: Optional[Path] = typer.Option(None, help="Ground truth when it is not in DATA (WIDER ground_truth dir, "
                                      "ImageNet labels, COCO instances json)."),
    peers: str = typer.Option("", help="Other backends to benchmark beside the engines, at the precisions each "
                              "builds, e.g. ort,openvino (the CPU peer table)."),
    reference: bool = typer.Option(True, help="Also benchmark eager PyTorch (backend torch, same build options; fp32, "
                                   "and on CUDA each of fp16 / bf16 the run measures) as the peer."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:N (default: cuda if present)."),
    bench_imgsz: Optional[str] = typer.Option(None, help="Benchmark input H W for origin-size engines (default: "
                                              "the model's, 640 640; Mask R-CNN 800 1344)."),
    iters: int = typer.Option(20, help="Benchmark iterations per batch size."),
    warmup: int = typer.Option(3),
    threads: Optional[int] = typer.Option(None),
    demo_images: Optional[int] = typer.Option(None, help="Images in the generated demo dataset (default: the "
                                              "task's, 24; Mask R-CNN 8)."),
    rounds: int = typer.Option(3, help="Interleaved benchmark rounds (median shown, with the min-max and a noise flag)."),
    rebench: bool = typer.Option(False, "--rebench", help="Measure the benchmark again instead of reusing the one kept "
                                 "in RUN_DIR/stages."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Predict, score and measure again (every stage kept in "
                                  "RUN_DIR/stages); engines in RUN_DIR/cache are reused: delete that directory to "
                                  "build them again."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="int8: planned on the backend and each peer "
                                             "that can (the fastest mix of int8 and float layer groups within this "
                                             "many points of fp32 on held-out calibration images; see build)."),
    plan: bool = typer.Option(False, "--plan", help=f"int8: planned within --max-drop, default {DEFAULT_MAX_DROP} "
                              "points."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Run the accuracy pass on a Ray cluster (as predict "
                                          "--cluster: auto | local | HOST:PORT)."),
    workers: int = typer.Option(2, "--workers", help="(--cluster) Ray actors, each holding the engine."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="(--cluster) GPUs per actor."),
    req: dict = None,  # request_options' values
) -> None:
    """Export, build per precision, predict + eval, bench per batch; write RUN_DIR/report.md + report.json.

    Every finished stage is kept and reused by the same command: exported graphs and engines in RUN_DIR/cache,
    predictions in RUN_DIR/predictions, scores and benchmark rows (with when they were measured) in RUN_DIR/stages.
    --rebench measures the benchmark again, --no-cache every stage; delete RUN_DIR/cache (or RUN_DIR) to clear it.
    Downloaded weights are kept under $DEPLOYZOO_CACHE/weights (default ~/.cache/deployzoo/weights).
    """
    from deployzoo.registry import canonical_precision
    from deployzoo.run import RunConfig, run_pipeline

    precs = None if precisions is None else tuple(dict.fromkeys(canonical_precision(p) for p in precisions.split(",")
                                                                if p.strip()))
    opts = {k: req.pop(k) for k in _BUILD_OPTIONS if req.get(k) is not None}
    cfg = RunConfig(
        model=model, out_dir=output, precisions=precs, batches=_ints(batches, "--batches") if batches else None,
        predict_batch=predict_batch, data=data, gt=gt, reference=reference,
        peers=tuple(b.strip().lower() for b in peers.split(",") if b.strip()),
        bench_imgsz=bench_imgsz, iters=iters,
        warmup=warmup, threads=threads, demo_images=demo_images, device=device, build_options=opts,
        max_drop=DEFAULT_MAX_DROP if plan and max_drop is None else max_drop,
        rounds=rounds, rebench=rebench, no_cache=no_cache,
        cluster=_cluster_spec(cluster, workers, gpus_per_worker),
        **{k: v for k, v in req.items() if k not in _BUILD_OPTIONS},
    )
    with _on_interrupt(lambda: f"every finished stage is kept in {output} (engines, predictions, scores, benchmark "
                       "rows); run the same command again to continue from them"):
        rep = run_pipeline(cfg)
    typer.echo(rep.markdown)
    typer.echo(f"report: {rep.path}")


# --------------------------------------------------------------------------------------------- faces

def _face_engine_plan(role: str, engine: str, precision: str) -> tuple[Path | None, str | None]:
    """--detector / --recognizer checked before anything is built: (engine directory, None) or (None, model name)."""
    from deployzoo.engine import Engine
    from deployzoo.faces import ROLES, check_engine_task
    from deployzoo.registry import get_model, model_names

    model, task = ROLES[role]
    if Path(engine).exists():
        eng = Engine.load(engine, verify=False)
        check_engine_task(role, engine, eng.model, eng.task)
        return Path(engine), None
    if engine.lower() not in model_names():
        raise DeployzooError(f"--{role} {engine}: neither an engine directory nor a model name (e.g. {model})")
    if get_model(engine.lower()).task != task:
        raise DeployzooError(f"--{role} {engine}: not a {task.replace('_', ' ')} model (e.g. {model})")
    if precision.lower() == "int8":
        raise DeployzooError(f"--{role} {engine} --precision int8: needs calibration images; build the engine with "
                             "`deployzoo build ... --precision int8 --calib DIR` and pass its directory")
    return None, engine.lower()


def _face_models(detector: str, recognizer: str, det_variant: Optional[str], det_weights: Optional[str],
                 rec_variant: Optional[str], rec_weights: Optional[str], backend: str, precision: str,
                 device: Optional[str], threads: Optional[int], min_face_score: Optional[float],
                 flip: Optional[bool]):
    """The two engines: directories, or model names built (once, cached) like predict does."""
    from deployzoo.cache import cached_engine
    from deployzoo.faces import FaceModels
    from deployzoo.pipeline import load_engine
    from deployzoo.registry import backend_capabilities
    from deployzoo.request import BuildRequest
    from deployzoo.tasks.face_recognition import min_face_score as check_score

    check_score(min_face_score)
    plans = {"detector": (*_face_engine_plan("detector", detector, precision), det_variant, det_weights),
             "recognizer": (*_face_engine_plan("recognizer", recognizer, precision), rec_variant, rec_weights)}
    requests = {role: BuildRequest.create(name, variant=variant, weights=weights, backend=backend, precision=precision,
                                          options={"device": device} if device and "device" in
                                          backend_capabilities(backend).options else None)
                for role, (_, name, variant, weights) in plans.items() if name is not None}
    dirs = {}
    for role, (path, *_rest) in plans.items():
        if role in requests:
            with _on_interrupt(lambda: "the engine build was abandoned (nothing cached half-built); run the command "
                               "again"):
                path = cached_engine(requests[role]).dir
            typer.echo(f"{role}: {path}", err=True)
        dirs[role] = path
    models = FaceModels(load_engine(dirs["detector"], threads=threads, device=device),
                        load_engine(dirs["recognizer"], threads=threads, device=device),
                        min_score=min_face_score, rec_post={"flip": flip})
    for w in models.warnings():
        typer.echo(f"WARNING: {w}", err=True)
    return models


def _face_setup(face: str, threshold: Optional[float], threshold_from: Optional[Path], far: Optional[float],
                *model_args: object):
    """What faces compare and search share, refused in this order before anything is built: --face, the threshold
    (as _face_threshold), the two engines (as _face_models, on `model_args`)."""
    from deployzoo.faces import check_face_choice

    check_face_choice(face)
    thr = _face_threshold(threshold, threshold_from, far)
    return thr, _face_models(*model_args)


def _face_threshold(threshold: Optional[float], threshold_from: Optional[Path], far: Optional[float]):
    from deployzoo.faces import check_threshold
    from deployzoo.faces import threshold_from as read_threshold

    if threshold is not None and threshold_from is not None:
        raise DeployzooError("--threshold and --threshold-from: give one of them")
    if far is not None and threshold_from is None:
        raise DeployzooError("--far: chooses the IJB-C operating point of --threshold-from; give that file too")
    if threshold is not None:
        return check_threshold(threshold)
    return read_threshold(threshold_from, far) if threshold_from is not None else None


_DETECTOR = typer.Option("retinaface", "--detector", help="Face detector: an engine directory, or a model name built "
                         "(cached) on --backend.")
_RECOGNIZER = typer.Option("arcface", "--recognizer", help="Face recognizer: an engine directory, or a model name.")
_DET_VARIANT = typer.Option(None, "--detector-variant", help="(model name) e.g. mobilenet0.25 | resnet50.")
_DET_WEIGHTS = typer.Option(None, "--detector-weights", help="(model name) checkpoint FILE, `official` or URL; none = "
                            "random init (detections not meaningful).")
_REC_VARIANT = typer.Option(None, "--recognizer-variant", help="(model name) e.g. r18 | r50 | r100.")
_REC_WEIGHTS = typer.Option(None, "--recognizer-weights", help="(model name) checkpoint FILE, `official` or URL; none "
                            "= random init (similarities not meaningful).")
_BACKEND = typer.Option("ort", "--backend", help="(model names) backend the engines are built on.")
_PRECISION = typer.Option("fp32", "--precision", help="(model names) fp32 | fp16 | bf16 (int8: build the engine "
                          "with --calib and pass its directory).")
_MIN_SCORE = typer.Option(None, "--min-face-score", help="Detector score a face needs (default 0.5).")
_FACE = typer.Option("largest", "--face", help="Which face of an image with several: largest (box area) | best "
                     "(detector score).")
_THRESHOLD = typer.Option(None, "--threshold", help="Cosine similarity above which two faces are the same person.")
_THRESHOLD_FROM = typer.Option(None, "--threshold-from", help="Take the threshold from a verification run: the json of "
                               "`eval verification --json` (10-fold best threshold) or `eval ijbc --json` (at --far).")
_FAR = typer.Option(None, "--far", help="(IJB-C --threshold-from) the FAR of the operating point (default 1e-4).")
_FLIP = typer.Option(None, "--flip/--no-flip", help="Flip test (default: the recognizer engine's, on).")
_JSON = typer.Option(None, "--json", help="Write the result here.")


@faces_app.command("compare")
def faces_compare(
    image_a: Path = typer.Argument(..., help="First image."),
    image_b: Path = typer.Argument(..., help="Second image."),
    detector: str = _DETECTOR, recognizer: str = _RECOGNIZER,
    detector_variant: Optional[str] = _DET_VARIANT, detector_weights: Optional[str] = _DET_WEIGHTS,
    recognizer_variant: Optional[str] = _REC_VARIANT, recognizer_weights: Optional[str] = _REC_WEIGHTS,
    backend: str = _BACKEND, precision: str = _PRECISION,
    min_face_score: Optional[float] = _MIN_SCORE, face: str = _FACE,
    threshold: Optional[float] = _THRESHOLD, threshold_from: Optional[Path] = _THRESHOLD_FROM,
    far: Optional[float] = _FAR, flip: Optional[bool] = _FLIP,
    device: Optional[str] = typer.Option(None, help="cpu | cuda:N."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads."),
    json_out: Optional[Path] = _JSON,
) -> None:
    """Are the faces of two images the same person? (cosine similarity, verdict at a threshold)

    Each image's face (the largest, or --face best) is detected, aligned on its 5 landmarks and embedded; the
    verdict needs a threshold: --threshold, or --threshold-from a verification run's json."""
    from deployzoo.faces import compare
    from deployzoo.files import write_json

    for p in (image_a, image_b):
        if not p.is_file():
            raise DeployzooError(f"{p}: image not found")
    thr, models = _face_setup(face, threshold, threshold_from, far, detector, recognizer, detector_variant,
                              detector_weights, recognizer_variant, recognizer_weights, backend, precision, device,
                              threads, min_face_score, flip)
    with _on_interrupt(lambda: "nothing was written; run the command again"):
        res = compare(models, image_a, image_b, face=face, threshold=thr)
    for k, p in (("a", image_a), ("b", image_b)):
        r = res[k]
        typer.echo(f"{p}: {r['faces']} face{'s' if r['faces'] != 1 else ''}; using face {r['face']} ({face}), box "
                   f"{', '.join(f'{v:.0f}' for v in r['box'])}, detector score {r['score']:.3f}")
    line = f"cosine similarity {res['cosine']:.4f}"
    if thr is not None:
        line += (f": {'SAME person' if res['same'] else 'DIFFERENT people'} (threshold {thr.cosine:.4f}, "
                 f"{thr.source})")
    else:
        line += " (no verdict: give --threshold or --threshold-from a verification run)"
    typer.echo(line)
    if json_out:
        write_json(json_out, res)


@faces_app.command("search")
def faces_search(
    gallery: Path = typer.Option(..., "--gallery", help="Directory of images (searched recursively); every face in "
                                 "them is indexed."),
    query: Path = typer.Option(..., "--query", help="Image of the face to look for."),
    top_k: int = typer.Option(5, "--top-k", help="Matches to show."),
    index: Optional[Path] = typer.Option(None, "--index", help="Directory of the gallery's index (detections and "
                                         "embeddings, reused and updated by the next search); default: under "
                                         "$DEPLOYZOO_CACHE/faces, one per gallery, engines and settings."),
    rebuild_index: bool = typer.Option(False, "--rebuild-index", help="Index the gallery again from the start."),
    detector: str = _DETECTOR, recognizer: str = _RECOGNIZER,
    detector_variant: Optional[str] = _DET_VARIANT, detector_weights: Optional[str] = _DET_WEIGHTS,
    recognizer_variant: Optional[str] = _REC_VARIANT, recognizer_weights: Optional[str] = _REC_WEIGHTS,
    backend: str = _BACKEND, precision: str = _PRECISION,
    min_face_score: Optional[float] = _MIN_SCORE, face: str = _FACE,
    threshold: Optional[float] = _THRESHOLD, threshold_from: Optional[Path] = _THRESHOLD_FROM,
    far: Optional[float] = _FAR, flip: Optional[bool] = _FLIP,
    device: Optional[str] = typer.Option(None, help="cpu | cuda:N."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads."),
    json_out: Optional[Path] = _JSON,
) -> None:
    """The gallery faces most like the query's face (top-k by cosine similarity).

    The gallery is indexed once (every face detected and embedded, written as it goes); later searches reuse the
    index and compute only images added since. With a threshold each match gets a verdict."""
    from deployzoo.faces import build_index, search
    from deployzoo.files import write_json

    if not query.is_file():
        raise DeployzooError(f"{query}: image not found")
    if top_k < 1:
        raise DeployzooError(f"--top-k: expected a positive integer, got {top_k}")
    thr, models = _face_setup(face, threshold, threshold_from, far, detector, recognizer, detector_variant,
                              detector_weights, recognizer_variant, recognizer_weights, backend, precision, device,
                              threads, min_face_score, flip)
    where: list[Path] = []

    def kept() -> str:
        return (f"the gallery faces indexed so far are kept in {where[0]}; run the same command to go on"
                if where else "nothing was written; run the command again")

    with _on_interrupt(kept):
        from deployzoo.faces import default_index_dir

        where.append(index or default_index_dir(gallery, models))
        idx = build_index(models, gallery, where[0], rebuild=rebuild_index)
        q, n = models.face_of(query, face)
        matches = search(idx, q, top_k, thr)
    typer.echo(f"gallery: {len(idx.rows)} faces in {idx.images} images ({idx.computed} embedded now"
               + (f", {idx.skipped} not alignable" if idx.skipped else "") + f"); index {idx.dir}")
    typer.echo(f"query {query}: {n} face{'s' if n != 1 else ''}; using face {q.index} ({face}), detector score "
               f"{q.score:.3f}")
    if thr is not None:
        typer.echo(f"threshold {thr.cosine:.4f} ({thr.source})")
    for m in matches:
        verdict = "" if thr is None else ("  SAME" if m["same"] else "  different")
        typer.echo(f"{m['rank']:3d}  {m['cosine']:.4f}{verdict}  {m['image']} face {m['face']}  box "
                   f"{', '.join(f'{v:.0f}' for v in m['box'] or [])}  det {m['score']:.3f}")
    if not matches:
        typer.echo("no gallery face to match")
    if json_out:
        write_json(json_out, {"query": {**q.to_json(), "faces": n}, "gallery": str(idx.gallery), "index": str(idx.dir),
                              "gallery_faces": len(idx.rows), "matches": matches,
                              **({"threshold": thr.cosine, "threshold_from": thr.source} if thr else {})})


_IMGSZ_PAIR = re.compile(r"^-?\d+$")  # negative too, so that `--imgsz -5 10` reaches parse_imgsz's own message


def _join_imgsz(argv: list[str]) -> list[str]:
    """Accept `--imgsz H W` (two tokens) as the issue's syntax: join them into one `H,W` value."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("--imgsz", "--bench-imgsz") and i + 2 < len(argv) \
                and _IMGSZ_PAIR.match(argv[i + 1]) and _IMGSZ_PAIR.match(argv[i + 2]):
            out += [a, f"{argv[i + 1]},{argv[i + 2]}"]
            i += 3
            continue
        out.append(a)
        i += 1
    return out


def _click_classes(name: str) -> tuple[type, ...]:
    """`name` (ClickException, Abort) from every click typer may raise: its vendored copy (typer >= 0.29,
    typer._click) and the click package (older typer)."""
    found = []
    for mod in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def _usage_line(exc: Exception) -> str:
    """One line for a click usage error: its message and where to get help."""
    ctx = getattr(exc, "ctx", None)
    msg = " ".join(str(exc.format_message() if hasattr(exc, "format_message") else exc).split()).rstrip(".")
    if ctx is not None and getattr(ctx, "command_path", None):
        return f"{msg} (see '{ctx.command_path} --help')"
    return msg


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exit status: 0 done, 2 usage or input error (one line `deployzoo: error: ...`), 130
    interrupted (one line saying what was kept), 1 an internal error (one line; `-v` adds the traceback)."""
    args = _join_imgsz(list(sys.argv[1:] if argv is None else argv))
    verbose = any(a in ("-v", "--verbose") for a in args)
    _SIGINT_SEEN.clear()
    try:
        previous = signal.signal(signal.SIGINT, _sigint) if signal.getsignal(signal.SIGINT) is \
            signal.default_int_handler else None
    except ValueError:  # not the main thread (an embedding caller): leave its handler alone
        previous = None
    try:
        _run_app(args, verbose)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_app(args: list[str], verbose: bool) -> None:
    try:
        rv = app(args=args, prog_name="deployzoo", standalone_mode=False)
    except DeployzooError as exc:
        typer.echo(f"deployzoo: {'' if isinstance(exc, Interrupted) else 'error: '}{exc}", err=True)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:  # outside a command's own handler (start-up, argument parsing)
        typer.echo("deployzoo: interrupted before any work was done", err=True)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line + exit status
        if _SIGINT_SEEN:  # Ctrl-C re-dressed by a C extension outside a command's own handler
            typer.echo("deployzoo: interrupted before any work was done", err=True)
            raise SystemExit(130) from None
        if isinstance(exc, _click_classes("ClickException")):
            if type(exc).__name__ == "NoArgsIsHelpError":  # `deployzoo` / `deployzoo eval` alone: the help text
                exc.show()
            else:
                typer.echo(f"deployzoo: error: {_usage_line(exc)}", err=True)
            raise SystemExit(getattr(exc, "exit_code", 2)) from None
        if isinstance(exc, _click_classes("Abort")):  # EOF at a prompt
            typer.echo("deployzoo: aborted", err=True)
            raise SystemExit(1) from None
        if isinstance(exc, _click_classes("Exit")):
            raise SystemExit(getattr(exc, "exit_code", 0)) from None
        if isinstance(exc, OSError) and exc.strerror:  # a file the command could not read or write
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"deployzoo: error: {where}{exc.strerror}", err=True)
            raise SystemExit(2) from None
        if isinstance(exc, MemoryError):
            typer.echo("deployzoo: error: out of memory (try a smaller --batch)", err=True)
            raise SystemExit(2) from None
        if verbose:
            traceback.print_exc()
        text = " ".join(str(exc).split())[:300]
        typer.echo(f"deployzoo: internal error: {type(exc).__name__}: {text} "
                   f"({'' if verbose else 'rerun with -v for the traceback; '}please report it)", err=True)
        raise SystemExit(1) from None
    # typer >= 0.29 turns Ctrl-C inside a command into a returned 130 when not standalone; an explicit
    # typer.Exit(n) also comes back as n
    if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
        if rv == 130:
            typer.echo("deployzoo: interrupted", err=True)
        raise SystemExit(rv)

"""Command line: one command per stage; each parses arguments and calls the stage's function."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from deployzoo.errors import DeployzooError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Trained PyTorch model -> exported, built, scored and benchmarked inference engine.")
eval_app = typer.Typer(no_args_is_help=True, help="Score predictions with a dataset's official protocol.")
app.add_typer(eval_app, name="eval")

log = logging.getLogger("deployzoo")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError:
        raise DeployzooError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise DeployzooError(f"{what}: expected positive integers, got {text!r}")
    return vals


# build options of the PyTorch backends (torch, aoti): one definition, used by build / predict / run
_TF32 = typer.Option(None, "--tf32/--no-tf32", help="[torch, aoti] TF32 matmuls/convs for fp32 on CUDA (default on).")
_CHANNELS_LAST = typer.Option(None, "--channels-last/--no-channels-last",
                              help="[torch, aoti] NHWC network and input (default: on for CUDA, off for CPU).")
_CUDA_GRAPHS = typer.Option(None, "--cuda-graphs/--no-cuda-graphs",
                            help="[torch, aoti] replay a CUDA graph per input shape (CUDA only; default off).")
_OPT_BATCH = typer.Option(None, "--opt-batch", help="[aoti] batch a dynamic-batch engine is traced at (default 8).")


def _build_opts(device: str | None, tf32: bool | None, channels_last: bool | None, cuda_graphs: bool | None,
                opt_batch: int | None) -> dict[str, object]:
    """The set build options (None = backend default); backends without options refuse any that is set."""
    opts = {"device": device, "tf32": tf32, "channels_last": channels_last, "cuda_graphs": cuda_graphs,
            "opt_batch": opt_batch}
    return {k: v for k, v in opts.items() if v is not None}


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("deployzoo").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "PIL", "onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def models() -> None:
    """List models, variants, tasks, default input sizes and official weight sources."""
    from deployzoo.registry import backend_names, get_model, model_names
    from deployzoo.report import md_table

    rows = []
    for name in model_names():
        s = get_model(name)
        for v in s.variants:
            size = s.default_imgsz[v]
            rows.append([name, v + (" (default)" if v == s.default_variant else ""), s.task,
                         size if isinstance(size, str) else "x".join(map(str, size)),
                         "x".join(map(str, s.seed_imgsz.get(v, []))) or "-", s.weights.get(v, "-")])
    typer.echo(md_table(["model", "variant", "task", "default input", "seed input", "official weights"], rows))
    typer.echo(f"\nbackends: {', '.join(backend_names())}; precisions: fp32, fp16, bf16, int8 "
               "(aliases force_float32, force_float16, qint8_mixed_float16)")


@app.command()
def export(
    model: str = typer.Argument(..., help="Model name (see `deployzoo models`)."),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write."),
    variant: Optional[str] = typer.Option(None, help="Model variant."),
    weights: Optional[Path] = typer.Option(None, help="Checkpoint (official layout). None: random init."),
    imgsz: Optional[str] = typer.Option(None, help="'origin' (dynamic H x W) or 'H W' / HxW."),
    batch: int = typer.Option(1, help="Fixed batch size."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Dynamic batch axis."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (>= 17; default: the model's, 17 or 18)."),
    exporter: Optional[str] = typer.Option(None, help="torchscript or dynamo (default: the model's)."),
) -> None:
    """Export a model to ONNX and print the ORT-vs-PyTorch max abs difference."""
    from deployzoo.export import export_onnx

    r = export_onnx(model, output, variant=variant, weights=weights, imgsz=imgsz, batch=None if dynamic_batch else batch,
                    opset=opset, exporter=exporter)
    typer.echo(f"wrote {r.path} (onnx.checker passed)")
    what = "detections" if "count_diff" in r.max_abs_diff else "max abs diff"  # detection graphs: paired detections
    typer.echo(f"ORT vs PyTorch {what}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.max_abs_diff.items()))
    if r.meta["weights"]["random"]:
        typer.echo("WARNING: random weights: accuracy not meaningful", err=True)


@app.command()
def build(
    onnx_path: Path = typer.Argument(..., help="ONNX file from `deployzoo export`."),
    output: Path = typer.Option(..., "-o", "--output", help="Engine directory to write."),
    backend: str = typer.Option("ort", help="ort | torch | aoti (AOTInductor .pt2, compiled for --device)."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | bf16 (torch, aoti) | int8 (ort) (or the seed names)."),
    calib: Optional[Path] = typer.Option(None, help="Calibration images (int8), separate from the evaluation set."),
    calib_size: int = typer.Option(64, help="Number of calibration images."),
    calib_method: str = typer.Option("minmax", help="minmax | entropy | percentile."),
    conf: Optional[float] = typer.Option(None, help="Score threshold (default 0.02)."),
    iou: Optional[float] = typer.Option(None, help="NMS IoU threshold (default 0.4)."),
    max_det: Optional[int] = typer.Option(None, help="Detections kept per image after NMS (default 750)."),
    top_k: Optional[int] = typer.Option(None, help="Candidates kept before NMS (default 5000)."),
    device: Optional[str] = typer.Option(None, help="[torch, aoti] cpu | cuda | cuda:N (default: cuda if present)."),
    tf32: Optional[bool] = _TF32,
    channels_last: Optional[bool] = _CHANNELS_LAST,
    cuda_graphs: Optional[bool] = _CUDA_GRAPHS,
    opt_batch: Optional[int] = _OPT_BATCH,
) -> None:
    """Build an engine directory (model file + manifest.json) at a precision."""
    from deployzoo.build import build_engine

    out = build_engine(onnx_path, output, backend=backend, precision=precision, calib=calib, calib_size=calib_size,
                       calib_method=calib_method, post={"conf": conf, "iou": iou, "max_det": max_det, "top_k": top_k},
                       options=_build_opts(device, tf32, channels_last, cuda_graphs, opt_batch))
    typer.echo(f"wrote engine {out}")


@app.command()
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
    variant: Optional[str] = typer.Option(None, help="[model name] variant."),
    weights: Optional[Path] = typer.Option(None, help="[model name] checkpoint."),
    backend: str = typer.Option("ort", help="[model name] backend."),
    precision: str = typer.Option("fp32", help="[model name] precision."),
    imgsz: Optional[str] = typer.Option(None, help="[model name] 'origin' or 'H W'."),
    dynamic_batch: bool = typer.Option(True, help="[model name] dynamic batch engine."),
    calib: Optional[Path] = typer.Option(None, help="[model name] int8 calibration images."),
    calib_size: int = typer.Option(64, help="[model name] calibration images used."),
    calib_method: str = typer.Option("minmax", help="[model name] minmax | entropy | percentile."),
    conf: Optional[float] = typer.Option(None, help="Score threshold override."),
    iou: Optional[float] = typer.Option(None, help="NMS IoU override."),
    max_det: Optional[int] = typer.Option(None, help="Max detections override."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="[face recognition] flip test (default on)."),
    pipeline: str = typer.Option("auto", help="auto | host | device: decode / pre / post on the CPU (host) or on "
                                 "the engine's device (torch-based backends; auto: device when on CUDA)."),
    tf32: Optional[bool] = _TF32,
    channels_last: Optional[bool] = _CHANNELS_LAST,
    cuda_graphs: Optional[bool] = _CUDA_GRAPHS,
    opt_batch: Optional[int] = _OPT_BATCH,
) -> None:
    """Run an engine (or a model, built on the fly) over images; write OUT/predictions.jsonl."""
    from deployzoo.cache import ensure_engine
    from deployzoo.predict import predict as run_predict
    from deployzoo.registry import backend_takes_options, model_names

    formats = tuple(dict.fromkeys(["jsonl", *[f.strip() for x in fmt for f in x.split(",") if f.strip()]]))
    if not Path(engine).exists() and engine.lower() in model_names():
        engine_dir = ensure_engine(engine, variant=variant, weights=weights, backend=backend, precision=precision,
                                   imgsz=imgsz, batch=None if dynamic_batch else (batch or 1), calib=calib,
                                   calib_size=calib_size, calib_method=calib_method,
                                   options=_build_opts(device if backend_takes_options(backend) else None, tf32,
                                                       channels_last, cuda_graphs, opt_batch))
        typer.echo(f"engine: {engine_dir}", err=True)
    else:
        engine_dir = Path(engine)
    s = run_predict(engine_dir, source, output, batch=batch, formats=formats, save_img=save_img, resume=resume,
                    overwrite=overwrite, threads=threads, device=device, pipeline=pipeline,
                    post={"conf": conf, "iou": iou, "max_det": max_det, "flip": flip})
    typer.echo(f"{s.written} images predicted ({s.resumed} already done, {s.skipped} skipped as unreadable or "
               f"unusable) in {s.seconds:.1f}s -> {s.out_dir}/predictions.jsonl")
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
    from deployzoo.engine import write_json
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
    from deployzoo.engine import write_json
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
    from deployzoo.engine import write_json
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
    from deployzoo.engine import write_json
    from deployzoo.metrics.classification import evaluate, read_predictions, write_seed_files

    lab = find_set(labels, synsets=synsets).labels if labels.is_dir() else read_labels(labels)
    res = evaluate(read_predictions(pred), lab, allow_missing=allow_missing, pred_path=str(pred),
                   labels_path=str(labels))
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
    from deployzoo.engine import write_json
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
    from deployzoo.engine import atomic_write_text, write_json
    from deployzoo.export import parse_imgsz
    from deployzoo.report import bench_markdown

    if e2e and source is None:
        raise DeployzooError("--e2e needs --source DIR")
    hw = parse_imgsz(imgsz) if imgsz else None
    cfg = BenchConfig(batches=_ints(batch, "--batch"), iters=iters, warmup=warmup, threads=threads, device=device,
                      imgsz=None if hw in (None, "origin") else tuple(hw), e2e_source=source if e2e else None,
                      e2e_limit=limit, timing=timing, streams=streams, pipeline=pipeline)
    result = run_bench([str(e) for e in engines], cfg)
    md = bench_markdown(result)
    typer.echo(md)
    if json_out:
        write_json(json_out, result)
    if md_out:
        atomic_write_text(md_out, md)


@app.command()
def run(
    model: str = typer.Argument(..., help="Model name."),
    output: Path = typer.Option(..., "-o", "--output", help="Run directory (report.md, report.json, plots)."),
    variant: Optional[str] = typer.Option(None),
    weights: Optional[Path] = typer.Option(None, help="Checkpoint; none = random init (accuracy not meaningful)."),
    precisions: str = typer.Option("fp32,int8", help="Comma-separated precisions."),
    batches: Optional[str] = typer.Option(None, help="Batch sizes to benchmark (default: the seed's, e.g. 1,4,8)."),
    predict_batch: Optional[int] = typer.Option(None, help="Batch of the accuracy pass (default: the seed's)."),
    data: str = typer.Option("demo", help="Dataset root (WIDER FACE: WIDER_val/images + ground_truth; IJB-C: "
                             "loose_crop + meta; ImageNet val; COCO: images/ or val2017/ + annotations/) or 'demo' "
                             "(generated)."),
    gt: Optional[Path] = typer.Option(None, help="Ground truth when it is not in DATA (WIDER ground_truth dir, "
                                      "ImageNet labels, COCO instances json)."),
    calib: Optional[Path] = typer.Option(None, help="int8 calibration images (default: demo's calib split)."),
    calib_size: int = typer.Option(64),
    calib_method: str = typer.Option("minmax"),
    backend: str = typer.Option("ort", help="Backend of the built engines: ort | aoti | torch."),
    reference: bool = typer.Option(True, help="Also benchmark eager PyTorch (backend torch, same build options; fp32, "
                                   "and on CUDA each of fp16 / bf16 the run measures) as the peer."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | cuda:N (default: cuda if present)."),
    tf32: Optional[bool] = _TF32,
    channels_last: Optional[bool] = _CHANNELS_LAST,
    cuda_graphs: Optional[bool] = _CUDA_GRAPHS,
    opt_batch: Optional[int] = _OPT_BATCH,
    imgsz: Optional[str] = typer.Option(None, help="'origin' (official WIDER protocol) or 'H W'."),
    bench_imgsz: Optional[str] = typer.Option(None, help="Benchmark input H W for origin-size engines (default: "
                                              "the model's, 640 640; Mask R-CNN 800 1344)."),
    iters: int = typer.Option(20, help="Benchmark iterations per batch size."),
    warmup: int = typer.Option(3),
    threads: Optional[int] = typer.Option(None),
    demo_images: Optional[int] = typer.Option(None, help="Images in the generated demo dataset (default: the "
                                              "task's, 24; Mask R-CNN 8)."),
) -> None:
    """Export, build per precision, predict + eval, bench per batch; write RUN_DIR/report.md + report.json."""
    from deployzoo.registry import canonical_precision
    from deployzoo.run import RunConfig, run_pipeline

    cfg = RunConfig(
        model=model, out_dir=output, variant=variant, weights=weights,
        precisions=tuple(canonical_precision(p) for p in precisions.split(",") if p.strip()),
        batches=_ints(batches, "--batches") if batches else None, predict_batch=predict_batch, data=data, gt=gt, calib=calib, calib_size=calib_size,
        calib_method=calib_method, backend=backend, reference=reference, imgsz=imgsz, bench_imgsz=bench_imgsz,
        iters=iters, warmup=warmup, threads=threads, demo_images=demo_images, device=device,
        build_options=_build_opts(None, tf32, channels_last, cuda_graphs, opt_batch),
    )
    rep = run_pipeline(cfg)
    typer.echo(rep.markdown)
    typer.echo(f"report: {rep.path}")


_IMGSZ_PAIR = re.compile(r"^\d+$")


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


def main(argv: list[str] | None = None) -> None:
    args = _join_imgsz(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="deployzoo", standalone_mode=False)
    except DeployzooError as exc:
        typer.echo(f"deployzoo: error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("deployzoo: interrupted (finished work is kept; use --resume)", err=True)
        raise SystemExit(130) from None
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        raise SystemExit(code) from None
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(1) from None
        raise

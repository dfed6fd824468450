"""The reliability matrix (issue 12): bad inputs and faults against the real CLI, each in its own process, as a
new user meets them. Every case must end in exit status `code` with stderr holding exactly one `deployzoo:` line
that contains `needle`, no traceback, and (where a check is given) nothing of the user's lost.

    .venv/bin/python scripts/fault_matrix.py --into docs/reliability.md [--only SUBSTRING]

Writes the markdown table (case, command, exit, the line printed, held / FAILED) after the `## The matrix`
heading of --into (or into --out alone) and exits non-zero if a case failed. Takes ~8 minutes on the 2-core development machine (one interpreter start per case). The full-disk and
read-only cases mount small tmpfs file systems and need root; without it they are listed as skipped."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

PY = sys.executable
MATRIX_HEADING = "## The matrix"


@dataclass
class Case:
    group: str
    name: str
    argv: list[str] | Callable[[Path], list[str]]
    code: int | tuple[int, ...]
    needle: str = ""
    check: Callable[[Path], str | None] | None = None  # -> None if fine, else what went wrong
    prefix: str = "deployzoo: error:"
    signal_after: str | None = None  # send SIGINT when this holds: see wait_for
    needs_root: bool = False
    lines: int | None = 1  # deployzoo: lines expected on stderr (None: not checked)


@dataclass
class Result:
    case: Case
    command: str
    code: int | None
    line: str
    ok: bool
    why: str = ""
    seconds: float = 0.0
    skipped: bool = False


@dataclass
class World:
    """Shared artifacts, made once in-process: tiny engines, images, annotation files."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, k: str) -> str:
        return str(self.paths[k])


def make_world(root: Path) -> World:
    from deployzoo.build import build_engine
    from deployzoo.export import export_onnx

    w = World(root)
    p = w.paths
    p["onnx"] = export_onnx("retinaface", root / "tiny.onnx", imgsz=[64, 64], batch=None).path
    p["onnx_b4"] = export_onnx("retinaface", root / "b4.onnx", imgsz=[64, 64], batch=4).path
    p["engine"] = build_engine(p["onnx"], root / "engine")
    p["engine_b4"] = build_engine(p["onnx_b4"], root / "engine_b4")
    rng = np.random.default_rng(0)
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(6):
        cv2.imwrite(str(imgs / f"im{i}.jpg"), rng.integers(0, 255, (60 + 7 * i, 80, 3), dtype=np.uint8))
    p["imgs"] = imgs
    many = root / "many"
    many.mkdir()
    for i in range(400):
        cv2.imwrite(str(many / f"{i:03d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    p["many"] = many
    bad = root / "bad_imgs"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    ok = (imgs / "im0.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(ok[: len(ok) // 2])
    p["bad_imgs"] = bad
    # COCO: one image, one category, one annotation
    ann = {"images": [{"id": 1, "height": 20, "width": 30, "file_name": "a.jpg"}],
           "categories": [{"id": 1, "name": "thing"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 2, 9, 6], "area": 54,
                            "iscrowd": 0, "segmentation": [[3, 2, 12, 2, 12, 8, 3, 8]]}]}
    (root / "instances.json").write_text(json.dumps(ann))
    p["ann"] = root / "instances.json"
    (root / "labels.txt").write_text("a.jpg 3\nb.jpg 7\n")
    p["labels"] = root / "labels.txt"
    return w


def write(work: Path, name: str, data: str | bytes) -> str:
    f = work / name
    f.parent.mkdir(parents=True, exist_ok=True)
    (f.write_bytes if isinstance(data, bytes) else f.write_text)(data)
    return str(f)


def coco_results(work: Path, w: World, text: str) -> list[str]:
    return ["eval", "coco", "--pred", write(work, "results.json", text), "--ann", w["ann"]]


def imagenet_preds(work: Path, w: World, lines: str) -> list[str]:
    return ["eval", "imagenet", "--pred", write(work, "p/predictions.jsonl", lines), "--labels", w["labels"]]


def engine_copy(work: Path, w: World, edit: Callable[[dict], None] | None = None,
                model: Callable[[Path], None] | None = None) -> str:
    eng = work / "eng"
    shutil.copytree(w.paths["engine"], eng)
    if edit:
        m = json.loads((eng / "manifest.json").read_text())
        edit(m)
        (eng / "manifest.json").write_text(json.dumps(m))
    if model:
        model(eng / "model.onnx")
    return str(eng)


def flip_byte(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def unchanged(path: str, content: bytes | str) -> Callable[[Path], str | None]:
    def check(work: Path) -> str | None:
        p = work / path
        got = p.read_bytes() if isinstance(content, bytes) else p.read_text()
        return None if got == content else f"{p} changed"
    return check


def no_file(path: str) -> Callable[[Path], str | None]:
    return lambda work: f"{path} was written" if (work / path).exists() else None


def records_between(path: str, lo: int, hi: int) -> Callable[[Path], str | None]:
    def check(work: Path) -> str | None:
        f = work / path
        n = sum(1 for x in f.read_text().splitlines() if x.endswith("}")) if f.is_file() else 0
        return None if lo <= n <= hi else f"{n} records kept (expected {lo}..{hi})"
    return check


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cases(w: World) -> list[Case]:
    E, I, M = w["engine"], w["imgs"], w["many"]
    c: list[Case] = []
    add = c.append
    # ------------------------------------------------------------------ 1. CLI
    g = "1 CLI"
    add(Case(g, "unknown option", ["export", "--bogus"], 2, "No such option: --bogus"))
    add(Case(g, "unknown command", ["nosuch"], 2, "No such command"))
    add(Case(g, "missing option", ["export", "retinaface"], 2, "Missing option '-o'"))
    add(Case(g, "missing argument", ["run"], 2, "Missing argument"))
    add(Case(g, "bad integer value", ["bench", E, "--iters", "abc"], 2, "Invalid value for '--iters'"))
    add(Case(g, "--imgsz -5 10", ["export", "retinaface", "--imgsz", "-5", "10", "-o", "x.onnx"], 2, "--imgsz"))
    add(Case(g, "--imgsz abc", ["export", "retinaface", "--imgsz", "abc", "-o", "x.onnx"], 2, "--imgsz"))
    add(Case(g, "--imgsz 16 (too small)", ["export", "retinaface", "--imgsz", "16", "-o", "x.onnx"], 2, ">= 32"))
    add(Case(g, "--version", ["--version"], 0, "", prefix="", lines=0))
    add(Case(g, "no arguments: help", [], 2, "", lines=0))
    add(Case(g, "unknown model", ["export", "resnet9000", "-o", "x.onnx"], 2, "unknown model"))
    add(Case(g, "unknown variant", ["export", "retinaface", "--variant", "x9", "-o", "x.onnx"], 2, "unknown variant"))
    add(Case(g, "unknown precision", ["build", w["onnx"], "--precision", "fp9", "-o", "e"], 2, "unknown precision"))
    add(Case(g, "unknown backend", ["build", w["onnx"], "--backend", "trt", "-o", "e"], 2, "unknown backend"))
    add(Case(g, "int8 without --calib", ["build", w["onnx"], "--precision", "int8", "-o", "e"], 2, "--calib"))
    add(Case(g, "aoti int8 refused with the reason", ["build", w["onnx"], "--backend", "aoti", "--precision", "int8",
                                                      "-o", "e"], 2, "int8"))
    add(Case(g, "ort build options refused", ["build", w["onnx"], "--channels-last", "-o", "e"], 2, "apply to"))
    add(Case(g, "--conf 1.5", ["build", w["onnx"], "--conf", "1.5", "-o", "e"], 2, "--conf"))
    add(Case(g, "--iou 0", ["build", w["onnx"], "--iou", "0", "-o", "e"], 2, "--iou"))
    add(Case(g, "--max-det 0", ["build", w["onnx"], "--max-det", "0", "-o", "e"], 2, "--max-det"))
    add(Case(g, "--calib-method bogus", ["build", w["onnx"], "--precision", "int8", "--calib", I, "--calib-method",
                                         "x", "-o", "e"], 2, "--calib-method"))
    add(Case(g, "--opset 11", ["export", "retinaface", "--opset", "11", "-o", "x.onnx"], 2, "--opset"))
    add(Case(g, "--exporter bogus", ["export", "retinaface", "--imgsz", "64", "--exporter", "x", "-o", "x.onnx"], 2,
             "--exporter"))
    add(Case(g, "predict --format bogus", ["predict", E, "--source", I, "-o", "p", "--format", "bogus"], 2,
             "--format"))
    add(Case(g, "predict --pipeline bogus", ["predict", E, "--source", I, "-o", "p", "--pipeline", "x"], 2,
             "--pipeline"))
    add(Case(g, "bench --batch 0", ["bench", E, "--batch", "0"], 2, "--batch"))
    add(Case(g, "bench --iters 0", ["bench", E, "--iters", "0"], 2, "--iters"))
    add(Case(g, "bench --streams 0", ["bench", E, "--streams", "0"], 2, "--streams"))
    add(Case(g, "bench --timing bogus", ["bench", E, "--timing", "x"], 2, "--timing"))
    add(Case(g, "ort --device cuda without a CUDA provider", ["bench", E, "--device", "cuda", "--iters", "1"], 2,
             "CUDA"))
    add(Case(g, "SIGINT during predict", ["predict", E, "--source", M, "-o", "p", "--threads", "1"], 130, "--resume",
             prefix="deployzoo: interrupted:", signal_after="p/predictions.jsonl",
             check=records_between("p/predictions.jsonl", 1, 399)))
    add(Case(g, "SIGINT during an int8 build", ["build", w["onnx"], "--precision", "int8", "--calib", M,
                                                "--calib-size", "400", "-o", "e"], 130, "no engine written",
             prefix="deployzoo: interrupted:", signal_after="glob:.e.deployzoo-tmp-*", check=no_file("e")))
    add(Case(g, "SIGINT during bench", ["bench", E, "--iters", "100000"], 130, "no benchmark result",
             prefix="deployzoo: interrupted:", signal_after="@2"))
    add(Case(g, "SIGINT during run (in its predict pass)", ["run", "retinaface", "--precisions", "fp32", "-o", "r"],
             130, "run the same command again", prefix="deployzoo: interrupted:",
             signal_after="r/predictions/fp32/predictions.jsonl"))
    add(Case(g, "SIGKILL mid-predict, then --resume: same bytes as an uninterrupted run", lambda d: (
        kill_during(["predict", E, "--source", M, "-o", "p", "--threads", "1"], d, "p/predictions.jsonl"),
        ["predict", E, "--source", M, "-o", "p", "--threads", "1", "--resume"])[1], 0, "", prefix="", lines=None,
        check=lambda d: same_bytes(d / "p" / "predictions.jsonl", reference_predictions(E, M, d / "ref"))))
    add(Case(g, "SIGKILL mid-build: no half engine, its temp cleaned by the next build", lambda d: (
        kill_during(["build", w["onnx"], "--precision", "int8", "--calib", M, "--calib-size", "400", "-o", "e"], d,
                    "glob:.e.deployzoo-tmp-*"), ["build", w["onnx"], "-o", "e2"])[1], 0, "", prefix="", lines=0,
        check=lambda d: half_engine(d / "e") or ("temp dir left" if list(d.glob(".e.deployzoo-tmp-*")) else None)))
    # ------------------------------------------------------------------ 2. outputs
    g = "2 outputs"
    add(Case(g, "build -o a plain file", lambda d: ["build", w["onnx"], "-o", write(d, "notes.txt", "keep")], 2,
             "is a file", check=unchanged("notes.txt", "keep")))
    add(Case(g, "build -o a directory of other files",
             lambda d: ["build", w["onnx"], "-o", str(Path(write(d, "photos/a.jpg", b"x")).parent)], 2,
             "not a deployzoo engine directory", check=unchanged("photos/a.jpg", b"x")))
    add(Case(g, "build -o .", ["build", w["onnx"], "-o", "."], 2, "current directory"))
    add(Case(g, "build -o ..", ["build", w["onnx"], "-o", ".."], 2, "current directory"))
    add(Case(g, "build -o an existing engine (replaced)", lambda d: ["build", w["onnx"], "-o", engine_copy(d, w),
                                                                     "--conf", "0.5"], 0, "", prefix="", lines=0))
    add(Case(g, "export -o someone else's file", lambda d: ["export", "retinaface", "--imgsz", "64", "-o",
                                                            write(d, "m.onnx", b"theirs")], 2,
             "not an ONNX file exported by deployzoo", check=unchanged("m.onnx", b"theirs")))
    add(Case(g, "export -o a directory", lambda d: ["export", "retinaface", "--imgsz", "64", "-o",
                                                    str(Path(write(d, "sub/x.txt", "x")).parent)], 2,
             "is a directory"))
    add(Case(g, "export -o .", ["export", "retinaface", "--imgsz", "64", "-o", "."], 2, "current directory"))
    add(Case(g, "predict -o a plain file", lambda d: ["predict", E, "--source", I, "-o", write(d, "o.txt", "keep")],
             2, "is a file", check=unchanged("o.txt", "keep")))
    add(Case(g, "predict -o a directory of other files",
             lambda d: ["predict", E, "--source", I, "--overwrite", "-o",
                        str(Path(write(d, "docs/thesis.tex", "keep")).parent)], 2, "not a predict output",
             check=unchanged("docs/thesis.tex", "keep")))
    add(Case(g, "predict -o .", ["predict", E, "--source", I, "-o", "."], 2, "current directory"))
    add(Case(g, "predict over predictions without --resume",
             lambda d: (write(d, "p/predictions.jsonl", '{"image": "im0.jpg"}\n'),
                        ["predict", E, "--source", I, "-o", str(d / "p")])[1], 2, "--resume"))
    add(Case(g, "--save-img where vis/ is a file",
             lambda d: (write(d, "p/vis", "x"), write(d, "p/predictions.jsonl", ""),
                        ["predict", E, "--source", I, "-o", str(d / "p"), "--save-img", "--overwrite"])[2], 2,
             "cannot write"))
    for what, opts, needle in (("full", "size=300k", "No space left on device"),
                               ("read-only", "ro,size=64k", "Read-only file system")):
        add(Case(g, f"export to a {what} disk", ["export", "retinaface", "--imgsz", "64", "-o", "mnt/m.onnx"], 2,
                 needle, needs_root=opts))
        add(Case(g, f"build to a {what} disk", ["build", w["onnx"], "-o", "mnt/e"], 2, needle, needs_root=opts))
        add(Case(g, f"predict to a {what} disk", ["predict", E, "--source", M, "-o", "mnt/p"], 2, needle,
                 needs_root=opts))
    add(Case(g, "umask 027: predict's files 0640, dirs 0750", lambda d: [
        "predict", E, "--source", I, "-o", str(d / "p")], 0, "", prefix="", lines=0,
        check=lambda d: None if all((p.stat().st_mode & 0o777) == (0o750 if p.is_dir() else 0o640)
                                    for p in [d / "p", *(d / "p").iterdir()]) else "modes not 0640/0750"))
    add(Case(g, "stale temp dir of a killed build cleaned", lambda d: (
        (d / ".e.deployzoo-tmp-999999999-x").mkdir(), ["build", w["onnx"], "-o", str(d / "e")])[1], 0, "",
        prefix="", lines=0,
        check=lambda d: "stale temp left" if (d / ".e.deployzoo-tmp-999999999-x").exists() else None))
    # ------------------------------------------------------------------ 3. engine integrity
    g = "3 engine"
    add(Case(g, "model file corrupted (one byte)", lambda d: ["predict", engine_copy(d, w, model=flip_byte),
                                                              "--source", I, "-o", str(d / "p")], 2, "sha256"))
    add(Case(g, "model file truncated", lambda d: ["bench", engine_copy(
        d, w, model=lambda f: f.write_bytes(f.read_bytes()[:1000])), "--iters", "1"], 2, "truncated"))
    add(Case(g, "model file missing", lambda d: ["bench", engine_copy(d, w, model=lambda f: f.unlink())], 2,
             "missing"))
    add(Case(g, "manifest not JSON", lambda d: (lambda e: (Path(e, "manifest.json").write_text("{"), [
        "bench", e])[1])(engine_copy(d, w)), 2, "malformed manifest"))
    add(Case(g, "engine dir is a file", lambda d: ["bench", write(d, "e", "x")], 2, "not an engine directory"))
    add(Case(g, "no manifest", lambda d: ["bench", str(d)], 2, "no manifest.json"))
    for key, edit in (
            ("postprocess missing", lambda m: m.pop("postprocess")),
            ("postprocess.conf 1.5", lambda m: m["postprocess"].update(conf=1.5)),
            ("batch not an object", lambda m: m.update(batch=[1, 8])),
            ("batch.size vs dynamic model", lambda m: m.update(batch={"dynamic": False, "size": 4})),
            ("input.imgsz vs model", lambda m: m["input"].update(imgsz=[128, 128])),
            ("task vs model", lambda m: m.update(task="classification")),
            ("outputs vs task", lambda m: m.update(outputs=["logits"])),
            ("model_file outside the dir", lambda m: m.update(model_file="../../etc/passwd")),
            ("files missing", lambda m: m.pop("files")),
            ("older engine format", lambda m: m.update(format="deployzoo-engine/1"))):
        add(Case(g, f"manifest: {key}", lambda d, edit=edit: ["predict", engine_copy(d, w, edit), "--source", I,
                                                              "-o", str(d / "p")], 2, "manifest"))
    # ------------------------------------------------------------------ 4. concurrency and resume
    g = "4 resume"
    add(Case(g, "second predict into a running one's dir", lambda d: [
        "predict", E, "--source", I, "-o", str(hold_lock(d / "p"))], 2, "another predict is writing here"))
    add(Case(g, "--resume with other thresholds", lambda d: (
        predict_once(E, I, d / "p"), ["predict", E, "--source", I, "-o", str(d / "p"), "--resume", "--conf",
                                      "0.5"])[1], 2, "conf 0.02 -> 0.5"))
    add(Case(g, "--resume with another engine", lambda d: (
        predict_once(E, I, d / "p"), ["predict", engine_copy(d, w, model=flip_byte_and_rehash), "--source", I, "-o",
                                      str(d / "p"), "--resume"])[1], 2, "different engine"))
    add(Case(g, "--resume with another --format", lambda d: (
        predict_once(E, I, d / "p"), ["predict", E, "--source", I, "-o", str(d / "p"), "--resume", "--format",
                                      "widerface"])[1], 2, "--format"))
    add(Case(g, "--resume, same settings", lambda d: (
        predict_once(E, I, d / "p"), ["predict", E, "--source", I, "-o", str(d / "p"), "--resume"])[1], 0, "",
        prefix="", lines=0))
    # ------------------------------------------------------------------ 5. inputs
    g = "5 inputs"
    add(Case(g, "source not found", ["predict", E, "--source", "nowhere", "-o", "p"], 2, "source not found"))
    add(Case(g, "source dir without images", lambda d: ["predict", E, "--source", str(Path(write(
        d, "empty/readme.md", "x")).parent), "-o", str(d / "p")], 2, "no images found"))
    add(Case(g, "corrupt / truncated / empty images skipped and listed", ["predict", E, "--source", w["bad_imgs"],
                                                                         "-o", "p"], 0, "", prefix="", lines=0,
             check=lambda d: None if len((d / "p" / "skipped.jsonl").read_text().splitlines()) == 3 else
             "skipped.jsonl does not list the 3 bad files"))
    add(Case(g, "dangling symlink in a source dir listed in skipped.jsonl", lambda d: (
        shutil.copytree(I, d / "src"), os.symlink(d / "gone.jpg", d / "src" / "link.jpg"),
        ["predict", E, "--source", str(d / "src"), "-o", str(d / "p")])[2], 0, "", prefix="", lines=0,
        check=lambda d: None if "link.jpg" in (d / "p" / "skipped.jsonl").read_text() else "link.jpg not listed"))
    add(Case(g, "missing absolute path in a list file reported as given", lambda d: [
        "predict", E, "--source", write(d, "list.txt", f"{I}/im0.jpg\n/no/such/abs.jpg\n"), "-o", str(d / "p")], 0,
        "", prefix="", lines=0, check=lambda d: None if '"/no/such/abs.jpg"' in (
            d / "p" / "skipped.jsonl").read_text() else "not reported as given"))
    add(Case(g, "list file not UTF-8", lambda d: ["predict", E, "--source", write(d, "l.txt", b"\xff\xfe\x00bad"),
                                                  "-o", str(d / "p")], 2, "UTF-8"))
    add(Case(g, "int8 calibration images all unreadable", ["build", w["onnx"], "--precision", "int8", "--calib",
                                                           w["bad_imgs"], "-o", "e"], 2, "calibration"))
    add(Case(g, "run --precisions ''", ["run", "retinaface", "--precisions", "", "-o", "r"], 2, "--precisions",
             check=no_file("r")))
    add(Case(g, "bench: no requested batch supported", ["bench", w["engine_b4"], "--batch", "1,2"], 2,
             "none of the batch sizes"))
    add(Case(g, "predict --batch not allowed by a fixed engine", ["predict", w["engine_b4"], "--source", I, "-o", "p",
                                                                  "--batch", "2"], 2, "batch 2 not supported"))
    add(Case(g, "exif orientation recorded in the manifest", ["bench", E, "--iters", "1"], 0, "", prefix="", lines=0,
             check=lambda d: None if "exif_orientation" in json.loads(
                 (Path(E) / "manifest.json").read_text())["input"] else "no exif_orientation in the manifest"))
    # ------------------------------------------------------------------ 6. eval inputs
    g = "6 eval"
    good = {"image_id": 1, "category_id": 1, "bbox": [3, 2, 9, 6], "score": 0.9}
    for name, text, needle in (
            ("COCO score NaN", json.dumps([{**good, "score": float("nan")}]), "result [0] score"),
            ("COCO bbox Infinity", json.dumps([{**good, "bbox": [1, 2, float("inf"), 4]}]), "not finite"),
            ("COCO bbox of 3 numbers", json.dumps([{**good, "bbox": [1, 2, 3]}]), "4 numbers"),
            ("COCO negative width", json.dumps([good, {**good, "bbox": [1, 2, -3, 4]}]), "result [1]"),
            ("COCO unknown image id", json.dumps([{**good, "image_id": 9}]), "image_id 9"),
            ("COCO results not a list", json.dumps({"a": 1}), "list"),
            ("COCO results not JSON", "[{", "not valid JSON")):
        add(Case(g, name, lambda d, text=text: coco_results(d, w, text), 2, needle))
    add(Case(g, "COCO annotations missing keys", lambda d: ["eval", "coco", "--pred", write(
        d, "r.json", json.dumps([good])), "--ann", write(d, "a.json", json.dumps({"images": []}))], 2, "missing key"))
    for name, line, needle in (
            ("ImageNet class 1003", '{"image": "a.jpg", "topk": [[1003, 0.9]]}', "out of range"),
            ("ImageNet class -1", '{"image": "a.jpg", "topk": [[-1, 0.9]]}', "out of range"),
            ("ImageNet class 3.5", '{"image": "a.jpg", "topk": [[3.5, 0.9]]}', "not an integer"),
            ("ImageNet image not labelled", '{"image": "zzz.jpg", "topk": [[1, 0.9]]}', "not in")):
        add(Case(g, name, lambda d, line=line: imagenet_preds(d, w, line + "\n"), 2, needle))
    add(Case(g, "WIDER negative box sizes: warning, scored", lambda d: wider_case(d, "1\n5 5 -3 4 0.9\n"), 0,
             "negative width or height", prefix="WARNING", lines=None))
    add(Case(g, "WIDER count line disagrees", lambda d: wider_case(d, "3\n5 5 3 4 0.9\n"), 2, "count line"))
    ck = "checkpoint"
    add(Case(g, "checkpoint of random bytes: torch's reason", lambda d: [
        "export", "retinaface", "--imgsz", "64", "--weights", write(d, "r.pth", bytes([52]) + os.urandom(4095)),
        "-o", str(d / "m.onnx")], 2, "not a readable torch checkpoint: Unsupported operand"))
    add(Case(g, "checkpoint truncated zip", lambda d: [
        "export", "retinaface", "--imgsz", "64", "--weights", truncated_zip(d), "-o", str(d / "m.onnx")], 2,
        "not a readable torch checkpoint"))
    add(Case(g, "checkpoint empty", lambda d: ["export", "retinaface", "--weights", write(d, "e.pth", b""), "-o",
                                               str(d / "m.onnx")], 2, "empty"))
    add(Case(g, f"malicious {ck} (os.system pickle) refused, never run", lambda d: [
        "export", "retinaface", "--weights", evil(d), "-o", str(d / "m.onnx")], 2, "refused to load",
        check=lambda d: "the pickle ran" if (d / "ran").exists() else None))
    add(Case(g, "malicious .bin verification set (os.system pickle) refused, never run", lambda d: [
        "eval", "verification", "--bin", evil_bin(d), "--features", write(d, "f.npy", b"x")], 2, "evil.bin",
        check=lambda d: "the pickle ran" if (d / "ran").exists() else None))
    add(Case(g, "IJB-C features file not .npy", lambda d: [
        "eval", "ijbc", "--features", write(d, "f.npy", b"not numpy"), "--meta", str(d)], 2, "f.npy"))
    # ------------------------------------------------------------------ more inputs of the stages
    g = "5 inputs"
    add(Case(g, "export --weights missing", ["export", "retinaface", "--weights", "nope.pth", "-o", "m.onnx"], 2,
             "checkpoint file not found"))
    add(Case(g, "export --weights of the other variant", lambda d: [
        "export", "retinaface", "--variant", "resnet50", "--weights", mnet_state(d), "-o", str(d / "m.onnx")], 2,
        "missing keys"))
    add(Case(g, "build from a file that is not ONNX", lambda d: ["build", write(d, "x.onnx", b"garbage"), "-o",
                                                                 str(d / "e")], 2, "not a readable ONNX model"))
    add(Case(g, "build from an ONNX file deployzoo did not export", lambda d: [
        "build", foreign_onnx(d), "-o", str(d / "e")], 2, "not exported by deployzoo"))
    add(Case(g, "build from a missing ONNX file", ["build", "missing.onnx", "-o", "e"], 2, "not found"))
    add(Case(g, "predict with a missing engine dir", ["predict", "no-engine", "--source", I, "-o", "p"], 2,
             "not an engine directory"))
    add(Case(g, "bench --e2e without --source", ["bench", E, "--e2e"], 2, "--source"))
    add(Case(g, "list file with a missing relative entry: skipped and listed", lambda d: [
        "predict", E, "--source", write(d, "l.txt", "missing/rel.jpg\n" + "\n".join(
            str(x) for x in sorted(Path(I).iterdir()))), "-o", str(d / "p")], 0, "", prefix="", lines=0,
        check=lambda d: None if "missing/rel.jpg" in (d / "p" / "skipped.jsonl").read_text() else "not listed"))
    add(Case(g, "gray, RGBA and 16-bit images are read", lambda d: [
        "predict", E, "--source", odd_images(d), "-o", str(d / "p")], 0, "", prefix="", lines=0,
        check=lambda d: None if len((d / "p" / "predictions.jsonl").read_text().splitlines()) == 3 else
        "not every odd image predicted"))
    return c


def mnet_state(d: Path) -> str:
    import torch

    from deployzoo.models.retinaface import RetinaFace

    p = d / "mnet.pth"
    torch.save(RetinaFace("mobilenet0.25").state_dict(), p)
    return str(p)


def foreign_onnx(d: Path) -> str:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    p = d / "foreign.onnx"
    onnx.save(helper.make_model(g), str(p))
    return str(p)


def odd_images(d: Path) -> str:
    src = d / "odd"
    src.mkdir()
    rng = np.random.default_rng(3)
    cv2.imwrite(str(src / "gray.png"), rng.integers(0, 255, (50, 70), dtype=np.uint8))
    cv2.imwrite(str(src / "rgba.png"), rng.integers(0, 255, (50, 70, 4), dtype=np.uint8))
    cv2.imwrite(str(src / "deep.png"), rng.integers(0, 65535, (50, 70, 3), dtype=np.uint16))
    return str(src)


def evil_bin(d: Path) -> str:
    import pickle

    p = d / "evil.bin"
    p.write_bytes(pickle.dumps(Evil(str(d / "ran"))))
    return str(p)


def kill_during(argv: list[str], cwd: Path, when: str) -> None:
    """Start `deployzoo argv` and SIGKILL it once `when` (a file under cwd) has content, or `@N` seconds after
    its start-up."""
    p = subprocess.Popen([PY, "-m", "deployzoo", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_for(p, cwd, when)
    p.kill()
    p.wait()


def wait_for(p: subprocess.Popen, cwd: Path, when: str) -> None:
    """Return once `when` holds for the running process p (or it has ended, or 180 s passed): `@N` = N seconds
    after its start-up (~4 s of imports); `glob:PATTERN` = a path matching PATTERN exists under cwd (a build's
    temp directory: the build is under way and has not finished); else the file `when` under cwd has content."""
    if when.startswith("@"):
        time.sleep(float(when[1:]) + 4)
        return
    deadline = time.time() + 180
    if when.startswith("glob:"):
        def ready() -> bool:
            return any(True for _ in cwd.glob(when[5:]))
    else:
        f = cwd / when

        def ready() -> bool:
            return f.is_file() and f.stat().st_size > 0
    while time.time() < deadline and p.poll() is None and not ready():
        time.sleep(0.02)


def half_engine(eng: Path) -> str | None:
    """None when `eng` is absent (the build was killed before its final rename) or a whole, loadable engine
    (the kill came after it); else what is wrong with it."""
    from deployzoo.engine import read_manifest, verify_files
    from deployzoo.errors import DeployzooError

    if not eng.exists():
        return None
    try:
        verify_files(eng, read_manifest(eng))
    except DeployzooError as exc:
        return f"a half-built engine at -o: {exc}"
    return None


def reference_predictions(engine: str, src: str, out: Path) -> Path:
    from deployzoo.predict import predict

    predict(engine, src, out, threads=1, show_progress=False)
    return out / "predictions.jsonl"


def same_bytes(a: Path, b: Path) -> str | None:
    return None if a.read_bytes() == b.read_bytes() else f"{a} differs from an uninterrupted run's {b}"


def hold_lock(out: Path) -> Path:
    """Start a process that holds predict's lock on `out` for a minute (the first predict, still running)."""
    out.mkdir(parents=True, exist_ok=True)
    code = ("import sys, time\nfrom deployzoo.files import DirLock\n"
            f"with DirLock({str(out)!r}, 'predict'):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    p = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    HOLDERS.append(p)
    return out


HOLDERS: list[subprocess.Popen] = []


def predict_once(engine: str, src: str, out: Path) -> None:
    from deployzoo.predict import predict

    predict(engine, src, out, show_progress=False)


def flip_byte_and_rehash(f: Path) -> None:
    """Another engine that loads: a changed weight, the manifest's hash updated to match."""
    import onnx

    from deployzoo.engine import record_files

    m = onnx.load(str(f))
    t = m.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(t).copy()
    arr.flat[0] += 1.0
    t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    onnx.save(m, str(f))
    man = json.loads((f.parent / "manifest.json").read_text())
    man["files"] = record_files(f.parent)
    (f.parent / "manifest.json").write_text(json.dumps(man))


def wider_case(d: Path, body: str) -> list[str]:
    """A generated WIDER FACE set (ground truth .mat files) with prediction files whose body is `body`."""
    from deployzoo.data.widerface import load_gt
    from deployzoo.demo.widerface import write_demo

    root = write_demo(d / "wider", n_images=3, seed=1)
    gt = load_gt(root / "ground_truth")
    for event, names in zip(gt.events, gt.files):
        for name in names:
            write(d, f"pred/{event}/{name}.txt", f"{name}\n{body}")
    return ["eval", "widerface", "--pred", str(d / "pred"), "--gt", str(root / "ground_truth")]


def truncated_zip(d: Path) -> str:
    import torch

    p = d / "good.pth"
    torch.save({"w": torch.zeros(64, 64)}, p)
    data = p.read_bytes()
    return write(d, "cut.pth", data[: len(data) // 2])


def evil(d: Path) -> str:
    import torch

    p = d / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": Evil(str(d / "ran"))}, p)
    return str(p)


def mount(d: Path, opts: str) -> bool:
    d.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True).returncode == 0


def run_case(case: Case, work: Path) -> Result:
    mnt = work / "mnt"
    if case.needs_root and not mount(mnt, str(case.needs_root)):
        return Result(case, "", None, "", True, "needs root to mount a tmpfs", skipped=True)
    try:
        argv = case.argv(work) if callable(case.argv) else list(case.argv)
        umask = 0o027 if "umask" in case.name else None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        old = os.umask(umask) if umask is not None else None
        try:
            p = subprocess.Popen([PY, "-m", "deployzoo", *map(str, argv)], cwd=work, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env)
        finally:
            if old is not None:
                os.umask(old)
        if case.signal_after:
            wait_for(p, work, case.signal_after)
            p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=600)
        dt = time.perf_counter() - t0
    finally:
        if case.needs_root:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    world = str(work.parent / "world")  # the shared tiny engines and images (make_world)
    shown = " ".join(argv).replace(world, "WORLD").replace(str(work), "W")
    lines = [ln for ln in err.splitlines() if ln.startswith("deployzoo:")]
    line = next((ln for ln in err.splitlines() if case.prefix and ln.startswith(case.prefix)), lines[0] if lines else "")
    why = []
    want = case.code if isinstance(case.code, tuple) else (case.code,)
    if p.returncode not in want:
        why.append(f"exit {p.returncode}, expected {case.code}")
    if "Traceback" in err:
        why.append("traceback")
    if case.lines is not None and len(lines) != case.lines:
        why.append(f"{len(lines)} deployzoo: lines, expected {case.lines}")
    if case.needle and case.needle not in line:
        why.append(f"{case.needle!r} not in the line")
    if case.check:
        problem = case.check(work)
        if problem:
            why.append(problem)
    return Result(case, shown, p.returncode, line.replace(world, "WORLD").replace(str(work), "W"), not why, "; ".join(why), dt)


def markdown(results: list[Result]) -> str:
    held = sum(r.ok and not r.skipped for r in results)
    skipped = sum(r.skipped for r in results)
    out = [f"{len(results)} cases: {held} held, {len(results) - held - skipped} failed, {skipped} skipped.", "",
           "| # | class | case | command (`deployzoo ...`, W = a fresh work dir, WORLD = the shared tiny engines and images) | exit | what it printed | result |",
           "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        res = "skipped: " + r.why if r.skipped else ("held" if r.ok else f"**FAILED**: {r.why}")
        cmd = r.command if len(r.command) < 110 else r.command[:107] + "..."
        line = r.line if len(r.line) < 180 else r.line[:177] + "..."
        out.append(f"| {i} | {r.case.group} | {r.case.name} | `{cmd}` | {r.code if r.code is not None else '-'} | "
                   f"{line.replace('|', '/') or '-'} | {res} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="markdown file to write the table to")
    ap.add_argument("--into", type=Path, help="markdown file whose '## The matrix' section the table replaces")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dz-faults-"))
    try:
        w = make_world(root / "world")
        results = []
        for i, case in enumerate(cases(w)):
            if args.only and args.only not in case.name:
                continue
            work = root / f"case{i:03d}"
            work.mkdir()
            r = run_case(case, work)
            for h in HOLDERS:
                h.kill()
            HOLDERS.clear()
            print(f"{'ok  ' if r.ok else 'FAIL'} {case.group:10s} {case.name:55s} {r.code} {r.seconds:5.1f}s "
                  f"{r.why}", flush=True)
            results.append(r)
        text = markdown(results)
        if args.out:
            args.out.write_text(text)
        if args.into:
            head = args.into.read_text().split(MATRIX_HEADING)[0]
            args.into.write_text(f"{head}{MATRIX_HEADING}\n\n{text}")
        print(text.splitlines()[0])
        sys.exit(0 if all(r.ok for r in results) else 1)
    finally:
        subprocess.run(["umount", "-l", *map(str, root.glob("case*/mnt"))], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

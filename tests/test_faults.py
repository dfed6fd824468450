"""Fault matrix (issue 12), classes 1-5: usage errors and interruption, output safety, engine integrity, predict
locking and resume identity, run / bench refusals. Every case ends in one line, a non-zero exit where it is an
error, and nothing of the user's lost. Bad images and sources: test_faults_inputs.py; bad eval inputs:
test_faults_eval.py. docs/reliability.md lists the whole matrix with the command of each case."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployzoo import __version__
from deployzoo.cli import main
from deployzoo.errors import DeployzooError


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str, code: int, *needles: str, prefix: str = "deployzoo: error:") -> str:
    """The stderr of a failed command: exactly one `deployzoo: error:` line, no traceback; returns the line."""
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("deployzoo:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults-imgs")
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(d / f"im{i}.jpg"), rng.integers(0, 255, (60 + 7 * i, 80, 3), dtype=np.uint8))
    return d


def copy_engine(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(eng: Path, fn) -> None:
    p = eng / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def records(out: Path) -> list[str]:
    """Image names of the complete records (a torn last line left by a failed write is not one)."""
    from deployzoo.records import iter_records

    return [r["image"] for r in iter_records(out)] if (out / "predictions.jsonl").is_file() else []


# ------------------------------------------------------------------ 1. CLI errors, --version, interruption

@pytest.mark.parametrize("args,needle", [
    (["export", "--bogus"], "No such option: --bogus"),
    (["nosuch"], "No such command 'nosuch'"),
    (["export", "retinaface"], "Missing option '-o'"),
    (["bench", "x", "--iters", "abc"], "Invalid value for '--iters'"),
    (["predict", "x", "--source", "y", "-o", "z", "--batch", "two"], "--batch"),
    (["export", "retinaface", "--imgsz", "-5", "10", "-o", "x.onnx"], "--imgsz"),
    (["eval", "coco", "--pred", "a.json"], "Missing option '--ann'"),
    (["run"], "Missing argument"),
])
def test_usage_errors_are_one_line_exit_2(args, needle, capsys):
    code, _, err = cli(args, capsys)
    assert code == 2
    one_error_line(err, code, needle)


def test_version(capsys):
    code, out, _ = cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"deployzoo {__version__}"


def test_internal_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    import deployzoo.registry as registry

    monkeypatch.setattr(registry, "model_names", lambda: 1 / 0)
    code, _, err = cli(["models"], capsys)
    assert code == 1
    one_error_line(err, code, "ZeroDivisionError", "-v", prefix="deployzoo: internal error:")


def test_ctrl_c_outside_a_stage_never_exits_0(monkeypatch, capsys):
    """typer >= 0.29 turns a KeyboardInterrupt into a returned 130 (standalone_mode=False), which main ignored."""
    import deployzoo.registry as registry

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "model_names", interrupted)
    code, _, err = cli(["models"], capsys)
    assert code == 130 and "interrupted" in err


def test_ctrl_c_during_predict_keeps_records_and_resume_finishes(tiny_engine, images, tmp_path, monkeypatch, capsys):
    import deployzoo.predict as predict_mod

    real = predict_mod.run_batches

    def stop_after_two(loaded, items, **kw):
        on_result = kw["on_result"]
        n = [0]

        def counting(*a):
            on_result(*a)
            n[0] += 1
            if n[0] == 2:
                raise KeyboardInterrupt

        real(loaded, items, **{**kw, "on_result": counting})

    out = tmp_path / "p"
    monkeypatch.setattr(predict_mod, "run_batches", stop_after_two)
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", out], capsys)
    assert code == 130
    one_error_line(err, code, "2 images", "--resume", prefix="deployzoo: interrupted:")
    assert len(records(out)) == 2
    monkeypatch.setattr(predict_mod, "run_batches", real)
    code, out_text, _ = cli(["predict", tiny_engine, "--source", images, "-o", out, "--resume"], capsys)
    assert code == 0 and "4 images predicted (2 already done" in out_text
    assert sorted(records(out)) == sorted(p.name for p in images.iterdir())


def test_ctrl_c_during_build_bench_run_export_exits_130(tiny_onnx, tiny_engine, tmp_path, monkeypatch, capsys):
    import deployzoo.bench as bench_mod
    import deployzoo.build as build_mod
    import deployzoo.export as export_mod
    import deployzoo.run as run_mod

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    class Backend:
        name, precisions, needs_onnx = "ort", ("fp32",), True
        build = staticmethod(interrupt)

    monkeypatch.setattr(build_mod, "get_backend", lambda name: Backend())
    code, _, err = cli(["build", tiny_onnx, "-o", tmp_path / "eng"], capsys)
    assert code == 130
    one_error_line(err, code, "no engine written", prefix="deployzoo: interrupted:")
    assert not (tmp_path / "eng").exists() and not list(tmp_path.glob(".eng.deployzoo-tmp-*"))  # no half engine, no temp

    monkeypatch.setattr(bench_mod, "_time_batch", interrupt)
    code, _, err = cli(["bench", tiny_engine, "--iters", "1"], capsys)
    assert code == 130 and "interrupted" in err

    monkeypatch.setattr(run_mod, "cached_engine", interrupt)
    code, _, err = cli(["run", "retinaface", "--precisions", "fp32", "-o", tmp_path / "run"], capsys)
    assert code == 130
    one_error_line(err, code, "run the same command again", prefix="deployzoo: interrupted:")

    monkeypatch.setattr(export_mod, "build_deploy_module", interrupt)
    code, _, err = cli(["export", "retinaface", "--imgsz", "64", "-o", tmp_path / "m.onnx"], capsys)
    assert code == 130 and not (tmp_path / "m.onnx").exists()


def test_ctrl_c_redressed_by_a_c_extension_is_still_an_interruption(tiny_onnx, tmp_path, monkeypatch, capsys):
    """A SIGINT that lands inside a C extension's import comes out as `ImportError: initialization failed`
    (pybind11; seen with onnxruntime.quantization during an int8 build): exit 130, not an internal error."""
    import deployzoo.build as build_mod

    def import_hit_by_ctrl_c(*a, **k):
        try:
            # the real signal, through the handler main installs; aimed at the main thread (os.kill lets the kernel
            # hand it to any thread, e.g. a runtime's pool left by an earlier test, and the sleep then runs out)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    class Backend:
        name, precisions, needs_onnx = "ort", ("fp32",), True
        build = staticmethod(import_hit_by_ctrl_c)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # what a terminal gives main, whatever ran before
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(build_mod, "get_backend", lambda name: Backend())
    code, _, err = cli(["build", tiny_onnx, "-o", tmp_path / "eng"], capsys)
    assert code == 130
    one_error_line(err, code, "no engine written", prefix="deployzoo: interrupted:")
    assert signal.getsignal(signal.SIGINT) is before  # main puts the caller's handler back

    def plain_import_error(*a, **k):  # the same error without a Ctrl-C stays an internal error
        raise ImportError("initialization failed")

    Backend.build = staticmethod(plain_import_error)
    code, _, err = cli(["build", tiny_onnx, "-o", tmp_path / "eng"], capsys)
    assert code == 1 and "internal error: ImportError" in err


def test_real_sigint_during_predict_exits_130_and_keeps_records(tiny_onnx, tmp_path):
    """A real SIGINT to a real process (no monkeypatching): exit 130, one line, the finished records kept."""
    from deployzoo.build import build_engine

    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(400):
        cv2.imwrite(str(src / f"{i:03d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    eng = build_engine(tiny_onnx, tmp_path / "eng")
    out = tmp_path / "p"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "deployzoo", "predict", str(eng), "--source", str(src), "-o",
                          str(out), "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    deadline = time.time() + 120
    pred = out / "predictions.jsonl"
    while time.time() < deadline and p.poll() is None and not (pred.is_file() and pred.stat().st_size > 0):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0 and len(records(out)) == 400:
        pytest.skip("predict finished before the signal arrived")
    assert p.returncode == 130, err  # an interrupted run never exits 0
    one_error_line(err, p.returncode, "--resume", prefix="deployzoo: interrupted:")
    assert 0 < len(records(out)) < 400


# ------------------------------------------------------------------ 2. output safety

def test_build_refuses_to_replace_what_is_not_an_engine(tiny_onnx, tmp_path, monkeypatch, capsys):
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    code, _, err = cli(["build", tiny_onnx, "-o", plain], capsys)
    one_error_line(err, code, str(plain), "is a file")
    assert plain.read_text() == "keep me"
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    code, _, err = cli(["build", tiny_onnx, "-o", other], capsys)
    one_error_line(err, code, str(other), "not a deployzoo engine directory")
    assert (other / "a.jpg").read_bytes() == b"x"
    monkeypatch.chdir(tmp_path)
    for o in (".", str(tmp_path), str(tmp_path.parent)):
        code, _, err = cli(["build", tiny_onnx, "-o", o], capsys)
        one_error_line(err, code, "current directory")
    assert plain.exists() and other.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["build", tiny_onnx, "-o", empty], capsys)[0] == 0  # an empty dir and an engine are replaceable
    assert cli(["build", tiny_onnx, "-o", empty, "--conf", "0.5"], capsys)[0] == 0
    assert json.loads((empty / "manifest.json").read_text())["postprocess"]["conf"] == 0.5


def test_export_refuses_to_overwrite_what_is_not_its_onnx(tiny_onnx, tmp_path, monkeypatch, capsys):
    plain = tmp_path / "model.onnx"
    plain.write_bytes(b"someone else's model")
    code, _, err = cli(["export", "retinaface", "--imgsz", "64", "-o", plain], capsys)
    one_error_line(err, code, str(plain), "not an ONNX file exported by deployzoo")
    assert plain.read_bytes() == b"someone else's model"
    code, _, err = cli(["export", "retinaface", "--imgsz", "64", "-o", tmp_path], capsys)
    one_error_line(err, code, "is a directory")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["export", "retinaface", "--imgsz", "64", "-o", "."], capsys)
    one_error_line(err, code, "current directory")
    ours = tmp_path / "ours.onnx"
    shutil.copyfile(tiny_onnx, ours)
    assert cli(["export", "retinaface", "--imgsz", "64", "-o", ours], capsys)[0] == 0  # its own file: replaced


def test_predict_refuses_foreign_outputs(tiny_engine, images, tmp_path, monkeypatch, capsys):
    plain = tmp_path / "out.txt"
    plain.write_text("keep")
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", plain], capsys)
    one_error_line(err, code, str(plain), "is a file")
    other = tmp_path / "docs"
    other.mkdir()
    (other / "thesis.tex").write_text("keep")
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", other, "--overwrite"], capsys)
    one_error_line(err, code, "not a predict output")
    assert (other / "thesis.tex").read_text() == "keep" and len(list(other.iterdir())) == 1
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", "."], capsys)
    one_error_line(err, code, "current directory")


def test_save_img_write_failure_is_an_error(tiny_engine, images, tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "vis").write_text("a file where the images should go")
    (out / "predictions.jsonl").write_text("")
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", out, "--save-img", "--overwrite"], capsys)
    one_error_line(err, code, str(out / "vis"), "cannot write", "--resume")


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A 300 KiB tmpfs: writes beyond it fail with ENOSPC (needs root and mount; skipped otherwise)."""
    d = tmp_path / "full"
    if not _mount_tmpfs(d, "size=300k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def read_only(tmp_path):
    """A read-only location: a read-only tmpfs as root (root ignores mode bits), else a 0555 directory."""
    d = tmp_path / "ro"
    if os.geteuid() == 0:
        if not _mount_tmpfs(d, "ro,size=64k"):
            pytest.skip("cannot mount a read-only tmpfs here")
        yield d
        subprocess.run(["umount", "-l", str(d)], check=False)
    else:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_full_disk_is_one_line_and_predict_resumes(tiny_onnx, tiny_engine, images, full_disk, capsys):
    code, _, err = cli(["export", "retinaface", "--imgsz", "64", "-o", full_disk / "m.onnx"], capsys)
    one_error_line(err, code, str(full_disk / "m.onnx"), "No space left on device")
    code, _, err = cli(["build", tiny_onnx, "-o", full_disk / "eng"], capsys)
    one_error_line(err, code, str(full_disk / "eng"), "No space left on device")
    assert sorted(p.name for p in full_disk.iterdir()) == []  # no temporaries left behind
    filler = full_disk / "filler"
    filler.write_bytes(b"\0" * (300 * 1024 - 20 * 1024))  # leave room for the settings and a few records
    out = full_disk / "p"
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", out], capsys)
    one_error_line(err, code, "No space left on device", "--resume")
    kept = records(out)
    filler.unlink()
    code, _, _ = cli(["predict", tiny_engine, "--source", images, "-o", out, "--resume"], capsys)
    assert code == 0
    names = records(out)
    assert names[: len(kept)] == kept and sorted(names) == sorted(p.name for p in images.iterdir())


def test_read_only_output_is_one_line(tiny_onnx, tiny_engine, images, read_only, capsys):
    for args in (["export", "retinaface", "--imgsz", "64", "-o", read_only / "m.onnx"],
                 ["build", tiny_onnx, "-o", read_only / "eng"],
                 ["predict", tiny_engine, "--source", images, "-o", read_only / "p"],
                 ["build", tiny_onnx, "-o", read_only / "sub" / "eng"]):
        code, _, err = cli(args, capsys)
        line = one_error_line(err, code, str(read_only))
        assert "Read-only file system" in line or "Permission denied" in line
        assert "DecodeError" not in err


def test_artifacts_have_normal_umask_permissions(tiny_onnx, images, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        assert cli(["export", "retinaface", "--imgsz", "64", "-o", tmp_path / "m.onnx"], capsys)[0] == 0
        assert cli(["build", tmp_path / "m.onnx", "-o", tmp_path / "eng"], capsys)[0] == 0
        assert cli(["predict", tmp_path / "eng", "--source", images, "-o", tmp_path / "p"], capsys)[0] == 0
    finally:
        os.umask(old)
    for p in [tmp_path / "m.onnx", tmp_path / "eng", *(tmp_path / "eng").iterdir(), tmp_path / "p",
              *(tmp_path / "p").iterdir()]:
        want = 0o750 if p.is_dir() else 0o640
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode & 0o777))


def test_temporaries_of_killed_builds_are_cleaned_on_the_next_build(tiny_onnx, tmp_path):
    from deployzoo.build import build_engine

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".eng.deployzoo-tmp-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    stale_old = tmp_path / f".other.deployzoo-old-{dead.pid}-ef01"  # another output's: cleaned too
    stale_old.mkdir()
    live = tmp_path / f".eng.deployzoo-tmp-{os.getpid()}-live"  # a build still running (this process): left alone
    live.mkdir()
    build_engine(tiny_onnx, tmp_path / "eng")
    assert not stale.exists() and not stale_old.exists() and live.exists()
    assert (tmp_path / "eng" / "manifest.json").is_file()


# ------------------------------------------------------------------ 3. engine integrity

def test_corrupted_truncated_or_missing_model_file_is_refused(tiny_engine, images, tmp_path, capsys):
    bad = copy_engine(tiny_engine, tmp_path / "flipped")
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    code, _, err = cli(["predict", bad, "--source", images, "-o", tmp_path / "p1"], capsys)
    one_error_line(err, code, str(bad / "model.onnx"), "sha256")
    short = copy_engine(tiny_engine, tmp_path / "short")
    (short / "model.onnx").write_bytes((short / "model.onnx").read_bytes()[:1000])
    code, _, err = cli(["bench", short, "--iters", "1"], capsys)
    one_error_line(err, code, "truncated")
    gone = copy_engine(tiny_engine, tmp_path / "gone")
    (gone / "model.onnx").unlink()
    code, _, err = cli(["predict", gone, "--source", images, "-o", tmp_path / "p3"], capsys)
    one_error_line(err, code, "missing")
    assert not (tmp_path / "p1" / "predictions.jsonl").exists() or not records(tmp_path / "p1")


def _set(path: str, value):
    def fn(m):
        keys = path.split(".")
        d = m
        for k in keys[:-1]:
            d = d[k]
        if value is KeyError:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return fn


@pytest.mark.parametrize("edit,key", [
    (_set("postprocess", KeyError), "'postprocess'"),
    (_set("postprocess.iou", KeyError), "'postprocess'"),
    (_set("postprocess.conf", 1.5), "'postprocess.conf'"),
    (_set("postprocess.max_det", "many"), "'postprocess.max_det'"),
    (_set("batch", [1, 8]), "'batch'"),
    (_set("batch", {"dynamic": True, "min": 4, "max": 2}), "'batch'"),
    (_set("batch", {"dynamic": False, "size": 4}), "'batch.size'"),  # the model file's batch axis is dynamic
    (_set("input.imgsz", [128, 128]), "'input.imgsz'"),  # the model file's input is 64 x 64
    (_set("input.imgsz", "origin"), "'input.imgsz'"),
    (_set("input.imgsz", [64]), "'input.imgsz'"),
    (_set("input.mean", [1, 2]), "'input.mean'"),
    (_set("input.name", "pixels"), "'input.name'"),
    (_set("task", "classification"), "'task'"),
    (_set("model", "resnet9000"), "'model'"),
    (_set("variant", "x9"), "'variant'"),
    (_set("precision", "fp8"), "'precision'"),
    (_set("backend", "tensorrt"), "'backend'"),
    (_set("outputs", ["logits"]), "'outputs'"),
    (_set("model_file", "../../etc/passwd"), "'model_file'"),
    (_set("files", KeyError), "'files'"),
    (lambda m: m.__setitem__("files", {}), "'files'"),
    (lambda m: m["files"]["model.onnx"].__setitem__("sha256", "abc"), "'files.model.onnx'"),
])
def test_manifest_is_validated_on_load(tiny_engine, images, tmp_path, edit, key, capsys):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, edit)
    code, _, err = cli(["predict", eng, "--source", images, "-o", tmp_path / "p"], capsys)
    one_error_line(err, code, str(eng / "manifest.json"), key)


def test_engine_of_an_older_format_says_rebuild(tiny_engine, images, tmp_path, capsys):
    eng = copy_engine(tiny_engine, tmp_path / "eng")
    edit_manifest(eng, _set("format", "deployzoo-engine/1"))
    code, _, err = cli(["bench", eng, "--iters", "1"], capsys)
    one_error_line(err, code, "older deployzoo")


def test_manifest_records_every_file_hash(tiny_engine):
    from deployzoo.checkpoint import file_sha256

    m = json.loads((tiny_engine / "manifest.json").read_text())
    assert set(m["files"]) == {"model.onnx"}
    assert m["files"]["model.onnx"]["sha256"] == file_sha256(tiny_engine / "model.onnx")
    assert m["files"]["model.onnx"]["bytes"] == (tiny_engine / "model.onnx").stat().st_size


# ------------------------------------------------------------------ 4. locking and resume identity

def test_second_predict_into_the_same_dir_is_refused_while_the_first_runs(tiny_engine, images, tmp_path, capsys):
    from deployzoo.files import DirLock

    out = tmp_path / "p"
    out.mkdir()
    with DirLock(out, "predict"):  # the first run holds it (flock: another open file description conflicts)
        code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", out], capsys)
        one_error_line(err, code, "another predict is writing here", f"pid {os.getpid()}")
    assert cli(["predict", tiny_engine, "--source", images, "-o", out], capsys)[0] == 0  # released: runs


def test_resume_with_other_engine_or_thresholds_is_refused(tiny_onnx, tiny_engine, images, tmp_path, capsys):
    from deployzoo.build import build_engine

    out = tmp_path / "p"
    assert cli(["predict", tiny_engine, "--source", images, "-o", out], capsys)[0] == 0
    before = (out / "predictions.jsonl").read_bytes()
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", out, "--resume", "--conf", "0.5"], capsys)
    one_error_line(err, code, "conf 0.02 -> 0.5", "--overwrite")
    other = build_engine(tiny_onnx, tmp_path / "int8", precision="int8", calib=images, calib_size=4)
    code, _, err = cli(["predict", other, "--source", images, "-o", out, "--resume"], capsys)
    one_error_line(err, code, "different engine")
    code, _, err = cli(["predict", tiny_engine, "--source", images, "-o", out, "--resume", "--format", "widerface"],
                       capsys)
    one_error_line(err, code, "--format")
    assert (out / "predictions.jsonl").read_bytes() == before  # refused runs changed nothing
    code, text, _ = cli(["predict", tiny_engine, "--source", images, "-o", out, "--resume"], capsys)
    assert code == 0 and "6 already done" in text
    assert cli(["predict", other, "--source", images, "-o", out, "--overwrite"], capsys)[0] == 0
    st = json.loads((out / "predict_settings.json").read_text())
    assert st["engine"]["precision"] == "int8" and st["postprocess"]["conf"] == 0.02


# ------------------------------------------------------------------ 5. run / bench refusals

@pytest.mark.parametrize("precs", ["", ",", " , "])
def test_run_without_precisions_fails_before_any_work(precs, tmp_path, capsys):
    code, _, err = cli(["run", "retinaface", "--precisions", precs, "-o", tmp_path / "run"], capsys)
    one_error_line(err, code, "--precisions")
    assert not (tmp_path / "run").exists()


def test_bench_with_no_supported_batch_exits_non_zero(tmp_path, capsys):
    from deployzoo.build import build_engine
    from deployzoo.export import export_onnx

    onnx_path = export_onnx("retinaface", tmp_path / "b4.onnx", imgsz=[64, 64], batch=4).path
    eng = build_engine(onnx_path, tmp_path / "eng")
    code, _, err = cli(["bench", eng, "--batch", "1,2", "--iters", "1", "--json", tmp_path / "b.json"], capsys)
    one_error_line(err, code, "none of the batch sizes 1, 2", "exactly 4")
    assert not (tmp_path / "b.json").exists()
    with pytest.raises(DeployzooError):
        from deployzoo.bench import BenchConfig, bench_engine

        bench_engine(eng, BenchConfig(batches=(8,), iters=1, warmup=0))

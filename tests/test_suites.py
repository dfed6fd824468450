"""Suites: one per dataset under deployzoo.suites, declared by the Suite base, named by every task."""

from __future__ import annotations

import pytest

from deployzoo.registry import get_model, get_suite, get_task, model_names, suite_names
from deployzoo.suites.base import Suite


def test_every_task_names_a_registered_suite():
    for m in model_names():
        task = get_task(get_model(m).task)
        assert task.suite in suite_names(), (m, task.suite)


def test_suite_base_requires_the_scoring():
    class Half(Suite):
        accuracy_headers, agreement_header, agreement_nan, calib_hint = ("A",), "x", "y", "z"

        def __init__(self, data, work_dir, gt=None, demo_images=None):
            pass

    with pytest.raises(TypeError, match="abstract"):
        Half("demo", None)


@pytest.mark.parametrize("name", suite_names())
def test_each_suite_writes_its_demo_once_and_declares_its_report(name, tmp_path):
    cls = get_suite(name)
    assert issubclass(cls, Suite)
    for attr in ("accuracy_headers", "agreement_header", "agreement_nan", "agreement_definition", "calib_hint"):
        assert getattr(cls, attr), attr
    s = cls("demo", tmp_path, None, 4)
    assert s.source.exists() and s.calib_default is not None and s.calib_default.exists()
    assert s.calib_default.resolve() not in s.source.resolve().parents  # calibration outside the evaluation set
    assert "demo" in s.name
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = cls("demo", tmp_path, None, 4)  # an earlier run's demo is reused, not rewritten
    assert again.source == s.source
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamp
    post = {"conf": 0.5, "iou": 0.4, "top_k": 10, "max_det": 5, "mask_thr": 0.5}
    assert isinstance(s.settings("origin" if name == "widerface" else [224, 224], post), str)


def test_unknown_suite_is_one_line():
    from deployzoo.errors import DeployzooError

    with pytest.raises(DeployzooError, match="unknown suite 'kitti'"):
        get_suite("kitti")


def test_metrics_on_too_few_samples_are_named():
    """IJB-C's TAR@FAR=1e-5 needs 1e5 impostor pairs to be a rate at all; top-1 on a few images moves in big steps."""
    ijbc, imagenet = get_suite("ijbc"), get_suite("imagenet")
    few = ijbc.sample_warnings(ijbc, {"n_neg": 16, "n_pos": 16})
    assert few == ["TAR@FAR=1e-05 rests on 16 impostor pairs, fewer than 1/FAR = 100000: its threshold is the highest "
                   "impostor score, not that false-accept rate",
                   "TAR@FAR=0.0001 rests on 16 impostor pairs, fewer than 1/FAR = 10000: its threshold is the highest "
                   "impostor score, not that false-accept rate",
                   "TAR rests on 16 genuine pairs: one pair is 6.25 points"]
    assert ijbc.sample_warnings(ijbc, {"n_neg": 50_000, "n_pos": 5_000}) == [
        "TAR@FAR=1e-05 rests on 50000 impostor pairs, fewer than 1/FAR = 100000: its threshold is the highest "
        "impostor score, not that false-accept rate"]
    assert ijbc.sample_warnings(ijbc, {"n_neg": 10 ** 8, "n_pos": 10 ** 5}) == []  # the real IJB-C: 15.7M / 19.6k
    assert imagenet.sample_warnings(imagenet, {"n": 8}) == ["top-1 / top-5 rest on 8 images: one image is 12.50 points"]
    assert imagenet.sample_warnings(imagenet, {"n": 50_000}) == []



def test_classifier_report_names_the_classes(tmp_path):
    """Issue 15: ImageNet class names in the report: the images where a precision's top-1 differs from fp32's,
    with the label's and each engine's class name (synset order, ImageNet-1k's names)."""
    import json

    s = get_suite("imagenet")("demo", tmp_path, None, 4)
    names = sorted(s.set.labels)
    dirs = {}
    for prec, tops in (("fp32", [0, 1, 2, 3]), ("int8", [0, 1, 7, 3])):
        d = dirs[prec] = tmp_path / prec
        d.mkdir()
        (d / "predictions.jsonl").write_text("".join(
            json.dumps({"image": n, "topk": [[c, 0.5], [999, 0.1]]}) + "\n" for n, c in zip(names, tops)))
    md = "\n".join(s.examples(dirs))
    assert "## Predictions by class name" in md and "(1 shown)" in md
    label = s.class_name(s.set.labels[names[2]])
    assert f"| {names[2]} | {label} | {s.class_name(2)} (50.0%) | {s.class_name(7)} (50.0%) |" in md
    assert s.class_name(0) == "tench" and s.class_name(7) == "cock" and s.class_name(5000) == "class 5000"
    same = "\n".join(s.examples({"fp32": dirs["fp32"], "int8b": dirs["fp32"]}))
    assert "Every precision gives fp32's top-1 class on every image" in same and same.count("\n| ") == 5  # head + 4

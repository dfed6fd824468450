"""The typed engine description (deployzoo.engine.Engine, deployzoo.specs): read and validated once from the
manifest, read by attribute afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployzoo.engine import Engine, read_manifest
from deployzoo.errors import DeployzooError
from deployzoo.registry import get_model, model_names
from deployzoo.specs import BatchSpec, InputSpec


def test_input_spec_round_trips_and_keeps_task_parameters():
    d = {"name": "x", "imgsz": [224, 224], "color": "rgb", "mean": [1, 2, 3], "std": [4, 5, 6],
         "extra_inputs": ["image_sizes"], "exif_orientation": True, "layout": "NCHW", "dtype": "float32",
         "resize": 256, "crop": 224, "interpolation": "bicubic"}
    s = InputSpec.from_dict(d)
    assert s.imgsz == (224, 224) and not s.origin and s.color == "RGB" and not s.bgr
    assert s.mean == (1.0, 2.0, 3.0) and s.input_names == ["x", "image_sizes"]
    assert dict(s.params) == {"resize": 256, "crop": 224, "interpolation": "bicubic"}
    assert InputSpec.from_dict(s.to_dict()) == s
    assert json.loads(json.dumps(s.to_dict())) == {**d, "color": "RGB"}
    # every registry model's input spec survives the trip (what export writes into the graph and build copies)
    for name in model_names():
        spec = get_model(name)
        for v in spec.variants:
            s = InputSpec.from_dict({**spec.input_for(v), "imgsz": "origin"})
            assert InputSpec.from_dict(s.to_dict()) == s and s.color in ("BGR", "RGB")
    assert InputSpec().origin and InputSpec().bgr  # absent keys: any size, BGR, no normalisation


def test_batch_spec_rules():
    dyn, fixed = BatchSpec.from_dict({"dynamic": True, "min": 2, "max": 8}), BatchSpec.from_dict(
        {"dynamic": False, "size": 4})
    assert [n for n in range(10) if dyn.allows(n)] == list(range(2, 9)) and dyn.default() == 2
    assert [n for n in range(10) if fixed.allows(n)] == [4] and fixed.default() == 4
    assert dyn.rule() == "2..8" and fixed.rule() == "exactly 4 (fixed-batch engine)"
    assert BatchSpec.from_dict(dyn.to_dict()) == dyn and BatchSpec.from_dict(fixed.to_dict()) == fixed
    with pytest.raises(DeployzooError, match=r"^here: batch 5 not supported by this engine: batch must be exactly 4"):
        fixed.check(5, "here")
    fixed.check(4, "here")


def test_engine_load_reads_the_manifest_once_typed(tiny_engine):
    e = Engine.load(tiny_engine)
    m = read_manifest(tiny_engine)
    assert (e.model, e.variant, e.task, e.backend, e.precision) == (m["model"], m["variant"], m["task"],
                                                                    m["backend"], m["precision"])
    assert e.model_path == tiny_engine / m["model_file"] and e.model_sha256 == m["files"][m["model_file"]]["sha256"]
    assert e.input == InputSpec.from_dict(m["input"]) and e.input.imgsz == (64, 64)
    assert e.batch == BatchSpec.from_dict(m["batch"]) and e.batch.dynamic
    assert dict(e.post) == m["postprocess"] and e.outputs == tuple(m["outputs"])
    assert e.graph_sha256 == m["source_graph"]["sha256"] and e.label == "retinaface-mobilenet0.25"


def test_engine_load_checks_the_files(tiny_engine, tmp_path):
    import shutil

    bad = tmp_path / "eng"
    shutil.copytree(tiny_engine, bad)
    e = Engine.load(bad)
    with open(e.model_path, "r+b") as f:  # one byte changed, same size
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(DeployzooError, match="sha256 differs"):
        Engine.load(bad)
    assert Engine.load(bad, verify=False).model == "retinaface"  # the manifest alone is still valid


def test_tasks_declare_their_hooks():
    """Task is an abstract base: the generic code calls every hook; which tasks take the device pipeline
    follows from what they override."""
    from deployzoo.registry import get_task
    from deployzoo.tasks.base import Task

    tasks = {n: get_task(n) for n in ("face_detection", "classification", "face_recognition",
                                      "instance_segmentation")}
    assert all(isinstance(t, Task) for t in tasks.values())
    assert {n for n, t in tasks.items() if t.has_tensor_hooks} == {"face_detection", "classification"}
    assert {n for n, t in tasks.items() if t.runs_own_inference} == {"face_recognition"}
    with pytest.raises(TypeError, match="abstract"):
        type("Half", (Task,), {"name": "half", "prepare": lambda self, img, spec, meta=None: None})()

    class Plain(Task):
        name = "plain"
        prepare = collate = postprocess = render = lambda self, *a, **k: None

    t, runner = Plain(), type("R", (), {"run": lambda self, x: {"y": x}})()
    assert t.infer(runner, 3, {}) == {"y": 3} and t.open_format("x", Path("."), [], False) is None
    assert not t.has_tensor_hooks and not t.runs_own_inference and t.tensor_spec_ok(InputSpec())
    with pytest.raises(NotImplementedError):
        t.prepare_tensors([], InputSpec(), [])


def test_runners_declare_what_they_take(tiny_onnx, tiny_engine, tmp_path):
    """Runner / TensorRunner protocols: callers read takes_tensors instead of probing for run_tensors."""
    from deployzoo.backends.base import Runner, TensorRunner
    from deployzoo.build import build_engine
    from deployzoo.pipeline import load_engine

    ort = load_engine(tiny_engine).runner
    assert isinstance(ort, Runner) and not isinstance(ort, TensorRunner) and not ort.takes_tensors
    ort.synchronize()  # a host runner has nothing to wait for
    eager = load_engine(build_engine(tiny_onnx, tmp_path / "torch", backend="torch", options={"device": "cpu"}),
                        device="cpu").runner
    assert isinstance(eager, TensorRunner) and eager.takes_tensors and eager.engine.backend == "torch"

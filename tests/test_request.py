"""BuildRequest: normalised once, capabilities enforced, identity for the cache, and the CLI options it generates."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deployzoo.errors import DeployzooError
from deployzoo.registry import backend_names, get_backend, get_model, model_names
from deployzoo.request import (BuildOptions, BuildRequest, Calibration, Recipe, cli_fields, request_kwargs,
                               request_options)


def test_create_normalises_names_and_size():
    r = BuildRequest.create("RetinaFace", imgsz="480x640", precision="force_float16")
    assert (r.model, r.variant, r.imgsz, r.precision) == ("retinaface", "mobilenet0.25", (480, 640), "fp16")
    assert r.recipe == Recipe.for_model(get_model("retinaface"), "mobilenet0.25")
    assert BuildRequest.create("retinaface", imgsz="origin").imgsz == "origin"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.precision = "fp32"  # type: ignore[misc]


@pytest.mark.parametrize("kw, words", [
    ({"variant": "nope"}, "unknown variant"),
    ({"batch": 0}, "--batch 0"),
    ({"precision": "int4"}, "unknown precision"),
    ({"backend": "tensorrt"}, "unknown backend"),
    ({"precision": "int8"}, "needs calibration images"),
    ({"backend": "ort", "options": {"tf32": False}}, "tf32 applies only to the backends that take it"),
    ({"backend": "ort", "options": {"tf32": False, "cpu_streams": 2}}, "cpu_streams, tf32 apply only to the backends that take them (torch, aoti, openvino)"),
    ({"backend": "torch", "options": {"warp_speed": 1}}, "unknown build option"),
])
def test_create_refuses_bad_requests_in_one_line(kw, words):
    with pytest.raises(DeployzooError) as ei:
        BuildRequest.create("retinaface", **kw)
    assert words in str(ei.value) and "\n" not in str(ei.value)


def test_a_backend_whose_packages_are_missing_is_one_line(monkeypatch):
    from deployzoo import registry
    from deployzoo.backends.base import Capabilities

    class NeedsPkg:
        capabilities = Capabilities(precisions=("fp32",), requires=("no_such_package_dz", "onnx"))

    monkeypatch.setattr(registry, "get_backend", lambda name: NeedsPkg())
    with pytest.raises(DeployzooError, match=r"^backend needs_pkg needs no_such_package_dz \(pip install "
                                             r"no_such_package_dz\)$"):
        BuildRequest.create("retinaface", backend="needs_pkg")


@pytest.mark.parametrize("backend", backend_names())
def test_every_backend_declares_capabilities_that_create_enforces(backend):
    caps = get_backend(backend).capabilities
    assert "fp32" in caps.precisions and caps.devices
    if caps.missing():  # e.g. openvino on the GPU machine's stack
        pytest.skip(f"backend {backend} needs {', '.join(caps.missing())}")
    for p in ("fp32", "fp16", "bf16", "int8"):
        kw = {"calibration": Calibration(Path("calib"))} if p == "int8" else {}
        here = caps.machine_problem(p) if caps.machine_problem and p in caps.precisions else None
        if p in caps.precisions and not here:
            assert BuildRequest.create("mobilenetv1", backend=backend, precision=p, **kw).precision == p
        elif here:  # declared, but this CPU lacks it: the backend's own one line
            with pytest.raises(DeployzooError, match=f"this CPU has no {p}"):
                BuildRequest.create("mobilenetv1", backend=backend, precision=p, **kw)
        else:
            with pytest.raises(DeployzooError, match=p):
                BuildRequest.create("mobilenetv1", backend=backend, precision=p, **kw)
    sample = {"device": "cpu", "tf32": True, "channels_last": True, "cuda_graphs": False, "opt_batch": 4,
              "perf_hint": "throughput", "cpu_streams": 2}
    assert set(caps.options) <= set(sample) == {f.name for f in dataclasses.fields(BuildOptions)}
    for opt, value in sample.items():
        if opt in caps.options:  # taken, None values dropped
            r = BuildRequest.create("mobilenetv1", backend=backend, options={opt: value, "tf32": None} if opt != "tf32"
                                    else {opt: value})
            assert r.options == BuildOptions(**{opt: value}) and r.options.set() == {opt: value}
        else:
            with pytest.raises(DeployzooError, match=f"backend {backend}: build option {opt} applies only to the backends that take it"):
                BuildRequest.create("mobilenetv1", backend=backend, options={opt: value})


def test_calibration_validates_method_and_size():
    with pytest.raises(DeployzooError, match="--calib-method"):
        Calibration(Path("x"), method="median")
    with pytest.raises(DeployzooError, match="--calib-size 0"):
        Calibration(Path("x"), size=0)


def test_engine_identity_follows_what_changes_the_engine():
    base = BuildRequest.create("mobilenetv1", backend="ort", precision="fp16")
    ident = base.engine_identity("w", "1")
    assert ident["recipe"] == base.recipe.to_dict()  # ort's fp16 follows the recipe (ops kept fp32)
    fp32 = BuildRequest.create("mobilenetv1", backend="ort").engine_identity("w", "1")
    assert "recipe" not in fp32  # fp32 does not depend on it
    other = BuildRequest.create("mobilenetv1", backend="ort", precision="fp16",
                                recipe=dataclasses.replace(base.recipe, fp16_keep_ops=("Softmax",)))
    assert other.engine_identity("w", "1") != ident
    torch = BuildRequest.create("mobilenetv1", backend="torch", precision="fp16")
    assert "recipe" not in torch.engine_identity("w", "1")  # torch does not use one
    opts = BuildRequest.create("mobilenetv1", backend="torch", options={"tf32": False}).engine_identity("w", "1")
    assert opts["options"] == {"tf32": False}
    post = BuildRequest.create("retinaface", post={"conf": 0.5, "iou": None}).engine_identity("w", "1")
    assert post["post"] == {"conf": 0.5}
    # the calibration's images are not part of the request's equality, its file list is part of the identity
    assert Calibration(Path("a"), images=object()) == Calibration(Path("a"))


def test_float_groups_replace_only_the_int8_groups():
    spec = get_model("retinaface")
    r = BuildRequest.create("retinaface", precision="int8", calibration=Calibration(Path("c")), float_groups=())
    assert r.recipe.float_groups == () and r.recipe.fp16_keep_ops == tuple(spec.fp16_keep_ops)


def test_cli_fields_name_every_shared_option_once():
    table = cli_fields()
    for n in ("variant", "weights", "imgsz", "backend", "precision", "calib", "calib_size", "calib_method",
              "device", "tf32", "channels_last", "cuda_graphs", "opt_batch"):
        assert n in table
    flags = [f for _, _, c in table.values() for f in c.flags]
    assert len(flags) == len(set(flags))
    with pytest.raises(ValueError, match="not request options"):
        request_options("nonsense")


def test_request_options_generate_typer_flags_and_collect_them():
    app = typer.Typer()
    seen = {}

    @app.command()
    @request_options("precision", "calib", "calib_size", prefix="(x) ", defaults={"precision": "fp16"})
    @request_options("tf32")
    def cmd(model: str, req: dict = None):  # noqa: B006 - filled by request_options
        seen.update(req)

    params = inspect.signature(cmd).parameters
    assert list(params) == ["model", "tf32", "precision", "calib", "calib_size"]
    res = CliRunner().invoke(app, ["m", "--no-tf32", "--calib", "imgs", "--calib-size", "8"])
    assert res.exit_code == 0, res.output
    assert seen == {"precision": "fp16", "calib": Path("imgs"), "calib_size": 8, "tf32": False}
    kw = request_kwargs(seen)
    assert kw["calibration"] == Calibration(Path("imgs"), 8, "minmax") and kw["options"] == {"tf32": False}
    assert "(x) fp32 | fp16" in CliRunner().invoke(app, ["--help"]).output


@pytest.mark.parametrize("model", model_names())
def test_every_model_makes_a_default_request(model):
    spec = get_model(model)
    r = BuildRequest.create(model)
    assert r.variant == spec.default_variant and r.backend == "ort" and r.precision == "fp32"

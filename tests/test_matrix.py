"""Every registered model x every backend x every precision, at test sizes (the idea of timm's tests/test_models.py):
a new model file or a new backend is tested by being registered.

Each cell builds through the one `build(graph, out_dir, request)` path, predicts the generated demo set of the
model's suite through the real pre- and post-processing, scores it with the suite's official protocol, and
compares the network's outputs on a pre-processed batch of demo images with the ORT fp32 engine of the same graph
(relative L2 error per output, bounded per precision). A precision the backend does not declare must be refused in
one line by BuildRequest.create.

Weights are random (seed 0), so the suites' agreement metrics (top-1 agreement and the like) are no use here: a
random MobileNetV1 gives every image the same logits with the top two 1e-5 apart. A graph that selects its
detections itself (NMS inside: Mask R-CNN) is compared entry by entry at fp32 only; at lower precisions the cell
requires complete, scorable predictions and a defined agreement (which near-tied random detections survive NMS is
no measure of a backend).
Models too big for a 2-core CI at their real size run at a smaller one (SMALL below): a same-architecture VOLO,
Mask R-CNN with a smaller resize. A new model runs at its registry defaults until it earns an entry here.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from deployzoo import registry
from deployzoo.build import build
from deployzoo.errors import DeployzooError
from deployzoo.export import export_onnx
from deployzoo.models import base
from deployzoo.pipeline import StageTimes, load_engine, prefetch
from deployzoo.predict import predict
from deployzoo.request import BuildRequest, Calibration, Graph

DEMO_IMAGES = 4
CALIB_IMAGES = 4
BATCH = 2  # images in the compared batch


def _tiny_volo(variant: str, weights: Any) -> torch.nn.Module:
    from timm.models.volo import VOLO

    return VOLO(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(2, 2, 2, 2), stem_hidden_dim=8).eval()


def _small_maskrcnn(spec: base.ModelSpec) -> base.ModelSpec:
    return dataclasses.replace(spec, input={**spec.input, "resize": [320, 512]})


# model -> export keywords, and how its registry entry is shrunk (same architecture, smaller), for this module only
SMALL: dict[str, dict[str, Any]] = {
    "retinaface": {"export": {"variant": "mobilenet0.25", "imgsz": [128, 128]}},
    "arcface": {"export": {"variant": "r18"}},
    "volo_d2": {"spec": lambda s: dataclasses.replace(s, build=_tiny_volo)},
    "maskrcnn": {"export": {"variant": "mmdet_1x"}, "spec": _small_maskrcnn},
}

# largest relative L2 error ||out - ref|| / ||ref|| of each output against the ORT fp32 engine, per precision
# (measured on the tiny graphs, torch 2.14.1 / ORT 1.32, 2-core EPYC: fp32 <= 9e-7, fp16 <= 9e-4, bf16 <= 7e-3,
# int8 <= 6e-2 (ArcFace r18); about 5x margin)
MAX_REL_ERROR = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2, "int8": 0.2}

CELLS = [(m, b, p) for m in registry.model_names() for b in registry.backend_names() for p in registry.PRECISIONS]
# what a 2-core CI cannot afford, each with the reason (the rest of the matrix runs)
HEAVY = {
    ("maskrcnn", "aoti", None): "AOTInductor compiles Mask R-CNN only at a fixed batch (tests/test_maskrcnn.py checks "
                                "the refusal) and its CPU compile takes minutes",
    ("maskrcnn", "openvino", "fp16"): "OpenVINO 2026.4 f16 inference of Mask R-CNN took 320 s for this cell on the "
                                      "2-core CI machine (bf16: 5 s); the other openvino Mask R-CNN cells run",
}

# Cells that take 27-629 s each on the 2-core CI machine (AMD EPYC without avx512_fp16 / amx_fp16, where torch
# fp16 is emulated; aoti cells are mostly compile time) and add no path that mobilenetv1's cells of the same backend
# and precision lack: seconds measured there in a full run.
SLOW_CELLS = {
    ("maskrcnn", "torch", "fp16"): 629, ("arcface", "torch", "fp16"): 99, ("arcface", "aoti", "fp16"): 58,
    ("retinaface", "aoti", "fp16"): 46, ("volo_d2", "aoti", "fp16"): 30,
    ("retinaface", "aoti", "bf16"): 49, ("volo_d2", "aoti", "bf16"): 29, ("arcface", "aoti", "bf16"): 27,
    # aoti fp32: test_aoti.py compiles RetinaFace-mnet on the CPU anyway (its module fixture)
    ("retinaface", "aoti", "fp32"): 32, ("arcface", "aoti", "fp32"): 24, ("volo_d2", "aoti", "fp32"): 23,
}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def slow_on_this_cpu(model: str, backend: str, precision: str) -> str | None:
    seconds = SLOW_CELLS.get((model, backend, precision))
    if seconds is None or (precision == "fp16" and _cpu_flags() & {"avx512_fp16", "amx_fp16"}):
        return None
    why = "fp16 is emulated on this CPU" if precision == "fp16" else "mostly compile time"
    return (f"{model} {backend} {precision} took {seconds} s on the CI machine ({why}); mobilenetv1 keeps the "
            f"{backend} {precision} cell")


@pytest.fixture(scope="module")
def small_registry():
    with pytest.MonkeyPatch.context() as mp:
        for name, small in SMALL.items():
            shrink = small.get("spec")
            if shrink is None or name not in base.REGISTERED:
                continue
            reg = base.REGISTERED[name]
            mp.setitem(base.REGISTERED, name,
                       dataclasses.replace(reg, factory=lambda f=reg.factory, s=shrink: s(f())))
        yield


class ModelCase:
    """One model's graph, demo suite, calibration set and ORT fp32 reference predictions (made once)."""

    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, root
        self.spec = registry.get_model(name)
        task = registry.get_task(self.spec.task)
        self.suite = registry.get_suite(task.suite)("demo", root / "data", None, DEMO_IMAGES)
        kw = dict(SMALL.get(name, {}).get("export", {}))
        self.graph = Graph.read(export_onnx(name, root / "model.onnx", batch=None, check_parity=False, **kw).path)
        self.calib = Calibration(Path(self.suite.calib_default), CALIB_IMAGES, "minmax")
        # the graph selects detections itself (NMS inside): low-precision outputs are not comparable entry by entry
        self.selects = any(n.op_type == "NonMaxSuppression" for n in onnx.load(str(self.graph.path)).graph.node)
        self._ref: tuple[Path, dict[str, np.ndarray]] | None = None
        self._batch: Any = None

    def predict(self, engine_dir: Path, out: Path) -> Any:
        fmts = tuple(f for f in self.suite.pred_formats if f != "jsonl")
        return predict(engine_dir, self.suite.source, out, formats=("jsonl", *fmts), show_progress=False)

    def outputs(self, engine_dir: Path) -> dict[str, np.ndarray]:
        """The engine's raw outputs on the first BATCH demo images, pre-processed by the task (as predict does)."""
        loaded = load_engine(engine_dir)
        if self._batch is None:
            task, spec = loaded.task, loaded.engine.input
            _, items = task.list_source(self.suite.source)
            got = [r for r in prefetch(items[:BATCH], task, spec, StageTimes(), workers=1)]
            assert all(err is None for _, _, err in got), [err for _, _, err in got]
            self._batch = task.collate([prep for _, (_, prep), _ in got], spec)
        outs = loaded.task.infer(loaded.runner, self._batch, dict(loaded.engine.post))
        return {k: np.asarray(v.float().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
                for k, v in outs.items()}

    def reference(self) -> tuple[Path, dict[str, np.ndarray]]:
        """The ORT fp32 engine's predictions directory and raw outputs."""
        if self._ref is None:
            eng = build(self.graph, self.root / "ref_engine", BuildRequest.for_graph(self.graph))
            self.predict(eng.dir, self.root / "ref_pred")
            self._ref = self.root / "ref_pred", self.outputs(eng.dir)
        return self._ref


@pytest.fixture(scope="module")
def cases(small_registry, tmp_path_factory):
    made: dict[str, ModelCase] = {}

    def get(name: str) -> ModelCase:
        if name not in made:
            made[name] = ModelCase(name, tmp_path_factory.mktemp(f"matrix_{name}"))
        return made[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model,backend,precision", CELLS, ids=[f"{m}-{b}-{p}" for m, b, p in CELLS])
def test_model_backend_precision(model, backend, precision, cases, tmp_path):
    caps = registry.backend_capabilities(backend)
    if caps.missing():  # e.g. the GPU machine's stack has no openvino
        pytest.skip(f"backend {backend} needs {', '.join(caps.missing())}")
    here = caps.precision_problem(backend, precision) if precision in caps.precisions else None
    if here:  # declared, but this machine cannot (OpenVINO fp16 on a CPU without fp16): refused in one line
        with pytest.raises(DeployzooError) as exc:
            BuildRequest.create(model, backend=backend, precision=precision)
        assert str(exc.value) == here and "\n" not in here
        pytest.skip(here)
    if precision not in caps.precisions:
        with pytest.raises(DeployzooError) as exc:
            BuildRequest.create(model, backend=backend, precision=precision)
        assert str(exc.value) == caps.precision_problem(backend, precision) and "\n" not in str(exc.value)
        return
    heavy = (HEAVY.get((model, backend, None)) or HEAVY.get((model, backend, precision))
             or slow_on_this_cpu(model, backend, precision))
    if heavy:
        pytest.skip(heavy)
    case = cases(model)
    request = BuildRequest.for_graph(case.graph, backend=backend, precision=precision,
                                     calibration=case.calib if precision == "int8" else None)
    engine = build(case.graph, tmp_path / "engine", request)
    assert (engine.backend, engine.precision, engine.model) == (backend, precision, case.spec.name)
    if precision == "int8":  # quantized for real, not a float copy (random weights hide much of int8's error)
        assert engine.manifest.get("quantization"), f"{model} {backend}: int8 engine without a quantization record"
        if engine.model_file.endswith(".onnx"):
            ops = {n.op_type for n in onnx.load(str(engine.dir / engine.model_file)).graph.node}
            assert "QuantizeLinear" in ops or "QLinearConv" in ops, f"{model} {backend} int8: no quantized op"
        elif engine.model_file.endswith(".xml"):  # OpenVINO IR
            assert 'type="FakeQuantize"' in (engine.dir / engine.model_file).read_text(), f"{model} {backend} int8"

    summary = case.predict(engine.dir, tmp_path / "pred")
    assert summary.images >= 1 and summary.written == summary.images, f"{model} {backend} {precision}: {summary}"
    assert case.suite.evaluate(tmp_path / "pred")  # the official protocol reads what predict wrote

    ref_dir, ref = case.reference()
    got = case.outputs(engine.dir)
    assert set(got) >= set(case.graph.outputs), f"{model} {backend} {precision}: outputs {sorted(got)}"
    cell = f"{model} {backend} {precision}"
    for name in case.graph.outputs:
        a, b = got[name], ref[name]
        assert np.isfinite(a).all(), f"{cell}: {name} has NaN / inf"
        if a.shape == b.shape and (precision == "fp32" or not case.selects):
            err = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))
            assert err <= MAX_REL_ERROR[precision], f"{cell}: {name} relative error {err:.2e} vs ORT fp32"
        elif precision == "fp32":  # fp32 selecting different detections than fp32 is a bug
            agree = case.suite.agreement(ref_dir, tmp_path / "pred")
            assert math.isnan(agree) or agree >= 0.9, f"{cell}: {name} shape {a.shape} vs {b.shape}, agreement {agree}"
        else:  # detections selected in the graph (NMS): on random weights the scores are near ties, so which ones
            # survive moves with the precision (measured 0.02-0.92 for Mask R-CNN); the agreement must exist
            agree = case.suite.agreement(ref_dir, tmp_path / "pred")
            assert math.isnan(agree) == math.isnan(case.suite.agreement(ref_dir, ref_dir)), cell
            assert math.isnan(agree) or 0.0 <= agree <= 1.0, f"{cell}: agreement {agree}"

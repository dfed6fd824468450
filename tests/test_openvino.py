"""The openvino backend: precision forced and read back, performance hints, NNCF int8, the CLI path, refusals.
(tests/test_matrix.py runs it on every model at every precision.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("openvino", reason="the openvino backend needs openvino (a dependency)")

from conftest import run_cli  # noqa: E402

from deployzoo.backends import openvino as ovb  # noqa: E402
from deployzoo.build import build_engine  # noqa: E402
from deployzoo.errors import DeployzooError  # noqa: E402
from deployzoo.pipeline import load_engine  # noqa: E402
from deployzoo.request import Graph  # noqa: E402


def cpu_has(cap: str) -> bool:
    import openvino as ov

    return cap in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def manifest(engine: Path) -> dict:
    return json.loads((engine / "manifest.json").read_text())


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32) * 50


@pytest.fixture(scope="module")
def ov_fp32(tiny_onnx, tmp_path_factory) -> Path:
    return build_engine(tiny_onnx, tmp_path_factory.mktemp("ov") / "fp32", backend="openvino", precision="fp32")


def test_fp32_is_forced_and_read_back(ov_fp32, tiny_engine):
    m = manifest(ov_fp32)
    assert m["backend"] == "openvino" and m["model_file"] == "model.xml" and set(m["files"]) == {"model.xml",
                                                                                              "model.bin"}
    ov = m["openvino"]
    assert ov["inference_precision"] == "float32" and ov["performance_hint"] == "LATENCY" and ov["streams"] == 1
    assert m["options"] == {"perf_hint": "latency"} and ov["per_image_outputs"] is True
    got = load_engine(ov_fp32).runner.run(batch(3))
    ref = load_engine(tiny_engine).runner.run(batch(3))  # ORT fp32 of the same graph
    for k in ref:
        assert got[k].shape == ref[k].shape
        assert np.abs(got[k] - ref[k]).max() <= 1e-3 * max(1.0, float(np.abs(ref[k]).max()))


@pytest.mark.skipif(not cpu_has("BF16"), reason="this CPU has no bf16")
def test_bf16_runs_bf16(tiny_onnx, tmp_path):
    e = build_engine(tiny_onnx, tmp_path / "bf16", backend="openvino", precision="bf16")
    assert manifest(e)["openvino"]["inference_precision"] == "bfloat16"


def test_a_precision_this_cpu_lacks_is_refused_not_relabelled(tiny_onnx, tmp_path, monkeypatch):
    # OpenVINO runs an f16 hint as bf16 on a CPU without FP16 (AMD EPYC here) and reports bfloat16
    monkeypatch.setattr(ovb, "cpu_capabilities", lambda: ("BF16", "FP32", "INT8"))
    with pytest.raises(DeployzooError) as exc:
        build_engine(tiny_onnx, tmp_path / "f16", backend="openvino", precision="fp16")
    assert str(exc.value) == ("backend openvino: this CPU has no fp16 (OpenVINO's CPU capabilities: BF16, FP32, "
                              "INT8; it would run another precision under that name): choose fp32, bf16, int8")
    assert not (tmp_path / "f16").exists()
    monkeypatch.setattr(ovb, "cpu_capabilities", lambda: ("FP32", "INT8"))
    assert "choose fp32, int8" in ovb.machine_problem("bf16") and ovb.machine_problem("int8") is None
    # the read-back is the last word: a compiled model that runs another type than asked is not written
    monkeypatch.setattr(ovb, "cpu_capabilities", lambda: ("BF16", "FP16", "FP32", "INT8"))
    monkeypatch.setattr(ovb, "read_back", lambda compiled: {"inference_precision": "bfloat16"})
    with pytest.raises(DeployzooError, match="asked for float16 inference, the compiled model runs bfloat16; not "
                                             "written as fp16"):
        build_engine(tiny_onnx, tmp_path / "f16b", backend="openvino", precision="fp16")
    assert not (tmp_path / "f16b").exists()


def test_throughput_hint_splits_a_batch_over_streams_with_the_same_outputs(tiny_onnx, ov_fp32, tmp_path):
    e = build_engine(tiny_onnx, tmp_path / "tput", backend="openvino", options={"perf_hint": "throughput",
                                                                                "cpu_streams": 2})
    m = manifest(e)
    assert m["options"] == {"perf_hint": "throughput", "cpu_streams": 2}
    assert m["openvino"]["performance_hint"] == "THROUGHPUT" and m["openvino"]["streams"] == 2
    runner = load_engine(e).runner
    assert runner.split and runner.queue is not None
    x = batch(5, seed=3)
    got, ref = runner.run(x), load_engine(ov_fp32).runner.run(x)
    for k in ref:  # per-image requests, concatenated in order
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


def _graph(path: Path, out_dim0: str) -> Graph:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 4, 4])
    y = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [out_dim0, 4])
    node = helper.make_node("ReduceMean", ["images"], ["boxes"], axes=[2, 3], keepdims=0)
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y])), str(path))

    class G:  # the one attribute _per_image_outputs reads
        pass

    g = G()
    g.path = path
    return g  # type: ignore[return-value]


def test_only_per_image_outputs_are_split(tmp_path):
    assert ovb._per_image_outputs(_graph(tmp_path / "a.onnx", "batch"))
    assert not ovb._per_image_outputs(_graph(tmp_path / "b.onnx", "detections"))  # flat detections (Mask R-CNN)


def test_int8_by_nncf_through_the_cli(tiny_onnx, image_dir, tmp_path):
    out = tmp_path / "i8"
    run_cli(["build", str(tiny_onnx), "--backend", "openvino", "--precision", "int8", "--calib", str(image_dir),
             "--calib-size", "4", "-o", str(out)])
    m = manifest(out)
    q = m["quantization"]
    assert q["tool"].startswith("nncf ") and q["fake_quantize_ops"] > 0 and q["calibration_images_used"] == 4
    assert m["openvino"]["inference_precision"] == "float32"  # what NNCF leaves float runs f32
    assert 'type="FakeQuantize"' in (out / "model.xml").read_text()
    run_cli(["predict", str(out), "--source", str(image_dir), "-o", str(tmp_path / "pred")])
    assert len((tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()) == 4
    run_cli(["bench", str(out), "--batch", "1", "--iters", "2", "--warmup", "1", "--json",
             str(tmp_path / "b.json")])
    rows = json.loads((tmp_path / "b.json").read_text())
    assert rows and all(r["backend"] == "openvino" for r in (rows if isinstance(rows, list) else rows["rows"]))


def test_float_groups_become_nncf_ignored_scope(tiny_onnx, image_dir, tmp_path):
    """The recipe's float groups (the int8 planner's mixes) map ONNX Conv names to OpenVINO's convolutions and
    leave exactly those unquantized; an unknown group is one line."""
    from deployzoo.quant import recipes

    model = onnx.load(str(tiny_onnx))
    recipes.name_nodes(model)
    depthwise = recipes.float_nodes(model, ("depthwise",))["depthwise"]
    assert len(depthwise) > 5
    outs = {}
    for name, groups in (("all", ""), ("dw", "depthwise")):
        outs[name] = tmp_path / name
        run_cli(["build", str(tiny_onnx), "--backend", "openvino", "--precision", "int8", "--calib", str(image_dir),
                 "--calib-size", "4", *(["--float-groups", groups] if groups else []), "-o", str(outs[name])])
    q_all, q_dw = manifest(outs["all"])["quantization"], manifest(outs["dw"])["quantization"]
    assert q_all["float_groups"] == [] and q_all["float_ops"] == 0
    assert q_dw["float_groups"] == ["depthwise"] and q_dw["float_ops"] == len(depthwise)
    # each depthwise convolution kept float loses its activation and weight FakeQuantize
    assert q_dw["fake_quantize_ops"] < q_all["fake_quantize_ops"]
    graph = Graph.read(tiny_onnx)
    import openvino as ov

    ov_model = ov.Core().read_model(str(tiny_onnx))
    names = ovb.float_op_names(ov_model, graph, ("depthwise",))
    assert sorted(n.removesuffix("/WithoutBiases") for n in names) == sorted(depthwise)
    with pytest.raises(DeployzooError, match="unknown float groups \\['necks'\\]"):
        ovb.float_op_names(ov_model, graph, ("necks",))


def test_refusals_are_one_line(tiny_onnx, ov_fp32, tmp_path):
    with pytest.raises(DeployzooError, match="--perf-hint 'fast': choose from latency, throughput"):
        build_engine(tiny_onnx, tmp_path / "a", backend="openvino", options={"perf_hint": "fast"})
    with pytest.raises(DeployzooError, match="--cpu-streams 0: must be >= 1"):
        build_engine(tiny_onnx, tmp_path / "b", backend="openvino", options={"cpu_streams": 0})
    with pytest.raises(DeployzooError, match="perf_hint applies only to the backends that take it \\(openvino\\)"):
        build_engine(tiny_onnx, tmp_path / "c", backend="ort", options={"perf_hint": "latency"})
    with pytest.raises(DeployzooError, match="channels_last applies only to the backends that take it"):
        build_engine(tiny_onnx, tmp_path / "d", backend="openvino", options={"channels_last": True})
    with pytest.raises(DeployzooError, match="--device cuda: the openvino backend runs on the CPU here"):
        load_engine(ov_fp32, device="cuda")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_run_benchmarks_peer_backends_in_one_table(tmp_path, capsys):
    from deployzoo.cli import main

    out = tmp_path / "run"
    run_cli(["run", "mobilenetv1", "--peers", "openvino,ort", "--precisions", "fp32", "--demo-images", "2",
             "--batches", "1", "--iters", "1", "--warmup", "0", "--no-reference", "-o", str(out)])
    rep = json.loads((out / "report.json").read_text())
    assert sorted((r["backend"], r["precision"]) for r in rep["bench"]) == [("openvino", "fp32"), ("ort", "fp32")]
    assert "| openvino fp32 |" in (out / "report.md").read_text()
    for args, words in [(["--peers", "nope"], "unknown backend 'nope'"),
                        (["--peers", "torch", "--precisions", "int8"], "--peers torch: it builds none of")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["run", "mobilenetv1", *args, "-o", str(tmp_path / "bad")])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("deployzoo:")]
        assert exc.value.code == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err
        assert not (tmp_path / "bad" / "cache").exists()  # refused before any build


def test_concurrent_callers_get_their_own_results(ov_fp32, tiny_onnx, tmp_path):
    """bench --streams N calls one runner from N threads: each call must get the outputs of its own input."""
    from concurrent.futures import ThreadPoolExecutor

    tput = build_engine(tiny_onnx, tmp_path / "tput", backend="openvino", options={"perf_hint": "throughput"})
    for engine in (ov_fp32, tput):
        runner = load_engine(engine).runner
        xs = [batch(2, seed=s) for s in range(6)]
        want = [runner.run(x)["scores"] for x in xs]
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda x: runner.run(x)["scores"], xs * 3))
        for i, g in enumerate(got):
            np.testing.assert_allclose(g, want[i % 6], rtol=1e-5, atol=1e-6)

"""The int8 planner (quant/planner.py): held-out split, trials ranked by sensitivity, fastest within the drop,
the plan in the manifest, one-line refusals."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace as dc_replace
from pathlib import Path

import pytest

from conftest import FIXTURES, MNET_WEIGHTS, need_fixture, run_cli

from deployzoo.errors import DeployzooError
from deployzoo.export import export_onnx
from deployzoo.quant.calib import make_calib_set
from deployzoo.quant.planner import plan_int8, split_calibration
from deployzoo.report import int8_plan_table
from deployzoo.request import BuildRequest, Calibration, Graph

COCO = FIXTURES / "coco128" / "images"
MB_WEIGHTS = FIXTURES / "retinaface" / "mobilenetV1X0.25_pretrain.tar"


def test_every_fourth_image_is_held_out_and_never_calibrated_on(image_dir, tmp_path):
    for k in range(8):
        (tmp_path / f"c{k}.jpg").write_bytes((image_dir / f"img_{k % 4}.jpg").read_bytes())
    cs = make_calib_set(tmp_path, 8, "minmax")
    cal, held = split_calibration(cs)
    assert len(cal.items) == 6 and len(held.items) == 2
    assert not {i.path for i in cal.items} & {i.path for i in held.items}
    with pytest.raises(DeployzooError, match="needs at least 8 calibration images .* got 4: raise --calib-size"):
        split_calibration(make_calib_set(image_dir, 4, "minmax"))


@pytest.fixture(scope="module")
def mnet320(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "mnet320.onnx"
    export_onnx("retinaface", out, variant="mobilenet0.25", weights=MNET_WEIGHTS, imgsz=[320, 320], batch=None)
    return out


@need_fixture(MNET_WEIGHTS)
@need_fixture(COCO)
def test_plan_keeps_the_fastest_mix_within_the_drop_and_records_every_trial(mnet320, tmp_path):
    graph = Graph.read(mnet320)
    req = BuildRequest.for_graph(graph, precision="int8", calibration=Calibration(COCO, 32, "minmax"))
    eng = plan_int8(graph, tmp_path / "e", req, max_drop=5.0)
    plan = eng.manifest["int8_plan"]
    trials = plan["trials"]
    assert plan["held_out_images"] == 8 and plan["calibration_images"] == 24
    assert eng.manifest["calibration"]["size"] == 24  # the held-out quarter was not calibrated on
    assert trials[0]["float_groups"] == [] and trials[0]["why"] == "all int8"
    assert {tuple(t["float_groups"]) for t in trials} >= {("first_conv",), ("depthwise",), ("heads",)}
    chosen = [t for t in trials if t["chosen"]]
    assert len(chosen) == 1 and chosen[0]["drop"] <= 5.0
    assert chosen[0]["ips"] == max(t["ips"] for t in trials if t["drop"] <= 5.0)
    assert eng.manifest["quantization"]["float_groups"] == chosen[0]["float_groups"]  # the engine is that mix
    assert plan["beats_fp32"] == (chosen[0]["vs_fp32"] > 1.0) and plan["verdict"].startswith("int8 plan: float [")
    assert "| yes |" in int8_plan_table(plan)
    assert plan["timing_rounds"] == 3 and all(t["ips"] > 0 for t in trials)
    assert "int8_plan.png" in eng.manifest["files"] and (eng.dir / "int8_plan.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".e.plan*"))  # the trial engines are removed


@need_fixture(MNET_WEIGHTS)
@need_fixture(COCO)
@pytest.mark.skipif(not (importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf")),
                    reason="openvino / nncf not installed")
def test_openvino_is_planned_through_nncf_ignored_scope(mnet320, tmp_path):
    graph = Graph.read(mnet320)
    req = BuildRequest.for_graph(graph, backend="openvino", precision="int8",
                                 calibration=Calibration(COCO, 32, "minmax"))
    assert req.recipe.float_groups == ()  # the registry's float groups are ORT's; OpenVINO starts from none
    eng = plan_int8(graph, tmp_path / "e", req, max_drop=100.0)
    plan, q = eng.manifest["int8_plan"], eng.manifest["quantization"]
    trials = {tuple(t["float_groups"]): t for t in plan["trials"]}
    # the sensitivity singles and the model's (ORT) recipe as a starting point
    assert {("first_conv",), ("depthwise",), ("heads",)} <= set(trials)
    assert any(t["why"] == "the model's recipe" for t in plan["trials"])
    chosen = next(t for t in plan["trials"] if t["chosen"])
    assert chosen["ips"] == max(t["ips"] for t in plan["trials"])  # everything is within 100 points
    assert q["float_groups"] == chosen["float_groups"] and eng.manifest["backend"] == "openvino"


@need_fixture(MB_WEIGHTS)
@need_fixture(COCO)
def test_no_mix_within_the_drop_writes_nothing_and_names_the_closest(tmp_path, capsys):
    from deployzoo.cli import main

    export_onnx("mobilenetv1", tmp_path / "mb.onnx", weights=MB_WEIGHTS, batch=None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["build", str(tmp_path / "mb.onnx"), "--precision", "int8", "--calib", str(COCO), "--calib-size", "32",
              "--max-drop", "0", "-o", str(tmp_path / "e")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("deployzoo:")]
    # top-1 agreement of int8 with fp32 on 8 held-out COCO photos: MobileNetV1 flips some at every mix here
    # (measured on 16: 37.5 points at best)
    assert exc.value.code == 2 and len(lines) == 1
    assert "--max-drop 0.0: no int8 mix stays within it on this machine (closest: float [" in lines[0]
    # top-1 agreement counts images: the line says how coarse 8 held-out images are
    assert "(one of the 8 held-out images is 12.50 points: more calibration images make the measure finer)" in lines[0]
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.plan*"))


def test_refusals_are_one_line(tiny_onnx, image_dir, tmp_path, monkeypatch):
    graph = Graph.read(tiny_onnx)
    cal = Calibration(image_dir, 4, "minmax")
    with pytest.raises(DeployzooError, match="--max-drop plans int8 builds \\(this one is fp32\\)"):
        plan_int8(graph, tmp_path / "a", BuildRequest.for_graph(graph), 0.5)
    with pytest.raises(DeployzooError, match="--max-drop -1: expected points >= 0"):
        plan_int8(graph, tmp_path / "a", BuildRequest.for_graph(graph, precision="int8", calibration=cal), -1)
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        # every int8 backend here can be planned; one whose int8 cannot keep layer groups float is refused
        from deployzoo.backends.openvino import OpenVinoBackend

        monkeypatch.setattr(OpenVinoBackend, "capabilities",
                            dc_replace(OpenVinoBackend.capabilities, int8_float_groups=False))
        with pytest.raises(DeployzooError, match="backend openvino builds int8 its own way \\(plan with --backend ort\\)"):
            plan_int8(graph, tmp_path / "a", BuildRequest.for_graph(graph, backend="openvino", precision="int8",
                                                                      calibration=cal), 0.5)
        monkeypatch.undo()
    with pytest.raises(DeployzooError, match="needs at least 8 calibration images"):
        plan_int8(graph, tmp_path / "a", BuildRequest.for_graph(graph, precision="int8", calibration=cal), 0.5)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DeployzooError, match="file"):  # the output is refused before any trial is built
        plan_int8(graph, tmp_path / "file", BuildRequest.for_graph(graph, precision="int8", calibration=cal), 0.5)
    assert not list(tmp_path.glob(".*.plan"))


def test_random_weights_with_nothing_confident_is_one_line(tiny_onnx, image_dir, tmp_path):
    for k in range(8):
        (tmp_path / "cal").mkdir(exist_ok=True)
        (tmp_path / "cal" / f"c{k}.jpg").write_bytes((image_dir / f"img_{k % 4}.jpg").read_bytes())
    graph = Graph.read(tiny_onnx)  # random RetinaFace: no detection scores >= 0.5
    req = BuildRequest.for_graph(graph, precision="int8", calibration=Calibration(tmp_path / "cal", 8, "minmax"))
    with pytest.raises(DeployzooError, match="the fp32 engine finds nothing to compare on the 2 held-out"):
        plan_int8(graph, tmp_path / "e", req, 0.5)
    assert not (tmp_path / "e").exists()


@need_fixture(MNET_WEIGHTS)
@need_fixture(COCO)
def test_cli_prints_the_plan(mnet320, tmp_path, capsys):
    run_cli(["build", str(mnet320), "--precision", "int8", "--calib", str(COCO), "--calib-size", "32",
             "--max-drop", "100", "-o", str(tmp_path / "e")])
    out = capsys.readouterr().out
    assert "| float groups | why tried | drop (points) | img/s | x fp32 | chosen |" in out and "int8 plan:" in out
    assert "int8_plan" in json.loads((tmp_path / "e" / "manifest.json").read_text())


@pytest.mark.slow
def test_run_plans_int8_on_every_backend_that_can_and_reports_the_mixes(tmp_path):
    """`run --max-drop`: the int8 engine of the run's backend and of each peer that plans int8 is the planner's
    choice; report.md shows each plan's table and plot, report.json the plans."""
    peers = ["openvino"] if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf") else []
    out = tmp_path / "run"
    run_cli(["run", "mobilenetv1", "--data", "demo", "--demo-images", "8", "--precisions", "fp32,int8",
             "--batches", "1", "--iters", "2", "--warmup", "1", "--no-reference", "--max-drop", "100",
             *(["--peers", ",".join(peers)] if peers else []), "-o", str(out)])
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert set(rep["int8_plans"]) == {"ort", *peers}
    for backend, plan in rep["int8_plans"].items():
        assert plan["max_drop"] == 100 and sum(t["chosen"] for t in plan["trials"]) == 1
        assert f"## int8 plan ({backend}, --max-drop 100.0)" in md and f"]({plan['plot']})" in md
        assert (out / plan["plot"]).stat().st_size > 10_000
    assert md.count("| float groups | why tried | drop (points) | img/s | x fp32 | chosen |") == len(rep["int8_plans"])
    # the accuracy pass used the planned engine
    assert "int8_plan" in json.loads((Path(rep["engines"]["int8"]) / "manifest.json").read_text())
    with pytest.raises(SystemExit):
        from deployzoo.cli import main

        main(["run", "mobilenetv1", "--precisions", "fp32", "--max-drop", "1", "-o", str(tmp_path / "r2")])


def test_float_groups_are_checked_in_one_line():
    from deployzoo.request import parse_float_groups

    assert parse_float_groups("first_conv, early:3") == ("first_conv", "early:3")
    assert parse_float_groups("none") == () and parse_float_groups(("heads",)) == ("heads",)
    with pytest.raises(DeployzooError, match="--float-groups necks: unknown group 'necks' \\(choose from first_conv, "
                                             "depthwise, heads, early:N, outside:PREFIX, or none\\)"):
        parse_float_groups("necks")
    with pytest.raises(DeployzooError, match="unknown group 'early:x'"):
        BuildRequest.create("mobilenetv1", float_groups=("early:x",))


def test_plan_flag_plans_within_the_default_half_point(tiny_onnx, image_dir, tmp_path, monkeypatch, capsys):
    """`build --plan` is `--max-drop 0.5` (the planner itself is tested above; here only what the flag hands it)."""
    import deployzoo.quant.planner
    from deployzoo.cli import DEFAULT_MAX_DROP, main

    asked = []

    def fake_plan(graph, out, request, max_drop):
        asked.append((request.precision, max_drop))
        raise DeployzooError(f"planned within {max_drop}")

    monkeypatch.setattr(deployzoo.quant.planner, "plan_int8", fake_plan)
    assert DEFAULT_MAX_DROP == 0.5
    with pytest.raises(SystemExit) as exc:
        main(["build", str(tiny_onnx), "--precision", "int8", "--calib", str(image_dir), "--calib-size", "4", "--plan",
              "-o", str(tmp_path / "e")])
    assert exc.value.code == 2 and asked == [("int8", 0.5)] and "planned within 0.5" in capsys.readouterr().err

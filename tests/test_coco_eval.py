"""`eval coco`: pycocotools' COCOeval behind one-line input checks; ground truth as predictions scores 1.0."""

from __future__ import annotations

import json

import pytest

from deployzoo.errors import DeployzooError
from deployzoo.metrics.coco import STAT_NAMES, evaluate, load_annotations

from conftest import FIXTURES, gt_as_results, need_fixture, run_cli

ANN = FIXTURES / "coco128" / "annotations" / "instances_val2017.json"


@need_fixture(ANN)
def test_ground_truth_as_predictions_scores_one(tmp_path):
    coco = load_annotations(ANN)
    res = tmp_path / "res.json"
    res.write_text(json.dumps(gt_as_results(coco)))
    stats, text = evaluate(res, coco)
    assert set(stats) == {"bbox", "segm"} and list(stats["bbox"]) == list(STAT_NAMES)
    for t in ("bbox", "segm"):
        assert stats[t]["AP"] == pytest.approx(1.0) and stats[t]["AP50"] == pytest.approx(1.0)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in text
    run_cli(["eval", "coco", "--pred", str(res), "--ann", str(ANN), "--json", str(tmp_path / "o.json")])
    assert json.loads((tmp_path / "o.json").read_text())["segm"]["AP"] == pytest.approx(1.0)
    # bbox-only results are scored for bbox only
    boxes = [{k: v for k, v in r.items() if k != "segmentation"} for r in gt_as_results(coco)]
    assert set(evaluate(boxes, coco)[0]) == {"bbox"}


@need_fixture(ANN)
def test_bad_results_are_one_line_errors(tmp_path):
    coco = load_annotations(ANN)
    good = {"image_id": coco.getImgIds()[0], "category_id": coco.getCatIds()[0], "bbox": [0, 0, 5, 5], "score": 0.5}
    for bad, msg in [([{**good, "image_id": -7}], "image_id -7, not in the annotations"),
                     ([{**good, "category_id": 999}], "category_id 999, not in the annotations"),
                     ([{"image_id": good["image_id"]}], r"result \[0\] needs image_id, category_id and score"),
                     ([], "non-empty JSON list"),
                     ([{**good, "segmentation": [[0, 0, 1, 1, 2, 2]]}], "segmentation must be RLE")]:
        with pytest.raises(DeployzooError, match=msg):
            evaluate(bad, coco)


def test_bad_annotation_files(tmp_path):
    p = tmp_path / "inst.json"
    p.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DeployzooError, match=r"inst\.json: not a COCO instances file, missing key\(s\) categories"):
        load_annotations(p)
    p.write_text(json.dumps({"images": [], "categories": [], "annotations": [{"image_id": 1}]}))
    with pytest.raises(DeployzooError, match=r"annotations\[0\] lacks id, category_id, bbox, iscrowd, area"):
        load_annotations(p)
    p.write_text(json.dumps({"images": [{"file_name": "a.jpg"}], "categories": [], "annotations": []}))
    with pytest.raises(DeployzooError, match=r"images\[0\] lacks id"):
        load_annotations(p)
    p.write_text(json.dumps({"images": [], "categories": [{"name": "x"}], "annotations": []}))
    with pytest.raises(DeployzooError, match=r"categories\[0\] lacks id"):
        load_annotations(p)
    p.write_text("{not json")
    with pytest.raises(DeployzooError, match="not valid JSON"):
        load_annotations(p)

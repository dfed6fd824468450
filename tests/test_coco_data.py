"""COCO sets: both layouts found on COCO128, the synthetic demo set (deterministic, atomic, ground truth scores
1.0, masks on the painted shapes) and one-line errors for broken sets."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from deployzoo.data.coco import check_image_size, find_set
from deployzoo.demo.coco import write_demo
from deployzoo.data.images import SourceItem, load_item
from deployzoo.errors import DeployzooError
from deployzoo.metrics.coco import evaluate

from conftest import FIXTURES, gt_as_results, need_fixture

COCO128 = FIXTURES / "coco128"
ANN = COCO128 / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("coco") / "demo", n_images=8, seed=0)


def _copy_demo(demo: Path, dst: Path) -> Path:
    shutil.copytree(demo, dst)
    return dst


def _edit_json(root: Path, edit) -> Path:
    path = root / "annotations" / "instances_demo.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def _check_coco128(s, images_dir: Path, ann: Path) -> None:
    want = sorted(json.loads(ANN.read_text())["images"], key=lambda im: im["id"])
    assert len(s.items) == 128 and s.images_dir == images_dir and s.ann_path == ann
    assert [it.meta for it in s.items] == [{"image_id": im["id"], "height": im["height"], "width": im["width"]}
                                           for im in want]
    assert [it.name for it in s.items] == [im["file_name"] for im in want]
    assert all(it.path == images_dir / it.name and it.path.is_file() for it in s.items)
    assert s.items[0].meta == {"image_id": 9, "height": 480, "width": 640}
    assert len(s.coco.getImgIds()) == 128 and len(s.coco.getAnnIds()) == 939
    for it in s.items[:8]:  # the json's sizes are the decoded sizes
        check_image_size(it, load_item(it).shape[:2])


@need_fixture(ANN)
def test_find_set_coco128_images_layout():
    _check_coco128(find_set(COCO128), COCO128 / "images", ANN)


@need_fixture(ANN)
def test_find_set_official_layout(tmp_path):
    (tmp_path / "val2017").symlink_to(COCO128 / "images")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").symlink_to(ANN)
    # the official annotations folder also holds the train json: val2017/ pairs with instances_val2017.json
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{not json")
    _check_coco128(find_set(tmp_path), tmp_path / "val2017", tmp_path / "annotations" / "instances_val2017.json")


def test_write_demo_is_deterministic(demo, tmp_path):
    again = write_demo(tmp_path / "again", n_images=8, seed=0)
    ann = "annotations/instances_demo.json"
    assert (again / ann).read_text() == (demo / ann).read_text()
    assert sorted(p.name for p in (again / "images").iterdir()) == sorted(p.name for p in (demo / "images").iterdir())
    for p in (demo / "images").iterdir():
        assert (again / "images" / p.name).read_bytes() == p.read_bytes()
    assert (write_demo(tmp_path / "other", n_images=8, seed=1) / ann).read_text() != (demo / ann).read_text()


def test_demo_json_is_coco(demo):
    import pycocotools.mask as mask_util

    s = find_set(demo)
    data = s.coco.dataset
    assert s.ann_path == demo / "annotations" / "instances_demo.json" and len(s.items) == 8
    cats = [c["id"] for c in data["categories"]]
    assert len(cats) == 80 and cats[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and cats[-1] == 90
    assert {c["id"]: c["name"] for c in data["categories"]}[18] == "dog"
    anns = data["annotations"]
    assert len({a["id"] for a in anns}) == len(anns) >= 16
    assert {a["category_id"] for a in anns} <= {1, 3, 18, 44, 62} and not any(a["iscrowd"] for a in anns)
    assert {type(a["segmentation"]) for a in anns} == {list, dict}  # polygons and RLEs
    for a in anns:
        rle = s.coco.annToRLE(a)
        assert a["area"] == float(mask_util.area(rle)) > 0
        assert a["bbox"] == pytest.approx(list(mask_util.toBbox(rle)))


def test_demo_ground_truth_scores_one(demo):
    s = find_set(demo)
    stats, _ = evaluate(gt_as_results(s.coco), s.coco)
    for t in ("bbox", "segm"):
        assert stats[t]["AP"] == pytest.approx(1.0) and stats[t]["AR100"] == pytest.approx(1.0)


def test_demo_images_match_annotations(demo):
    s = find_set(demo)
    sizes = [(it.meta["height"], it.meta["width"]) for it in s.items]
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes) and len(set(sizes)) == len(sizes)
    greys = 0
    for it in s.items:
        img = load_item(it)
        check_image_size(it, img.shape[:2])
        greys += int(np.abs(img.astype(int) - img[..., :1]).max() <= 2)
        for a in s.coco.imgToAnns[it.meta["image_id"]]:
            # each mask covers one painted shape: uniform inside, a different colour just outside
            m = s.coco.annToMask(a).astype(bool)
            ring = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~m
            inner = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            assert img[inner].std(axis=0).max() < 12
            assert np.abs(img[inner].mean(axis=0) - img[ring].mean(axis=0)).max() > 40
    assert greys == 1


def test_check_image_size_names_the_file(tmp_path):
    item = SourceItem(tmp_path / "a.jpg", "a.jpg", {"image_id": 1, "height": 480, "width": 640})
    check_image_size(item, (480, 640))
    with pytest.raises(DeployzooError, match=r"a\.jpg: image is 480x640, the annotations say 640x480"):
        check_image_size(item, (640, 480))


def test_write_demo_is_atomic(tmp_path, monkeypatch):
    root = write_demo(tmp_path / "d", n_images=2, seed=0)
    before = (root / "annotations" / "instances_demo.json").read_text()
    calls = []

    def failing_imwrite(path, img, params=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return cv2.imencode(".jpg", img)[1].tofile(path) is None

    monkeypatch.setattr(cv2, "imwrite", failing_imwrite)
    with pytest.raises(KeyboardInterrupt):
        write_demo(tmp_path / "fresh", n_images=3, seed=0)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_demo(root, n_images=3, seed=1)
    assert not (tmp_path / "fresh").exists()  # no half set, and no temporary folder left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert (root / "annotations" / "instances_demo.json").read_text() == before  # the old set is untouched
    assert len(list((root / "images").iterdir())) == 2


def test_missing_root_and_layout_errors(demo, tmp_path):
    with pytest.raises(DeployzooError, match=r"nowhere: COCO dataset directory not found"):
        find_set(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeployzooError, match=r"empty: no images/ or val2017/ folder"):
        find_set(tmp_path / "empty")
    root = _copy_demo(demo, tmp_path / "d")
    shutil.copy(root / "annotations" / "instances_demo.json", root / "annotations" / "instances_more.json")
    with pytest.raises(DeployzooError, match=r"annotations: 2 instances_\*\.json files \(instances_demo\.json, "
                                             r"instances_more\.json\); choose one with --gt"):
        find_set(root)
    assert len(find_set(root, ann=root / "annotations" / "instances_more.json").items) == 8  # ann chooses
    for p in (root / "annotations").iterdir():
        p.unlink()
    with pytest.raises(DeployzooError, match=r"annotations: no instances_\*\.json \(give the annotations file with"):
        find_set(root)
    with pytest.raises(DeployzooError, match=r"gone\.json: cannot read annotations"):
        find_set(root, ann=tmp_path / "gone.json")


def test_missing_images_warn_or_fail(demo, tmp_path, caplog):
    root = _copy_demo(demo, tmp_path / "d")
    (root / "images" / "000000000002.jpg").unlink()
    (root / "images" / "000000000005.jpg").unlink()
    with caplog.at_level(logging.WARNING, logger="deployzoo.data.coco"):
        s = find_set(root)
    assert "2 of 8 images not found in" in caplog.text and "(first: 000000000002.jpg); skipping them" in caplog.text
    assert [it.meta["image_id"] for it in s.items] == [1, 3, 4, 6, 7, 8]
    # the skipped images leave the annotations too, so evaluation does not count their objects as misses
    assert s.coco.getImgIds() == [1, 3, 4, 6, 7, 8] and not s.coco.getAnnIds(imgIds=[2, 5])
    assert evaluate(gt_as_results(s.coco), s.coco)[0]["segm"]["AP"] == pytest.approx(1.0)
    for p in (root / "images").iterdir():
        p.unlink()
    with pytest.raises(DeployzooError, match=r"instances_demo\.json: none of its 8 images is in .*images "
                                             r"\(first: 000000000001\.jpg\)"):
        find_set(root)


def test_bad_image_entries(demo, tmp_path):
    root = _copy_demo(demo, tmp_path / "d")
    cases = [(lambda d: d["images"][3].pop("height"), r"instances_demo\.json: images\[3\] lacks height$"),
             (lambda d: [d["images"][0].pop(k) for k in ("file_name", "width")],
              r"images\[0\] lacks file_name, width$"),
             (lambda d: d["images"][1].update(width="413"),
              r"images\[1\] \(000000000002\.jpg\) has width '413', expected a positive integer"),
             (lambda d: d["images"][2].pop("id"), r"images\[2\] lacks id"),
             (lambda d: d["images"][2].update(id=1), r"1 duplicate image id\(s\)"),
             (lambda d: d.update(images=[]), r"instances_demo\.json: lists no images")]
    original = (root / "annotations" / "instances_demo.json").read_text()
    for edit, msg in cases:
        (root / "annotations" / "instances_demo.json").write_text(original)
        _edit_json(root, edit)
        with pytest.raises(DeployzooError, match=msg):
            find_set(root)

"""Bad evaluation inputs end in one line naming the file and the problem (never a traceback, never a silently
wrong score): COCO results, ImageNet predictions, WIDER FACE prediction files, unreadable checkpoints."""

from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch

from deployzoo.checkpoint import load_state_dict
from deployzoo.errors import DeployzooError

from test_widerface_metric import _assert_same, random_case, ref_evaluation, write_gt_mat, write_preds


def _cli(args, capsys) -> str:
    """Run the CLI expecting an input error: exit status 2, exactly one stderr line `deployzoo: error: ...`."""
    from deployzoo.cli import main

    with pytest.raises(SystemExit) as ei:
        main(args)
    err = capsys.readouterr().err
    assert ei.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deployzoo: error: "), err
    return lines[0]


# ============================================================================ COCO results


def _coco(tmp_path):
    """One 20 x 30 image, one category, one face-free rectangle (bbox and RLE mask); its instances json."""
    import pycocotools.mask as mu

    m = np.zeros((20, 30), np.uint8, order="F")
    m[2:8, 3:12] = 1
    rle = mu.encode(m)
    rle = {"size": [20, 30], "counts": rle["counts"].decode()}
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "height": 20, "width": 30, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 2, 9, 6], "area": 54, "iscrowd": 0,
                         "segmentation": rle}]}))
    good = {"image_id": 1, "category_id": 1, "bbox": [3, 2, 9, 6], "score": 0.9, "segmentation": rle}
    return ann, good


def _write_results(tmp_path, text: str):
    p = tmp_path / "results.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize("literal, shown", [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"),
                                            ('"0.9"', '"0.9"'), ("true", "true"), ("null", "null")])
def test_coco_score_not_a_finite_number(tmp_path, literal, shown):
    from deployzoo.metrics.coco import evaluate

    ann, good = _coco(tmp_path)
    assert json.loads(f"[{literal}]")  # python's json parses NaN / Infinity literals, so they reach the check
    good_text = json.dumps(good)
    bad_text = json.dumps({**good, "score": 12345}).replace("12345", literal)
    res = _write_results(tmp_path, f"[{good_text}, {bad_text}]")
    with pytest.raises(DeployzooError) as ei:
        evaluate(res, ann)
    msg = str(ei.value)
    assert msg == f"{res}: result [1] score {shown}: not a finite number", msg
    # the same file without the bad entry scores 1
    res.write_text(f"[{good_text}]")
    assert evaluate(res, ann)[0]["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("bbox, problem", [
    ("[1, 2, -3, 4]", "negative width/height"),
    ("[1, 2, 3, -4]", "negative width/height"),
    ("[1, 2, NaN, 4]", "not finite"),
    ("[1, 2, 3, Infinity]", "not finite"),
    ("[1, 2, 3]", "expected 4 numbers [x, y, w, h]"),
    ("[1, 2, 3, 4, 5]", "expected 4 numbers [x, y, w, h]"),
    ('[1, 2, "3", 4]', "expected 4 numbers [x, y, w, h]"),
    ("[1, 2, true, 4]", "expected 4 numbers [x, y, w, h]"),
    ('"1 2 3 4"', "expected 4 numbers [x, y, w, h]"),
])
def test_coco_bbox_not_four_finite_nonnegative_size_numbers(tmp_path, bbox, problem):
    from deployzoo.metrics.coco import evaluate

    ann, good = _coco(tmp_path)
    box_only = {k: v for k, v in good.items() if k != "segmentation"}
    bad = json.dumps({**box_only, "bbox": 12345}).replace("12345", bbox)
    res = _write_results(tmp_path, f"[{json.dumps(box_only)}, {json.dumps(box_only)}, {bad}]")
    with pytest.raises(DeployzooError) as ei:
        evaluate(res, ann)
    assert str(ei.value) == f"{res}: result [2] bbox {bbox}: {problem}"


def test_coco_zero_size_box_is_still_accepted_and_mixed_fields_are_an_error(tmp_path):
    from deployzoo.metrics.coco import evaluate

    ann, good = _coco(tmp_path)
    box_only = {k: v for k, v in good.items() if k != "segmentation"}
    # pycocotools takes the fields of result [0] for all: a later result without a bbox was a bare KeyError
    with pytest.raises(DeployzooError) as ei:
        evaluate([box_only, {k: v for k, v in good.items() if k != "bbox"}], ann)
    assert str(ei.value) == "results: result [1] has no bbox, result [0] has one (every result needs the same fields)"
    with pytest.raises(DeployzooError, match=r"result \[1\] has no segmentation, result \[0\] has one"):
        evaluate([good, box_only], ann)
    stats, _ = evaluate([box_only, {**box_only, "bbox": [20, 10, 0, 0], "score": 0.1}], ann)
    assert stats["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("seg, problem", [
    ({"size": [20, 30, 1]}, "size [20, 30, 1]: expected [height, width], 2 non-negative ints"),
    ({"size": ["20", 30]}, 'size ["20", 30]: expected [height, width], 2 non-negative ints'),
    ({"size": [20.0, 30]}, "size [20.0, 30]: expected [height, width], 2 non-negative ints"),
    ({"size": None}, "size null: expected [height, width], 2 non-negative ints"),
    ({"counts": 5}, "counts must be an RLE string or a list of run lengths, got int"),
    ({"counts": None}, "counts must be an RLE string or a list of run lengths, got NoneType"),
    ({"counts": [40, -6, 566]}, "counts: run lengths must be non-negative ints summing to 20*30 = 600"),
    ({"counts": [40, 6, 14]}, "counts: run lengths must be non-negative ints summing to 20*30 = 600"),
    ({"size": [10, 30]}, "size [10, 30], but image 1 is 20 x 30 (height x width)"),
])
def test_coco_bad_rle(tmp_path, seg, problem):
    from deployzoo.metrics.coco import evaluate

    ann, good = _coco(tmp_path)
    bad = {**good, "segmentation": {**good["segmentation"], **seg}}
    res = _write_results(tmp_path, json.dumps([good, bad]))
    with pytest.raises(DeployzooError) as ei:
        evaluate(res, ann)
    assert str(ei.value) == f"{res}: result [1] segmentation {problem}"


def test_coco_uncompressed_rle_counts_are_scored(tmp_path):
    """counts as a list of run lengths (uncompressed RLE, column-major, as pycocotools' frPyObjects takes them)
    was a TypeError inside pycocotools for mask-only results; it is converted and scored like the string."""
    from deployzoo.metrics.coco import evaluate

    ann, good = _coco(tmp_path)
    # the mask rows 2..7 of columns 3..11, column-major: 3 * 20 + 2 zeros, then 6 ones / 14 zeros per column
    runs = [62] + [6, 14] * 8 + [6] + [600 - 62 - 9 * 20 + 14]
    assert sum(runs) == 600
    seg_only = {k: v for k, v in good.items() if k != "bbox"}
    # without a bbox, pycocotools' loadRes computes the area from the mask (where list counts failed)
    stats, _ = evaluate([{**seg_only, "segmentation": {"size": [20, 30], "counts": runs}}], ann)
    assert set(stats) == {"segm"} and stats["segm"]["AP"] == pytest.approx(1.0)
    stats, _ = evaluate([{**good, "segmentation": {"size": [20, 30], "counts": runs}}], ann)
    assert stats["segm"]["AP"] == pytest.approx(1.0) and stats["bbox"]["AP"] == pytest.approx(1.0)


def test_cli_coco_negative_box(tmp_path, capsys):
    ann, good = _coco(tmp_path)
    res = _write_results(tmp_path, json.dumps([good, {**good, "bbox": [1, 2, -3, 4]}]))
    line = _cli(["eval", "coco", "--pred", str(res), "--ann", str(ann)], capsys)
    assert line == f"deployzoo: error: {res}: result [1] bbox [1, 2, -3, 4]: negative width/height"


# ============================================================================ ImageNet predictions


def _imagenet(tmp_path, classes, label_lines=("a.jpg 3", "b.jpg 7")):
    pred = tmp_path / "predictions.jsonl"
    recs = [{"image": "a.jpg", "topk": [[3, 0.9], [1, 0.1]]}]
    recs += [{"image": "b.jpg", "topk": [[7, 0.5], ["CLS", 0.3]]}]
    text = "\n".join(json.dumps(r) for r in recs) + "\n"
    pred.write_text(text.replace('"CLS"', classes))
    labels = tmp_path / "val.txt"
    labels.write_text("\n".join(label_lines) + "\n")
    return pred, labels


@pytest.mark.parametrize("cls", ["1000", "1003", "-1"])
def test_imagenet_prediction_class_out_of_range(tmp_path, cls):
    from deployzoo.data.imagenet import read_labels
    from deployzoo.metrics.classification import evaluate, read_predictions

    pred, labels = _imagenet(tmp_path, cls)
    with pytest.raises(DeployzooError) as ei:
        evaluate(read_predictions(pred), read_labels(labels), pred_path=str(pred))
    assert str(ei.value) == f"{pred}:2: class {cls} out of range 0..999"
    # a directory names the file inside it
    with pytest.raises(DeployzooError) as ei:
        evaluate(read_predictions(tmp_path), read_labels(labels), pred_path=str(tmp_path))
    assert str(ei.value) == f"{pred}:2: class {cls} out of range 0..999"


@pytest.mark.parametrize("cls, shown", [("3.5", "3.5"), ('"cat"', "'cat'"), ('"3"', "'3'"), ("null", "None"),
                                        ("true", "True"), ("NaN", "nan")])
def test_imagenet_prediction_class_not_an_integer(tmp_path, cls, shown):
    from deployzoo.metrics.classification import read_predictions

    pred, _ = _imagenet(tmp_path, cls)
    with pytest.raises(DeployzooError) as ei:
        read_predictions(pred)
    assert str(ei.value) == f"{pred}:2: class {shown} is not an integer"


def test_imagenet_class_count_follows_labels_or_explicit_count(tmp_path):
    """1000 classes unless the labels use a class >= 1000 (then max label + 1) or num_classes is given."""
    from deployzoo.data.imagenet import read_labels
    from deployzoo.metrics.classification import evaluate, read_predictions

    pred, labels = _imagenet(tmp_path, "1500", ("a.jpg 3", "b.jpg 1500"))
    lab = read_labels(labels, num_classes=2000)
    assert evaluate(read_predictions(pred), lab).n == 2  # 1500 is a class of these labels
    pred, _ = _imagenet(tmp_path, "1501", ("a.jpg 3", "b.jpg 1500"))
    with pytest.raises(DeployzooError, match=r"predictions\.jsonl:2: class 1501 out of range 0\.\.1500$"):
        evaluate(read_predictions(pred), lab)
    assert evaluate(read_predictions(pred), lab, num_classes=2000).n == 2
    # an explicit count (e.g. a synset list's length) also narrows: at read time and at evaluation
    pred, labels = _imagenet(tmp_path, "10")
    with pytest.raises(DeployzooError, match=r"predictions\.jsonl:2: class 10 out of range 0\.\.9$"):
        read_predictions(pred, num_classes=10)
    with pytest.raises(DeployzooError, match=r"predictions\.jsonl:2: class 10 out of range 0\.\.9$"):
        evaluate(read_predictions(pred), read_labels(labels), num_classes=10)
    # in-memory predictions have no line to name
    with pytest.raises(DeployzooError, match=r"^predictions: image b\.jpg: class 1000 out of range 0\.\.999$"):
        evaluate({"a.jpg": [3], "b.jpg": [7, 1000]}, {"a.jpg": 3, "b.jpg": 7})


def test_cli_imagenet_out_of_range_class(tmp_path, capsys):
    pred, labels = _imagenet(tmp_path, "1003")
    line = _cli(["eval", "imagenet", "--pred", str(pred), "--labels", str(labels)], capsys)
    assert line == f"deployzoo: error: {pred}:2: class 1003 out of range 0..999"
    assert not (tmp_path / "eval_result.txt").exists()


def test_cli_imagenet_non_integer_class(tmp_path, capsys):
    pred, labels = _imagenet(tmp_path, "3.5")
    line = _cli(["eval", "imagenet", "--pred", str(pred), "--labels", str(labels)], capsys)
    assert line == f"deployzoo: error: {pred}:2: class 3.5 is not an integer"


# ============================================================================ WIDER FACE prediction files


def _negative_case(seed=2):
    """random_case with boxes of negative width or height put into three images (one near a face, one with a
    height inside (-1, 0), where the +1 convention still gives an overlap); returns the count, the number of
    images and the first (event, image, box index) that has one."""
    gt, preds = random_case(seed, n_events=2, n_img=5)
    changed = 0
    for event in preds:
        for name, p in preds[event].items():
            if len(p) >= 3 and changed < 3:
                p = p.copy()
                p[0, 2] = -abs(p[0, 2]) - 1  # negative width
                p[1, 3] = -0.5  # negative height inside (-1, 0)
                p[2, 2:4] = -np.abs(p[2, 2:4])  # both negative
                preds[event][name] = p
                changed += 1
    assert changed == 3
    neg = [(e, n, int(np.flatnonzero((p[:, 2] < 0) | (p[:, 3] < 0))[0]), int(((p[:, 2] < 0) | (p[:, 3] < 0)).sum()))
           for e, d in preds.items() for n, p in sorted(d.items()) if len(p) and ((p[:, 2] < 0) | (p[:, 3] < 0)).any()]
    return gt, preds, sum(x[3] for x in neg), len(neg), neg[0][:3]


def _wider_warnings(caplog):
    return [r for r in caplog.records if r.name == "deployzoo.metrics.widerface" and r.levelno == logging.WARNING]


def test_widerface_negative_boxes_warn_once_and_score_as_official_files(tmp_path, caplog):
    from deployzoo.metrics.widerface import evaluate

    gt, preds, n, k, (event, name, j) = _negative_case()
    gt_dir = write_gt_mat(tmp_path / "gt", gt)
    pred_dir = write_preds(tmp_path / "pred", preds)
    ref_ap, ref_curves = ref_evaluation(str(pred_dir), str(gt_dir))
    with caplog.at_level(logging.WARNING, logger="deployzoo.metrics.widerface"):
        ours = evaluate(pred_dir, gt_dir)
    _assert_same(ours, ref_ap, ref_curves)
    warns = _wider_warnings(caplog)
    assert len(warns) == 1, [r.getMessage() for r in warns]
    msg = warns[0].getMessage()
    first = pred_dir / event / f"{name}.txt"
    assert msg.startswith(f"{pred_dir}: {n} predicted boxes of negative width or height in {k} files "
                          f"(first: {first}:{j + 3})")
    assert "scored as the official tool scores them" in msg and "\n" not in msg


def test_widerface_negative_boxes_warn_once_and_score_as_official_in_memory(tmp_path, caplog):
    from deployzoo.metrics.widerface import evaluate

    gt, preds, n, k, (event, name, j) = _negative_case(seed=3)
    ref_ap, ref_curves = ref_evaluation(preds, str(write_gt_mat(tmp_path / "gt", gt)))
    with caplog.at_level(logging.WARNING, logger="deployzoo.metrics.widerface"):
        ours = evaluate(preds, gt)
    _assert_same(ours, ref_ap, ref_curves)
    warns = _wider_warnings(caplog)
    assert len(warns) == 1
    assert warns[0].getMessage().startswith(
        f"predictions: {n} predicted boxes of negative width or height in {k} images (first: {event}/{name} "
        f"box {j + 1})")


@pytest.mark.parametrize("count, body, problem", [
    ("3", "1 2 3 4 0.5\n5 6 7 8 0.4\n", "count line says 3 boxes, the file has 2"),
    ("1", "1 2 3 4 0.5\n5 6 7 8 0.4\n", "count line says 1 boxes, the file has 2"),
    ("2", "", "count line says 2 boxes, the file has 0"),
    ("two", "1 2 3 4 0.5\n", "count line 'two' is not a box count (a non-negative integer)"),
    ("1 2 3 4 0.5", "5 6 7 8 0.4\n", "count line '1 2 3 4 0.5' is not a box count (a non-negative integer)"),
    ("-1", "", "count line '-1' is not a box count (a non-negative integer)"),
    ("", "1 2 3 4 0.5\n", "count line '' is not a box count (a non-negative integer)"),
])
def test_widerface_count_line_must_match_boxes(tmp_path, count, body, problem):
    from deployzoo.metrics.widerface import read_pred_file

    f = tmp_path / "0_Parade_x_1.txt"
    f.write_text(f"0_Parade_x_1\n{count}\n{body}")
    with pytest.raises(DeployzooError) as ei:
        read_pred_file(f)
    assert str(ei.value) == f"{f}:2: {problem}"
    f.write_text("0_Parade_x_1\n 2 \n1 2 3 4 0.5\n\n5 6 7 8 0.4\n")  # blank lines and spaces are fine
    assert read_pred_file(f)[1].shape == (2, 5)


def test_cli_widerface_count_mismatch(tmp_path, capsys):
    gt, preds = random_case(0, n_events=1, n_img=3)
    gt_dir = write_gt_mat(tmp_path / "gt", gt)
    pred_dir = write_preds(tmp_path / "pred", preds)
    event, name = gt.events[0], gt.files[0][1]
    f = pred_dir / event / f"{name}.txt"
    f.write_text(f"{name}\n5\n1 2 3 4 0.5\n")  # a file cut short: 5 announced, 1 there
    line = _cli(["eval", "widerface", "--pred", str(pred_dir), "--gt", str(gt_dir)], capsys)
    assert line == f"deployzoo: error: {f}:2: count line says 5 boxes, the file has 1"


# ============================================================================ checkpoints


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _ckpt(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _load_error(path) -> str:
    with pytest.raises(DeployzooError) as ei:
        load_state_dict(path)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and len(msg) < len(str(path)) + 200, msg
    return msg


def test_checkpoint_random_bytes_report_torch_reason_not_a_refusal(tmp_path):
    """torch 2.14's weights-only unpickler says 'Unsupported operand N' for a byte that is no pickle opcode
    (inside its generic 'Weights only load failed' wrapper): that is a corrupt file, not a refused pickle."""
    p = _ckpt(tmp_path, "rand.pth", bytes([52]) + np.random.default_rng(0).bytes(4095))
    assert _load_error(p) == f"{p}: not a readable torch checkpoint: Unsupported operand 52"
    for seed in range(40):  # whatever random bytes hit first, never "refused"
        p = _ckpt(tmp_path, f"rand{seed}.pth", np.random.default_rng(seed).bytes(4096))
        msg = _load_error(p)
        assert msg.startswith(f"{p}: not a readable torch checkpoint: "), msg
        assert "refused" not in msg and "Weights only load failed" not in msg and "weights_only" not in msg
    p = _ckpt(tmp_path, "urandom.pth", os.urandom(4096))
    assert "not a readable torch checkpoint: " in _load_error(p)


def test_checkpoint_malicious_pickles_are_still_refused(tmp_path):
    marker = tmp_path / "ran"
    # refusal of a real pickle next to a corrupt file in one test: the two must not be confused either way
    rand = _ckpt(tmp_path, "rand.pth", bytes([52]) + np.random.default_rng(0).bytes(4095))
    assert "refused" not in _load_error(rand)
    legacy = tmp_path / "evil_legacy.pth"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, legacy, _use_new_zipfile_serialization=False)
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, zipped)
    raw = _ckpt(tmp_path, "evil_raw.pth", pickle.dumps(_Evil(marker)))
    for p in (legacy, zipped):
        assert _load_error(p) == (f"{p}: refused to load: the pickle holds objects other than tensors/containers "
                                  "(weights_only=True) - Trying to load unsupported GLOBAL posix.system whose "
                                  "module posix is blocked.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        msg = _load_error(raw)  # protocol 5: torch refuses its FRAME opcode (149) before reaching the global
    # torch's "Detected pickle protocol 5" UserWarning would be a second stderr line in the CLI
    assert not [w for w in caught if "pickle protocol" in str(w.message)]
    assert msg.startswith(f"{raw}: refused to load: the pickle holds objects other than tensors/containers "
                          "(weights_only=True) - Unsupported operand 149"), msg
    assert not marker.exists()


def test_checkpoint_truncated_text_and_empty_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(8, 8)}, good)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.randn(8, 8)}, legacy, _use_new_zipfile_serialization=False)
    cut_zip = _ckpt(tmp_path, "cut_zip.pth", good.read_bytes()[: good.stat().st_size // 2])
    assert _load_error(cut_zip) == (f"{cut_zip}: not a readable torch checkpoint: PytorchStreamReader failed "
                                    "reading zip archive: failed finding central directory.")
    data = legacy.read_bytes()
    cut_legacy = _ckpt(tmp_path, "cut_legacy.pth", data[:50])
    assert _load_error(cut_legacy) == (f"{cut_legacy}: not a readable torch checkpoint: EOFError (the file ends "
                                       "early: truncated?)")
    cut_legacy.write_bytes(data[:200])
    assert _load_error(cut_legacy) == (f"{cut_legacy}: not a readable torch checkpoint: IndexError: index out of "
                                       "range (truncated or corrupt?)")
    cut_legacy.write_bytes(data[:-10])
    assert _load_error(cut_legacy) == (f"{cut_legacy}: not a readable torch checkpoint: unexpected EOF, expected "
                                       "10 more bytes.")
    text = _ckpt(tmp_path, "notes.pth", b"hello world\nthis is text\n")  # was a bare KeyError(101) from torch
    assert _load_error(text) == f"{text}: not a readable torch checkpoint: KeyError: 101 (truncated or corrupt?)"
    zipped_other = tmp_path / "other.zip"
    with zipfile.ZipFile(zipped_other, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")
    assert _load_error(zipped_other).startswith(f"{zipped_other}: not a readable torch checkpoint: ")
    empty = _ckpt(tmp_path, "empty.pth", b"")
    assert _load_error(empty) == f"{empty}: checkpoint file is empty (0 bytes)"
    assert set(load_state_dict(good)) == {"w"} and set(load_state_dict(legacy)) == {"w"}


def test_checkpoint_truncated_large_zip_is_corrupt_not_unreadable(tmp_path):
    """torch's zip reader raises a bare OSError(EINVAL) for a larger archive cut in half: the file reads fine,
    its content is the problem, and the line must say so rather than 'cannot read'."""
    good = tmp_path / "big.pth"
    torch.save({"w": torch.zeros(64, 64)}, good)
    cut = _ckpt(tmp_path, "cut_big.pth", good.read_bytes()[: good.stat().st_size // 2])
    msg = _load_error(cut)
    assert msg.startswith(f"{cut}: not a readable torch checkpoint: ") and "cannot read" not in msg, msg

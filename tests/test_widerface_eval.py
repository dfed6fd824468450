from __future__ import annotations

import time

import numpy as np
import pytest

from deployzoo.data.widerface import WiderGT, load_gt, write_demo
from deployzoo.errors import DeployzooError
from deployzoo.metrics.widerface import evaluate, plot_pr, read_predictions
from deployzoo.tasks.face_detection import write_widerface_txt

from conftest import FIXTURES, need_fixture

REAL_GT = FIXTURES / "widerface" / "ground_truth"


# ----------------------------------------------------------------- a literal transcription of the official loops
def _ref_overlaps(boxes, query):
    out = np.zeros((boxes.shape[0], query.shape[0]))
    for k in range(query.shape[0]):
        area = (query[k, 2] - query[k, 0] + 1) * (query[k, 3] - query[k, 1] + 1)
        for n in range(boxes.shape[0]):
            iw = min(boxes[n, 2], query[k, 2]) - max(boxes[n, 0], query[k, 0]) + 1
            if iw > 0:
                ih = min(boxes[n, 3], query[k, 3]) - max(boxes[n, 1], query[k, 1]) + 1
                if ih > 0:
                    ua = (boxes[n, 2] - boxes[n, 0] + 1) * (boxes[n, 3] - boxes[n, 1] + 1) + area - iw * ih
                    out[n, k] = iw * ih / ua
    return out


def _ref_image_eval(pred, gt, ignore, iou_thresh):
    _pred, _gt = pred.copy(), gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])
    _pred[:, 2] += _pred[:, 0]
    _pred[:, 3] += _pred[:, 1]
    _gt[:, 2] += _gt[:, 0]
    _gt[:, 3] += _gt[:, 1]
    overlaps = _ref_overlaps(_pred[:, :4], _gt)
    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        pred_recall[h] = len(np.where(recall_list == 1)[0])
    return pred_recall, proposal_list


def _ref_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
    pr_info = np.zeros((thresh_num, 2))
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            continue
        r_index = r_index[-1]
        pr_info[t, 0] = len(np.where(proposal_list[: r_index + 1] == 1)[0])
        pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def _ref_voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_evaluation(preds, gt: WiderGT, iou_thresh=0.5, thresh_num=1000):
    preds = {e: {k: v.copy() for k, v in d.items()} for e, d in preds.items()}
    max_score, min_score = 0, 1
    for k in preds.values():
        for v in k.values():
            if len(v):
                min_score, max_score = min(np.min(v[:, -1]), min_score), max(np.max(v[:, -1]), max_score)
    diff = max_score - min_score
    for k in preds.values():
        for v in k.values():
            if len(v):
                v[:, -1] = (v[:, -1] - min_score) / diff
    aps = {}
    for setting in ("easy", "medium", "hard"):
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2))
        for i, event in enumerate(gt.events):
            for j, name in enumerate(gt.files[i]):
                pred_info = preds[event][name]
                gt_boxes = gt.boxes[i][j]
                keep_index = gt.keep[setting][i][j]
                count_face += len(keep_index)
                if len(gt_boxes) == 0 or len(pred_info) == 0:
                    continue
                ignore = np.zeros(gt_boxes.shape[0])
                if len(keep_index) != 0:
                    ignore[keep_index - 1] = 1
                pred_recall, proposal_list = _ref_image_eval(pred_info, gt_boxes, ignore, iou_thresh)
                pr_curve += _ref_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = pr_curve[:, 1] / pr_curve[:, 0]
            rec = pr_curve[:, 1] / count_face
        aps[setting] = _ref_voc_ap(rec, prec)
    return aps


# ----------------------------------------------------------------- synthetic cases
def _random_case(seed, n_events=3, n_img=6):
    rng = np.random.default_rng(seed)
    events = [f"{i}--Ev" for i in range(n_events)]
    files, boxes, keep = [], [], {s: [] for s in ("easy", "medium", "hard")}
    preds = {}
    for e in events:
        names = [f"{e}_img_{k}" for k in range(n_img)]
        files.append(names)
        ev_boxes, ev_keep = [], {s: [] for s in keep}
        preds[e] = {}
        for n in names:
            k = int(rng.integers(0, 6))
            xy = rng.integers(0, 300, (k, 2))
            wh = rng.integers(4, 80, (k, 2))
            g = np.concatenate([xy, wh], 1).astype(np.float64)
            ev_boxes.append(g)
            idx = np.arange(1, k + 1)
            ev_keep["hard"].append(idx)
            ev_keep["medium"].append(idx[g[:, 2] > 20] if k else idx)
            ev_keep["easy"].append(idx[g[:, 2] > 50] if k else idx)
            m = int(rng.integers(0, 12))
            if k and m:
                src = g[rng.integers(0, k, m)]
                jitter = rng.normal(0, 4, (m, 4))
                p = np.concatenate([src + jitter, rng.random((m, 1))], 1)
                p[rng.random(m) < 0.3, :2] += 150  # some false positives
                if m > 2:
                    p[1, :4] = p[0, :4]  # duplicate box: IoU ties
            else:
                p = np.concatenate([rng.integers(0, 300, (m, 4)).astype(float), rng.random((m, 1))], 1)
            preds[e][n] = p
        boxes.append(ev_boxes)
        for s in keep:
            keep[s].append(ev_keep[s])
    return WiderGT(events, files, boxes, keep), preds


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_official_loops(seed):
    gt, preds = _random_case(seed)
    ours = evaluate(preds, gt).ap
    ref = reference_evaluation(preds, gt)
    for s in ("easy", "medium", "hard"):
        assert ours[s] == pytest.approx(ref[s], abs=1e-9), s


def test_hand_computed_case():
    # One image, two faces: face 1 kept (easy), face 2 not kept (ignored in easy).
    # Predictions in file order, scores 0.9 / 0.5 / 0.1 (normalised to 1, 0.5, 0):
    #   p1 hits face 1 (recall 1), p2 hits ignored face 2 (not a proposal), p3 hits nothing.
    # thresholds t > 0.5 see p1 only: precision 1/1, recall 1/1; t in (0, 0.5]: p1..p2 -> proposals 1, recalled 1;
    # t = 0 (last threshold) sees p3 too: precision 1/2, recall 1. Envelope precision 1 at recall 1 -> AP 1.
    # For 'hard' both faces are kept: p1 recalls face 1, p2 recalls face 2, recall 0.5 at t > 0.5 (precision 1),
    # 1.0 for t <= 0.5 (precision 1): AP = 0.5 * 1 + 0.5 * 1 = 1. Then change p2 to miss: hard recall stops at 0.5.
    g = np.array([[10, 10, 40, 40], [100, 100, 40, 40]], float)
    gt = WiderGT(["0--E"], [["a"]], [[g]],
                 {"easy": [[np.array([1])]], "medium": [[np.array([1])]], "hard": [[np.array([1, 2])]]})
    preds = {"0--E": {"a": np.array([[10, 10, 40, 40, 0.9], [100, 100, 40, 40, 0.5], [300, 300, 10, 10, 0.1]])}}
    r = evaluate(preds, gt).ap
    assert r["easy"] == pytest.approx(1.0) and r["hard"] == pytest.approx(1.0)
    preds["0--E"]["a"][1, :2] = 200  # p2 now a false positive
    r = evaluate(preds, gt).ap
    # easy: p1 recall 1 precision 1 (t > .5); p2 now a proposal -> precision .5 at recall 1; envelope 1 -> AP 1
    assert r["easy"] == pytest.approx(1.0)
    # hard: recall 0.5 at precision 1, never more -> AP 0.5
    assert r["hard"] == pytest.approx(0.5)


def _write_preds(preds, out):
    for event, d in preds.items():
        for name, p in d.items():
            write_widerface_txt(out, f"{event}/{name}.jpg", np.c_[p[:, :2], p[:, :2] + p[:, 2:4]], p[:, 4])


def test_demo_gt_as_predictions_gives_ap_one(tmp_path):
    root = write_demo(tmp_path / "demo", n_images=12, seed=3)
    gt = load_gt(root / "ground_truth")
    assert gt.n_images == 12 and len(gt.events) == 3
    img = __import__("cv2").imread(str(root / "WIDER_val/images" / gt.events[0] / f"{gt.files[0][0]}.jpg"))
    for b in gt.boxes[0][0]:
        assert b[0] >= 0 and b[1] >= 0 and b[0] + b[2] <= img.shape[1] and b[1] + b[3] <= img.shape[0]
    rng = np.random.default_rng(0)
    preds = {e: {n: np.c_[b, rng.uniform(0.5, 1.0, len(b))] for n, b in zip(names, bl)}
             for e, names, bl in zip(gt.events, gt.files, gt.boxes)}
    _write_preds(preds, tmp_path / "pred")
    res = evaluate(tmp_path / "pred", root / "ground_truth")
    assert all(v == pytest.approx(1.0) for v in res.to_json().values())
    plot_pr(res, tmp_path / "pr.png")
    assert (tmp_path / "pr.png").stat().st_size > 1000
    again = load_gt(write_demo(tmp_path / "demo2", n_images=12, seed=3) / "ground_truth")
    assert all(np.array_equal(a, b) for a, b in zip(again.boxes[0], gt.boxes[0]))


def test_bad_inputs(tmp_path):
    with pytest.raises(DeployzooError, match="ground-truth file not found"):
        load_gt(tmp_path)
    (tmp_path / "wider_face_val.mat").write_text("not a mat file")
    with pytest.raises(DeployzooError, match=r"wider_face_val.mat: not a readable \.mat"):
        load_gt(tmp_path)
    root = write_demo(tmp_path / "demo", n_images=6, seed=1)
    gt = load_gt(root / "ground_truth")
    pred = tmp_path / "pred"
    _write_preds({gt.events[0]: {n: np.c_[b, np.ones(len(b))] for n, b in zip(gt.files[0], gt.boxes[0])}}, pred)
    with pytest.raises(DeployzooError, match=f"event '{gt.events[1]}' missing"):
        read_predictions(pred, gt)
    with pytest.raises(DeployzooError, match="prediction directory not found"):
        read_predictions(tmp_path / "nope", gt)
    bad = pred / gt.events[0] / f"{gt.files[0][0]}.txt"
    bad.write_text(f"{gt.files[0][0]}\n1\n1 2 three 4 0.5\n")
    for e in gt.events[1:]:
        (pred / e).mkdir()
    with pytest.raises(DeployzooError, match=r"\.txt:3: malformed line"):
        read_predictions(pred, gt)


@need_fixture(REAL_GT)
def test_real_gt_loads():
    gt = load_gt(REAL_GT)
    assert len(gt.events) == 61 and gt.n_images == 3226
    counts = {s: sum(len(k) for ev in gt.keep[s] for k in ev) for s in ("easy", "medium", "hard")}
    assert 0 < counts["easy"] <= counts["medium"] <= counts["hard"]
    assert gt.events[0] == "0--Parade" and gt.files[0][0] == "0_Parade_marchingband_1_465"


@need_fixture(REAL_GT)
@pytest.mark.slow
def test_real_gt_full_eval_speed_and_gt_as_predictions(tmp_path):
    gt = load_gt(REAL_GT)
    rng = np.random.default_rng(0)
    preds = {}
    for e, names, bl in zip(gt.events, gt.files, gt.boxes):
        preds[e] = {}
        for n, b in zip(names, bl):
            noise = np.c_[rng.uniform(0, 1000, (150, 2)), rng.uniform(5, 100, (150, 2))]
            p = np.r_[np.c_[b, rng.uniform(0.5, 1, len(b))], np.c_[noise, rng.uniform(0, 0.5, 150)]]
            preds[e][n] = p[np.argsort(-p[:, 4])]
    _write_preds(preds, tmp_path / "pred")
    t = time.perf_counter()
    res = evaluate(tmp_path / "pred", REAL_GT)
    dt = time.perf_counter() - t
    print(f"WIDER eval of 3226 images x ~160 predictions: {dt:.1f}s, AP {res.to_json()}")
    # GT boxes outrank all noise: every kept face is found before any false positive
    assert all(v > 0.99 for v in res.to_json().values())
    # speed is not asserted here: benchmarks/widerface_eval_speed.py measures the < 10 s goal

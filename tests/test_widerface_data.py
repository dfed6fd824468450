"""deployzoo.data.widerface: the official ground-truth reader and the synthetic demo set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import loadmat, savemat

from deployzoo.data.widerface import WiderGT, load_gt
from deployzoo.demo.widerface import FACE_BOX, write_demo
from deployzoo.errors import DeployzooError
from deployzoo.metrics.widerface import evaluate

from conftest import FIXTURES, need_fixture

SETTINGS = ("easy", "medium", "hard")
MAT_NAMES = ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat")


REAL_GT = FIXTURES / "widerface" / "ground_truth"
need_real_gt = need_fixture(REAL_GT / "wider_face_val.mat")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("wider") / "demo", n_images=24, n_events=3, seed=0)


# ============================================================================ write_demo


def test_demo_layout(demo):
    for name in MAT_NAMES:
        assert (demo / "ground_truth" / name).is_file()
    listed = (demo / "wider_val.txt").read_text().split()
    jpgs = sorted(p.relative_to(demo / "WIDER_val" / "images").as_posix()
                  for p in (demo / "WIDER_val" / "images").rglob("*.jpg"))
    assert len(listed) == 24 and sorted(listed) == jpgs
    assert {j.split("/")[0] for j in jpgs} == {"0--Demo", "1--Demo", "2--Demo"}
    assert all(Path(j).stem.startswith(j.split("--")[0] + "_Demo_demo_") for j in jpgs)


def test_demo_reads_back(demo):
    gt = load_gt(demo / "ground_truth")
    assert gt.events == ["0--Demo", "1--Demo", "2--Demo"] and gt.n_images == 24
    assert [len(f) for f in gt.files] == [8, 8, 8]
    listed = (demo / "wider_val.txt").read_text().split()
    assert sorted(f"{e}/{n}.jpg" for e, names in zip(gt.events, gt.files) for n in names) == sorted(listed)
    for e, names, bl in zip(gt.events, gt.files, gt.boxes):
        for n, b in zip(names, bl):
            img = cv2.imread(str(demo / "WIDER_val" / "images" / e / f"{n}.jpg"))
            assert img.shape == (480, 640, 3)
            assert b.dtype == np.float64 and b.shape[1] == 4 and 1 <= len(b) <= 4
            assert (b[:, :2] >= 0).all() and (b[:, 0] + b[:, 2] <= 640).all() and (b[:, 1] + b[:, 3] <= 480).all()
            assert (b[:, 2] >= 24).all() and (b[:, 2] <= 220).all()
            # faces do not overlap
            for i in range(len(b)):
                for j in range(i + 1, len(b)):
                    x1, y1, w1, h1 = b[i]
                    x2, y2, w2, h2 = b[j]
                    assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1


def test_demo_difficulty_lists(demo):
    gt = load_gt(demo / "ground_truth")
    for e in range(len(gt.events)):
        for j, b in enumerate(gt.boxes[e]):
            all_idx = np.arange(1, len(b) + 1)
            np.testing.assert_array_equal(gt.keep["hard"][e][j], all_idx)
            np.testing.assert_array_equal(gt.keep["medium"][e][j], all_idx[b[:, 2] > 50])
            np.testing.assert_array_equal(gt.keep["easy"][e][j], all_idx[b[:, 2] > 100])
    n = {s: gt.n_faces(s) for s in SETTINGS}
    assert 0 < n["easy"] < n["medium"] < n["hard"] == gt.n_faces()


def test_demo_mat_structure_matches_the_official_files(demo):
    """Same variables, N x 1 cell nesting and element dtypes as the real files (and as the official code
    indexes them: event_list[i][0][0], file_list[i][0][j][0][0], face_bbx_list[i][0][j][0], gt_list[i][0][j][0])."""
    def signature(path: Path) -> dict:
        m = loadmat(str(path))
        sig = {"keys": sorted(k for k in m if not k.startswith("__"))}
        sig["event"] = type(str(m["event_list"][0][0][0])), m["event_list"].shape[1]
        sig["file"] = type(str(m["file_list"][0][0][0][0][0])), m["file_list"][0][0].shape[1]
        sig["box"] = m["face_bbx_list"][0][0][0][0].dtype, m["face_bbx_list"][0][0][0][0].shape[1]
        if "gt_list" in m:
            sig["keep"] = m["gt_list"][0][0][0][0].dtype, m["gt_list"][0][0][0][0].shape[1]
        return sig

    ours = {n: signature(demo / "ground_truth" / n) for n in MAT_NAMES}
    assert ours["wider_face_val.mat"]["box"] == (np.dtype(np.int32), 4)
    assert ours["wider_hard_val.mat"]["keep"] == (np.dtype(np.uint8), 1)
    if (REAL_GT / "wider_face_val.mat").is_file():
        for n in MAT_NAMES:
            assert ours[n] == signature(REAL_GT / n), n


def test_demo_is_deterministic(tmp_path, demo):
    again = write_demo(tmp_path / "again", n_images=24, n_events=3, seed=0)
    for rel in ["wider_val.txt", "WIDER_val/images/1--Demo/1_Demo_demo_0_4.jpg"]:
        assert (again / rel).read_bytes() == (demo / rel).read_bytes(), rel
    a, b = load_gt(again / "ground_truth"), load_gt(demo / "ground_truth")
    assert all(np.array_equal(x, y) for ex, ey in zip(a.boxes, b.boxes) for x, y in zip(ex, ey))
    other = load_gt(write_demo(tmp_path / "other", n_images=24, n_events=3, seed=1) / "ground_truth")
    assert not all(np.array_equal(x, y) for ex, ey in zip(a.boxes, other.boxes) for x, y in zip(ex, ey))


def test_demo_face_is_the_pasted_crop(tmp_path):
    """The GT box holds the astronaut face resized to it (checked against the source pixels)."""
    from skimage.data import astronaut

    root = write_demo(tmp_path / "d", n_images=3, n_events=1, seed=5)
    gt = load_gt(root / "ground_truth")
    x1, y1, x2, y2 = FACE_BOX
    face = cv2.cvtColor(astronaut()[y1:y2, x1:x2], cv2.COLOR_RGB2BGR).astype(np.float32)
    img = cv2.imread(str(root / "WIDER_val/images/0--Demo" / f"{gt.files[0][0]}.jpg")).astype(np.float32)
    for x, y, w, h in gt.boxes[0][0].astype(int):
        crop = cv2.resize(img[y:y + h, x:x + w], (x2 - x1, y2 - y1))
        assert np.abs(crop - face).mean() < 20  # JPEG + resampling; a misplaced box is far off


def test_demo_gt_as_predictions_scores_one(demo):
    gt = load_gt(demo / "ground_truth")
    rng = np.random.default_rng(0)
    preds = {e: {n: np.c_[b, rng.random(len(b))] for n, b in zip(names, bl)}
             for e, names, bl in zip(gt.events, gt.files, gt.boxes)}
    res = evaluate(preds, demo / "ground_truth")
    assert res.to_json() == pytest.approx({"easy": 1.0, "medium": 1.0, "hard": 1.0}, abs=1e-12)


def test_demo_more_events_than_images(tmp_path):
    gt = load_gt(write_demo(tmp_path / "d", n_images=2, n_events=5) / "ground_truth")
    assert gt.events == ["0--Demo", "1--Demo"] and gt.n_images == 2


# ============================================================================ load_gt errors


def _cells(items) -> np.ndarray:
    arr = np.empty((len(items), 1), dtype=object)
    for i, it in enumerate(items):
        arr[i, 0] = it
    return arr


def _write_small_gt(d: Path, n_files_in_list: int = 2, keep_hard=(1, 2), drop: tuple[str, str] | None = None) -> Path:
    """One event, two images with 2 faces each; options break it in one place."""
    d.mkdir(parents=True, exist_ok=True)
    common = {
        "event_list": _cells([np.array(["0--E"])]),
        "file_list": _cells([_cells([np.array([f"0_E_{k}"]) for k in range(n_files_in_list)])]),
        "face_bbx_list": _cells([_cells([np.array([[1, 2, 30, 30], [50, 50, 60, 60]], np.int32)] * 2)]),
    }
    keeps = {"easy": (2,), "medium": (2,), "hard": keep_hard}
    for name, setting in zip(MAT_NAMES, (None, *SETTINGS)):
        data = dict(common)
        if setting:
            data["gt_list"] = _cells([_cells([np.array(keeps[setting], np.uint8).reshape(-1, 1)] * 2)])
        if drop and drop[0] == name:
            data.pop(drop[1])
        savemat(str(d / name), data)
    return d


def _one_line_error(gt_dir: Path, must_name: str, match: str) -> None:
    with pytest.raises(DeployzooError, match=match) as ei:
        load_gt(gt_dir)
    msg = str(ei.value)
    assert must_name in msg and "\n" not in msg, msg


def test_small_gt_loads(tmp_path):
    gt = load_gt(_write_small_gt(tmp_path))
    assert isinstance(gt, WiderGT) and gt.files == [["0_E_0", "0_E_1"]]
    assert gt.keep["hard"][0][0].dtype == np.int64 and list(gt.keep["hard"][0][0]) == [1, 2]


def test_error_missing_dir(tmp_path):
    _one_line_error(tmp_path / "nope", "nope", "ground-truth directory not found")


@pytest.mark.parametrize("name", MAT_NAMES)
def test_error_missing_mat(tmp_path, name):
    (_write_small_gt(tmp_path) / name).unlink()
    _one_line_error(tmp_path, name, "ground-truth file not found")


@pytest.mark.parametrize("content", [b"this is not a mat file\n", b"", b"MATLAB 5.0 MAT-file" + b"\0" * 200])
def test_error_not_a_mat(tmp_path, content):
    (_write_small_gt(tmp_path) / "wider_medium_val.mat").write_bytes(content)
    _one_line_error(tmp_path, "wider_medium_val.mat", r"not a readable \.mat file")


@pytest.mark.parametrize("drop", [("wider_face_val.mat", "face_bbx_list"), ("wider_face_val.mat", "file_list"),
                                  ("wider_easy_val.mat", "gt_list")])
def test_error_missing_key(tmp_path, drop):
    _write_small_gt(tmp_path, drop=drop)
    _one_line_error(tmp_path, drop[0], f"missing variable '{drop[1]}'")


def test_error_inconsistent_lengths(tmp_path):
    _write_small_gt(tmp_path, n_files_in_list=3)  # 3 names, 2 box lists
    _one_line_error(tmp_path, "wider_face_val.mat", "disagree in length")


def test_error_keep_index_out_of_range(tmp_path):
    _write_small_gt(tmp_path, keep_hard=(1, 3))  # 3 > 2 faces
    _one_line_error(tmp_path, "wider_hard_val.mat", "index out of range for 0--E/0_E_0")


def test_error_gt_list_of_other_dataset(tmp_path):
    _write_small_gt(tmp_path)
    savemat(str(tmp_path / "wider_hard_val.mat"), {"gt_list": _cells([_cells([np.array([[1]], np.uint8)])] * 2)})
    _one_line_error(tmp_path, "wider_hard_val.mat", "does not match wider_face_val.mat")


def test_error_wrong_structure(tmp_path):
    _write_small_gt(tmp_path)
    data = loadmat(str(tmp_path / "wider_face_val.mat"))
    data["event_list"] = np.array([[1.0]])  # numbers where a cell of names belongs
    savemat(str(tmp_path / "wider_face_val.mat"), {k: v for k, v in data.items() if not k.startswith("__")})
    _one_line_error(tmp_path, "wider_face_val.mat", "unexpected structure")


# ============================================================================ the official files


@need_real_gt
def test_real_gt():
    gt = load_gt(REAL_GT)
    assert len(gt.events) == 61 and gt.n_images == 3226
    assert gt.events[0] == "0--Parade" and gt.files[0][0] == "0_Parade_marchingband_1_465"
    counts = {s: gt.n_faces(s) for s in SETTINGS}
    assert 0 < counts["easy"] <= counts["medium"] <= counts["hard"] <= gt.n_faces()
    # the numbers of the official WIDER FACE val ground truth
    assert (gt.n_faces(), counts["easy"], counts["medium"], counts["hard"]) == (39708, 7211, 13319, 31958)
    for s in SETTINGS:
        for ev_keep, ev_boxes in zip(gt.keep[s], gt.boxes):
            for k, b in zip(ev_keep, ev_boxes):
                assert k.dtype == np.int64 and (k.size == 0 or 1 <= k.min() <= k.max() <= len(b))
    # indices above 255 (stored as uint16 in the file) come through intact
    assert max(int(k.max()) for ev in gt.keep["hard"] for k in ev if k.size) == 708
    raw = loadmat(str(REAL_GT / "wider_face_val.mat"))
    np.testing.assert_array_equal(gt.boxes[5][3], raw["face_bbx_list"][5][0][3][0].astype(float))

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from deployzoo.checkpoint import load_state_dict
from deployzoo.errors import DeployzooError
from deployzoo.models import retinaface as rf

from conftest import MNET_WEIGHTS, need_fixture


@pytest.mark.parametrize("hw", [(64, 64), (100, 130), (97, 203)])
def test_in_graph_priors_and_decode_match_official(hw):
    torch.manual_seed(0)
    net = rf.RetinaFace("mobilenet0.25").eval()
    dep = rf.RetinaFaceDeploy(net).eval()
    x = torch.randn(1, 3, *hw) * 50
    with torch.no_grad():
        loc, conf, ldm = net(x)
        boxes, scores, lms = dep(x)
    pri = rf.official_priors(hw)
    assert pri.shape[0] == boxes.shape[1]
    h, w = hw
    ref_b = rf.official_decode(loc[0].numpy().astype(np.float64), pri.astype(np.float64)) * [w, h, w, h]
    ref_l = rf.official_decode_landm(ldm[0].numpy().astype(np.float64), pri.astype(np.float64)) * ([w, h] * 5)
    np.testing.assert_allclose(boxes[0].numpy(), ref_b, atol=2e-3, rtol=1e-5)
    np.testing.assert_allclose(lms[0].numpy(), ref_l, atol=2e-3, rtol=1e-5)
    np.testing.assert_allclose(scores[0].numpy(), conf[0, :, 1].numpy(), atol=1e-7)


def test_official_priors_hand_case():
    # 32x32 image: level 0 (step 8) has a 4x4 grid, two anchors (16, 32) per cell; first cell centre (4, 4) px.
    pri = rf.official_priors((32, 32))
    assert pri.shape == (4 * 4 * 2 + 2 * 2 * 2 + 1 * 1 * 2, 4)
    np.testing.assert_allclose(pri[0], [4 / 32, 4 / 32, 16 / 32, 16 / 32])
    np.testing.assert_allclose(pri[1], [4 / 32, 4 / 32, 32 / 32, 32 / 32])
    np.testing.assert_allclose(pri[2], [12 / 32, 4 / 32, 16 / 32, 16 / 32])  # next column first
    np.testing.assert_allclose(pri[-1], [16 / 32, 16 / 32, 512 / 32, 512 / 32])


def test_decode_hand_case():
    pri = np.array([[0.5, 0.5, 0.2, 0.1]])
    loc = np.array([[1.0, -1.0, 0.0, np.log(2) / 0.2]])
    # centre (0.5 + 0.1*0.2, 0.5 - 0.1*0.1) = (0.52, 0.49); size (0.2, 0.2)
    np.testing.assert_allclose(rf.official_decode(loc, pri), [[0.42, 0.39, 0.62, 0.59]], atol=1e-12)


@pytest.mark.parametrize("variant,n", [("mobilenet0.25", 300), ("resnet50", None)])
def test_state_dict_layout_matches_official_keys(variant, n):
    sd = rf.RetinaFace(variant).state_dict()
    if n:
        assert len(sd) == n  # the released mobilenet0.25_Final.pth holds 300 tensors
    assert "ClassHead.0.conv1x1.weight" in sd and "LandmarkHead.2.conv1x1.bias" in sd
    assert "fpn.output1.0.weight" in sd and "ssh3.conv7x7_3.1.running_var" in sd
    if variant == "resnet50":
        assert "body.layer4.2.bn3.running_mean" in sd and not any(k.startswith("body.fc") for k in sd)


def _save_both_formats(sd, tmp_path):
    zip_path, legacy = tmp_path / "zip.pth", tmp_path / "legacy.pth"
    torch.save(sd, zip_path)
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert zipfile.is_zipfile(zip_path) and not zipfile.is_zipfile(legacy)
    return zip_path, legacy


def test_loads_zip_legacy_and_module_prefix(tmp_path):
    torch.manual_seed(1)
    src = rf.RetinaFace("mobilenet0.25")
    sd = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    for path in _save_both_formats(sd, tmp_path):
        model = rf.build_model("mobilenet0.25", path)
        for k, v in src.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(model.state_dict()[k], v), k


def test_wrapped_checkpoint(tmp_path):
    src = rf.RetinaFace("mobilenet0.25")
    p = tmp_path / "wrapped.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, p)
    assert set(load_state_dict(p)) == set(src.state_dict())


def test_wrong_variant_names_keys_and_hint(tmp_path):
    p = tmp_path / "mnet.pth"
    torch.save(rf.RetinaFace("mobilenet0.25").state_dict(), p)
    with pytest.raises(DeployzooError) as e:
        rf.build_model("resnet50", p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    assert "missing keys" in msg and "unexpected keys" in msg and "--variant mobilenet0.25" in msg


def test_truncated_checkpoint(tmp_path):
    p = tmp_path / "full.pth"
    torch.save(rf.RetinaFace("mobilenet0.25").state_dict(), p)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DeployzooError, match="cut.pth: not a readable torch checkpoint"):
        rf.build_model("mobilenet0.25", cut)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(DeployzooError, match="empty"):
        load_state_dict(empty)


def test_partial_checkpoint_names_missing_keys(tmp_path):
    sd = rf.RetinaFace("mobilenet0.25").state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("LandmarkHead")}
    p = tmp_path / "partial.pth"
    torch.save(partial, p)
    with pytest.raises(DeployzooError, match=r"missing keys 6 \(LandmarkHead.0.conv1x1.weight"):
        rf.build_model("mobilenet0.25", p)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/deployzoo_pwned",))


def test_pickle_that_executes_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(DeployzooError, match="evil.pth: (refused|not a readable)"):
        load_state_dict(p)
    p2 = tmp_path / "evil_zip.pth"
    torch.save({"x": _Evil()}, p2)
    with pytest.raises(DeployzooError, match="evil_zip.pth: refused"):
        load_state_dict(p2)


@need_fixture(MNET_WEIGHTS)
def test_official_mnet_checkpoint_loads():
    model = rf.build_model("mobilenet0.25", MNET_WEIGHTS)
    sd = load_state_dict(MNET_WEIGHTS)
    assert set(sd) == set(model.state_dict())
    assert torch.equal(model.state_dict()["ClassHead.0.conv1x1.weight"], sd["ClassHead.0.conv1x1.weight"])

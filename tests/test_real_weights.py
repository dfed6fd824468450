"""With the real released RetinaFace-mnet weights (../shared/fixtures): the astronaut's face is found."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MNET_WEIGHTS, astronaut_bgr, need_fixture

pytestmark = need_fixture(MNET_WEIGHTS)


@pytest.fixture(scope="module")
def mnet_real_fp32(tmp_path_factory):
    from deployzoo.cache import ensure_engine

    return ensure_engine("retinaface", variant="mobilenet0.25", weights=MNET_WEIGHTS, imgsz="origin",
                         cache_dir=tmp_path_factory.mktemp("cache"))


def _detect(engine, img):
    from deployzoo.pipeline import load_engine

    loaded = load_engine(engine)
    p = loaded.task.prepare(img, loaded.engine.input)
    return loaded.task.postprocess(loaded.runner.run(p.tensor[None]), [p.meta], dict(loaded.engine.post))[0]


def test_astronaut_face_found_with_high_score(mnet_real_fp32):
    rec = _detect(mnet_real_fp32, astronaut_bgr())
    scores = np.array(rec["scores"])
    assert (scores > 0.9).sum() == 1
    x1, y1, x2, y2 = rec["boxes"][int(np.argmax(scores))]
    # the face sits around x 180..270, y 55..175 in the 512x512 photo
    assert 160 < x1 < 200 and 240 < x2 < 290 and 35 < y1 < 80 and 150 < y2 < 200
    eyes = np.array(rec["landmarks"][int(np.argmax(scores))][:2])
    assert eyes[0, 0] < eyes[1, 0]  # left eye left of right eye


def test_fixed_size_letterbox_finds_it_too(tmp_path):
    from deployzoo.cache import ensure_engine

    eng = ensure_engine("retinaface", variant="mobilenet0.25", weights=MNET_WEIGHTS, imgsz=[640, 640], batch=1,
                        cache_dir=tmp_path)
    rec = _detect(eng, astronaut_bgr())
    best = int(np.argmax(rec["scores"]))
    assert rec["scores"][best] > 0.9
    x1, y1, x2, y2 = rec["boxes"][best]
    assert 160 < x1 < 200 and 240 < x2 < 290  # mapped back to original pixels


COCO = MNET_WEIGHTS.parents[1] / "coco128" / "images"
IMAGENET = MNET_WEIGHTS.parents[1] / "imagenet" / "val_227" / "images"


@need_fixture(COCO)
@need_fixture(IMAGENET)
@pytest.mark.slow
def test_int8_detections_agree_with_fp32_on_real_images(mnet_real_fp32, tmp_path):
    """int8 (calibrated on ImageNet images, disjoint from these) against fp32 detections as ground truth."""
    from deployzoo.cache import ensure_engine
    from deployzoo.data.images import list_source, read_image
    from deployzoo.metrics.agreement import agreement_ap
    from deployzoo.quant.calib import make_calib_set

    eng8 = ensure_engine("retinaface", variant="mobilenet0.25", weights=MNET_WEIGHTS, imgsz="origin", precision="int8",
                         calib=make_calib_set(IMAGENET, 32), cache_dir=tmp_path)
    imgs = [read_image(i.path) for i in list_source(COCO)[1][:48]] + [astronaut_bgr()]
    ref = [_detect(mnet_real_fp32, im) for im in imgs]
    got = [_detect(eng8, im) for im in imgs]
    assert sum((np.asarray(r["scores"]) >= 0.5).sum() for r in ref) >= 10  # enough faces to mean something
    assert agreement_ap(ref, got) >= 0.97

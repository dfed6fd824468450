from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
MNET_WEIGHTS = FIXTURES / "retinaface" / "mobilenet0.25_Final.pth"


def free_port() -> int:
    """A local TCP port that nothing listens on once this returns (bound, read, closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str]) -> None:
    """Run the deployzoo CLI in-process and require success (a SystemExit other than 0 fails the test)."""
    from deployzoo.cli import main

    try:
        main(args)
    except SystemExit as e:
        assert e.code == 0


def engine_stub(input: dict | None = None, batch: dict | None = None, backend: str = "ort", post: dict | None = None,
                outputs: tuple[str, ...] = ()):
    """An Engine description with only what a pipeline test needs (no files behind it): for Loaded(...) around
    test doubles of a runner and a task."""
    from deployzoo.engine import Engine
    from deployzoo.specs import BatchSpec, InputSpec

    return Engine(dir=Path("eng"), model="retinaface", variant="mobilenet0.25", task="face_detection",
                  backend=backend, precision="fp32", model_file="model.onnx", files={},
                  input=InputSpec.from_dict(input or {}), batch=BatchSpec.from_dict(batch or {"dynamic": True,
                                                                                             "min": 1, "max": 64}),
                  outputs=outputs, post=post or {}, options={}, compile={}, weights={}, source_graph={},
                  calibration=None, warnings=(), created="", manifest={})


def need_fixture(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"needs {path} (../shared/fixtures is absent in a fresh clone)")


def gt_as_results(coco) -> list[dict]:
    """Non-crowd ground truth of a pycocotools COCO object as COCO results (score 1, RLE masks)."""
    out = []
    for a in coco.dataset["annotations"]:
        if a["iscrowd"]:
            continue
        rle = coco.annToRLE(a)
        rle = {"size": rle["size"], "counts": rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]}
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                    "segmentation": rle})
    return out


def astronaut_bgr() -> np.ndarray:
    from skimage.data import astronaut

    return cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def mnet_random_onnx(tmp_path_factory) -> Path:
    """RetinaFace-mnet, random weights (seed 0), original-size input, dynamic batch."""
    from deployzoo.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "mnet_origin_dyn.onnx"
    export_onnx("retinaface", out, variant="mobilenet0.25", imgsz="origin", batch=None)
    return out


@pytest.fixture(scope="session")
def mnet_random_fp32(mnet_random_onnx, tmp_path_factory) -> Path:
    from deployzoo.build import build_engine

    return build_engine(mnet_random_onnx, tmp_path_factory.mktemp("eng") / "fp32", precision="fp32")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """RetinaFace-mnet, random weights, 64 x 64, dynamic batch: the cheapest real graph (the fault tests)."""
    from deployzoo.export import export_onnx

    out = tmp_path_factory.mktemp("tiny") / "mnet64.onnx"
    export_onnx("retinaface", out, variant="mobilenet0.25", imgsz=[64, 64], batch=None)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_onnx, tmp_path_factory) -> Path:
    """ORT fp32 engine of tiny_onnx."""
    from deployzoo.build import build_engine

    return build_engine(tiny_onnx, tmp_path_factory.mktemp("tiny_eng") / "fp32", precision="fp32")


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """A few real-looking images (the astronaut at several scales on noise) of different sizes."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    face = astronaut_bgr()
    for i, (h, w) in enumerate([(240, 320), (300, 200), (256, 256), (180, 400)]):
        canvas = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        s = min(h, w) / 512
        small = cv2.resize(face, (int(512 * s), int(512 * s)))
        canvas[: small.shape[0], : small.shape[1]] = small
        cv2.imwrite(str(d / f"img_{i}.jpg"), canvas)
    return d

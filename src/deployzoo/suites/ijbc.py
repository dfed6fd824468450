"""IJB-C 1:1 verification (face recognition): TAR at the official FAR levels (metrics.ijbc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deployzoo.data.ijbc import find_layout
from deployzoo.demo.ijbc import write_demo
from deployzoo.suites.base import Suite, demo_sets, pct
from deployzoo.tasks.face_recognition import FEATURES_FILE, mean_cosine, read_features


class IJBCSuite(Suite):
    """What `deployzoo run` needs for face recognition: the IJB-C root, calibration faces and the scoring."""

    pred_formats = ("npy",)
    accuracy_keys = ("1e-05", "0.0001")
    accuracy_headers = ("Batch", "TAR@FAR=1e-5 (%)", "TAR@FAR=1e-4 (%)")  # the seed's table
    agreement_header = "mean cosine vs fp32 embeddings"
    agreement_nan = "no finite fp32 embedding"
    agreement_definition = ("100 x the mean cosine similarity between each image's embedding and the fp32 engine's "
                            "(100: identical directions)")

    def sample_warnings(self, res: dict[str, Any]) -> list[str]:
        out = []
        neg, pos = int(res.get("n_neg") or 0), int(res.get("n_pos") or 0)
        for k in self.accuracy_keys:
            far = float(k)
            if 0 < neg < 1.0 / far:
                out.append(f"TAR@FAR={far:g} rests on {neg} impostor pairs, fewer than 1/FAR = {1.0 / far:.0f}: its "
                           "threshold is the highest impostor score, not that false-accept rate")
        if 0 < pos < 1000:
            out.append(f"TAR rests on {pos} genuine pairs: one pair is {100.0 / pos:.2f} points")
        return out
    plot_name = "ROC"
    calib_hint = "aligned face crops, a landmarks file or an IJB-C-layout root of other identities"

    def __init__(self, data: str, work_dir: Path, gt: Path | None = None, demo_images: int | None = None) -> None:
        demo_images = demo_images or self.demo_images
        if data == "demo":
            n_id = max(4, demo_images // 6)
            root, calib = demo_sets(work_dir / f"demo-ijbc-{n_id}", work_dir / "demo-ijbc-calib", "meta",
                                    lambda d, is_calib: write_demo(d, n_identities=6 if is_calib else n_id,
                                                                   images_per_identity=6, seed=int(is_calib)))
            self.calib_default: Path | None = calib
            self.name = f"demo IJB-C-layout set ({n_id} synthetic identities x 6 images, seed 0)"
        else:
            root = Path(data)
            self.calib_default = None
            self.name = f"IJB-C at {root}"
        self.layout = find_layout(root, need_images=True)
        self.source = self.layout.root

    def settings(self, imgsz: Any, post: dict[str, Any]) -> str:
        return ("IJB-C 1:1 verification, official protocol (insightface eval_ijbc.py): 5-point alignment to the "
                f"112x112 ArcFace template, flip test {'on' if post.get('flip', True) else 'off'}, image norms "
                "kept, faceness-score weighting, media then template pooling, cosine of L2-normalised templates.")

    def evaluate(self, pred_dir: Path, plot_path: Path | None = None, title: str | None = None) -> dict[str, Any]:
        from deployzoo.metrics.ijbc import evaluate, plot_roc

        feats = read_features(pred_dir)
        res = evaluate(np.asarray(feats), self.layout, features_path=Path(pred_dir) / FEATURES_FILE)
        if plot_path is not None:
            plot_roc({title or "ROC": res}, plot_path, title=title)
        return res.to_json()

    def accuracy_cells(self, res: dict[str, Any], batch: int) -> list[Any]:
        return [batch, *(pct(res["tar_at_far"][k]) for k in self.accuracy_keys)]

    def agreement(self, ref_dir: Path, pred_dir: Path) -> float:
        return mean_cosine(np.asarray(read_features(ref_dir)), np.asarray(read_features(pred_dir)))

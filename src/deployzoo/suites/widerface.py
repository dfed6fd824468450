"""WIDER FACE val (face detection): the official easy / medium / hard AP (metrics.widerface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployzoo.data.widerface import load_gt
from deployzoo.demo.widerface import write_demo
from deployzoo.errors import DeployzooError
from deployzoo.records import iter_records
from deployzoo.suites.base import Suite, demo_sets, pct


class WiderFaceSuite(Suite):
    """What `deployzoo run` needs for face detection: images, ground truth, calibration images, and the scoring."""

    pred_formats = ("widerface",)
    accuracy_keys = ("easy", "medium", "hard")
    accuracy_headers = ("Easy (%)", "Medium (%)", "Hard (%)")  # the seeds' table, in percent
    agreement_header = "AP vs fp32 detections"
    agreement_nan = "no fp32 detection >= 0.5"
    agreement_definition = ("average precision of the engine's detections scored as predictions against the "
                            "fp32 engine's detections with score >= 0.5 as ground truth (IoU 0.5; 100: every "
                            "confident fp32 face found, with no other detection ranked above one)")
    plot_name = "PR"
    calib_hint = "e.g. WIDER_train/images"

    def __init__(self, data: str, work_dir: Path, gt: Path | None = None, demo_images: int | None = None) -> None:
        demo_images = demo_images or self.demo_images
        if data == "demo":
            root, calib = demo_sets(work_dir / f"demo-widerface-{demo_images}", work_dir / "demo-widerface-calib",
                                    "ground_truth/wider_face_val.mat",
                                    lambda d, is_calib: write_demo(d, n_images=16 if is_calib else demo_images,
                                                                   seed=int(is_calib)))
            self.calib_default: Path | None = calib / "WIDER_val" / "images"
            self.name = f"demo WIDER-layout set ({demo_images} synthetic images, seed 0)"
        else:
            root = Path(data)
            self.calib_default = None
            self.name = f"WIDER FACE val at {root}"
        self.source = root / "WIDER_val" / "images"
        if not self.source.is_dir():
            raise DeployzooError(f"{root}: not a WIDER FACE root (expected WIDER_val/images/<event>/*.jpg)")
        self.gt_dir = Path(gt) if gt else root / "ground_truth"
        self.gt = load_gt(self.gt_dir)

    def evaluate(self, pred_dir: Path, plot_path: Path | None = None, title: str | None = None) -> dict[str, float]:
        from deployzoo.metrics.widerface import evaluate, plot_pr

        res = evaluate(pred_dir, self.gt)
        if plot_path is not None:
            plot_pr(res, plot_path, title=title)
        return res.to_json()

    def settings(self, imgsz: Any, post: dict[str, Any]) -> str:
        scale = imgsz if isinstance(imgsz, str) else "x".join(map(str, imgsz))
        return (f"Test scale: {scale} (origin = original image size, the official WIDER protocol). Post-processing: "
                f"conf {post['conf']}, NMS IoU {post['iou']}, top-k {post['top_k']}, keep {post['max_det']}.")

    def accuracy_cells(self, res: dict[str, Any], batch: int) -> list[Any]:
        return [pct(res[k]) for k in self.accuracy_keys]

    def agreement(self, ref_dir: Path, pred_dir: Path) -> float:
        """AP of this engine's detections scored against the fp32 engine's confident ones (metrics.agreement)."""
        from deployzoo.metrics.agreement import agreement_ap

        by_name = {r["image"]: r for r in iter_records(pred_dir)}
        pairs = [(r, by_name[r["image"]]) for r in iter_records(ref_dir) if r["image"] in by_name]
        return agreement_ap([p[0] for p in pairs], [p[1] for p in pairs])

"""COCO val (instance segmentation): box and mask AP by pycocotools' COCOeval (metrics.coco)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deployzoo.data.coco import find_set
from deployzoo.demo.coco import write_demo
from deployzoo.records import iter_records
from deployzoo.suites.base import Suite, demo_sets, pct
from deployzoo.tasks.instance_segmentation import RESULTS_FILE


class CocoSuite(Suite):
    """What `deployzoo run` needs for Mask R-CNN: a COCO-layout set, calibration images, the COCO scoring."""

    pred_formats: tuple[str, ...] = ("coco",)
    accuracy_headers = ("Batch", "bbox mAP@[.5:.95] (%)", "bbox mAP@.5 (%)", "segm mAP@[.5:.95] (%)")  # the seed's, in %
    agreement_header = "box agreement vs fp32"
    agreement_nan = "no fp32 detection with score >= 0.5"
    agreement_definition = ("the share of the fp32 engine's detections with score >= 0.5 that the engine also "
                            "makes: same image and category, box IoU >= 0.9")
    plot_name = ""  # the COCO summary is the report
    calib_hint = "e.g. COCO train2017 images such as ../shared/fixtures/coco128, never from the evaluation set"

    demo_images = 8

    def __init__(self, data: str, work_dir: Path, gt: Path | None = None, demo_images: int | None = None) -> None:
        demo_images, ann = demo_images or self.demo_images, gt
        if data == "demo":
            root, calib = demo_sets(work_dir / f"demo-coco-{demo_images}", work_dir / "demo-coco-calib",
                                    "annotations", lambda d, is_calib: write_demo(
                                        d, n_images=4 if is_calib else demo_images, seed=int(is_calib)))
            self.calib_default: Path | None = calib / "images"
            self.name = f"demo COCO-layout set ({demo_images} generated images with drawn objects, seed 0)"
        else:
            root = Path(data)
            self.calib_default = None
            self.name = f"COCO-layout set at {root}"
        self.set = find_set(root, ann)
        self.source = root
        self.name += f", {len(self.set.items)} images, annotations {self.set.ann_path.name}"

    def settings(self, imgsz: Any, post: dict[str, Any]) -> str:
        return ("Keep-ratio resize (shorter side 800, longer side at most 1333) and padding to 32 in the "
                f"pre-processing; detections score > {post['conf']}, per-class NMS {post['iou']}, at most "
                f"{post['max_det']} per image, masks pasted back ({post.get('paste', 'torchvision')}) and binarised "
                f"at {post['mask_thr']}; pycocotools COCOeval.")

    def evaluate(self, pred_dir: Path, plot_path: Path | None = None, title: str | None = None) -> dict[str, Any]:
        from deployzoo.files import atomic_write_text
        from deployzoo.metrics.coco import evaluate

        results = pred_dir / RESULTS_FILE
        if not results.is_file() or results.stat().st_size <= 3:
            return {"bbox": None, "segm": None, "note": "no detections"}
        stats, text = evaluate(results, self.set.coco)
        atomic_write_text(pred_dir / "coco_eval.txt", text)
        return stats

    def accuracy_cells(self, res: dict[str, Any], batch: int) -> list[Any]:
        def cell(t: str, k: str) -> str:  # the seed's 0.381 is 38.10
            return pct(res[t][k]) if res.get(t) else "-"

        return [batch, cell("bbox", "AP"), cell("bbox", "AP50"), cell("segm", "AP")]

    def agreement(self, ref_dir: Path, pred_dir: Path) -> float:
        """Share of the fp32 engine's detections scoring >= 0.5 that the other engine also makes: same image and
        category, box IoU >= 0.9."""
        from torchvision.ops import box_iou

        ref, got = _read_detections(ref_dir), _read_detections(pred_dir)
        n = hit = 0
        for key, dets in ref.items():
            other = got.get(key, [])
            for d in dets:
                if d["score"] < 0.5:
                    continue
                n += 1
                same = [o["bbox"] for o in other if o["category_id"] == d["category_id"]]
                if same:
                    a = torch.tensor([_xyxy(d["bbox"])])
                    b = torch.tensor([_xyxy(s) for s in same])
                    hit += int(box_iou(a, b).max() >= 0.9)
        return hit / n if n else float("nan")


def _xyxy(b: list[float]) -> list[float]:
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _read_detections(pred_dir: Path) -> dict[str, list[dict[str, Any]]]:

    return {rec["image"]: rec.get("detections", []) for rec in iter_records(pred_dir)}

"""ImageNet-style labelled sets (classification): top-1 / top-5 accuracy (metrics.classification)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployzoo.data.imagenet import find_set
from deployzoo.demo.imagenet import write_demo
from deployzoo.suites.base import Suite, demo_sets, pct


class ImageNetSuite(Suite):
    """What `deployzoo run` needs for classification: the labelled set, calibration images, the scoring."""

    pred_formats: tuple[str, ...] = ()
    accuracy_headers = ("Batch", "TOP1 (%)", "TOP5 (%)")  # the seed's table, in percent
    agreement_header = "top-1 agreement vs fp32"
    agreement_nan = "no fp32 prediction"
    agreement_definition = ("the share of images whose top-1 class is the fp32 engine's (100: every image "
                            "classified as fp32 classifies it)")

    def sample_warnings(self, res: dict[str, Any]) -> list[str]:
        n = int(res.get("n") or 0)
        if 0 < n < 1000:
            return [f"top-1 / top-5 rest on {n} images: one image is {100.0 / n:.2f} points"]
        return []
    plot_name = ""  # no curve to plot
    calib_hint = "e.g. images from ImageNet train, never from the evaluation set"

    def __init__(self, data: str, work_dir: Path, gt: Path | None = None, demo_images: int | None = None) -> None:
        demo_images, labels = demo_images or self.demo_images, gt
        if data == "demo":
            root, calib = demo_sets(work_dir / f"demo-imagenet-{demo_images}", work_dir / "demo-imagenet-calib",
                                    "val.txt", lambda d, is_calib: write_demo(
                                        d, n_images=16 if is_calib else demo_images, seed=int(is_calib)))
            self.calib_default: Path | None = calib / "images"
            self.name = f"demo labelled set ({demo_images} generated images, random labels, seed 0)"
        else:
            root = Path(data)
            self.calib_default = None
            self.name = f"labelled images at {root}"
        self.set = find_set(root, labels)
        self.source = self.set.images_dir

    def settings(self, imgsz: Any, post: dict[str, Any]) -> str:
        return "Top-1 / top-5 accuracy of the softmax over the engine's logits, images matched to labels by name."

    def evaluate(self, pred_dir: Path, plot_path: Path | None = None, title: str | None = None) -> dict[str, Any]:
        from deployzoo.metrics.classification import evaluate, read_predictions, write_seed_files

        res = evaluate(read_predictions(pred_dir), self.set.labels, allow_missing=True,
                       pred_path=str(pred_dir), labels_path=self.set.source)
        write_seed_files(res, pred_dir)
        return res.to_json()

    def accuracy_cells(self, res: dict[str, Any], batch: int) -> list[Any]:
        return [batch, pct(res["top1"]), pct(res["top5"])]

    def class_name(self, c: int) -> str:
        """The name of class index `c`: the set's synset_words.txt when it has one, else ImageNet-1k's (sorted-wnid
        order, torchvision's list), else `class c`."""
        from deployzoo.tasks.classification import imagenet_class_names

        names = self.set.class_names or imagenet_class_names()
        return names[c] if 0 <= c < len(names) else f"class {c}"

    def examples(self, pred_dirs: dict[str, Path], limit: int = 10) -> list[str]:
        """A table of images by class name: where a precision's top-1 differs from fp32's (up to `limit`), else the
        first 5 images; each cell the top-1 class and its probability."""
        from deployzoo.records import iter_records
        from deployzoo.report import md_table

        if not pred_dirs:
            return []
        precs = list(pred_dirs)
        recs = {p: {r["image"]: r["topk"][0] for r in iter_records(d) if r.get("topk")} for p, d in pred_dirs.items()}
        ref = recs[precs[0]]
        names = [n for n in ref if any(n in recs[p] and recs[p][n][0] != ref[n][0] for p in precs[1:])]
        differ = bool(names)
        names = names[:limit] if differ else list(ref)[:5]
        if not names:
            return []

        def cell(p: str, n: str) -> str:
            top = recs[p].get(n)
            return "-" if top is None else f"{self.class_name(int(top[0]))} ({100 * float(top[1]):.1f}%)"

        rows = [[n, self.class_name(self.set.labels[n]) if n in self.set.labels else "-", *(cell(p, n) for p in precs)]
                for n in names]
        head = (f"Images whose top-1 class differs from fp32's ({len(names)} shown)" if differ else
                "Every precision gives fp32's top-1 class on every image; the first images")
        return ["## Predictions by class name", f"{head}: the top-1 class of each engine and its probability.", "",
                md_table(["Image", "Label", *precs], rows), ""]

    def agreement(self, ref_dir: Path, pred_dir: Path) -> float:
        from deployzoo.metrics.classification import read_predictions

        ref, got = read_predictions(ref_dir), read_predictions(pred_dir)
        common = [k for k in ref if k in got]
        if not common:
            return float("nan")
        return sum(ref[k][:1] == got[k][:1] for k in common) / len(common)


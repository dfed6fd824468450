"""Top-1 / top-5 accuracy of classification predictions (predictions.jsonl `{"image", "topk": [[class, prob],
...]}`) against labels, matched by image name; and the seed's result files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from deployzoo.engine import atomic_write_text
from deployzoo.errors import DeployzooError


@dataclass
class ClassificationResult:
    top1: float
    top5: float
    n: int
    n_missing: int
    rows: list[tuple[str, int, list[int]]]  # (image, label, predicted classes best first)

    def to_json(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "n_missing": self.n_missing}


def read_predictions(path: str | Path) -> dict[str, list[int]]:
    """image -> predicted classes, best first."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.jsonl"
    out: dict[str, list[int]] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read predictions ({exc.strerror or exc})") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[rec["image"]] = [int(c) for c, _ in rec["topk"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DeployzooError(f"{path}:{lineno}: not a classification record (image, topk)") from None
    return out


def evaluate(preds: dict[str, list[int]], labels: dict[str, int], *, allow_missing: bool = False,
             pred_path: str = "predictions", labels_path: str = "labels") -> ClassificationResult:
    """Top-k accuracy (fractions). A prediction for an image the labels do not list is an error; labelled
    images without a prediction are an error unless `allow_missing` (they are then left out and counted)."""
    unknown = [k for k in preds if k not in labels]
    if unknown:
        raise DeployzooError(f"{pred_path}: {len(unknown)} predicted images are not in {labels_path} "
                             f"(first: {unknown[0]})")
    missing = [k for k in labels if k not in preds]
    if missing and not allow_missing:
        raise DeployzooError(f"{labels_path}: {len(missing)} labelled images have no prediction (first: {missing[0]}); "
                             "predict them or pass --allow-missing to score the rest")
    if not preds:
        raise DeployzooError(f"{pred_path}: no predictions")
    rows = [(k, labels[k], preds[k]) for k in labels if k in preds]
    top1 = sum(p[:1] == [y] for _, y, p in rows) / len(rows)
    top5 = sum(y in p[:5] for _, y, p in rows) / len(rows)
    return ClassificationResult(top1, top5, len(rows), len(missing), rows)


def write_seed_files(res: ClassificationResult, out_dir: str | Path) -> None:
    """The seed's outputs: eval_labels.txt (`image label`), eval_result_1.txt (`image top1`),
    eval_result_5.txt (`image c1 .. c5`) and eval_result.txt (`top1: v` / `top5: v`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval_labels.txt", "".join(f"{k} {y}\n" for k, y, _ in res.rows))
    atomic_write_text(out / "eval_result_1.txt", "".join(f"{k} {p[0]}\n" for k, _, p in res.rows))
    atomic_write_text(out / "eval_result_5.txt", "".join(f"{k} {' '.join(map(str, p[:5]))}\n" for k, _, p in res.rows))
    atomic_write_text(out / "eval_result.txt", f"top1:  {res.top1}\ntop5:  {res.top5}\n")

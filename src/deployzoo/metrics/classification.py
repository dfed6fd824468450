"""Top-1 / top-5 accuracy of classification predictions (predictions.jsonl `{"image", "topk": [[class, prob],
...]}`) against labels, matched by image name; and the seed's result files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from deployzoo.files import atomic_write_text
from deployzoo.errors import DeployzooError

NUM_CLASSES = 1000  # ImageNet-1k, as deployzoo.data.imagenet.NUM_CLASSES (not imported: that module loads cv2)


@dataclass
class ClassificationResult:
    top1: float
    top5: float
    n: int
    n_missing: int
    rows: list[tuple[str, int, list[int]]]  # (image, label, predicted classes best first)

    def to_json(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "n_missing": self.n_missing}


class Predictions(dict):
    """image -> predicted classes (best first), as read from `path`; `lines` gives each image's line number, so
    that later checks (the class range, see `evaluate`) can name the line."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.lines: dict[str, int] = {}


def _class_index(c: object, where: str) -> int:
    """A predicted class as an int: a JSON integer (or an integral float such as 3.0); anything else (3.5, "cat",
    "3", null, true, NaN) is an error."""
    if isinstance(c, int) and not isinstance(c, bool):
        return c
    if isinstance(c, float) and c.is_integer():
        return int(c)
    raise DeployzooError(f"{where}: class {c!r} is not an integer")


def _range_error(where: str, c: int, num_classes: int) -> DeployzooError:
    return DeployzooError(f"{where}: class {c} out of range 0..{num_classes - 1}")


def read_predictions(path: str | Path, num_classes: int | None = None) -> Predictions:
    """image -> predicted classes, best first, from predictions.jsonl (or the directory holding it).

    Each line is one `{"image": NAME, "topk": [[class, prob], ...]}`; an error names the file and line: not
    JSON, not such a record, a class that is not an integer (`predictions.jsonl:12: class 3.5 is not an
    integer`). The class range is checked here only with `num_classes`; `evaluate` checks it against the
    class count it derives from the labels, naming the line recorded here."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.jsonl"
    out = Predictions(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read predictions ({exc.strerror or exc})") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
                image, topk = rec["image"], rec["topk"]
                pairs = [(c, p) for c, p in topk]
                hash(image)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DeployzooError(f"{where}: not a classification record (image, topk)") from None
            classes = [_class_index(c, where) for c, _ in pairs]
            if num_classes is not None:
                bad = next((c for c in classes if not 0 <= c < num_classes), None)
                if bad is not None:
                    raise _range_error(where, bad, num_classes)
            out[image] = classes
            out.lines[image] = lineno
    return out


def evaluate(preds: dict[str, list[int]], labels: dict[str, int], *, allow_missing: bool = False,
             pred_path: str = "predictions", labels_path: str = "labels",
             num_classes: int | None = None) -> ClassificationResult:
    """Top-k accuracy (fractions). A prediction for an image the labels do not list is an error; labelled
    images without a prediction are an error unless `allow_missing` (they are then left out and counted).

    Every predicted class must lie in 0 .. num_classes - 1, else a one-line error naming the predictions file and
    line (`predictions.jsonl:12: class 1003 out of range 0..999`; in-memory predictions name the image). The
    class count is `num_classes` when given (the model's, or the length of a known synset list); otherwise
    ImageNet-1k's 1000, raised to max label + 1 when the labels use a class >= 1000. So a 1001-class model (a
    background class at 0, every class shifted by one) or 1-based classes fail here instead of scoring near
    zero. With `num_classes`, labels outside the range are an error too."""
    n_cls = num_classes if num_classes is not None else max([NUM_CLASSES, *(y + 1 for y in labels.values())])
    lines = getattr(preds, "lines", {})
    pred_file = str(getattr(preds, "path", pred_path))
    for k, classes in preds.items():
        for c in classes:
            if not 0 <= c < n_cls:
                where = f"{pred_file}:{lines[k]}" if k in lines else f"{pred_path}: image {k}"
                raise _range_error(where, c, n_cls)
    if num_classes is not None:
        bad = next((k for k, y in labels.items() if not 0 <= y < num_classes), None)
        if bad is not None:
            raise _range_error(f"{labels_path}: image {bad}", labels[bad], num_classes)
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

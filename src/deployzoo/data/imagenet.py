"""ImageNet-style classification sets: class sub-folders (`ROOT/<wnid>/<image>`, the seed's layout) or a flat
image folder with a labels file (`<file> <class index>` per line, as ../shared/fixtures/imagenet/*/val.txt);
class names from `synset_words.txt` (`<wnid> <names>` per line, in class-index order)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deployzoo.data.images import IMAGE_EXTS
from deployzoo.errors import DeployzooError

NUM_CLASSES = 1000


@dataclass
class LabelledSet:
    images_dir: Path  # predictions name images relative to this
    labels: dict[str, int]  # image name (relative, '/'-separated) -> class index
    source: str  # where the labels came from (a file, or "folders")
    class_names: list[str] | None = None


def read_synsets(path: str | Path) -> tuple[list[str], list[str]]:
    """(wnids, names) in class-index order from synset_words.txt."""
    path = Path(path)
    wnids, names = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read synset file ({exc.strerror or exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        wnids.append(parts[0])
        names.append(parts[1].strip() if len(parts) > 1 else parts[0])
    if not wnids:
        raise DeployzooError(f"{path}: no synsets")
    return wnids, names


def read_labels(path: str | Path, images_dir: Path | None = None, num_classes: int = NUM_CLASSES) -> dict[str, int]:
    """`<file> <class>` per line. Errors name the file and line: wrong field count, non-integer or out-of-range
    class, duplicates; with `images_dir`, a listed image that does not exist there."""
    path = Path(path)
    out: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DeployzooError(f"{path}: cannot read labels file ({exc.strerror or exc})") from None
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DeployzooError(f"{path}:{lineno}: expected 2 fields (image, class index), got {len(parts)}")
        try:
            cls = int(parts[1])
        except ValueError:
            raise DeployzooError(f"{path}:{lineno}: class {parts[1]!r} is not an integer") from None
        if not 0 <= cls < num_classes:
            raise DeployzooError(f"{path}:{lineno}: class {cls} out of range [0, {num_classes})")
        if parts[0] in out:
            raise DeployzooError(f"{path}:{lineno}: image {parts[0]} listed twice")
        if images_dir is not None and not (images_dir / parts[0]).is_file():
            raise DeployzooError(f"{path}:{lineno}: image {parts[0]} not found in {images_dir}")
        out[parts[0]] = cls
    if not out:
        raise DeployzooError(f"{path}: labels file lists no images")
    return out


def find_set(root: str | Path, labels: str | Path | None = None, synsets: str | Path | None = None,
             num_classes: int = NUM_CLASSES) -> LabelledSet:
    """A labelled set at `root`: class sub-folders, or a flat folder (or ROOT/images) with a labels file
    (`labels`, else ROOT/val.txt). Sub-folder classes are indexed by the synset file's order when given, else by
    sorted folder name (torchvision ImageFolder's rule)."""
    root = Path(root)
    if not root.is_dir():
        raise DeployzooError(f"{root}: dataset directory not found")
    wnids, names = read_synsets(synsets) if synsets else (None, None)
    images = root / "images" if (root / "images").is_dir() else root
    label_file = Path(labels) if labels else next((p for p in (root / "val.txt", images / "val.txt") if p.is_file()), None)
    if label_file is not None:
        return LabelledSet(images, read_labels(label_file, images, num_classes), str(label_file), names)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DeployzooError(f"{root}: neither class sub-folders nor a labels file (val.txt or --labels)")
    index = {w: i for i, w in enumerate(wnids)} if wnids else {c: i for i, c in enumerate(classes)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DeployzooError(f"{root}: class folder {unknown[0]} is not in {synsets}")
    lab = {}
    for c in classes:
        for p in sorted((root / c).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                lab[f"{c}/{p.name}"] = index[c]
    if max(index.values()) >= num_classes:
        raise DeployzooError(f"{root}: {len(index)} classes, the model has {num_classes}")
    return LabelledSet(root, lab, "folders", names)


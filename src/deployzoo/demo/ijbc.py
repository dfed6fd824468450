"""Synthetic IJB-C data: a small demo set in the official layout (drawn faces with real landmarks, templates and
pairs), and meta files of the real size for the evaluation's speed and memory tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployzoo.data.face_align import ARCFACE_TEMPLATE
from deployzoo.data.ijbc import (
    IMAGES_DIR,
    LANDMARK_FILE,
    META_DIR,
    PAIR_FILE,
    TID_MID_FILE,
    IJBCLayout,
)
from deployzoo.errors import DeployzooError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- demo data


@dataclass
class _Look:
    """What one demo identity looks like, in the 112 x 112 ArcFace frame (BGR colours)."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    mark: tuple[float, float, float]
    face_axes: tuple[float, float]
    face_cy: float
    hair_style: int
    brow: float  # thickness
    brow_tilt: float
    iris_r: float
    nose_style: int
    mark_shape: int
    mark_xy: tuple[float, float]
    glasses: bool
    offsets: np.ndarray  # 5 x 2 landmark offsets from ARCFACE_TEMPLATE


def _look(rng: np.random.Generator) -> _Look:
    def colour(lo: float, hi: float) -> tuple[float, float, float]:
        return tuple(float(v) for v in rng.uniform(lo, hi, 3))  # type: ignore[return-value]

    base = np.array([[120, 160, 210], [90, 130, 180], [60, 90, 140], [140, 180, 230], [80, 110, 150]])
    skin = base[int(rng.integers(0, len(base)))] + rng.uniform(-15, 15, 3)
    return _Look(
        skin=tuple(float(v) for v in np.clip(skin, 0, 255)),  # type: ignore[arg-type]
        hair=colour(0, 160), iris=colour(20, 220), lips=colour(40, 200), mark=colour(0, 255),
        face_axes=(float(rng.uniform(36, 44)), float(rng.uniform(48, 56))), face_cy=float(rng.uniform(62, 68)),
        hair_style=int(rng.integers(0, 4)), brow=float(rng.uniform(1.5, 4.0)), brow_tilt=float(rng.uniform(-4, 4)),
        iris_r=float(rng.uniform(2.8, 4.8)), nose_style=int(rng.integers(0, 2)), mark_shape=int(rng.integers(0, 3)),
        mark_xy=(float(rng.choice([32, 80])) + float(rng.uniform(-3, 3)), float(rng.uniform(70, 84))),
        glasses=bool(rng.random() < 0.3), offsets=rng.uniform(-2.5, 2.5, (5, 2)).astype(np.float32))


class _Pen:
    """cv2 drawing in ArcFace-frame coordinates through a similarity ``m`` (sub-pixel, anti-aliased)."""

    SHIFT = 4

    def __init__(self, img: np.ndarray, m: np.ndarray) -> None:
        self.img, self.m = img, m
        self.scale = float(np.hypot(m[0, 0], m[1, 0]))
        self.angle = float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))

    def pt(self, xy) -> tuple[int, int]:
        x, y = self.m[:, :2] @ np.asarray(xy, dtype=np.float64) + self.m[:, 2]
        return int(round(x * 16)), int(round(y * 16))

    def ellipse(self, c, axes, colour, angle: float = 0.0, thickness: int = -1, arc=(0, 360)) -> None:
        import cv2

        ax = (max(1, int(round(axes[0] * self.scale * 16))), max(1, int(round(axes[1] * self.scale * 16))))
        t = thickness if thickness < 0 else max(1, int(round(thickness * self.scale)))
        cv2.ellipse(self.img, self.pt(c), ax, angle + self.angle, arc[0], arc[1], colour, t, cv2.LINE_AA, self.SHIFT)

    def poly(self, pts, colour) -> None:
        import cv2

        cv2.fillPoly(self.img, [np.array([self.pt(p) for p in pts], np.int32)], colour, cv2.LINE_AA, self.SHIFT)

    def line(self, a, b, colour, thickness: float) -> None:
        import cv2

        cv2.line(self.img, self.pt(a), self.pt(b), colour, max(1, int(round(thickness * self.scale))), cv2.LINE_AA,
                 self.SHIFT)


def _draw_face(pen: _Pen, look: _Look, lm: np.ndarray, mouth_open: float) -> None:
    """The face of ``look`` with its features on the landmarks ``lm`` (ArcFace frame)."""
    fx, fy = look.face_axes
    cx, cy = 56.0, look.face_cy
    hair = look.hair
    if look.hair_style in (0, 1):  # hair behind the head
        pen.ellipse((cx, cy - 8), (fx + 6, fy + 4), hair)
    pen.ellipse((cx - fx, cy), (5, 9), look.skin)  # ears
    pen.ellipse((cx + fx, cy), (5, 9), look.skin)
    pen.ellipse((cx, cy), (fx, fy), look.skin)
    if look.hair_style == 0:  # fringe
        pen.ellipse((cx, cy - fy + 10), (fx + 1, 16), hair, arc=(180, 360))
    elif look.hair_style == 1:  # side parting
        pen.poly([(cx - fx - 2, cy - 10), (cx - fx, cy - fy + 4), (cx + fx, cy - fy + 2), (cx + 6, cy - fy + 16)], hair)
    elif look.hair_style == 2:  # cap
        pen.ellipse((cx, cy - fy + 12), (fx + 4, 18), hair, arc=(180, 360))
        pen.line((cx - fx - 6, cy - fy + 12), (cx + fx + 14, cy - fy + 12), hair, 3)
    dark = tuple(0.35 * c for c in hair)
    for e, sgn in ((lm[0], -1), (lm[1], 1)):  # brows, eyes
        tilt = look.brow_tilt * sgn
        pen.line((e[0] - 8, e[1] - 9 + tilt), (e[0] + 8, e[1] - 9 - tilt), dark, look.brow)
        pen.ellipse(e, (7.5, 4.2), (245, 245, 245))
        pen.ellipse(e, (look.iris_r, look.iris_r), look.iris)
        pen.ellipse(e, (1.6, 1.6), (15, 15, 15))
        if look.glasses:
            pen.ellipse(e, (11, 8), (30, 30, 30), thickness=2)
    if look.glasses:
        pen.line((lm[0][0] + 11, lm[0][1]), (lm[1][0] - 11, lm[1][1]), (30, 30, 30), 2)
    shade = tuple(0.75 * c for c in look.skin)
    n = lm[2]
    if look.nose_style == 0:
        pen.poly([(n[0], n[1] - 14), (n[0] - 5, n[1] + 2), (n[0] + 5, n[1] + 2)], shade)
    else:
        pen.line((n[0], n[1] - 14), (n[0] + 2, n[1]), shade, 2)
        pen.ellipse((n[0] - 4, n[1] + 1), (2, 1.5), shade)
        pen.ellipse((n[0] + 4, n[1] + 1), (2, 1.5), shade)
    ml, mr = lm[3], lm[4]
    mc = (ml + mr) / 2
    half = float(np.hypot(*(mr - ml))) / 2
    ang = float(np.degrees(np.arctan2(mr[1] - ml[1], mr[0] - ml[0])))
    pen.ellipse(mc, (half, 2.0 + mouth_open), look.lips, angle=ang)
    pen.line(ml, mr, (40, 20, 30), 1)
    mx, my = look.mark_xy
    if look.mark_shape == 0:
        pen.ellipse((mx, my), (3.5, 3.5), look.mark)
    elif look.mark_shape == 1:
        pen.poly([(mx - 3, my - 3), (mx + 3, my - 3), (mx + 3, my + 3), (mx - 3, my + 3)], look.mark)
    else:
        pen.poly([(mx, my - 4), (mx - 4, my + 3), (mx + 4, my + 3)], look.mark)


def _demo_image(rng: np.random.Generator, look: _Look) -> tuple[np.ndarray, np.ndarray]:
    """One loose crop of ``look`` (BGR uint8, 120..200 px a side) and its 5 landmarks in its pixels."""
    h, w = (int(v) for v in rng.integers(120, 201, 2))
    side = min(h, w)
    scale = rng.uniform(0.55, 0.78) * side / 112.0
    theta = np.radians(rng.uniform(-15, 15))
    centre = np.array([w / 2, h / 2]) + rng.uniform(-0.06, 0.06, 2) * side
    r = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    m = np.empty((2, 3))
    m[:, :2] = r
    m[:, 2] = centre - r @ np.array([56.0, 66.0])
    import cv2

    # background: a tilted colour gradient and a few blobs
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    a = rng.uniform(0, 2 * np.pi)
    t = ((np.cos(a) * xs + np.sin(a) * ys) / max(h, w) + 1) / 2
    img = (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(8, 30)),
                   tuple(float(v) for v in rng.uniform(0, 255, 3)), -1, cv2.LINE_AA)
    lm = ARCFACE_TEMPLATE + look.offsets + rng.normal(0, 0.4, (5, 2)).astype(np.float32)
    _draw_face(_Pen(img, m), look, lm, mouth_open=float(rng.uniform(0, 2.5)))
    gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-20, 20)
    out = img.astype(np.float32) * gain + bias + rng.normal(0, 3.0, img.shape).astype(np.float32)
    img = np.clip(out, 0, 255).astype(np.uint8)
    pix = lm.astype(np.float64) @ m[:, :2].T + m[:, 2]
    return img, pix.astype(np.float32)


def _media_groups(n: int) -> list[int]:
    """Group sizes 2, 1, 2, 1, ... summing to n: some media hold two frames of a video, some a single still."""
    sizes: list[int] = []
    while n > 0:
        s = min(n, 2 if len(sizes) % 2 == 0 else 1)
        sizes.append(s)
        n -= s
    return sizes


def write_demo(root: str | Path, n_identities: int = 12, images_per_identity: int = 6, seed: int = 0) -> IJBCLayout:
    """Write a small synthetic IJB-C set under ``root`` and return its layout.

    Each identity gets a drawn face (its own skin, hair, eye and lip colours, shapes and a mark) seen in
    ``images_per_identity`` loose crops of 120..200 px with random rotation, scale, shift, brightness and
    background; the 5 landmarks written are where the eyes, nose and mouth corners were drawn, so
    ``data.face_align.align_face`` gives an upright 112 x 112 face. Scores are in [0.5, 1).

    Each identity is split into two templates: a 'gallery' one with 1..k-1 images and a 'probe' one with the
    rest. Within a template, images are grouped into media of 2, 1, 2, ... (video frames and stills), and the
    last media of the gallery template and the first of the probe template share a media id (the same video
    in two templates). Template and media ids are sparse integers in the thousands, the rows are shuffled.
    Pairs: every gallery template with every probe template (label 1 for the same identity), sorted.
    Deterministic for a seed.
    """
    import cv2

    if n_identities < 2 or images_per_identity < 2:
        raise DeployzooError(f"{root}: write_demo needs n_identities >= 2 and images_per_identity >= 2")
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_id, k = int(n_identities), int(images_per_identity)
    tids = 1000 + np.cumsum(rng.integers(2, 150, 2 * n_id))  # sparse: never two consecutive ids
    tids = rng.permutation(tids).reshape(n_id, 2)  # (gallery, probe) template id per identity
    media_pool = rng.permutation(20_000 + np.cumsum(rng.integers(2, 90, n_id * k)))
    rows: list[tuple[int, int, int]] = []  # (identity, template id, media id)
    mi = 0
    for i in range(n_id):
        n_a = 1 + i % (k - 1)
        shared = -1
        for t, n_t in ((tids[i, 0], n_a), (tids[i, 1], k - n_a)):
            sizes = _media_groups(n_t)
            for g, size in enumerate(sizes):
                if t == tids[i, 1] and g == 0 and shared >= 0:
                    mid = shared
                else:
                    mid = int(media_pool[mi])
                    mi += 1
                rows += [(i, int(t), mid)] * size
            shared = mid
    order = rng.permutation(len(rows))
    looks = [_look(rng) for _ in range(n_id)]
    img_dir, meta_dir = root / IMAGES_DIR, root / META_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    meta_dir.mkdir(parents=True, exist_ok=True)
    tid_lines, lm_lines = [], []
    for r, j in enumerate(order):
        ident, tid, mid = rows[j]
        name = f"{r + 1}.jpg"
        img, lm = _demo_image(rng, looks[ident])
        if not cv2.imwrite(str(img_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise DeployzooError(f"{img_dir / name}: cannot write image")
        score = np.floor(rng.uniform(0.5, 1.0) * 1e6) / 1e6
        tid_lines.append(f"{name} {tid} {mid}")
        lm_lines.append(name + " " + " ".join(f"{v:.3f}" for v in lm.ravel()) + f" {score:.6f}")
    pairs = sorted((int(tids[a, 0]), int(tids[b, 1]), int(a == b)) for a in range(n_id) for b in range(n_id))
    (meta_dir / TID_MID_FILE).write_text("\n".join(tid_lines) + "\n")
    (meta_dir / LANDMARK_FILE).write_text("\n".join(lm_lines) + "\n")
    (meta_dir / PAIR_FILE).write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    log.info("wrote IJB-C demo set %s: %d identities, %d images, %d templates, %d pairs", root, n_id, len(rows),
             2 * n_id, len(pairs))
    return IJBCLayout(root, img_dir, meta_dir)


# --------------------------------------------------------------------------------------------- synthetic meta


@dataclass
class SyntheticMeta:
    """What ``write_synthetic_meta`` wrote: the layout and, per image row, its subject (to make features)."""

    layout: IJBCLayout
    subjects: np.ndarray  # N int64, subject index of each row
    n_pos: int
    n_neg: int


def _write_lines(path: Path, columns: list, fmt: str, rows_per_write: int = 1_000_000) -> None:
    n = len(columns[0])
    with open(path, "w") as f:
        for s in range(0, n, rows_per_write):
            cols = [c[s:s + rows_per_write].tolist() for c in columns]  # Python numbers format faster
            f.write("".join(fmt % row for row in zip(*cols)))


def write_synthetic_meta(root: str | Path, n_images: int = 469_375, n_templates: int = 23_124,
                         n_pairs: int = 15_658_489, seed: int = 0) -> SyntheticMeta:
    """Write only the three meta files of an IJB-C-like protocol of any size (no images), for benchmarks/tests.

    Structure as in the real protocol: one gallery template per subject (subjects = templates / 6.55) and the
    other templates are probes of random subjects; every probe is paired with its subject's gallery template
    (label 1; only n_pairs / 2 random probes when n_pairs < 2 x probes) and random other (gallery, probe)
    combinations make up the negatives (fewer when there are not enough); pairs are sorted by the gallery
    template. Template ids are sparse (up to 8 x n_templates), images per template are skewed, and
    consecutive images of a template share a media id with probability 1/2 (video frames).
    """
    root = Path(root)
    if n_templates < 3 or n_images < n_templates or n_pairs < 1:
        raise DeployzooError(f"{root}: write_synthetic_meta needs n_images >= n_templates >= 3 and n_pairs >= 1")
    rng = np.random.default_rng(seed)
    n_sub = int(min(max(2, round(n_templates / 6.55)), n_templates - 1))
    n_probe = n_templates - n_sub
    tids = rng.permutation(rng.choice(np.arange(1, 8 * n_templates + 1), n_templates, replace=False)).astype(np.int64)
    gallery, probes = tids[:n_sub], tids[n_sub:]
    probe_sub = np.concatenate([rng.permutation(n_sub)[:min(n_sub, n_probe)],
                                rng.integers(0, n_sub, max(0, n_probe - n_sub))]).astype(np.int64)
    tpl_sub = np.concatenate([np.arange(n_sub), probe_sub])
    # images per template: 1 + a skewed share of the rest
    w = rng.lognormal(0.0, 1.2, n_templates)
    per = 1 + rng.multinomial(n_images - n_templates, w / w.sum())
    tpl_of_row = np.repeat(np.arange(n_templates), per)
    new_media = rng.random(n_images) < 0.5
    new_media[np.r_[0, np.cumsum(per)[:-1]]] = True
    media_idx = np.cumsum(new_media) - 1
    mids = rng.choice(np.arange(1, 4 * n_images + 1), int(media_idx[-1]) + 1, replace=False).astype(np.int64)
    # pairs: linear index gallery * n_probe + probe
    pos = probe_sub * n_probe + np.arange(n_probe)
    if n_pairs < 2 * n_probe:  # small protocols: keep room for negatives
        pos = np.sort(rng.choice(pos, max(1, n_pairs // 2), replace=False))
    total = n_sub * n_probe
    n_neg = int(min(n_pairs - len(pos), total - n_probe))
    if 2 * n_neg >= total - n_probe:  # most combinations: choose among all of them
        every = np.arange(total, dtype=np.int64)
        every = every[(every // n_probe) != probe_sub[every % n_probe]]
        neg = rng.choice(every, n_neg, replace=False)
    else:  # a minority: draw, drop repeats, draw again (each round at least halves what is missing)
        neg = np.zeros(0, np.int64)
        while len(neg) < n_neg:
            draw = rng.integers(0, total, int((n_neg - len(neg)) * 1.3) + 16)
            draw = draw[(draw // n_probe) != probe_sub[draw % n_probe]]
            neg = np.unique(np.concatenate([neg, draw]))
        neg = rng.choice(neg, n_neg, replace=False) if len(neg) > n_neg else neg
    lin = np.sort(np.concatenate([pos, neg]))
    g, p = lin // n_probe, lin % n_probe
    label = (probe_sub[p] == g).astype(np.int64)
    meta = root / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    names = np.array([f"{i + 1}.jpg" for i in range(n_images)], dtype=object)
    _write_lines(meta / TID_MID_FILE, [names, tids[tpl_of_row], mids[media_idx]], "%s %d %d\n")
    lm = ARCFACE_TEMPLATE[None] * rng.uniform(1.0, 1.6, (n_images, 1, 1)) + rng.uniform(0, 40, (n_images, 1, 2))
    lm = np.round(lm.reshape(n_images, 10), 3)
    score = np.floor(rng.uniform(0.5, 1.0, n_images) * 1e6) / 1e6
    _write_lines(meta / LANDMARK_FILE, [names, *lm.T, score], "%s" + " %.3f" * 10 + " %.6f\n")
    _write_lines(meta / PAIR_FILE, [gallery[g], probes[p], label], "%d %d %d\n")
    return SyntheticMeta(IJBCLayout(root, root / IMAGES_DIR, meta), tpl_sub[tpl_of_row], int(label.sum()),
                         int(len(label) - label.sum()))

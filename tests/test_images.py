from __future__ import annotations

import cv2
import numpy as np
import pytest

from deployzoo.data.images import ImageError, list_source, read_image
from deployzoo.errors import DeployzooError


def _jpeg(path, h=40, w=60):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return path


def test_corrupt_truncated_nonimage_zero_byte(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    assert read_image(good).shape == (40, 60, 3)
    for p, msg in [(trunc, "truncated JPEG"), (text, "not a decodable image"), (zero, "empty file")]:
        with pytest.raises(ImageError) as e:
            read_image(p)
        assert str(p) in str(e.value) and msg in str(e.value) and "\n" not in str(e.value)


def test_grayscale_rgba_16bit_png(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    cv2.imwrite(str(tmp_path / "d.png"), np.dstack([deep] * 3))
    g = read_image(tmp_path / "g.png")
    assert g.shape == (3, 4, 3) and np.array_equal(g[..., 0], gray) and np.array_equal(g[..., 2], gray)
    a = read_image(tmp_path / "a.png")
    assert a.shape == (3, 4, 3) and a[0, 0, 0] == 200
    d = read_image(tmp_path / "d.png")
    assert d.dtype == np.uint8 and d[0, 1, 0] == 5000 >> 8
    rgb = read_image(tmp_path / "a.png", "RGB")
    assert rgb[0, 0, 2] == 200


def test_sources(tmp_path):
    with pytest.raises(DeployzooError, match="no images found"):
        list_source(tmp_path)
    with pytest.raises(DeployzooError, match="source not found"):
        list_source(tmp_path / "nope")
    (tmp_path / "a" / "b").mkdir(parents=True)
    _jpeg(tmp_path / "a" / "b" / "x.jpg")
    _jpeg(tmp_path / "a" / "y.JPG")
    (tmp_path / "a" / "readme.txt").write_text("ignored")
    root, items = list_source(tmp_path / "a")
    assert [i.name for i in items] == ["b/x.jpg", "y.JPG"]
    lst = tmp_path / "list.txt"
    lst.write_text("/a/b/x.jpg\n\n# comment\na/y.JPG\n")
    _, items = list_source(lst)
    assert [i.name for i in items] == ["a/b/x.jpg", "a/y.JPG"] and all(i.path.exists() for i in items)
    wider = tmp_path / "wider" / "WIDER_val" / "images" / "0--Parade"
    wider.mkdir(parents=True)
    _jpeg(wider / "0_Parade_1.jpg")
    root, items = list_source(tmp_path / "wider")
    assert items[0].name == "0--Parade/0_Parade_1.jpg"

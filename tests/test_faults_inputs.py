"""Bad or unusual inputs (part 5 of the reliability issue): EXIF orientation read as each model's official reader
reads it (recorded in the input spec / manifest), dangling symbolic links and missing absolute list entries listed
as skips under the name the user gave, and an int8 build whose calibration images are all unreadable stopped with
one line before any quantization work."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import engine_stub
from deployzoo.data.images import ImageError, SourceItem, decode_image, list_source, read_item_bytes
from deployzoo.errors import DeployzooError
from deployzoo.specs import InputSpec
from deployzoo.tasks.base import Task

ORIENTATIONS = range(1, 9)


def _pattern() -> np.ndarray:
    """24 x 40 RGB, no symmetry: flips, transposes and rotations all give different arrays."""
    img = np.full((24, 40, 3), 90, np.uint8)
    img[:8, :10] = (255, 0, 0)
    img[16:, 28:] = (0, 255, 0)
    img[:, 18:21] = (0, 0, 255)
    img[10:13, :] = (250, 250, 0)
    return img


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


@pytest.fixture(scope="module")
def exif_dir(tmp_path_factory) -> Path:
    """o1.jpg .. o8.jpg (and o1.png .. o8.png, eXIf chunk): the same pixels, EXIF Orientation 1..8."""
    d = tmp_path_factory.mktemp("exif")
    img = Image.fromarray(_pattern())
    for o in ORIENTATIONS:
        img.save(d / f"o{o}.jpg", exif=_exif(o), quality=95)
        img.save(d / f"o{o}.png", exif=_exif(o))
    return d


def _bytes(p: Path) -> np.ndarray:
    return np.fromfile(p, np.uint8)


# ------------------------------------------------------------------------------------------- 1. EXIF orientation


@pytest.mark.parametrize("ext", ["jpg", "png"])
@pytest.mark.parametrize("o", ORIENTATIONS)
def test_decode_with_exif_orientation_equals_cv2_imread(exif_dir, o, ext):
    p = exif_dir / f"o{o}.{ext}"
    ref = cv2.imread(str(p), cv2.IMREAD_COLOR)
    bgr = decode_image(_bytes(p), str(p), "BGR", exif_orientation=True)
    assert bgr.shape == ref.shape and np.array_equal(bgr, ref)
    rgb = decode_image(_bytes(p), str(p), "RGB", exif_orientation=True)
    assert np.array_equal(rgb, ref[..., ::-1])
    if o >= 5:
        assert ref.shape[:2] == (40, 24)  # the transposing orientations really transpose


@pytest.mark.parametrize("o", ORIENTATIONS)
def test_decode_without_exif_orientation_is_the_stored_image(exif_dir, o):
    from deployzoo.data.images import decode_for_spec

    p = exif_dir / f"o{o}.jpg"
    stored = cv2.imdecode(_bytes(p), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert np.array_equal(decode_image(_bytes(p), str(p)), stored)
    assert np.array_equal(decode_image(_bytes(p), str(p), exif_orientation=False), stored)
    # a spec (manifest) without the key is an engine built before it: the old reading, no orientation
    assert np.array_equal(decode_for_spec(_bytes(p), str(p), InputSpec.from_dict({"color": "BGR"})), stored)
    assert np.array_equal(decode_for_spec(_bytes(p), str(p), InputSpec(color="BGR", exif_orientation=False)), stored)
    assert np.array_equal(decode_for_spec(_bytes(p), str(p), InputSpec(color="RGB", exif_orientation=True)),
                          cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1])


def test_exif_orientation_keeps_gray_alpha_16bit_float_handling(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "gray.png": rng.integers(0, 256, (5, 7), dtype=np.uint8),
        "gray16.png": rng.integers(0, 65536, (5, 7), dtype=np.uint16),
        "rgb16.png": rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16),
        "rgba.png": rng.integers(0, 256, (5, 7, 4), dtype=np.uint8),
        "rgba16.png": rng.integers(0, 65536, (5, 7, 4), dtype=np.uint16),
        "gray.jpg": rng.integers(0, 256, (5, 7), dtype=np.uint8),
        "rgba.webp": rng.integers(0, 256, (5, 7, 4), dtype=np.uint8),
        "f32.tiff": rng.random((5, 7, 3), dtype=np.float32),
        "u16.tiff": rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16),
        "x.bmp": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    }
    for name, arr in arrays.items():
        ok, enc = cv2.imencode(Path(name).suffix, arr)
        assert ok
        a = decode_image(enc.ravel(), name, exif_orientation=False)
        b = decode_image(enc.ravel(), name, exif_orientation=True)
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (5, 7, 3), name
        assert np.array_equal(a, b), name
    la = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (5, 7, 2), dtype=np.uint8)).save(la, "PNG")
    la_bytes = np.frombuffer(la.getvalue(), np.uint8)
    assert np.array_equal(decode_image(la_bytes, "la.png"), decode_image(la_bytes, "la.png", exif_orientation=True))
    with pytest.raises(ImageError, match="not a decodable image"):
        decode_image(np.frombuffer(b"junk", np.uint8), "junk.jpg", exif_orientation=True)


def test_model_specs_record_the_official_reader():
    from deployzoo.registry import get_model, model_names

    want = {("retinaface", v): True for v in ("mobilenet0.25", "resnet50")}
    want |= {("mobilenetv1", "x0.25"): False, ("maskrcnn", "tv_v1"): False, ("maskrcnn", "tv_v2"): False,
             ("maskrcnn", "mmdet_1x"): True}
    for name in model_names():
        spec = get_model(name)
        for v in spec.variants:
            got = spec.input_for(v).get("exif_orientation")
            assert isinstance(got, bool), (name, v)
            if name == "arcface":
                assert got is True, v
            elif name == "volo_d2":
                assert got is False, v
            else:
                assert got is want[(name, v)], (name, v)


def test_export_meta_and_manifest_carry_exif_orientation(tiny_onnx, tiny_engine):
    from deployzoo.engine import read_manifest
    from deployzoo.export import read_onnx_meta

    assert read_onnx_meta(tiny_onnx)["input"]["exif_orientation"] is True
    assert read_manifest(tiny_engine)["input"]["exif_orientation"] is True


def _enc(path: Path):
    from deployzoo.pipeline_device import _read_one
    from deployzoo.pipeline import StageTimes

    item, enc, err = _read_one(SourceItem(path, path.name), False, StageTimes())
    assert err is None
    return enc


@pytest.mark.parametrize("o", ORIENTATIONS)
def test_device_decode_follows_exif_orientation_on_cpu(exif_dir, o):
    """The device pipeline's decode (CPU here: batched decode_jpeg, then the orientation applied on the tensor, as
    on CUDA where torchvision's decode_jpeg ignores apply_exif_orientation) equals torchvision's CPU decode with
    apply_exif_orientation=True and OpenCV's imread; PNGs (CPU fallback) equal imread too."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from deployzoo.pipeline_device import _decode_fallback, decode_batch

    jpg, png = exif_dir / f"o{o}.jpg", exif_dir / f"o{o}.png"
    encs = [_enc(jpg), _enc(png), _enc(exif_dir / "o6.jpg")]
    cpu = torch.device("cpu")
    on = decode_batch(encs, cpu, exif_orientation=True)
    off = decode_batch(encs, cpu, exif_orientation=False)
    tv = decode_jpeg(torch.from_numpy(_bytes(jpg)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    hwc = [img.permute(1, 2, 0).numpy()[..., ::-1] for img, _ in on]  # BGR, as imread
    assert torch.equal(on[0][0], tv)
    assert np.array_equal(hwc[0], cv2.imread(str(jpg), cv2.IMREAD_COLOR))
    assert np.array_equal(hwc[1], cv2.imread(str(png), cv2.IMREAD_COLOR))
    assert np.array_equal(hwc[2], cv2.imread(str(exif_dir / "o6.jpg"), cv2.IMREAD_COLOR))
    for img, _ in off:
        assert tuple(img.shape) == (3, 24, 40)  # stored orientation
    assert np.array_equal(off[1][0].permute(1, 2, 0).numpy(), decode_image(_bytes(png), "png", "RGB"))
    # a batch of one, and the CPU fallback a JPEG the device decoder refuses goes to, give the same
    assert torch.equal(decode_batch(encs[:1], cpu, exif_orientation=True)[0][0], on[0][0])
    assert torch.equal(_decode_fallback(encs[0], cpu, True), on[0][0])


def test_jpeg_exif_orientation_parser_follows_opencv(exif_dir, tmp_path):
    """The tag reader of the device pipeline (for decoders that do not apply the tag) reads what OpenCV's JPEG
    decoder reads: the turned stored image equals cv2.imread for ordinary and odd Exif segments."""
    from deployzoo.data.images import jpeg_exif_orientation
    from deployzoo.pipeline_device import apply_exif_orientation

    for o in ORIENTATIONS:
        assert jpeg_exif_orientation(_bytes(exif_dir / f"o{o}.jpg")) == o
    plain = cv2.imencode(".jpg", _pattern())[1].ravel()
    assert jpeg_exif_orientation(plain) == 1
    for junk in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00", b"not a jpeg", bytes(64)):
        assert jpeg_exif_orientation(np.frombuffer(junk, np.uint8)) == 1
    d = plain.tobytes()
    xmp_body = b"http://ns.adobe.com/xap/1.0/\x00<x/>"
    xmp = b"\xff\xe1" + (2 + len(xmp_body)).to_bytes(2, "big") + xmp_body
    crafted = {  # name: (file bytes, the orientation OpenCV 5.1 applies)
        "big_endian_6": (d[:2] + _app1(_tiff_be(6)) + d[2:], 6),
        "little_endian_8": (d[:2] + _app1(_tiff_le(8)) + d[2:], 8),
        "xmp_app1_then_exif_3": (d[:2] + xmp + _app1(_tiff_be(3)) + d[2:], 3),
        "two_exif_3_then_6": (d[:2] + _app1(_tiff_be(3)) + _app1(_tiff_be(6)) + d[2:], 3),
        "after_app0_7": (d[:20] + _app1(_tiff_be(7)) + d[20:], 7),
        "lowercase_signature": (d[:2] + _app1(_tiff_be(6), b"exif\x00\x00") + d[2:], 1),
        "bad_tiff_magic": (d[:2] + _app1(b"MM\x00\x2b" + _tiff_be(6)[4:]) + d[2:], 1),
        "value_9": (d[:2] + _app1(_tiff_be(9)) + d[2:], 1),
        "value_0": (d[:2] + _app1(_tiff_be(0)) + d[2:], 1),
    }
    stored = torch.from_numpy(np.ascontiguousarray(cv2.imdecode(plain, cv2.IMREAD_UNCHANGED))).permute(2, 0, 1)
    for name, (data, want) in crafted.items():
        p = tmp_path / f"{name}.jpg"
        p.write_bytes(data)
        ref = cv2.imread(str(p), cv2.IMREAD_COLOR)
        got = jpeg_exif_orientation(np.frombuffer(data, np.uint8))
        assert got == want, name
        assert np.array_equal(apply_exif_orientation(stored, got).permute(1, 2, 0).numpy(), ref), name
        assert np.array_equal(decode_image(_bytes(p), name, exif_orientation=True), ref), name


def _tiff_le(orientation: int) -> bytes:
    return (b"II\x2a\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00"
            + orientation.to_bytes(2, "little") + b"\x00\x00" + b"\x00\x00\x00\x00")


def _tiff_be(orientation: int) -> bytes:
    """A minimal big-endian TIFF (EXIF) block: IFD0 with one SHORT entry, Orientation."""
    return (b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01"
            + orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00")


def _app1(tiff: bytes, signature: bytes = b"Exif\x00\x00") -> bytes:
    body = signature + tiff
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


class _DoubleTask(Task):
    """A Task whose required methods a pipeline test does not reach."""

    name = "double"

    def prepare(self, img, spec, meta=None):
        raise AssertionError("not reached")

    def collate(self, items, spec):
        raise AssertionError("not reached")

    def postprocess(self, outs, metas, post):
        raise AssertionError("not reached")

    def render(self, img, record):
        raise AssertionError("not reached")


class _ShapeTask(_DoubleTask):
    """Device-pipeline task double: records each decoded image's H x W."""

    name = "shape"

    def prepare_tensors(self, imgs, spec, metas):
        return torch.zeros(len(imgs), 1), [{"hw": tuple(im.shape[1:])} for im in imgs]

    def postprocess_tensors(self, outs, metas, post):
        return [dict(m) for m in metas]


class _EchoRunner:
    torch_device, takes_tensors = torch.device("cpu"), True

    def run_tensors(self, x):
        return x


def test_device_pipeline_reads_exif_orientation_from_the_manifest(exif_dir):
    """run_batches_device takes the orientation rule from the manifest's input spec; absent (an engine built
    before the key) is False."""
    from deployzoo.pipeline import Loaded, StageTimes
    from deployzoo.pipeline_device import run_batches_device

    items = [SourceItem(exif_dir / f"o{o}.jpg", f"o{o}.jpg") for o in ORIENTATIONS]
    for flag in (True, False, None):
        spec = {"name": "images", "color": "BGR", **({} if flag is None else {"exif_orientation": flag})}
        eng = engine_stub(spec, {"dynamic": True, "min": 1, "max": 8}, backend="torch")
        loaded = Loaded(eng, _EchoRunner(), _ShapeTask())
        got: dict[str, tuple[np.ndarray, dict]] = {}
        run_batches_device(loaded, items, batch=3,
                           on_result=lambda it, img, rec: got.__setitem__(it.name, (img, rec)),
                           on_skip=lambda it, e: pytest.fail(e), times=StageTimes(), keep_image=True, workers=2)
        for o in ORIENTATIONS:
            img, rec = got[f"o{o}.jpg"]
            p = exif_dir / f"o{o}.jpg"
            want = cv2.imread(str(p), cv2.IMREAD_COLOR) if flag else cv2.imdecode(_bytes(p), cv2.IMREAD_UNCHANGED)
            assert rec["hw"] == want.shape[:2] and np.array_equal(img, want), (flag, o)


class _HostShapeTask(_DoubleTask):
    """Host-pipeline task double: records each decoded image's H x W."""

    name = "shape"

    def prepare(self, img, spec, meta=None):
        from deployzoo.tasks.base import Prepared

        return Prepared(np.zeros((1, 1, 1), np.float32), {"hw": img.shape[:2]})

    def collate(self, items, spec):
        return np.stack([p.tensor for p in items])

    def postprocess(self, outs, metas, post):
        return [dict(m) for m in metas]


class _HostEchoRunner:
    takes_tensors = False

    def run(self, x):
        return {"x": x}


def test_host_pipeline_reads_exif_orientation_from_the_manifest(exif_dir):
    """predict's host pipeline (pipeline._load_one) decodes with the manifest's rule too: both pipelines read an
    EXIF-rotated file as the model's official reader does."""
    from deployzoo.pipeline import Loaded, StageTimes, run_batches

    items = [SourceItem(exif_dir / f"o{o}.{ext}", f"o{o}.{ext}") for o in ORIENTATIONS for ext in ("jpg", "png")]
    for flag in (True, False, None):
        spec = {"name": "images", "color": "BGR", **({} if flag is None else {"exif_orientation": flag})}
        eng = engine_stub(spec, {"dynamic": True, "min": 1, "max": 8})
        got: dict[str, tuple[np.ndarray, dict]] = {}
        run_batches(Loaded(eng, _HostEchoRunner(), _HostShapeTask()), items, batch=3,
                    on_result=lambda it, img, rec: got.__setitem__(it.name, (img, rec)),
                    on_skip=lambda it, e: pytest.fail(e), times=StageTimes(), keep_image=True, workers=2)
        for it in items:
            img, rec = got[it.name]
            want = (cv2.imread(str(it.path), cv2.IMREAD_COLOR) if flag
                    else cv2.imdecode(_bytes(it.path), cv2.IMREAD_UNCHANGED)[:, :, :3])
            assert rec["hw"] == want.shape[:2] and np.array_equal(img, want), (flag, it.name)


def test_calibration_reader_follows_the_spec(exif_dir):
    from deployzoo.quant.calib import CalibReader, CalibSet

    seen = []

    class Task:
        def prepare(self, img, spec, meta):
            seen.append(img.copy())
            return img

        def collate(self, items, spec):
            return np.stack([np.zeros(1, np.float32) for _ in items])

    items = [SourceItem(exif_dir / f"o{o}.jpg", f"o{o}.jpg") for o in (1, 6, 8)]
    for flag in (True, False):
        seen.clear()
        r = CalibReader(CalibSet(exif_dir, items, "minmax"), Task(), InputSpec(color="BGR", exif_orientation=flag), 1)
        while r.get_next() is not None:
            pass
        for it, img in zip(items, seen):
            ref = cv2.imread(str(it.path)) if flag else cv2.imdecode(_bytes(it.path), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(img, ref), (flag, it.name)


# ------------------------------------------------------------------------------------------- 2. symbolic links


@pytest.fixture()
def link_dir(tmp_path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "good.jpg"), _pattern())
    os.symlink("/missing/target", d / "a.jpg")
    os.symlink("../nowhere.png", d / "sub" / "b.png")
    os.symlink("..", d / "sub" / "loop")  # a directory link back up: not followed
    os.symlink(d / "good.jpg", d / "alias.jpg")  # a link to a file: an image as before
    os.symlink("/missing/notes.txt", d / "notes.txt")  # not an image name: not listed
    return d


def test_dangling_symlink_is_listed_and_unreadable(link_dir):
    root, items = list_source(link_dir)
    assert root == link_dir
    assert [i.name for i in items] == ["a.jpg", "alias.jpg", "good.jpg", "sub/b.png"]
    with pytest.raises(ImageError) as e:
        read_item_bytes(items[0])
    assert str(e.value) == f"{link_dir}/a.jpg: dangling symbolic link (-> /missing/target)"
    with pytest.raises(ImageError, match=r"sub/b\.png: dangling symbolic link \(-> \.\./nowhere\.png\)"):
        read_item_bytes(items[3])
    assert read_item_bytes(items[1])[0].size == read_item_bytes(items[2])[0].size > 0


def test_predict_lists_dangling_symlink_in_skipped(tiny_engine, link_dir, tmp_path):
    from deployzoo.predict import predict

    out = tmp_path / "out"
    s = predict(tiny_engine, link_dir, out, show_progress=False)
    assert s.images == 4 and s.written == 2 and s.skipped == 2
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [
        {"image": "a.jpg", "error": f"{link_dir}/a.jpg: dangling symbolic link (-> /missing/target)"},
        {"image": "sub/b.png", "error": f"{link_dir}/sub/b.png: dangling symbolic link (-> ../nowhere.png)"},
    ]


def test_dangling_symlink_as_the_source(tmp_path):
    os.symlink("/missing/x.jpg", tmp_path / "x.jpg")
    want = r"x\.jpg: source not found: dangling symbolic link \(-> /missing/x\.jpg\)$"
    with pytest.raises(DeployzooError, match=want):
        list_source(tmp_path / "x.jpg")


# ------------------------------------------------------------------------------------------- 3. list files


def test_list_file_missing_absolute_entry_kept_as_written(tmp_path):
    (tmp_path / "imgs" / "e").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "imgs" / "e" / "x.jpg"), _pattern())
    absent = "/definitely/not/here/y.jpg"
    real = tmp_path / "imgs" / "e" / "x.jpg"
    lst = tmp_path / "imgs" / "list.txt"
    lst.write_text(f"{absent}\n/e/x.jpg\n{real}\ne/x.jpg\nmissing/z.jpg\n")
    base, items = list_source(lst)
    assert [(str(i.path), i.name) for i in items] == [
        (absent, absent),  # as written: the skip names what the user wrote
        (str(real), "e/x.jpg"),  # leading '/' relative to the list (WIDER's wider_val.txt convention): as before
        (str(real), "x.jpg"),  # an absolute path that exists: as before
        (str(real), "e/x.jpg"),
        (str(tmp_path / "imgs" / "missing" / "z.jpg"), "missing/z.jpg"),  # relative entries: as before
    ]
    with pytest.raises(ImageError) as e:
        read_item_bytes(items[0])
    assert str(e.value).startswith(f"{absent}: ")


# ------------------------------------------------------------------------------------------- 4. int8 calibration


def _no_quantization(monkeypatch):
    """Make onnxruntime's quantizer fail loudly: the unreadable-calibration check must come before it."""
    import onnxruntime.quantization as q

    def refuse(*a, **k):
        raise AssertionError("quantize_static ran although no calibration image is readable")

    monkeypatch.setattr(q, "quantize_static", refuse)


def test_int8_with_no_readable_calibration_image_is_one_line(tiny_onnx, tmp_path, monkeypatch):
    from deployzoo.build import build_engine

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(5):
        (calib / f"c{i}.jpg").write_text(f"not an image {i}")
    _no_quantization(monkeypatch)
    with pytest.raises(DeployzooError) as e:
        build_engine(tiny_onnx, tmp_path / "int8", precision="int8", calib=calib, calib_size=8)
    msg = str(e.value)
    assert msg == (f"{calib}: none of the 5 calibration images is readable "
                   f"(first: {calib}/c0.jpg: not a decodable image)")
    assert not (tmp_path / "int8").exists()


def test_int8_with_some_unreadable_calibration_images_builds(tiny_onnx, tmp_path, caplog):
    from deployzoo.build import build_engine
    from deployzoo.engine import read_manifest

    calib = tmp_path / "calib"
    calib.mkdir()
    cv2.imwrite(str(calib / "a.jpg"), np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    os.symlink("/missing/b.jpg", calib / "b.jpg")
    (calib / "c.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        eng = build_engine(tiny_onnx, tmp_path / "int8", precision="int8", calib=calib, calib_size=8)
    m = read_manifest(eng)
    assert m["quantization"]["calibration_images_used"] == 1 and m["calibration"]["size"] == 3
    assert m["input"]["exif_orientation"] is True
    text = caplog.text
    assert "b.jpg: dangling symbolic link (-> /missing/b.jpg)" in text and "c.jpg: empty file" in text


def test_calibration_fewer_usable_images_than_a_fixed_batch(exif_dir, tmp_path):
    from deployzoo.quant.calib import CalibReader, CalibSet

    task = SimpleNamespace(prepare=lambda img, spec, meta: img, collate=lambda items, spec: np.stack(items))
    (tmp_path / "bad.jpg").write_text("x")
    items = [SourceItem(exif_dir / "o1.jpg", "o1.jpg"), SourceItem(tmp_path / "bad.jpg", "bad.jpg"),
             SourceItem(exif_dir / "o2.jpg", "o2.jpg")]
    CalibReader(CalibSet(tmp_path, items, "minmax"), task, InputSpec(), 2).check_usable()
    with pytest.raises(DeployzooError) as e:
        CalibReader(CalibSet(tmp_path, items, "minmax"), task, InputSpec(), 4).check_usable()
    assert str(e.value) == (f"{tmp_path}: only 2 of the 3 calibration images are readable, fewer than the engine's "
                            f"fixed batch 4 (first unreadable: {tmp_path}/bad.jpg: not a decodable image)")

"""The official weights table (deployzoo.weights.WeightsSource in each model file) and `deployzoo models`."""

from __future__ import annotations

import re

from deployzoo.weights import WeightsSource, official_sources


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    from deployzoo.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_official_table_is_consistent():
    """Every variant has a source; direct URLs end in the published file name; a hash prefix is the one the file
    name carries (torch.hub's `-HEX.` convention, which torchvision and OpenMMLab follow)."""
    from deployzoo.registry import get_model, model_names

    for name in model_names():
        spec = get_model(name)
        assert set(spec.weights) == set(spec.variants), name
    srcs = {(m, v): s for m, v, s in official_sources()}
    for (m, v), s in srcs.items():
        assert isinstance(s, WeightsSource) and s.published, (m, v)
        if s.url:
            assert s.url.startswith("https://") and s.url.rsplit("/", 1)[1] == s.file, (m, v)
        if s.hash_prefix:
            assert re.search(r"-([a-f0-9]+)\.", s.file).group(1) == s.hash_prefix, (m, v)
    direct = sorted((m, v) for (m, v), s in srcs.items() if s.url)
    assert direct == [("maskrcnn", "mmdet_1x"), ("maskrcnn", "tv_v1"), ("maskrcnn", "tv_v2"),
                      ("volo_d2", "d1_224"), ("volo_d2", "d2_224")]
    assert srcs[("maskrcnn", "tv_v1")].hash_prefix == "bf2d0c1e"
    assert srcs[("maskrcnn", "mmdet_1x")].hash_prefix == "d4b0c5d6"
    assert all(s.expected is None for (m, _), s in srcs.items() if m == "volo_d2")  # none published


def test_official_maskrcnn_urls_are_torchvisions():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

    srcs = {(m, v): s for m, v, s in official_sources()}
    assert srcs[("maskrcnn", "tv_v1")].url == MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url
    assert srcs[("maskrcnn", "tv_v2")].url == MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url


def test_models_lists_url_and_hash_per_variant(capsys):
    code, out, _ = cli(["models"], capsys)
    assert code == 0 and "| download (--weights official) | sha256 |" in out
    for m, v, s in official_sources():
        row = next(ln for ln in out.splitlines() if ln.startswith(f"| {m} | {v}"))
        assert row.endswith(f"| {s.download_text()} | {s.hash_text()} |"), row
    assert ("| https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth | "
            "sha256 prefix bf2d0c1e (in the file name) |") in out
    assert "| https://github.com/sail-sg/volo/releases/download/volo_1/d2_224_85.2.pth.tar | none published |" in out
    assert "| manual download: Google Drive https://drive.google.com/" in out

"""VOLO (timm): pre-processing from timm's cfg, the sail-sg checkpoint layout, the export-friendly fold, ONNX parity
through both exporters with a dynamic batch, and the fp16 / int8 ORT builds (a tiny VOLO, random weights; the full
VOLO-D2 export is the one slow test)."""

from __future__ import annotations

import argparse
import functools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm", reason="VOLO is timm's implementation (pip install timm)")

from timm.models.volo import VOLO, OutlookAttention  # noqa: E402

from deployzoo.errors import DeployzooError  # noqa: E402
from deployzoo.models import volo  # noqa: E402
from deployzoo.quant import recipes  # noqa: E402
from deployzoo.registry import ModelSpec, get_model  # noqa: E402
from deployzoo.request import Recipe  # noqa: E402

TINY = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(2, 2, 2, 2), stem_hidden_dim=8)
TINY_DEEPER = dict(TINY, layers=(2, 1, 1, 1))
FOLD_ATOL = 2e-6  # fold rewrites vs F.fold: same sums in another order (measured <= 1e-6)
ORT_ATOL = 1e-5  # ORT fp32 vs eager on the tiny VOLO (measured ~3e-7)


def tiny(seed: int = 0, **over) -> VOLO:
    torch.manual_seed(seed)
    return VOLO(**{**TINY, **over}).eval()


def volo_spec(build=None, fold: str = volo.DEFAULT_FOLD, exporter: str = volo.EXPORTER,
              opset: int = volo.OPSET) -> ModelSpec:
    """A VOLO registry entry with this test's network, fold, exporter and opset."""
    size = {v: volo.default_imgsz(v) for v in volo.VARIANTS}
    return ModelSpec(
        name="volo", task="classification", variants=volo.VARIANTS, default_variant="d2_224",
        default_imgsz=size, seed_imgsz={"d2_224": size["d2_224"]}, input=volo.spec_input("d2_224"),
        post={"topk": 5}, weights=dict(volo.OFFICIAL_WEIGHTS), build=build or volo.build_model,
        deploy=functools.partial(volo.VoloDeploy, fold=fold), output_names=volo.VoloDeploy.output_names,
        int8_recipe={v: {"float_groups": (), "op_types": volo.INT8_OP_TYPES,
                         "exclude_output_ops": volo.INT8_EXCLUDE_OUTPUT_OPS} for v in volo.VARIANTS},
        exporter=exporter, opset=opset, max_batch=volo.MAX_BATCH,
    )


def export_tiny(out: Path, exporter: str, fold: str, opset: int = 18):
    """Tiny VOLO through deployzoo's export_onnx (dynamic batch, traced at batch 1)."""
    from deployzoo import export

    spec = volo_spec(lambda variant, weights: tiny(0), fold=fold, exporter=exporter, opset=opset)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "get_model", lambda name: spec)
        res = export.export_onnx("volo", out, batch=None)
    return res, spec


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> dict:
    """(exporter, fold) -> (path, ExportResult, spec), exported once per module."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("volo")

    def get(exporter: str = "dynamo", fold: str = "convtranspose"):
        if (exporter, fold) not in cache:
            out = root / f"tiny_{exporter}_{fold}.onnx"
            res, spec = export_tiny(out, exporter, fold)
            cache[exporter, fold] = (out, res, spec)
        return cache[exporter, fold]

    return get


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spec = volo.spec_input("d2_224")
    x = rng.random((n, 3, 224, 224)).astype(np.float32) * 255.0
    return (x - np.float32(spec["mean"]).reshape(1, 3, 1, 1)) / np.float32(spec["std"]).reshape(1, 3, 1, 1)


# ----------------------------------------------------------------------------------------------- config


def test_input_config_is_timms_pretrained_cfg():
    for v in ("d2_224", "d1_224"):
        cfg = volo.input_config(v)
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.96
        assert cfg["interpolation"] == "bicubic" and cfg["crop_mode"] == "center"
        assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
        assert cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    spec = volo.spec_input("d2_224")  # timm's eval transform: Resize(233, bicubic) + CenterCrop(224)
    assert (spec["resize"], spec["crop"], spec["interpolation"], spec["color"]) == (233, 224, "bicubic", "RGB")
    assert spec["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert spec["std"] == pytest.approx([58.395, 57.12, 57.375])
    assert volo.TIMM_NAMES["d2_224"] == "volo_d2_224" and "sail-sg" in volo.OFFICIAL_WEIGHTS["d2_224"].url
    with pytest.raises(DeployzooError, match="unknown variant 'd9'"):
        volo.build_model("d9")


# ----------------------------------------------------------------------------------------------- fold


@pytest.mark.parametrize("hw,k,p,s", [((28, 28), 3, 1, 2), ((27, 27), 3, 1, 2), ((14, 20), 3, 1, 2),
                                      ((12, 12), 3, 1, 1), ((8, 8), 2, 0, 2)])
def test_fold_rewrites_equal_F_fold(hw, k, p, s):
    H, W = hw
    L = ((H + 2 * p - k) // s + 1) * ((W + 2 * p - k) // s + 1)
    x = torch.randn(2, 5 * k * k, L, generator=torch.Generator().manual_seed(0))
    ref = F.fold(x, hw, k, padding=p, stride=s)
    for got in (volo.fold_convtranspose(x, hw, k, p, s), volo.fold_slices(x, hw, k, p, s)):
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= FOLD_ATOL


def test_export_attention_and_deploy_equal_timm():
    torch.manual_seed(0)
    attn = OutlookAttention(32, 2, kernel_size=3, padding=1, stride=2).eval()
    x = torch.randn(2, 28, 28, 32)
    with torch.no_grad():
        ref = attn(x)
        for fold in ("convtranspose", "slices"):
            assert (volo.ExportOutlookAttention(attn, fold)(x) - ref).abs().max().item() <= FOLD_ATOL
    net = tiny(0, **{k: v for k, v in TINY_DEEPER.items() if k == "layers"})
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = net(x)  # timm's own forward, before any swap
        for fold in ("convtranspose", "slices", "native"):  # also swaps back and forth on the same network
            dep = volo.VoloDeploy(net, fold)
            assert dep.outlookers == 2
            assert isinstance(net.network[0][0].attn, OutlookAttention) == (fold == "native")
            (out,) = dep(x)
            assert out.dtype == torch.float32 and out.shape == (2, 1000)
            assert (out - ref).abs().max().item() <= FOLD_ATOL
    with pytest.raises(DeployzooError, match="unknown fold 'col2im'"):
        volo.VoloDeploy(net, "col2im")


# ----------------------------------------------------------------------------------------------- weights


def sail_sg_layout(layers, dims, heads, stem=64, k=3, mlp=3, classes=1000, grid=14) -> dict[str, tuple]:
    """Key -> shape of a sail-sg/volo `models/volo.py` state_dict, written from that file (PatchEmbed stem
    Sequential, Outlooker / Transformer / ClassBlock, Downsample between stage 0 and 1, qkv_bias=False)."""
    sd: dict[str, tuple] = {"cls_token": (1, 1, dims[-1]), "pos_embed": (1, grid, grid, dims[-1])}

    def bn(p, c):
        sd.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
                   f"{p}.num_batches_tracked": ()})

    def lin(p, o, i, bias=True):
        sd[f"{p}.weight"] = (o, i)
        if bias:
            sd[f"{p}.bias"] = (o,)

    def block(p, d):
        for norm in ("norm1", "norm2"):
            sd[f"{p}.{norm}.weight"] = sd[f"{p}.{norm}.bias"] = (d,)
        lin(f"{p}.mlp.fc1", mlp * d, d)
        lin(f"{p}.mlp.fc2", d, mlp * d)

    sd["patch_embed.conv.0.weight"] = (stem, 3, 7, 7)
    sd["patch_embed.conv.3.weight"] = sd["patch_embed.conv.6.weight"] = (stem, stem, 3, 3)
    for i in (1, 4, 7):
        bn(f"patch_embed.conv.{i}", stem)
    sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = (dims[0], stem, 4, 4), (dims[0],)
    net_idx = {0: 0, 1: 2, 2: 3, 3: 4}  # network.1 is the Downsample
    for stage, n in enumerate(layers):
        d = dims[stage]
        for b in range(n):
            p = f"network.{net_idx[stage]}.{b}"
            block(p, d)
            if stage == 0:
                lin(f"{p}.attn.v", d, d, bias=False)
                lin(f"{p}.attn.attn", k ** 4 * heads[0], d)
            else:
                lin(f"{p}.attn.qkv", 3 * d, d, bias=False)
            lin(f"{p}.attn.proj", d, d)
    sd["network.1.proj.weight"], sd["network.1.proj.bias"] = (dims[1], dims[0], 2, 2), (dims[1],)
    for i in range(2):
        p = f"post_network.{i}"
        block(p, dims[-1])
        lin(f"{p}.attn.kv", 2 * dims[-1], dims[-1], bias=False)
        lin(f"{p}.attn.q", dims[-1], dims[-1], bias=False)
        lin(f"{p}.attn.proj", dims[-1], dims[-1])
    lin("aux_head", classes, dims[-1])
    lin("head", classes, dims[-1])
    sd["norm.weight"] = sd["norm.bias"] = (dims[-1],)
    return sd


def test_d2_state_dict_is_the_sail_sg_layout():
    net = volo.build_model("d2_224")
    assert not net.training
    ours = {k: tuple(v.shape) for k, v in volo.to_official_keys(net.state_dict()).items()}
    assert ours == sail_sg_layout((6, 4, 10, 4), (256, 512, 512, 512), (8, 16, 16, 16))
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 58.68) < 0.01  # VOLO-D2: 59M parameters


@pytest.fixture
def tiny_build(monkeypatch):
    """build_model builds the tiny VOLO (seed 1) instead of timm's D2: the loading path, at a test's size."""
    monkeypatch.setattr(volo, "_create", lambda variant: tiny(1))


def test_sail_sg_checkpoint_loads(tmp_path, tiny_build):
    src = tiny(0)
    sd = volo.to_official_keys(src.state_dict())
    assert set(sd) == set(sail_sg_layout(TINY["layers"], TINY["embed_dims"], TINY["num_heads"], stem=8))
    # a timm train.py checkpoint (what sail-sg released): wrapped, DataParallel prefix, argparse Namespace
    ckpt = tmp_path / "d2_224_85.2.pth.tar"
    torch.save({"epoch": 299, "arch": "volo_d2", "args": argparse.Namespace(model="volo_d2", img_size=224),
                "state_dict": {"module." + k: v for k, v in sd.items()}}, ckpt)
    bare = tmp_path / "bare.pth"
    torch.save(sd, bare)
    x = torch.randn(1, 3, 224, 224)
    for path in (ckpt, bare):
        net = volo.build_model("d2_224", path)
        assert not net.training
        for k, v in src.state_dict().items():
            assert torch.equal(v, net.state_dict()[k]), k
        with torch.no_grad():
            assert torch.equal(net(x), src(x))


def test_checkpoint_errors_are_one_line(tmp_path, tiny_build):
    sd = tiny(0).state_dict()
    ft = tmp_path / "ft.pth"
    torch.save({**sd, "head.weight": sd["head.weight"][:10], "head.bias": sd["head.bias"][:10],
                "aux_head.weight": sd["aux_head.weight"][:10], "aux_head.bias": sd["aux_head.bias"][:10]}, ft)
    with pytest.raises(DeployzooError, match=r"ft\.pth: head\.weight has 10 classes, the model 1000") as e:
        volo.build_model("d2_224", ft)
    deeper = tmp_path / "deeper.pth"
    torch.save(tiny(0, layers=TINY_DEEPER["layers"]).state_dict(), deeper)
    with pytest.raises(DeployzooError, match=r"deeper\.pth: .*unexpected keys.*blocks of width 32 are not") as e2:
        volo.build_model("d2_224", deeper)
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(1000, 8), "conv1.weight": torch.zeros(8, 3, 3, 3)}, other)
    with pytest.raises(DeployzooError, match=r"resnet\.pth: .*not a VOLO checkpoint") as e3:
        volo.build_model("d2_224", other)
    assert all("\n" not in str(err.value) for err in (e, e2, e3))


# ----------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("exporter,fold,op", [("dynamo", "convtranspose", "ConvTranspose"),
                                              ("dynamo", "native", "Col2Im"),
                                              ("torchscript", "convtranspose", "ConvTranspose")])
def test_ort_matches_eager_with_dynamic_batch(tiny_onnx, exporter, fold, op):
    path, res, spec = tiny_onnx(exporter, fold)
    assert max(res.max_abs_diff.values()) <= ORT_ATOL  # export's own check: batch 1 and 2
    m = onnx.load(str(path))
    ops = {n.op_type for n in m.graph.node}
    assert op in ops and ("Col2Im" in ops) == (fold == "native")
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # traced at batch 1, still dynamic
    assert res.meta["batch"] == {"dynamic": True, "min": 1, "max": 192}
    deploy = spec.deploy(tiny(0)).eval()
    sess = ort_session(path)
    for b in (1, 3):
        x = images(b, seed=b)
        (got,) = sess.run(None, {"images": x})
        with torch.no_grad():
            (ref,) = deploy(torch.from_numpy(x))
        assert got.shape == (b, 1000)
        assert np.abs(got - ref.numpy()).max() <= ORT_ATOL


# ----------------------------------------------------------------------------------------------- precisions


def test_fp16_keeps_layernorm_softmax_and_attention_matmuls_fp32(tiny_onnx, tmp_path):
    from deployzoo.backends.ort import OrtBackend

    src, _, _ = tiny_onnx("dynamo", "convtranspose")
    model = onnx.load(str(src))
    recipes.name_nodes(model)
    assert recipes.fp16_keep_nodes(model, ()) == []
    keep = set(recipes.fp16_keep_nodes(model, volo.FP16_KEEP_OPS))
    producers = {o: n for n in model.graph.node for o in n.output}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 1 + 3 + 2  # outlooker, transformers, class attention
    for sm in softmax:  # the MatMul upstream (logits) and the MatMul reading the probabilities
        node, hops = producers[sm.input[0]], 0
        while node.op_type not in ("MatMul", "Gemm") and hops < 8:
            node, hops = producers[next(t for t in node.input if t in producers)], hops + 1
        assert node.name in keep
        readers = [n for n in model.graph.node if sm.output[0] in n.input]
        assert readers and all(r.op_type == "MatMul" and r.name in keep for r in readers)
    assert {n.name for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")} <= keep
    # the same nodes in the torchscript exporter's graph (its Identity-shared biases, computed reshape shapes)
    ts = onnx.load(str(tiny_onnx("torchscript", "convtranspose")[0]))
    recipes.name_nodes(ts)
    ts_types = {n.name: n.op_type for n in ts.graph.node}
    ops = {n.name: n.op_type for n in model.graph.node}
    ts_keep = recipes.fp16_keep_nodes(ts, volo.FP16_KEEP_OPS)
    assert Counter(ts_types[k] for k in ts_keep) == Counter(ops[k] for k in keep)

    # the build: with the keep list, those nodes compute in fp32; the MLP / projection MatMuls in fp16
    recipe = Recipe(fp16_keep_ops=volo.FP16_KEEP_OPS)
    assert Recipe.for_model(get_model("volo_d2"), "d2_224").fp16_keep_ops == recipe.fp16_keep_ops  # the registry's
    dst = tmp_path / "fp16.onnx"
    info = OrtBackend._fp16(src, dst, recipe)
    assert info["keep_ops"] == list(volo.FP16_KEEP_OPS) and info["keep_ops_nodes"] >= len(keep) - 4
    m16 = onnx.load(str(dst))  # the converter's own value_info: the element type each node now computes in
    types = {v.name: v.type.tensor_type.elem_type for v in list(m16.graph.value_info) + list(m16.graph.output)}
    by_name = {n.name: n for n in m16.graph.node}
    for name in keep:
        assert types[by_name[name].output[0]] == onnx.TensorProto.FLOAT, name
    fp16_matmuls = [n for n in m16.graph.node
                    if n.op_type == "MatMul" and types.get(n.output[0]) == onnx.TensorProto.FLOAT16]
    assert len(fp16_matmuls) >= 10
    x = images(4)
    (ref,) = ort_session(src).run(None, {"images": x})
    (got,) = ort_session(dst).run(None, {"images": x})
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - ref).max() < 5e-3  # measured 4.7e-4 (logits up to 0.65)

    # without fp32 op types in the recipe the build is the plain one (RetinaFace / ArcFace unchanged)
    plain = OrtBackend._fp16(src, tmp_path / "plain.onnx", Recipe())
    assert plain == {"fp32_nodes": len(recipes.tail_nodes(model)),
                     "rule": "post-head decode tail kept fp32; inputs/outputs fp32"}


def test_int8_build_quantizes_matmul_gemm_conv(tiny_onnx, tmp_path, monkeypatch):
    import cv2

    from deployzoo import registry
    from deployzoo.build import build_engine
    from deployzoo.quant.calib import make_calib_set

    src, _, spec = tiny_onnx("dynamo", "convtranspose")
    monkeypatch.setattr(registry, "get_model", lambda name: spec)  # the request's recipe is the spec's
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"c{i}.jpg"), rng.integers(0, 255, (240 + 20 * i, 300, 3), dtype=np.uint8))
    calib = make_calib_set(tmp_path, size=4)
    eng = build_engine(src, tmp_path / "int8", precision="int8", calib=calib)
    manifest = json.loads((eng / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["op_types"] == ["MatMul", "Gemm", "Conv"] and q["float_outputs"] == ["MatMul", "Gemm"]
    assert q["calibration_images_used"] == 4
    m8 = onnx.load(str(eng / manifest["model_file"]))
    producers = {o: n for n in m8.graph.node for o in n.output}

    def dq_inputs(op):
        nodes = [n for n in m8.graph.node if n.op_type == op]
        return nodes, [n for n in nodes if all(t in producers and producers[t].op_type == "DequantizeLinear"
                                               for t in n.input[:2])]

    for op in ("MatMul", "Conv"):
        nodes, quantized = dq_inputs(op)
        assert nodes and len(quantized) >= len(nodes) - 1, op  # (the head's last MatMul may be the tail)
    consumers = {t for n in m8.graph.node if n.op_type == "QuantizeLinear" for t in n.input[:1]}
    assert not [n.name for n in m8.graph.node if n.op_type in ("MatMul", "Gemm") and n.output[0] in consumers]
    for op in ("LayerNormalization", "Softmax"):  # float nodes reading float (not re-quantized) values
        nodes, quantized = dq_inputs(op)
        assert nodes and not [n for n in nodes if producers[n.input[0]].op_type == "DequantizeLinear"], op
    x = images(4, seed=5)
    (ref,) = ort_session(src).run(None, {"images": x})
    (got,) = ort_session(eng / manifest["model_file"]).run(None, {"images": x})
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert np.isfinite(got).all() and cos.min() > 0.99  # measured 0.9996


# ----------------------------------------------------------------------------------------------- full size


@pytest.mark.slow
def test_volo_d2_exports_with_dynamic_batch(tmp_path, monkeypatch):
    """The real VOLO-D2 224 (random weights) through export_onnx with the proposed registry entry: dynamo,
    opset 18, ConvTranspose fold, dynamic batch; ORT vs eager at batch 1 and 2 (measured 1.5e-6)."""
    from deployzoo import export

    monkeypatch.setattr(export, "get_model", lambda name: volo_spec())
    res = export.export_onnx("volo", tmp_path / "volo_d2.onnx", variant="d2_224", batch=None)
    assert res.meta["export"]["exporter"] == "dynamo" and res.meta["export"]["opset"] == 18
    assert max(res.max_abs_diff.values()) <= 1e-4
    m = onnx.load(str(res.path), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("ConvTranspose") == 6 and "Col2Im" not in ops  # one per outlooker block
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param and res.meta["batch"]["max"] == 192

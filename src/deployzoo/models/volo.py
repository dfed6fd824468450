"""VOLO (Vision Outlooker) D1 / D2 at 224 x 224: timm's implementation (`timm.models.volo`), whose module tree is
the one of sail-sg/volo `models/volo.py`, so the released `d2_224_85.2.pth.tar` / `d1_224_84.2.pth.tar` load as
they are (no key renames: see `OFFICIAL_KEY_RENAMES`).

Input: N x 3 x 224 x 224, RGB, ImageNet mean / std; `input_config` is timm's pretrained_cfg (bicubic, crop_pct
0.96: shorter side to 233, centre crop 224), `spec_input` the same in the classification task's terms.
Output: N x 1000 logits in fp32, timm's eval head: class-token head + 0.5 * max over the aux (token-labeling)
head of the patch tokens.

Export: the outlook attention folds its per-window outputs back with `F.fold` (col2im). The torchscript exporter
has no col2im (timm issue 1872); the dynamo exporter writes an ONNX `Col2Im` (opset 18). `VoloDeploy(net, fold=...)`
swaps that fold, timm's code untouched, for an equivalent built from ops every exporter and runtime has:
`fold_convtranspose` (default: a grouped ConvTranspose with a fixed one-hot kernel) or `fold_slices` (pads and
adds). Measured on VOLO-D2, random weights, 2 CPU threads: the three graphs run at the same ORT speed (ORT's
Col2Im is cheap; profiles within 3%), ORT vs eager max abs diff 1.3e-6 to 1.5e-6 for logits up to 1.7, with the
dynamo (20 s) or torchscript (4 s) exporter. Default: dynamo, opset 18, ConvTranspose fold.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deployzoo.checkpoint import apply_state_dict, load_state_dict
from deployzoo.errors import DeployzooError
from deployzoo.models.base import DeployModule, ModelSpec, register_model
from deployzoo.weights import WeightsSource

VARIANTS = ("d2_224", "d1_224")
TIMM_NAMES = {"d2_224": "volo_d2_224", "d1_224": "volo_d1_224"}

# where the official weights are published: the GitHub release volo_1 that the sail-sg/volo README links (the same
# URLs are timm's pretrained_cfg `url` of volo_d{1,2}_224.sail_in1k; the timm names above load them as they are).
# No hash is published for them.
VOLO_RELEASE = "https://github.com/sail-sg/volo/releases/download/volo_1/"
VOLO_README = "github.com/sail-sg/volo README, release volo_1"
OFFICIAL_WEIGHTS = {
    "d2_224": WeightsSource("d2_224_85.2.pth.tar", published=VOLO_README, url=VOLO_RELEASE + "d2_224_85.2.pth.tar",
                            note="top-1 85.2"),
    "d1_224": WeightsSource("d1_224_84.2.pth.tar", published=VOLO_README, url=VOLO_RELEASE + "d1_224_84.2.pth.tar",
                            note="top-1 84.2"),
}

NUM_CLASSES = 1000

# sail-sg state_dict key -> timm key. Empty: the official module tree (patch_embed.conv.{0,1,3,4,6,7} / proj,
# pos_embed 1 x 14 x 14 x C, network.N.M with the Downsample at network.1, post_network.{0,1}, cls_token,
# aux_head, norm, head) is the one timm builds, and timm loads the release file with no filter function.
OFFICIAL_KEY_RENAMES: dict[str, str] = {}

FOLD_MODES = ("native", "convtranspose", "slices")
# ORT CPU runs the three at the same speed (module docstring); the ConvTranspose form exports with both exporters
# and runs where there is no Col2Im kernel
DEFAULT_FOLD = "convtranspose"

# export / precision defaults for the registry entry (ModelSpec.exporter / .opset, export metadata)
EXPORTER = "dynamo"
OPSET = 18
MAX_BATCH = 192
# ONNX op types kept fp32 in fp16 builds (export metadata `fp16_keep_ops`): LayerNorm statistics and softmax
# overflow in fp16; with Softmax, quant.recipes.fp16_keep_nodes also keeps the attention MatMuls around it fp32
FP16_KEEP_OPS = ("LayerNormalization", "Softmax")
# int8 builds (export metadata `int8_op_types` / ModelSpec.int8_recipe "op_types"): the linears, attention
# products and convolutions in int8, everything else float
INT8_OP_TYPES = ("MatMul", "Gemm", "Conv")
# ... with the MatMul / Gemm outputs left float (metadata `int8_exclude_output_ops` / recipe "exclude_output_ops"):
# measured 1.6-1.9x faster than fp32 at batch 1 on this CPU, against 1.1-1.5x with QuantizeLinear after every
# MatMul, and Softmax / LayerNorm / GELU then read float values
INT8_EXCLUDE_OUTPUT_OPS = ("MatMul", "Gemm")


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a dependency of the VOLO model only
        raise DeployzooError(f"volo: needs timm (pip install timm): {exc}") from None
    return timm


def _check_variant(variant: str) -> str:
    if variant not in TIMM_NAMES:
        raise DeployzooError(f"volo: unknown variant {variant!r} (choose from {', '.join(VARIANTS)})")
    return variant


def input_config(variant: str) -> dict[str, Any]:
    """The pre-processing that travels with the weights, from timm's pretrained_cfg of the architecture:
    input_size (C, H, W), crop_pct, crop_mode, interpolation, mean / std (0..1 pixel scale)."""
    timm = _timm()
    from timm.models import get_pretrained_cfg

    name = TIMM_NAMES[_check_variant(variant)]
    cfg = get_pretrained_cfg(name)
    if cfg is None:  # older timm: the default tag's cfg through a (weight-free) model
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "crop_pct": float(cfg["crop_pct"]),
        "crop_mode": cfg.get("crop_mode", "center"),
        "interpolation": cfg["interpolation"],
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
    }


def spec_input(variant: str) -> dict[str, Any]:
    """`ModelSpec.input` for the registry, in the classification task's terms: timm's eval transform (shorter side
    to floor(224 / crop_pct) = 233, bicubic, centre crop 224) and mean / std on the 0..255 pixel scale."""
    cfg = input_config(variant)
    _, h, w = cfg["input_size"]
    return {
        "layout": "NCHW", "color": "RGB",
        "mean": [m * 255.0 for m in cfg["mean"]], "std": [s * 255.0 for s in cfg["std"]],
        "resize": int(math.floor(h / cfg["crop_pct"])), "crop": h, "interpolation": cfg["interpolation"],
        "fixed_size": True,
        # timm's eval (and sail-sg/volo's, which is timm's) reads with PIL, Image.open(f).convert('RGB')
        # (timm.data.ImageDataset), which does not apply the EXIF Orientation tag: the stored pixels
        "exif_orientation": False,
    }


def default_imgsz(variant: str) -> list[int]:
    _, h, w = input_config(variant)["input_size"]
    return [h, w]


# --------------------------------------------------------------------------------------------- weights


def to_timm_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sail-sg/volo state_dict -> timm's module names (identity today: OFFICIAL_KEY_RENAMES is empty)."""
    return {_rename(k, OFFICIAL_KEY_RENAMES): v for k, v in sd.items()}


def to_official_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of to_timm_keys."""
    inverse = {v: k for k, v in OFFICIAL_KEY_RENAMES.items()}
    return {_rename(k, inverse): v for k, v in sd.items()}


def _rename(key: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _create(variant: str) -> nn.Module:
    return _timm().create_model(TIMM_NAMES[variant], pretrained=False, num_classes=NUM_CLASSES)


def build_model(variant: str, weights: str | Path | None = None) -> nn.Module:
    """timm's VOLO (random init unless `weights`), eval mode."""
    model = _create(_check_variant(variant))
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load an official (sail-sg) or timm-layout checkpoint into `model`, strictly."""
    # timm's train.py (which sail-sg trained with) stores its argparse Namespace next to the state_dict
    safe = getattr(torch.serialization, "safe_globals", None)
    with safe([argparse.Namespace]) if safe else contextlib.nullcontext():
        sd = to_timm_keys(load_state_dict(weights))
    _check_classes(model, sd, weights)
    apply_state_dict(model, sd, weights, hint=_hint(model, sd))


def _check_classes(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path) -> None:
    own = model.state_dict()
    for key in ("head.weight", "aux_head.weight"):
        if key in sd and key in own and sd[key].ndim == 2 and sd[key].shape[0] != own[key].shape[0]:
            raise DeployzooError(
                f"{path}: {key} has {sd[key].shape[0]} classes, the model {own[key].shape[0]} "
                "(a fine-tuned checkpoint: deployzoo's VOLO is the 1000-class ImageNet classifier)"
            )


def _hint(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> str:
    """Name the VOLO variant a checkpoint was trained as, from its embedding width and block count."""
    if "pos_embed" not in sd or not any(k.startswith("network.") for k in sd):
        return "not a VOLO checkpoint (no pos_embed / network.* keys)"
    own = model.state_dict()
    blocks, own_blocks = _blocks(sd), _blocks(own)
    dim, own_dim = sd["pos_embed"].shape[-1], own["pos_embed"].shape[-1]
    if (blocks, dim) != (own_blocks, own_dim):
        return (f"its {blocks} blocks of width {dim} are not this variant's {own_blocks} of width {own_dim}: "
                "check --variant")
    if sd["pos_embed"].shape != own["pos_embed"].shape:
        return f"pos_embed {tuple(sd['pos_embed'].shape)}: trained at another input size (use that variant)"
    return ""


def _blocks(sd: Mapping[str, torch.Tensor]) -> int:
    """Blocks in `network.N.M.*` (the Downsample, `network.1.proj.*`, has no block index)."""
    parts = (k.split(".") for k in sd if k.startswith("network."))
    return len({tuple(p[:3]) for p in parts if len(p) > 3 and p[2].isdigit()})


# --------------------------------------------------------------------------------------------- fold


def _fold_geometry(x: torch.Tensor, output_size: tuple[int, int], k: int, p: int, s: int):
    H, W = output_size
    h, w = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    if x.shape[-1] != h * w or x.shape[1] % (k * k):
        raise ValueError(f"fold: input {tuple(x.shape)} does not match {k}x{k} blocks (stride {s}) of {H}x{W}")
    return H, W, h, w, x.shape[1] // (k * k)


def fold_kernel(channels: int, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot ConvTranspose kernel (C*k*k, 1, k, k): input channel c*k*k + i*k + j writes to tap (i, j) of
    output channel c (groups=C), the channel order of F.unfold / F.fold."""
    eye = torch.eye(k * k, dtype=dtype).reshape(k * k, 1, k, k)
    return eye.repeat(channels, 1, 1, 1)


def fold_convtranspose(x: torch.Tensor, output_size: tuple[int, int], kernel_size: int, padding: int, stride: int,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """F.fold (B, C*k*k, L) -> (B, C, H, W) as a grouped transposed convolution with a one-hot kernel."""
    k, p, s = kernel_size, padding, stride
    H, W, h, w, C = _fold_geometry(x, output_size, k, p, s)
    if weight is None:
        weight = fold_kernel(C, k, x.dtype).to(x.device)
    out_pad = (H - ((h - 1) * s - 2 * p + k), W - ((w - 1) * s - 2 * p + k))
    x = x.reshape(x.shape[0], C * k * k, h, w)
    return F.conv_transpose2d(x, weight.to(x.dtype), stride=s, padding=p, output_padding=out_pad, groups=C)


def fold_slices(x: torch.Tensor, output_size: tuple[int, int], kernel_size: int, padding: int,
                stride: int) -> torch.Tensor:
    """F.fold as a sum of k*k shifted, zero-dilated copies (Pad / Reshape / Add / Slice only)."""
    k, p, s = kernel_size, padding, stride
    H, W, h, w, C = _fold_geometry(x, output_size, k, p, s)
    B = x.shape[0]
    x = x.reshape(B, C, k, k, h, w)
    out = None
    for i in range(k):
        for j in range(k):
            y = x[:, :, i, j]  # B, C, h, w
            if s > 1:  # zero-dilate: B, C, h, 1, w, 1 -> B, C, h, s, w, s -> B, C, h*s, w*s
                y = F.pad(y.reshape(B, C, h, 1, w, 1), (0, s - 1, 0, 0, 0, s - 1)).reshape(B, C, h * s, w * s)
            y = F.pad(y, (j, k - 1 - j, i, k - 1 - i))  # B, C, h*s + k - 1, w*s + k - 1
            out = y if out is None else out + y
    return out[:, :, p:p + H, p:p + W]


class ExportOutlookAttention(nn.Module):
    """timm's OutlookAttention (the wrapped module, its weights shared) with F.fold replaced by an
    export-friendly equivalent. The math is timm's `OutlookAttention.forward` line for line."""

    def __init__(self, attn: nn.Module, fold: str) -> None:
        super().__init__()
        if fold not in ("convtranspose", "slices"):
            raise DeployzooError(f"volo: fold {fold!r} has no export rewrite (choose convtranspose or slices)")
        self.inner = attn
        self.fold = fold
        self.k, self.p, self.s = attn.kernel_size, attn.padding, attn.stride
        dim = attn.v.out_features
        self.register_buffer("fold_weight", fold_kernel(dim, self.k), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, k, s = self.inner, self.k, self.s
        B, H, W, C = x.shape
        v = a.v(x).permute(0, 3, 1, 2)  # B, C, H, W
        h, w = math.ceil(H / s), math.ceil(W / s)
        v = a.unfold(v).reshape(B, a.num_heads, C // a.num_heads, k * k, h * w).permute(0, 1, 4, 3, 2)
        attn = a.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        attn = a.attn(attn).reshape(B, h * w, a.num_heads, k * k, k * k).permute(0, 2, 1, 3, 4)
        attn = attn * a.scale
        attn = attn.softmax(dim=-1)
        attn = a.attn_drop(attn)
        x = (attn @ v).permute(0, 1, 4, 3, 2).reshape(B, C * k * k, h * w)
        if self.fold == "convtranspose":
            x = fold_convtranspose(x, (H, W), k, self.p, s, self.fold_weight)
        else:
            x = fold_slices(x, (H, W), k, self.p, s)
        x = a.proj(x.permute(0, 2, 3, 1))
        return a.proj_drop(x)


def swap_fold(net: nn.Module, fold: str) -> int:
    """Give every timm OutlookAttention under `net` the `fold` implementation, in place: wrap it in an
    ExportOutlookAttention ("convtranspose" / "slices") or unwrap it ("native"). Idempotent; returns the count."""
    from timm.models.volo import OutlookAttention

    n = 0
    for parent in list(net.modules()):
        if isinstance(parent, ExportOutlookAttention):
            continue
        for name, child in list(parent.named_children()):
            base = child.inner if isinstance(child, ExportOutlookAttention) else child
            if isinstance(base, OutlookAttention):
                setattr(parent, name, base if fold == "native" else ExportOutlookAttention(base, fold))
                n += 1
    return n


class VoloDeploy(DeployModule):
    """Export wrapper: N x 1000 fp32 logits, timm's eval output (class head + 0.5 * max over the aux tokens).

    `fold`: "native" keeps timm's F.fold (ONNX Col2Im, dynamo exporter only); "convtranspose" (default) /
    "slices" swap each OutlookAttention's fold for an equivalent made of ops every exporter / runtime has.
    The wrapper takes `net` over: the swap and the batch-1 export hooks (`_contiguous_inputs`) are made in place.
    `forward(x)`: the argument is named `x`, as export's dynamic_shapes={"x": ...} expects."""

    output_names = ("logits",)

    def __init__(self, net: nn.Module, fold: str = DEFAULT_FOLD) -> None:
        super().__init__()
        if fold not in FOLD_MODES:
            raise DeployzooError(f"volo: unknown fold {fold!r} (choose from {', '.join(FOLD_MODES)})")
        self.fold = fold
        self.outlookers = swap_fold(net, fold)
        self.net = net
        _contiguous_inputs(net)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.net(x).float(),)


def _as_contiguous(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].clone(memory_format=torch.contiguous_format),) + tuple(args[1:])


def _contiguous_inputs(net: nn.Module) -> int:
    """Make the inputs of the linears that timm feeds with token slices (`aux_head(x[:, 1:])`, the class
    attention's `q(x[:, :1])`) contiguous copies. Same numbers (F.linear copies a strided 3-D input anyway); it
    keeps the batch axis dynamic when torch.export traces at batch 1, where the strided slice is contiguous only
    for batch 1 and the exporter silently specialises the graph to it."""
    from timm.models.volo import ClassAttention

    targets = [m.q for m in net.modules() if isinstance(m, ClassAttention)]
    if getattr(net, "aux_head", None) is not None:
        targets.append(net.aux_head)
    for m in targets:
        if not getattr(m, "_deployzoo_contiguous", False):
            m.register_forward_pre_hook(_as_contiguous)
            m._deployzoo_contiguous = True
    return len(targets)


@register_model("volo_d2", aliases=("volo", "volo-d2"), order=40)
def model_spec() -> ModelSpec:
    """The registry entry (models/base.py)."""
    from deployzoo.tasks.classification import DEFAULT_POST

    return ModelSpec(
        name="volo_d2",
        task="classification",
        variants=VARIANTS,
        default_variant="d2_224",
        default_imgsz={v: default_imgsz(v) for v in VARIANTS},
        seed_imgsz={"d2_224": [224, 224]},
        # the weights' own eval transform (timm pretrained_cfg); exif_orientation False: timm's PIL reader
        input=spec_input("d2_224"),
        post=dict(DEFAULT_POST),
        weights=dict(OFFICIAL_WEIGHTS),
        build=build_model,
        deploy=VoloDeploy,
        output_names=VoloDeploy.output_names,
        int8_recipe={v: {"float_groups": (), "op_types": INT8_OP_TYPES,
                         "exclude_output_ops": INT8_EXCLUDE_OUTPUT_OPS} for v in VARIANTS},
        bench_batches=(1, 8),
        exporter=EXPORTER,
        opset=OPSET,
        max_batch=MAX_BATCH,
        fp16_keep_ops=FP16_KEEP_OPS,
    )

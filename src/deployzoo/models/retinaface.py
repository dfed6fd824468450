"""RetinaFace (mobilenet0.25 / ResNet50) with the state_dict layout of biubug6/Pytorch_Retinaface @ b984b4b.

The module tree (names, layer order, leaky slopes) follows the official `models/net.py` and `models/retinaface.py`
so that the released `mobilenet0.25_Final.pth` and `Resnet50_Final.pth` load as they are. `RetinaFaceDeploy`
wraps the network with the official prior boxes and variance decode inside the graph, so an exported engine
returns boxes and landmarks in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter

from deployzoo.checkpoint import apply_state_dict, load_state_dict
from deployzoo.errors import DeployzooError
from deployzoo.models.base import DeployModule, ModelSpec, register_model
from deployzoo.weights import WeightsSource


@dataclass(frozen=True)
class RetinaFaceConfig:
    name: str
    return_layers: dict[str, int]
    in_channel: int
    out_channel: int
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)
    clip: bool = False
    anchors_per_cell: int = 2
    extra: dict = field(default_factory=dict)


CONFIGS: dict[str, RetinaFaceConfig] = {
    "mobilenet0.25": RetinaFaceConfig(
        name="mobilenet0.25", return_layers={"stage1": 1, "stage2": 2, "stage3": 3}, in_channel=32, out_channel=64
    ),
    "resnet50": RetinaFaceConfig(
        name="Resnet50", return_layers={"layer2": 1, "layer3": 2, "layer4": 3}, in_channel=256, out_channel=256
    ),
}

# --------------------------------------------------------------------------------------------- building blocks


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def _conv_bn_no_relu(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def _conv_bn1x1(inp: int, oup: int, stride: int, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 x0.25 as in the official repo (also the ImageNet classifier of its pretrain file)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)]
        )
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(torch.flatten(self.avg(x), 1))


class SSH(nn.Module):
    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        assert out_channel % 4 == 0
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = _conv_bn_no_relu(in_channel, out_channel // 2, stride=1)
        self.conv5X5_1 = _conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
        self.conv5X5_2 = _conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)
        self.conv7X7_2 = _conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
        self.conv7x7_3 = _conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.conv3X3(x)
        c5_1 = self.conv5X5_1(x)
        c5 = self.conv5X5_2(c5_1)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([c3, c5, c7], dim=1))


class FPN(nn.Module):
    def __init__(self, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = _conv_bn1x1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
        self.output2 = _conv_bn1x1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
        self.output3 = _conv_bn1x1(in_channels_list[2], out_channels, stride=1, leaky=leaky)
        self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1 = self.output1(feats[0])
        o2 = self.output2(feats[1])
        o3 = self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class _Head(nn.Module):
    def __init__(self, inchannels: int, num_anchors: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * width, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.width)


class RetinaFace(nn.Module):
    """Network body + heads; forward returns (loc, conf_softmax, landmarks) exactly as the official test phase."""

    def __init__(self, variant: str = "mobilenet0.25") -> None:
        super().__init__()
        if variant not in CONFIGS:
            raise DeployzooError(f"retinaface: unknown variant {variant!r} (choose from {', '.join(CONFIGS)})")
        cfg = self.cfg = CONFIGS[variant]
        backbone = MobileNetV1() if variant == "mobilenet0.25" else resnet50(weights=None)
        self.body = IntermediateLayerGetter(backbone, cfg.return_layers)
        c = cfg.in_channel
        self.fpn = FPN([c * 2, c * 4, c * 8], cfg.out_channel)
        self.ssh1 = SSH(cfg.out_channel, cfg.out_channel)
        self.ssh2 = SSH(cfg.out_channel, cfg.out_channel)
        self.ssh3 = SSH(cfg.out_channel, cfg.out_channel)
        a = cfg.anchors_per_cell
        self.ClassHead = nn.ModuleList([_Head(cfg.out_channel, a, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(cfg.out_channel, a, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(cfg.out_channel, a, 10) for _ in range(3)])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        fpn = self.fpn(list(self.body(x).values()))
        return [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1), ldm


class RetinaFaceDeploy(DeployModule):
    """RetinaFace plus in-graph priors and variance decode.

    Input: N x 3 x H x W float, BGR minus (104, 117, 123). Outputs, in input pixels:
    `boxes` N x A x 4 (x1, y1, x2, y2), `scores` N x A (face probability), `landmarks` N x A x 10.
    Priors come from each level's feature-map size, so any H x W works (the official `ceil(H / step)` grid).
    """

    output_names = ("boxes", "scores", "landmarks")

    def __init__(self, net: RetinaFace) -> None:
        super().__init__()
        self.net = net
        cfg = net.cfg
        self.steps = cfg.steps
        self.min_sizes = cfg.min_sizes
        self.var0, self.var1 = cfg.variance
        for k, sizes in enumerate(cfg.min_sizes):
            self.register_buffer(f"_sizes{k}", torch.tensor(sizes, dtype=torch.float32), persistent=False)

    def _priors(self, feats: list[torch.Tensor]) -> torch.Tensor:
        levels = []
        for k, (f, step) in enumerate(zip(feats, self.steps)):
            sizes = getattr(self, f"_sizes{k}")
            fh, fw = f.shape[-2], f.shape[-1]
            ys = (torch.arange(fh, device=f.device, dtype=torch.float32) + 0.5) * step
            xs = (torch.arange(fw, device=f.device, dtype=torch.float32) + 0.5) * step
            na = sizes.shape[0]
            cy = ys.view(-1, 1, 1).expand(-1, fw, na)
            cx = xs.view(1, -1, 1).expand(fh, -1, na)
            s = sizes.view(1, 1, -1).expand(fh, fw, -1)
            levels.append(torch.stack([cx, cy, s, s], dim=-1).reshape(-1, 4))
        return torch.cat(levels, dim=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.net
        feats = net.features(x)
        loc = torch.cat([h(f) for h, f in zip(net.BboxHead, feats)], dim=1).float()
        conf = torch.cat([h(f) for h, f in zip(net.ClassHead, feats)], dim=1).float()
        ldm = torch.cat([h(f) for h, f in zip(net.LandmarkHead, feats)], dim=1).float()
        pri = self._priors(feats).unsqueeze(0)
        ctr, size = pri[..., :2], pri[..., 2:]
        centers = ctr + loc[..., :2] * self.var0 * size
        wh = size * torch.exp(loc[..., 2:] * self.var1)
        boxes = torch.cat([centers - wh / 2, centers + wh / 2], dim=-1)
        n = ldm.shape[0]
        pts = ctr.unsqueeze(2) + ldm.reshape(n, -1, 5, 2) * self.var0 * size.unsqueeze(2)
        scores = F.softmax(conf, dim=-1)[..., 1]
        return boxes, scores, pts.reshape(n, -1, 10)


# --------------------------------------------------------------------------------------------- checkpoints

# The repo's README links its released weights (mobilenet0.25_Final.pth, Resnet50_Final.pth and the MobileNetV1
# pretrain mobilenetV1X0.25_pretrain.tar) on Google Drive and Baidu only: no direct URL, no published hash.
BIUBUG6_README = "github.com/biubug6/Pytorch_Retinaface README"
BIUBUG6_DOWNLOAD = ("Google Drive https://drive.google.com/open?id=1oZRSG0ZegbVkVwUd8wUIQx8W7yfZ_ki1 or Baidu "
                    "https://pan.baidu.com/s/12h97Fy1RYuqMMIV-RpzdPg (password fstq)")
OFFICIAL_WEIGHTS = {
    "mobilenet0.25": WeightsSource("mobilenet0.25_Final.pth", published=BIUBUG6_README, manual=BIUBUG6_DOWNLOAD),
    "resnet50": WeightsSource("Resnet50_Final.pth", published=BIUBUG6_README, manual=BIUBUG6_DOWNLOAD),
}


def build_model(variant: str, weights: str | Path | None = None) -> RetinaFace:
    model = RetinaFace(variant)
    if weights is not None:
        sd = load_state_dict(weights)
        other = next(v for v in CONFIGS if v != variant)
        apply_state_dict(model, sd, weights, hint=f"is it a {other} checkpoint? pass --variant {other}"
                         if _looks_like(sd, other) else "")
    return model.eval()


def _looks_like(sd: dict[str, torch.Tensor], variant: str) -> bool:
    marker = "body.stage1.0.0.weight" if variant == "mobilenet0.25" else "body.layer1.0.conv1.weight"
    return marker in sd


# --------------------------------------------------------------------------------------------- reference math
# Literal numpy versions of the official PriorBox / decode / decode_landm (normalised coordinates), used by
# the tests to check the in-graph versions above.


def official_priors(image_hw: tuple[int, int], variant: str = "mobilenet0.25") -> np.ndarray:
    cfg = CONFIGS[variant]
    h, w = image_hw
    anchors: list[float] = []
    for k, step in enumerate(cfg.steps):
        fh, fw = int(np.ceil(h / step)), int(np.ceil(w / step))
        for i, j in product(range(fh), range(fw)):
            for ms in cfg.min_sizes[k]:
                anchors += [(j + 0.5) * step / w, (i + 0.5) * step / h, ms / w, ms / h]
    out = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
    return np.clip(out, 0, 1) if cfg.clip else out


def official_decode(loc: np.ndarray, priors: np.ndarray, variances=(0.1, 0.2)) -> np.ndarray:
    boxes = np.concatenate(
        [priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:], priors[:, 2:] * np.exp(loc[:, 2:] * variances[1])], 1
    )
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def official_decode_landm(pre: np.ndarray, priors: np.ndarray, variances=(0.1, 0.2)) -> np.ndarray:
    return np.concatenate(
        [priors[:, :2] + pre[:, 2 * i: 2 * i + 2] * variances[0] * priors[:, 2:] for i in range(5)], 1
    )


@register_model("retinaface", order=10)
def model_spec() -> ModelSpec:
    """The registry entry (models/base.py)."""
    from deployzoo.tasks.face_detection import DEFAULT_POST

    return ModelSpec(
        name="retinaface",
        task="face_detection",
        variants=tuple(CONFIGS),
        default_variant="mobilenet0.25",
        default_imgsz={"mobilenet0.25": "origin", "resnet50": "origin"},
        seed_imgsz={"mobilenet0.25": [1000, 1000], "resnet50": [672, 1024]},
        # exif_orientation: the official test script (Pytorch_Retinaface test_widerface.py) reads with
        # cv2.imread(path, cv2.IMREAD_COLOR), which turns the image by its EXIF Orientation tag
        input={"layout": "NCHW", "color": "BGR", "mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0],
               "exif_orientation": True},
        post=dict(DEFAULT_POST),
        weights=dict(OFFICIAL_WEIGHTS),
        build=build_model,
        deploy=RetinaFaceDeploy,
        output_names=RetinaFaceDeploy.output_names,
        # chosen by measurement on this 2-core AVX2 machine (docs/benchmarks/cpu.md): mnet keeps its whole
        # MobileNet backbone (27 convs: memory-bound depthwise/pointwise pairs where int8 only adds quantize and
        # layout passes) and the heads float, and runs FPN + SSH in int8; R50 quantizes every conv but the heads,
        # with Conv+Relu fused.
        int8_recipe={
            "mobilenet0.25": {"float_groups": ("early:27", "heads"), "op_types": ("Conv",)},
            "resnet50": {"float_groups": ("heads",), "op_types": ("Conv", "Relu")},
        },
    )

"""ArcFace IResNet (r18 / r34 / r50 / r100 / r200) with the state_dict layout of deepinsight/insightface
`recognition/arcface_torch/backbones/iresnet.py`, so the released `backbone.pth` files (ms1mv3_arcface_r100_fp16,
glint360k_cosface_r50_fp16_0.1, ...) load as they are.

Input: N x 3 x 112 x 112, RGB, (x / 255 - 0.5) / 0.5 (done on the host by the face-recognition task).
Output: N x 512 embedding in fp32, not normalised (the IJB-C protocol uses the raw norms).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deployzoo.checkpoint import apply_state_dict, load_state_dict
from deployzoo.models.base import DeployModule, ModelSpec, register_model
from deployzoo.weights import WeightsSource

# blocks per stage, as `iresnet18` ... `iresnet200` of the official file
LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}

# where the official weights are published: the insightface arcface_torch model zoo, on OneDrive and Baidu only
# (recognition/arcface_torch/README.md, "Model Zoo"): no direct URL, no published hash
ARCFACE_ZOO = "github.com/deepinsight/insightface recognition/arcface_torch README, Model Zoo"
ARCFACE_DOWNLOAD = ("OneDrive https://1drv.ms/u/s!AswpsDO2toNKq0lWY69vN58GR6mw?e=p9Ov5d or Baidu "
                    "https://pan.baidu.com/s/1CL-l4zWqsI1oDuEEYVhj-g (code e8pw)")
OFFICIAL_WEIGHTS = {
    **{v: WeightsSource(f"ms1mv3_arcface_{v}_fp16/backbone.pth", published=ARCFACE_ZOO, manual=ARCFACE_DOWNLOAD)
       for v in ("r18", "r34", "r50", "r100")},
    "r200": WeightsSource("an r200 backbone.pth", published=ARCFACE_ZOO, manual=ARCFACE_DOWNLOAD,
                          note="WebFace / Glint360K releases"),
}

EMBEDDING_DIM = 512
INPUT_SIZE = 112


class IBasicBlock(nn.Module):
    """bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3, plus the (downsampled) identity; no activation after
    the sum (the IResNet "improved residual" block)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, int, int, int], num_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        self._init_random()

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_random(self) -> None:
        """Random init for weight-free runs (demo, tests, benchmarks): Kaiming convs and a small scale on each
        residual branch's last BN, so that activations stay O(1) through 100+ blocks in eval mode (the official
        training init, N(0, 0.1) convs, overflows fp16 without trained BN statistics)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, IBasicBlock):
                nn.init.constant_(m.bn3.weight, 0.2)
        nn.init.normal_(self.fc.weight, 0.0, (1.0 / self.fc.in_features) ** 0.5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


class IResNetDeploy(DeployModule):
    """Export wrapper: the embedding, always fp32 (an fp16 engine casts back at the output)."""

    output_names = ("embedding",)

    def __init__(self, net: IResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.net(x).float(),)


def build_model(variant: str, weights: str | Path | None = None) -> IResNet:
    model = IResNet(LAYERS[variant])
    if weights is not None:
        sd = load_state_dict(weights)
        apply_state_dict(model, sd, weights, hint=_variant_hint(sd, variant))
    return model.eval()


def _variant_hint(sd: dict[str, torch.Tensor], variant: str) -> str:
    """Name the variant a checkpoint was trained as, from its block count per stage."""
    counts = []
    for stage in range(1, 5):
        idx = {int(k.split(".")[1]) for k in sd if k.startswith(f"layer{stage}.") and k.split(".")[1].isdigit()}
        counts.append(max(idx) + 1 if idx else 0)
    match = next((v for v, layers in LAYERS.items() if tuple(counts) == layers), None)
    if match and match != variant:
        return f"its blocks per stage {tuple(counts)} are IResNet {match}: pass --variant {match}"
    if "fc.weight" not in sd and any(k.startswith("layer1.") for k in sd):
        return "no fc/features layers: pass the backbone.pth of arcface_torch, not a partial-fc or head file"
    return ""


@register_model("arcface", aliases=("iresnet",), order=20)
def model_spec() -> ModelSpec:
    """The registry entry (models/base.py)."""
    from deployzoo.tasks.face_recognition import DEFAULT_POST

    size = [INPUT_SIZE, INPUT_SIZE]
    return ModelSpec(
        name="arcface",
        task="face_recognition",
        variants=tuple(LAYERS),
        default_variant="r100",
        default_imgsz={v: size for v in LAYERS},
        seed_imgsz={"r100": size},
        # exif_orientation: insightface's IJB-C evaluation (recognition/arcface_torch/eval_ijbc.py) reads each
        # loose crop with cv2.imread(path) (IMREAD_COLOR: EXIF Orientation applied); the verification .bin sets go
        # through mx.image.imdecode = cv::imdecode(buf, IMREAD_COLOR), which applies it too in OpenCV 5.1 (their
        # aligned JPEG crops carry no Exif segment: small_lfw.bin checked)
        input={"layout": "NCHW", "color": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3, "fixed_size": True,
               "exif_orientation": True},
        post=dict(DEFAULT_POST),
        weights=dict(OFFICIAL_WEIGHTS),
        build=build_model,
        deploy=IResNetDeploy,
        output_names=IResNetDeploy.output_names,
        # measured on this machine (docs/benchmarks/cpu.md): every conv and the fc in int8 (keeping the first conv
        # float was slower and no closer to fp32; quantizing the residual Adds cost agreement, no speed).
        int8_recipe={v: {"float_groups": (), "op_types": ("Conv", "Gemm")} for v in LAYERS},
        bench_batches=(1, 8, 64),
        predict_batch=64,  # the seed's accuracy table is at batch 64
    )

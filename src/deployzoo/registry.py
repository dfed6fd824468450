"""The one place that names models, tasks, backends and precisions."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from deployzoo.errors import DeployzooError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PRECISION_ALIASES = {
    "force_float32": "fp32",
    "float32": "fp32",
    "force_float16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "qint8_mixed_float16": "int8",
    "qint8": "int8",
}


def canonical_precision(name: str) -> str:
    p = PRECISION_ALIASES.get(name.strip().lower(), name.strip().lower())
    if p not in PRECISIONS:
        raise DeployzooError(
            f"unknown precision {name!r} (choose from {', '.join(PRECISIONS)} or the seed names "
            f"{', '.join(k for k in PRECISION_ALIASES if k.startswith(('force', 'qint8_')))})"
        )
    return p


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str
    variants: tuple[str, ...]
    default_variant: str
    default_imgsz: dict[str, Any]  # variant -> [H, W] or "origin"
    input: dict[str, Any]  # color, mean, std, layout
    post: dict[str, Any]  # post-processing defaults
    weights: dict[str, str]  # variant -> where the official weights come from
    build: Callable[[str, str | Path | None], nn.Module]  # eval-mode network from (variant, weights)
    deploy: Callable[[nn.Module], nn.Module]  # export wrapper: network + in-graph decode
    output_names: tuple[str, ...]
    seed_imgsz: dict[str, Any] = field(default_factory=dict)  # the sizes the seeds benchmark
    # variant -> int8 recipe: {"float_groups": conv groups kept float (quant/recipes.py), "op_types": op types quantized}
    int8_recipe: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    bench_batches: tuple[int, ...] = (1, 4, 8)  # `run`'s default benchmark batches (the seed's)
    predict_batch: int = 1  # `run`'s default batch for the accuracy pass
    exporter: str = "torchscript"  # the ONNX exporter that handles this architecture (export's default)
    opset: int = 17
    max_batch: int = 64  # upper end of a dynamic batch axis
    fp16_keep_ops: tuple[str, ...] = ()  # ONNX op types an fp16 build keeps fp32 (e.g. LayerNorm, Softmax)
    bench_imgsz: list[int] | None = None  # `run`'s benchmark H, W for origin-size engines (None: bench's 640 x 640)
    fp16_scope: tuple[str, ...] = ()  # if set, only nodes under these module paths run fp16 (the rest fp32)
    # variant -> entries merged over `input` / `post` (e.g. a weights convention's resize or class map)
    variant_input: dict[str, dict[str, Any]] = field(default_factory=dict)
    variant_post: dict[str, dict[str, Any]] = field(default_factory=dict)

    def input_for(self, variant: str) -> dict[str, Any]:
        return {**self.input, **self.variant_input.get(variant, {})}

    def post_for(self, variant: str) -> dict[str, Any]:
        return {**self.post, **self.variant_post.get(variant, {})}

    def check_variant(self, variant: str | None) -> str:
        v = variant or self.default_variant
        if v not in self.variants:
            raise DeployzooError(f"{self.name}: unknown variant {v!r} (choose from {', '.join(self.variants)})")
        return v


def _retinaface() -> ModelSpec:
    from deployzoo.models import retinaface as rf
    from deployzoo.tasks.face_detection import DEFAULT_POST

    return ModelSpec(
        name="retinaface",
        task="face_detection",
        variants=tuple(rf.CONFIGS),
        default_variant="mobilenet0.25",
        default_imgsz={"mobilenet0.25": "origin", "resnet50": "origin"},
        seed_imgsz={"mobilenet0.25": [1000, 1000], "resnet50": [672, 1024]},
        # exif_orientation: the official test script (Pytorch_Retinaface test_widerface.py) reads with
        # cv2.imread(path, cv2.IMREAD_COLOR), which turns the image by its EXIF Orientation tag
        input={"layout": "NCHW", "color": "BGR", "mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0],
               "exif_orientation": True},
        post=dict(DEFAULT_POST),
        weights=dict(rf.OFFICIAL_WEIGHTS),
        build=rf.build_model,
        deploy=rf.RetinaFaceDeploy,
        output_names=rf.RetinaFaceDeploy.output_names,
        # chosen by measurement on this 2-core AVX2 machine (docs/benchmarks/cpu.md): mnet keeps its whole
        # MobileNet backbone (27 convs: memory-bound depthwise/pointwise pairs where int8 only adds quantize and
        # layout passes) and the heads float, and runs FPN + SSH in int8; R50 quantizes every conv but the heads,
        # with Conv+Relu fused.
        int8_recipe={
            "mobilenet0.25": {"float_groups": ("early:27", "heads"), "op_types": ("Conv",)},
            "resnet50": {"float_groups": ("heads",), "op_types": ("Conv", "Relu")},
        },
    )


def _arcface() -> ModelSpec:
    from deployzoo.models import iresnet
    from deployzoo.tasks.face_recognition import DEFAULT_POST

    size = [iresnet.INPUT_SIZE, iresnet.INPUT_SIZE]
    return ModelSpec(
        name="arcface",
        task="face_recognition",
        variants=tuple(iresnet.LAYERS),
        default_variant="r100",
        default_imgsz={v: size for v in iresnet.LAYERS},
        seed_imgsz={"r100": size},
        # exif_orientation: insightface's IJB-C evaluation (recognition/arcface_torch/eval_ijbc.py) reads each
        # loose crop with cv2.imread(path) (IMREAD_COLOR: EXIF Orientation applied); the verification .bin sets go
        # through mx.image.imdecode = cv::imdecode(buf, IMREAD_COLOR), which applies it too in OpenCV 5.1 (their
        # aligned JPEG crops carry no Exif segment: small_lfw.bin checked)
        input={"layout": "NCHW", "color": "RGB", "mean": [127.5] * 3, "std": [127.5] * 3, "fixed_size": True,
               "exif_orientation": True},
        post=dict(DEFAULT_POST),
        weights=dict(iresnet.OFFICIAL_WEIGHTS),
        build=iresnet.build_model,
        deploy=iresnet.IResNetDeploy,
        output_names=iresnet.IResNetDeploy.output_names,
        # measured on this machine (docs/benchmarks/cpu.md): every conv and the fc in int8 (keeping the first conv
        # float was slower and no closer to fp32; quantizing the residual Adds cost agreement, no speed).
        int8_recipe={v: {"float_groups": (), "op_types": ("Conv", "Gemm")} for v in iresnet.LAYERS},
        bench_batches=(1, 8, 64),
        predict_batch=64,  # the seed's accuracy table is at batch 64
    )


def _mobilenetv1() -> ModelSpec:
    from deployzoo.models import mobilenetv1 as mb
    from deployzoo.tasks.classification import DEFAULT_POST

    return ModelSpec(
        name="mobilenetv1",
        task="classification",
        variants=mb.VARIANTS,
        default_variant="x0.25",
        default_imgsz={"x0.25": [224, 224]},
        input=dict(mb.INPUT),  # exif_orientation False: PIL's reader (models/mobilenetv1.py)
        post=dict(DEFAULT_POST),
        weights=dict(mb.OFFICIAL_WEIGHTS),
        build=mb.build_model,
        deploy=mb.ClassifierDeploy,
        output_names=mb.ClassifierDeploy.output_names,
        # measured on val_227 (docs/benchmarks/cpu.md): int8 depthwise convs cost ~11 top-1 points on this tiny
        # network, so they stay float with the first conv and the fc; the pointwise convs run int8.
        int8_recipe={"x0.25": {"float_groups": ("first_conv", "depthwise", "heads"), "op_types": ("Conv",)}},
        bench_batches=(1, 32),
    )


def _volo() -> ModelSpec:
    from deployzoo.models import volo
    from deployzoo.tasks.classification import DEFAULT_POST

    return ModelSpec(
        name="volo_d2",
        task="classification",
        variants=volo.VARIANTS,
        default_variant="d2_224",
        default_imgsz={v: volo.default_imgsz(v) for v in volo.VARIANTS},
        seed_imgsz={"d2_224": [224, 224]},
        # the weights' own eval transform (timm pretrained_cfg); exif_orientation False: timm's PIL reader
        input=volo.spec_input("d2_224"),
        post=dict(DEFAULT_POST),
        weights=dict(volo.OFFICIAL_WEIGHTS),
        build=volo.build_model,
        deploy=volo.VoloDeploy,
        output_names=volo.VoloDeploy.output_names,
        int8_recipe={v: {"float_groups": (), "op_types": volo.INT8_OP_TYPES,
                         "exclude_output_ops": volo.INT8_EXCLUDE_OUTPUT_OPS} for v in volo.VARIANTS},
        bench_batches=(1, 8),
        exporter=volo.EXPORTER,
        opset=volo.OPSET,
        max_batch=volo.MAX_BATCH,
        fp16_keep_ops=volo.FP16_KEEP_OPS,
    )


def _maskrcnn() -> ModelSpec:
    from deployzoo.models import maskrcnn as mr

    return ModelSpec(
        name="maskrcnn",
        task="instance_segmentation",
        variants=mr.VARIANTS,
        default_variant="mmdet_1x",  # the seed's model
        default_imgsz={v: "origin" for v in mr.VARIANTS},  # keep-ratio resize to 800 x 1333 in pre-processing
        seed_imgsz={v: [800, 1344] for v in mr.VARIANTS},
        input=dict(mr.INPUT),
        # exif_orientation per variant, the official reader's: torchvision's references read with PIL
        # (CocoDetection: Image.open(path).convert("RGB")), the stored pixels; mmdetection's LoadImageFromFile
        # reads mmcv.imfrombytes(bytes, flag='color') = cv2.imdecode(buf, cv2.IMREAD_COLOR), which turns the
        # image by its EXIF Orientation (mmcv's 'color_ignore_orientation' flag is the one that does not)
        variant_input={v: {"resize_impl": c["resize_impl"],
                           "exif_orientation": {"tv_v1": False, "tv_v2": False, "mmdet_1x": True}[v]}
                       for v, c in mr.CONFIGS.items()},
        post=dict(mr.TEST_CFG),
        variant_post={v: {"paste": c["paste"], "category_ids": mr.category_ids(v)} for v, c in mr.CONFIGS.items()},
        weights=dict(mr.OFFICIAL_WEIGHTS),
        build=mr.build_model,
        deploy=mr.MaskRCNNDeploy,
        output_names=mr.MaskRCNNDeploy.output_names,
        # backbone + FPN in int8, RPN / box / mask heads float (the recipe: heads carry the geometry)
        int8_recipe={v: {"float_groups": ("outside:/backbone/",), "op_types": ("Conv",)} for v in mr.VARIANTS},
        bench_batches=(1, 4),
        bench_imgsz=[800, 1344],  # an 800 x 1333 image padded to 32, the seed's benchmark size
        max_batch=8,
        fp16_scope=mr.NETWORK_SCOPES,
    )


_MODEL_FACTORIES: dict[str, Callable[[], ModelSpec]] = {
    "retinaface": _retinaface, "arcface": _arcface, "mobilenetv1": _mobilenetv1, "volo_d2": _volo,
    "maskrcnn": _maskrcnn,
}
_MODEL_ALIASES = {"iresnet": "arcface", "volo": "volo_d2", "volo-d2": "volo_d2", "mask_rcnn": "maskrcnn",
                  "mask-rcnn": "maskrcnn"}
_TASKS = {
    "face_detection": ("deployzoo.tasks.face_detection", "FaceDetectionTask"),
    "face_recognition": ("deployzoo.tasks.face_recognition", "FaceRecognitionTask"),
    "classification": ("deployzoo.tasks.classification", "ClassificationTask"),
    "instance_segmentation": ("deployzoo.tasks.instance_segmentation", "InstanceSegmentationTask"),
}
_SUITES = {
    "widerface": ("deployzoo.suites.widerface", "WiderFaceSuite"),
    "ijbc": ("deployzoo.suites.ijbc", "IJBCSuite"),
    "imagenet": ("deployzoo.suites.imagenet", "ImageNetSuite"),
    "coco": ("deployzoo.suites.coco", "CocoSuite"),
}
_BACKENDS = {"ort": ("deployzoo.backends.ort", "OrtBackend"), "torch": ("deployzoo.backends.torch_eager", "TorchBackend"),
             "aoti": ("deployzoo.backends.aoti", "AotiBackend")}


def model_names() -> list[str]:
    return list(_MODEL_FACTORIES)


def get_model(name: str) -> ModelSpec:
    key = name.strip().lower()
    key = _MODEL_ALIASES.get(key, key)
    if key not in _MODEL_FACTORIES:
        raise DeployzooError(f"unknown model {name!r} (choose from {', '.join(_MODEL_FACTORIES)})")
    return _MODEL_FACTORIES[key]()


def get_task(name: str):
    if name not in _TASKS:
        raise DeployzooError(f"unknown task {name!r}")
    mod, cls = _TASKS[name]
    return getattr(importlib.import_module(mod), cls)()


def suite_names() -> list[str]:
    return list(_SUITES)


def get_suite(name: str):
    """The Suite class (suites.base.Suite) of a dataset name, as a task's `suite` names it."""
    if name not in _SUITES:
        raise DeployzooError(f"unknown suite {name!r} (choose from {', '.join(_SUITES)})")
    mod, cls = _SUITES[name]
    return getattr(importlib.import_module(mod), cls)


def backend_names() -> list[str]:
    return list(_BACKENDS)


def backend_capabilities(name: str):
    """The backend's declared capability record (backends.base.Capabilities: precisions, devices, build options,
    device pipeline)."""
    return get_backend(name).capabilities


def get_backend(name: str):
    if name not in _BACKENDS:
        raise DeployzooError(f"unknown backend {name!r} (choose from {', '.join(_BACKENDS)})")
    mod, cls = _BACKENDS[name]
    return getattr(importlib.import_module(mod), cls)()

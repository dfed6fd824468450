"""The one place that names models, tasks, suites, backends and precisions. Models register themselves
(models/base.py: register_model); tasks, suites and backends are named here, one line each."""

from __future__ import annotations

import importlib
import pkgutil

from deployzoo.errors import DeployzooError
from deployzoo.models.base import REGISTERED, ModelSpec, Registration, register_model  # noqa: F401 (re-exported)

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
             "aoti": ("deployzoo.backends.aoti", "AotiBackend"),
             "openvino": ("deployzoo.backends.openvino", "OpenVinoBackend")}


def _registered() -> dict[str, Registration]:
    """Every model registered by a module of deployzoo.models (models/base.py's register_model); the modules are
    imported once, on the first call."""
    global _DISCOVERED
    if not _DISCOVERED:
        import deployzoo.models as pkg

        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if info.name != "base":
                importlib.import_module(f"{pkg.__name__}.{info.name}")
        _DISCOVERED = True
    return REGISTERED


_DISCOVERED = False


def model_names() -> list[str]:
    return [r.name for r in sorted(_registered().values(), key=lambda r: (r.order, r.name))]


def get_model(name: str) -> ModelSpec:
    regs = _registered()
    key = name.strip().lower()
    key = next((r.name for r in regs.values() if key in r.aliases), key)
    if key not in regs:
        raise DeployzooError(f"unknown model {name!r} (choose from {', '.join(model_names())})")
    return regs[key].factory()


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

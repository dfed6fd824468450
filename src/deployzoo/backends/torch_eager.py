"""Eager PyTorch backend: the reference peer every benchmark shows beside the built engines.

The engine stores the deploy module's state_dict (so it runs without the original checkpoint path) and is
rebuilt from the registry on load; fp16/bf16 run on CUDA (autocast), fp32 anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployzoo.checkpoint import apply_state_dict, load_state_dict
from deployzoo.engine import engine_feeds
from deployzoo.errors import DeployzooError

WEIGHTS_FILE = "weights.pt"


class TorchRunner:
    def __init__(self, engine_dir: Path, manifest: dict[str, Any], threads: int | None, device: str | None) -> None:
        from deployzoo.registry import get_model

        self.manifest = manifest
        if threads:
            torch.set_num_threads(int(threads))
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise DeployzooError(f"--device {dev}: no CUDA device available")
        self.device = dev
        self.precision = manifest["precision"]
        if self.precision in ("fp16", "bf16") and not dev.startswith("cuda"):
            raise DeployzooError(f"{engine_dir}: backend torch runs {self.precision} on CUDA only (this run is on {dev})")
        spec = get_model(manifest["model"])
        net = spec.build(manifest["variant"], None)
        module = spec.deploy(net)
        path = Path(engine_dir) / manifest["model_file"]
        apply_state_dict(module, load_state_dict(path), path)
        self.module = module.eval().to(dev)
        self.names = list(manifest["outputs"])

    @torch.inference_mode()
    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.manifest["input"]
        feeds = engine_feeds(spec, x)
        order = [spec.get("name", "images"), *spec.get("extra_inputs", ())]
        ts = [torch.from_numpy(np.ascontiguousarray(feeds[k])).to(self.device) for k in order]
        if self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            with torch.autocast("cuda", dtype=dtype):
                outs = self.module(*ts)
        else:
            outs = self.module(*ts)
        return {n: (o.float() if o.is_floating_point() else o).cpu().numpy() for n, o in zip(self.names, outs)}

    def peak_memory_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.device.startswith("cuda") else None


class TorchBackend:
    name = "torch"
    precisions = ("fp32", "fp16", "bf16")
    needs_onnx = True  # the exported graph carries model, variant, weights and input spec

    def build(self, onnx_path: Path, out_dir: Path, precision: str, meta: dict[str, Any],
              calib: Any | None) -> dict[str, Any]:
        from deployzoo.export import build_deploy_module

        from deployzoo.registry import get_model

        w = meta["weights"]
        if not w.get("random") and (not w.get("path") or not Path(w["path"]).is_file()):
            raise DeployzooError(f"{onnx_path}: backend torch needs the source weights {w.get('path')} (not found)")
        module = build_deploy_module(get_model(meta["model"]), meta["variant"], None if w.get("random") else w["path"],
                                     int(w.get("seed") or 0))
        torch.save(module.state_dict(), out_dir / WEIGHTS_FILE)
        return {"model_file": WEIGHTS_FILE}

    def load(self, engine_dir: Path, manifest: dict[str, Any], threads: int | None = None,
             device: str | None = None) -> TorchRunner:
        return TorchRunner(Path(engine_dir), manifest, threads, device)

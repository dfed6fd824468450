"""Eager PyTorch backend: the reference peer every benchmark shows beside the built engines.

The engine stores the deploy module's state_dict (so it runs without the original checkpoint path) and is
rebuilt from the registry on load. It takes the same build options as the compiled `aoti` backend (device, tf32,
channels-last, CUDA graphs; backends/torch_common.py) so that a table compares like with like. fp16 / bf16 run
the module under autocast (convolutions and matmuls in the low precision, the deploy wrappers' decode in fp32);
on the CPU they work but are slow (no fp16 arithmetic on most CPUs), as the benchmarks say.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deployzoo.backends.base import Capabilities
from deployzoo.backends.torch_common import (OPTIONS, TensorRunner, autocast_wrap, build_options, check_graphable,
                                             resolve_device)
from deployzoo.checkpoint import apply_state_dict, load_state_dict
from deployzoo.engine import Engine
from deployzoo.errors import DeployzooError

if TYPE_CHECKING:
    from deployzoo.request import BuildRequest, Graph

WEIGHTS_FILE = "weights.pt"


def source_module(graph: Graph) -> torch.nn.Module:
    """The deploy module of an exported graph, rebuilt from its recorded weights (or its random-init seed)."""
    from deployzoo.export import build_deploy_module
    from deployzoo.registry import get_model

    w = graph.weights
    if not w.get("random") and (not w.get("path") or not Path(w["path"]).is_file()):
        raise DeployzooError(f"{graph.path}: this backend needs the source weights {w.get('path')} (not found)")
    return build_deploy_module(get_model(graph.model), graph.variant, None if w.get("random") else w["path"],
                               int(w.get("seed") or 0))


def load_module(engine: Engine) -> torch.nn.Module:
    from deployzoo.registry import get_model

    spec = get_model(engine.model)
    module = spec.deploy(spec.build(engine.variant, None))
    path = engine.model_path
    apply_state_dict(module, load_state_dict(path), path)
    return module.eval()


class TorchBackend:
    name = "torch"
    capabilities = Capabilities(precisions=("fp32", "fp16", "bf16"), devices=("cpu", "cuda"), options=OPTIONS,
                                device_pipeline=True,
                                refused={"int8": "backend torch: eager PyTorch runs fp32 / fp16 / bf16; int8 is "
                                                 "built by --backend ort"})

    def build(self, graph: Graph, out_dir: Path, request: BuildRequest) -> dict[str, Any]:
        """The exported graph's deploy module (rebuilt from its recorded weights) as a state_dict; precision and
        options are applied at load."""
        opts = build_options(request.options, graph.batch, graph.path)
        module = source_module(graph)
        check_graphable(module, opts, graph.path)
        torch.save(module.state_dict(), out_dir / WEIGHTS_FILE)
        return {"model_file": WEIGHTS_FILE, "options": opts}

    def load(self, engine: Engine, threads: int | None = None, device: str | None = None) -> TensorRunner:
        if threads:
            torch.set_num_threads(int(threads))
        opts = engine.options
        dev = resolve_device(device or opts.get("device"), engine.dir)
        module = load_module(engine).to(dev)
        if opts.get("channels_last"):
            module = module.to(memory_format=torch.channels_last)
        fn = autocast_wrap(module, engine.precision, dev.type)
        return TensorRunner(engine, fn, dev, torch.float32, engine.dir)

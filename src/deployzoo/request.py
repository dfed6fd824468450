"""What to build, said once: a frozen BuildRequest (model, variant, weights, size, batch, backend, precision,
calibration, options, recipe) normalised when it is made, and the exported graph a build starts from.

Every command that builds (export, build, predict MODEL, run) takes its shared options from the fields' `cli`
metadata (`request_options`, as mmdeploy's BaseBackendParam generates its arguments), so a flag is defined, named
and explained in one place; every backend's build receives `build(graph, out_dir, request)`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

from deployzoo.errors import DeployzooError
from deployzoo.specs import BatchSpec, InputSpec


@dataclass(frozen=True)
class Cli:
    """How a request field appears on the command line: flags, help and default (typer.Option's arguments)."""

    flags: tuple[str, ...]
    help: str
    default: Any = None
    type: Any = Optional[str]


def _cli(*flags: str, help: str, default: Any = None, type: Any = Optional[str]) -> dict[str, Cli]:
    return {"cli": Cli(flags, help, default, type)}


# ---------------------------------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class BuildOptions:
    """Build options; None = the backend's default. Each backend's capabilities name the options it takes
    (Capabilities.options); BuildRequest.create refuses any other that is set."""

    device: str | None = field(default=None, metadata=_cli(
        "--device", help="(torch, aoti) cpu | cuda | cuda:N (default: cuda if present)."))
    tf32: bool | None = field(default=None, metadata=_cli(
        "--tf32/--no-tf32", type=Optional[bool], help="(torch, aoti) TF32 matmuls/convs for fp32 on CUDA (default on)."))
    channels_last: bool | None = field(default=None, metadata=_cli(
        "--channels-last/--no-channels-last", type=Optional[bool],
        help="(torch, aoti) NHWC network and input (default: on for CUDA, off for CPU)."))
    cuda_graphs: bool | None = field(default=None, metadata=_cli(
        "--cuda-graphs/--no-cuda-graphs", type=Optional[bool],
        help="(torch, aoti) replay a CUDA graph per input shape (CUDA only; default off)."))
    opt_batch: int | None = field(default=None, metadata=_cli(
        "--opt-batch", type=Optional[int], help="(aoti) batch a dynamic-batch engine is traced at (default 8)."))
    perf_hint: str | None = field(default=None, metadata=_cli(
        "--perf-hint", help="(openvino) latency | throughput: one stream, or several with a batch split across them "
                            "(default latency)."))
    cpu_streams: int | None = field(default=None, metadata=_cli(
        "--cpu-streams", type=Optional[int], help="(openvino) CPU streams (default: OpenVINO's choice for the hint)."))

    @classmethod
    def of(cls, opts: BuildOptions | Mapping[str, Any] | None) -> BuildOptions:
        if isinstance(opts, BuildOptions):
            return opts
        opts = {k: v for k, v in (opts or {}).items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise DeployzooError(f"unknown build option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**opts)

    def set(self) -> dict[str, Any]:
        """The options given (not None), as the cache key and the refusal message name them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Recipe:
    """How a low-precision build treats the graph: for int8 the groups of convolutions kept float
    (quant/recipes.py), the op types quantized, the op types whose outputs stay float and ORT's reduce_range; for
    fp16 the op types kept fp32 and the module scopes that alone run fp16. Defaults come from the model's registry
    entry (ModelSpec.int8_recipe, fp16_keep_ops, fp16_scope); a request may replace any part."""

    float_groups: tuple[str, ...] = field(default=(), metadata=_cli(
        "--float-groups", help="int8: layer groups kept float, comma-separated (first_conv, depthwise, heads, "
                               "early:N, outside:PREFIX) or none (default: the model's recipe on ort, none on "
                               "openvino; build --max-drop chooses them by measurement)."))
    op_types: tuple[str, ...] = ("Conv",)
    exclude_output_ops: tuple[str, ...] = ()
    reduce_range: bool = True
    fp16_keep_ops: tuple[str, ...] = ()
    fp16_scope: tuple[str, ...] = ()

    @classmethod
    def for_model(cls, spec: Any, variant: str) -> Recipe:
        r = spec.int8_recipe.get(variant, {})
        return cls(float_groups=tuple(r.get("float_groups", ())), op_types=tuple(r.get("op_types", ("Conv",))),
                   exclude_output_ops=tuple(r.get("exclude_output_ops", ())),
                   fp16_keep_ops=tuple(spec.fp16_keep_ops), fp16_scope=tuple(spec.fp16_scope))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class Calibration:
    """The int8 calibration images: a directory (or list / dataset root) and how many, chosen how. `images` is
    the resolved set (quant.calib.CalibSet) once it has been read; it is not part of the request's identity, its
    file list is (CalibSet.describe)."""

    source: Path = field(metadata=_cli("--calib", type=Optional[Path],
                                       help="Calibration images (int8), separate from the evaluation set."))
    size: int = field(default=64, metadata=_cli("--calib-size", type=int, default=64,
                                                help="Number of calibration images."))
    method: str = field(default="minmax", metadata=_cli("--calib-method", type=str, default="minmax",
                                                        help="minmax | entropy | percentile."))
    images: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        from deployzoo.quant.calib import CALIB_METHODS

        if self.method not in CALIB_METHODS:
            raise DeployzooError(f"--calib-method {self.method!r}: choose from {', '.join(CALIB_METHODS)}")
        if self.size < 1:
            raise DeployzooError(f"--calib-size {self.size}: must be >= 1")

    @classmethod
    def of_set(cls, cs: Any) -> Calibration:
        return cls(Path(cs.root), len(cs.items), cs.method, cs)

    def resolve(self, task: Any) -> Calibration:
        """This calibration with its images read (the task reads its own source layouts)."""
        if self.images is not None:
            return self
        from deployzoo.quant.calib import make_calib_set

        return replace(self, images=make_calib_set(self.source, self.size, self.method, task=task))


# ---------------------------------------------------------------------------------------------------- the request
@dataclass(frozen=True)
class BuildRequest:
    """One engine to build, normalised: canonical model / variant / precision names, the size parsed, the
    backend's capabilities checked (precision, options), the recipe filled in from the registry."""

    model: str
    variant: str = field(metadata=_cli("--variant", help="Model variant (default: the model's)."))
    weights: Path | None = field(default=None, metadata=_cli(
        "--weights", help="Checkpoint: FILE (official layout), `official` (the model zoo's published file for the "
                          "variant: downloaded, hash-checked, cached) or an http(s) URL (URL#sha256=HEX checks it). "
                          "None: random init."))
    # what the weights must hash to (checked when the request is made; not part of its identity: the file's
    # sha256 is, in the engine cache)
    weights_sha256: str | None = field(default=None, compare=False, metadata=_cli(
        "--weights-sha256", help="Expected sha256 of the weights (64 hex digits, or a prefix of >= 8): a download "
                                 "that differs is deleted, a FILE that differs refused."))
    imgsz: tuple[int, int] | str = field(default="origin", metadata=_cli(
        "--imgsz", help="'origin' (dynamic H x W) or 'H W' / HxW (default: the model's)."))
    batch: int | None = None  # None: dynamic batch axis (1..the model's max_batch)
    backend: str = field(default="ort", metadata=_cli(
        "--backend", type=str, default="ort", help="ort | torch | aoti (AOTInductor .pt2, compiled for --device)."))
    precision: str = field(default="fp32", metadata=_cli(
        "--precision", type=str, default="fp32",
        help="fp32 | fp16 | bf16 (torch, aoti) | int8 (ort) (or the seed names)."))
    calibration: Calibration | None = None
    options: BuildOptions = field(default_factory=BuildOptions)
    recipe: Recipe = field(default_factory=Recipe)
    post: tuple[tuple[str, Any], ...] = ()  # post-processing settings replacing the graph's (conf, iou, ...)
    seed: int = 0  # random-init seed when there are no weights

    @classmethod
    def create(cls, model: str, *, variant: str | None = None, weights: str | Path | None = None,
               weights_sha256: str | None = None, imgsz: Any = None,
               batch: int | None = None, backend: str = "ort", precision: str = "fp32",
               calibration: Calibration | Any | None = None,
               options: BuildOptions | Mapping[str, Any] | None = None, recipe: Recipe | None = None,
               float_groups: tuple[str, ...] | None = None, post: Mapping[str, Any] | None = None,
               seed: int = 0) -> BuildRequest:
        """The request normalised: names checked and made canonical, the backend's capabilities enforced, the
        recipe from the registry unless given (`float_groups` replaces only its int8 float groups; the registry's
        float groups are ORT's, a backend that only takes float groups for int8 starts from none). `weights` is
        resolved last (deployzoo.weights: a FILE, `official` or a URL, downloaded into the cache and checked), so
        that a bad option is refused before any download."""
        from deployzoo.export import parse_imgsz
        from deployzoo.registry import backend_names, canonical_precision, get_backend, get_model

        spec = get_model(model)
        variant = spec.check_variant(variant)
        size = parse_imgsz(imgsz if imgsz is not None else spec.default_imgsz[variant])
        if batch is not None and batch < 1:
            raise DeployzooError(f"--batch {batch}: must be >= 1")
        precision = canonical_precision(precision)
        caps = get_backend(backend).capabilities
        missing = caps.missing()
        if missing:
            raise DeployzooError(f"backend {backend} needs {', '.join(missing)} (pip install {' '.join(missing)})")
        problem = caps.precision_problem(backend, precision)
        if problem:
            raise DeployzooError(problem)
        opts = BuildOptions.of(options)
        foreign = sorted(set(opts.set()) - set(caps.options))
        if foreign:
            takers = [b for b in backend_names() if set(foreign) & set(get_backend(b).capabilities.options)]
            many = len(foreign) > 1
            raise DeployzooError(f"backend {backend}: build option{'s' if many else ''} {', '.join(foreign)} "
                                 f"appl{'y' if many else 'ies'} only to the backends that take "
                                 f"{'them' if many else 'it'} ({', '.join(takers) or 'none'})")
        if recipe is None:
            recipe = Recipe.for_model(spec, variant)
            if not caps.uses_recipe:  # the registry's float groups were tuned for ORT; others start from none
                recipe = replace(recipe, float_groups=())
        if float_groups is not None:
            recipe = replace(recipe, float_groups=parse_float_groups(float_groups))
        calib = calibration
        if calib is not None and not isinstance(calib, Calibration):  # a CalibSet made by the caller
            calib = Calibration.of_set(calib)
        if precision == "int8" and calib is None:
            raise DeployzooError("int8 needs calibration images: pass --calib DIR (separate from the evaluation set)")
        from deployzoo.weights import resolve_weights

        local = resolve_weights(spec, variant, weights, sha256=weights_sha256)
        return cls(model=spec.name, variant=variant, weights=local, weights_sha256=weights_sha256,
                   imgsz="origin" if size == "origin" else (int(size[0]), int(size[1])), batch=batch,
                   backend=backend, precision=precision, calibration=calib, options=opts, recipe=recipe,
                   post=tuple(sorted((k, v) for k, v in (post or {}).items() if v is not None)), seed=seed)

    @classmethod
    def for_graph(cls, graph: Graph, **kw: Any) -> BuildRequest:
        """A request for an exported graph: model, variant, size and batch are the graph's."""
        return cls.create(graph.model, variant=graph.variant, imgsz=graph.input.imgsz,
                          batch=None if graph.batch.dynamic else graph.batch.size,
                          weights=None if graph.weights.get("random") else graph.weights.get("path"),
                          seed=int(graph.weights.get("seed") or 0), **kw)

    @property
    def needs_calibration(self) -> bool:
        return self.precision == "int8"

    def graph_identity(self, weights_id: Any, version: str) -> dict[str, Any]:
        """What the exported graph depends on (the engine cache's graph key)."""
        return {"v": version, "model": self.model, "variant": self.variant, "weights": weights_id,
                "imgsz": self.imgsz if self.imgsz == "origin" else list(self.imgsz), "batch": self.batch}

    def engine_identity(self, weights_id: Any, version: str) -> dict[str, Any]:
        """What the engine depends on: the graph, backend, precision, calibration file list, recipe, options."""
        cs = self.calibration.images if self.calibration is not None and self.needs_calibration else None
        caps = self._caps()
        low = (self.precision != "fp32" and caps.uses_recipe) or (self.precision == "int8" and caps.int8_float_groups)
        return {**self.graph_identity(weights_id, version), "backend": self.backend, "precision": self.precision,
                "calib": cs.describe() if cs is not None else None,
                **({"recipe": self.recipe.to_dict()} if low else {}),
                **({"options": self.options.set()} if self.options.set() else {}),
                **({"post": dict(self.post)} if self.post else {})}

    def _caps(self) -> Any:
        from deployzoo.registry import get_backend

        return get_backend(self.backend).capabilities


# ---------------------------------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Graph:
    """An ONNX file exported by deployzoo and what its metadata says: the start of every build."""

    path: Path
    model: str
    variant: str
    task: str
    input: InputSpec
    batch: BatchSpec
    outputs: tuple[str, ...]
    postprocess: Mapping[str, Any]
    weights: Mapping[str, Any]
    export: Mapping[str, Any]
    meta: Mapping[str, Any]  # the metadata object as written (the manifest copies parts of it)

    @classmethod
    def read(cls, path: str | Path) -> Graph:
        from deployzoo.export import read_onnx_meta

        p = Path(path)
        m = read_onnx_meta(p)
        try:
            return cls(path=p, model=str(m["model"]), variant=str(m["variant"]), task=str(m["task"]),
                       input=InputSpec.from_dict(m["input"]), batch=BatchSpec.from_dict(m["batch"]),
                       outputs=tuple(m["outputs"]), postprocess=dict(m["postprocess"]), weights=dict(m["weights"]),
                       export=dict(m.get("export", {})), meta=m)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DeployzooError(f"{p}: deployzoo metadata incomplete or malformed ({type(exc).__name__}: {exc}); "
                                 "export it again") from None


# ---------------------------------------------------------------------------------------------------- CLI options
def cli_fields() -> dict[str, tuple[type, str, Cli]]:
    """CLI name -> (owning dataclass, field name, Cli) for every request field that is a command-line option:
    the request's own, calibration's (calib, calib_size, calib_method), the build options and the recipe's
    float groups."""
    out: dict[str, tuple[type, str, Cli]] = {}
    for owner, prefix in ((BuildRequest, ""), (Calibration, "calib_"), (BuildOptions, ""), (Recipe, "")):
        for f in fields(owner):
            cli = f.metadata.get("cli")
            if cli is None:
                continue
            name = "calib" if owner is Calibration and f.name == "source" else prefix + f.name
            out[name] = (owner, f.name, cli)
    return out


def request_options(*names: str, prefix: str = "", defaults: Mapping[str, Any] | None = None,
                    helps: Mapping[str, str] | None = None,
                    into: str = "req") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the named request fields to a typer command as options (flags, help and type from the fields' `cli`
    metadata; `prefix` before each help text, `defaults` / `helps` replacing a field's default / help for this
    command). The command receives them as one dict in its `into` parameter."""
    import typer

    table = cli_fields()
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"not request options: {missing}")
    defaults, helps = dict(defaults or {}), dict(helps or {})

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        hints = {k: v for k, v in inspect.get_annotations(fn, eval_str=True).items() if k != into}
        params = [p for p in sig.parameters.values() if p.name != into]
        for n in names:
            cli = table[n][2]
            default = defaults.get(n, cli.default)
            params.append(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=cli.type,
                                            default=typer.Option(default, *cli.flags,
                                                                        help=prefix + helps.get(n, cli.help))))
            hints[n] = cli.type

        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            kw[into] = {**kw.get(into, {}), **{n: kw.pop(n) for n in names if n in kw}}  # (stacked decorators)
            return fn(*args, **kw)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = hints
        del wrapper.__wrapped__  # typer reads the signature above, not fn's
        return wrapper

    return deco


def parse_float_groups(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`--float-groups first_conv,depthwise` -> the groups, checked; `none` (or empty) -> () (all int8)."""
    from deployzoo.quant.recipes import FLOAT_GROUPS

    parts = text.split(",") if isinstance(text, str) else list(text)
    groups = tuple(g.strip() for g in parts if g.strip() and g.strip().lower() != "none")
    text = ",".join(parts)
    for g in groups:
        kind, _, arg = g.partition(":")
        ok = g in FLOAT_GROUPS or (kind == "early" and arg.isdigit() and int(arg) > 0) or (kind == "outside" and arg)
        if not ok:
            raise DeployzooError(f"--float-groups {text}: unknown group {g!r} (choose from {', '.join(FLOAT_GROUPS)}, "
                                 "early:N, outside:PREFIX, or none)")
    return groups


def request_kwargs(args: Mapping[str, Any]) -> dict[str, Any]:
    """BuildRequest.create's keywords from the options `request_options` collected: calib / calib_size /
    calib_method become a Calibration, the build options one `options` mapping."""
    kw = dict(args)
    calib = kw.pop("calib", None)
    size, method = kw.pop("calib_size", 64), kw.pop("calib_method", "minmax")
    opts = {k: kw.pop(k) for k in [f.name for f in fields(BuildOptions)] if k in kw}
    if calib is not None:
        kw["calibration"] = Calibration(Path(calib), size, method)
    if kw.get("float_groups") is not None:
        kw["float_groups"] = parse_float_groups(kw["float_groups"])
    else:
        kw.pop("float_groups", None)
    if any(v is not None for v in opts.values()):
        kw["options"] = opts
    return kw

"""Architecture specs → torch modules.

A spec is one of
  NAME                    a model registered in model_defs (`snptool` lists them)
  torchvision:NAME        any torchvision classification model, untrained
  timm:NAME               any timm model, untrained (needs `pip install snptool[timm]`)
  path/to/file.py:FACTORY a factory function in a user's Python file
  package.module:FACTORY  a factory function in an importable module

The last two are code: a spec the user gives runs, but one read from a file's record runs
only when the user trusts it (core/trust.py), and a file factory only if its sha256 is the
recorded one.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

import model_defs
from model_defs._blocks import HeadOutputs
from snptool.core.attention import HeadedMultiheadAttention, expose_heads
from snptool.core.trust import current_trust
from snptool.errors import ArchitectureError, UsageError, first_line


def parse_arch_kwargs(values: list[str] | str | None) -> dict[str, Any]:
    """Parse `--arch-kwargs`: a JSON object, or `key=value` pairs (values parsed as JSON)."""
    if not values:
        return {}
    if isinstance(values, str):
        values = [values]
    result: dict[str, Any] = {}
    for text in values:
        text = text.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as error:
                raise UsageError(
                    f"--arch-kwargs {text!r} is not valid JSON: {error.msg}."
                ) from None
            if not isinstance(parsed, dict):
                raise UsageError("--arch-kwargs JSON must be an object like '{\"widths\": [8]}'.")
            result.update(parsed)
            continue
        for pair in _split_top_level(text):
            key, sep, raw = pair.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--arch-kwargs item {pair!r} is not key=value or a JSON object.")
            try:
                result[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                result[key.strip()] = raw
    return result


def _split_top_level(text: str) -> list[str]:
    """Split `a=1,b=[2,3]` at the commas that are outside brackets and quotes."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def build_model(
    spec: str,
    kwargs: dict[str, Any] | None = None,
    *,
    num_classes: int | None = None,
    search_dirs: tuple[Path, ...] = (),
    factory: Callable | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build an untrained model from a spec; return it with its metadata record.

    `num_classes` is passed to factories that accept it unless kwargs already set it. The
    record (spec, kwargs actually passed, and the source file's sha256 for file specs) is
    what `build_model_from_record` needs to rebuild the same model. Every attention gets a
    head tap (`expose_heads`: same parameter names, same outputs). `factory`, when given, is
    the one `resolve_factory` found for `spec` (the record then gets no new source hash).
    """
    kwargs = dict(kwargs or {})
    source = None
    if factory is None:
        factory, source = resolve_factory(spec, search_dirs)
    refuse_loading_kwargs(spec, kwargs)
    if num_classes is not None and "num_classes" not in kwargs and accepts(factory, "num_classes"):
        kwargs["num_classes"] = num_classes
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError, KeyError) as error:
        raise ArchitectureError(
            f"cannot build architecture {spec} with {kwargs}: {error}."
        ) from None
    if not isinstance(model, nn.Module):
        raise ArchitectureError(
            f"architecture {spec} returned {type(model).__name__}, not a torch module."
        )
    expose_heads(model)
    record: dict[str, Any] = {"spec": spec, "kwargs": kwargs}
    if source is not None:
        record["source"] = source
    return model, record


def build_model_from_record(
    record: dict[str, Any],
    search_dirs: tuple[Path, ...] = (),
    *,
    where: str = "the checkpoint",
    device: str | None = None,
) -> nn.Module:
    """Rebuild the model a file's architecture record describes (its modules created on
    `device`, e.g. "meta" to learn its shapes without allocating them).

    A code spec (module or file factory) runs only when trusted (core/trust.py), a file
    factory only from a file with the recorded sha256; `where` names the file in errors.
    """
    spec = record["spec"]
    source = record.get("source") or {}
    if is_code_spec(spec) and not current_trust().allows(spec):
        raise ArchitectureError(
            f"{where} builds its model with code, {spec}, which snptool runs only when you "
            f"trust it: pass --arch {spec} if you do, or --trust-code."
        )
    dirs = search_dirs
    if source.get("path"):
        dirs = (*dirs, Path(source["path"]).parent)
    try:
        factory, _ = resolve_factory(spec, dirs, expected_sha256=source.get("sha256"), where=where)
        with torch.device(device) if device else contextlib.nullcontext():
            model, _ = build_model(spec, record.get("kwargs", {}), factory=factory)
            return _apply_pruning_records(model, record)
    except ArchitectureError as error:  # name the file the record came from
        if where in str(error):
            raise
        raise ArchitectureError(f"{where}: {error}") from None


def _apply_pruning_records(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """The dense `model` with the probe head, resized modules and channel maps a pruned
    checkpoint's architecture record names."""
    head = record.get("head")
    if head:
        model = ProbeHeadModel(model, head["tap"], head["in_features"], head["num_classes"])
    if record.get("shapes"):
        resize_modules(model, record["shapes"])
    if record.get("channel_maps"):
        from snptool.core.channel_maps import restore_channel_maps

        try:
            restore_channel_maps(model, record["channel_maps"])
        except (AttributeError, TypeError) as error:
            raise ArchitectureError(
                f"the checkpoint's channel maps do not fit its architecture ({error}); "
                "rebuild it with the architecture it was pruned from."
            ) from None
    if record.get("resized"):
        from snptool.core.resizing import apply_resized

        apply_resized(model, record["resized"])
    return model


_SHAPE_KEYS = (
    (nn.Conv2d, ("in", "out", "groups")),
    (nn.Linear, ("in", "out")),
    (nn.modules.batchnorm._BatchNorm, ("features",)),
    (nn.LayerNorm, ("features",)),
)


def resize_modules(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> None:
    """Replace the named modules by fresh ones of the recorded channel counts (weights follow
    from the state dict); other settings (kernel, stride, eps, ...) stay the dense model's.
    Reads the `arch.shapes` of checkpoints pruned before `arch.resized` (resizing.py)."""
    for name, shape in shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ArchitectureError(
                f"the checkpoint resizes {name}, which the architecture does not have; "
                "rebuild it with the architecture it was pruned from."
            ) from None
        needed = next((keys for kind, keys in _SHAPE_KEYS if isinstance(module, kind)), ())
        missing = [key for key in needed if key not in shape]
        if missing:
            raise ArchitectureError(
                f"the checkpoint's arch.shapes.{name} has no {', '.join(missing)}; "
                "re-create the checkpoint."
            )
        if isinstance(module, nn.Conv2d):
            new: nn.Module = nn.Conv2d(
                shape["in"],
                shape["out"],
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                shape["groups"],
                module.bias is not None,
                module.padding_mode,
            )
        elif isinstance(module, nn.Linear):
            new = nn.Linear(shape["in"], shape["out"], module.bias is not None)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            new = type(module)(
                shape["features"],
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
            )
        elif isinstance(module, nn.LayerNorm):
            new = nn.LayerNorm(
                (*module.normalized_shape[:-1], shape["features"]),
                module.eps,
                module.elementwise_affine,
                bias=module.bias is not None,
            )
        else:
            raise ArchitectureError(f"the checkpoint resizes {name}, which is not resizable.")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


class ProbeHeadModel(nn.Module):
    """A network cut after the module `tap`, classified by a bias-free linear read-out of the
    flattened tap (a probe): the authors' AFCC classifier (`prune --classifier probe`).

    The cut is made with torch.fx, so submodule names stay as they were under `body.`.
    """

    def __init__(self, model: nn.Module, tap: str, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.body = cut_after(model, tap)
        self.head = nn.Linear(in_features, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(x), 1))


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with the head-exposing attention a leaf as nn.MultiheadAttention is,
    and head taps (HeadOutputs) kept as modules so a cut can find them."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, HeadedMultiheadAttention | HeadOutputs) or super().is_leaf_module(
            module, qualified_name
        )


def cut_after(model: nn.Module, tap: str) -> nn.Module:
    """The part of `model` that computes the output of its submodule `tap` (via torch.fx)."""
    try:
        traced = torch.fx.GraphModule(model, _Tracer().trace(model))
    except Exception as error:  # fx raises many types for code it cannot trace
        raise ArchitectureError(
            f"cannot cut the model after {tap}: torch.fx: {first_line(error)}."
        ) from None
    graph = traced.graph
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == tap]
    if len(nodes) != 1:
        raise ArchitectureError(
            f"cannot cut the model after {tap}: it runs {len(nodes)} times in its graph."
        )
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (nodes[0],)
    graph.eliminate_dead_code()
    graph.lint()
    return torch.fx.GraphModule(traced, graph)


DUMMY_BATCH = 2  # images in a dummy forward pass: a tap whose first axis differs folds more in


@torch.no_grad()
def run_dummy_input(
    model: nn.Module,
    shape: tuple[int, ...],
    what: str,
    *,
    fix: str = "make --channels, --input-size and --arch-kwargs agree",
    fill: str = "zeros",
) -> torch.Tensor:
    """Run a batch of two inputs of `shape` (C, H, W) in eval mode, zeros or (`fill`
    "normal") seeded standard normal values; return the output.

    A model that cannot take that input gives a one-line UsageError naming `what` and `fix`.
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(DUMMY_BATCH, *shape)
    if fill == "normal":
        x = torch.randn(DUMMY_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    try:
        return model(x.to(device))
    except RuntimeError as error:
        raise UsageError(
            f"{what} does not run on a {'x'.join(map(str, shape))} input "
            f"({first_line(error)}); {fix}."
        ) from None
    finally:
        model.train(was_training)


def accepts(factory: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def is_code_spec(spec: str) -> bool:
    """Whether a spec names a module or file factory (code) rather than a registered builder."""
    prefix, sep, _ = spec.partition(":")
    return bool(sep) and prefix not in ("torchvision", "timm")


def is_file_spec(spec: str) -> bool:
    """Whether a spec names a factory in a Python file (`path/to/file.py:factory`)."""
    prefix, sep, _ = spec.partition(":")
    return bool(sep) and (prefix.endswith(".py") or "/" in prefix or "\\" in prefix)


# Builder arguments that read files or fetch weights: never from a record, never from --arch.
LOADING_KWARGS = {
    "torchvision": ("weights", "weights_backbone", "progress"),
    "timm": (
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
    ),
}


def refuse_loading_kwargs(spec: str, kwargs: dict[str, Any]) -> None:
    """Refuse the builder arguments that would make a zoo builder read or download weights."""
    loading = [k for k in LOADING_KWARGS.get(spec.partition(":")[0], ()) if k in kwargs]
    if loading:
        raise ArchitectureError(
            f"architecture {spec} is built untrained, without {', '.join(loading)}; "
            "drop it from the kwargs and bring the weights with `snptool import`."
        )


def resolve_factory(
    spec: str,
    search_dirs: tuple[Path, ...] = (),
    *,
    expected_sha256: str | None = None,
    where: str = "the checkpoint",
) -> tuple[Callable, dict | None]:
    """Return (factory, source record or None) for an architecture spec; a file factory must
    have `expected_sha256` where one is given."""
    if not spec:
        raise UsageError("no architecture given; pass --arch NAME (see `snptool models`).")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "torchvision":
        return _torchvision_factory(rest), None
    if sep and prefix == "timm":
        return _timm_factory(rest), None
    if is_file_spec(spec):
        return _file_factory(prefix, rest, search_dirs, expected_sha256, where)
    if sep:
        return _module_factory(prefix, rest), None
    if spec not in model_defs.list_models():
        close = difflib.get_close_matches(spec, model_defs.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ArchitectureError(
            f"unknown architecture {spec!r}.{hint} Run `snptool models` for the registered "
            "names, or use torchvision:NAME, timm:NAME or path/to/file.py:factory."
        )
    return (lambda **kw: model_defs.create_model(spec, **kw)), None


def _torchvision_factory(name: str) -> Callable:
    import torchvision.models

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ArchitectureError(f"torchvision has no classification model {name!r}.{hint}")
    return lambda **kw: torchvision.models.get_model(name, weights=None, **kw)


def _timm_factory(name: str) -> Callable:
    try:
        import timm
    except ImportError:
        raise ArchitectureError(
            f"timm:{name} needs timm; install it with `pip install 'snptool[timm]'`."
        ) from None
    if not timm.is_model(name):
        raise ArchitectureError(f"timm has no model {name!r}; see timm.list_models().")
    return lambda **kw: timm.create_model(name, pretrained=False, **kw)


def _file_factory(
    file_name: str,
    factory_name: str,
    search_dirs: tuple[Path, ...],
    expected_sha256: str | None,
    where: str,
) -> tuple[Callable, dict]:
    candidates = [Path(file_name)] + [d / Path(file_name).name for d in search_dirs]
    found = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in candidates if p.is_file()}
    if not found:
        raise ArchitectureError(
            f"architecture file {file_name} does not exist; check the path in --arch."
        )
    if expected_sha256 is None:
        path, digest = next(iter(found.items()))
    else:
        path = next((p for p, d in found.items() if d == expected_sha256), None)
        if path is None:
            other, digest = next(iter(found.items()))
            raise ArchitectureError(
                f"{where} was built with {file_name} of sha256 {expected_sha256[:16]}…, but "
                f"{other} has sha256 {digest[:16]}…; restore the file it was built with."
            )
        digest = expected_sha256
    module_name = f"snptool_user_arch_{digest[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as error:  # the user's code: report it in one line
            del sys.modules[module_name]
            raise ArchitectureError(
                f"importing {path} failed: {type(error).__name__}: {error}."
            ) from None
    factory = _factory_in(module, factory_name, str(path))
    return factory, {"path": str(path.resolve()), "sha256": digest}


def _module_factory(module_name: str, factory_name: str) -> Callable:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ArchitectureError(f"cannot import module {module_name}: {error}.") from None
    return _factory_in(module, factory_name, module_name)


def _factory_in(module: Any, factory_name: str, where: str) -> Callable:
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        closest = difflib.get_close_matches(factory_name, names, n=12, cutoff=0.0)
        raise ArchitectureError(
            f"{where} has no factory {factory_name!r}; closest callables there: "
            f"{', '.join(closest)}."
        )
    return factory


def list_architectures() -> list[dict[str, Any]]:
    """The registered model_defs architectures with their one-line descriptions."""
    rows = []
    for name in model_defs.list_models():
        entry = model_defs.get_model_entry(name)
        rows.append(
            {"name": name, "description": entry.description, "input_size": list(entry.input_size)}
        )
    return rows


def default_input_size(spec: str) -> tuple[int, int, int] | None:
    """The input size (C, H, W) a registered architecture was designed for, else None."""
    if spec in model_defs.list_models():
        return tuple(model_defs.get_model_entry(spec).input_size)
    return None

"""`snptool import`: a third-party weights file → an snptool checkpoint.

Reads `.pt/.pth/.th` files with `torch.load(weights_only=True)` only (no pickled code runs)
and `.safetensors` files; unwraps `state_dict`/`model`-style containers; strips the wrapper
prefix (`module.`, `_orig_mod.`, …) that best matches the architecture's own names.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snptool.config import DataConfig, ImportConfig
from snptool.core.architectures import build_model, run_dummy_input
from snptool.core.checkpoint import (
    EXTRA_SEPARATOR,
    check_weight_values,
    load_state,
    make_metadata,
    match_weights,
    read_tensors,
    write_checkpoint,
)
from snptool.core.files import check_output_path, provenance, require_file
from snptool.data.datasets import load_data
from snptool.errors import CheckpointMismatchError, InputFileError, UsageError, first_line

CONTAINER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "params",
    "ema",
)


@dataclass(frozen=True)
class ImportResult:
    output: str
    arch: str
    num_classes: int
    tensors: int
    stripped_prefix: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def read_foreign_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a third-party weights file, unwrapped from common containers."""
    path = require_file(path, "weights file")
    if path.suffix == ".safetensors":
        tensors = read_tensors(path)
        return {k: v for k, v in tensors.items() if EXTRA_SEPARATOR not in k}
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputFileError(
            f"{path} cannot be read safely with weights_only=True (it is not a PyTorch file, or "
            "it pickles objects other than tensors); save its state_dict and import that."
        ) from None
    except Exception as error:  # torch.load of a damaged file can raise almost any error
        reason = first_line(error).split(". ")[0][:200]
        raise InputFileError(
            f"{path} is not a readable PyTorch weights file ({reason}); "
            "it may be truncated or of another format."
        ) from None
    return unwrap_state_dict(loaded, str(path))


def unwrap_state_dict(loaded: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint container (nested dicts are searched)."""
    if isinstance(loaded, Mapping):
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(loaded) / 2:
            return tensors
        for key in CONTAINER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                return unwrap_state_dict(loaded[key], source)
        nested = [v for v in loaded.values() if isinstance(v, Mapping)]
        if len(nested) == 1:
            return unwrap_state_dict(nested[0], source)
        if tensors:
            return tensors
    raise InputFileError(
        f"{source} holds no state dict (found {type(loaded).__name__}"
        + (
            f" with keys {', '.join(map(str, list(loaded)[:6]))}"
            if isinstance(loaded, Mapping)
            else ""
        )
        + "); save model.state_dict() and import that."
    )


def strip_prefix(
    weights: dict[str, torch.Tensor], expected: set[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """Remove the key prefix (e.g. `module.`) under which most keys match `expected`."""
    candidates = {""}
    for key in weights:
        parts = key.split(".")
        for depth in range(1, min(3, len(parts))):
            candidates.add(".".join(parts[:depth]) + ".")

    def renamed(prefix: str) -> dict[str, torch.Tensor]:
        return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in weights.items()}

    best = max(sorted(candidates), key=lambda p: (len(expected & renamed(p).keys()), -len(p)))
    return renamed(best), best


def run_import(weights_path: str | Path, output: str | Path, config: ImportConfig) -> ImportResult:
    """Turn a weights file into an snptool checkpoint for `config.arch`."""
    if not config.arch:
        raise UsageError("give the architecture of the weights with --arch SPEC.")
    check_output_path(output, weights_path)
    foreign = read_foreign_weights(weights_path)
    class_names = _class_names(config)
    num_classes = len(class_names) if class_names else config.num_classes
    model, arch_record = build_model(config.arch, config.arch_kwargs, num_classes=num_classes)
    weights, prefix = strip_prefix(foreign, set(model.state_dict()))
    match = match_weights(model, weights)
    if not match.is_exact and (config.strict or match.mismatched):
        raise CheckpointMismatchError(
            f"the weights in {weights_path} do not match architecture {config.arch}: "
            f"{match.describe()}; check --arch and --arch-kwargs"
            + ("." if match.mismatched else ", or pass --no-strict to import what matches.")
        )
    check_weight_values(model, weights, str(weights_path))
    load_state(model, {k: v for k, v in weights.items() if k in model.state_dict()})
    model.eval()
    outputs = _output_width(model, config)
    if class_names and len(class_names) != outputs:
        raise UsageError(
            f"{len(class_names)} class names given but the model has {outputs} outputs."
        )
    class_names = class_names or [str(i) for i in range(outputs)]
    metadata = make_metadata(
        arch=arch_record,
        class_names=class_names,
        input_spec=config.input,
        data=config.data,
        provenance=provenance({"weights": weights_path}),
        imported={"source": str(weights_path), "stripped_prefix": prefix, "strict": config.strict},
    )
    write_checkpoint(output, model, metadata)
    return ImportResult(
        str(output),
        config.arch,
        outputs,
        len(weights),
        prefix,
        match.missing,
        match.unexpected,
        [name for name, _, _ in match.mismatched],
    )


def _class_names(config: ImportConfig) -> list[str] | None:
    if config.class_names:
        return list(config.class_names)
    if config.data:
        return load_data(config.data, "test", DataConfig()).class_names
    return None


def _output_width(model: nn.Module, config: ImportConfig) -> int:
    """Number of model outputs, found by a forward pass (which also checks the input spec)."""
    logits = run_dummy_input(model, config.input.shape, config.arch)
    if logits.ndim != 2:
        raise UsageError(
            f"the model's output has shape {list(logits.shape)}; snptool needs [N, classes] logits."
        )
    if config.num_classes is not None and logits.shape[1] != config.num_classes:
        raise UsageError(
            f"--num-classes {config.num_classes} but the model has {logits.shape[1]} outputs; "
            "pass the architecture's own num_classes in --arch-kwargs."
        )
    return int(logits.shape[1])

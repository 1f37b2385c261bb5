"""Resized modules in a checkpoint: what channel removal changed in a network, recorded so that
`read_checkpoint` rebuilds the pruned network from its dense architecture.

Torch-Pruning shrinks parameters in place and updates the modules' size attributes
(`out_channels`, `num_features`, `embed_dim`, `head_dim`, …). The record (`arch.resized`) keeps
both, for any module type: every simple attribute (number, string, tuple of numbers) that
differs from the dense model's, and the shape of every state-dict tensor that differs (bare
parameters such as ConvNeXt's layer scales included). Rebuilding sets the attributes and
replaces those tensors by empty ones of the recorded shapes; the strict load fills them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from snptool.errors import ArchitectureError

_SIMPLE = (bool, int, float, str)


def _simple(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    return isinstance(value, tuple | list) and all(isinstance(v, _SIMPLE) for v in value)


def module_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every module's simple attributes, by qualified module name."""
    return {
        name: {k: v for k, v in vars(module).items() if k != "training" and _simple(v)}
        for name, module in model.named_modules()
    }


def tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    """The shape of every state-dict tensor."""
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def resized_record(
    dense: tuple[dict[str, dict[str, Any]], dict[str, list[int]]], model: nn.Module
) -> dict[str, Any]:
    """What differs in `model` from the dense model's (module_attributes, tensor_shapes)."""
    attributes, shapes = dense
    modules = {}
    for name, values in module_attributes(model).items():
        before = attributes.get(name, {})
        changed = {k: v for k, v in values.items() if k in before and before[k] != v}
        if changed:
            modules[name] = changed
    tensors = {n: s for n, s in tensor_shapes(model).items() if shapes.get(n) != s}
    return {"modules": modules, "tensors": tensors}


def merge_resized(earlier: dict[str, Any] | None, later: dict[str, Any]) -> dict[str, Any]:
    """A second pruning's record on top of the first's (the later values win)."""
    earlier = earlier or {"modules": {}, "tensors": {}}
    modules = {name: dict(values) for name, values in earlier["modules"].items()}
    for name, values in later["modules"].items():
        modules.setdefault(name, {}).update(values)
    return {"modules": modules, "tensors": {**earlier["tensors"], **later["tensors"]}}


def apply_resized(model: nn.Module, record: dict[str, Any]) -> None:
    """Give the dense `model` the recorded attributes and tensor shapes (values: empty)."""
    for name, values in record.get("modules", {}).items():
        module = _submodule(model, name)
        for key, value in values.items():
            dense = getattr(module, key, None)
            setattr(module, key, tuple(value) if isinstance(dense, tuple) else value)
    for name, shape in record.get("tensors", {}).items():
        owner, _, leaf = name.rpartition(".")
        module = _submodule(model, owner)
        if leaf in module._parameters and module._parameters[leaf] is not None:
            old = module._parameters[leaf]
            module._parameters[leaf] = nn.Parameter(
                torch.empty(shape, dtype=old.dtype, device=old.device),
                requires_grad=old.requires_grad,
            )
        elif leaf in module._buffers and module._buffers[leaf] is not None:
            old = module._buffers[leaf]
            module._buffers[leaf] = torch.empty(shape, dtype=old.dtype, device=old.device)
        else:
            raise ArchitectureError(
                f"the checkpoint resizes tensor {name}, which the architecture does not have; "
                "rebuild it with the architecture it was pruned from."
            )


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ArchitectureError(
            f"the checkpoint resizes {name or 'the model'}, which the architecture does not "
            "have; rebuild it with the architecture it was pruned from."
        ) from None

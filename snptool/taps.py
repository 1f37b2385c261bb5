"""Taps: module outputs read as units (METHODS.md §2).

A unit kind says how a tap tensor is viewed as [N, U, P] (samples, units, positions).
`discover_layers` finds, with one forward pass of a dummy input, every module whose output
can be analysed and the unit kinds that apply to it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snptool.architectures import run_dummy_input
from snptool.checkpoint import read_checkpoint
from snptool.config import InputSpec
from snptool.errors import LayerError


@dataclass(frozen=True)
class UnitKind:
    """How a tap tensor splits into units: `applies(shape)` (batch included), `view` → [N, U, P]."""

    name: str
    description: str
    applies: Callable[[tuple[int, ...]], bool]
    view: Callable[[torch.Tensor], torch.Tensor]


def _channel_view(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)


def _feature_view(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _node_view(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], 1)


UNIT_KINDS: dict[str, UnitKind] = {}


def register_unit_kind(kind: UnitKind) -> UnitKind:
    """Add a unit kind (the transformer issue adds `head`)."""
    if kind.name in UNIT_KINDS:
        raise ValueError(f"unit kind {kind.name} is already registered")
    UNIT_KINDS[kind.name] = kind
    return kind


register_unit_kind(
    UnitKind(
        "channel",
        "conv filter of [N, C, H, W]: U = C, P = H·W",
        lambda s: len(s) == 4,
        _channel_view,
    )
)
register_unit_kind(
    UnitKind(
        "feature",
        "node of a token tensor [N, T, D]: U = D, P = T",
        lambda s: len(s) == 3,
        _feature_view,
    )
)
register_unit_kind(
    UnitKind(
        "node", "node of a flat tensor [N, D]: U = D, P = 1", lambda s: len(s) == 2, _node_view
    )
)


@dataclass(frozen=True)
class LayerInfo:
    """One analysable reading of a module's output."""

    layer: str
    module: str
    shape: tuple[int, ...]
    unit: str
    units: int
    positions: int
    calls: int = 1
    probe_tap: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "module": self.module,
            "shape": list(self.shape),
            "unit": self.unit,
            "units": self.units,
            "positions": self.positions,
            "calls": self.calls,
            "probe_tap": self.probe_tap,
        }


@dataclass(frozen=True)
class LayersResult:
    checkpoint: str
    layers: list[LayerInfo] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [layer.to_json() for layer in self.layers]


@torch.no_grad()
def discover_layers(model: nn.Module, spec: InputSpec) -> list[LayerInfo]:
    """Every module output (in forward order) with each unit kind that applies to it."""
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                if name not in shapes:
                    order.append(name)
                shapes[name] = tuple(output.shape)
                calls[name] = calls.get(name, 0) + 1

        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        run_dummy_input(model, spec.shape, "the model")
    finally:
        for handle in handles:
            handle.remove()
    probe_taps = set(getattr(model, "probe_taps", []) or [])
    layers = []
    for name in order:
        shape = shapes[name]
        for kind in UNIT_KINDS.values():
            if kind.applies(shape):
                units, positions = kind.view(torch.empty(shape, device="meta")).shape[1:]
                layers.append(
                    LayerInfo(
                        layer=name,
                        module=type(model.get_submodule(name)).__name__,
                        shape=shape[1:],
                        unit=kind.name,
                        units=int(units),
                        positions=int(positions),
                        calls=calls[name],
                        probe_tap=name in probe_taps,
                    )
                )
    return layers


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`, or a LayerError that suggests close names."""
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise LayerError(
            f"the model has no layer {name!r}; {hint}run `snptool layers CHECKPOINT` to list them."
        )
    return model.get_submodule(name)


def run_layers(
    checkpoint_path: str | Path, *, names: list[str] | None = None, probe_taps_only: bool = False
) -> LayersResult:
    """The analysable layers of a checkpoint's model (all, the probe taps, or those named)."""
    checkpoint = read_checkpoint(checkpoint_path)
    for name in names or []:
        resolve_layer(checkpoint.model, name)
    layers = discover_layers(checkpoint.model, checkpoint.input_spec)
    if probe_taps_only:
        layers = [layer for layer in layers if layer.probe_tap]
    if names:
        layers = [layer for layer in layers if layer.layer in names]
    return LayersResult(str(checkpoint_path), layers)

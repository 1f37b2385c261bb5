"""Taps: module outputs read as units (METHODS.md §2).

A unit kind says how a tap tensor is viewed as [N, U, P] (samples, units, positions), from
its shape and the module that produced it (a HeadOutputs module knows its number of heads).
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

from model_defs._blocks import HeadOutputs
from snptool.architectures import run_dummy_input
from snptool.checkpoint import read_checkpoint
from snptool.config import InputSpec
from snptool.errors import LayerError


@dataclass(frozen=True)
class UnitKind:
    """How a tap tensor splits into units.

    `count_units(module, shape)` is U for a tensor of `shape` (batch included) that `module`
    outputs (or reads), or None where the kind does not apply; `view(tensor, units)` is the
    tensor as [N, U, P].
    """

    name: str
    description: str
    count_units: Callable[[nn.Module, tuple[int, ...]], int | None]
    view: Callable[[torch.Tensor, int], torch.Tensor]


def _channel_view(x: torch.Tensor, units: int) -> torch.Tensor:
    return x.reshape(x.shape[0], units, -1)  # (N, C, H·W)


def _feature_view(x: torch.Tensor, units: int) -> torch.Tensor:
    return x.transpose(1, 2)  # (N, D, T)


def _node_view(x: torch.Tensor, units: int) -> torch.Tensor:
    return x.reshape(x.shape[0], units, 1)  # (N, D, 1)


def _head_view(x: torch.Tensor, units: int) -> torch.Tensor:
    """(N, T, h·d) → (N, h, T·d): head i holds columns i·d … i·d + d − 1 of every token;
    its positions run token-major, then over the d features (p = t·d + j)."""
    n, tokens, _ = x.shape
    return x.reshape(n, tokens, units, -1).transpose(1, 2).reshape(n, units, -1)


def _heads_of(module: nn.Module, shape: tuple[int, ...]) -> int | None:
    """h for the [N, T, h·d] output of a HeadOutputs module, else None."""
    if isinstance(module, HeadOutputs) and len(shape) == 3 and shape[2] % module.num_heads == 0:
        return module.num_heads
    return None


UNIT_KINDS: dict[str, UnitKind] = {}


def register_unit_kind(kind: UnitKind) -> UnitKind:
    """Add a unit kind; kinds are tried in registration order, the first is a tap's default."""
    if kind.name in UNIT_KINDS:
        raise ValueError(f"unit kind {kind.name} is already registered")
    UNIT_KINDS[kind.name] = kind
    return kind


register_unit_kind(
    UnitKind(
        "channel",
        "conv filter of [N, C, H, W]: U = C, P = H·W",
        lambda module, s: s[1] if len(s) == 4 else None,
        _channel_view,
    )
)
register_unit_kind(
    UnitKind(
        "feature",
        "node of a token tensor [N, T, D]: U = D, P = T",
        lambda module, s: s[2] if len(s) == 3 else None,
        _feature_view,
    )
)
register_unit_kind(
    UnitKind(
        "node",
        "node of a flat tensor [N, D]: U = D, P = 1",
        lambda module, s: s[1] if len(s) == 2 else None,
        _node_view,
    )
)
register_unit_kind(
    UnitKind(
        "head",
        "attention head of the concatenated heads [N, T, h·d] (a HeadOutputs): U = h, P = T·d",
        _heads_of,
        _head_view,
    )
)


@dataclass(frozen=True)
class Reading:
    """A tensor read as units of one kind: U units of P positions."""

    unit: str
    units: int
    positions: int


def unit_readings(module: nn.Module, shape: tuple[int, ...]) -> list[Reading]:
    """Every unit kind that reads a tensor of `shape` (batch included) from `module`."""
    readings = []
    for kind in UNIT_KINDS.values():
        units = kind.count_units(module, shape)
        if units:
            positions = kind.view(torch.empty(shape, device="meta"), units).shape[2]
            readings.append(Reading(kind.name, int(units), int(positions)))
    return readings


def tap_name(layer: str, unit: str, tap_input: bool = False, default_unit: bool = True) -> str:
    """How a tap is named in every file and flag: `features.10`, `features.10@input`, and
    `blocks.0.attn.heads:head` when the unit kind is not the first that applies."""
    name = layer + ("@input" if tap_input else "")
    return name if default_unit else f"{name}:{unit}"


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
    default_unit: bool = True

    @property
    def tap(self) -> str:
        """The exact string to pass as `--layer` to read these units."""
        return tap_name(self.layer, self.unit, default_unit=self.default_unit)

    def to_json(self) -> dict[str, Any]:
        return {
            "tap": self.tap,
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
        module = model.get_submodule(name)
        for index, reading in enumerate(unit_readings(module, shapes[name])):
            layers.append(
                LayerInfo(
                    layer=name,
                    module=type(module).__name__,
                    shape=shapes[name][1:],
                    unit=reading.unit,
                    units=reading.units,
                    positions=reading.positions,
                    calls=calls[name],
                    probe_tap=name in probe_taps,
                    default_unit=index == 0,
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


@dataclass(frozen=True)
class Tap:
    """One tapped tensor: a module's output (or input) read as units of one kind.

    Its `name` keys every file snptool writes: `features.10`, `features.10@input`, and
    `blocks.0.attn.heads:head` when the unit kind is not the first that applies.
    """

    layer: str
    unit: str
    tap_input: bool = False
    shape: tuple[int, ...] = ()
    units: int = 0
    positions: int = 0
    default_unit: bool = True

    @property
    def name(self) -> str:
        return tap_name(self.layer, self.unit, self.tap_input, self.default_unit)

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        return UNIT_KINDS[self.unit].view(tensor, self.units)


class _StopForward(Exception):
    """Raised by the hook of the last tap: the rest of the network is not needed."""


def parse_tap_request(text: str) -> tuple[str, str | None]:
    """`LAYER` or `LAYER:UNIT` → (layer, unit kind or None)."""
    layer, sep, unit = text.rpartition(":")
    if sep and unit in UNIT_KINDS:
        return layer, unit
    return text, None


class TapRecorder:
    """Capture several taps in ONE forward pass, as [N, U, P] tensors.

    The forward pass stops right after the last tap fires, so tapping early layers costs
    only the network up to them.
    """

    def __init__(
        self, model: nn.Module, requests: list[str], spec: InputSpec, *, tap_input: bool = False
    ):
        self.model = model
        self.taps = resolve_taps(model, requests, spec, tap_input=tap_input)
        self._outputs: dict[str, torch.Tensor] = {}
        self._last = self.taps[-1].name if self.taps else None
        self._stop = True

    def run(
        self,
        x: torch.Tensor,
        *,
        full: bool = False,
        consume: Callable[[Tap, torch.Tensor], None] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The tapped tensors for a batch of model inputs, and the logits if `full`.

        Without `full` the forward pass stops after the last tap. With `consume`, each tapped
        [N, U, P] view is handed to `consume(tap, view)` the moment it is computed (no copy;
        the view is only valid during the call) and the returned dict stays empty.
        """
        self._outputs = {}
        self._fired: set[str] = set()
        self._consume = consume
        self._stop = not full
        handles = [self._hook(tap) for tap in self.taps]
        logits = None
        try:
            logits = self.model(x)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return self._outputs, logits

    def _hook(self, tap: Tap):
        module = self.model.get_submodule(tap.layer)

        def store(tensor: torch.Tensor) -> None:
            view = tap.view(tensor.detach())
            if self._consume is not None:
                self._consume(tap, view)
            else:  # a copy: a later in-place op (ReLU(inplace=True)) must not change it
                self._outputs[tap.name] = view.clone()
            self._fired.add(tap.name)
            if self._stop and tap.name == self._last and len(self._fired) == len(self.taps):
                raise _StopForward

        if tap.tap_input:
            return module.register_forward_pre_hook(lambda m, args: store(args[0]))
        return module.register_forward_hook(lambda m, args, output: store(output))


@torch.no_grad()
def resolve_taps(
    model: nn.Module, requests: list[str], spec: InputSpec, *, tap_input: bool = False
) -> list[Tap]:
    """Check the requested layers and find their shapes; return taps in forward order."""
    if not requests:
        raise LayerError(
            "no layer given; pass --layer NAME (see `snptool layers CHECKPOINT`) or --all."
        )
    parsed = [parse_tap_request(text) for text in requests]
    for layer, _ in parsed:
        resolve_layer(model, layer)
    seen: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    handles = []
    for layer in dict.fromkeys(layer for layer, _ in parsed):
        module = model.get_submodule(layer)

        def record(tensor: Any, layer: str = layer) -> None:
            if isinstance(tensor, torch.Tensor):
                if layer not in seen:
                    order.append(layer)
                seen[layer] = tuple(tensor.shape)
                calls[layer] = calls.get(layer, 0) + 1

        if tap_input:
            handles.append(
                module.register_forward_pre_hook(lambda m, a, r=record: r(a[0] if a else None))
            )
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, r=record: r(o)))
    try:
        run_dummy_input(model, spec.shape, "the model")
    finally:
        for handle in handles:
            handle.remove()
    taps = []
    for layer, unit in parsed:
        where = f"the {'input' if tap_input else 'output'} of {layer}"
        if layer not in seen:
            raise LayerError(
                f"{where} is not a tensor or the module never runs; tap another layer."
            )
        if calls[layer] > 1:
            raise LayerError(
                f"{layer} runs {calls[layer]} times per forward pass, so its output is ambiguous; "
                "tap a module that runs once."
            )
        shape = seen[layer]
        readings = unit_readings(model.get_submodule(layer), shape)
        if not readings:
            raise LayerError(f"{where} has shape {list(shape)}, which no unit kind reads.")
        reading = next((r for r in readings if r.unit == unit), None) if unit else readings[0]
        if reading is None:
            names = ", ".join(r.unit for r in readings)
            raise LayerError(f"{where} has shape {list(shape)}; read it as {names}, not {unit}.")
        taps.append(
            Tap(
                layer,
                reading.unit,
                tap_input,
                shape[1:],
                reading.units,
                reading.positions,
                reading is readings[0],
            )
        )
    names = [tap.name for tap in taps]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise LayerError(f"layer {sorted(duplicates)[0]} is requested twice; name each layer once.")
    return sorted(taps, key=lambda tap: order.index(tap.layer))


def analysable_layers(model: nn.Module, spec: InputSpec) -> list[str]:
    """What `--all` taps: the model's declared probe taps, else every leaf module that runs
    once per forward pass and whose output a unit kind reads."""
    declared = list(getattr(model, "probe_taps", []) or [])
    if declared:
        return declared
    leaves = {
        name for name, module in model.named_modules() if name and not list(module.children())
    }
    found = [
        info.layer
        for info in discover_layers(model, spec)
        if info.layer in leaves and info.calls == 1
    ]
    return list(dict.fromkeys(found))

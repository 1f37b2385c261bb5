"""Taps: module outputs read as units (METHODS.md §2).

A unit kind says how a tap tensor is viewed as [N, U, P] (samples, units, positions), from
its shape, its layout and the module that produced it (a HeadOutputs module knows its number
of heads). `trace_tensors` runs one forward pass of a dummy input and finds every module's
output, how often it runs and whether it is channels-last (`analysis/layers.py` lists the
unit kinds that apply to each).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_defs._blocks import HeadOutputs
from snptool.config import InputSpec
from snptool.core.architectures import DUMMY_BATCH
from snptool.core.tracing import forward_hooks, trace
from snptool.errors import LayerError


@dataclass(frozen=True)
class UnitKind:
    """How a tap tensor splits into units.

    `count_units(module, shape)` is U for a tensor of `shape` (batch included) that `module`
    outputs (or reads), or None where the kind does not apply; `view(tensor, units)` is the
    tensor as [N, U, P]. A `channels_last` kind reads [N, H, W, C] tensors: it is listed, as
    the default, only for tensors found to be channels-last, and otherwise only on request.
    """

    name: str
    description: str
    count_units: Callable[[nn.Module, tuple[int, ...]], int | None]
    view: Callable[[torch.Tensor, int], torch.Tensor]
    channels_last: bool = False


def _channel_view(x: torch.Tensor, units: int) -> torch.Tensor:
    return x.reshape(x.shape[0], units, -1)  # (N, C, H·W)


def _channel_last_view(x: torch.Tensor, units: int) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).reshape(x.shape[0], units, -1)  # (N, H, W, C) → (N, C, H·W)


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
        "channel-last",
        "channel of an NHWC tensor [N, H, W, C] (Linear MLPs of ConvNeXt, Swin): U = C, P = H·W",
        lambda module, s: s[3] if len(s) == 4 else None,
        _channel_last_view,
        channels_last=True,
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


def read_as(kind: UnitKind, module: nn.Module, shape: tuple[int, ...]) -> Reading | None:
    """A tensor of `shape` (batch included) from `module` read as `kind`, or None."""
    units = kind.count_units(module, shape)
    if not units:
        return None
    positions = kind.view(torch.empty(shape, device="meta"), units).shape[2]
    return Reading(kind.name, int(units), int(positions))


def unit_readings(
    module: nn.Module, shape: tuple[int, ...], *, channels_last: bool = False
) -> list[Reading]:
    """Every unit kind that reads a tensor of `shape` (batch included) from `module`, the
    default first: a channels-last tensor is read first by the channels-last kinds."""
    kinds = [kind for kind in UNIT_KINDS.values() if channels_last or not kind.channels_last]
    kinds.sort(key=lambda kind: not (channels_last and kind.channels_last))  # stable
    readings = [read_as(kind, module, shape) for kind in kinds]
    return [reading for reading in readings if reading is not None]


def tap_name(layer: str, unit: str, tap_input: bool = False, default_unit: bool = True) -> str:
    """How a tap is named in every file and flag: `features.10`, `features.10@input`, and
    `blocks.0.attn.heads:head` when the unit kind is not the first that applies."""
    name = layer + ("@input" if tap_input else "")
    return name if default_unit else f"{name}:{unit}"


@dataclass(frozen=True)
class TracedTensor:
    """A module's output (or input) in the dummy forward pass; `shape` includes the batch."""

    shape: tuple[int, ...]
    calls: int = 1
    channels_last: bool = False

    @property
    def folded(self) -> str | None:
        """Why its units cannot be read per image, if its first axis is not the batch (timm's
        MobileViT folds patches into it), else None."""
        if self.shape and self.shape[0] == DUMMY_BATCH:
            return None
        first = self.shape[0] if self.shape else "none"
        return (
            f"its first axis is not the batch ({DUMMY_BATCH} images gave {first}: the module "
            "folds patches or tokens into it)"
        )


@torch.no_grad()
def trace_tensors(
    model: nn.Module, spec: InputSpec, *, inputs: bool = False
) -> dict[str, TracedTensor]:
    """The output (or input) tensor of every module, by name, in the order the hooks fire.

    One forward pass of a dummy input. A 4-d tensor is channels-last ([N, H, W, C]) when it
    comes from a module that works on the last axis (see `_is_channels_last`), or from a
    module that keeps the shape of a channels-last input (activations, dropout, blocks).
    """
    traced: dict[str, TracedTensor] = {}
    nhwc: dict[int, torch.Tensor] = {}  # id → every channels-last tensor seen so far

    def is_nhwc(tensor: Any) -> bool:
        return isinstance(tensor, torch.Tensor) and nhwc.get(id(tensor)) is tensor

    def note(name: str, tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor):
            calls = traced[name].calls + 1 if name in traced else 1
            traced[name] = TracedTensor(tuple(tensor.shape), calls, is_nhwc(tensor))

    def after(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and _is_channels_last(
                module, args, output, is_nhwc
            ):
                nhwc[id(output)] = output
            if not inputs:
                note(name, output)

        return hook

    def before(name: str):
        return lambda module, args: note(name, args[0] if args else None)

    names = [name for name, _ in model.named_modules() if name]
    inputs_of = [(name, before(name)) for name in names] if inputs else []
    trace(model, spec.shape, before=inputs_of, after=[(name, after(name)) for name in names])
    return traced


def _is_channels_last(
    module: nn.Module, args: Any, output: torch.Tensor, is_nhwc: Callable[[Any], bool]
) -> bool:
    """Whether a module's output is [N, H, W, C]: a Linear's 4-d output, torchvision's
    Permute to NHWC, a LayerNorm over the last axis, or a shape-keeping module (activation,
    dropout, block) of a channels-last input; a container passes its last child's on."""
    if output.ndim != 4:
        return False
    if type(module).__name__ == "Permute" and hasattr(module, "dims"):  # torchvision.ops
        return list(module.dims) == [0, 2, 3, 1]
    if is_nhwc(output) or isinstance(module, nn.Linear):
        return True
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if x is None or x.shape != output.shape:
        return False
    return is_nhwc(x) or (isinstance(module, nn.LayerNorm) and _normalises_last_axis(module, x))


def _normalises_last_axis(norm: nn.LayerNorm, x: torch.Tensor) -> bool:
    """Whether `norm` normalises the last axis of `x`, not the channels of an NCHW tensor
    (timm's and torchvision's LayerNorm2d subclass nn.LayerNorm and permute inside)."""
    if tuple(norm.normalized_shape) != (x.shape[-1],):
        return False
    generator = torch.Generator(device=x.device).manual_seed(0)
    sample = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    # the dummy input is zeros, so the module runs again on random values, without its hooks
    expected = F.layer_norm(sample, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return torch.allclose(type(norm).forward(norm, sample), expected, rtol=1e-3, atol=1e-4)


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
        before = [(t.layer, self._hook(t)) for t in self.taps if t.tap_input]
        after = [(t.layer, self._hook(t)) for t in self.taps if not t.tap_input]
        logits = None
        try:
            with forward_hooks(self.model, before=before, after=after):
                logits = self.model(x)
        except _StopForward:
            pass
        return self._outputs, logits

    def _hook(self, tap: Tap) -> Callable:
        """The hook that stores (or hands to `consume`) the tap's view of its tensor."""

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
            return lambda module, args: store(args[0])
        return lambda module, args, output: store(output)


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
    traced = trace_tensors(model, spec, inputs=tap_input)
    order = list(traced)
    taps = [_tap_of(model, layer, unit, traced.get(layer), tap_input) for layer, unit in parsed]
    names = [tap.name for tap in taps]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise LayerError(f"layer {sorted(duplicates)[0]} is requested twice; name each layer once.")
    return sorted(taps, key=lambda tap: order.index(tap.layer))


def _tap_of(
    model: nn.Module, layer: str, unit: str | None, traced: TracedTensor | None, tap_input: bool
) -> Tap:
    """The tap of `layer` read as `unit` (None: its default kind), or a LayerError."""
    where = f"the {'input' if tap_input else 'output'} of {layer}"
    if traced is None:
        raise LayerError(f"{where} is not a tensor or the module never runs; tap another layer.")
    if traced.calls > 1:
        raise LayerError(
            f"{layer} runs {traced.calls} times per forward pass, so its output is ambiguous; "
            "tap a module that runs once."
        )
    if traced.folded:
        raise LayerError(
            f"{where} has shape {list(traced.shape)} and cannot be probed: {traced.folded}; "
            "tap the block around it (see `snptool layers`)."
        )
    module, shape = model.get_submodule(layer), traced.shape
    readings = unit_readings(module, shape, channels_last=traced.channels_last)
    if not readings:
        raise LayerError(f"{where} has shape {list(shape)}, which no unit kind reads.")
    reading = readings[0]
    if unit is not None:  # a kind not listed for this layout may still read it on request
        listed = next((r for r in readings if r.unit == unit), None)
        reading = listed or read_as(UNIT_KINDS[unit], module, shape)
    if reading is None:
        names = ", ".join(r.unit for r in readings)
        raise LayerError(f"{where} has shape {list(shape)}; read it as {names}, not {unit}.")
    default = reading == readings[0]
    return Tap(layer, reading.unit, tap_input, shape[1:], reading.units, reading.positions, default)

"""Which weight layer reads which analysed layer: the wiring that pruning and compaction share.

A `Connection` is a Conv2d / Linear whose input units are one tapped layer's units and whose
output units are the next tapped layer's (or the output labels). Layers are connected only when
the consumer reads the tap through per-channel modules alone, checked on values, so a residual
addition between them is detected rather than assumed away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from snptool.architectures import run_dummy_input
from snptool.checkpoint import Checkpoint
from snptool.errors import LayerError
from snptool.taps import resolve_taps

WEIGHT_TYPES = (nn.Conv2d, nn.Linear)
# Modules that act channel by channel: units pass through them unmixed.
PER_CHANNEL = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
)


@dataclass(frozen=True)
class Connection:
    """A weight layer whose input units are one analysed layer's units."""

    module: str  # the Conv2d / Linear
    source: str  # tap whose units are the inputs
    target: str | None  # tap whose units are the outputs; None: the output labels
    inputs_per_unit: int  # 1 for conv / node inputs, H·W for a Linear after a flattened conv


def execution_order(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    """Names of the leaf modules in the order one forward pass runs them."""
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, a, o, name=name: order.append(name))
        for name, module in model.named_modules()
        if name and not list(module.children())
    ]
    try:
        run_dummy_input(model, shape, "the model")
    finally:
        for handle in handles:
            handle.remove()
    return order


@torch.no_grad()
def reads_directly(model: nn.Module, shape: tuple[int, ...], start: str, consumer: str) -> bool:
    """Does `consumer` read the output of `start` through per-channel modules only?

    Checked on values: one forward pass of a seeded random input records `start`'s output
    and `consumer`'s input; replaying the leaf modules run in between must reproduce it. A
    residual addition or any other op outside modules makes them differ.
    """
    seen: dict[str, torch.Tensor] = {}
    between: list[str] = []

    def record_start(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        seen.setdefault("start", output.detach().clone())

    def record_consumer(module: nn.Module, args: Any) -> None:
        seen.setdefault("consumer", args[0].detach().clone())

    def record_leaf(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if "start" in seen and "consumer" not in seen:
                between.append(name)

        return hook

    handles = [
        model.get_submodule(start).register_forward_hook(record_start),
        model.get_submodule(consumer).register_forward_pre_hook(record_consumer),
    ]
    handles += [
        module.register_forward_hook(record_leaf(name))
        for name, module in model.named_modules()
        if name and not list(module.children()) and name != start
    ]
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        model(torch.randn(2, *shape, generator=generator).to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if "start" not in seen or "consumer" not in seen:
        return False
    x = seen["start"]
    for name in between:
        module = model.get_submodule(name)
        if not isinstance(module, PER_CHANNEL):
            return False
        x = module(x)
    received = seen["consumer"]
    return x.numel() == received.numel() and torch.allclose(
        x.reshape(received.shape), received, atol=1e-6
    )


def connections(model: nn.Module, checkpoint: Checkpoint, layers: list[str]) -> list[Connection]:
    """The weight layers between consecutive listed taps, and the output layer after the last."""
    spec = checkpoint.input_spec
    taps = resolve_taps(model, layers, spec)
    if any(tap.tap_input or not tap.default_unit for tap in taps):
        raise LayerError(
            "this method prunes module outputs read with their default unit kind; "
            "remove LAYER:head taps with --method heads."
        )
    order = execution_order(model, spec.shape)
    weights = [
        i for i, name in enumerate(order) if isinstance(model.get_submodule(name), WEIGHT_TYPES)
    ]

    def position(layer: str) -> int:
        names = [n for n in order if n == layer or n.startswith(layer + ".")]
        if not names:
            raise LayerError(f"layer {layer} runs no leaf module; tap another layer.")
        return max(i for i, n in enumerate(order) if n in names)

    def next_weight_after(index: int) -> int | None:
        return next((i for i in weights if i > index), None)

    classes = checkpoint.num_classes
    result = []
    for source, target in zip(taps, [*taps[1:], None], strict=True):
        consumer = next_weight_after(position(source.layer))
        if consumer is None:
            break
        name = order[consumer]
        direct = reads_directly(model, spec.shape, source.layer, name)
        if target is not None and not direct:
            raise LayerError(
                f"{name} does not read {source.layer} directly (a residual addition or another "
                "op lies between); list layers that feed the next one, e.g. inside a block."
            )
        if target is None and not direct:
            break
        if target is not None:
            producer = max((i for i in weights if i <= position(target.layer)), default=None)
            if producer != consumer:
                raise LayerError(
                    f"layers {source.layer} and {target.layer} are not consecutive ({name} reads "
                    f"{source.layer}); list every analysed layer in between."
                )
        elif consumer != weights[-1] or output_units(model.get_submodule(name)) != classes:
            break  # the last listed layer does not feed the output layer directly
        module = model.get_submodule(name)
        inputs = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
        if inputs % source.units:
            raise LayerError(
                f"{name} reads {inputs} inputs, which do not split into the {source.units} units "
                f"of {source.layer}; prune layers that feed each other directly."
            )
        per_unit = inputs // source.units
        if isinstance(module, nn.Conv2d) and (per_unit != 1 or module.groups != 1):
            raise LayerError(f"{name} does not read the units of {source.layer} one channel each.")
        result.append(Connection(name, source.name, target.name if target else None, per_unit))
    return result


def output_units(module: nn.Module) -> int:
    """Output channels of a Conv2d, output features of a Linear."""
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

"""Which weight layer reads which analysed layer: the wiring that pruning and compaction share.

A `Connection` is a Conv2d / Linear whose input units are one tapped layer's units and whose
output units are the next tapped layer's (or the output labels). Layers are connected only when
the consumer reads the tap through per-channel modules alone, and the next tap is that weight
layer's output through per-channel modules alone, both checked on values, so a residual addition
between them is detected rather than assumed away.

Inverted-residual (MBConv) blocks, as in torchvision's EfficientNet, compute
project(SE(depthwise(expand(x)))), plus x when the shapes match. Their pointwise (1×1) convs are
connections: the expand conv from the block input to `<block>.block.0` (the hidden channels
after expand + BN + SiLU), and the projection conv from the SE output `<block>.block.2` to
`<block>.block.3` (the projection + BN, before the residual addition). The depthwise conv (a
channel reads only itself), the squeeze-excitation's own convs and a residual sum as target are
refused. `mbconv_hidden` names the modules that carry one hidden channel through a block, so
pruning and compaction can cut it out everywhere at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from snptool.core.checkpoint import Checkpoint
from snptool.core.taps import resolve_taps
from snptool.core.tracing import forward_hooks, leaf_names, trace
from snptool.errors import LayerError

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
    trace(
        model, shape, after=[(n, lambda m, a, o, n=n: order.append(n)) for n in leaf_names(model)]
    )
    return order


@torch.no_grad()
def _replays(
    model: nn.Module, shape: tuple[int, ...], start: str, end: str, end_input: bool
) -> bool:
    """Does replaying the leaf modules run between `start`'s output and `end`'s input (or output,
    `end_input=False`) on `start`'s output reproduce that tensor, through per-channel modules?"""
    seen: dict[str, torch.Tensor] = {}
    between: list[str] = []

    def record_start(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        seen.setdefault("start", output.detach().clone())

    def record_end(module: nn.Module, args: Any, output: Any = None) -> None:
        value = args[0] if end_input else output
        seen.setdefault("end", value.detach().clone())

    def record_leaf(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if "start" in seen and "end" not in seen:
                between.append(name)

        return hook

    after = [(start, record_start)]
    after += [(name, record_leaf(name)) for name in leaf_names(model) if name != start]
    if not end_input:  # after the leaf hooks: a leaf `end` records itself as run in between
        after.append((end, record_end))
    before = [(end, record_end)] if end_input else []
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with forward_hooks(model, before=before, after=after):
            model(torch.randn(2, *shape, generator=generator).to(device))
    finally:
        model.train(was_training)
    if "start" not in seen or "end" not in seen:
        return False
    x = seen["start"]
    for name in between:
        module = model.get_submodule(name)
        if not isinstance(module, PER_CHANNEL):
            return False
        x = module(x)
    received = seen["end"]
    return x.numel() == received.numel() and torch.allclose(
        x.reshape(received.shape), received, atol=1e-6
    )


def reads_directly(model: nn.Module, shape: tuple[int, ...], start: str, consumer: str) -> bool:
    """Does `consumer` read the output of `start` through per-channel modules only?

    Checked on values: one forward pass of a seeded random input records `start`'s output
    and `consumer`'s input; replaying the leaf modules run in between must reproduce it. A
    residual addition or any other op outside modules makes them differ.
    """
    return _replays(model, shape, start, consumer, end_input=True)


def produces_directly(model: nn.Module, shape: tuple[int, ...], producer: str, tap: str) -> bool:
    """Is the output of the layer `tap` the output of `producer` through per-channel modules
    only (not, e.g., a residual sum of it and a block's input)? Checked on values."""
    return _replays(model, shape, producer, tap, end_input=False)


@torch.no_grad()
def only_reader(model: nn.Module, shape: tuple[int, ...], producer: str, consumer: str) -> bool:
    """Is `consumer` the only reader of `producer`'s output? Checked on values: perturbing the
    producer's output while the consumer is fed its unperturbed input must leave every module
    output from the consumer on unchanged (a residual addition that also reads it changes the
    output of its block)."""
    generator = torch.Generator().manual_seed(0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(2, *shape, generator=generator).to(device)

    def run(perturbed: bool, received: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        started: list[bool] = []

        def start(module: nn.Module, args: Any) -> tuple | None:
            started.append(True)
            if not received:
                received.append(args[0].detach().clone())
            return (received[0].clone(), *args[1:]) if perturbed else None

        def perturb(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            return output + 1.0 + torch.randn(output.shape, generator=generator).to(output)

        def record(name: str):
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if started and isinstance(output, torch.Tensor):
                    outputs.setdefault(name, output.detach().clone())

            return hook

        after = [(producer, perturb)] if perturbed else []
        after += [(n, record(n)) for n, _ in model.named_modules()]
        with forward_hooks(model, before=[(consumer, start)], after=after):
            outputs[""] = model(x)
        return outputs

    was_training = model.training
    model.eval()
    try:
        received: list[torch.Tensor] = []
        expected = run(False, received)
        changed = run(True, received)
    finally:
        model.train(was_training)
    return expected.keys() == changed.keys() and all(
        torch.allclose(changed[name], value, rtol=1e-5, atol=1e-6)
        for name, value in expected.items()
    )


@dataclass(frozen=True)
class MBConvHidden:
    """The modules of an inverted-residual block that carry its hidden channels one to one."""

    expand: str | None  # the expand 1×1 conv (None: expand ratio 1, the block input is hidden)
    expand_norm: str | None
    depthwise: str
    depthwise_norm: str | None
    reduce: str  # the SE's squeeze conv (hidden → few): reads every hidden channel's mean
    excite: str  # the SE's excitation conv (few → hidden): gates each hidden channel
    project: str  # the projection 1×1 conv (hidden → block output)


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _conv_and_norm(model: nn.Module, name: str) -> tuple[str, str | None] | None:
    """A conv + norm (+ activation) Sequential such as torchvision's Conv2dNormActivation."""
    module = model.get_submodule(name)
    if isinstance(module, nn.Conv2d):
        return name, None
    if not isinstance(module, nn.Sequential) or not isinstance(module[0], nn.Conv2d):
        return None
    norm = len(module) > 1 and isinstance(module[1], nn.modules.batchnorm._BatchNorm)
    return f"{name}.0", (f"{name}.1" if norm else None)


def mbconv_hidden(model: nn.Module, project: str) -> MBConvHidden | None:
    """The hidden-channel modules of the MBConv whose projection conv is `project`, or None
    when `project` is not the 1×1 conv after a depthwise conv and a squeeze-excitation."""
    parent = project.rpartition(".")[0]
    block_name = parent.rpartition(".")[0]
    if not block_name:
        return None
    block = model.get_submodule(block_name)
    if not isinstance(block, nn.Sequential) or len(block) < 3:
        return None
    names = [f"{block_name}.{child}" for child, _ in block.named_children()]
    last = _conv_and_norm(model, parent)
    se = model.get_submodule(names[-2])
    if names[-1] != parent or last is None or last[0] != project:
        return None
    inner = [_conv_and_norm(model, name) for name in names[:-2]]  # [expand,] depthwise
    if not isinstance(se, SqueezeExcitation) or len(inner) > 2 or None in inner:
        return None
    depthwise, depthwise_norm = inner[-1]
    if not is_depthwise(model.get_submodule(depthwise)):
        return None
    expand, expand_norm = inner[0] if len(inner) == 2 else (None, None)
    fc1, fc2 = f"{names[-2]}.fc1", f"{names[-2]}.fc2"
    return MBConvHidden(expand, expand_norm, depthwise, depthwise_norm, fc1, fc2, project)


def _inside_squeeze_excitation(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    return bool(parent) and isinstance(model.get_submodule(parent), SqueezeExcitation)


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
        _refuse_other_weight_layers(model, order, position(source.layer), consumer, source.layer)
        if target is not None:
            _refuse_inside_mbconv(model, name, source.layer)
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
            if not produces_directly(model, spec.shape, name, target.layer):
                raise LayerError(
                    f"{target.layer} is not the output of {name} alone (e.g. a residual addition "
                    "adds a block's input to it), so its channels cannot lose connections "
                    f"independently; list the layer right after {name} (its norm) as the target."
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


NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _refuse_other_weight_layers(
    model: nn.Module, order: list[str], start: int, consumer: int, source: str
) -> None:
    """A layer with weights of its own kind (not Conv2d / Linear, e.g. Tree-3's tree layer) that
    runs between a tap and the next Conv2d / Linear reads the tap: refused by name."""
    for name in order[start + 1 : consumer]:
        module = model.get_submodule(name)
        if isinstance(module, NORM_TYPES) or not any(True for _ in module.parameters(False)):
            continue
        raise LayerError(
            f"{name} ({type(module).__name__}) reads {source}, and AFCC prunes only Conv2d and "
            f"Linear connections; list layers whose next weight layer is a Conv2d or Linear."
        )


def _refuse_inside_mbconv(model: nn.Module, name: str, source: str) -> None:
    """The weight layers of an inverted-residual block that AFCC cannot prune, refused."""
    module = model.get_submodule(name)
    if is_depthwise(module):
        raise LayerError(
            f"{name}, which reads {source}, is a depthwise conv (each channel reads only itself), "
            "so it has no connections between units to prune; list the layers around the "
            "pointwise convs instead (block input → <block>.block.0, <block>.block.2 → "
            "<block>.block.3)."
        )
    if _inside_squeeze_excitation(model, name):
        se = name.rpartition(".")[0]
        raise LayerError(
            f"{name}, which reads {source}, belongs to the squeeze-excitation {se}, which gates "
            f"every channel by the means of all; list the SE output {se} as the source of the "
            "projection conv instead."
        )


def output_units(module: nn.Module) -> int:
    """Output channels of a Conv2d, output features of a Linear."""
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

"""Channel maps: parameter-free modules whose output has another number of channels than their
input (the option-A shortcut of CIFAR ResNets: subsample, then zero-pad new channels), made
prunable by Torch-Pruning.

Torch-Pruning treats an operation it does not know as element-wise, which ties the input's
channels one to one to the output's; for a zero-padding shortcut that couples one stage's stream
to the next stage's, wrongly. `wrap_channel_maps` puts every such module (the outermost, found by
running an example) inside a `ChannelMap`, which Torch-Pruning prunes like a convolution: its
input and its output channels belong to separate groups. A ChannelMap remembers which of the
wrapped module's input and output channels are kept; its forward puts the kept inputs back at
their places (zeros where removed), runs the wrapped module at its own width and selects the kept
outputs. The pruned model thus computes what the dense model computes with the removed channels
zeroed. The kept lists are recorded in the checkpoint (`arch.channel_maps`), and
`restore_channel_maps` wraps the rebuilt model the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from snptool.core.tracing import forward_hooks


class ChannelMap(nn.Module):
    """A parameter-free channel-changing module with some input / output channels removed."""

    def __init__(
        self,
        module: nn.Module,
        in_width: int,
        out_width: int,
        kept_in: Sequence[int] | None = None,
        kept_out: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.in_width, self.out_width = in_width, out_width
        self.kept_in = list(range(in_width) if kept_in is None else kept_in)
        self.kept_out = list(range(out_width) if kept_out is None else kept_out)
        self.register_buffer("scatter", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("gather", torch.zeros(0, dtype=torch.long), persistent=False)
        self._index()

    def _index(self) -> None:
        # scatter: for every original input channel its place in cat([x, zeros]); the zero
        # channel (last) stands in for the removed ones
        place = {channel: i for i, channel in enumerate(self.kept_in)}
        device = self.scatter.device
        self.scatter = torch.tensor(
            [place.get(c, len(self.kept_in)) for c in range(self.in_width)], device=device
        )
        self.gather = torch.tensor(self.kept_out, dtype=torch.long, device=device)

    def remove(self, side: str, positions: Sequence[int]) -> None:
        """Remove the channels at `positions` of the current (kept) inputs or outputs."""
        drop = set(positions)
        kept = self.kept_in if side == "in" else self.kept_out
        kept[:] = [channel for i, channel in enumerate(kept) if i not in drop]
        self._index()

    @property
    def changed(self) -> bool:
        return len(self.kept_in) < self.in_width or len(self.kept_out) < self.out_width

    def record(self) -> dict[str, Any]:
        return {
            "in_width": self.in_width,
            "out_width": self.out_width,
            "kept_in": list(self.kept_in),
            "kept_out": list(self.kept_out),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.kept_in) < self.in_width:
            x = torch.cat([x, torch.zeros_like(x[:, :1])], 1).index_select(1, self.scatter)
        y = self.module(x)
        if len(self.kept_out) < self.out_width:
            y = y.index_select(1, self.gather)
        return y


class ChannelMapPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's handler of a ChannelMap: inputs and outputs pruned independently."""

    TARGET_MODULES = (ChannelMap,)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.remove("out", idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        layer.remove("in", idxs)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return len(layer.kept_out)

    def get_in_channels(self, layer: nn.Module) -> int:
        return len(layer.kept_in)


CUSTOMIZED_PRUNERS = {ChannelMap: ChannelMapPruner()}


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def channel_changing_modules(model: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple]:
    """name → (input channels, output channels) of the outermost parameter-free modules that
    are called once on one feature map (N, C, H, W) and return one with another C."""
    calls: dict[str, list[tuple[int, int] | None]] = {}

    def hook(name):
        def record(module, args, output):
            flat = [a for a in args if isinstance(a, torch.Tensor)]
            maps = len(args) == len(flat) == 1 and isinstance(output, torch.Tensor)
            maps = maps and flat[0].dim() == output.dim() == 4
            calls.setdefault(name, []).append((flat[0].shape[1], output.shape[1]) if maps else None)

        return record

    inside_maps = {
        f"{name}.{sub}"
        for name, module in model.named_modules()
        if isinstance(module, ChannelMap)
        for sub, _ in module.named_modules()
    }
    watched = [
        name
        for name, module in model.named_modules()
        if name
        and name not in inside_maps
        and not isinstance(module, ChannelMap)
        and not _has_parameters(module)
    ]
    training = model.training
    try:
        model.eval()
        with torch.no_grad(), forward_hooks(model, after=[(n, hook(n)) for n in watched]):
            model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    finally:
        model.train(training)
    found = {
        name: seen[0]
        for name, seen in calls.items()
        if len(seen) == 1 and seen[0] is not None and seen[0][0] != seen[0][1]
    }
    return {
        name: widths
        for name, widths in found.items()
        if not any(name.startswith(other + ".") for other in found)
    }


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def wrap_channel_maps(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    """Put every parameter-free channel-changing module inside a ChannelMap, in place; return
    their names."""
    found = channel_changing_modules(model, shape)
    for name, (inputs, outputs) in found.items():
        _replace(model, name, ChannelMap(model.get_submodule(name), inputs, outputs))
    return sorted(found)


def unwrap_unchanged(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Take the ChannelMaps that kept every channel out again; return the others' records
    (`arch.channel_maps`)."""
    records = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, ChannelMap):
            if module.changed:
                records[name] = module.record()
            else:
                _replace(model, name, module.module)
    return records


def restore_channel_maps(model: nn.Module, records: dict[str, dict[str, Any]]) -> None:
    """Wrap the named modules of a rebuilt model as their checkpoint recorded."""
    for name, record in records.items():
        _replace(model, name, ChannelMap(model.get_submodule(name), **record))

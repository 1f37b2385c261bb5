"""Masks → a smaller dense model with the same outputs (METHODS.md §10).

Zeroed weights give no speed-up in dense kernels, so units whose connections all vanished are
cut out of the network:
- a unit with no outgoing connection is removed (its producer's output channel, the
  per-channel modules after it, and the consumer's input slice);
- a unit with no incoming connection outputs a constant; it is removed and that constant's
  contribution is folded into the consumer's bias when that is exact (a Linear consumer, an
  unpadded conv, or a constant of 0); otherwise it stays.
The surgery replaces Conv2d / Linear / BatchNorm modules in place, so it works on any
architecture whose pruned units sit between a producer and a consumer through per-channel
modules only (BatchNorm, activations, pooling, dropout) and whose producer's output nothing else
reads (a residual addition that also reads it keeps the channels); it is rebuilt from the
checkpoint alone (architecture, weights, masks and the pruning record).

Inverted-residual (MBConv) blocks: a hidden channel with neither a projection connection nor an
SE squeeze input left is removed from the expand conv and its BatchNorm, the depthwise conv and
its BatchNorm, the SE squeeze conv's input, the SE excitation conv's output and the projection
conv's input. The channels of the block's output (the projection's outputs) stay when a residual
addition reads them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from snptool.core.checkpoint import Checkpoint, masks_of
from snptool.core.tracing import trace
from snptool.errors import LayerError
from snptool.pruning.connections import (
    PER_CHANNEL,
    WEIGHT_TYPES,
    Connection,
    MBConvHidden,
    execution_order,
    is_depthwise,
    mbconv_hidden,
    only_reader,
    output_units,
    reads_directly,
)


@dataclass
class CompactReport:
    """What the compaction removed, by tap."""

    removed: dict[str, int] = field(default_factory=dict)
    folded: dict[str, int] = field(default_factory=dict)
    kept_constant: dict[str, int] = field(default_factory=dict)
    grouped: dict[str, int] = field(default_factory=dict)  # module → groups of its grouped conv
    heads: dict[str, int] = field(default_factory=dict)  # head tap → heads removed

    def to_json(self) -> dict:
        return dict(vars(self))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _unit_columns(mask: torch.Tensor, units: int, per_unit: int) -> torch.Tensor:
    """[out, in] → per input unit: does any connection remain?"""
    flat = mask.reshape(mask.shape[0], units, per_unit, -1)
    return flat.any(dim=(0, 2, 3))


@torch.no_grad()
def _constant_after(
    modules: list[nn.Module], value: torch.Tensor, shape: tuple[int, ...], channels_last: bool
) -> torch.Tensor:
    """Push a per-channel constant through the per-channel modules; return per-channel values
    [channels, positions]. Channels are dim 1 (conv maps) or last (a Linear's token outputs)."""
    if channels_last:
        x = value.expand(1, *shape).clone()
    else:
        x = value.reshape(1, -1, *([1] * (len(shape) - 1))).expand(1, *shape).clone()
    for module in modules:
        x = module(x)
    if channels_last:
        return x.reshape(-1, x.shape[-1]).T
    return x.reshape(1, x.shape[1], -1)[0]


@torch.no_grad()
def compact_model(checkpoint: Checkpoint) -> tuple[nn.Module, CompactReport]:
    """The checkpoint's masked model with dead units cut out; outputs equal up to float error."""
    model = copy.deepcopy(checkpoint.model).eval()
    masks = masks_of(checkpoint)
    pruning = checkpoint.metadata.get("pruning") or {}
    chain = [Connection(**c) for c in pruning.get("connections") or []]
    report = CompactReport()
    for removal in pruning.get("heads") or []:
        if removal["kind"] == "head":
            report.heads[removal["layer"]] = remove_heads(model, removal["module"], removal["kept"])
    if not chain:
        return (model if report.heads else checkpoint.model), report
    if pruning.get("groups"):
        return group_model(checkpoint, model, chain, masks)
    spec = checkpoint.input_spec
    order = execution_order(model, spec.shape)
    shapes = _output_shapes(model, spec.shape)
    weights = [i for i, n in enumerate(order) if isinstance(model.get_submodule(n), WEIGHT_TYPES)]
    index = {n: i for i, n in enumerate(order)}
    keep_out: dict[str, torch.Tensor] = {}
    keep_in: dict[str, tuple[torch.Tensor, int]] = {}
    bias_add: dict[str, torch.Tensor] = {}
    for connection in chain:
        hidden = mbconv_hidden(model, connection.module)
        if hidden is not None:
            keep = _mbconv_keep(hidden, masks)
            if keep is not None:
                _keep_hidden(hidden, keep, keep_out, keep_in)
                report.removed[connection.source] = int((~keep).sum())
            continue
        consumer = model.get_submodule(connection.module)
        producer_index = max(i for i in weights if i < index[connection.module])
        producer_name = order[producer_index]
        between = [
            model.get_submodule(n) for n in order[producer_index + 1 : index[connection.module]]
        ]
        if not reads_directly(
            model, spec.shape, producer_name, connection.module
        ) or not only_reader(model, spec.shape, producer_name, connection.module):
            continue  # e.g. a residual addition couples the producer's channels: leave them
        units = output_units(model.get_submodule(producer_name))
        mask = masks[connection.module + ".weight"]
        has_out = _unit_columns(mask, units, connection.inputs_per_unit)
        producer_mask = masks.get(producer_name + ".weight")
        has_in = torch.ones(units, dtype=torch.bool)
        if producer_mask is not None:
            has_in = producer_mask.reshape(units, -1).any(dim=1)
        producer = model.get_submodule(producer_name)
        bias = producer.bias if producer.bias is not None else torch.zeros(units)
        channels_last = isinstance(producer, nn.Linear)
        constant = _constant_after(between, bias, shapes[producer_name], channels_last)
        removable = ~has_out
        foldable = has_out & ~has_in
        exact_zero = foldable & (constant.abs().amax(dim=1) == 0)
        linear_like = isinstance(consumer, nn.Linear) or (
            isinstance(consumer, nn.Conv2d) and all(p == 0 for p in _pairs(consumer.padding))
        )
        fold = foldable & ~exact_zero if linear_like else torch.zeros_like(foldable)
        if fold.any():
            bias_add[connection.module] = bias_add.get(connection.module, 0) + _folded_bias(
                consumer, mask, constant, fold, connection.inputs_per_unit
            )
        keep = ~(removable | exact_zero | fold)
        keep_out[producer_name] = (
            keep_out.get(producer_name, torch.ones(units, dtype=torch.bool)) & keep
        )
        keep_in[connection.module] = (keep, connection.inputs_per_unit)
        for module_name in order[producer_index + 1 : index[connection.module]]:
            if isinstance(model.get_submodule(module_name), nn.modules.batchnorm._BatchNorm):
                keep_out[module_name] = keep
        tap = connection.source
        report.removed[tap] = int((~keep).sum())
        report.folded[tap] = int(fold.sum())
        report.kept_constant[tap] = int((foldable & keep).sum())
    for name in {*keep_out, *keep_in}:
        _shrink(model, name, keep_out.get(name), keep_in.get(name), bias_add.get(name))
    return model, report


def _mbconv_keep(hidden: MBConvHidden, masks: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The hidden channels of an MBConv to keep: those with a projection connection or an SE
    squeeze input left; None when the block has no expand conv (the block input is hidden)."""
    if hidden.expand is None:
        return None
    keep = masks[hidden.project + ".weight"].any(dim=(0, 2, 3))
    squeeze = masks.get(hidden.reduce + ".weight")
    return keep | (squeeze.any(dim=(0, 2, 3)) if squeeze is not None else True)


def _keep_hidden(hidden: MBConvHidden, keep: torch.Tensor, keep_out: dict, keep_in: dict) -> None:
    """Record the rows and columns that keep only the `keep` hidden channels of the block."""
    for name in (hidden.expand, hidden.depthwise, hidden.excite):
        keep_out[name] = keep_out.get(name, torch.ones_like(keep)) & keep
    for name in (hidden.expand_norm, hidden.depthwise_norm):
        if name is not None:
            keep_out[name] = keep
    for name in (hidden.reduce, hidden.project):
        keep_in[name] = (keep, 1)


def remove_heads(model: nn.Module, name: str, kept: list[int]) -> int:
    """Rebuild the attention `name` with only the heads `kept`; return how many were removed.

    Works on attentions that declare `removable_heads`: they size themselves from `num_heads`
    and `head_dim` with a fused `qkv` Linear ([q | k | v] × heads rows), a `heads` HeadOutputs
    and a `proj` Linear, as model_defs' CCT attention does; others keep their masked heads (no
    speed-up, same output).
    """
    attention = model.get_submodule(name)
    removed = attention.num_heads - len(kept)
    if not removed or not getattr(attention, "removable_heads", False):
        return 0
    width = attention.head_dim
    heads = torch.as_tensor(kept)
    columns = (heads[:, None] * width + torch.arange(width)).reshape(-1)  # [h'·d]
    total = attention.num_heads * width
    rows = torch.cat([columns + part * total for part in range(3)])
    _shrink(model, name + ".qkv", rows, None, None, order_only=True)
    _shrink(model, name + ".proj", None, (columns, 1), None, order_only=True)
    attention.num_heads = len(kept)
    attention.heads.num_heads = len(kept)
    return removed


def _pairs(value) -> tuple:
    return value if isinstance(value, tuple) else (value, value)


def _output_shapes(model: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of every Conv2d / Linear."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape[1:])

        return hook

    weights = [name for name, module in model.named_modules() if isinstance(module, WEIGHT_TYPES)]
    trace(model, shape, after=[(name, record(name)) for name in weights])
    return shapes


def _folded_bias(
    consumer: nn.Module, mask, constant: torch.Tensor, fold: torch.Tensor, per_unit: int
) -> torch.Tensor:
    """Σ over folded units of the consumer's (masked) weights × the unit's constant output."""
    weight = consumer.weight * mask.to(consumer.weight.dtype)
    if isinstance(consumer, nn.Linear):
        columns = weight.reshape(weight.shape[0], len(fold), per_unit)  # [out, units, positions]
        return torch.einsum("oup,up->o", columns[:, fold], constant[fold][:, :per_unit])
    return torch.einsum("oukl,u->o", weight[:, fold], constant[fold][:, 0])


def _shrink(model, name, keep_out, keep_in, bias_add, order_only: bool = False) -> None:
    """Rebuild a module keeping (and ordering) output rows `keep_out` and input units
    `keep_in` = (selection, inputs per unit); selections are boolean masks, or index
    permutations when `order_only`."""
    module = model.get_submodule(name)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        size = len(keep_out) if order_only else int(keep_out.sum())
        new = type(module)(size, eps=module.eps, momentum=module.momentum, affine=module.affine)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(module, attr)
            if source is not None:
                getattr(new, attr).data.copy_(source.data[keep_out])
        _replace(model, name, new.eval())
        return
    weight = module.weight.data
    bias = module.bias.data.clone() if module.bias is not None else None
    if bias_add is not None:
        bias = (bias if bias is not None else torch.zeros(weight.shape[0])) + bias_add
    if keep_in is not None:
        keep, per_unit = keep_in
        if order_only:  # unit permutation → permutation of its per-unit input blocks
            columns = (keep[:, None] * per_unit + torch.arange(per_unit)).reshape(-1)
        else:
            columns = keep.repeat_interleave(per_unit)
        weight = weight[:, columns]
    if keep_out is not None:
        weight = weight[keep_out]
        bias = bias[keep_out] if bias is not None else None
    if isinstance(module, nn.Conv2d):
        groups = weight.shape[0] if is_depthwise(module) else 1  # a depthwise conv keeps its rows
        new = nn.Conv2d(
            weight.shape[1] * groups,
            weight.shape[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups,
            bias is not None,
            module.padding_mode,
        )
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias is not None)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    _replace(model, name, new.eval())


@torch.no_grad()
def group_model(
    checkpoint: Checkpoint,
    model: nn.Module,
    chain: list[Connection],
    masks: dict[str, torch.Tensor],
) -> tuple[nn.Module, CompactReport]:
    """afcc-grouped: permute every listed layer's units so each label group is contiguous, and
    turn the block-diagonal convs between listed layers into grouped convs (groups = G)."""
    grouping = checkpoint.metadata["pruning"]["groups"]
    count = grouping["count"]
    permutation = {
        tap: torch.as_tensor(np.argsort(np.asarray(units), kind="stable"))
        for tap, units in grouping["units"].items()
    }
    order = execution_order(model, checkpoint.input_spec.shape)
    weights = [i for i, n in enumerate(order) if isinstance(model.get_submodule(n), WEIGHT_TYPES)]
    index = {n: i for i, n in enumerate(order)}
    rows: dict[str, torch.Tensor] = {}
    columns: dict[str, tuple[torch.Tensor, int]] = {}
    restored: dict[str, torch.Tensor] = {}  # module → the order its output is put back in
    sources = {c.source for c in chain}
    for connection in chain:
        if connection.target is not None and connection.target not in sources:
            _permute_chain_end(model, order, connection, permutation, rows, restored)
        producer_index = max(i for i in weights if i < index[connection.module])
        between = order[producer_index + 1 : index[connection.module]]
        if not all(isinstance(model.get_submodule(n), PER_CHANNEL) for n in between):
            raise LayerError(
                f"channels are mixed between {order[producer_index]} and {connection.module}."
            )
        perm = permutation[connection.source]
        rows[order[producer_index]] = perm
        for name in between:
            if isinstance(model.get_submodule(name), nn.modules.batchnorm._BatchNorm):
                rows[name] = perm
        columns[connection.module] = (perm, connection.inputs_per_unit)
    report = CompactReport()
    for name in {*rows, *columns}:
        module = model.get_submodule(name)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            _shrink(model, name, rows[name], None, None, order_only=True)
            continue
        grouped = (
            isinstance(module, nn.Conv2d)
            and name in rows
            and name in columns
            and module.groups == 1
        )
        _shrink(model, name, rows.get(name), columns.get(name), None, order_only=True)
        if grouped:
            _to_grouped_conv(
                model, name, count, masks[name + ".weight"], rows[name], columns[name][0]
            )
            report.grouped[name] = count
    for name, inverse in restored.items():
        _replace(model, name, nn.Sequential(model.get_submodule(name), ChannelOrder(inverse)))
    return model, report


class ChannelOrder(nn.Module):
    """Reorders the channels (dim 1) by a fixed index: puts a grouped conv's label-ordered
    outputs back in the order the rest of the network reads (a residual addition)."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


def _permute_chain_end(model, order, connection, permutation, rows, restored) -> None:
    """The last connection of a chain (its target feeds no listed layer, e.g. the norm before
    a residual addition): its conv's outputs and the per-channel modules up to the target are
    ordered by label group too, so the conv can be grouped, and the target's output is put back
    in the original order (ChannelOrder) for whatever reads it."""
    module = model.get_submodule(connection.module)
    inside = [i for i, n in enumerate(order) if n == connection.target]
    inside += [i for i, n in enumerate(order) if n.startswith(connection.target + ".")]
    if not isinstance(module, nn.Conv2d) or not inside:
        return
    start, end = order.index(connection.module), max(inside)
    between = order[start + 1 : end + 1]
    if not all(isinstance(model.get_submodule(n), PER_CHANNEL) for n in between):
        return
    perm = permutation[connection.target]
    rows[connection.module] = perm
    for name in between:
        if isinstance(model.get_submodule(name), nn.modules.batchnorm._BatchNorm):
            rows[name] = perm
    restored[order[end]] = torch.argsort(perm)


def _to_grouped_conv(model, name, count, mask, rows, columns) -> None:
    """Replace a block-diagonal (after permutation) conv by Conv2d(groups=count)."""
    module = model.get_submodule(name)
    out_per, in_per = module.out_channels // count, module.in_channels // count
    permuted_mask = mask[rows][:, columns]
    blocks = []
    for group in range(count):
        out = slice(group * out_per, (group + 1) * out_per)
        inside = slice(group * in_per, (group + 1) * in_per)
        outside = torch.ones(module.in_channels, dtype=torch.bool)
        outside[inside] = False
        if permuted_mask[out][:, outside].any():
            raise LayerError(
                f"{name} is not block-diagonal by label group; prune it with afcc-grouped."
            )
        blocks.append(module.weight.data[out, inside])
    new = nn.Conv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        count,
        module.bias is not None,
        module.padding_mode,
    )
    new.weight.data.copy_(torch.cat(blocks))
    if module.bias is not None:
        new.bias.data.copy_(module.bias.data)
    _replace(model, name, new.eval())

"""`prune --method heads`: remove the attention heads and feed-forward nodes that serve no
label, or the fewest (METHODS.md §7, §10), so `export` can build a genuinely smaller graph.

A listed head tap (`<attention>.heads:head`) loses whole heads: the output projection's
columns of the head and, where the layout is known (a fused `qkv` Linear or torch's
`in_proj_weight`), the head's query, key and value rows. A listed node tap (a feed-forward
hidden layer such as `blocks.0.activation`, read as `feature` or `node` units) loses whole
nodes: the consumer Linear's columns and the producer Linear's rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model_defs._blocks import HeadOutputs
from snptool.core.checkpoint import Checkpoint
from snptool.core.matrix_file import layer_group, open_matrix_file, read_layer_clusters
from snptool.core.taps import resolve_taps
from snptool.errors import LayerError
from snptool.pruning.connections import Connection, execution_order, reads_directly


@dataclass(frozen=True)
class Removal:
    """The units one listed layer keeps."""

    layer: str  # the tap, as in the clusters file
    kind: str  # "head" or "node"
    module: str  # the attention (heads) or the consumer Linear (nodes)
    kept: list[int]
    units: int
    parameters: list[str]  # the masked parameters

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def units_to_remove(label_sets: list[set[int]], maximum: np.ndarray, fraction: float) -> np.ndarray:
    """Booleans: every unit serving no label, then the units serving the fewest labels (the
    weakest maximum first among equals) until `fraction` of the layer is removed; one unit
    always stays."""
    sizes = np.array([len(labels) for labels in label_sets])
    removed = sizes == 0
    target = math.floor(fraction * len(sizes) + 1e-9)
    for unit in np.lexsort((maximum, sizes)):
        if removed.sum() >= target:
            break
        removed[unit] = True
    if removed.all():
        removed[np.lexsort((maximum, sizes))[-1]] = False
    return removed


def read_unit_maxima(clusters_path: str | Path, layers: list[str]) -> dict[str, np.ndarray]:
    """Each listed layer's per-unit matrix maximum (from `clusters`)."""
    with open_matrix_file(clusters_path) as handle:
        return {name: read_layer_clusters(layer_group(handle, name)).maximum for name in layers}


def _next_linear(model: nn.Module, order: list[str], start: str) -> str | None:
    """The first Linear that runs after the module `start`."""
    names = [n for n in order if n == start or n.startswith(start + ".")]
    after = max(order.index(n) for n in names) if names else -1
    return next(
        (n for n in order[after + 1 :] if isinstance(model.get_submodule(n), nn.Linear)), None
    )


def _head_masks(
    model: nn.Module, spec, order: list[str], layer: str, removed: np.ndarray
) -> tuple[dict[str, torch.Tensor], str]:
    """Masks that silence the removed heads of the HeadOutputs `layer`; return them and the
    attention module's name."""
    heads = model.get_submodule(layer)
    if not isinstance(heads, HeadOutputs):
        raise LayerError(f"{layer} is not a head tap (HeadOutputs); list LAYER:head taps.")
    attention_name = layer.rpartition(".")[0]
    attention = model.get_submodule(attention_name)
    projection = _next_linear(model, order, layer)
    if projection is None or not reads_directly(model, spec.shape, layer, projection):
        raise LayerError(f"no output projection reads the heads of {layer} directly.")
    weight = model.get_submodule(projection).weight
    width = weight.shape[1] // heads.num_heads
    columns = torch.as_tensor(removed).repeat_interleave(width)
    masks = {projection + ".weight": ~columns[None, :].expand_as(weight).clone()}
    rows = torch.as_tensor(removed).repeat_interleave(width).repeat(3)  # [q | k | v] × heads
    fused = getattr(attention, "qkv", None)
    if isinstance(fused, nn.Linear) and fused.out_features == len(rows):
        masks[attention_name + ".qkv.weight"] = ~rows[:, None].expand_as(fused.weight).clone()
        if fused.bias is not None:
            masks[attention_name + ".qkv.bias"] = ~rows
    in_proj = getattr(attention, "in_proj_weight", None)
    if isinstance(in_proj, torch.Tensor) and in_proj.shape[0] == len(rows):
        masks[attention_name + ".in_proj_weight"] = ~rows[:, None].expand_as(in_proj).clone()
        if getattr(attention, "in_proj_bias", None) is not None:
            masks[attention_name + ".in_proj_bias"] = ~rows
    return masks, attention_name


def _node_masks(
    model: nn.Module, spec, order: list[str], layer: str, removed: np.ndarray
) -> tuple[dict[str, torch.Tensor], str]:
    """Masks that cut the removed nodes of the feed-forward layer `layer` out of the Linear
    that reads it and the Linear that produces it; return them and the consumer's name."""
    consumer = _next_linear(model, order, layer)
    if consumer is None or not reads_directly(model, spec.shape, layer, consumer):
        raise LayerError(f"no Linear reads the nodes of {layer} directly; tap a hidden layer.")
    weight = model.get_submodule(consumer).weight
    if weight.shape[1] != len(removed):
        raise LayerError(
            f"{consumer} reads {weight.shape[1]} inputs, not the {len(removed)} nodes of {layer}."
        )
    keep = ~torch.as_tensor(removed)
    masks = {consumer + ".weight": keep[None, :].expand_as(weight).clone()}
    linears = [
        n for n in order[: order.index(consumer)] if isinstance(model.get_submodule(n), nn.Linear)
    ]
    if linears and reads_directly(model, spec.shape, linears[-1], consumer):
        producer = model.get_submodule(linears[-1])
        if producer.out_features == len(removed):
            masks[linears[-1] + ".weight"] = keep[:, None].expand_as(producer.weight).clone()
    return masks, consumer


def removal_masks(
    model: nn.Module,
    checkpoint: Checkpoint,
    label_sets: dict[str, list[set[int]]],
    maxima: dict[str, np.ndarray],
    fraction: float,
) -> tuple[dict[str, torch.Tensor], list[Connection], list[Removal]]:
    """Masks of `prune --method heads` for every listed head or node tap; the node layers'
    connections (for compaction) and what each layer keeps."""
    spec = checkpoint.input_spec
    taps = {tap.name: tap for tap in resolve_taps(model, list(label_sets), spec)}
    order = execution_order(model, spec.shape)
    masks: dict[str, torch.Tensor] = {}
    chain, removals = [], []
    for name, sets in label_sets.items():
        tap = taps[name]
        removed = units_to_remove(sets, maxima[name], fraction)
        if tap.unit == "head":
            layer_masks, module = _head_masks(model, spec, order, tap.layer, removed)
            kind = "head"
        elif tap.unit in ("feature", "node") and not tap.tap_input:
            layer_masks, module = _node_masks(model, spec, order, tap.layer, removed)
            chain.append(Connection(module, name, module, 1))
            kind = "node"
        else:
            raise LayerError(f"--method heads removes heads and nodes, not {tap.unit} units.")
        if set(layer_masks) & set(masks):
            raise LayerError(f"{name} shares weights with another listed layer; list it once.")
        masks.update(layer_masks)
        kept = np.flatnonzero(~removed).tolist()
        removals.append(Removal(name, kind, module, kept, len(removed), sorted(layer_masks)))
    return masks, chain, removals


__all__ = ["Removal", "removal_masks", "units_to_remove", "read_unit_maxima"]

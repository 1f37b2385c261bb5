"""Connection masks of the label-guided methods (METHODS.md §8): which kernel slices between
two analysed layers, or between the last one and the output, a method keeps.

AFCC keeps the slice from input unit a to output unit b iff Λ(a) ∩ Λ(b) ≠ ∅ (Λ = the labels a
unit serves); `random` draws balanced label sets of the same sizes; `magnitude` keeps the
largest slices to AFCC's dilution; `afcc-grouped` keeps only slices inside label groups.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from snptool.errors import LayerError
from snptool.pruning.connections import Connection, mbconv_hidden


def unit_mask(sources: list[set[int]], targets: list[set[int]]) -> torch.Tensor:
    """[targets, sources] booleans: keep iff the two label sets intersect."""
    classes = 1 + max((j for s in (*sources, *targets) for j in s), default=0)
    source = torch.zeros(len(sources), classes)
    target = torch.zeros(len(targets), classes)
    for i, labels in enumerate(sources):
        source[i, list(labels)] = 1
    for i, labels in enumerate(targets):
        target[i, list(labels)] = 1
    return (target @ source.T) > 0


def output_mask(sources: list[set[int]], classes: int) -> torch.Tensor:
    """[classes, units] booleans: unit u keeps label k iff k ∈ Λ(u)."""
    mask = torch.zeros(classes, len(sources), dtype=torch.bool)
    for unit, labels in enumerate(sources):
        mask[list(labels), unit] = True
    return mask


def expand(mask: torch.Tensor, weight: torch.Tensor, inputs_per_unit: int) -> torch.Tensor:
    """A [out, in-units] mask → the weight's shape (kernel slices / flattened positions)."""
    mask = mask.repeat_interleave(inputs_per_unit, dim=1)
    return mask.reshape(*mask.shape, *([1] * (weight.ndim - 2))).expand_as(weight).clone()


def balanced_random_sets(
    sets: list[set[int]], classes: int, rng: np.random.Generator
) -> list[set[int]]:
    """Random label sets of the same sizes, each label used about equally often in the layer."""
    usage = np.zeros(classes)
    result: list[set[int]] = [set() for _ in sets]
    for unit in rng.permutation(len(sets)):
        size = len(sets[unit])
        order = np.lexsort((rng.random(classes), usage))  # least used first, random ties
        chosen = order[:size]
        usage[chosen] += 1
        result[unit] = {int(j) for j in chosen}
    return result


def afcc_masks(
    model: nn.Module, chain: list[Connection], label_sets: dict[str, list[set[int]]], classes: int
) -> dict[str, torch.Tensor]:
    """AFCC masks by weight parameter name (METHODS.md §8)."""
    masks = {}
    for connection in chain:
        weight = model.get_submodule(connection.module).weight
        sources = label_sets[connection.source]
        if connection.target is None:
            units_mask = output_mask(sources, classes)
        else:
            units_mask = unit_mask(sources, label_sets[connection.target])
        masks[connection.module + ".weight"] = expand(
            units_mask, weight, connection.inputs_per_unit
        )
    return masks


def label_groups(classes: int, groups: int) -> list[list[int]]:
    """The labels split into `groups` contiguous, near-equal groups."""
    return [part.tolist() for part in np.array_split(np.arange(classes), groups)]


def cooccurrence_groups(
    label_sets: dict[str, list[set[int]]], classes: int, groups: int, seed: int
) -> list[list[int]]:
    """Labels grouped by how often units serve them together (spectral clustering of the
    label co-occurrence over all listed layers' units), so few units straddle two groups."""
    from sklearn.cluster import SpectralClustering

    together = np.zeros((classes, classes))
    for sets in label_sets.values():
        for labels in sets:
            index = np.fromiter(labels, dtype=int)
            together[np.ix_(index, index)] += 1
    affinity = together + together.T + 1e-3  # connected even where labels never meet
    assignment = SpectralClustering(
        groups, affinity="precomputed", random_state=seed, assign_labels="discretize"
    ).fit_predict(affinity)
    result = [np.flatnonzero(assignment == g).tolist() for g in range(groups)]
    if any(not group for group in result):
        return label_groups(classes, groups)
    return sorted(result)


def assign_groups(sets: list[set[int]], groups: list[list[int]], layer: str) -> np.ndarray:
    """Each unit's group: the one holding most of its labels, every group the same size."""
    count = len(groups)
    if len(sets) % count:
        raise LayerError(
            f"{layer} has {len(sets)} units, which do not split into {count} equal groups; "
            "choose --groups that divides every listed layer's units."
        )
    capacity = np.full(count, len(sets) // count)
    score = np.array([[len(labels & set(group)) for group in groups] for labels in sets])
    assigned = np.full(len(sets), -1)
    for flat in np.lexsort((np.arange(score.size), -score.reshape(-1))):
        unit, group = divmod(int(flat), count)
        if assigned[unit] < 0 and capacity[group] > 0:
            assigned[unit] = group
            capacity[group] -= 1
    return assigned


def grouped_masks(
    model: nn.Module,
    chain: list[Connection],
    label_sets: dict[str, list[set[int]]],
    classes: int,
    groups: int,
    grouping: str = "contiguous",
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Block-diagonal masks: connections only inside a label group (our extension)."""
    labels = (
        cooccurrence_groups(label_sets, classes, groups, seed)
        if grouping == "cooccurrence"
        else label_groups(classes, groups)
    )
    taps = dict.fromkeys(t for c in chain for t in (c.source, c.target) if t is not None)
    units = {tap: assign_groups(label_sets[tap], labels, tap) for tap in taps}
    masks = {}
    for connection in chain:
        weight = model.get_submodule(connection.module).weight
        source = torch.as_tensor(units[connection.source])
        if connection.target is None:
            member = torch.zeros(classes, groups, dtype=torch.bool)
            for group, group_labels in enumerate(labels):
                member[group_labels, group] = True
            unit_mask_ = member[:, source]
        else:
            unit_mask_ = torch.as_tensor(units[connection.target])[:, None] == source[None, :]
        masks[connection.module + ".weight"] = expand(
            unit_mask_, weight, connection.inputs_per_unit
        )
    record = {
        "count": groups,
        "grouping": grouping,
        "labels": labels,
        "units": {t: u.tolist() for t, u in units.items()},
    }
    return masks, record


def magnitude_masks(
    model: nn.Module, chain: list[Connection], reference: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Remove the smallest-magnitude kernel slices (L1) to the reference masks' dilution."""
    masks = {}
    for connection in chain:
        name = connection.module + ".weight"
        weight = model.get_submodule(connection.module).weight.detach()
        out_units = weight.shape[0]
        slices = weight.reshape(
            out_units, -1, connection.inputs_per_unit * int(np.prod(weight.shape[2:]) or 1)
        )
        importance = slices.abs().sum(-1)  # [out, in-units]
        removed = int((~reference[name]).reshape(out_units, importance.shape[1], -1)[..., 0].sum())
        keep = torch.ones_like(importance, dtype=torch.bool)
        if removed:
            keep.view(-1)[importance.view(-1).argsort()[:removed]] = False
        masks[name] = expand(keep, weight, connection.inputs_per_unit)
    return masks


def squeeze_masks(
    model: nn.Module, chain: list[Connection], masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Masks of the SE squeeze convs of MBConv blocks whose projection conv is pruned: the
    columns of the hidden channels left without any projection connection (see the Decision
    above)."""
    result = {}
    for connection in chain:
        hidden = mbconv_hidden(model, connection.module)
        mask = masks.get(connection.module + ".weight")
        if hidden is None or hidden.expand is None or mask is None:
            continue
        dead = ~mask.any(dim=(0, 2, 3))
        if dead.any():
            weight = model.get_submodule(hidden.reduce).weight
            keep = torch.ones_like(weight, dtype=torch.bool)
            keep[:, dead] = False
            result[hidden.reduce + ".weight"] = keep
    return result


def masked_share(masks: dict[str, torch.Tensor], names: list[str]) -> tuple[float, int]:
    """(fraction of the named parameters' weights removed, their number of weights)."""
    total = sum(masks[name].numel() for name in names)
    kept = sum(int(masks[name].sum()) for name in names)
    return 1.0 - kept / total, total

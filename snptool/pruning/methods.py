"""The prune methods, one entry each: what a method reads and how it plans (METHODS.md §7–§9).

`run_prune` (prune.py) runs every method the same way: it reads what the entry asks for (the
units' label sets from the clusters file, training batches), calls its `plan`, applies the
plan's masks, fine-tunes and writes the checkpoint. Connection methods (afcc, andc, random,
magnitude, afcc-grouped) mask kernel slices between consecutive analysed layers; `heads` masks
whole attention heads and feed-forward nodes; the channel methods (units, magnitude-channels,
taylor, lamp) remove channels with Torch-Pruning (structured.py), ordered by one `Importance`
each (importance.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from snptool.config import PRUNE_METHODS, STRUCTURED_METHODS, PruneConfig
from snptool.core.architectures import ProbeHeadModel
from snptool.core.checkpoint import Checkpoint
from snptool.core.matrix_file import (
    check_made_from,
    layer_group,
    layer_names,
    open_matrix_file,
    read_layer_clusters,
)
from snptool.core.probe_file import ProbeFile
from snptool.errors import InputFileError, LayerError, UsageError
from snptool.pruning.connections import Connection, connections, mbconv_hidden
from snptool.pruning.importance import Batches
from snptool.pruning.masks import (
    afcc_masks,
    balanced_random_sets,
    grouped_masks,
    magnitude_masks,
    masked_share,
    squeeze_masks,
)
from snptool.pruning.structured import prune_structured
from snptool.pruning.unit_removal import read_unit_maxima, removal_masks


@dataclass(frozen=True)
class PrunedLayer:
    """One pruned module: the share of its weights removed and how many it had."""

    layer: str
    module: str
    dilution: float
    weights: int

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class PruneInputs:
    """What a method may read: the checkpoint, the analysis, a few training batches."""

    checkpoint: Checkpoint
    clusters_path: str | Path | None
    names: list[str]  # the analysed taps (default: every layer in the clusters file)
    chains: list[list[str]]  # the same taps as chains of consecutive layers
    label_sets: dict[str, list[set[int]]]  # Λ(u) of every tap's units, as the method reads them
    probes_path: str | Path | None = None
    batches: Batches | None = None  # prepared training images and labels (taylor)


@dataclass(frozen=True)
class PrunePlan:
    """What a method decided: the model to prune with its architecture record, the masks to
    apply (none where channels were removed), the connections and the per-layer report."""

    model: nn.Module
    arch: dict[str, Any]
    masks: dict[str, torch.Tensor]
    connections: list[Connection]
    layers: list[PrunedLayer]
    record: dict[str, Any] = field(default_factory=dict)  # what the pruning record adds


@dataclass(frozen=True)
class PruneMethod:
    """One row of the method table."""

    name: str
    plan: Callable[[PruneInputs, PruneConfig], PrunePlan]
    # how a tap's Λ(u) is read from its group in the clusters file (cluster unions, diagonals)
    label_sets: Callable[[Any, PruneConfig], list[set[int]]]
    needs_clusters: bool = True  # False: the clusters file is optional (it only names the taps)
    needs_batches: bool = False  # training batches score the channels (Taylor)
    keeps_classifier: bool = False  # refuses --classifier probe
    removes_channels: bool = False  # shapes change, so fine-tuning trains every module

    def check(self, config: PruneConfig, clusters_path: str | Path | None) -> None:
        """Refuse a combination of flags the method cannot use, before anything is loaded."""
        if self.needs_clusters and clusters_path is None:
            raise UsageError(
                f"--method {self.name} reads the units' label sets; give --clusters "
                "(the matrix file of `snptool clusters`)."
            )
        if self.keeps_classifier and config.connections.classifier == "probe":
            raise UsageError(
                f"--method {self.name} keeps the model's classifier; drop --classifier probe."
            )
        if config.removal.sparsity_epochs and self.name != "group-norm":
            raise UsageError(
                "--sparsity-epochs trains with Torch-Pruning's group-norm regulariser, which "
                f"serves --method group-norm only, not {self.name}; drop --sparsity-epochs."
            )
        if config.removal.target_macs is not None and not self.removes_channels:
            raise UsageError(
                f"--target-macs sizes channel removal (--method {', '.join(STRUCTURED_METHODS)}); "
                f"--method {self.name} is sized by its own rule (the label sets, --groups, "
                "--remove-fraction), so drop --target-macs."
            )


def diagonal_label_sets(group, threshold: float | None) -> list[set[int]]:
    """ANDC's label sets (METHODS.md §7): label j iff the unit's diagonal element j is strictly
    above `threshold` × the unit's maximum (a unit whose maximum is ≤ 0 serves none).

    `threshold` defaults to the one `clusters` used on this layer. The diagonal labels are
    exactly the cluster candidates, so at that threshold the sets equal the clusters' unions.
    """
    if threshold is None:
        threshold = float(group["clusters"].attrs["threshold"]) if "clusters" in group else 0.3
    matrix = group["matrix"]
    units, classes = matrix.shape[:2]
    step = max(1, (64 << 20) // (4 * classes * classes))  # about 64 MiB of matrices at a time
    sets = []
    for start in range(0, units, step):
        block = matrix[start : start + step]  # [u, C, C]
        maximum = block.reshape(len(block), -1).max(axis=1)
        diagonal = block[:, np.arange(classes), np.arange(classes)]
        marked = (diagonal > threshold * maximum[:, None]) & (maximum[:, None] > 0)
        sets += [set(np.flatnonzero(row).tolist()) for row in marked]
    return sets


def cluster_label_sets(group, config: PruneConfig) -> list[set[int]]:
    """Λ(u): the union of each unit's clusters."""
    return read_layer_clusters(group).label_sets()


def andc_label_sets(group, config: PruneConfig) -> list[set[int]]:
    """ANDC's Λ(u): the unit's marked diagonal labels."""
    return diagonal_label_sets(group, config.connections.andc_threshold)


def read_label_sets(
    clusters_path: str | Path,
    checkpoint: Checkpoint,
    layers: list[str] | None,
    config: PruneConfig,
    label_sets: Callable[[Any, PruneConfig], list[set[int]]],
) -> tuple[list[str], dict[str, list[set[int]]]]:
    """The listed layers (default: all in the file, in file order) and Λ(u) of their units,
    read by the method's `label_sets`."""
    with open_matrix_file(clusters_path) as handle:
        check_made_from(handle, checkpoint)
        names = layers or layer_names(handle)
        return names, {name: label_sets(layer_group(handle, name), config) for name in names}


def layer_chains(layers: list[str] | list[list[str]] | None) -> list[list[str]] | None:
    """`layers` as a list of chains: a flat list of names is one chain."""
    if not layers:
        return None
    if all(isinstance(layer, str) for layer in layers):
        return [list(layers)]
    return [list(chain) for chain in layers]


def chain_connections(
    model: nn.Module, checkpoint: Checkpoint, chains: list[list[str]]
) -> list[Connection]:
    """The connections of every chain; a weight layer may belong to one chain only."""
    result = [c for names in chains for c in connections(model, checkpoint, names)]
    modules = [c.module for c in result]
    repeated = sorted({m for m in modules if modules.count(m) > 1})
    if repeated:
        raise LayerError(
            f"{', '.join(repeated)} would be pruned by two chains; list each layer in one chain."
        )
    return result


def with_probe_classifier(
    checkpoint: Checkpoint,
    chain: list[Connection],
    last: str,
    label_sets: dict[str, list[set[int]]],
    probes_path: str | Path | None,
) -> tuple[nn.Module, list[Connection], dict[str, list[set[int]]], dict[str, Any]]:
    """The network cut after `last` with `last`'s probe as classifier; names gain `body.`."""
    if probes_path is None:
        raise UsageError(
            "--classifier probe needs the probe file: pass --probes PROBES.safetensors."
        )
    probes = ProbeFile(probes_path)
    if probes.metadata["checkpoint"]["sha256"] != checkpoint.sha256:
        raise InputFileError(
            f"{probes_path} was fitted on another checkpoint than {checkpoint.path}."
        )
    if last not in probes.tap_names:
        raise InputFileError(f"{probes_path} has no probe for {last}; probe that layer first.")
    tap = probes.tap(last)
    if tap["tap_input"] or tap["unit"] not in ("channel", "node"):
        raise LayerError(
            f"--classifier probe reads channel or node taps, not {tap['unit']} units of {last}."
        )
    weight = probes.tensor(f"probe/{last}").reshape(checkpoint.num_classes, -1)
    model = ProbeHeadModel(checkpoint.model, tap["layer"], weight.shape[1], checkpoint.num_classes)
    with torch.no_grad():
        model.head.weight.copy_(weight)
    renamed = [
        Connection("body." + c.module, "body." + c.source, "body." + c.target, c.inputs_per_unit)
        for c in chain
        if c.target is not None
    ]
    renamed.append(Connection("head", "body." + last, None, tap["positions"]))
    sets = {"body." + name: value for name, value in label_sets.items()}
    head = {
        "kind": "probe",
        "tap": tap["layer"],
        "in_features": weight.shape[1],
        "num_classes": checkpoint.num_classes,
    }
    return model.eval(), renamed, sets, {**checkpoint.metadata["arch"], "head": head}


# --- the plans ---------------------------------------------------------------------------------

ConnectionMasks = Callable[
    [nn.Module, list[Connection], dict[str, list[set[int]]], int, PruneConfig],
    tuple[dict[str, torch.Tensor], dict[str, Any] | None],
]


def _afcc(model, chain, label_sets, classes, config):
    return afcc_masks(model, chain, label_sets, classes), None


def _random(model, chain, label_sets, classes, config):
    rng = np.random.default_rng(config.seed)
    shuffled = {name: balanced_random_sets(sets, classes, rng) for name, sets in label_sets.items()}
    return afcc_masks(model, chain, shuffled, classes), None


def _magnitude(model, chain, label_sets, classes, config):
    return magnitude_masks(model, chain, afcc_masks(model, chain, label_sets, classes)), None


def _grouped(model, chain, label_sets, classes, config):
    return grouped_masks(
        model,
        chain,
        label_sets,
        classes,
        config.connections.groups,
        config.connections.label_grouping,
        config.seed,
    )


def connection_plan(masks_of: ConnectionMasks) -> Callable[[PruneInputs, PruneConfig], PrunePlan]:
    """The plan of a connection method whose masks `masks_of` draws: the chains' connections
    (with `--classifier probe`, the network cut after the last layer and classified by its
    probe), masked, with the hidden channels of MBConv blocks that keep no connection."""

    def plan(inputs: PruneInputs, config: PruneConfig) -> PrunePlan:
        checkpoint = inputs.checkpoint
        model, arch = checkpoint.model, checkpoint.metadata["arch"]
        chain = chain_connections(model, checkpoint, inputs.chains)
        label_sets = inputs.label_sets
        if config.connections.classifier == "probe":
            model, chain, label_sets, arch = with_probe_classifier(
                checkpoint, chain, inputs.chains[-1][-1], label_sets, inputs.probes_path
            )
        if not chain:
            raise UsageError(
                "the listed layers give nothing to prune; list two consecutive layers, "
                "or the last one before the output layer."
            )
        masks, grouping = masks_of(model, chain, label_sets, checkpoint.num_classes, config)
        pruned = [
            PrunedLayer(
                c.target or "output", c.module, *masked_share(masks, [c.module + ".weight"])
            )
            for c in chain
        ]
        squeezed = squeeze_masks(model, chain, masks)
        masks.update(squeezed)
        for c in chain:
            reduce = getattr(mbconv_hidden(model, c.module), "reduce", None)
            if reduce is not None and reduce + ".weight" in squeezed:
                share = masked_share(masks, [reduce + ".weight"])
                pruned.append(PrunedLayer(c.source, reduce, *share))
        return PrunePlan(
            model, arch, masks, chain, pruned, {"groups": grouping} if grouping else {}
        )

    return plan


def heads_plan(inputs: PruneInputs, config: PruneConfig) -> PrunePlan:
    """Attention heads and feed-forward nodes masked by their label sets (unit_removal.py)."""
    checkpoint = inputs.checkpoint
    maxima = read_unit_maxima(inputs.clusters_path, inputs.names)
    masks, chain, removals = removal_masks(
        checkpoint.model, checkpoint, inputs.label_sets, maxima, config.removal.remove_fraction
    )
    pruned = [PrunedLayer(r.layer, r.module, *masked_share(masks, r.parameters)) for r in removals]
    return PrunePlan(
        checkpoint.model,
        checkpoint.metadata["arch"],
        masks,
        chain,
        pruned,
        {"heads": [r.to_json() for r in removals]},
    )


def channel_plan(by_units: bool) -> Callable[[PruneInputs, PruneConfig], PrunePlan]:
    """Whole channels removed with Torch-Pruning (structured.py), ordered by the matrices
    (`by_units`; `--fill` orders the groups without them) or by the method's weight criterion."""

    def plan(inputs: PruneInputs, config: PruneConfig) -> PrunePlan:
        result = prune_structured(
            inputs.checkpoint,
            inputs.clusters_path,
            inputs.names,
            config.removal,
            inputs.batches,
            by_units=by_units,
            weight_criterion=config.removal.fill if by_units else config.method,
            seed=config.seed,
        )
        pruned = [
            PrunedLayer(",".join(g.taps), g.root, 1 - len(g.kept) / g.channels, g.channels)
            for g in result.groups
        ]
        return PrunePlan(result.model, result.arch, {}, [], pruned, {"structured": result.record})

    return plan


def _connection_method(name: str, masks_of: ConnectionMasks, **options: Any) -> PruneMethod:
    return PruneMethod(name, connection_plan(masks_of), cluster_label_sets, **options)


def _channel_method(name: str, *, by_units: bool = False, **options: Any) -> PruneMethod:
    return PruneMethod(
        name,
        channel_plan(by_units),
        cluster_label_sets,
        keeps_classifier=True,
        removes_channels=True,
        **options,
    )


METHODS: dict[str, PruneMethod] = {
    method.name: method
    for method in (
        _connection_method("afcc", _afcc),
        PruneMethod("andc", connection_plan(_afcc), andc_label_sets),
        _connection_method("afcc-grouped", _grouped),
        _connection_method("random", _random),
        _connection_method("magnitude", _magnitude),
        PruneMethod("heads", heads_plan, cluster_label_sets, keeps_classifier=True),
        _channel_method("units", by_units=True),
        _channel_method("magnitude-channels", needs_clusters=False),
        _channel_method("taylor", needs_clusters=False, needs_batches=True),
        _channel_method("lamp", needs_clusters=False),
        _channel_method("group-norm", needs_clusters=False),
        _channel_method("random-channels", needs_clusters=False),
    )
}
assert tuple(METHODS) == PRUNE_METHODS, "the method table and config.PRUNE_METHODS must agree"

"""`snptool prune`: label-guided dilution of a network (METHODS.md §8), then masked fine-tuning
(finetune.py).

For the listed (analysed) layers ℓ1 … ℓn, in forward order:
- the weight layer that produces ℓ(i+1) reads ℓi's units; AFCC keeps its kernel slice from
  input unit a to output unit b iff Λℓi(a) ∩ Λℓ(i+1)(b) ≠ ∅ (Λ = union of a unit's clusters);
- when ℓn feeds the output layer directly, unit u keeps its connection to label k iff k ∈ Λℓn(u).
Fully connected layers follow the same rule with nodes; a Linear that reads a flattened conv
tap gives every channel its H·W inputs. Masks are stored as tensors (`snptool/mask/<param>`)
so the zeros survive fine-tuning and export.

Inverted-residual (MBConv) blocks (connections.py): the expand conv (block input →
`<block>.block.0`) and the projection conv (SE output `<block>.block.2` → `<block>.block.3`)
follow the rule. **Decision**: a hidden channel that keeps no projection connection is cut out
of its block: the squeeze-excitation's squeeze conv loses its column too (the channel's mean
would still gate the others), so compaction removes the channel exactly. Blocks without an
expand conv (expand ratio 1) keep their SE: their hidden channels are the block input's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from snptool.config import (
    STRUCTURED_METHODS,
    WEIGHT_CRITERIA,
    DataConfig,
    PruneConfig,
    config_to_dict,
)
from snptool.core.architectures import ProbeHeadModel
from snptool.core.checkpoint import (
    MASK_PREFIX,
    Checkpoint,
    make_metadata,
    read_checkpoint,
    write_checkpoint,
)
from snptool.core.devices import resolve_device
from snptool.core.files import check_output_path, provenance
from snptool.core.matrix_file import (
    layer_group,
    layer_names,
    metadata,
    open_matrix_file,
    read_layer_clusters,
)
from snptool.core.probe_file import ProbeFile
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.data.datasets import DataSplit, prepare_batch
from snptool.errors import InputFileError, LayerError, UsageError
from snptool.pruning.connections import Connection, connections, mbconv_hidden
from snptool.pruning.finetune import apply_masks, dense_teacher, finetune, trainable_modules
from snptool.pruning.structured import prune_structured
from snptool.pruning.unit_removal import read_unit_maxima, removal_masks
from snptool.training.evaluate import evaluate_model


@dataclass(frozen=True)
class PrunedLayer:
    layer: str
    module: str
    dilution: float
    weights: int

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class PruneResult:
    output: str
    method: str
    dense_accuracy: float
    accuracy_before: float
    accuracy_after: float
    layers: list[PrunedLayer] = field(default_factory=list)
    seconds: float = 0.0
    size: dict[str, Any] | None = None  # MACs and parameters, dense and pruned (unit removal)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "method": self.method,
            "dense_accuracy": self.dense_accuracy,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "layers": [layer.to_json() for layer in self.layers],
            "seconds": self.seconds,
            "size": self.size,
        }


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


def method_masks(
    model: nn.Module,
    chain: list[Connection],
    label_sets: dict[str, list[set[int]]],
    classes: int,
    config: PruneConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The masks of afcc, andc, afcc-grouped, random or magnitude; the label groups if any."""
    masks = afcc_masks(model, chain, label_sets, classes)
    if config.method == "afcc-grouped":
        return grouped_masks(
            model, chain, label_sets, classes, config.groups, config.label_grouping, config.seed
        )
    if config.method == "random":
        rng = np.random.default_rng(config.seed)
        shuffled = {
            name: balanced_random_sets(sets, classes, rng) for name, sets in label_sets.items()
        }
        return afcc_masks(model, chain, shuffled, classes), None
    if config.method == "magnitude":
        return magnitude_masks(model, chain, masks), None
    return masks, None


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


def read_label_sets(
    clusters_path: str | Path,
    checkpoint: Checkpoint,
    layers: list[str] | None,
    config: PruneConfig,
):
    """Λ(u) of every unit of the listed layers (default: all layers in the file), in file order:
    the union of its clusters, or its marked diagonal labels for ANDC."""
    with open_matrix_file(clusters_path) as handle:
        recorded = metadata(handle).get("checkpoint", {}).get("sha256")
        if recorded and recorded != checkpoint.sha256:
            raise InputFileError(
                f"{clusters_path} was computed for another checkpoint than {checkpoint.path}; "
                "run probe, matrix and clusters on this checkpoint first."
            )
        names = layers or layer_names(handle)
        if config.method == "andc":
            return names, {
                name: diagonal_label_sets(layer_group(handle, name), config.andc_threshold)
                for name in names
            }
        return names, {
            name: read_layer_clusters(layer_group(handle, name)).label_sets() for name in names
        }


def taps_without_clusters(layers: list[str] | None, config: PruneConfig) -> list[str]:
    """The listed taps of a weight-criterion baseline, which needs no clusters file (none:
    every prunable group)."""
    if config.method not in WEIGHT_CRITERIA:
        raise UsageError(
            f"--method {config.method} reads the units' label sets; give --clusters "
            "(the matrix file of `snptool clusters`)."
        )
    return list(layers or [])


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


def build_masks(
    checkpoint: Checkpoint,
    clusters_path: str | Path | None,
    names: list[str],
    chains: list[list[str]],
    label_sets: dict[str, list[set[int]]],
    config: PruneConfig,
    probes_path: str | Path | None,
    batches: list | None = None,
) -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor], list[Connection], list, dict]:
    """The model to prune (the probe-classified network with `--classifier probe`), its
    architecture record, the method's masks (not yet applied), the connections, the per-layer
    report and what the pruning record adds (label groups, removed heads, removed channels);
    `batches` (prepared training images, labels) feed the Taylor criterion."""
    model, arch, classes = checkpoint.model, checkpoint.metadata["arch"], checkpoint.num_classes
    if config.method in STRUCTURED_METHODS:
        if config.classifier == "probe":
            raise UsageError(
                f"--method {config.method} keeps the model's classifier; drop --classifier probe."
            )
        result = prune_structured(checkpoint, clusters_path, names, config, batches)
        pruned = [
            PrunedLayer(",".join(g.taps), g.root, 1 - len(g.kept) / g.channels, g.channels)
            for g in result.groups
        ]
        return result.model, result.arch, {}, [], pruned, {"structured": result.record}
    if config.method == "heads":
        if config.classifier == "probe":
            raise UsageError(
                "--method heads keeps the model's classifier; drop --classifier probe."
            )
        maxima = read_unit_maxima(clusters_path, names)
        masks, chain, removals = removal_masks(
            model, checkpoint, label_sets, maxima, config.remove_fraction
        )
        pruned = [
            PrunedLayer(r.layer, r.module, *masked_share(masks, r.parameters)) for r in removals
        ]
        return model, arch, masks, chain, pruned, {"heads": [r.to_json() for r in removals]}
    chain = chain_connections(model, checkpoint, chains)
    if config.classifier == "probe":
        model, chain, label_sets, arch = with_probe_classifier(
            checkpoint, chain, chains[-1][-1], label_sets, probes_path
        )
    if not chain:
        raise UsageError(
            "the listed layers give nothing to prune; list two consecutive layers, "
            "or the last one before the output layer."
        )
    masks, grouping = method_masks(model, chain, label_sets, classes, config)
    pruned = [
        PrunedLayer(c.target or "output", c.module, *masked_share(masks, [c.module + ".weight"]))
        for c in chain
    ]
    squeezed = squeeze_masks(model, chain, masks)
    masks.update(squeezed)
    for c in chain:
        reduce = getattr(mbconv_hidden(model, c.module), "reduce", None)
        if reduce is not None and reduce + ".weight" in squeezed:
            share = masked_share(masks, [reduce + ".weight"])
            pruned.append(PrunedLayer(c.source, reduce, *share))
    return model, arch, masks, chain, pruned, ({"groups": grouping} if grouping else {})


def taylor_batches(
    checkpoint: Checkpoint, data: DataSplit, config: PruneConfig, device: torch.device
) -> list:
    """The first `config.taylor_batches` shuffled training batches (prepared), for Taylor."""
    batches = []
    spec = checkpoint.input_spec
    for images, labels in data.batches(spec, config.batch_size, shuffle=True, seed=config.seed):
        batches.append((prepare_batch(images.to(device), spec), labels.to(device)))
        if len(batches) == config.taylor_batches:
            break
    return batches


def run_prune(
    checkpoint_path: str | Path,
    clusters_path: str | Path | None,
    output: str | Path,
    config: PruneConfig | None = None,
    *,
    layers: list[str] | list[list[str]] | None = None,
    probes_path: str | Path | None = None,
    data_spec: str | None = None,
    data_config: DataConfig | None = None,
) -> PruneResult:
    """Dilute a checkpoint by its units' label sets, fine-tune, and write the pruned checkpoint.

    `layers` is one chain of consecutive analysed layers, or several chains (lists) pruned
    together, e.g. the feed-forward layers of every transformer block; default: every layer
    in the clusters file, as one chain. With `config.classifier == "probe"` the network is cut
    after the last listed layer and classified by that layer's probe (from `probes_path`), as
    in the authors' code. The weight criteria (`magnitude-channels`, `taylor`, `lamp`) need no
    clusters file (`clusters_path=None`) when `layers` names the taps.
    """
    config = config or PruneConfig()
    check_output_path(output, checkpoint_path, clusters_path, probes_path)
    started = time.perf_counter()
    device = resolve_device(config.device)
    checkpoint = read_checkpoint(checkpoint_path, device)
    spec = checkpoint.input_spec
    chains = layer_chains(layers)
    flat = [name for names_ in chains for name in names_] if chains else None
    if clusters_path is None:
        names, label_sets = taps_without_clusters(flat, config), {}
    else:
        names, label_sets = read_label_sets(clusters_path, checkpoint, flat, config)
    train_data = None
    if config.finetune_epochs or config.method == "taylor":
        train_data = load_checkpoint_data(checkpoint, data_spec, "train", data_config)
    batches = None
    if config.method == "taylor":
        batches = taylor_batches(checkpoint, train_data, config, device)
    model, arch, masks, chain, pruned, extra = build_masks(
        checkpoint,
        clusters_path,
        names,
        chains or [names],
        label_sets,
        config,
        probes_path,
        batches,
    )
    model.to(device)
    test_data = load_checkpoint_data(checkpoint, data_spec, "test", data_config)
    dense = evaluate_model(
        checkpoint.model, test_data, spec, device=device, description="dense"
    ).accuracy
    distilling = config.distill and config.finetune_epochs
    teacher = dense_teacher(checkpoint.model) if distilling else None
    apply_masks(model, masks)
    before = evaluate_model(model, test_data, spec, device=device, description="pruned").accuracy
    after = before
    if config.finetune_epochs:
        modules = trainable_modules(model, config, masks)
        training = (checkpoint.metadata.get("training") or {}).get("config") or {}
        augmentation = (training.get("translate", 4), training.get("flip", True))
        finetune(model, masks, train_data, spec, config, modules, device, augmentation, teacher)
        after = evaluate_model(
            model, test_data, spec, device=device, description="fine-tuned"
        ).accuracy
    record = {
        "method": config.method,
        "layers": names,
        "chains": chains or [names],
        "connections": [vars(c) for c in chain],
        "dilution": {p.module: p.dilution for p in pruned},
        "dense_accuracy": dense,
        "accuracy_before": before,
        "accuracy_after": after,
        "config": config_to_dict(config),
        **extra,
    }
    meta = make_metadata(
        arch=arch,
        class_names=checkpoint.class_names,
        input_spec=spec,
        data=checkpoint.metadata.get("data"),
        provenance=provenance(
            {"checkpoint": checkpoint_path, "clusters": clusters_path, "probes": probes_path}
        ),
        training=checkpoint.metadata.get("training"),
        pruning=record,
    )
    extras = {MASK_PREFIX + name: mask.to(torch.uint8) for name, mask in masks.items()}
    write_checkpoint(output, model, meta, extras)
    size = extra.get("structured")
    if size is not None:
        keys = ("dense_macs", "macs", "mac_ratio", "dense_params", "params", "fraction")
        size = {key: size[key] for key in keys}
    return PruneResult(
        str(output),
        config.method,
        dense,
        before,
        after,
        pruned,
        time.perf_counter() - started,
        size,
    )


__all__ = ["run_prune", "PruneResult"]

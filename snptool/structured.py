"""`prune --method units` and Torch-Pruning's criteria: whole channels / nodes cut out of any
architecture with Torch-Pruning's DependencyGraph, so the export is smaller and faster.

The analysed taps name the channel groups to prune. Torch-Pruning couples every module that
carries the same channels (a residual stream: every block's last BN, the additions and every
reader; an MBConv's hidden channels: expand, depthwise, SE and projection), so coupled units are
scored together and removed together. A tap belongs to the group of the nearest Conv / Linear /
BatchNorm before it (in execution order) that has the tap's number of outputs.

Scores. `units` (our criterion) ranks a group's channels by what the matrices say, in the order
of `ranking` (default: fewest labels served, so units serving none go first; then the weakest
matrix maximum; then the most noise entries; `magnitude`, the L1 norm of the group's weights,
can break ties); with several taps on one group the label sets are united and the maxima and
noise averaged. `magnitude-channels` (L1 of the group's weights, Li et al. 2017), `taylor`
(first-order Taylor, Molchanov et al. 2019, on a few training batches) and `lamp` (Lee et al.
2021) are Torch-Pruning's own importance estimators, applied to the same groups at the same
fraction, for a side-by-side comparison.

Every group loses the same share of its channels (one always stays): `remove_fraction`, or the
share that brings the model's MACs to `target_macs` × the dense MACs (bisection); `round_to`
rounds every group's kept count to a multiple (onnxruntime's NCHWc convolutions work in blocks
of 16 channels on AVX-512, 8 on AVX2: ResNet-56 at 0.50 of the MACs ran at 0.72 of the dense
p50 with widths 8/16/32, at 0.82 with 8/15/31 and at 0.62 with 16/16/32).

**Decision** (`allocation`): rounded widths move in jumps, so the uniform share just meeting the
MAC target can overshoot it (ResNet-56 at widths of 16: 0.509 of the MACs, then 0.448). With
`deepest-first` (default) the groups that differ between the uniform share just above the
target and the one just meeting it are stepped down one by one, the deepest first (last in
execution order), until the MACs meet the target; `uniform` keeps the uniform share.

**Decision**: a group whose coupled modules do not all carry the root's channel count is left
dense. Torch-Pruning would treat an unknown channel-changing op as element-wise (the option-A
shortcut of CIFAR ResNets, subsample + zero-pad, would couple all three stages' streams), so
parameter-free modules that change the channel count are first wrapped as channel maps
(snptool/channel_maps.py), whose inputs and outputs are pruned independently. Groups that reach
parameters outside Conv / Linear / BatchNorm / LayerNorm are left dense too, since the
checkpoint records only those modules' shapes (`arch.shapes`, architectures.resize_modules) and
the channel maps' kept channels (`arch.channel_maps`), from which `read_checkpoint` rebuilds the
pruned network.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from snptool.architectures import RESIZABLE, module_shapes
from snptool.channel_maps import CUSTOMIZED_PRUNERS, ChannelMap, unwrap_unchanged, wrap_channel_maps
from snptool.config import STRUCTURED_METHODS, InputSpec
from snptool.connections import execution_order
from snptool.errors import LayerError
from snptool.taps import resolve_taps

_OUT_HANDLERS = ("prune_out_channels",)


@dataclass(frozen=True)
class UnitScores:
    """What the matrices say about one tap's units (from `clusters`)."""

    label_sets: list[set[int]]
    maximum: np.ndarray
    noise: np.ndarray


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels and what its removal kept."""

    root: str  # the module whose output channels Torch-Pruning prunes
    taps: list[str]
    channels: int
    kept: list[int]
    modules: list[str]  # the model's modules the group resizes

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def _channels(module: nn.Module, handler: str) -> int | None:
    if isinstance(module, ChannelMap):
        return len(module.kept_out if handler in _OUT_HANDLERS else module.kept_in)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if isinstance(module, nn.Conv2d):
        return module.out_channels if handler in _OUT_HANDLERS else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if handler in _OUT_HANDLERS else module.in_features
    return None


def _group_members(group, names: dict[nn.Module, str]) -> list[tuple[str, str, nn.Module]]:
    """(module name, handler, module) of a group's members that are modules of the model."""
    members = []
    for dep, _ in group:
        module = dep.target.module
        handler = getattr(dep.handler, "__name__", "")
        members.append((names.get(module, ""), handler, module))
    return members


def _consistent(group, names: dict[nn.Module, str], channels: int) -> bool:
    """Every member is a resizable module of the model (or a Torch-Pruning op node), producers
    and per-channel modules carry exactly `channels`, readers at least that many."""
    for name, handler, module in _group_members(group, names):
        if not name:
            if not type(module).__module__.startswith("torch_pruning"):
                return False  # a parameter or a module outside the model's named modules
            continue
        if not isinstance(module, (*RESIZABLE, ChannelMap)):
            return False
        size = _channels(module, handler)
        per_channel = handler in _OUT_HANDLERS or isinstance(
            module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm
        )
        if size is None or (size != channels if per_channel else size < channels):
            return False
        if isinstance(module, nn.Conv2d) and module.groups not in (1, module.in_channels):
            return False
    return True


def build_graph(model: nn.Module, shape: tuple[int, ...]) -> tp.DependencyGraph:
    example = torch.zeros(1, *shape, device=next(model.parameters()).device)
    with warnings.catch_warnings():  # unwrapped parameters: their groups are left dense
        warnings.filterwarnings("ignore", "Unwrapped parameters", UserWarning)
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, customized_pruners=CUSTOMIZED_PRUNERS
        )


def _producer(model: nn.Module, order: list[str], layer: str, units: int) -> str | None:
    """The last Conv / Linear / BatchNorm at or before `layer` with `units` outputs."""
    inside = [i for i, n in enumerate(order) if n == layer or n.startswith(layer + ".")]
    if not inside:
        return None
    for name in reversed(order[: max(inside) + 1]):
        module = model.get_submodule(name)
        weighted = isinstance(module, nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm)
        if weighted and _channels(module, "prune_out_channels") == units:
            return name
    return None


def channel_groups(
    model: nn.Module, shape: tuple[int, ...], taps: list[str], graph: tp.DependencyGraph
) -> tuple[list[tuple[str, list[str], Any]], list[str]]:
    """(root, taps, Torch-Pruning group) for every prunable group that a listed tap reads, and
    the taps whose channels cannot be removed (coupled through an operation Torch-Pruning
    cannot index, a bare parameter, or the classifier's outputs); raise when no tap can."""
    names = {module: name for name, module in model.named_modules()}
    order = execution_order(model, shape)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    groups: list[tuple[str, list[str], Any]] = []
    members: list[set[str]] = []
    for group in graph.get_all_groups(ignored_layers=classifier):
        root = names.get(group[0].dep.target.module)
        channels = _channels(group[0].dep.target.module, "prune_out_channels")
        if root is None or channels is None or not _consistent(group, names, channels):
            continue
        groups.append((root, [], group))
        members.append({n for n, h, _ in _group_members(group, names) if n and h in _OUT_HANDLERS})
    spec = InputSpec(channels=shape[0], height=shape[1], width=shape[2])
    skipped = []
    for tap in resolve_taps(model, taps, spec):
        if tap.unit not in ("channel", "node", "feature") or tap.tap_input:
            raise LayerError(
                f"--method units removes channels and nodes; {tap.name} is read as "
                f"{tap.unit} units."
            )
        producer = _producer(model, order, tap.layer, tap.units)
        found = [i for i, m in enumerate(members) if producer in m]
        if found:
            groups[found[0]][1].append(tap.name)
        else:
            skipped.append(tap.name)
    if len(skipped) == len(taps):
        raise LayerError(
            f"the channels of {', '.join(skipped)} cannot be removed (coupled through an "
            "operation Torch-Pruning cannot index, a bare parameter, or the classifier's "
            "outputs); list other layers with --layers."
        )
    return [g for g in groups if g[1]], skipped


def removal_order(
    scores: list[UnitScores], ranking: tuple[str, ...], magnitude: np.ndarray | None = None
) -> np.ndarray:
    """The group's channels, first to remove first: `ranking` keys in priority order
    (`labels`: fewest served first; `maximum`: weakest first; `noise`: most noise first;
    `magnitude`: smallest L1 norm of the group's weights first, a tie-breaker from the
    weights)."""
    labels = np.zeros(len(scores[0].label_sets))
    for channel in range(len(labels)):
        labels[channel] = len(set().union(*(s.label_sets[channel] for s in scores)))
    keys = {
        "labels": labels,
        "maximum": np.mean([s.maximum for s in scores], axis=0),
        "noise": -np.mean([s.noise for s in scores], axis=0),
        "magnitude": magnitude,
    }
    return np.lexsort([keys[k] for k in reversed(ranking)])


def l1_importance() -> tp.importance.Importance:
    """Torch-Pruning's L1 norm of each channel's weights over the coupled modules: the
    `magnitude-channels` criterion and the `magnitude` ranking key."""
    return tp.importance.GroupMagnitudeImportance(p=1)


def group_magnitude(group) -> np.ndarray:
    """The L1 importance of the group's channels."""
    return l1_importance()(group).detach().cpu().numpy()


def importance_order(group, importance: tp.importance.Importance) -> np.ndarray:
    """Torch-Pruning's importance of the group's channels, least important first."""
    score = importance(group)
    return np.argsort(score.detach().cpu().numpy(), kind="stable")


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, parameters) of one sample, as Torch-Pruning counts them."""
    example = torch.zeros(1, *shape, device=next(model.parameters()).device)
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def removed_count(channels: int, fraction: float, round_to: int = 1) -> int:
    """How many of `channels` to remove at `fraction`: the kept count rounded to a multiple of
    `round_to` (kernels run faster on such widths), at least one (or `round_to`) kept."""
    kept = channels - math.floor(fraction * channels + 1e-9)
    if round_to > 1:
        kept = min(channels, max(round_to, round_to * round(kept / round_to)))
    return channels - max(1, kept)


def remove_channels(
    model: nn.Module,
    shape: tuple[int, ...],
    taps: list[str],
    orders: Callable[[str, list[str], Any], np.ndarray],
    fraction: float,
    round_to: int = 1,
    removals: dict[str, int] | None = None,
) -> tuple[list[ChannelGroup], list[str]]:
    """Remove `fraction` of every tapped group's channels in place (or `removals[root]` of
    those it lists), in the order `orders` (root, taps, group) gives; return what each group
    kept and the taps left dense. Modules that change the channel count without parameters are
    wrapped in ChannelMaps first."""
    wrap_channel_maps(model, shape)
    graph = build_graph(model, shape)
    names = {module: name for name, module in model.named_modules()}
    result = []
    groups, skipped = channel_groups(model, shape, taps, graph)
    for root, group_taps, group in groups:
        module = model.get_submodule(root)
        channels = _channels(module, "prune_out_channels")
        order = orders(root, group_taps, group)
        count = (removals or {}).get(root, removed_count(channels, fraction, round_to))
        removed = sorted(int(c) for c in order[:count])
        modules = sorted({n for n, _, _ in _group_members(group, names) if n})
        if removed:
            handler = graph.get_pruner_of_module(module).prune_out_channels
            graph.get_pruning_group(module, handler, idxs=removed).prune()
        kept = [c for c in range(channels) if c not in set(removed)]
        result.append(ChannelGroup(root, group_taps, channels, kept, modules))
    return result, skipped


def copy_with_grads(model: nn.Module) -> nn.Module:
    """A deep copy that keeps the parameters' gradients (Taylor importance reads them)."""
    trial = copy.deepcopy(model)
    for source, target in zip(model.parameters(), trial.parameters(), strict=True):
        if source.grad is not None:
            target.grad = source.grad.clone()
    return trial


def trial_macs(model, shape, taps, orders, fraction, round_to, removals=None):
    """(MACs, groups) of a pruned copy of `model`."""
    trial = copy_with_grads(model)
    groups, _ = remove_channels(trial, shape, taps, orders, fraction, round_to, removals)
    return count_macs(trial, shape)[0], groups


def fraction_for_macs(
    model: nn.Module,
    shape: tuple[int, ...],
    taps: list[str],
    orders: Callable[[str, list[str], Any], np.ndarray],
    target: float,
    round_to: int = 1,
    steps: int = 12,
) -> tuple[float, float]:
    """(low, high): the smallest uniform fraction whose pruned copy has at most `target` × the
    MACs (`high`; the largest reachable when even removing all but one channel per group
    leaves more), and the largest found above the target (`low`)."""
    dense, _ = count_macs(model, shape)
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        if trial_macs(model, shape, taps, orders, middle, round_to)[0] <= target * dense:
            high = middle
        else:
            low = middle
    return low, high


def step_down_deepest(
    model: nn.Module,
    shape: tuple[int, ...],
    taps: list[str],
    orders: Callable[[str, list[str], Any], np.ndarray],
    target: float,
    fractions: tuple[float, float],
    round_to: int = 1,
) -> dict[str, int]:
    """Removal counts that meet `target` × the dense MACs with the fewest groups moved from
    their width at `fractions[0]` (above the target) to their width at `fractions[1]`, the
    deepest groups first (bisection over how many move); empty when all must move (the
    uniform share at `fractions[1]`)."""
    low, high = fractions
    dense, _ = count_macs(model, shape)
    _, above = trial_macs(model, shape, taps, orders, low, round_to)
    _, below = trial_macs(model, shape, taps, orders, high, round_to)
    order = {name: i for i, name in enumerate(execution_order(model, shape))}
    kept = {g.root: len(g.kept) for g in below}
    moving = sorted(
        (g for g in above if len(g.kept) != kept[g.root]),
        key=lambda g: order.get(g.root, -1),
        reverse=True,
    )

    def removals(count: int) -> dict[str, int]:
        return {g.root: g.channels - kept[g.root] for g in moving[:count]}

    fewest, most = 0, len(moving)  # `most` moved always meets the target
    while most - fewest > 1:
        middle = (fewest + most) // 2
        macs, _ = trial_macs(model, shape, taps, orders, low, round_to, removals(middle))
        if macs <= target * dense:
            most = middle
        else:
            fewest = middle
    return removals(most) if most < len(moving) else {}  # all moved: the uniform share


def torch_pruning_importance(
    method: str, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tp.importance.Importance:
    """Torch-Pruning's estimator for a baseline method; Taylor accumulates the gradients of
    the cross-entropy on `batches` first."""
    if method == "magnitude-channels":
        return l1_importance()
    if method == "lamp":
        return tp.importance.LAMPImportance(p=2)
    model.zero_grad(set_to_none=True)
    model.eval()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    return tp.importance.GroupTaylorImportance()


def criterion_orders(
    method: str,
    scores: dict[str, UnitScores] | None,
    ranking: tuple[str, ...],
    importance: tp.importance.Importance | None,
) -> Callable[[str, list[str], Any], np.ndarray]:
    """The removal order function of `method` for remove_channels."""
    if method == "units":
        assert scores is not None

        def order(root: str, taps: list[str], group) -> np.ndarray:
            magnitude = group_magnitude(group) if "magnitude" in ranking else None
            return removal_order([scores[t] for t in taps], ranking, magnitude)

        return order
    assert importance is not None
    return lambda root, taps, group: importance_order(group, importance)


def pruned_shapes(model: nn.Module, dense: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The shapes of the modules that differ from the dense model's (`arch.shapes`)."""
    return {name: shape for name, shape in module_shapes(model).items() if dense.get(name) != shape}


__all__ = [
    "STRUCTURED_METHODS",
    "StructuredPruning",
    "prune_structured",
    "read_unit_scores",
    "ChannelGroup",
    "UnitScores",
    "count_macs",
    "fraction_for_macs",
    "remove_channels",
    "removal_order",
]


def read_unit_scores(clusters_path, names: list[str]) -> dict[str, UnitScores]:
    """Each listed tap's label sets, matrix maxima and noise counts (from `clusters`)."""
    from snptool.clusters import read_layer_clusters
    from snptool.matrix_file import layer_group, open_matrix_file

    scores = {}
    with open_matrix_file(clusters_path) as handle:
        for name in names:
            layer = read_layer_clusters(layer_group(handle, name))
            scores[name] = UnitScores(layer.label_sets(), layer.maximum, layer.noise)
    return scores


@dataclass(frozen=True)
class StructuredPruning:
    """The channel-pruned model and what its checkpoint records."""

    model: nn.Module
    arch: dict[str, Any]
    groups: list[ChannelGroup]
    fraction: float
    record: dict[str, Any]


def prune_structured(
    checkpoint,
    clusters_path,
    names: list[str],
    config,
    batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> StructuredPruning:
    """Remove whole channels / nodes of the groups the taps `names` read (see the module
    docstring); `batches` (prepared images, labels) feed the Taylor criterion."""
    shape = checkpoint.input_spec.shape
    model = copy.deepcopy(checkpoint.model).eval()
    dense_shapes = module_shapes(model)
    scores = read_unit_scores(clusters_path, names) if config.method == "units" else None
    importance = None
    if config.method != "units":
        importance = torch_pruning_importance(config.method, model, batches or [])
    orders = criterion_orders(config.method, scores, config.ranking, importance)
    fraction, removals = config.remove_fraction, {}
    if config.target_macs is not None:
        low, fraction = fraction_for_macs(
            model, shape, names, orders, config.target_macs, config.round_to
        )
        if config.allocation == "deepest-first" and fraction < 1.0:
            removals = step_down_deepest(
                model, shape, names, orders, config.target_macs, (low, fraction), config.round_to
            )
            fraction = low if removals else fraction
    dense_macs, dense_params = count_macs(model, shape)
    groups, skipped = remove_channels(
        model, shape, names, orders, fraction, config.round_to, removals
    )
    model.zero_grad(set_to_none=True)
    channel_maps = unwrap_unchanged(model)
    macs, params = count_macs(model, shape)
    arch = dict(checkpoint.metadata["arch"])
    arch["shapes"] = {**(arch.get("shapes") or {}), **pruned_shapes(model, dense_shapes)}
    if channel_maps:
        arch["channel_maps"] = {**(arch.get("channel_maps") or {}), **channel_maps}
    record = {
        "channel_groups": [g.to_json() for g in groups],
        "left_dense": skipped,
        "fraction": fraction,
        "ranking": list(config.ranking) if config.method == "units" else None,
        "target_macs": config.target_macs,
        "allocation": config.allocation if config.target_macs is not None else "uniform",
        "stepped_down": sorted(removals),
        "round_to": config.round_to,
        "dense_macs": dense_macs,
        "macs": macs,
        "dense_params": dense_params,
        "params": params,
        "engine": f"torch-pruning {tp.__version__}",
    }
    return StructuredPruning(model, arch, groups, fraction, record)

"""`prune --method units` and Torch-Pruning's criteria: whole channels / nodes cut out of any
architecture with Torch-Pruning's DependencyGraph, so the export is smaller and faster.

The analysed taps name the channel groups to prune. Torch-Pruning couples every module that
carries the same channels (a residual stream: every block's last BN, the additions and every
reader; an MBConv's hidden channels: expand, depthwise, SE and projection), so coupled units are
scored together and removed together. A tap belongs to the group of the nearest Conv / Linear /
BatchNorm before it (in execution order) that has the tap's number of outputs.

Scores. `units` (our criterion) ranks a group's channels in the order of `ranking`: the keys
the matrices give (fewest labels served, weakest matrix maximum, most noise entries, smallest
share of the correct-label margin) and `magnitude`, the L1 norm of the group's weights, with
`coverage` keeping channels of every label the group serves; with several taps on one group the
label sets are united and the other scores averaged. The default, L1 with every label keeping
two channels, is the best the criteria screen measured (issue 24); the research's ranking is
`labels, maximum, noise`. `magnitude-channels` (L1 of the group's weights, Li et al. 2017), `taylor`
(first-order Taylor, Molchanov et al. 2019, on a few training batches) and `lamp` (Lee et al.
2021) are Torch-Pruning's own importance estimators, applied to the same groups at the same
fraction, for a side-by-side comparison.

Every group loses the same share of its channels (one always stays): `remove_fraction`, or the
share that brings the model's MACs to `target_macs` × the dense MACs (bisection; `global` and
`margin-mass` allocation give the groups different shares, allocation.py); `round_to`
rounds every group's kept count to a multiple (onnxruntime's NCHWc convolutions work in blocks
of 16 channels on AVX-512, 8 on AVX2: ResNet-56 at 0.50 of the MACs ran at 0.72 of the dense
p50 with widths 8/16/32, at 0.82 with 8/15/31 and at 0.62 with 16/16/32).

**Decision** (`allocation`): rounded widths move in jumps, so the uniform share just meeting the
MAC target can overshoot it (ResNet-56 at widths of 16: 0.509 of the MACs, then 0.448). With
`deepest-first` (default) the groups that differ between the uniform share just above the
target and the one just meeting it are stepped down one by one, the deepest first (last in
execution order), until the MACs meet the target; `uniform` keeps the uniform share.

**Decision**: a group whose coupled modules do not all carry the root's channel count is left
dense (recorded with the reason in `left_dense`). Torch-Pruning would treat an unknown
channel-changing op as element-wise (the option-A shortcut of CIFAR ResNets, subsample +
zero-pad, would couple all three stages' streams), so parameter-free modules that change the
channel count are first wrapped as channel maps (snptool/channel_maps.py), whose inputs and
outputs are pruned independently. Without taps, every prunable group is pruned (the weight
criteria, and `units` with `fill`); at least `min_channels` stay in each group, and a MAC target
that floor makes unreachable is refused. The checkpoint records what changed (`arch.resized`,
snptool/resizing.py: module attributes and tensor shapes, any module type) and the channel
maps' kept channels (`arch.channel_maps`), from which `read_checkpoint` rebuilds the network.
"""

from __future__ import annotations

import copy
import math
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from snptool.config import InputSpec, RemovalConfig
from snptool.core.channel_maps import (
    CUSTOMIZED_PRUNERS,
    ChannelMap,
    unwrap_unchanged,
    wrap_channel_maps,
)
from snptool.core.interrupts import work_limit
from snptool.core.macs import count_macs, count_parameters
from snptool.core.resizing import merge_resized, module_attributes, resized_record, tensor_shapes
from snptool.core.taps import resolve_taps
from snptool.errors import ArchitectureError, LayerError, UsageError, first_line
from snptool.pruning.allocation import (
    fraction_for_macs,
    global_threshold,
    margin_mass_share,
    step_down_deepest,
)
from snptool.pruning.connections import execution_order
from snptool.pruning.importance import (
    Batches,
    UnitScores,
    UnitsImportance,
    importance_scores,
    unit_margins,
    weight_importance,
)

_OUT_HANDLERS = ("prune_out_channels",)


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled channels and what its removal kept."""

    root: str  # the module whose output channels Torch-Pruning prunes
    taps: list[str]
    channels: int
    kept: list[int]
    modules: list[str]  # the model's modules the group resizes
    criterion: str = ""  # what ordered the channels (the method, or the fill criterion)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class GroupPlan:
    """A prunable group of the dense model: its channels' removal order and size rules."""

    root: str
    taps: list[str]
    channels: int
    modules: list[str]
    blocks: int = 1  # removal repeats the same positions in each of this many equal blocks
    multiple: int = 1  # the kept count stays a multiple of this (attention heads)
    order: np.ndarray | None = None  # the channels, first to remove first
    criterion: str = ""
    scores: np.ndarray | None = None  # group-normalised, larger keeps longer (`global`)


def _member_channels(graph: tp.DependencyGraph, module: Any, handler: str) -> int | None:
    if isinstance(module, ChannelMap):
        return len(module.kept_out if handler in _OUT_HANDLERS else module.kept_in)
    pruner = graph.get_pruner_of_module(module)
    if pruner is None:
        return None
    count = (
        pruner.get_out_channels(module)
        if handler in _OUT_HANDLERS
        else pruner.get_in_channels(module)
    )
    return None if count is None else int(count)


def _group_members(group, names: dict[Any, str]) -> list[tuple[str, str, Any]]:
    """(module name, handler, module) of a group's members."""
    members = []
    for dep, _ in group:
        module = dep.target.module
        handler = getattr(dep.handler, "__name__", "")
        members.append((names.get(module, ""), handler, module))
    return members


def _is_per_channel(module: Any, handler: str) -> bool:
    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.PReLU)
    return handler in _OUT_HANDLERS or isinstance(module, norms)


def group_problem(
    members: list[tuple[str, str, Any]], graph: tp.DependencyGraph, channels: int
) -> str | None:
    """Why a group cannot be pruned (None when it can): a member that is neither a module of
    the model, a bare parameter nor a Torch-Pruning operation, or a producer / per-channel
    module whose channel count is not the root's (an operation Torch-Pruning would take for
    element-wise although it changes the channel count). `members`: _group_members."""
    for name, handler, module in members:
        if isinstance(module, nn.Parameter):
            continue  # a bare parameter (a layer scale, a position embedding)
        if not name:
            if not type(module).__module__.startswith("torch_pruning"):
                return f"{type(module).__name__} outside the model's named modules"
            continue
        size = _member_channels(graph, module, handler)
        if size is None:
            return f"{name} ({type(module).__name__}), whose channels Torch-Pruning cannot count"
        if size != channels if _is_per_channel(module, handler) else size < channels:
            return f"{name} ({type(module).__name__}) with {size} channels, not {channels}"
    return None


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    parent, _, _ = name.rpartition(".")
    return model.get_submodule(parent) if name else None


def channel_blocks(model: nn.Module, members: list[tuple[str, str, Any]]) -> tuple[int, int]:
    """(blocks, multiple) of a group: grouped convolutions and the fused query-key-value
    projection of an attention (3 × heads blocks) need the same positions removed in every
    block; nn.MultiheadAttention needs an embedding a multiple of its heads."""
    blocks, multiple = 1, 1
    for name, handler, module in members:
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            depthwise = module.groups == module.in_channels == module.out_channels
            if not depthwise:
                blocks = math.lcm(blocks, module.groups)
        elif isinstance(module, nn.MultiheadAttention):
            multiple = math.lcm(multiple, module.num_heads)
        elif isinstance(module, nn.Linear) and name.endswith(".qkv") and handler in _OUT_HANDLERS:
            attention = _parent(model, name)
            heads = getattr(attention, "num_heads", None)
            if isinstance(heads, int) and hasattr(attention, "head_dim"):
                blocks = math.lcm(blocks, 3 * heads)
    return blocks, multiple


def fix_derived_sizes(model: nn.Module) -> None:
    """Update the size attributes that a forward reads but Torch-Pruning does not know: a
    timm Attention's head width after its fused qkv projection lost channels (it reshapes to
    (3, heads, head_dim) and back to attn_dim), torchvision's ViT width (`hidden_dim`, read
    when it flattens the patch embedding)."""
    for module in model.modules():
        qkv = getattr(module, "qkv", None)
        heads = getattr(module, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(heads, int) and hasattr(module, "head_dim"):
            module.head_dim = qkv.out_features // (3 * heads)
            if hasattr(module, "attn_dim"):
                module.attn_dim = heads * module.head_dim
        patches = getattr(module, "conv_proj", None)
        if isinstance(patches, nn.Conv2d) and isinstance(getattr(module, "hidden_dim", None), int):
            module.hidden_dim = patches.out_channels
        _fix_broadcast_shape(module)


def _fix_broadcast_shape(module: nn.Module) -> None:
    """A `shape` (C, 1, 1) that views a module's own 1-D parameter of C elements for
    broadcasting (timm's Scale in MetaFormers) follows the parameter's new length."""
    shape = getattr(module, "shape", None)
    own = [p for p in module.parameters(recurse=False) if p.dim() == 1]
    if not (isinstance(shape, tuple) and shape and own and all(d == 1 for d in shape[1:])):
        return
    if isinstance(shape[0], int) and shape[0] != own[0].numel():
        module.shape = (own[0].numel(), *shape[1:])


def build_graph(model: nn.Module, shape: tuple[int, ...]) -> tp.DependencyGraph:
    device = next(model.parameters()).device
    example = torch.zeros(1, *shape, device=device)
    with warnings.catch_warnings():  # bare parameters are pruned along their last dimension
        warnings.filterwarnings("ignore", "Unwrapped parameters", UserWarning)
        try:
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example, customized_pruners=CUSTOMIZED_PRUNERS
            )
        except Exception as error:  # Torch-Pruning's tracer fails in many ways on such graphs
            frames = traceback.extract_tb(error.__traceback__)
            where = frames[-1].name if frames else "its tracer"
            raise ArchitectureError(
                f"Torch-Pruning cannot follow the channels of {type(model).__name__} "
                f"({type(error).__name__} in {where}, e.g. at a channel shuffle or a reshape "
                "it cannot index), so no channels can be removed; connection pruning "
                "(--method afcc, andc, magnitude) still works."
            ) from None


def _producer(model: nn.Module, order: list[str], layer: str, units: int) -> str | None:
    """The last Conv / Linear / BatchNorm at or before `layer` with `units` outputs."""
    inside = [i for i, n in enumerate(order) if n == layer or n.startswith(layer + ".")]
    if not inside:
        return None
    for name in reversed(order[: max(inside) + 1]):
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d) and module.out_channels == units:
            return name
        if isinstance(module, nn.Linear) and module.out_features == units:
            return name
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features == units:
            return name
    return None


def classifier_of(model: nn.Module) -> list[nn.Module]:
    """The last Linear or convolution the model defines (SqueezeNet classifies with a 1×1
    convolution): its outputs are the labels and are never pruned."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    return layers[-1:]


GROUPING_MEMORY = 4 << 30  # bytes of growth: Torch-Pruning's endless index lists grow fast


def _all_groups(model: nn.Module, graph: tp.DependencyGraph, seconds: float) -> list:
    """Torch-Pruning's groups of `model` (the classifier's outputs left out), within `seconds`
    of CPU time and 4 GiB of memory: its index mappings can grow without end (Swin's window
    reshapes, about 0.1 GiB a CPU second)."""
    error = ArchitectureError(
        f"Torch-Pruning did not finish grouping the channels of {type(model).__name__} within "
        f"{seconds:g} CPU seconds and 4 GiB (its index mappings grow through reshapes it "
        "cannot follow, as in window attention); no channels can be removed; raise "
        "--grouping-seconds to wait longer, or use connection pruning (--method afcc, andc, "
        "magnitude)."
    )
    with work_limit(seconds, GROUPING_MEMORY, error):
        return list(graph.get_all_groups(ignored_layers=classifier_of(model)))


def plan_groups(
    model: nn.Module,
    shape: tuple[int, ...],
    taps: list[str],
    graph: tp.DependencyGraph,
    grouping_seconds: float = 0,
) -> tuple[list[GroupPlan], dict[str, str], dict[str, str]]:
    """Every prunable group of `model`, each with the listed taps that read it; why the other
    groups cannot be pruned (by root module) and why the taps without a group are left (by
    tap). Grouping stops with an error after `grouping_seconds` of CPU time (0: no limit)."""
    names = {module: name for name, module in model.named_modules()}
    plans: list[GroupPlan] = []
    refused: dict[str, str] = {}
    producers: list[set[str]] = []  # each plan's modules whose outputs it prunes
    for group in _all_groups(model, graph, grouping_seconds):
        module = group[0].dep.target.module
        root = names.get(module)
        channels = _member_channels(graph, module, "prune_out_channels")
        if root is None or channels is None:
            continue
        members = _group_members(group, names)
        problem = group_problem(members, graph, channels)
        if problem:
            refused[root] = f"coupled with {problem}"
            continue
        blocks, multiple = channel_blocks(model, members)
        modules = sorted({n for n, _, _ in members if n})
        plans.append(GroupPlan(root, [], channels, modules, blocks, multiple))
        producers.append({n for n, h, _ in members if n and h in _OUT_HANDLERS})
    skipped: dict[str, str] = {}
    if not taps:
        return plans, refused, skipped
    order = execution_order(model, shape)
    spec = InputSpec(channels=shape[0], height=shape[1], width=shape[2])
    for tap in resolve_taps(model, taps, spec):
        if tap.unit not in ("channel", "channel-last", "node", "feature") or tap.tap_input:
            raise LayerError(
                f"channel removal removes channels and nodes; {tap.name} is read as "
                f"{tap.unit} units."
            )
        producer = _producer(model, order, tap.layer, tap.units)
        found = [i for i, m in enumerate(producers) if producer in m]
        if found:
            plans[found[0]].taps.append(tap.name)
        else:
            skipped[tap.name] = refused.get(producer or "", "no prunable group produces it")
    return plans, refused, skipped


def removed_count(
    channels: int,
    fraction: float,
    round_to: int = 1,
    *,
    step: int = 1,
    min_channels: int = 1,
) -> int:
    """How many of `channels` to remove at `fraction`: the kept count rounded to a multiple of
    `round_to` (kernels run faster on such widths; with `step` > 1, a multiple of `step`, and
    of `round_to` too where the channels allow), at least `min_channels` (rounded up) and at
    least one `step` kept."""
    kept = channels - math.floor(fraction * channels + 1e-9)
    unit = round_to
    if step > 1:
        both = math.lcm(step, round_to)
        unit = both if channels % both == 0 else step
    if unit > 1:
        kept = min(channels, max(unit, unit * round(kept / unit)))
    floor = min(channels, unit * math.ceil(max(1, min_channels) / unit))
    return channels - max(1, kept, floor)


def blocked_positions(order: np.ndarray, channels: int, blocks: int, count: int) -> list[int]:
    """The first `count` channels of `order`, or with `blocks` > 1 the same positions in every
    block: those whose ranks in `order`, summed over the blocks, are lowest."""
    if blocks == 1:
        return sorted(int(c) for c in order[:count])
    size = channels // blocks
    rank = np.empty(channels)
    rank[order] = np.arange(channels)
    positions = np.argsort(rank.reshape(blocks, size).sum(0), kind="stable")[: count // blocks]
    return sorted(int(b * size + p) for b in range(blocks) for p in positions)


def remove_channels(
    model: nn.Module,
    shape: tuple[int, ...],
    plans: list[GroupPlan],
    counts: dict[str, int],
) -> list[ChannelGroup]:
    """Remove `counts[root]` channels of every planned group in place, in its order; return
    what each group kept. Modules that change the channel count without parameters are
    wrapped in ChannelMaps first."""
    wrap_channel_maps(model, shape)
    graph = build_graph(model, shape)
    result = []
    for plan in plans:
        module = model.get_submodule(plan.root)
        removed = blocked_positions(plan.order, plan.channels, plan.blocks, counts[plan.root])
        if removed:
            handler = graph.get_pruner_of_module(module).prune_out_channels
            graph.get_pruning_group(module, handler, idxs=removed).prune()
        kept = [c for c in range(plan.channels) if c not in set(removed)]
        result.append(
            ChannelGroup(plan.root, plan.taps, plan.channels, kept, plan.modules, plan.criterion)
        )
    fix_derived_sizes(model)
    return result


class Search:
    """The removal counts that bring the MACs to a target: trial prunes of a shape-only
    (meta-device) copy of the model, counted by the one MAC counter."""

    def __init__(self, model, shape, plans, config: RemovalConfig, dense_macs: int) -> None:
        self.shape, self.plans, self.config = shape, plans, config
        self.meta = _shape_copy(model)  # each trial copies this, which holds no data
        self.dense = dense_macs

    def counts(
        self, fraction: float | dict[str, float], overrides: dict[str, int] | None = None
    ) -> dict[str, int]:
        """The removal counts at `fraction` of every group (or the fraction of each group, by
        root), rounded by the configuration; `overrides` replace some."""
        config = self.config
        counts = {
            p.root: removed_count(
                p.channels,
                fraction[p.root] if isinstance(fraction, dict) else fraction,
                config.round_to,
                step=math.lcm(p.blocks, p.multiple),
                min_channels=config.min_channels,
            )
            for p in self.plans
        }
        return {**counts, **(overrides or {})}

    def ratio(self, counts: dict[str, int]) -> float:
        """The MACs of a copy of the model with `counts` removed, over the dense MACs."""
        trial = copy.deepcopy(self.meta)
        remove_channels(trial, self.shape, self.plans, counts)
        return count_pruned_macs(trial, self.shape) / self.dense


def count_pruned_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """The MACs of a pruned model, or an ArchitectureError naming where it no longer runs (a
    size the network keeps outside its parameters, which Torch-Pruning did not update)."""
    try:
        return count_macs(model, shape)
    except RuntimeError as error:
        frames = traceback.extract_tb(error.__traceback__)
        ours = [f for f in frames if "/torch/" not in f.filename and "snptool" not in f.filename]
        where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
        raise ArchitectureError(
            f"{type(model).__name__} no longer runs once its channels are removed{where} "
            f"({first_line(error)}): it keeps a size outside its parameters that Torch-Pruning "
            "does not update; list other layers with --layers, or prune connections instead "
            "(--method afcc, andc, magnitude)."
        ) from None


def _shape_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose tensors live on the meta device (no data is copied): pruning
    and counting it moves shapes only."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        meta = tensor.detach().to("meta")
        memo[id(tensor)] = (
            nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
        )
    with torch.no_grad():
        return copy.deepcopy(model, memo)


def order_groups(
    model: nn.Module,
    shape: tuple[int, ...],
    plans: list[GroupPlan],
    units: UnitsImportance | None,
    weight_criterion: str | None,
    batches: Batches | None,
    seed: int = 0,
    allocation: str = "uniform",
) -> None:
    """Give every plan its removal order, each through a Torch-Pruning `Importance`: the
    matrices' (`units`) for the groups a tap reads, else the weight criterion's; for `global`
    allocation also the scores it compares across groups."""
    weights = None
    if weight_criterion is not None and any(units is None or not p.taps for p in plans):
        weights = weight_importance(weight_criterion, model, batches or [], seed)
    wrap_channel_maps(model, shape)  # as remove_channels will: the groups then match
    graph = build_graph(model, shape)
    for plan in plans:
        module = model.get_submodule(plan.root)
        handler = graph.get_pruner_of_module(module).prune_out_channels
        group = graph.get_pruning_group(module, handler, idxs=list(range(plan.channels)))
        by_units = units is not None and bool(plan.taps)
        score = importance_scores(group, units if by_units else weights)  # one draw: random
        plan.order = np.argsort(score, kind="stable")
        plan.criterion = "units" if by_units else weight_criterion
        if allocation == "global":  # the units' score is a rank: compare their leading key
            plan.scores = units.leading_scores(group) if by_units else score
    model.zero_grad(set_to_none=True)


__all__ = [
    "StructuredPruning",
    "prune_structured",
    "read_unit_scores",
    "ChannelGroup",
    "count_macs",
    "remove_channels",
]


def read_unit_scores(
    clusters_path, names: list[str], margins: bool = False
) -> dict[str, UnitScores]:
    """Each listed tap's label sets, matrix maxima and noise counts (from `clusters`); with
    `margins`, its units' shares of the correct-label margin (`unit_margins`)."""
    from snptool.core.matrix_file import layer_group, open_matrix_file, read_layer_clusters

    scores = {}
    with open_matrix_file(clusters_path) as handle:
        for name in names:
            group = layer_group(handle, name)
            layer = read_layer_clusters(group)
            margin = None
            if margins:
                matrix = group["matrix"]
                priors = matrix.attrs.get("class_samples")
                margin = unit_margins(matrix[()].astype(np.float64), priors)
            scores[name] = UnitScores(layer.label_sets(), layer.maximum, layer.noise, margin)
    return scores


@dataclass(frozen=True)
class StructuredPruning:
    """The channel-pruned model and what its checkpoint records."""

    model: nn.Module
    arch: dict[str, Any]
    groups: list[ChannelGroup]
    fraction: float
    record: dict[str, Any]


def select_plans(
    model, shape, names: list[str], config: RemovalConfig, *, fill: bool
) -> tuple[list[GroupPlan], dict[str, str]]:
    """The groups to prune: those the taps `names` read, plus every other prunable group for
    a weight criterion without taps or where the matrices' ranking is `fill`ed by a weight
    criterion; why the others are left."""
    wrapped = _wrapped_copy(model, shape)
    graph = build_graph(wrapped, shape)
    every, refused, skipped = plan_groups(wrapped, shape, names, graph, config.grouping_seconds)
    if not names:
        plans, left = every, refused
    elif fill:
        plans, left = every, {**refused, **skipped}
    else:
        plans, left = [p for p in every if p.taps], skipped
    if not plans:
        listed = "; ".join(f"{k}: {v}" for k, v in list(left.items())[:3])
        hint = (
            "list other layers with --layers (`snptool layers` shows them)"
            if names
            else "the model has no group of channels Torch-Pruning can remove"
        )
        what = f"the channels of {', '.join(names)}" if names else "no channel"
        raise LayerError(f"{what} cannot be removed ({listed}); {hint}.")
    return plans, left


def group_margins(
    plans: list[GroupPlan], scores: dict[str, UnitScores] | None
) -> dict[str, np.ndarray]:
    """Each group's channels' `margin` (`unit_margins`), averaged over the taps that read it,
    for `margin-mass` allocation: every pruned group needs a tap with matrices."""
    blind = [p.root for p in plans if not p.taps]
    if scores is None or blind:
        where = f"the groups of {', '.join(blind[:3])} have none" if blind else "none given"
        raise UsageError(
            "--allocation margin-mass divides the removal by the matrices of every pruned "
            f"group ({where}); give --clusters and list a tap of every group with --layers, "
            "or use another --allocation."
        )
    return {p.root: np.mean([scores[t].margin for t in p.taps], axis=0) for p in plans}


def _wrapped_copy(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    trial = _shape_copy(model)
    wrap_channel_maps(trial, shape)
    return trial


def prune_structured(
    checkpoint,
    clusters_path,
    names: list[str],
    config: RemovalConfig,
    batches: Batches | None = None,
    *,
    by_units: bool,
    weight_criterion: str | None,
    seed: int = 0,
) -> StructuredPruning:
    """Remove whole channels / nodes of the groups the taps `names` read, or of every prunable
    group (see the module docstring). `by_units`: the matrices order the tapped groups;
    `weight_criterion` orders the others (`batches`, prepared images and labels, feed Taylor)."""
    shape = checkpoint.input_spec.shape
    model = copy.deepcopy(checkpoint.model).eval()
    dense = (module_attributes(model), tensor_shapes(model))
    fill = by_units and weight_criterion is not None
    plans, left = select_plans(model, shape, names, config, fill=fill)
    allocation = config.allocation if config.target_macs is not None else "uniform"
    units, scores = None, None
    margins = allocation == "margin-mass" or (by_units and "margin" in config.ranking)
    if by_units or margins:
        scores = read_unit_scores(clusters_path, names, margins)
    if by_units:
        taps_of = {model.get_submodule(p.root): p.taps for p in plans}
        units = UnitsImportance(scores, taps_of, config.ranking, config.coverage)
    order_groups(model, shape, plans, units, weight_criterion, batches, seed, allocation)
    dense_macs, dense_params = count_macs(model, shape), count_parameters(model)
    search = Search(model, shape, plans, config, dense_macs)
    fraction, overrides, parameter = config.remove_fraction, {}, None
    if allocation == "global":
        by_root = {p.root: p.scores for p in plans}
        fraction, parameter = global_threshold(search, by_root, config.target_macs)
    elif allocation == "margin-mass":
        by_root = group_margins(plans, scores)
        fraction, parameter = margin_mass_share(search, by_root, config.target_macs)
    elif config.target_macs is not None:
        low, fraction = fraction_for_macs(search, config.target_macs)
        if allocation == "deepest-first":
            execution = execution_order(model, shape)
            overrides = step_down_deepest(search, execution, config.target_macs, (low, fraction))
            fraction = low if overrides else fraction
    groups = remove_channels(model, shape, plans, search.counts(fraction, overrides))
    model.zero_grad(set_to_none=True)
    channel_maps = unwrap_unchanged(model)
    macs, params = count_pruned_macs(model, shape), count_parameters(model)
    arch = dict(checkpoint.metadata["arch"])
    arch["resized"] = merge_resized(arch.get("resized"), resized_record(dense, model))
    if channel_maps:
        arch["channel_maps"] = {**(arch.get("channel_maps") or {}), **channel_maps}
    record = {
        "channel_groups": [g.to_json() for g in groups],
        "left_dense": left,
        "fraction": fraction if isinstance(fraction, float) else None,  # uniform shares
        "removed_share": 1 - sum(len(g.kept) for g in groups) / sum(g.channels for g in groups),
        "ranking": list(config.ranking) if by_units else None,
        "coverage": config.coverage if by_units else None,
        "fill": weight_criterion if by_units else None,
        "target_macs": config.target_macs,
        "allocation": allocation,
        "allocation_parameter": parameter,  # global: the score threshold; margin-mass: q
        "stepped_down": sorted(overrides),
        "round_to": config.round_to,
        "min_channels": config.min_channels,
        "dense_macs": dense_macs,
        "macs": macs,
        "mac_ratio": macs / dense_macs,
        "dense_params": dense_params,
        "params": params,
        "mac_counter": "torch.utils.flop_counter (FLOPs / 2)",
        "engine": f"torch-pruning {tp.__version__}",
    }
    return StructuredPruning(model, arch, groups, fraction, record)

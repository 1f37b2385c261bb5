"""Channel criteria behind one interface, Torch-Pruning's `Importance`: a score per channel of a
coupled group, the least important removed first.

`UnitsImportance` is ours: it ranks a group's channels by what the single-unit matrices of the
taps that read them say (arXiv 2501.12880; METHODS.md §9): the labels each unit serves, its
maximum, its noise, or its share of the probe's correct-label margin (`unit_margins`), with
`coverage` keeping some units of every label. The weight criteria are Torch-Pruning's own:
`magnitude-channels` (L1 of the group's weights, Li et al. 2017), `taylor` (first-order Taylor on
a few training batches, Molchanov et al. 2019), `lamp` (Lee et al. 2021), `group-norm` (the L2
norm over the coupled group, Fang et al. 2023) and `random-channels` (a seeded draw).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

Batches = list[tuple[torch.Tensor, torch.Tensor]]  # prepared images, labels


@dataclass(frozen=True)
class UnitScores:
    """What the matrices say about one tap's units (from `clusters`); `margin`: the
    `unit_margins` of its matrices."""

    label_sets: list[set[int]]
    maximum: np.ndarray
    noise: np.ndarray
    margin: np.ndarray | None = None


def unit_margins(matrices: np.ndarray, priors: np.ndarray | None = None) -> np.ndarray:
    """Each unit's first-order share of the probe's correct-label margin, from its matrix
    M[u, c, k] (the field unit u alone sends to output k, averaged over inputs of label c):
    removing u moves the margin of label c by about −(M[u, c, c] − M[u, c, k]), so its share
    is Σ_c π_c (M[u, c, c] − mean_{k≠c} M[u, c, k]), with `priors` π the class frequencies
    (default uniform). (Two variants lost to it and to L1 on both screened networks and were
    deleted: against the strongest wrong label, and counting only the labels the unit helps.)"""
    classes = matrices.shape[1]
    priors = np.full(classes, 1 / classes) if priors is None else priors / priors.sum()
    diagonal = np.einsum("ucc->uc", matrices)
    mean_wrong = (matrices.sum(axis=2) - diagonal) / (classes - 1)
    return (diagonal - mean_wrong) @ priors


def removal_order(
    scores: list[UnitScores],
    ranking: tuple[str, ...],
    magnitude: np.ndarray | None = None,
    coverage: int = 0,
) -> np.ndarray:
    """The group's channels, first to remove first: `ranking` keys in priority order
    (`labels`: fewest served first; `maximum`: weakest first; `noise`: most noise first;
    `margin`: smallest share of the correct-label margin first (`unit_margins`);
    `magnitude`: smallest L1 norm of the group's weights first).
    Several taps on one group: the label sets are united, the other scores averaged.
    `coverage` r > 0 moves a channel to the end when removing it would leave a label served
    by fewer than r channels (`covered_order`)."""
    keys = ranking_keys(scores, ranking, magnitude)
    order = np.lexsort([keys[k] for k in reversed(ranking)])
    return covered_order(order, united_label_sets(scores), coverage) if coverage else order


def united_label_sets(scores: list[UnitScores]) -> list[set[int]]:
    """Each channel's labels, united over the taps that read the group."""
    channels = range(len(scores[0].label_sets))
    return [set().union(*(s.label_sets[c] for s in scores)) for c in channels]


def ranking_keys(
    scores: list[UnitScores], ranking: tuple[str, ...], magnitude: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The values of the `ranking` keys per channel, larger keeps longer (`removal_order`)."""
    keys = {}
    for key in ranking:
        if key == "labels":
            keys[key] = np.array([len(s) for s in united_label_sets(scores)], dtype=float)
        elif key == "maximum":
            keys[key] = np.mean([s.maximum for s in scores], axis=0)
        elif key == "noise":
            keys[key] = -np.mean([s.noise for s in scores], axis=0)
        elif key == "magnitude":
            keys[key] = magnitude
        else:
            if any(s.margin is None for s in scores):
                raise ValueError(f"the {key} ranking needs the units' matrices")
            keys[key] = np.mean([s.margin for s in scores], axis=0)
    return keys


def covered_order(order: np.ndarray, label_sets: list[set[int]], coverage: int) -> np.ndarray:
    """`order` with every channel whose removal would leave one of its labels served by fewer
    than `coverage` remaining channels moved to the end (in their original order), so any
    prefix removed keeps the coverage as long as the prefix can."""
    served: dict[int, int] = {}
    for labels in label_sets:
        for label in labels:
            served[label] = served.get(label, 0) + 1
    removable, deferred = [], []
    for channel in order:
        labels = label_sets[channel]
        if all(served[label] > coverage for label in labels):
            for label in labels:
                served[label] -= 1
            removable.append(channel)
        else:
            deferred.append(channel)
    return np.array(removable + deferred, dtype=order.dtype)


class UnitsImportance(tp.importance.Importance):
    """The `units` ranking as an importance: a channel scores its place in `removal_order`
    (0: removed first), from the scores of the taps that read the group's root module."""

    def __init__(
        self,
        scores: dict[str, UnitScores],
        taps_of: dict[nn.Module, list[str]],
        ranking,
        coverage: int = 0,
    ) -> None:
        self.scores, self.taps_of, self.ranking = scores, taps_of, tuple(ranking)
        self.coverage = coverage

    def covers(self, module: nn.Module) -> bool:
        """Whether the matrices rank the group rooted at `module` (some tap reads it)."""
        return bool(self.taps_of.get(module))

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        taps = self.taps_of[group[0].dep.target.module]
        magnitude = group_magnitude(group) if "magnitude" in self.ranking else None
        order = removal_order(
            [self.scores[t] for t in taps], self.ranking, magnitude, self.coverage
        )
        importance = torch.empty(len(order), dtype=torch.float64)
        importance[torch.as_tensor(order)] = torch.arange(len(order), dtype=torch.float64)
        return importance

    @torch.no_grad()
    def leading_scores(self, group) -> np.ndarray:
        """The first ranking key's values of the group's channels over their mean magnitude
        (the group normalisation Torch-Pruning gives its own scores): what `global`
        allocation compares across groups."""
        taps = self.taps_of[group[0].dep.target.module]
        lead = self.ranking[0]
        magnitude = group_magnitude(group) if lead == "magnitude" else None
        values = ranking_keys([self.scores[t] for t in taps], (lead,), magnitude)[lead]
        scale = np.abs(values).mean()
        return values / scale if scale > 0 else values


def l1_importance() -> tp.importance.Importance:
    """Torch-Pruning's L1 norm of each channel's weights over the coupled modules: the
    `magnitude-channels` criterion and the `magnitude` ranking key."""
    return tp.importance.GroupMagnitudeImportance(p=1)


def group_magnitude(group) -> np.ndarray:
    """The L1 importance of the group's channels."""
    return l1_importance()(group).detach().cpu().numpy()


def _taylor(model: nn.Module, batches: Batches) -> tp.importance.Importance:
    """Taylor scores read the gradients of the cross-entropy on `batches`, accumulated here."""
    model.zero_grad(set_to_none=True)
    model.eval()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    return tp.importance.GroupTaylorImportance()


class SeededRandomImportance(tp.importance.Importance):
    """Uniform random scores from one generator, so a seed reproduces the draw (Torch-Pruning's
    `RandomImportance` reads torch's global generator)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)


# The weight criteria by name: (model, training batches, seed) → importance.
WEIGHT_IMPORTANCE: dict[str, Callable[[nn.Module, Batches, int], tp.importance.Importance]] = {
    "magnitude-channels": lambda model, batches, seed: l1_importance(),
    "taylor": lambda model, batches, seed: _taylor(model, batches),
    "lamp": lambda model, batches, seed: tp.importance.LAMPImportance(p=2),
    "group-norm": lambda model, batches, seed: tp.importance.GroupMagnitudeImportance(p=2),
    "random-channels": lambda model, batches, seed: SeededRandomImportance(seed),
}


def weight_importance(
    criterion: str, model: nn.Module, batches: Batches, seed: int = 0
) -> tp.importance.Importance:
    """Torch-Pruning's estimator for a weight criterion (`WEIGHT_IMPORTANCE`)."""
    return WEIGHT_IMPORTANCE[criterion](model, batches, seed)


def importance_scores(group, importance: tp.importance.Importance) -> np.ndarray:
    """The group's channel scores (larger keeps longer), one call of `importance`."""
    return importance(group).detach().cpu().numpy().astype(np.float64)


def importance_order(group, importance: tp.importance.Importance) -> np.ndarray:
    """The group's channels by importance, least important (first removed) first."""
    return np.argsort(importance_scores(group, importance), kind="stable")

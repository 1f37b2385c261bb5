"""Channel criteria behind one interface, Torch-Pruning's `Importance`: a score per channel of a
coupled group, the least important removed first.

`UnitsImportance` is ours: it ranks a group's channels by what the single-unit matrices of the
taps that read them say (arXiv 2501.12880; METHODS.md §9). The weight criteria are
Torch-Pruning's own: `magnitude-channels` (L1 of the group's weights, Li et al. 2017), `taylor`
(first-order Taylor on a few training batches, Molchanov et al. 2019) and `lamp` (Lee et al.
2021).
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
    """What the matrices say about one tap's units (from `clusters`)."""

    label_sets: list[set[int]]
    maximum: np.ndarray
    noise: np.ndarray


def removal_order(
    scores: list[UnitScores], ranking: tuple[str, ...], magnitude: np.ndarray | None = None
) -> np.ndarray:
    """The group's channels, first to remove first: `ranking` keys in priority order
    (`labels`: fewest served first; `maximum`: weakest first; `noise`: most noise first;
    `magnitude`: smallest L1 norm of the group's weights first, a tie-breaker from the
    weights). Several taps on one group: the label sets are united, maxima and noise averaged."""
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


class UnitsImportance(tp.importance.Importance):
    """The `units` ranking as an importance: a channel scores its place in `removal_order`
    (0: removed first), from the scores of the taps that read the group's root module."""

    def __init__(
        self, scores: dict[str, UnitScores], taps_of: dict[nn.Module, list[str]], ranking
    ) -> None:
        self.scores, self.taps_of, self.ranking = scores, taps_of, tuple(ranking)

    def covers(self, module: nn.Module) -> bool:
        """Whether the matrices rank the group rooted at `module` (some tap reads it)."""
        return bool(self.taps_of.get(module))

    @torch.no_grad()
    def __call__(self, group, **kwargs) -> torch.Tensor:
        taps = self.taps_of[group[0].dep.target.module]
        magnitude = group_magnitude(group) if "magnitude" in self.ranking else None
        order = removal_order([self.scores[t] for t in taps], self.ranking, magnitude)
        importance = torch.empty(len(order), dtype=torch.float64)
        importance[torch.as_tensor(order)] = torch.arange(len(order), dtype=torch.float64)
        return importance


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


# The weight criteria by name: (model, training batches) → importance.
WEIGHT_IMPORTANCE: dict[str, Callable[[nn.Module, Batches], tp.importance.Importance]] = {
    "magnitude-channels": lambda model, batches: l1_importance(),
    "taylor": _taylor,
    "lamp": lambda model, batches: tp.importance.LAMPImportance(p=2),
}


def weight_importance(
    criterion: str, model: nn.Module, batches: Batches
) -> tp.importance.Importance:
    """Torch-Pruning's estimator for a weight criterion (`WEIGHT_IMPORTANCE`)."""
    return WEIGHT_IMPORTANCE[criterion](model, batches)


def importance_order(group, importance: tp.importance.Importance) -> np.ndarray:
    """The group's channels by importance, least important (first removed) first."""
    score = importance(group)
    return np.argsort(score.detach().cpu().numpy(), kind="stable")

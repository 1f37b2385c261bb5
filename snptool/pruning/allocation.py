"""Where channel removal goes: how many channels each group loses so that the pruned model
meets a MAC target (`prune --target-macs`, RemovalConfig.allocation).

- `uniform`: every group loses the same share, the smallest that meets the target.
- `deepest-first`: the uniform share, with the deepest groups stepped down to their next
  rounded width one by one where the uniform share would overshoot the target.
- `global`: all groups' channels compete in one ranking, by their criterion's group-normalised
  scores (Torch-Pruning's global pruning: one threshold for the whole model; LAMP's scores are
  built for it); the groups whose channels score low lose more.
- `margin-mass`: the analysis decides: every group keeps the fewest channels that hold the same
  share q of its positive correct-label margin (`importance.unit_margins`), q set so the model
  meets the target; a group whose margin is spread over many channels keeps more of them than
  one where a few channels carry it. The channels removed are still those the method ranks
  last.

Every strategy searches its parameter by bisection over trial prunes of a shape-only copy
(`structured.Search`), so the rounding and the floors of each group are those of the final
prune.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from snptool.core import console
from snptool.errors import UsageError

if TYPE_CHECKING:
    from snptool.pruning.structured import Search

Fractions = dict[str, float]  # a group's root → the share of its channels to remove


def check_reachable(search: Search, target: float) -> None:
    """Raise when removing the most that every group allows leaves more than `target`."""
    best = search.ratio(search.counts(1.0))
    if best > target:
        floor, reachable = search.config.min_channels, math.ceil(best * 1e3) / 1e3
        raise UsageError(
            f"--target-macs {target:g} cannot be reached: removing the most that the "
            f"{len(search.plans)} prunable groups allow (at least {floor} channels kept each) "
            f"leaves {best:.3f} of the dense MACs; ask for at least {reachable:g}, "
            "lower --min-channels, or prune more groups (list more layers, or drop --layers "
            "with a weight criterion)."
        )


def bisect_parameter(
    search: Search,
    fractions_at: Callable[[float], float | Fractions],
    target: float,
    bounds: tuple[float, float],
    steps: int,
    what: str,
) -> tuple[float, float]:
    """(low, high) of a parameter whose `fractions_at` remove more as it grows: `high` the
    smallest value found whose pruned copy has at most `target` × the MACs, `low` the largest
    found above it."""
    low, high = bounds
    with console.progress(f"prune: {what}", steps) as task:
        for _ in range(steps):
            middle = (low + high) / 2
            if search.ratio(search.counts(fractions_at(middle))) <= target:
                high = middle
            else:
                low = middle
            task.advance()
    return low, high


def fraction_for_macs(search: Search, target: float, steps: int = 12) -> tuple[float, float]:
    """(low, high): the smallest uniform fraction whose pruned copy has at most `target` × the
    MACs (`high`), and the largest found above the target (`low`); raise when removing the most
    that every group allows still leaves more."""
    check_reachable(search, target)
    return bisect_parameter(search, lambda f: f, target, (0.0, 1.0), steps, "MAC search")


def step_down_deepest(
    search: Search, execution: list[str], target: float, fractions: tuple[float, float]
) -> dict[str, int]:
    """Removal counts that meet `target` × the dense MACs with the fewest groups moved from
    their width at `fractions[0]` (above the target) to their width at `fractions[1]`, the
    deepest groups first (bisection over how many move); empty when all must move (the
    uniform share at `fractions[1]`)."""
    above, below = (search.counts(f) for f in fractions)
    order = {name: i for i, name in enumerate(execution)}
    moving = sorted(
        (p.root for p in search.plans if above[p.root] != below[p.root]),
        key=lambda root: order.get(root, -1),
        reverse=True,
    )

    def removals(count: int) -> dict[str, int]:
        return {root: below[root] for root in moving[:count]}

    fewest, most = 0, len(moving)  # `most` moved always meets the target
    while most - fewest > 1:
        middle = (fewest + most) // 2
        if search.ratio(search.counts(fractions[0], removals(middle))) <= target:
            most = middle
        else:
            fewest = middle
    return removals(most) if most < len(moving) else {}  # all moved: the uniform share


def below_threshold(scores: dict[str, np.ndarray], threshold: float) -> Fractions:
    """Each group's share of channels scoring below `threshold` (`global` allocation)."""
    return {root: float(np.mean(values < threshold)) for root, values in scores.items()}


def outside_mass(margins: dict[str, np.ndarray], share: float) -> Fractions:
    """Each group's share of channels outside the fewest that hold `share` of its positive
    margin mass (`margin-mass` allocation); a group without positive margin keeps none (the
    floors of `removed_count` then keep its minimum)."""
    fractions = {}
    for root, values in margins.items():
        positive = np.sort(np.clip(values, 0, None))[::-1]
        total = positive.sum()
        if share >= 1:
            kept = len(values)
        elif total <= 0:
            kept = 0
        else:
            kept = int(np.searchsorted(np.cumsum(positive), share * total * (1 - 1e-12))) + 1
        fractions[root] = 1 - min(kept, len(values)) / len(values)
    return fractions


def global_threshold(
    search: Search, scores: dict[str, np.ndarray], target: float, steps: int = 20
) -> tuple[Fractions, float]:
    """The fractions of `global` allocation at the lowest score threshold that meets `target`,
    and that threshold."""
    check_reachable(search, target)
    values = np.concatenate(list(scores.values()))
    bounds = (float(values.min()), float(values.max()) + 1.0)
    _, threshold = bisect_parameter(
        search, lambda t: below_threshold(scores, t), target, bounds, steps, "global threshold"
    )
    return below_threshold(scores, threshold), threshold


def margin_mass_share(
    search: Search, margins: dict[str, np.ndarray], target: float, steps: int = 16
) -> tuple[Fractions, float]:
    """The fractions of `margin-mass` allocation at the largest kept share of the margin mass
    that meets `target`, and that share."""
    check_reachable(search, target)
    _, lost = bisect_parameter(
        search, lambda x: outside_mass(margins, 1 - x), target, (0.0, 1.0), steps, "margin share"
    )
    return outside_mass(margins, 1 - lost), 1 - lost

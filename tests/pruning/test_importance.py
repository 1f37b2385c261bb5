"""Channel criteria behind Torch-Pruning's Importance: the matrices' order and the weights'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from snptool.pruning.importance import (
    UnitScores,
    UnitsImportance,
    covered_order,
    importance_order,
    l1_importance,
    removal_order,
    unit_margins,
    weight_importance,
)


def test_removal_order_is_labels_then_maximum_then_noise_over_coupled_taps():
    first = UnitScores([{1}, set(), {1, 2}, {3}], np.array([0.5, 0.9, 0.3, 0.2]), np.zeros(4))
    second = UnitScores([set(), set(), set(), {4}], np.array([0.5, 0.9, 0.3, 0.2]), np.zeros(4))
    # united label counts 1, 0, 2, 2; unit 3 has the weaker maximum among the two-label units
    assert removal_order([first, second], ("labels", "maximum", "noise")).tolist() == [1, 0, 3, 2]
    assert removal_order([first], ("maximum",)).tolist() == [3, 2, 0, 1]
    noisy = UnitScores([{1}] * 3, np.ones(3), np.array([0, 5, 2]))
    assert removal_order([noisy], ("labels", "noise")).tolist() == [1, 2, 0]
    weights = np.array([0.4, 0.1, 0.2, 0.3])
    assert removal_order([first], ("labels", "magnitude"), weights).tolist() == [1, 3, 0, 2]
    assert removal_order([first], ("magnitude",), weights).tolist() == [1, 2, 3, 0]


def conv_group(model: nn.Module) -> tuple[tp.DependencyGraph, object]:
    """The coupled group of the first conv's output channels (conv, BN, the next conv's input)."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, 8, 8))
    return graph, graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(4)))


def test_units_importance_orders_a_group_as_removal_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    _, group = conv_group(model)
    scores = {"0": UnitScores([{1, 2}, set(), {3}, {1, 2, 3}], np.ones(4), np.zeros(4))}
    units = UnitsImportance(scores, {model[0]: ["0"]}, ("labels", "magnitude"))
    assert units.covers(model[0]) and not units.covers(model[3])
    magnitude = l1_importance()(group).detach().numpy()
    expected = removal_order(list(scores.values()), ("labels", "magnitude"), magnitude)
    assert importance_order(group, units).tolist() == expected.tolist()
    assert expected[0] == 1  # serves no label: removed first


def test_weight_criteria_score_every_channel_of_the_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    _, group = conv_group(model)
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))]
    flat = nn.Sequential(model, nn.Flatten(), nn.LazyLinear(2))
    flat(batches[0][0])  # the Taylor criterion backpropagates a loss through the classifier
    for name in ("magnitude-channels", "taylor", "lamp", "group-norm", "random-channels"):
        order = importance_order(group, weight_importance(name, flat, batches))
        assert sorted(order.tolist()) == [0, 1, 2, 3], name


def test_random_channels_are_drawn_from_the_seed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 2, 3))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, 8, 8))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(16)))

    def draw(seed: int) -> np.ndarray:
        return importance_order(group, weight_importance("random-channels", model, [], seed))

    assert draw(3).tolist() == draw(3).tolist()
    assert draw(3).tolist() != draw(4).tolist()


def hand_made_matrices() -> np.ndarray:
    """Three units, three labels; rows true label c, columns output label k."""
    return np.array(
        [
            # unit 0: a strong expert of label 0 that also pushes label 1's inputs towards 2
            [[4.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]],
            # unit 1: lifts every output alike: large matrix, no margin
            [[5.0, 5.0, 5.0], [5.0, 5.0, 5.0], [5.0, 5.0, 5.0]],
            # unit 2: a modest helper of every label
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        ]
    )


def test_unit_margins_of_a_hand_made_matrix():
    margins = unit_margins(hand_made_matrices())
    # unit 0: label 0: 4 - 0 = 4; label 1: 0 - 1.5 = -1.5; label 2: 0 - 0 = 0 → 2.5 / 3
    np.testing.assert_allclose(margins, [2.5 / 3, 0.0, 1.0])
    # priors weigh the labels: all weight on label 1 makes unit 0 harmful
    weighted = unit_margins(hand_made_matrices(), np.array([0, 10, 0]))
    np.testing.assert_allclose(weighted, [-1.5, 0.0, 1.0])


def test_margin_ranking_removes_the_unit_that_lifts_every_label_first():
    matrices = hand_made_matrices()
    maximum = matrices.max(axis=(1, 2))
    scores = UnitScores([{0}, {0, 1, 2}, {0, 1, 2}], maximum, np.zeros(3), unit_margins(matrices))
    assert removal_order([scores], ("margin",)).tolist() == [1, 0, 2]
    assert removal_order([scores], ("labels", "maximum")).tolist() == [0, 2, 1]
    without = UnitScores(scores.label_sets, maximum, np.zeros(3))
    with pytest.raises(ValueError, match="matrices"):
        removal_order([without], ("margin",))


def test_coverage_defers_the_last_experts_of_a_label():
    label_sets = [{0}, {1}, {0}, {1, 2}, {2}]
    order = np.array([0, 1, 2, 3, 4])
    # r = 1: unit 0 may go (unit 2 still serves 0), unit 1 may go (unit 3 serves 1); unit 2 is
    # then the last of label 0, unit 3 the last of label 1: both deferred; unit 4 may go
    assert covered_order(order, label_sets, 1).tolist() == [0, 1, 4, 2, 3]
    # r = 2: label 0 has three experts, so one of them may go; the single expert of label 1 stays
    assert covered_order(np.array([3, 0, 1, 2]), [{0}, {0}, {0}, {1}], 2).tolist() == [0, 3, 1, 2]
    scores = UnitScores(label_sets, np.ones(5), np.zeros(5))
    assert removal_order([scores], ("noise",), coverage=1).tolist() == [0, 1, 4, 2, 3]

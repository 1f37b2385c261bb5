"""Channel criteria behind Torch-Pruning's Importance: the matrices' order and the weights'."""

from __future__ import annotations

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from snptool.pruning.importance import (
    UnitScores,
    UnitsImportance,
    importance_order,
    l1_importance,
    removal_order,
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
    for name in ("magnitude-channels", "taylor", "lamp"):
        order = importance_order(group, weight_importance(name, flat, batches))
        assert sorted(order.tolist()) == [0, 1, 2, 3], name

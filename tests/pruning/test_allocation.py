"""How a MAC target is shared among the groups: the shares of `global` and `margin-mass`."""

from __future__ import annotations

import numpy as np

from snptool.pruning.allocation import below_threshold, outside_mass


def test_margin_mass_keeps_the_fewest_channels_holding_the_share():
    concentrated = np.array([0.1, 8.0, 0.1, -0.5])  # one channel carries the margin
    spread = np.array([1.0, 1.0, 1.0, 1.0])
    silent = np.array([0.0, -1.0])
    shares = outside_mass({"a": concentrated, "b": spread, "c": silent}, 0.9)
    # a: 8 of 8.2 ≥ 0.9 with one channel; b: 3.6 of 4 needs all four; c: nothing to hold
    assert shares == {"a": 0.75, "b": 0.0, "c": 1.0}
    assert outside_mass({"b": spread}, 0.5) == {"b": 0.5}
    assert outside_mass({"a": concentrated, "c": silent}, 1.0) == {"a": 0.0, "c": 0.0}


def test_global_threshold_removes_the_channels_scoring_below_it_in_every_group():
    scores = {"a": np.array([0.2, 1.5, 0.9, 1.4]), "b": np.array([1.0, 1.0])}
    assert below_threshold(scores, 1.0) == {"a": 0.5, "b": 0.0}
    assert below_threshold(scores, 1.01) == {"a": 0.5, "b": 1.0}
    assert below_threshold(scores, 0.0) == {"a": 0.0, "b": 0.0}

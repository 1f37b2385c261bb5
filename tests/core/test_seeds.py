"""Seeds: a stream's seed is a fixed function of the run's seed (files written by earlier
versions replay with it), and seed_everything makes torch repeat itself."""

from __future__ import annotations

import torch

from snptool.core.seeds import seed_everything, stream_seed


def test_stream_seeds_are_the_recorded_formula_and_never_collide_early():
    assert stream_seed(0, 5) == 5 and stream_seed(3, 7) == 3 * 100_003 + 7
    seeds = {stream_seed(seed, epoch) for seed in range(10) for epoch in range(1000)}
    assert len(seeds) == 10_000


def test_seed_everything_repeats_torch_draws():
    seed_everything(4)
    first = torch.rand(3)
    seed_everything(4)
    assert torch.equal(first, torch.rand(3))

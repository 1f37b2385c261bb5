"""The one hook mechanism: hooks fire in order, can replace outputs, and always go away."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snptool.core.tracing import forward_hooks, leaf_names, trace


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    )


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_fire_in_order_and_are_removed():
    model, seen = tiny(), []
    after = [(name, lambda m, a, o, name=name: seen.append(name)) for name in leaf_names(model)]
    output = trace(model, (3, 32, 32), after=after)
    assert output.shape == (2, 2)
    assert seen == ["0", "1", "2.0", "2.1"] == leaf_names(model)
    assert hook_count(model) == 0


def test_an_output_hook_may_replace_the_output_and_an_input_hook_sees_the_input():
    model, inputs = tiny(), []
    with forward_hooks(
        model,
        before=[("2.1", lambda m, args: inputs.append(args[0].shape))],
        after=[("2.1", lambda m, a, o: torch.zeros_like(o))],
    ):
        output = model(torch.randn(1, 3, 32, 32))
    assert inputs == [torch.Size([1, 3600])] and not output.any()
    assert hook_count(model) == 0


def test_hooks_go_away_when_the_pass_fails():
    model = tiny()

    def fail(module, args, output):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), forward_hooks(model, after=[("1", fail)]):
        model(torch.randn(1, 3, 32, 32))
    assert hook_count(model) == 0

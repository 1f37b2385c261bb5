"""The one way snptool watches a forward pass: hooks on named modules for one block of code.

Every reader of a forward pass (the tap recorder, the layer tracer, execution order, the
channel-map finder, compaction's shapes, the connection checks) registers its hooks here, so
they are always removed again, also when the pass fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from snptool.core.architectures import run_dummy_input

# (module, args, output) → a replacement output, or None to keep it
OutputHook = Callable[[nn.Module, tuple, Any], Any]
# (module, args) → replacement args, or None to keep them
InputHook = Callable[[nn.Module, tuple], Any]


@contextmanager
def forward_hooks(
    model: nn.Module,
    *,
    before: Iterable[tuple[str, InputHook]] = (),
    after: Iterable[tuple[str, OutputHook]] = (),
) -> Iterator[None]:
    """Hooks on the named modules' inputs (`before`) and outputs (`after`) for the block, each
    module's firing in the order given; all removed on exit, even on error."""
    handles = []
    try:
        for name, hook in before:
            handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
        for name, hook in after:
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace(
    model: nn.Module,
    shape: tuple[int, ...],
    *,
    before: Iterable[tuple[str, InputHook]] = (),
    after: Iterable[tuple[str, OutputHook]] = (),
) -> torch.Tensor:
    """One forward pass of a dummy input (`run_dummy_input`) with the hooks; its output."""
    with forward_hooks(model, before=before, after=after):
        return run_dummy_input(model, shape, "the model")


def leaf_names(model: nn.Module) -> list[str]:
    """The modules without children, by qualified name (the root excluded)."""
    return [name for name, module in model.named_modules() if name and not list(module.children())]

"""Name → builder registry for the architectures in model_defs (after timm's `_registry.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    builder: Builder
    description: str  # first line of the builder's docstring
    input_size: tuple[int, int, int]  # (C, H, W) the defaults are built for


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    fn: Builder | None = None, *, input_size: tuple[int, int, int] = (3, 32, 32)
) -> Builder | Callable[[Builder], Builder]:
    """Register a builder under its function name; use bare or as `@register_model(input_size=…)`.

    Raises:
        ValueError: a model of that name is already registered.
    """

    def decorate(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered; pick another function name")
        description = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelEntry(
            name=name,
            builder=builder,
            description=description[0].strip() if description else "",
            input_size=tuple(input_size),
        )
        return builder

    return decorate if fn is None else decorate(fn)


def get_model_entry(name: str) -> ModelEntry:
    """Return the registry entry of `name`.

    Raises:
        KeyError: unknown name; the message lists the known names.
    """
    try:
        return _MODELS[name]
    except KeyError:
        known = ", ".join(list_models())
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name`, passing `kwargs` to its builder."""
    return get_model_entry(name).builder(**kwargs)


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_MODELS)

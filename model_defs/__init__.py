"""Architectures for snptool: a registry of model builders (imports torch, nothing from snptool)."""

from model_defs import cct, efficientnet, lenet, rodib, tree, vgg  # noqa: F401  (importing registers)
from model_defs._registry import (
    ModelEntry,
    create_model,
    get_model_entry,
    list_models,
    register_model,
)

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]

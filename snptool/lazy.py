"""Lazy public surfaces (PEP 562): a package names its API without importing its modules.

`import snptool.deploy.export` must not load the pruning stack, and `snptool --help` must not
load torch, so a package `__init__` maps each public name to the module that defines it and
imports that module on first access.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A module `__getattr__` and `__all__` for `package`, whose `names` map to its modules."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(names)

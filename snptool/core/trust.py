"""Which code a file may make snptool run (docs/file-formats.md#security).

A file's architecture record is data. Rebuilding a model from it runs registered builders
(model_defs, `torchvision:`, `timm:`) only; a `package.module:factory` or `file.py:factory`
it names runs only when the user trusts it: names the same spec (`--arch SPEC`), or trusts
all code (`--trust-code`). The CLI sets the trust for one command; Python code uses
`trust_code(...)` as a context manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class CodeTrust:
    """The code specs the user named, or `everything` for any spec."""

    specs: frozenset[str] = frozenset()
    everything: bool = False

    def allows(self, spec: str) -> bool:
        return self.everything or spec in self.specs


_TRUST: ContextVar[CodeTrust | None] = ContextVar("snptool_code_trust", default=None)
_NONE = CodeTrust()


@contextlib.contextmanager
def trust_code(*specs: str | None, everything: bool = False) -> Iterator[CodeTrust]:
    """Within the block, files may name these code specs (or any, with `everything`)."""
    current = current_trust()
    named = frozenset(s for s in specs if s) | current.specs
    token = _TRUST.set(CodeTrust(named, everything or current.everything))
    try:
        yield current_trust()
    finally:
        _TRUST.reset(token)


def current_trust() -> CodeTrust:
    """The trust in force here (none outside a `trust_code` block)."""
    return _TRUST.get() or _NONE

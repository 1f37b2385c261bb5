"""Flags and parsers shared by several commands, declared once.

Paths are checked by the library, not by click (dir_okay, exists), whose errors take four
lines instead of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snptool.config import InputSpec, LatencyConfig
from snptool.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="File to write (atomically).")]
ArchKwargsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-kwargs", help="Architecture keyword arguments: JSON '{\"k\": v}' or k=v pairs."
    ),
]
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Run any module or file factory a checkpoint's architecture names "
        "(docs/file-formats.md#security).",
    ),
]
TrustedArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="The code spec (module:factory, file.py:factory) the checkpoint was built with, "
        "trusted to run; without it or --trust-code a checkpoint runs registered builders only.",
    ),
]
SizeOpt = Annotated[str | None, typer.Option("--input-size", help="Model input size: S or HxW.")]
ChannelsOpt = Annotated[
    int | None, typer.Option("--channels", help="Model input channels: 1 or 3.")
]
MeanOpt = Annotated[
    str | None, typer.Option("--mean", help="Per-channel mean on [0, 1] pixels, e.g. 0.5,0.5,0.5.")
]
StdOpt = Annotated[
    str | None, typer.Option("--std", help="Per-channel std on [0, 1] pixels, e.g. 0.5,0.5,0.5.")
]
ResizeOpt = Annotated[
    int | None,
    typer.Option("--resize", help="Resize image files' shorter side to this, then centre-crop."),
]


def floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} must be comma-separated numbers, e.g. 0.5,0.5,0.5."
        ) from None


def input_size_of(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(
            f"--input-size {text!r} must be S or HxW with positive integers, e.g. 32 or 224x224."
        )
    return parts[0], parts[1]


def layer_list(values: list[str] | None) -> list[str]:
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


LayerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layer", "-l", help="Layer to tap, LAYER or LAYER:UNIT (repeatable, or comma-separated)."
    ),
]


def batch_sizes(values: list[str] | None) -> tuple[int, ...]:
    if not values:
        return LatencyConfig.batch_sizes
    try:
        return tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(
            f"--batch {','.join(values)!r} must be whole numbers, e.g. --batch 1,8."
        ) from None


def foreign_input_spec(
    channels: int | None, size: str | None, mean: str | None, std: str | None
) -> InputSpec | None:
    """The preprocessing flags of an ONNX file without snptool metadata (None if none given;
    unset ones take the defaults: 3 channels, 32×32, mean = std = 0.5)."""
    if channels is None and size is None and mean is None and std is None:
        return None
    parsed = input_size_of(size) or (32, 32)
    defaults = InputSpec(channels=channels or 3)
    return InputSpec(
        channels=channels or 3,
        height=parsed[0],
        width=parsed[1],
        mean=floats(mean, "--mean") or defaults.mean,
        std=floats(std, "--std") or defaults.std,
    )

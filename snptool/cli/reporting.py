"""The report command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snptool.cli.app import command
from snptool.cli.options import JsonOpt
from snptool.config import ReportConfig


@command()
def report(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Matrix files (with clusters), probe files, pruned checkpoints, and the --json "
            "output of prune, latency, export, committee, heads or sweep."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="HTML file to write (self-contained, atomic).")
    ],
    png_dir: Annotated[
        Path | None, typer.Option("--png-dir", help="Also write every figure as a PNG here.")
    ] = None,
    unit: Annotated[
        list[str] | None,
        typer.Option(
            "--unit",
            help="Heat map of this unit, LAYER:INDEX (repeatable) [default: the strongest and "
            "the noisiest unit of each layer].",
        ),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="The page's title.")] = ReportConfig.title,
    json_output: JsonOpt = False,
) -> None:
    """Draw what the pipeline wrote into one self-contained HTML page (and PNGs).

    Example: snptool report matrices.h5 probes.safetensors prune.json latency.json -o report.html
    """
    from snptool.core import console
    from snptool.report.report import run_report

    units = tuple(u for value in unit or [] for u in value.split(",") if u)
    result = run_report(inputs, output, ReportConfig(title=title, units=units), png_dir=png_dir)
    console.log(
        f"{len(result.figures)} figures from {len(result.inputs)} inputs → {result.output} "
        f"({result.bytes / 1e6:.2f} MB, {result.seconds:.1f} s)"
    )
    if json_output:
        console.emit_json(result.to_json())

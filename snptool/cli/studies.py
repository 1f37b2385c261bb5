"""The sweep command: the generalised-LeNet power law."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from snptool.cli.app import command
from snptool.cli.config_flags import config_flags
from snptool.cli.options import (
    JsonOpt,
)
from snptool.config import DataConfig, SweepConfig


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(SweepConfig, skip=("seed",), helps={"epochs": "Epochs of every run."})
def sweep(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Folder of the runs and sweep.json (created if absent)."
        ),
    ],
    data: Annotated[
        str, typer.Option("--data", help="Data spec: digits, cifar10[:DIR], npz:FILE, …")
    ] = "digits",
    *,
    config: SweepConfig,
    data_config: DataConfig,
    json_output: JsonOpt = False,
) -> None:
    """Fit the generalised-LeNet power law error ∝ d1^(−ρ) over d1 × seed training runs.

    Example: snptool sweep --data digits --d1 2,4,8 --seeds 0,1 --epochs 5 -o runs/sweep --json
    """
    from snptool.core import console
    from snptool.training.sweep import run_sweep

    result = run_sweep(data, output, config, data_config=data_config)
    _show_sweep(result)
    if json_output:
        console.emit_json(result.to_json())


def _show_sweep(result: Any) -> None:
    from snptool.core import console

    rows = [(r["d1"], r["d2"], r["runs"], r["mean"], r["std"]) for r in result.per_d1()]
    console.table(
        f"lenet sweep on {result.data} ({result.config['accuracy']} epoch)",
        ["d1", "d2", "runs", "mean error", "± std"],
        rows,
    )
    fit = result.fit
    interval = (
        f", {fit.confidence:.0%} interval [{fit.rho_ci[0]:.3f}, {fit.rho_ci[1]:.3f}]"
        if fit.rho_ci
        else ""
    )
    console.log(
        f"error ≈ {fit.prefactor:.3g}·d1^({-fit.rho:.3f}): ρ {fit.rho:.3f}{interval}, "
        f"R² {fit.r2:.3f} (fit over {fit.method}, {fit.points} points) → {result.output}"
    )

"""The prune command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snptool.cli.app import command
from snptool.cli.config_flags import config_flags
from snptool.cli.options import (
    JsonOpt,
    OutputOpt,
    TrustCodeOpt,
    TrustedArchOpt,
    layer_list,
)
from snptool.config import DataConfig, PruneConfig


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(PruneConfig)
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint to prune.")],
    output: OutputOpt,
    clusters_file: Annotated[
        Path | None,
        typer.Option(
            "--clusters",
            help="Matrix file with clusters (`snptool clusters`); magnitude-channels, taylor "
            "and lamp need none (without --layers they prune every prunable group).",
        ),
    ] = None,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            help="Comma-separated consecutive analysed layers: one chain (repeatable for "
            "several chains; default: all in the file).",
        ),
    ] = None,
    probes: Annotated[
        Path | None, typer.Option("--probes", help="Probe file, for --classifier probe.")
    ] = None,
    *,
    config: PruneConfig,
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the checkpoint's).")
    ] = None,
    data_config: DataConfig,
    arch: TrustedArchOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Prune connections by the labels units serve (AFCC, METHODS.md §8), or remove whole
    channels (--method units), and fine-tune.

    Example: snptool prune model.safetensors --clusters matrices.h5 --method units
    --target-macs 0.5 --finetune-epochs 5 -o pruned.safetensors
    """
    from snptool.core import console
    from snptool.pruning.prune import run_prune

    result = run_prune(
        checkpoint,
        clusters_file,
        output,
        config,
        layers=[layer_list([chain]) for chain in layers] if layers else None,
        probes_path=probes,
        data_spec=data,
        data_config=data_config,
    )
    console.table(
        f"{result.method}: accuracy {result.dense_accuracy:.4f} dense, "
        f"{result.accuracy_before:.4f} pruned, {result.accuracy_after:.4f} fine-tuned "
        f"→ {result.output}",
        ["layer", "module", "weights", "dilution"],
        [(x.layer, x.module, x.weights, x.dilution) for x in result.layers],
    )
    if result.size:
        size = result.size
        console.log(
            f"MACs {size['macs']:,} of {size['dense_macs']:,} "
            f"({size['mac_ratio']:.3f}), parameters {size['params']:,} of "
            f"{size['dense_params']:,}, {size['removed_share']:.3f} of the groups' channels "
            "removed"
        )
    if json_output:
        console.emit_json(result.to_json())

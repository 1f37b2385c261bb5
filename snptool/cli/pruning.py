"""The prune command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snptool.cli.app import command
from snptool.cli.options import (
    BatchSizeOpt,
    ClassesOpt,
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    EpochLrDecayOpt,
    JsonOpt,
    LrOpt,
    MomentumOpt,
    NesterovOpt,
    NumClassesSubsetOpt,
    OutputOpt,
    SeedOpt,
    SplitSeedOpt,
    TestFractionOpt,
    WeightDecayOpt,
    WorkersOpt,
    data_config_of,
    layer_list,
)
from snptool.config import DataConfig, PruneConfig


@command()
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
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="afcc, andc, afcc-grouped, random, magnitude, heads; channel removal: units "
            "(by the matrices), magnitude-channels, taylor or lamp (Torch-Pruning's criteria).",
        ),
    ] = PruneConfig.method,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            help="Comma-separated consecutive analysed layers: one chain (repeatable for "
            "several chains; default: all in the file).",
        ),
    ] = None,
    classifier: Annotated[
        str, typer.Option(help="model (keep it) or probe (the last layer's probe, as the authors).")
    ] = PruneConfig.classifier,
    probes: Annotated[
        Path | None, typer.Option("--probes", help="Probe file, for --classifier probe.")
    ] = None,
    andc_threshold: Annotated[
        float | None,
        typer.Option(help="andc: diagonal threshold (default: the clusters' threshold)."),
    ] = PruneConfig.andc_threshold,
    remove_fraction: Annotated[
        float,
        typer.Option(
            help="heads, units, …: remove at least this share of each layer's heads / channels."
        ),
    ] = PruneConfig.remove_fraction,
    target_macs: Annotated[
        float | None,
        typer.Option(help="units, …: remove channels until MACs ≤ this ratio of the dense MACs."),
    ] = PruneConfig.target_macs,
    ranking: Annotated[
        str,
        typer.Option(
            help="units: removal order keys, first decides (labels, maximum, noise, magnitude)."
        ),
    ] = ",".join(PruneConfig.ranking),
    taylor_batches: Annotated[
        int, typer.Option(help="taylor: training batches whose gradients score channels.")
    ] = PruneConfig.taylor_batches,
    round_to: Annotated[
        int, typer.Option(help="units, …: keep a multiple of this many channels per group.")
    ] = PruneConfig.round_to,
    min_channels: Annotated[
        int,
        typer.Option(
            help="units, …: keep at least this many channels per group; a --target-macs "
            "that needs fewer is refused."
        ),
    ] = PruneConfig.min_channels,
    fill: Annotated[
        str | None,
        typer.Option(
            help="units: also prune the groups without matrices, ordered by this weight "
            "criterion (magnitude-channels, taylor or lamp)."
        ),
    ] = PruneConfig.fill,
    grouping_seconds: Annotated[
        float,
        typer.Option(
            help="units, …: CPU seconds Torch-Pruning may take to group the channels (0: no limit)."
        ),
    ] = PruneConfig.grouping_seconds,
    allocation: Annotated[
        str,
        typer.Option(
            help="units, …: deepest-first (step the deepest groups down to meet --target-macs) "
            "or uniform (every group the same share)."
        ),
    ] = PruneConfig.allocation,
    groups: Annotated[
        int, typer.Option(help="Label groups of afcc-grouped (divides every layer's units).")
    ] = PruneConfig.groups,
    label_grouping: Annotated[
        str, typer.Option(help="afcc-grouped label groups: cooccurrence or contiguous.")
    ] = PruneConfig.label_grouping,
    finetune_epochs: Annotated[
        int, typer.Option(help="Fine-tuning epochs with the masks enforced.")
    ] = PruneConfig.finetune_epochs,
    train_layers: Annotated[
        str | None,
        typer.Option(
            "--train-layers",
            help="Comma-separated modules to fine-tune, or all (default: the pruned ones).",
        ),
    ] = None,
    batch_size: BatchSizeOpt = PruneConfig.batch_size,
    lr: LrOpt = PruneConfig.learning_rate,
    momentum: MomentumOpt = PruneConfig.momentum,
    nesterov: NesterovOpt = PruneConfig.nesterov,
    weight_decay: WeightDecayOpt = PruneConfig.weight_decay,
    lr_decay: EpochLrDecayOpt = PruneConfig.lr_decay,
    augment: Annotated[
        bool, typer.Option(help="Random translation and flip while fine-tuning.")
    ] = PruneConfig.augment,
    freeze_bn_stats: Annotated[
        bool, typer.Option(help="Keep BatchNorm running statistics fixed while fine-tuning.")
    ] = PruneConfig.freeze_bn_stats,
    distill: Annotated[
        float,
        typer.Option(help="Weight (0-1) of distillation from the dense model while fine-tuning."),
    ] = PruneConfig.distill,
    distill_temperature: Annotated[
        float, typer.Option(help="Softmax temperature of the distillation loss.")
    ] = PruneConfig.distill_temperature,
    seed: SeedOpt = PruneConfig.seed,
    device: DeviceOpt = PruneConfig.device,
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the checkpoint's).")
    ] = None,
    test_fraction: TestFractionOpt = None,
    split_seed: SplitSeedOpt = None,
    classes: ClassesOpt = None,
    num_classes_subset: NumClassesSubsetOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = DataConfig.workers,
    json_output: JsonOpt = False,
) -> None:
    """Prune connections by the labels units serve (AFCC, METHODS.md §8), or remove whole
    channels (--method units), and fine-tune.

    Example: snptool prune model.safetensors --clusters matrices.h5 --method units
    --target-macs 0.5 --finetune-epochs 5 -o pruned.safetensors
    """
    from snptool.core import console
    from snptool.pruning.prune import run_prune

    config = PruneConfig(
        method=method,
        classifier=classifier,
        andc_threshold=andc_threshold,
        remove_fraction=remove_fraction,
        target_macs=target_macs,
        ranking=tuple(layer_list([ranking])),
        taylor_batches=taylor_batches,
        round_to=round_to,
        min_channels=min_channels,
        fill=fill,
        grouping_seconds=grouping_seconds,
        allocation=allocation,
        groups=groups,
        label_grouping=label_grouping,
        finetune_epochs=finetune_epochs,
        train_layers=tuple(layer_list([train_layers] if train_layers else None)),
        batch_size=batch_size,
        learning_rate=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        augment=augment,
        freeze_bn_stats=freeze_bn_stats,
        distill=distill,
        distill_temperature=distill_temperature,
        seed=seed,
        device=device,
    )
    result = run_prune(
        checkpoint,
        clusters_file,
        output,
        config,
        layers=[layer_list([chain]) for chain in layers] if layers else None,
        probes_path=probes,
        data_spec=data,
        data_config=data_config_of(
            test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
        ),
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
            f"{size['dense_params']:,}, {size['fraction']:.3f} of each group's channels removed"
        )
    if json_output:
        console.emit_json(result.to_json())

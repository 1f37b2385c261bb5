"""The sweep command: the generalised-LeNet power law."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from snptool.cli.app import command
from snptool.cli.options import (
    AmpOpt,
    AugmentOpt,
    BatchSizeOpt,
    ChannelsLastOpt,
    ClassesOpt,
    CutmixOpt,
    DataRootOpt,
    DecayNormBiasOpt,
    DeviceOpt,
    DownloadOpt,
    EvalBatchSizeOpt,
    FlipOpt,
    JsonOpt,
    LabelSmoothingOpt,
    LrOpt,
    LrStepOpt,
    MinLrOpt,
    MixProbOpt,
    MixupOpt,
    MomentumOpt,
    NesterovOpt,
    NumClassesSubsetOpt,
    OptimizerOpt,
    ScheduleOpt,
    SplitSeedOpt,
    StepLrDecayOpt,
    TestFractionOpt,
    TranslateOpt,
    WarmupOpt,
    WeightDecayOpt,
    WorkersOpt,
    data_config_of,
    ints,
    joined,
)
from snptool.config import DataConfig, SweepConfig, TrainConfig


@command()
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
    d1: Annotated[
        str, typer.Option("--d1", help="First-layer filter counts, comma-separated.")
    ] = joined(SweepConfig.d1),
    ratio: Annotated[
        float, typer.Option(help="d2 / d1 (d2 = round(ratio·d1)); LeNet-5's 16/6.")
    ] = SweepConfig.ratio,
    seeds: Annotated[str, typer.Option(help="Training seeds, comma-separated.")] = joined(
        SweepConfig.seeds
    ),
    fc_widths: Annotated[
        str, typer.Option(help="Hidden FC widths, comma-separated (LeNet-5's 120,84).")
    ] = joined(SweepConfig.fc_widths),
    accuracy: Annotated[
        str, typer.Option(help="Score each run by its final or its best test epoch.")
    ] = SweepConfig.accuracy,
    fit: Annotated[
        str, typer.Option(help="Fit every run (runs) or the per-d1 mean errors (means).")
    ] = SweepConfig.fit,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples of the seeds for ρ's interval (0: none).")
    ] = SweepConfig.bootstrap,
    confidence: Annotated[
        float, typer.Option(help="Level of the percentile interval.")
    ] = SweepConfig.confidence,
    bootstrap_seed: Annotated[
        int, typer.Option(help="Seed of the bootstrap.")
    ] = SweepConfig.bootstrap_seed,
    epochs: Annotated[int, typer.Option(help="Epochs of every run.")] = TrainConfig.epochs,
    batch_size: BatchSizeOpt = TrainConfig.batch_size,
    lr: LrOpt = TrainConfig.learning_rate,
    momentum: MomentumOpt = TrainConfig.momentum,
    nesterov: NesterovOpt = TrainConfig.nesterov,
    weight_decay: WeightDecayOpt = TrainConfig.weight_decay,
    lr_decay: StepLrDecayOpt = TrainConfig.lr_decay,
    lr_step: LrStepOpt = TrainConfig.lr_step,
    augment: AugmentOpt = TrainConfig.augment,
    translate: TranslateOpt = TrainConfig.translate,
    flip: FlipOpt = TrainConfig.flip,
    device: DeviceOpt = TrainConfig.device,
    eval_batch_size: EvalBatchSizeOpt = TrainConfig.eval_batch_size,
    optimizer: OptimizerOpt = TrainConfig.optimizer,
    schedule: ScheduleOpt = TrainConfig.schedule,
    min_lr: MinLrOpt = TrainConfig.min_lr,
    warmup_epochs: WarmupOpt = TrainConfig.warmup_epochs,
    label_smoothing: LabelSmoothingOpt = TrainConfig.label_smoothing,
    mixup: MixupOpt = TrainConfig.mixup,
    cutmix: CutmixOpt = TrainConfig.cutmix,
    mix_prob: MixProbOpt = TrainConfig.mix_prob,
    decay_norm_bias: DecayNormBiasOpt = TrainConfig.decay_norm_bias,
    amp: AmpOpt = TrainConfig.amp,
    channels_last: ChannelsLastOpt = TrainConfig.channels_last,
    test_fraction: TestFractionOpt = DataConfig.test_fraction,
    split_seed: SplitSeedOpt = DataConfig.split_seed,
    classes: ClassesOpt = None,
    num_classes_subset: NumClassesSubsetOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = DataConfig.workers,
    json_output: JsonOpt = False,
) -> None:
    """Fit the generalised-LeNet power law error ∝ d1^(−ρ) over d1 × seed training runs.

    Example: snptool sweep --data digits --d1 2,4,8 --seeds 0,1 --epochs 5 -o runs/sweep --json
    """
    from snptool.core import console
    from snptool.training.sweep import run_sweep

    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        lr_step=lr_step,
        augment=augment,
        translate=translate,
        flip=flip,
        device=device,
        eval_batch_size=eval_batch_size,
        optimizer=optimizer,
        schedule=schedule,
        min_lr=min_lr,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        mixup=mixup,
        cutmix=cutmix,
        mix_prob=mix_prob,
        decay_norm_bias=decay_norm_bias,
        amp=amp,
        channels_last=channels_last,
    )
    config = SweepConfig(
        d1=ints(d1, "--d1"),
        ratio=ratio,
        seeds=ints(seeds, "--seeds"),
        fc_widths=ints(fc_widths, "--fc-widths"),
        accuracy=accuracy,
        fit=fit,
        bootstrap=bootstrap,
        confidence=confidence,
        bootstrap_seed=bootstrap_seed,
        train=train_config,
    )
    data_config = data_config_of(
        test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
    )
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

"""Flags and parsers shared by several commands, declared once.

Paths are checked by the library, not by click (dir_okay, exists), whose errors take four
lines instead of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snptool.config import DataConfig, LatencyConfig
from snptool.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="File to write (atomically).")]
ArchKwargsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch-kwargs", help="Architecture keyword arguments: JSON '{\"k\": v}' or k=v pairs."
    ),
]
TestFractionOpt = Annotated[
    float | None,
    typer.Option(
        "--test-fraction",
        help="Test share where a data set has no test split [default: the checkpoint's, else 0.2].",
    ),
]
SplitSeedOpt = Annotated[
    int | None,
    typer.Option(
        "--split-seed", help="Seed of that train/test split [default: the checkpoint's, else 0]."
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="Keep only these labels (names or indices, e.g. airplane,cat,ship), relabelled in "
        "the data set's order [default: the checkpoint's subset, else all].",
    ),
]
NumClassesSubsetOpt = Annotated[
    int | None,
    typer.Option(
        "--num-classes-subset", help="Keep only the data set's first N labels (see --classes)."
    ),
]
DataRootOpt = Annotated[
    str | None,
    typer.Option(
        "--data-root", help="Folder of downloadable data sets (default ~/.cache/snptool/data)."
    ),
]
DownloadOpt = Annotated[
    bool, typer.Option("--download", help="Fetch a missing torchvision data set (needs network).")
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", help="Data-loading worker processes for image folders.")
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

# The SGD flags of `train` and `probe` (defaults differ, so each command sets its own).
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Mini-batch size.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Initial learning rate.")]
MomentumOpt = Annotated[float, typer.Option("--momentum", help="SGD momentum.")]
NesterovOpt = Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum.")]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", help="L2 weight decay.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of initialisation and shuffling.")]
EpochLrDecayOpt = Annotated[float, typer.Option("--lr-decay", help="lr × this every epoch.")]

# The training recipe's flags of `train` and `sweep`.
StepLrDecayOpt = Annotated[
    float, typer.Option("--lr-decay", help="q: lr is multiplied by q every --lr-step epochs.")
]
LrStepOpt = Annotated[int, typer.Option("--lr-step", help="Δt: epochs between lr decays.")]
AugmentOpt = Annotated[
    bool, typer.Option("--augment/--no-augment", help="Random translation and flip.")
]
TranslateOpt = Annotated[int, typer.Option("--translate", help="Largest translation in pixels.")]
FlipOpt = Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flip.")]
EvalBatchSizeOpt = Annotated[
    int, typer.Option("--eval-batch-size", help="Batch size of the per-epoch test.")
]
OptimizerOpt = Annotated[
    str, typer.Option("--optimizer", help="sgd or adamw (decoupled --weight-decay).")
]
ScheduleOpt = Annotated[
    str, typer.Option("--schedule", help="step (--lr-decay every --lr-step) or cosine to --min-lr.")
]
MinLrOpt = Annotated[
    float, typer.Option("--min-lr", help="The cosine's last lr and the warm-up's first.")
]
WarmupOpt = Annotated[
    int, typer.Option("--warmup-epochs", help="Epochs of per-step linear lr warm-up.")
]
LabelSmoothingOpt = Annotated[
    float, typer.Option("--label-smoothing", help="Label smoothing ε of the loss.")
]
MixupOpt = Annotated[float, typer.Option("--mixup", help="Mixup's Beta(α, α) α (0: off).")]
CutmixOpt = Annotated[
    float, typer.Option("--cutmix", help="CutMix's α (0: off); with --mixup, one per batch.")
]
MixProbOpt = Annotated[float, typer.Option("--mix-prob", help="Probability that a batch is mixed.")]
AmpOpt = Annotated[
    str, typer.Option("--amp", help="Autocast the training pass: off, bf16, fp16 (CUDA).")
]
ChannelsLastOpt = Annotated[
    bool,
    typer.Option("--channels-last/--no-channels-last", help="NHWC conv models on CUDA."),
]
DecayNormBiasOpt = Annotated[
    bool,
    typer.Option(
        "--decay-norm-bias/--no-decay-norm-bias", help="Weight decay on biases and norm scales."
    ),
]


def data_config_of(
    test_fraction: float | None,
    split_seed: int | None,
    root: str | None,
    download: bool,
    workers: int,
    classes: str | None = None,
    num_classes_subset: int | None = None,
) -> DataConfig:
    return DataConfig(
        test_fraction=test_fraction,
        split_seed=split_seed,
        root=root,
        download=download,
        workers=workers,
        classes=None if classes is None else tuple(c.strip() for c in classes.split(",")),
        num_classes_subset=num_classes_subset,
    )


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


def ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} must be comma-separated whole numbers, e.g. 4,8,16."
        ) from None


def joined(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)

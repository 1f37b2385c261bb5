"""The `snptool` command line: one short function per subcommand over the library API.

Human output goes to stderr; `--json` prints the result on stdout. Bad input ends with one
line on stderr and exit status 2 (a traceback only with --debug or SNPTOOL_DEBUG=1).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from snptool import __version__
from snptool.config import (
    ClustersConfig,
    CommitteeConfig,
    DataConfig,
    EvaluateConfig,
    ExportConfig,
    HeadsConfig,
    LatencyConfig,
    MatrixConfig,
    ProbeConfig,
    PruneConfig,
    ReportConfig,
    SweepConfig,
    TrainConfig,
)
from snptool.errors import SnpError, UsageError

app = typer.Typer(
    name="snptool",
    help="Explain and prune trained image classifiers by the labels every single unit serves.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
_state = {"debug": bool(os.environ.get("SNPTOOL_DEBUG"))}

# Flags shared by several commands, declared once. Paths are checked by the library, not by
# click (dir_okay, exists), whose errors take four lines instead of one.
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
DecayNormBiasOpt = Annotated[
    bool,
    typer.Option(
        "--decay-norm-bias/--no-decay-norm-bias", help="Weight decay on biases and norm scales."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"snptool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Explain and prune trained image classifiers by the labels every single unit serves."""
    from snptool import console

    _state["debug"] = debug or bool(os.environ.get("SNPTOOL_DEBUG"))
    console.set_quiet(quiet)


def _reports_errors(command: Callable) -> Callable:
    """Turn SnpError into one stderr line + exit 2, and Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from snptool import console

        try:
            return command(*args, **kwargs)
        except SnpError as error:
            if _state["debug"]:
                raise
            console.error(str(error))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            console.error("interrupted; no output was written or replaced.")
            raise typer.Exit(130) from None

    return wrapper


def _command(name: str | None = None) -> Callable:
    def register(function: Callable) -> Callable:
        return app.command(name)(_reports_errors(function))

    return register


def _data_config(
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


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} must be comma-separated numbers, e.g. 0.5,0.5,0.5."
        ) from None


def _size(text: str | None) -> tuple[int, int] | None:
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


@_command()
def train(
    output: OutputOpt,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Architecture spec (see `snptool models`).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data spec: digits, cifar10[:DIR], npz:FILE, … [default: digits, or as resumed]",
        ),
    ] = None,
    arch_kwargs: ArchKwargsOpt = None,
    epochs: Annotated[
        int, typer.Option(help="Epochs in total (a resumed run continues to this).")
    ] = TrainConfig.epochs,
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
    seed: SeedOpt = TrainConfig.seed,
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
    resume: Annotated[
        Path | None, typer.Option(help="Continue from the last state a train run wrote.")
    ] = None,
    best_output: Annotated[
        Path | None, typer.Option(help="Where the best epoch goes (default OUT.best.safetensors).")
    ] = None,
    input_size: SizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    test_fraction: TestFractionOpt = DataConfig.test_fraction,
    split_seed: SplitSeedOpt = DataConfig.split_seed,
    classes: ClassesOpt = None,
    num_classes_subset: NumClassesSubsetOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = DataConfig.workers,
    json_output: JsonOpt = False,
) -> None:
    """Train a model with the research's recipe; writes the last and the best epoch.

    Example: snptool train --arch vgg11 --data cifar10 --epochs 300 -o vgg11.safetensors
    """
    from snptool import console
    from snptool.architectures import parse_arch_kwargs
    from snptool.train import InputOverrides, run_train

    config = TrainConfig(
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
        seed=seed,
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
    )
    inputs = InputOverrides(
        channels=channels,
        size=_size(input_size),
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        resize=resize,
    )
    result = run_train(
        arch,
        data,
        output,
        config,
        arch_kwargs=parse_arch_kwargs(arch_kwargs),
        data_config=_data_config(
            test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
        ),
        inputs=inputs,
        resume=resume,
        best_output=best_output,
    )
    console.log(
        f"best test accuracy {result.best_accuracy:.4f} (epoch {result.best_epoch}) "
        f"→ {result.best_output}; "
        f"final {result.final_accuracy:.4f} → {result.output}"
    )
    if json_output:
        console.emit_json(result.to_json())


@_command("import")
def import_weights(
    weights: Annotated[Path, typer.Argument(help="Third-party .pt/.pth/.th or .safetensors file.")],
    output: OutputOpt,
    arch: Annotated[str, typer.Option("--arch", help="Architecture spec of the weights.")] = "",
    arch_kwargs: ArchKwargsOpt = None,
    num_classes: Annotated[
        int | None, typer.Option(help="Number of classes (checked against the model).")
    ] = None,
    class_names: Annotated[
        str | None, typer.Option(help="Comma-separated class names, in label order.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Data spec the model belongs to (gives class names)."),
    ] = None,
    input_size: SizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    strict: Annotated[
        bool, typer.Option(help="Refuse weights with missing or unexpected tensors.")
    ] = True,
    json_output: JsonOpt = False,
) -> None:
    """Turn a third-party weights file into an snptool checkpoint (no pickled code runs).

    Example: snptool import resnet20.th --arch resnet.py:resnet20 --data cifar10
    --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 -o resnet20.safetensors
    """
    from snptool import console
    from snptool.architectures import default_input_size, parse_arch_kwargs
    from snptool.config import ImportConfig
    from snptool.importer import run_import
    from snptool.train import InputOverrides

    spec = InputOverrides(
        channels=channels,
        size=_size(input_size),
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        resize=resize,
    ).resolve(default_input_size(arch) or (3, 32, 32))
    names = tuple(n.strip() for n in class_names.split(",")) if class_names else None
    config = ImportConfig(
        arch=arch,
        arch_kwargs=parse_arch_kwargs(arch_kwargs),
        num_classes=num_classes,
        class_names=names,
        input=spec,
        data=data,
        strict=strict,
    )
    result = run_import(weights, output, config)
    console.log(
        f"imported {result.tensors} tensors into {result.output} ({result.num_classes} classes)"
    )
    if result.stripped_prefix:
        console.log(f"stripped the key prefix {result.stripped_prefix!r}")
    for label, names_ in (("missing", result.missing), ("unexpected", result.unexpected)):
        if names_:
            console.log(f"warning: {len(names_)} {label} tensors: {', '.join(names_[:8])}")
    if json_output:
        console.emit_json(result.to_json())


@_command()
def layers(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Only this layer (repeatable).")
    ] = None,
    taps_only: Annotated[
        bool, typer.Option("--taps-only", help="Only the model's declared probe taps.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """List the layers whose units can be analysed, with shape, unit kind and unit count.

    Example: snptool layers vgg11.safetensors --json
    """
    from snptool import console
    from snptool.taps import run_layers

    result = run_layers(checkpoint, names=layer, probe_taps_only=taps_only)
    rows = [
        (x.layer, x.module, x.shape, x.unit, x.units, x.positions, "yes" if x.probe_tap else "")
        for x in result.layers
    ]
    console.table(
        str(checkpoint),
        ["layer", "module", "shape", "unit", "units", "positions", "probe tap"],
        rows,
    )
    if json_output:
        console.emit_json(result.to_json())


@_command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the one it was trained on).")
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="train, test or all.")
    ] = EvaluateConfig.split,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = EvaluateConfig.batch_size,
    device: DeviceOpt = EvaluateConfig.device,
    test_fraction: TestFractionOpt = DataConfig.test_fraction,
    split_seed: SplitSeedOpt = DataConfig.split_seed,
    classes: ClassesOpt = None,
    num_classes_subset: NumClassesSubsetOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = DataConfig.workers,
    json_output: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a checkpoint, overall and per class.

    Example: snptool evaluate vgg11.safetensors --data cifar10 --json
    """
    from snptool import console
    from snptool.evaluate import run_evaluate

    result = run_evaluate(
        checkpoint,
        data,
        EvaluateConfig(split=split, batch_size=batch_size, device=device),
        _data_config(
            test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
        ),
    )
    rows = [(name, accuracy) for name, accuracy in result.per_class.items()]
    console.table(f"{checkpoint} on {result.data} ({result.split})", ["class", "accuracy"], rows)
    console.log(f"accuracy {result.accuracy:.4f} on {result.samples} images")
    if json_output:
        console.emit_json(result.to_json())


def _layer_list(values: list[str] | None) -> list[str]:
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


LayerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--layer", "-l", help="Layer to tap, LAYER or LAYER:UNIT (repeatable, or comma-separated)."
    ),
]


@_command()
def probe(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    output: OutputOpt,
    layer: LayerOpt = None,
    all_layers: Annotated[bool, typer.Option("--all", help="Tap every analysable layer.")] = False,
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the checkpoint's).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Probe epochs.")] = ProbeConfig.epochs,
    batch_size: BatchSizeOpt = ProbeConfig.batch_size,
    lr: LrOpt = ProbeConfig.learning_rate,
    momentum: MomentumOpt = ProbeConfig.momentum,
    nesterov: NesterovOpt = ProbeConfig.nesterov,
    weight_decay: WeightDecayOpt = ProbeConfig.weight_decay,
    lr_decay: EpochLrDecayOpt = ProbeConfig.lr_decay,
    seed: SeedOpt = ProbeConfig.seed,
    device: DeviceOpt = ProbeConfig.device,
    memory_budget: Annotated[
        str, typer.Option(help="Cache features up to this size (e.g. 4GiB), else stream them.")
    ] = ProbeConfig.memory_budget,
    forward_batch_size: Annotated[
        int, typer.Option(help="Batch size of the frozen network's passes.")
    ] = ProbeConfig.forward_batch_size,
    tap_input: Annotated[
        bool, typer.Option("--tap-input", help="Tap the modules' inputs, not outputs.")
    ] = False,
    test_fraction: TestFractionOpt = None,
    split_seed: SplitSeedOpt = None,
    classes: ClassesOpt = None,
    num_classes_subset: NumClassesSubsetOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = DataConfig.workers,
    json_output: JsonOpt = False,
) -> None:
    """Fit a linear probe per layer on the frozen network: the layer accuracy (METHODS.md §4).

    Example: snptool probe model.safetensors --layer features.10 --layer features.20
    -o probes.safetensors
    """
    from snptool import console
    from snptool.probe import run_probe

    layers = _layer_list(layer)
    if all_layers == bool(layers):
        raise UsageError("give either --layer NAME (repeatable) or --all.")
    config = ProbeConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        seed=seed,
        device=device,
        memory_budget=memory_budget,
        forward_batch_size=forward_batch_size,
        tap_input=tap_input,
    )
    result = run_probe(
        checkpoint,
        layers or None,
        output,
        config,
        data_spec=data,
        data_config=_data_config(
            test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
        ),
    )
    rows = [
        (t.name, t.unit, t.units, t.positions, t.train_accuracy, t.test_accuracy)
        for t in result.taps
    ]
    console.table(
        f"probes of {checkpoint} on {result.data} ({result.mode} features); "
        f"model accuracy {result.model_accuracy:.4f}",
        ["layer", "unit", "units", "positions", "train accuracy", "layer accuracy"],
        rows,
    )
    if json_output:
        console.emit_json(result.to_json())


@_command()
def matrix(
    checkpoint: Annotated[
        Path, typer.Argument(help="snptool checkpoint the probes were fitted on.")
    ],
    probes: Annotated[Path, typer.Argument(help="Probe file written by `snptool probe`.")],
    output: OutputOpt,
    layer: LayerOpt = None,
    split: Annotated[
        str, typer.Option("--split", help="Means over train, test or all.")
    ] = MatrixConfig.split,
    data: Annotated[
        str | None, typer.Option("--data", help="Recompute the means on this data spec.")
    ] = None,
    device: DeviceOpt = MatrixConfig.device,
    forward_batch_size: Annotated[
        int, typer.Option(help="Batch size if the network must run.")
    ] = MatrixConfig.forward_batch_size,
    units_per_chunk: Annotated[
        int, typer.Option(help="Units per computation chunk (0: from a 256 MiB budget).")
    ] = MatrixConfig.units_per_chunk,
    test_fraction: TestFractionOpt = None,
    split_seed: SplitSeedOpt = None,
    classes: ClassesOpt = None,
    num_classes_subset: NumClassesSubsetOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = DataConfig.workers,
    json_output: JsonOpt = False,
) -> None:
    """Write every unit's labels × labels matrix M[u, c, k] to HDF5 (METHODS.md §5).

    Example: snptool matrix model.safetensors probes.safetensors --split train -o matrices.h5
    """
    from snptool import console
    from snptool.matrix import run_matrix

    config = MatrixConfig(
        split=split,
        device=device,
        forward_batch_size=forward_batch_size,
        units_per_chunk=units_per_chunk,
    )
    result = run_matrix(
        checkpoint,
        probes,
        output,
        config,
        layers=_layer_list(layer) or None,
        data_spec=data,
        data_config=_data_config(
            test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
        ),
    )
    rows = [
        (x.layer, x.unit, x.units, x.classes, x.samples, x.accuracy, x.source)
        for x in result.layers
    ]
    console.table(
        f"matrices ({result.split} split) → {result.output}",
        ["layer", "unit", "units", "labels", "samples", "layer accuracy", "means from"],
        rows,
    )
    if json_output:
        console.emit_json(result.to_json())


@_command()
def clusters(
    matrices: Annotated[Path, typer.Argument(help="Matrix file written by `snptool matrix`.")],
    threshold: Annotated[
        float, typer.Option(help="Mark elements strictly above threshold × the unit's maximum.")
    ] = ClustersConfig.threshold,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a copy instead of MATRICES.")
    ] = None,
    layer: Annotated[
        str | None, typer.Option("--layer", help="With --unit: the unit's layer.")
    ] = None,
    unit: Annotated[
        int | None, typer.Option("--unit", help="Show this unit's clusters only.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Clusters, noise and SNR of every unit and layer (METHODS.md §6); adds them to the file.

    Example: snptool clusters matrices.h5 --threshold 0.3 --json > summary.json
    """
    from snptool import console
    from snptool.clusters import run_clusters, run_unit_report

    config = ClustersConfig(threshold=threshold)
    if unit is not None or layer is not None:
        if unit is None or layer is None:
            raise UsageError("--unit and --layer go together: --layer NAME --unit N.")
        report = run_unit_report(matrices, layer, unit, config)
        console.table(
            f"{layer} unit {unit}: maximum {report.maximum:.4g}, signal {report.signal}, "
            f"noise {report.noise} (threshold {report.threshold})",
            ["cluster", "size", "labels"],
            [(i + 1, len(c), ", ".join(c)) for i, c in enumerate(report.clusters)],
        )
        if json_output:
            console.emit_json(report.to_json())
        return
    result = run_clusters(matrices, config, output=output)
    columns = [
        "units",
        "units_without_clusters",
        "accuracy",
        "mean_cluster_size",
        "clusters_per_unit",
        "labels_per_unit",
        "noise_per_unit",
        "snr",
    ]
    console.table(
        f"clusters (threshold {result.threshold}) → {result.output}",
        [
            "layer",
            "units",
            "no clusters",
            "layer acc",
            "cluster size",
            "clusters/unit",
            "labels/unit",
            "noise/unit",
            "SNR",
        ],
        [
            (row["layer"], *(row[c] if row[c] is not None else float("nan") for c in columns))
            for row in result.layers
        ],
    )
    if json_output:
        console.emit_json(result.to_json())


@_command()
def heads(
    matrices: Annotated[
        Path, typer.Argument(help="Matrix file with clusters (after `snptool clusters`).")
    ],
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Only this head layer (repeatable).")
    ] = None,
    overlap: Annotated[
        str, typer.Option("--overlap", help="Overlap of two label sets: jaccard or coefficient.")
    ] = HeadsConfig.overlap,
    json_output: JsonOpt = False,
) -> None:
    """Labels each attention head serves, heads per label and the heads' overlap (METHODS.md §7).

    Example: snptool heads matrices.h5 --layer blocks.0.attn.heads:head --json
    """
    from snptool import console
    from snptool.heads import run_heads

    result = run_heads(matrices, HeadsConfig(overlap=overlap), layers=layer)
    for report in result.layers:
        _show_heads(report.to_json())
    if json_output:
        console.emit_json(result.to_json())


def _show_heads(row: dict[str, Any]) -> None:
    """One head layer's table (head, label count, label set, overlaps) and label lines."""
    from snptool import console

    def cell(value: float | None) -> Any:
        return "-" if value is None else value

    heads, mean = row["heads"], row["mean_overlap"]
    console.table(
        f"{row['layer']}: {len(heads)} heads, layer acc {row['accuracy']:.4g}, threshold "
        f"{row['threshold']}, mean {row['overlap_measure']} overlap "
        + ("-" if mean is None else f"{mean:.4g}"),
        ["head", "labels", "label set", *(f"h{i}" for i in range(len(heads)))],
        [
            (head["head"], len(head["labels"]), ", ".join(head["labels"]), *map(cell, overlaps))
            for head, overlaps in zip(heads, row["overlap"], strict=True)
        ],
    )
    counts = ", ".join(f"{name} {len(found)}" for name, found in row["label_heads"].items())
    console.log(f"heads per label: {counts}")
    console.log(f"labels served by no head: {', '.join(row['labels_without_heads']) or 'none'}")


@_command()
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint to prune.")],
    output: OutputOpt,
    clusters_file: Annotated[
        Path, typer.Option("--clusters", help="Matrix file with clusters (`snptool clusters`).")
    ],
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
        typer.Option(help="units: removal order keys, first decides (labels,maximum,noise)."),
    ] = ",".join(PruneConfig.ranking),
    taylor_batches: Annotated[
        int, typer.Option(help="taylor: training batches whose gradients score channels.")
    ] = PruneConfig.taylor_batches,
    round_to: Annotated[
        int, typer.Option(help="units, …: keep a multiple of this many channels per group.")
    ] = PruneConfig.round_to,
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
    from snptool import console
    from snptool.prune import run_prune

    config = PruneConfig(
        method=method,
        classifier=classifier,
        andc_threshold=andc_threshold,
        remove_fraction=remove_fraction,
        target_macs=target_macs,
        ranking=tuple(_layer_list([ranking])),
        taylor_batches=taylor_batches,
        round_to=round_to,
        groups=groups,
        label_grouping=label_grouping,
        finetune_epochs=finetune_epochs,
        train_layers=tuple(_layer_list([train_layers] if train_layers else None)),
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
        layers=[_layer_list([chain]) for chain in layers] if layers else None,
        probes_path=probes,
        data_spec=data,
        data_config=_data_config(
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
            f"({size['macs'] / size['dense_macs']:.3f}), parameters {size['params']:,} of "
            f"{size['dense_params']:,}, {size['fraction']:.3f} of each group's channels removed"
        )
    if json_output:
        console.emit_json(result.to_json())


@_command()
def models(json_output: JsonOpt = False) -> None:
    """List the architectures registered in model_defs.

    Example: snptool models --json
    """
    from snptool import console
    from snptool.architectures import list_architectures

    rows = list_architectures()
    console.table(
        "architectures",
        ["name", "input", "description"],
        [(r["name"], r["input_size"], r["description"]) for r in rows],
    )
    if json_output:
        console.emit_json(rows)


@_command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    output: OutputOpt,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = ExportConfig.opset,
    dynamo: Annotated[
        bool, typer.Option(help="Use torch's dynamo exporter, not the TorchScript one.")
    ] = ExportConfig.dynamo,
    parity_samples: Annotated[
        int, typer.Option(help="Test images run through torch and onnxruntime.")
    ] = ExportConfig.parity_samples,
    parity_tolerance: Annotated[
        float, typer.Option(help="Largest logit difference allowed.")
    ] = ExportConfig.parity_tolerance,
    batch_size: Annotated[
        int, typer.Option(help="Batch size of the parity check.")
    ] = ExportConfig.batch_size,
    device: Annotated[
        str, typer.Option("--device", help="cpu (onnxruntime's CPU provider).")
    ] = ExportConfig.device,
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
    """Export a checkpoint to one ONNX file, checked against torch in onnxruntime.

    Example: snptool export pruned.safetensors -o pruned.onnx
    """
    from snptool import console
    from snptool.export import run_export

    config = ExportConfig(
        opset=opset,
        dynamo=dynamo,
        parity_samples=parity_samples,
        parity_tolerance=parity_tolerance,
        batch_size=batch_size,
        device=device,
    )
    result = run_export(
        checkpoint,
        output,
        config,
        data_spec=data,
        data_config=_data_config(
            test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
        ),
    )
    console.table(
        f"{checkpoint} → {result.output} (opset {result.opset})",
        ["graph", "params", "MACs per sample"],
        [
            ("dense", result.dense_params, result.dense_macs),
            ("exported", result.params, result.macs),
        ],
    )
    console.log(
        f"max |torch − onnxruntime| {result.max_abs_diff:.3g} on {result.samples} test images, "
        f"argmax agreement {result.argmax_agreement:.4f}"
    )
    if json_output:
        console.emit_json(result.to_json())


@_command()
def committee(
    checkpoints: Annotated[list[Path], typer.Argument(help="Two or more snptool checkpoints.")],
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the first member's).")
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="train, test or all.")
    ] = CommitteeConfig.split,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = CommitteeConfig.batch_size,
    device: DeviceOpt = CommitteeConfig.device,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also export the committee to ONNX.")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = CommitteeConfig.opset,
    dynamo: Annotated[
        bool, typer.Option(help="Use torch's dynamo exporter, not the TorchScript one.")
    ] = CommitteeConfig.dynamo,
    parity_samples: Annotated[
        int, typer.Option(help="Test images run through torch and onnxruntime.")
    ] = CommitteeConfig.parity_samples,
    parity_tolerance: Annotated[
        float, typer.Option(help="Largest probability difference allowed.")
    ] = CommitteeConfig.parity_tolerance,
    test_fraction: TestFractionOpt = None,
    split_seed: SplitSeedOpt = None,
    classes: ClassesOpt = None,
    num_classes_subset: NumClassesSubsetOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    workers: WorkersOpt = DataConfig.workers,
    json_output: JsonOpt = False,
) -> None:
    """Accuracy of the soft committee (mean softmax) of several classifiers vs each member.

    Example: snptool committee a.safetensors b.safetensors c.safetensors --json -o committee.onnx
    """
    from snptool import console
    from snptool.committee import run_committee

    config = CommitteeConfig(
        split=split,
        batch_size=batch_size,
        device=device,
        opset=opset,
        dynamo=dynamo,
        parity_samples=parity_samples,
        parity_tolerance=parity_tolerance,
    )
    data_config = _data_config(
        test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
    )
    result = run_committee(checkpoints, data, config, output=output, data_config=data_config)
    rows = [(m.path, m.arch, m.accuracy, m.loss) for m in result.members]
    console.table(
        f"soft committee on {result.data} ({result.split}, {result.samples} images)",
        ["model", "arch", "accuracy", "loss"],
        [*rows, ("committee", "mean softmax", result.committee_accuracy, result.committee_loss)],
    )
    console.log(
        f"committee {result.committee_accuracy:.4f} vs best member "
        f"{result.best_member.accuracy:.4f}: gain {result.gain:+.4f}; "
        f"all members agree on {result.agreement:.1%} of the images"
    )
    for warning in result.warnings:
        console.log(f"warning: {warning}")
    if result.export is not None:
        console.log(
            f"→ {result.export.output}: max |torch − onnxruntime| {result.export.max_abs_diff:.3g} "
            f"on {result.export.samples} test images; {result.export.params} params, "
            f"{result.export.macs} MACs per sample"
        )
    if json_output:
        console.emit_json(result.to_json())


def _batch_sizes(values: list[str] | None) -> tuple[int, ...]:
    if not values:
        return LatencyConfig.batch_sizes
    try:
        return tuple(int(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(
            f"--batch {','.join(values)!r} must be whole numbers, e.g. --batch 1,8."
        ) from None


@_command()
def latency(
    models: Annotated[list[Path], typer.Argument(help="ONNX files; ratios are to the first.")],
    warmup: Annotated[
        int, typer.Option(help="Untimed runs of each model first.")
    ] = LatencyConfig.warmup,
    runs: Annotated[int, typer.Option(help="Timed runs of each model.")] = LatencyConfig.runs,
    budget_seconds: Annotated[
        float | None,
        typer.Option(help="Time each batch size for this long instead of --runs (>= 3 runs)."),
    ] = LatencyConfig.budget_seconds,
    batch: Annotated[
        list[str] | None,
        typer.Option("--batch", help="Batch size (repeatable, or comma-separated) [default: 1]."),
    ] = None,
    threads: Annotated[
        int, typer.Option(help="onnxruntime intra-op threads.")
    ] = LatencyConfig.threads,
    provider: Annotated[
        str, typer.Option(help="onnxruntime execution provider.")
    ] = LatencyConfig.provider,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = LatencyConfig.seed,
    json_output: JsonOpt = False,
) -> None:
    """Time ONNX models side by side on onnxruntime: p50/p90/p99, throughput, ratio to the first.

    Example: snptool latency dense.onnx pruned.onnx --batch 1 --threads 1 --json
    """
    from snptool import console
    from snptool.latency import run_latency

    config = LatencyConfig(
        warmup=warmup,
        runs=runs,
        budget_seconds=budget_seconds,
        batch_sizes=_batch_sizes(batch),
        threads=threads,
        provider=provider,
        seed=seed,
    )
    result = run_latency(models, config)
    env = result.environment
    console.table(
        f"latency on {env['provider']}, {env['threads']} intra-op thread(s), "
        f"onnxruntime {env['onnxruntime']}, {env['cpu_count']} CPUs",
        ["model", "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms"]
        + ["images/s", "ratio"],
        [tuple(row.to_json().values()) for row in result.rows],
    )
    if json_output:
        console.emit_json(result.to_json())


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} must be comma-separated whole numbers, e.g. 4,8,16."
        ) from None


def _joined(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


@_command()
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
    ] = _joined(SweepConfig.d1),
    ratio: Annotated[
        float, typer.Option(help="d2 / d1 (d2 = round(ratio·d1)); LeNet-5's 16/6.")
    ] = SweepConfig.ratio,
    seeds: Annotated[str, typer.Option(help="Training seeds, comma-separated.")] = _joined(
        SweepConfig.seeds
    ),
    fc_widths: Annotated[
        str, typer.Option(help="Hidden FC widths, comma-separated (LeNet-5's 120,84).")
    ] = _joined(SweepConfig.fc_widths),
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
    from snptool import console
    from snptool.sweep import run_sweep

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
    )
    config = SweepConfig(
        d1=_ints(d1, "--d1"),
        ratio=ratio,
        seeds=_ints(seeds, "--seeds"),
        fc_widths=_ints(fc_widths, "--fc-widths"),
        accuracy=accuracy,
        fit=fit,
        bootstrap=bootstrap,
        confidence=confidence,
        bootstrap_seed=bootstrap_seed,
        train=train_config,
    )
    data_config = _data_config(
        test_fraction, split_seed, data_root, download, workers, classes, num_classes_subset
    )
    result = run_sweep(data, output, config, data_config=data_config)
    _show_sweep(result)
    if json_output:
        console.emit_json(result.to_json())


def _show_sweep(result: Any) -> None:
    from snptool import console

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


@_command()
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
    from snptool import console
    from snptool.report import run_report

    units = tuple(u for value in unit or [] for u in value.split(",") if u)
    result = run_report(inputs, output, ReportConfig(title=title, units=units), png_dir=png_dir)
    console.log(
        f"{len(result.figures)} figures from {len(result.inputs)} inputs → {result.output} "
        f"({result.bytes / 1e6:.2f} MB, {result.seconds:.1f} s)"
    )
    if json_output:
        console.emit_json(result.to_json())


def main() -> None:
    app()

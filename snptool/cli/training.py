"""Commands that make and inspect checkpoints: train, import, layers, evaluate, models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snptool.cli.app import command
from snptool.cli.config_flags import config_flags
from snptool.cli.options import (
    ArchKwargsOpt,
    ChannelsOpt,
    JsonOpt,
    MeanOpt,
    OutputOpt,
    ResizeOpt,
    SizeOpt,
    StdOpt,
    TrustCodeOpt,
    TrustedArchOpt,
    floats,
    foreign_input_spec,
    input_size_of,
)
from snptool.config import DataConfig, EvaluateConfig, InputSpec, TrainConfig


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(TrainConfig)
def train(
    output: OutputOpt,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            help="Architecture spec (see `snptool models`); a code spec named here runs, and "
            "with --resume it trusts the same spec in the checkpoint.",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data spec: digits, cifar10[:DIR], npz:FILE, … [default: digits, or as resumed]",
        ),
    ] = None,
    arch_kwargs: ArchKwargsOpt = None,
    *,
    config: TrainConfig,
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
    data_config: DataConfig,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Train a model with the research's recipe; writes the last and the best epoch.

    Example: snptool train --arch vgg11 --data cifar10 --epochs 300 -o vgg11.safetensors
    """
    from snptool.core import console
    from snptool.core.architectures import parse_arch_kwargs
    from snptool.training.train import InputOverrides, run_train

    inputs = InputOverrides(
        channels=channels,
        size=input_size_of(input_size),
        mean=floats(mean, "--mean"),
        std=floats(std, "--std"),
        resize=resize,
    )
    result = run_train(
        arch,
        data,
        output,
        config,
        arch_kwargs=parse_arch_kwargs(arch_kwargs),
        data_config=data_config,
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


@command("import")
def import_weights(
    weights: Annotated[Path, typer.Argument(help="Third-party .pt/.pth/.th or .safetensors file.")],
    output: OutputOpt,
    arch: Annotated[
        str,
        typer.Option(
            "--arch", help="Architecture spec of the weights (a code spec named here runs)."
        ),
    ] = "",
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
    from snptool.config import ImportConfig
    from snptool.core import console
    from snptool.core.architectures import default_input_size, parse_arch_kwargs
    from snptool.training.importer import run_import
    from snptool.training.train import InputOverrides

    spec = InputOverrides(
        channels=channels,
        size=input_size_of(input_size),
        mean=floats(mean, "--mean"),
        std=floats(std, "--std"),
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
    if mean is None or std is None:
        console.log(_normalisation_warning(mean is not None, std is not None, spec))
    if json_output:
        console.emit_json(result.to_json())


def _normalisation_warning(mean_given: bool, std_given: bool, spec: InputSpec) -> str:
    """The warning for `import` without --mean or --std: what was recorded, how to fix it."""
    flags = [flag for flag, given in (("--mean", mean_given), ("--std", std_given)) if not given]
    scaled = "" if mean_given or std_given else " (pixels scaled to [-1, 1])"
    example = (
        "0.1307 --std 0.3081"
        if spec.channels == 1
        else "0.4914,0.4822,0.4465 --std 0.2470,0.2435,0.2616"
    )
    return (
        f"warning: no {' or '.join(flags)} given, so the checkpoint records mean "
        f"{_csv(spec.mean)} and std {_csv(spec.std)}{scaled}; if the weights were trained with "
        f"another normalisation, import again with it, e.g. --mean {example}."
    )


def _csv(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


@command()
def layers(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Only this layer (repeatable).")
    ] = None,
    taps_only: Annotated[
        bool,
        typer.Option(
            "--taps-only", help="Only the probe taps (declared, else the stages' outputs)."
        ),
    ] = False,
    arch: TrustedArchOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """List the layers whose units can be analysed, with shape, unit kind and unit count.

    Example: snptool layers vgg11.safetensors --json
    """
    from snptool.analysis.layers import run_layers
    from snptool.core import console

    result = run_layers(checkpoint, names=layer, probe_taps_only=taps_only)
    rows = [
        (
            x.tap,
            x.module,
            x.shape,
            x.unit,
            x.units,
            x.positions,
            x.calls,
            "yes" if x.probe_tap else "",
            f"not probeable: {x.not_probeable}" if x.not_probeable else "",
        )
        for x in result.layers
    ]
    inferred = " (probe taps inferred: the model declares none)" if result.inferred_taps else ""
    header = ["tap (--layer)", "module", "shape", "unit", "units", "positions", "calls"]
    console.table(f"{checkpoint}{inferred}", [*header, "probe tap", "note"], rows)
    if json_output:
        console.emit_json(result.to_json())


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(EvaluateConfig)
def evaluate(
    checkpoint: Annotated[
        Path, typer.Argument(help="snptool checkpoint, or an ONNX file (run in onnxruntime).")
    ],
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the one it was trained on).")
    ] = None,
    *,
    config: EvaluateConfig,
    input_size: SizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_config: DataConfig,
    arch: TrustedArchOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a checkpoint or an ONNX file, overall and per class.

    Example: snptool evaluate vgg11.safetensors --data cifar10 --json
    """
    from snptool.core import console
    from snptool.deploy.onnx_file import is_onnx_path

    if is_onnx_path(checkpoint):
        from snptool.deploy.onnx_evaluate import run_evaluate_onnx

        spec = foreign_input_spec(channels, input_size, mean, std)
        result = run_evaluate_onnx(checkpoint, data, config, data_config, input_spec=spec)
    else:
        from snptool.training.evaluate import run_evaluate

        result = run_evaluate(checkpoint, data, config, data_config)
    rows = [(name, accuracy) for name, accuracy in result.per_class.items()]
    console.table(f"{checkpoint} on {result.data} ({result.split})", ["class", "accuracy"], rows)
    console.log(f"accuracy {result.accuracy:.4f} on {result.samples} images")
    if json_output:
        console.emit_json(result.to_json())


@command()
def models(json_output: JsonOpt = False) -> None:
    """List the architectures registered in model_defs.

    Example: snptool models --json
    """
    from snptool.core import console
    from snptool.core.architectures import list_architectures

    rows = list_architectures()
    console.table(
        "architectures",
        ["name", "input", "description"],
        [(r["name"], r["input_size"], r["description"]) for r in rows],
    )
    if json_output:
        console.emit_json(rows)

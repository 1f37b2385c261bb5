"""Commands that ship a model: export to ONNX, latency in onnxruntime."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from snptool.cli.app import command
from snptool.cli.config_flags import config_flags
from snptool.cli.options import (
    ChannelsOpt,
    JsonOpt,
    MeanOpt,
    OutputOpt,
    SizeOpt,
    StdOpt,
    TrustCodeOpt,
    TrustedArchOpt,
    batch_sizes,
    foreign_input_spec,
)
from snptool.config import DataConfig, ExportConfig, LatencyConfig, QuantizeConfig


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(ExportConfig)
def export(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    output: OutputOpt,
    *,
    config: ExportConfig,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data spec (default: the checkpoint's; none: random inputs check parity).",
        ),
    ] = None,
    data_config: DataConfig,
    arch: TrustedArchOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Export a checkpoint to one ONNX file, checked against torch in onnxruntime.

    Example: snptool export pruned.safetensors -o pruned.onnx
    """
    from snptool.core import console
    from snptool.deploy.export import run_export

    result = run_export(
        checkpoint,
        output,
        config,
        data_spec=data,
        data_config=data_config,
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


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(QuantizeConfig)
def quantize(
    model: Annotated[Path, typer.Argument(help="ONNX file: a float export.")],
    output: OutputOpt,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Data spec (default: the one the export was checked on)."),
    ] = None,
    *,
    config: QuantizeConfig,
    input_size: SizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    data_config: DataConfig,
    json_output: JsonOpt = False,
) -> None:
    """Quantize an ONNX export to int8 with onnxruntime; prints the accuracy before and after.

    Example: snptool quantize pruned.onnx --calibration 256 -o pruned.int8.onnx
    """
    from snptool.core import console
    from snptool.deploy.quantize import run_quantize

    spec = foreign_input_spec(channels, input_size, mean, std)
    result = run_quantize(
        model, output, config, data_spec=data, data_config=data_config, input_spec=spec
    )
    what = (
        f"{result.method}, {result.calibration} calibration images"
        if result.calibration
        else result.method
    )
    console.log(
        f"{model} → {result.output} ({what}): {result.float_bytes / 1e6:.2f} MB → "
        f"{result.int8_bytes / 1e6:.2f} MB"
    )
    if result.float_accuracy is not None:
        console.log(
            f"test accuracy {result.float_accuracy:.4f} float, {result.int8_accuracy:.4f} int8 "
            f"on {result.samples} images; argmax agreement {result.argmax_agreement:.4f}"
        )
    if json_output:
        console.emit_json(result.to_json())


@command()
@config_flags(LatencyConfig, skip=("batch_sizes",))
def latency(
    models: Annotated[list[Path], typer.Argument(help="ONNX files; ratios are to the first.")],
    *,
    config: LatencyConfig,
    batch: Annotated[
        list[str] | None,
        typer.Option("--batch", help="Batch size (repeatable, or comma-separated) [default: 1]."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Time ONNX models side by side on onnxruntime: p50/p90/p99, throughput, ratio to the first.

    Example: snptool latency dense.onnx pruned.onnx --batch 1 --threads 1 --json
    """
    from snptool.core import console
    from snptool.deploy.latency import run_latency

    result = run_latency(models, replace(config, batch_sizes=batch_sizes(batch)))
    env = result.environment
    console.table(
        f"latency on {env['provider']}, {env['threads']} intra-op thread(s), "
        f"onnxruntime {env['onnxruntime']}, {env['cpu_count']} CPUs",
        ["model", "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms"]
        + ["images/s", "ratio", "MB"],
        [
            (r.path, r.batch, r.runs, r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms, r.std_ms)
            + (r.throughput, r.ratio, r.bytes / 1e6)
            for r in result.rows
        ],
    )
    for row in result.rows:
        if row.operators:
            console.table(
                f"slowest operators of {row.path} at batch {row.batch} (kernel time per run)",
                ["operator", "nodes", "ms", "share"],
                [(o["op"], o["nodes"], o["ms"], o["share"]) for o in row.operators],
            )
    if json_output:
        console.emit_json(result.to_json())

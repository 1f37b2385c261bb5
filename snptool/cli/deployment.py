"""Commands that ship a model: export to ONNX, latency in onnxruntime."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from snptool.cli.app import command
from snptool.cli.config_flags import config_flags
from snptool.cli.options import (
    JsonOpt,
    OutputOpt,
    batch_sizes,
)
from snptool.config import DataConfig, ExportConfig, LatencyConfig


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
        + ["images/s", "ratio"],
        [tuple(row.to_json().values()) for row in result.rows],
    )
    if json_output:
        console.emit_json(result.to_json())

"""Commands that ship a model: export to ONNX, latency in onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snptool.cli.app import command
from snptool.cli.options import (
    ClassesOpt,
    DataRootOpt,
    DownloadOpt,
    JsonOpt,
    NumClassesSubsetOpt,
    OutputOpt,
    SplitSeedOpt,
    TestFractionOpt,
    WorkersOpt,
    batch_sizes,
    data_config_of,
)
from snptool.config import DataConfig, ExportConfig, LatencyConfig


@command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    output: OutputOpt,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = ExportConfig.opset,
    dynamo: Annotated[
        bool, typer.Option(help="Use torch's dynamo exporter, not the TorchScript one.")
    ] = ExportConfig.dynamo,
    fallback: Annotated[
        bool, typer.Option(help="Try the other exporter when the first fails.")
    ] = ExportConfig.fallback,
    parity_samples: Annotated[
        int, typer.Option(help="Test images run through torch and onnxruntime.")
    ] = ExportConfig.parity_samples,
    parity_tolerance: Annotated[
        float, typer.Option(help="Largest logit difference allowed, × max(1, largest |logit|).")
    ] = ExportConfig.parity_tolerance,
    batch_size: Annotated[
        int, typer.Option(help="Batch size of the parity check.")
    ] = ExportConfig.batch_size,
    device: Annotated[
        str, typer.Option("--device", help="cpu (onnxruntime's CPU provider).")
    ] = ExportConfig.device,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data spec (default: the checkpoint's; none: random inputs check parity).",
        ),
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
    from snptool.core import console
    from snptool.deploy.export import run_export

    config = ExportConfig(
        opset=opset,
        dynamo=dynamo,
        fallback=fallback,
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
        data_config=data_config_of(
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


@command()
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
    from snptool.core import console
    from snptool.deploy.latency import run_latency

    config = LatencyConfig(
        warmup=warmup,
        runs=runs,
        budget_seconds=budget_seconds,
        batch_sizes=batch_sizes(batch),
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

"""Commands of the single-unit analysis: probe, matrix, clusters, heads, committee."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from snptool.cli.app import command
from snptool.cli.config_flags import config_flags
from snptool.cli.options import (
    JsonOpt,
    LayerOpt,
    OutputOpt,
    TrustCodeOpt,
    TrustedArchOpt,
    layer_list,
)
from snptool.config import (
    ClustersConfig,
    CommitteeConfig,
    DataConfig,
    HeadsConfig,
    MatrixConfig,
    ProbeConfig,
)
from snptool.errors import UsageError


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(ProbeConfig)
def probe(
    checkpoint: Annotated[Path, typer.Argument(help="snptool checkpoint.")],
    output: OutputOpt,
    layer: LayerOpt = None,
    all_layers: Annotated[bool, typer.Option("--all", help="Tap every analysable layer.")] = False,
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the checkpoint's).")
    ] = None,
    *,
    config: ProbeConfig,
    data_config: DataConfig,
    arch: TrustedArchOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Fit a linear probe per layer on the frozen network: the layer accuracy (METHODS.md §4).

    Example: snptool probe model.safetensors --layer features.10 --layer features.20
    -o probes.safetensors
    """
    from snptool.analysis.probe import run_probe
    from snptool.core import console

    layers = layer_list(layer)
    if all_layers == bool(layers):
        raise UsageError("give either --layer NAME (repeatable) or --all.")
    result = run_probe(
        checkpoint,
        layers or None,
        output,
        config,
        data_spec=data,
        data_config=data_config,
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


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(MatrixConfig)
def matrix(
    checkpoint: Annotated[
        Path, typer.Argument(help="snptool checkpoint the probes were fitted on.")
    ],
    probes: Annotated[Path, typer.Argument(help="Probe file written by `snptool probe`.")],
    output: OutputOpt,
    layer: LayerOpt = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Recompute the means on this data spec.")
    ] = None,
    *,
    config: MatrixConfig,
    data_config: DataConfig,
    arch: TrustedArchOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Write every unit's labels × labels matrix M[u, c, k] to HDF5 (METHODS.md §5).

    Example: snptool matrix model.safetensors probes.safetensors --split train -o matrices.h5
    """
    from snptool.analysis.matrix import run_matrix
    from snptool.core import console

    result = run_matrix(
        checkpoint,
        probes,
        output,
        config,
        layers=layer_list(layer) or None,
        data_spec=data,
        data_config=data_config,
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


@command()
@config_flags(ClustersConfig)
def clusters(
    matrices: Annotated[Path, typer.Argument(help="Matrix file written by `snptool matrix`.")],
    *,
    config: ClustersConfig,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write a copy here [default: update MATRICES atomically]."
        ),
    ] = None,
    layer: Annotated[
        str | None, typer.Option("--layer", help="With --unit: the unit's layer.")
    ] = None,
    unit: Annotated[
        int | None, typer.Option("--unit", help="Show this unit's clusters only.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Clusters, noise and SNR of every unit and layer (METHODS.md §6); adds them to the file
    (an atomic in-place update), or to a copy with -o.

    Example: snptool clusters matrices.h5 --threshold 0.3 --json > summary.json
    """
    from snptool.analysis.clusters import run_clusters, run_unit_report
    from snptool.core import console

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


@command()
@config_flags(HeadsConfig)
def heads(
    matrices: Annotated[
        Path, typer.Argument(help="Matrix file with clusters (after `snptool clusters`).")
    ],
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Only this head layer (repeatable).")
    ] = None,
    *,
    config: HeadsConfig,
    json_output: JsonOpt = False,
) -> None:
    """Labels each attention head serves, heads per label and the heads' overlap (METHODS.md §7).

    Example: snptool heads matrices.h5 --layer blocks.0.attn.heads:head --json
    """
    from snptool.analysis.heads import run_heads
    from snptool.core import console

    result = run_heads(matrices, config, layers=layer)
    for report in result.layers:
        _show_heads(report.to_json())
    if json_output:
        console.emit_json(result.to_json())


def _show_heads(row: dict[str, Any]) -> None:
    """One head layer's table (head, label count, label set, overlaps) and label lines."""
    from snptool.core import console

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


@command()
@config_flags(DataConfig, into="data_config")
@config_flags(CommitteeConfig)
def committee(
    checkpoints: Annotated[list[Path], typer.Argument(help="Two or more snptool checkpoints.")],
    data: Annotated[
        str | None, typer.Option("--data", help="Data spec (default: the first member's).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also export the committee to ONNX.")
    ] = None,
    *,
    config: CommitteeConfig,
    data_config: DataConfig,
    arch: TrustedArchOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Accuracy of the soft committee (mean softmax) of several classifiers vs each member.

    Example: snptool committee a.safetensors b.safetensors c.safetensors --json -o committee.onnx
    """
    from snptool.core import console
    from snptool.deploy.committee import run_committee

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

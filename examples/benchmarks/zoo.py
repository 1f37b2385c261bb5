"""Every step of snptool on the torchvision and timm zoos (issue 21): layers, probe, matrix,
clusters, prune to half the MACs (widths of 16) with a weight criterion (every prunable group)
and with `units` (the inferred stage taps, the rest filled by magnitude), export with parity,
latency.

Untrained networks (seeded, BatchNorm statistics moved) at 32×32, analysed on scikit-learn's
digits, so the figures are about reach and speed, not accuracy. One row per model, as JSON
lines (resumable: a model with a row is skipped) and a Markdown table at the end.

    python examples/benchmarks/zoo.py runs/zoo [MODEL ...]
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import onnx
import torch

from snptool.analysis.clusters import run_clusters
from snptool.analysis.layers import run_layers
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import (
    ExportConfig,
    InputSpec,
    LatencyConfig,
    MatrixConfig,
    ProbeConfig,
    PruneConfig,
    RemovalConfig,
)
from snptool.core.architectures import build_model
from snptool.core.checkpoint import make_metadata, write_checkpoint
from snptool.deploy.checked_export import count_graph_macs
from snptool.deploy.export import run_export
from snptool.deploy.latency import run_latency
from snptool.errors import SnpError
from snptool.pruning.prune import run_prune

SMALL_INPUT = {  # kwargs that build a model for 32×32 inputs
    "torchvision:vit_b_16": {"image_size": 32},
    "timm:vit_tiny_patch16_224": {"img_size": 32},
    "timm:deit_tiny_patch16_224": {"img_size": 32},
}
MODELS = [
    "torchvision:resnet18",
    "torchvision:resnet50",
    "torchvision:mobilenet_v2",
    "torchvision:mobilenet_v3_small",
    "torchvision:efficientnet_b0",
    "torchvision:regnet_x_400mf",
    "torchvision:densenet121",
    "torchvision:shufflenet_v2_x0_5",
    "torchvision:squeezenet1_1",
    "torchvision:googlenet",
    "torchvision:convnext_tiny",
    "torchvision:vit_b_16",
    "torchvision:swin_t",
    "timm:resnet18",
    "timm:efficientnet_b0",
    "timm:mobilenetv3_small_100",
    "timm:convnext_atto",
    "timm:vit_tiny_patch16_224",
    "timm:deit_tiny_patch16_224",
]
DATA = "digits"
EXPORT = "export_magnitude-channels"
ROUND_TO = 16  # onnxruntime's convolutions work in blocks of 16 channels on AVX-512


def untrained_checkpoint(spec: str, path: Path) -> None:
    torch.manual_seed(0)
    model, record = build_model(spec, SMALL_INPUT.get(spec, {}), num_classes=10)
    with torch.no_grad():
        for _ in range(2):
            model.train()(torch.rand(8, 3, 32, 32) * 2 - 1)
    metadata = make_metadata(
        arch=record,
        class_names=[str(i) for i in range(10)],
        input_spec=InputSpec(),
        data=DATA,
        provenance={},
    )
    write_checkpoint(path, model.eval(), metadata)


def stage_taps(checkpoint: Path) -> list[str]:
    """Two of the inferred probe taps (the middle stages), read on their default unit axis."""
    layers = run_layers(checkpoint, probe_taps_only=True).layers
    taps = [x.layer for x in layers if x.default_unit and x.unit != "head"]
    taps = taps[:-1] or taps  # the penultimate features feed the classifier: not prunable
    middle = len(taps) // 2
    return taps[max(0, middle - 1) : middle + 1]


def run_model(spec: str, folder: Path) -> dict:
    row: dict = {"model": spec}
    tag = spec.replace(":", "_")
    dense = folder / f"{tag}.safetensors"
    untrained_checkpoint(spec, dense)

    def step(name: str, work, *args):
        started = time.perf_counter()
        try:
            value = work(*args)
            row[name] = "ok"
            return value
        except SnpError as error:
            row[name] = f"refused: {error}"
        except Exception as error:  # a crash is a finding of this benchmark
            row[name] = f"crash: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            traceback.print_exc()
        finally:
            row[f"{name}_s"] = round(time.perf_counter() - started, 1)
        return None

    taps = step("layers", stage_taps, dense)
    row["taps"] = taps
    probes, matrices = folder / f"{tag}.probes.safetensors", folder / f"{tag}.h5"
    quick = {"epochs": 1, "device": "cpu"}
    analysed = taps and step("probe", run_probe, dense, taps, probes, ProbeConfig(**quick))
    analysed = analysed and step("matrix", run_matrix, dense, probes, matrices, MatrixConfig())
    if analysed:
        step("clusters", run_clusters, matrices)
    removal = {"target_macs": 0.5, "round_to": ROUND_TO}
    outputs = {"dense": dense}
    for method, clusters in (("magnitude-channels", None), ("units", matrices)):
        if method == "units" and row.get("clusters") != "ok":
            continue
        pruned = folder / f"{tag}.{method}.safetensors"
        fill = "magnitude-channels" if method == "units" else None
        config = PruneConfig(
            method=method, removal=RemovalConfig(**removal, fill=fill), device="cpu"
        )
        result = step(f"prune_{method}", run_prune, dense, clusters, pruned, config)
        if result is not None:
            row[f"prune_{method}_macs"] = round(result.size["mac_ratio"], 4)
            outputs[method] = pruned
    exports = {}
    for name, checkpoint in outputs.items():
        onnx_path = folder / f"{tag}.{name}.onnx"
        config = ExportConfig(parity_samples=16)
        result = step(f"export_{name}", run_export, checkpoint, onnx_path, config)
        if result is not None:
            exports[name] = onnx_path
            row[f"export_{name}_macs"] = result.macs
            row[f"export_{name}_dense_macs"] = result.dense_macs
            row[f"export_{name}_dynamo"] = result.dynamo
            row[f"export_{name}_diff"] = result.max_abs_diff
            try:
                graph = count_graph_macs(onnx.load(str(onnx_path)))
                row[f"export_{name}_graph_macs"] = graph
            except SnpError:
                row[f"export_{name}_graph_macs"] = None  # ONNX shape inference lost a shape
    if "dense" in exports and "magnitude-channels" in exports:
        paths = [exports["dense"], exports["magnitude-channels"]]
        config = LatencyConfig(runs=100, warmup=10)
        result = step("latency", run_latency, paths, config)
        if result is not None:
            row["dense_p50_ms"] = result.rows[0].p50_ms
            row["latency_ratio"] = round(result.rows[1].ratio, 3)
    return row


def table(rows: list[dict]) -> str:
    """model × step: the MAC ratio prune reached (magnitude, units), the export's MAC ratio
    over prune's, the ONNX graph's count over ours, the pruned export's p50 over the dense."""
    lines = [
        "| model | layers→clusters | prune magnitude | prune units | export / prune MACs "
        "| ONNX / ours | latency ratio |",
        "|" + "---|" * 7,
    ]
    for row in rows:
        analysis = _short(row, "layers", "probe", "matrix", "clusters")
        pruned, ours = row.get("prune_magnitude-channels_macs"), row.get(f"{EXPORT}_macs")
        graph = row.get(f"{EXPORT}_graph_macs")
        agreement = _short(row, EXPORT)
        if pruned and ours:
            agreement = f"{ours / row[f'{EXPORT}_dense_macs'] / pruned:.3f}"
        cells = [
            row["model"],
            analysis,
            row.get("prune_magnitude-channels_macs", _short(row, "prune_magnitude-channels")),
            row.get("prune_units_macs", _short(row, "prune_units")),
            agreement,
            f"{graph / ours:.4f}" if graph and ours else "n/a",
            row.get("latency_ratio", _short(row, "latency")),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _short(row: dict, *steps: str) -> str:
    for name in steps:
        value = row.get(name)
        if value is None:
            return f"{name}: not run"
        if value != "ok":
            return f"{name}: {value[:90]}"
    return "ok"


def main() -> None:
    warnings.filterwarnings("ignore")
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / "zoo.jsonl"
    done = {}
    if results.exists():
        done = {row["model"]: row for row in map(json.loads, results.read_text().splitlines())}
    for spec in sys.argv[2:] or MODELS:
        if spec not in done:
            row = run_model(spec, folder)
            done[spec] = row
            with results.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(table([done[m] for m in (sys.argv[2:] or MODELS) if m in done]))


if __name__ == "__main__":
    main()

"""`snptool export`: a checkpoint → one self-describing ONNX file with a dynamic batch.

The graph is checked against torch in onnxruntime on test images (the largest logit difference
is reported and bounded), and its parameters and multiply-accumulates are counted
(`checked_export.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from snptool.config import DataConfig, ExportConfig, config_to_dict
from snptool.core.architectures import build_model_from_record
from snptool.core.checkpoint import Checkpoint, read_checkpoint
from snptool.core.files import check_output_path, provenance
from snptool.core.macs import count_parameters
from snptool.data.datasets import DataSplit
from snptool.deploy.checked_export import (
    FORMAT_VERSION,
    OUTPUT_NAME,
    RANDOM_INPUTS,
    add_metadata,
    describe_input,
    export_and_check,
    model_for_export,
    parity_inputs,
    write_onnx,
)


@dataclass(frozen=True)
class ExportResult:
    """`params`/`macs` count the exported graph, `dense_*` the checkpoint's model exported
    as-is (the same graph for a dense checkpoint); MACs are per sample."""

    checkpoint: str
    output: str
    data: str
    opset: int
    dynamo: bool
    samples: int
    max_abs_diff: float
    argmax_agreement: float
    parity_tolerance: float
    params: int
    macs: int
    dense_params: int
    dense_macs: int
    torch_params: int

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def run_export(
    checkpoint_path: str | Path,
    output: str | Path,
    config: ExportConfig | None = None,
    *,
    data_spec: str | None = None,
    data_config: DataConfig | None = None,
) -> ExportResult:
    """Export a checkpoint to `output` (one ONNX file) after checking it against torch.

    The parity images are the first `config.parity_samples` of the test split of `data_spec`
    (default: the checkpoint's data; random normal inputs where it names none). A failed
    export or parity check writes nothing.
    """
    config = config or ExportConfig()
    check_output_path(output, checkpoint_path)
    checkpoint = read_checkpoint(checkpoint_path, config.device)
    data, inputs = parity_inputs(checkpoint, data_spec, config, data_config)
    model = model_for_export(checkpoint).eval()
    # parity against the checkpoint's own (masked) model, not the compacted copy
    checked = export_and_check(
        model,
        checkpoint.model.eval(),
        dense_model(checkpoint),
        inputs,
        config,
        source=str(checkpoint_path),
    )
    result = ExportResult(
        checkpoint=str(checkpoint_path),
        output=str(output),
        data=data.spec if data is not None else RANDOM_INPUTS,
        opset=config.opset,
        parity_tolerance=config.parity_tolerance,
        **checked.summary(),
        torch_params=count_parameters(model),
    )
    add_metadata(checked.graph, describe_export(checkpoint, config, data, result))
    write_onnx(checked.graph, output)
    return result


def dense_model(checkpoint: Checkpoint) -> nn.Module:
    """The network before any pruning: the checkpoint's own model when it is not pruned or
    only masked (the masks keep its shapes), else its architecture rebuilt without the removed
    channels (random weights: only its size is read)."""
    arch = checkpoint.metadata["arch"]
    resized = ("resized", "shapes", "channel_maps")
    if not any(arch.get(key) for key in resized):
        return checkpoint.model
    dense = {key: value for key, value in arch.items() if key not in resized}
    return build_model_from_record(dense).eval()


def describe_export(
    checkpoint: Checkpoint, config: ExportConfig, data: DataSplit | None, result: ExportResult
) -> dict[str, Any]:
    """The `snptool` metadata document of an exported graph: enough to preprocess and trace."""
    meta = checkpoint.metadata
    return {
        "format_version": FORMAT_VERSION,
        "arch": meta["arch"],
        "num_classes": checkpoint.num_classes,
        "class_names": checkpoint.class_names,
        "input": describe_input(meta["input"]),
        "output": {"name": OUTPUT_NAME, "shape": ["batch", checkpoint.num_classes]},
        "checkpoint": {"path": str(checkpoint.path), "sha256": checkpoint.sha256},
        "config": config_to_dict(config),
        "dynamo": result.dynamo,
        "parity": {
            "data": data.record() if data is not None else RANDOM_INPUTS,
            "samples": result.samples,
            "max_abs_diff": result.max_abs_diff,
            "argmax_agreement": result.argmax_agreement,
        },
        "params": result.params,
        "macs": result.macs,
        "dense_params": result.dense_params,
        "dense_macs": result.dense_macs,
        "torch_params": result.torch_params,
        "provenance": provenance({"checkpoint": checkpoint.path}),
    }

"""Export to ONNX, check parity with torch in onnxruntime, count: the one path that
`export` and `committee` share.

A failed export or parity check raises ExportError and writes nothing; `write_onnx` writes a
checked graph atomically, with every tensor inside the one file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto
from torch import nn

from snptool.config import DataConfig, ExportConfig
from snptool.core.checkpoint import Checkpoint, masks_of
from snptool.core.files import atomic_path, scratch_directory
from snptool.core.macs import count_macs
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.data.datasets import DataSplit, prepare_batch
from snptool.deploy.onnx_file import METADATA_KEY
from snptool.errors import ExportError
from snptool.pruning.compact import compact_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
SINGLE_FILE_LIMIT = 2**31 - 1  # protobuf's limit on one serialised ONNX file
# What torch.onnx.export raises for a model it cannot translate (UnsupportedOperatorError and
# the dynamo exporter's errors derive from OnnxExporterError; tracing failures are
# RuntimeErrors; an opset it does not know is a ValueError).
EXPORTER_ERRORS = (torch.onnx.errors.OnnxExporterError, RuntimeError, ValueError)
_NOISY_LOGGERS = ("torch.onnx", "onnxscript")
RANDOM_INPUTS = "random normal inputs (seed 0)"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Parity:
    """How closely onnxruntime's logits follow torch's on the same inputs."""

    max_abs_diff: float
    argmax_agreement: float  # share of inputs with the same top-1 label
    samples: int


def model_for_export(checkpoint: Checkpoint) -> nn.Module:
    """The module that goes into the ONNX file: a pruned checkpoint's model with its dead
    units cut out (compact.py), else the checkpoint's model itself."""
    if not masks_of(checkpoint):
        return checkpoint.model
    model, _ = compact_model(checkpoint)
    return model


def export_checked(
    model: nn.Module,
    reference: nn.Module,
    inputs: torch.Tensor,
    config: ExportConfig,
    *,
    source: str,
    output_name: str = OUTPUT_NAME,
) -> tuple[onnx.ModelProto, bool, Parity]:
    """(graph, whether dynamo made it, parity): `model` exported and checked against
    `reference` on `inputs`; with `config.fallback` the other exporter is tried when the first
    fails, and the error names both reasons."""
    exporters = [config.dynamo, not config.dynamo] if config.fallback else [config.dynamo]
    failures = []
    for dynamo in exporters:
        attempt = replace(config, dynamo=dynamo)
        try:
            graph = export_onnx(
                model, inputs.shape[1:], attempt, source=source, output_name=output_name
            )
            parity = check_parity(
                reference, graph, inputs, attempt, source=source, output_name=output_name
            )
            return graph, dynamo, parity
        except ExportError as error:
            name = "dynamo" if dynamo else "TorchScript"
            failures.append((name, error))
            logger.debug("%s exporter failed: %s", name, error)
    if len(failures) == 1:
        raise failures[0][1]
    prefix = f"cannot export {source} to ONNX: "
    reasons = "; ".join(
        f"{name}: {str(error).split('; ')[0].removeprefix(prefix)}" for name, error in failures
    )
    raise ExportError(
        f"cannot export {source} to ONNX with either exporter ({reasons}); nothing was "
        "written; try another --opset."
    )


def parity_inputs(
    checkpoint: Checkpoint,
    data_spec: str | None,
    config: ExportConfig,
    data_config: DataConfig | None,
) -> tuple[DataSplit | None, torch.Tensor]:
    """The test split and its first `parity_samples` images as model input (N, C, H, W); with
    no data set named by the flag or the checkpoint, no split and seeded random normal inputs
    of the checkpoint's input shape."""
    if not (data_spec or checkpoint.metadata.get("data")):
        generator = torch.Generator().manual_seed(0)
        shape = (config.parity_samples, *checkpoint.input_spec.shape)
        return None, torch.randn(shape, generator=generator)
    data = load_checkpoint_data(checkpoint, data_spec, "test", data_config)
    spec = checkpoint.input_spec
    batches, count = [], 0
    for images, _ in data.batches(spec, config.batch_size):
        batches.append(images)
        count += len(images)
        if count >= config.parity_samples:
            break
    images = torch.cat(batches)[: config.parity_samples]
    return data, prepare_batch(images, spec)


def export_onnx(
    model: nn.Module,
    shape: tuple[int, ...],
    config: ExportConfig,
    *,
    source: str,
    output_name: str = OUTPUT_NAME,
) -> onnx.ModelProto:
    """Export `model` for (batch, *shape) inputs; a checked graph with all weights inside."""
    example = torch.zeros(2, *shape)  # batch 2: a batch of 1 could be traced as a constant
    with scratch_directory("snptool-export-") as directory:
        path = directory / "model.onnx"
        try:
            with _exporter_output_to_log():
                options = _exporter_options(config, output_name)
                torch.onnx.export(model, (example,), str(path), **options)
        except EXPORTER_ERRORS as error:
            other = "leave out --dynamo" if config.dynamo else "--dynamo"
            raise ExportError(
                f"cannot export {source} to ONNX: {_first_line(error)}; "
                f"try another --opset or {other}."
            ) from None
        graph = onnx.load(str(path))  # reads any external data file into the graph
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as error:
        raise ExportError(
            f"the ONNX graph exported from {source} is invalid: {_first_line(error)}; "
            "try another --opset."
        ) from None
    written = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != config.opset:  # the dynamo exporter converts to the opsets it supports
        raise ExportError(
            f"the exporter wrote {source} at opset {written}, not the --opset {config.opset} "
            f"asked for; give --opset {written} (or another opset it writes)."
        )
    return graph


def _exporter_options(config: ExportConfig, output_name: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [output_name],
        "opset_version": config.opset,
        "dynamo": config.dynamo,
        "verbose": False,
    }
    if config.dynamo:
        batch = torch.export.Dim("batch")
        return {**options, "dynamic_shapes": ({0: batch},), "external_data": False}
    return {**options, "dynamic_axes": {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}}


@contextlib.contextmanager
def _exporter_output_to_log() -> Iterator[None]:
    """Keep the exporter's chatter off stdout (which carries --json) and stderr.

    The TorchScript exporter prints the whole graph to file descriptor 1 from C++ when it
    fails, and warns that it is the legacy exporter; the dynamo exporter logs its opset
    conversion. All of it goes to this module's debug log instead.
    """
    sys.stdout.flush()
    saved_fd = os.dup(1)
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.dup2(sink.fileno(), 1)
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                yield
        finally:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            sink.seek(0)
            chatter = sink.read().decode(errors="replace") + printed.getvalue()
            for message in [str(w.message) for w in caught] + [chatter.strip()]:
                if message:
                    logger.debug("exporter: %s", message)


def _first_line(error: BaseException) -> str:
    """The first line of an error, or of the error that caused it when that says more."""
    while error.__cause__ is not None and type(error).__module__.startswith("torch.onnx"):
        error = error.__cause__
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__).rstrip(".")[:300]


@torch.no_grad()
def check_parity(
    model: nn.Module,
    graph: onnx.ModelProto,
    inputs: torch.Tensor,
    config: ExportConfig,
    *,
    source: str,
    output_name: str = OUTPUT_NAME,
) -> Parity:
    """Run `inputs` (N, C, H, W) through torch and onnxruntime (CPU); raise when they differ."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's notes go to stderr otherwise
    session = onnxruntime.InferenceSession(
        graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    largest, agree, scale = 0.0, 0, 1.0
    for start in range(0, len(inputs), config.batch_size):
        x = inputs[start : start + config.batch_size]
        expected = model(x).numpy()  # (B, L)
        (actual,) = session.run([output_name], {INPUT_NAME: x.numpy()})
        if actual.shape != expected.shape:
            raise ExportError(
                f"the ONNX graph of {source} gives {output_name} of shape {list(actual.shape)}, "
                f"torch {list(expected.shape)}; the model's forward depends on the batch size."
            )
        largest = max(largest, float(np.abs(actual - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
        agree += int((actual.argmax(1) == expected.argmax(1)).sum())
    parity = Parity(largest, agree / len(inputs), len(inputs))
    if not parity.max_abs_diff <= config.parity_tolerance * scale:  # also catches NaN
        raise ExportError(
            f"the ONNX graph of {source} differs from torch by up to {parity.max_abs_diff:.3g} "
            f"on {parity.samples} inputs (tolerance {config.parity_tolerance:g} × the largest "
            f"|logit| {scale:.3g}); nothing was written; try another --opset, or raise "
            "--parity-tolerance."
        )
    return parity


def count_params(graph: onnx.ModelProto) -> int:
    """Weights of an ONNX graph: elements of its floating-point initializers.

    The TorchScript exporter stores identical weights once and feeds the copies through
    Identity nodes; each such copy counts again, so equal values do not lower the count.
    """
    sizes = {
        t.name: math.prod(t.dims) for t in graph.graph.initializer if t.data_type in FLOAT_TYPES
    }
    copies = [n.input[0] for n in graph.graph.node if n.op_type == "Identity"]
    return sum(sizes.values()) + sum(sizes[name] for name in copies if name in sizes)


def count_graph_macs(onnx_model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one sample (batch 1) in an ONNX graph's Conv, ConvTranspose, Gemm
    and MatMul nodes: the cross-check of the one MAC counter (macs.count_macs) that `export`
    reports.

    Conv (1-, 2- or 3-d): output elements × C_in/groups × kernel size; ConvTranspose: input
    elements × C_out/groups × kernel size (every input element meets every weight of its group,
    products that fall into the cropped padding included); Gemm and MatMul: M × K × N (output
    elements × K). Shapes come from ONNX shape inference with the symbolic input dimensions
    (the batch) set to 1. A leading dimension that inference loses on the way counts as 1: it
    is the batch, which e.g. a Pad with computed pads (ResNet's option-A shortcut) hides. Other
    operators (pooling, activations, additions, pads) are not counted.
    """
    model = _with_symbolic_dims_one(onnx_model)
    shapes = _known_shapes(onnx.shape_inference.infer_shapes(model, data_prop=True).graph)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        # ConvTranspose is counted from its input, the others from their output
        counted = node.input[0] if node.op_type == "ConvTranspose" else node.output[0]
        elements, weight = (
            _batch_one_shape(shapes, name, node) for name in (counted, node.input[1])
        )
        if node.op_type in ("Conv", "ConvTranspose"):
            depth = math.prod(
                weight[1:]
            )  # Conv (C_out, C_in/g, k…); transposed (C_in, C_out/g, k…)
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            depth = weight[1] if trans_b else weight[0]  # B: (K, N), or (N, K) transposed
        else:
            depth = weight[-2] if len(weight) > 1 else weight[0]  # B: (…, K, N) or (K,)
        total += math.prod(elements) * depth
    return total


def _with_symbolic_dims_one(onnx_model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(onnx_model)
    del copy.graph.value_info[:]
    for value in (*copy.graph.input, *copy.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    return copy


def _known_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in dims
            )
    return shapes


def _batch_one_shape(shapes: dict[str, tuple], name: str, node: onnx.NodeProto) -> tuple[int, ...]:
    """The inferred shape of `name`, an unknown leading (batch) dimension read as 1."""
    shape = shapes.get(name)
    if shape is None or None in shape[1:]:
        raise ExportError(
            f"cannot count the MACs of {node.op_type} node {node.name or '?'}: shape inference "
            f"left the shape of {name} unknown."
        )
    return (1 if shape[0] is None else shape[0], *shape[1:]) if shape else shape


def describe_input(record: dict[str, Any]) -> dict[str, Any]:
    """The graph input's entry of the metadata: a checkpoint's input record, named and laid out."""
    return {
        **record,
        "name": INPUT_NAME,
        "layout": "NCHW",
        "dtype": "float32",
        "preprocess": "(pixels / 255 - mean) / std, per channel",
    }


def add_metadata(graph: onnx.ModelProto, document: dict[str, Any]) -> None:
    """Store `document` as JSON under `snptool`, and the counts as `snptool.<count>` strings."""
    entries = {METADATA_KEY: json.dumps(document, sort_keys=True)}
    for key in ("params", "macs", "dense_params", "dense_macs"):
        entries[f"{METADATA_KEY}.{key}"] = str(document[key])
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key not in entries]
    del graph.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        graph.metadata_props.add(key=key, value=value)


def write_onnx(graph: onnx.ModelProto, output: str | Path) -> None:
    """Write `graph` with every tensor inside the one file, atomically."""
    if graph.ByteSize() > SINGLE_FILE_LIMIT:
        raise ExportError(
            f"the ONNX graph for {output} is {graph.ByteSize() / 2**30:.1f} GiB, over the 2 GiB "
            "a single ONNX file can hold."
        )
    with atomic_path(output) as temporary:
        onnx.save_model(graph, str(temporary), save_as_external_data=False)


@dataclass(frozen=True)
class CheckedGraph:
    """An exported graph that passed its parity check, with its counts and the dense model's."""

    graph: onnx.ModelProto
    dynamo: bool  # whether the dynamo exporter made it
    parity: Parity
    params: int
    macs: int  # per sample
    dense_params: int
    dense_macs: int

    def summary(self) -> dict[str, Any]:
        """The fields an export's result and metadata report: exporter, parity, counts."""
        return {
            "dynamo": self.dynamo,
            "samples": self.parity.samples,
            "max_abs_diff": self.parity.max_abs_diff,
            "argmax_agreement": self.parity.argmax_agreement,
            "params": self.params,
            "macs": self.macs,
            "dense_params": self.dense_params,
            "dense_macs": self.dense_macs,
        }


def export_and_check(
    model: nn.Module,
    reference: nn.Module,
    dense: nn.Module,
    inputs: torch.Tensor,
    config: ExportConfig,
    *,
    source: str,
    output_name: str = OUTPUT_NAME,
) -> CheckedGraph:
    """`model` exported and checked against `reference` on `inputs` (`export_checked`), its
    parameters counted in the graph and its MACs by `count_macs`; `dense` (the network before
    pruning, `model` itself when nothing was removed) is exported by the same exporter to count
    the same way."""
    graph, dynamo, parity = export_checked(
        model, reference, inputs, config, source=source, output_name=output_name
    )
    shape = tuple(inputs.shape[1:])
    params, macs = count_params(graph), count_macs(model, shape)
    if dense is model:
        return CheckedGraph(graph, dynamo, parity, params, macs, params, macs)
    options = replace(config, dynamo=dynamo)
    dense_graph = export_onnx(dense, shape, options, source=source, output_name=output_name)
    return CheckedGraph(
        graph, dynamo, parity, params, macs, count_params(dense_graph), count_macs(dense, shape)
    )

"""An ONNX file as snptool reads it: the graph, the `snptool` metadata an export wrote (input
normalisation, class names, the data it was checked on) and whether it is already quantized.

A file without that metadata (exported by other tools) is still read; the steps that need the
preprocessing then take it from flags, or refuse in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from snptool.config import DataConfig, InputSpec
from snptool.core.files import require_file, sha256_file
from snptool.core.schema import (
    Count,
    DataRecord,
    InputRecord,
    LenientRecord,
    Name,
    check_class_names,
    short_repr,
    validate_record,
)
from snptool.errors import InputFileError, UsageError

METADATA_KEY = "snptool"  # the graph's metadata_props key of the JSON document

# What onnxruntime raises for a file it cannot load or a graph that fails while it runs (missing,
# not protobuf, truncated, a graph that does not check, an operator it lacks, a shape that breaks).
ORT_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoModel,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
    ort_errors.EPFail,
)

# Operators that only a quantized graph has (QDQ pairs, QOperator kernels, dynamic integer ops).
QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
}


class ParityRecord(LenientRecord):
    data: DataRecord | str | None = None  # a string: random inputs (RANDOM_INPUTS)


class OnnxRecord(LenientRecord):
    """The `snptool` metadata document of an exported (or quantized, or committee) graph."""

    num_classes: Count | None = None
    class_names: list[Name] | None = None
    input: InputRecord | None = None
    parity: ParityRecord | None = None

    def check_classes(self) -> None:
        if self.class_names is not None:
            check_class_names(self.class_names, self.num_classes)


@dataclass(frozen=True)
class OnnxFile:
    """A loaded ONNX model and what its `snptool` metadata says (None for a foreign file)."""

    path: Path
    graph: onnx.ModelProto
    sha256: str
    metadata: dict[str, Any] | None

    @property
    def input_name(self) -> str:
        """The graph's data input (older exporters also list the weights as inputs)."""
        weights = {t.name for t in self.graph.graph.initializer}
        return next(i.name for i in self.graph.graph.input if i.name not in weights)

    @property
    def output_name(self) -> str:
        return self.graph.graph.output[0].name

    @property
    def quantized_ops(self) -> list[str]:
        """The quantized operators the graph holds (empty for a float graph)."""
        return sorted({n.op_type for n in self.graph.graph.node if n.op_type in QUANTIZED_OPS})

    @property
    def class_names(self) -> list[str] | None:
        return (self.metadata or {}).get("class_names")

    def input_spec(self, fallback: InputSpec | None = None) -> InputSpec:
        """The preprocessing the export recorded, else `fallback` (from flags), else an error;
        flags for a file that records its own preprocessing are refused, not silently lost."""
        record = (self.metadata or {}).get("input")
        if record is not None and fallback is not None:
            raise UsageError(
                f"{self.path} records its preprocessing (mean {record.get('mean')}, std "
                f"{record.get('std')}); drop --input-size, --channels, --mean and --std."
            )
        if record is None:
            if fallback is None:
                raise UsageError(
                    f"{self.path} has no snptool metadata, so its preprocessing is unknown; "
                    "give --input-size, --channels, --mean and --std, or export it with "
                    "`snptool export`."
                )
            return fallback
        fields = ("channels", "height", "width", "mean", "std", "resize")
        return InputSpec(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in fields}
        )

    def data(self) -> tuple[str | None, DataConfig]:
        """The data set the export was checked on (spec, split settings), if it names one."""
        record = ((self.metadata or {}).get("parity") or {}).get("data")
        if not isinstance(record, dict):
            return None, DataConfig()
        classes = record.get("classes")
        config = DataConfig(
            test_fraction=record.get("test_fraction"),
            split_seed=record.get("split_seed"),
            classes=tuple(classes) if classes else None,
        )
        return record.get("spec"), config


def read_onnx(path: str | Path) -> OnnxFile:
    """Load an ONNX file whole (weights inside), or raise a one-line InputFileError."""
    path = require_file(path, "ONNX file")
    try:
        graph = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputFileError(
            f"{path} is not a readable ONNX file ({reason}); give a complete .onnx file."
        ) from None
    if not graph.graph.node or not graph.graph.input or not graph.graph.output:
        raise InputFileError(
            f"{path} holds no ONNX graph (no nodes, inputs or outputs); give a complete .onnx file."
        )
    props = {p.key: p.value for p in graph.metadata_props}
    metadata = None
    if METADATA_KEY in props:
        try:
            metadata = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError:
            raise InputFileError(
                f"{path} has corrupt snptool metadata; export the checkpoint again."
            ) from None
        check_metadata(path, graph, metadata)
    return OnnxFile(path, graph, sha256_file(path), metadata)


def check_metadata(path: Path, graph: onnx.ModelProto, metadata: Any) -> OnnxRecord:
    """The metadata as a typed record that agrees with the graph: as many class names as
    outputs, and the recorded input's shape where the graph fixes one."""
    where, fix = f"ONNX file {path}", "export the checkpoint again"
    record = validate_record(OnnxRecord, metadata, where=where, fix=fix)
    try:
        record.check_classes()
    except ValueError as error:
        raise InputFileError(f"{where}: class_names {error}; {fix}.") from None
    outputs = _static_dims(graph.graph.output[0]) if graph.graph.output else []
    if record.class_names and outputs and outputs[-1] not in (None, len(record.class_names)):
        raise InputFileError(
            f"{where} names {len(record.class_names)} classes but its graph gives "
            f"{outputs[-1]} outputs; {fix}."
        )
    weights = {t.name for t in graph.graph.initializer}
    data_input = next((i for i in graph.graph.input if i.name not in weights), None)
    dims = _static_dims(data_input) if data_input is not None else []
    if record.input is not None and len(dims) == 4:
        wanted = (record.input.channels, record.input.height, record.input.width)
        if any(d is not None and d != w for d, w in zip(dims[1:], wanted, strict=True)):
            shape = "x".join("?" if d is None else str(d) for d in dims[1:])
            raise InputFileError(
                f"{where} records a {'x'.join(map(str, wanted))} input but its graph takes "
                f"{shape}; {fix}."
            )
    return record


def _static_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """A graph input's or output's dimensions (None where symbolic)."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def run_session(session: Any, feed: dict[str, Any], path: str | Path) -> list[Any]:
    """`session.run(None, feed)`, with a graph that fails in onnxruntime as one line."""
    try:
        return session.run(None, feed)
    except ORT_ERRORS as error:
        raise InputFileError(
            f"{path} fails in onnxruntime ({ort_reason(error)}); the graph does not run on "
            "its input, so export it again or check it with onnx.checker."
        ) from None


def ort_reason(error: BaseException) -> str:
    """The part of an onnxruntime error a user can act on (its status message, not the
    source location), at most 200 characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.split("Status Message: ")[-1]
    text = text.split(" was false. ")[-1]  # after an internal assertion, the explanation
    return short_repr(text, 200)[1:-1] if len(text) > 200 else text.rstrip(".")


def is_onnx_path(path: str | Path) -> bool:
    """Whether a model argument names an ONNX file (by its suffix), not a checkpoint."""
    return Path(path).suffix.lower() == ".onnx"

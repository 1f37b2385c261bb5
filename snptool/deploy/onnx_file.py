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

from snptool.config import DataConfig, InputSpec
from snptool.core.files import require_file, sha256_file
from snptool.deploy.checked_export import METADATA_KEY
from snptool.errors import InputFileError, UsageError

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
    return OnnxFile(path, graph, sha256_file(path), metadata)


def is_onnx_path(path: str | Path) -> bool:
    """Whether a model argument names an ONNX file (by its suffix), not a checkpoint."""
    return Path(path).suffix.lower() == ".onnx"

"""`snptool quantize`: an ONNX export → int8, with onnxruntime's own quantization tool.

Static: a QDQ graph, weights per output channel, activation ranges calibrated on images of the
data's train split; dynamic: weights only. The preprocessing and the data come from the
export's metadata, so `export | quantize | latency` composes. The accuracy of the float and the
int8 graph on the test split and their argmax agreement are measured and recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from snptool.config import DataConfig, InputSpec, QuantizeConfig, config_to_dict
from snptool.core import console
from snptool.core.files import check_output_path, provenance, scratch_directory
from snptool.data.datasets import DataSplit, prepare_batch
from snptool.deploy.checked_export import METADATA_KEY, write_onnx
from snptool.deploy.onnx_evaluate import OnnxModel, check_onnx_classes, onnx_data
from snptool.deploy.onnx_file import OnnxFile, read_onnx
from snptool.errors import ExportError, InputFileError, UsageError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CALIBRATE = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


@dataclass(frozen=True)
class QuantizeResult:
    """Sizes in bytes; accuracies on the test split (None without a data set)."""

    model: str
    output: str
    method: str
    calibration: int  # images (0 for dynamic)
    data: str | None
    float_bytes: int
    int8_bytes: int
    float_accuracy: float | None
    int8_accuracy: float | None
    argmax_agreement: float | None
    samples: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


class _Calibration(CalibrationDataReader):
    """The calibration batches, fed to onnxruntime's calibrator by input name."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, batches
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._left, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._left = iter(self.batches)


def calibration_batches(
    data: DataSplit, spec: InputSpec, count: int, batch_size: int, seed: int
) -> list[np.ndarray]:
    """The first `count` images of the split in the order seeded by `seed`, preprocessed, as
    float32 (B, C, H, W) batches."""
    order = data.order(shuffle=True, seed=seed)[:count]
    batches = []
    for images, _ in data.images.batches(order, batch_size, spec, data.config.workers):
        batches.append(prepare_batch(images, spec).numpy().astype(np.float32))
    return batches


def quantize_graph(
    file: OnnxFile, config: QuantizeConfig, calibration: list[np.ndarray] | None
) -> tuple[onnx.ModelProto, bool]:
    """(the int8 graph, whether onnxruntime's pre-processing ran): symbolic shape inference
    and graph optimisation first, as onnxruntime advises, then static or dynamic quantization."""
    with scratch_directory("snptool-quantize-") as directory:
        source, prepared, target = (directory / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        onnx.save_model(file.graph, str(source))
        try:
            quant_pre_process(str(source), str(prepared))
            preprocessed = True
        except Exception as error:  # noqa: BLE001 (a third-party optimiser; recorded, not hidden)
            logger.warning(
                "onnxruntime's pre-processing failed (%s); quantizing as exported", error
            )
            prepared, preprocessed = source, False
        try:
            if config.method == "static":
                quantize_static(
                    str(prepared),
                    str(target),
                    _Calibration(file.input_name, calibration or []),
                    quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel,
                    activation_type=_TYPES[config.activation_type],
                    weight_type=_TYPES[config.weight_type],
                    calibrate_method=_CALIBRATE[config.calibrate_method],
                )
            else:
                quantize_dynamic(
                    str(prepared),
                    str(target),
                    per_channel=config.per_channel,
                    weight_type=_TYPES[config.weight_type],
                )
        except (RuntimeError, ValueError, KeyError) as error:
            raise ExportError(
                f"onnxruntime could not quantize {file.path} ({str(error).splitlines()[0]}); "
                "try --method dynamic, or another --calibrate-method."
            ) from None
        return onnx.load(str(target)), preprocessed


@torch.no_grad()
def predictions(model: OnnxModel, data: DataSplit, spec: InputSpec, batch_size: int) -> np.ndarray:
    """The argmax label of every image of the split, in its stored order."""
    found = []
    with console.progress("accuracy", data.num_batches(batch_size)) as task:
        for images, _ in data.batches(spec, batch_size):
            found.append(model(prepare_batch(images, spec)).argmax(1).numpy())
            task.advance()
    return np.concatenate(found)


def run_quantize(
    model_path: str | Path,
    output: str | Path,
    config: QuantizeConfig | None = None,
    *,
    data_spec: str | None = None,
    data_config: DataConfig | None = None,
    input_spec: InputSpec | None = None,
) -> QuantizeResult:
    """Quantize an ONNX file to `output` (atomically), and measure what it costs.

    The data is `data_spec`, else the one the export recorded; static quantization needs one.
    `input_spec` is the preprocessing of a file whose export recorded none.
    """
    config = config or QuantizeConfig()
    started = time.perf_counter()
    check_output_path(output, model_path)
    file = read_onnx(model_path)
    if file.quantized_ops:
        raise InputFileError(
            f"{file.path} is already quantized (it has {', '.join(file.quantized_ops)}); "
            "quantize its float export instead."
        )
    spec = file.input_spec(input_spec)
    has_data = bool(data_spec or file.data()[0])
    if config.method == "static" and not has_data:
        raise UsageError(
            f"static quantization calibrates on training images, and {file.path} names no data "
            "set; pass --data SPEC, or use --method dynamic."
        )
    static = config.method == "static"
    train = onnx_data(file, data_spec, "train", data_config) if static else None
    test = onnx_data(file, data_spec, "test", data_config) if has_data else None
    calibration = None
    if static:
        if len(train) == 0:
            raise UsageError(f"the train split of {train.spec} is empty; nothing to calibrate on.")
        calibration = calibration_batches(
            train, spec, config.calibration, config.batch_size, config.seed
        )
    graph, preprocessed = quantize_graph(file, config, calibration)
    accuracy = measure(file, graph, test, spec, config.batch_size) if test is not None else None
    count = sum(len(b) for b in calibration or [])
    document = describe_quantized(file, config, train, calibration, count, preprocessed, accuracy)
    _set_metadata(graph, document)
    write_onnx(graph, output)
    return QuantizeResult(
        model=str(model_path),
        output=str(output),
        method=config.method,
        calibration=count,
        data=test.spec if test is not None else None,
        float_bytes=file.path.stat().st_size,
        int8_bytes=Path(output).stat().st_size,
        float_accuracy=accuracy["float"] if accuracy else None,
        int8_accuracy=accuracy["int8"] if accuracy else None,
        argmax_agreement=accuracy["agreement"] if accuracy else None,
        samples=accuracy["samples"] if accuracy else 0,
        seconds=time.perf_counter() - started,
    )


def measure(
    file: OnnxFile, graph: onnx.ModelProto, test: DataSplit, spec: InputSpec, batch_size: int
) -> dict[str, Any]:
    """Test accuracy of the float and the int8 graph, and how often their argmax agree."""
    float_model = OnnxModel(file)
    check_onnx_classes(file, float_model, test)
    quantized = OnnxModel(OnnxFile(file.path, graph, file.sha256, file.metadata))
    labels = test.labels.numpy()
    before = predictions(float_model, test, spec, batch_size)
    after = predictions(quantized, test, spec, batch_size)
    return {
        "float": float((before == labels).mean()),
        "int8": float((after == labels).mean()),
        "agreement": float((before == after).mean()),
        "samples": len(labels),
        "data": test.record(),
    }


def describe_quantized(
    file: OnnxFile,
    config: QuantizeConfig,
    train: DataSplit | None,
    calibration: list[np.ndarray] | None,
    count: int,
    preprocessed: bool,
    accuracy: dict[str, Any] | None,
) -> dict[str, Any]:
    """The float export's `snptool` document with what the quantization did and measured."""
    digest = hashlib.sha256()
    for batch in calibration or []:
        digest.update(np.ascontiguousarray(batch).tobytes())
    quantization = {
        "format_version": FORMAT_VERSION,
        "tool": "onnxruntime.quantization",
        "format": "QDQ" if config.method == "static" else "dynamic",
        "calibration_images": count,
        "calibration_sha256": digest.hexdigest() if calibration else None,
        "calibration_data": train.record() if train is not None and calibration else None,
        "preprocessed": preprocessed,
        "config": config_to_dict(config),
        "accuracy": accuracy,
        "source": {"path": str(file.path), "sha256": file.sha256},
        "provenance": provenance({"model": file.path}),
    }
    return {**(file.metadata or {}), "quantization": quantization}


def _set_metadata(graph: onnx.ModelProto, document: dict[str, Any]) -> None:
    """`document` as JSON under `snptool` (the float export's counts stay beside it)."""
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key != METADATA_KEY]
    del graph.metadata_props[:]
    for key, value in [*kept, (METADATA_KEY, json.dumps(document, sort_keys=True))]:
        graph.metadata_props.add(key=key, value=value)


__all__ = ["run_quantize", "QuantizeResult"]

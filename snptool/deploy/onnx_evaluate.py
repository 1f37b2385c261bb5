"""`snptool evaluate MODEL.onnx`: the accuracy of any ONNX file (float or quantized) in
onnxruntime, on the data and with the preprocessing its export recorded, through the same
evaluation as a checkpoint's, so both give the same JSON."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from snptool.config import DataConfig, EvaluateConfig, InputSpec
from snptool.data.checkpoint_data import check_class_match
from snptool.data.datasets import DataSplit, load_data
from snptool.deploy.onnx_file import ORT_ERRORS, OnnxFile, read_onnx, run_session
from snptool.errors import DataError, InputFileError, UsageError, first_line
from snptool.training.evaluate import EvaluateResult, evaluate_model


class OnnxModel(nn.Module):
    """An onnxruntime CPU session behind nn.Module's call: (B, C, H, W) → (B, classes) logits."""

    def __init__(self, file: OnnxFile, *, threads: int = 0) -> None:
        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (the physical cores)
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                file.graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except ORT_ERRORS as error:
            raise InputFileError(
                f"onnxruntime cannot load {file.path} ({first_line(error)}); give a complete "
                ".onnx file."
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.path = file.path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().numpy()}
        (logits,) = run_session(self.session, feed, self.path)[:1]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    @property
    def num_classes(self) -> int | None:
        dims = self.session.get_outputs()[0].shape
        return dims[-1] if dims and isinstance(dims[-1], int) else None


def onnx_data(
    file: OnnxFile, data_spec: str | None, split: str, data_config: DataConfig | None
) -> DataSplit:
    """A split of `data_spec`, else of the data set the export was checked on, split as the
    export recorded (flags win where given)."""
    recorded_spec, recorded = file.data()
    spec = data_spec or recorded_spec
    if not spec:
        raise UsageError(f"{file.path} does not name its data set; pass --data SPEC.")
    given = data_config or DataConfig()
    merged = dataclasses.replace(
        given,
        test_fraction=given.test_fraction
        if given.test_fraction is not None
        else recorded.test_fraction,
        split_seed=given.split_seed if given.split_seed is not None else recorded.split_seed,
        classes=given.classes if given.restricts_classes else recorded.classes,
    )
    return load_data(spec, split, merged)


def check_onnx_classes(file: OnnxFile, model: OnnxModel, data: DataSplit) -> None:
    """The data must have as many classes as the graph's output (and its names, if recorded)."""
    classes = model.num_classes
    if classes is not None and classes != data.num_classes:
        raise DataError(
            f"{data.spec} has {data.num_classes} classes but {file.path} outputs {classes}; "
            "use the data set the model was trained on."
        )
    if file.class_names:
        check_class_match(file.class_names, data, str(file.path))


def run_evaluate_onnx(
    model_path: str | Path,
    data_spec: str | None = None,
    config: EvaluateConfig | None = None,
    data_config: DataConfig | None = None,
    *,
    input_spec: InputSpec | None = None,
) -> EvaluateResult:
    """Evaluate an ONNX file in onnxruntime; `input_spec` is the preprocessing of a file whose
    export recorded none (a foreign ONNX file)."""
    config = config or EvaluateConfig()
    file = read_onnx(model_path)
    spec = file.input_spec(input_spec)
    data = onnx_data(file, data_spec, config.split, data_config)
    model = OnnxModel(file)
    check_onnx_classes(file, model, data)
    result = evaluate_model(model, data, spec, batch_size=config.batch_size, device="cpu")
    names = file.class_names or data.class_names
    per_class = dict(zip(names, result.per_class, strict=True))
    return EvaluateResult(
        str(model_path),
        data.spec,
        config.split,
        result.accuracy,
        result.loss,
        result.samples,
        per_class,
    )

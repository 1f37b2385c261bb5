"""`snptool quantize` and `snptool evaluate MODEL.onnx`: real onnxruntime quantization of a
tiny trained VGG, its accuracy, its metadata, and one-line refusals that write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from snptool.config import ExportConfig, QuantizeConfig
from snptool.deploy.export import run_export
from snptool.deploy.onnx_evaluate import run_evaluate_onnx
from snptool.deploy.onnx_file import read_onnx
from snptool.deploy.quantize import run_quantize
from snptool.errors import UsageError
from snptool.training.evaluate import run_evaluate
from tests.conftest import assert_one_error, invoke, write_tiny_onnx


@pytest.fixture(scope="module")
def exported(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny VGG exported with its data set (digits) named in the metadata."""
    output = tmp_path_factory.mktemp("quantize") / "tiny.onnx"
    run_export(checkpoint_path, output, ExportConfig(parity_samples=16))
    return output


@pytest.fixture(scope="module")
def quantized(exported: Path) -> tuple[Path, object]:
    output = exported.with_suffix(".int8.onnx")
    return output, run_quantize(exported, output, QuantizeConfig(calibration=64))


def weight_bytes(path: Path) -> int:
    """Bytes of a graph's initializers (the file also holds the graph and the metadata)."""
    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)


def test_static_quantization_writes_a_qdq_graph_that_agrees_with_float(quantized, exported):
    output, result = quantized
    graph = read_onnx(output)
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(graph.quantized_ops)
    assert result.argmax_agreement >= 0.98, result
    assert abs(result.int8_accuracy - result.float_accuracy) <= 0.02
    assert result.int8_bytes < result.float_bytes == exported.stat().st_size
    assert weight_bytes(output) < 0.35 * weight_bytes(exported)  # int8 weights, float scales
    assert result.calibration == 64 and result.samples == 359


def test_the_int8_file_records_how_it_was_made(quantized, exported):
    output, result = quantized
    document = read_onnx(output).metadata
    quantization = document["quantization"]
    assert quantization["config"]["method"] == "static"
    assert quantization["calibration_images"] == 64
    assert len(quantization["calibration_sha256"]) == 64
    assert quantization["calibration_data"]["spec"] == "digits"
    assert quantization["calibration_data"]["split"] == "train"
    assert quantization["source"]["sha256"] == read_onnx(exported).sha256
    assert quantization["accuracy"]["agreement"] == result.argmax_agreement
    assert document["input"] == read_onnx(exported).metadata["input"]  # composes with latency


def test_quantization_is_deterministic_for_one_seed(exported, quantized, tmp_path):
    again = run_quantize(exported, tmp_path / "again.onnx", QuantizeConfig(calibration=64))
    first, second = (onnx.load(str(p)) for p in (quantized[0], tmp_path / "again.onnx"))
    assert first.graph.SerializeToString() == second.graph.SerializeToString()
    assert again.int8_accuracy == quantized[1].int8_accuracy
    other = run_quantize(exported, tmp_path / "other.onnx", QuantizeConfig(calibration=64, seed=1))
    assert (
        read_onnx(tmp_path / "other.onnx").metadata["quantization"]["calibration_sha256"]
        != (read_onnx(quantized[0]).metadata["quantization"]["calibration_sha256"])
    )
    assert other.calibration == 64


def test_evaluate_on_the_onnx_file_equals_evaluate_on_its_checkpoint(exported, checkpoint_path):
    from snptool.config import EvaluateConfig

    on_onnx = run_evaluate_onnx(exported)
    on_checkpoint = run_evaluate(checkpoint_path, config=EvaluateConfig(device="cpu"))
    assert on_onnx.samples == on_checkpoint.samples == 359
    assert on_onnx.accuracy == pytest.approx(on_checkpoint.accuracy, abs=1 / 359)
    assert on_onnx.loss == pytest.approx(on_checkpoint.loss, rel=1e-4)
    assert set(on_onnx.to_json()) == set(on_checkpoint.to_json())


def test_evaluate_cli_takes_an_onnx_file_and_prints_the_same_json(quantized):
    output, result = quantized
    found = invoke("evaluate", output, "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["accuracy"] == pytest.approx(result.int8_accuracy)


@pytest.fixture(scope="module")
def exported_without_data(checkpoint_path: Path, tmp_path_factory) -> Path:
    """The trained tiny VGG exported from a checkpoint that names no data set (random-input
    parity): its ONNX metadata names none either."""
    from snptool.core.checkpoint import read_checkpoint, write_checkpoint

    directory = tmp_path_factory.mktemp("bare")
    checkpoint = read_checkpoint(checkpoint_path)
    metadata = {k: v for k, v in checkpoint.metadata.items() if k != "data"}
    write_checkpoint(directory / "bare.safetensors", checkpoint.model, metadata)
    run_export(
        directory / "bare.safetensors", directory / "bare.onnx", ExportConfig(parity_samples=4)
    )
    return directory / "bare.onnx"


def test_dynamic_quantization_needs_no_data(exported_without_data, tmp_path):
    with pytest.raises(UsageError, match="names no data set; pass --data SPEC"):
        run_quantize(exported_without_data, tmp_path / "static.onnx")
    result = run_quantize(
        exported_without_data, tmp_path / "dynamic.onnx", QuantizeConfig(method="dynamic")
    )
    assert result.float_accuracy is None and result.calibration == 0
    assert "DynamicQuantizeLinear" in read_onnx(tmp_path / "dynamic.onnx").quantized_ops
    assert not (tmp_path / "static.onnx").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("text", "is not a readable ONNX file"),
        ("truncated", "is not a readable ONNX file"),
        ("quantized", "is already quantized"),
        ("foreign", "has no snptool metadata, so its preprocessing is unknown"),
        ("zero", "calibration must be at least 1 image"),
        ("no data", "names no data set; pass --data SPEC, or use --method dynamic"),
        ("conflict", "records its preprocessing"),
    ],
)
def test_bad_inputs_get_one_line_and_write_nothing(
    case, message, exported, quantized, exported_without_data, tmp_path
):
    model, extra = exported, []
    if case == "text":
        model = tmp_path / "notes.onnx"
        model.write_text("not a model\n")
    elif case == "truncated":
        model = tmp_path / "cut.onnx"
        model.write_bytes(exported.read_bytes()[: len(exported.read_bytes()) // 2])
    elif case == "quantized":
        model = quantized[0]
    elif case == "foreign":
        model = write_tiny_onnx(tmp_path / "foreign.onnx")
    elif case == "no data":
        model = exported_without_data
    elif case == "conflict":
        extra = ["--mean", "0.1,0.1,0.1"]
    else:
        extra = ["--calibration", "0"]
    output = tmp_path / "out.onnx"
    assert_one_error(invoke("quantize", model, "-o", output, *extra), contains=message)
    assert not output.exists() and not list(tmp_path.glob("*.part"))

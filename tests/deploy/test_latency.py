"""`snptool latency` on real tiny ONNX models exported from torch and run by onnxruntime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from snptool.config import LatencyConfig
from snptool.deploy.latency import MIN_BUDGET_RUNS, round_order, run_latency
from snptool.errors import InputFileError, UsageError
from tests.conftest import assert_one_error, invoke

FAST = LatencyConfig(warmup=2, runs=10)
FAST_FLAGS = ("--warmup", "2", "--runs", "10")
ROW_KEYS = {
    "path",
    "batch",
    "bytes",
    "runs",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "throughput",
    "ratio",
}


def conv_net(width: int) -> nn.Module:
    """Two 3×3 convs of `width` channels on 32×32 inputs and a 10-way head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    ).eval()


def export(model: nn.Module, path: Path, dynamic_axes: dict[int, str] | None = None) -> Path:
    """Export with the TorchScript exporter; `dynamic_axes` maps input dims to symbolic names."""
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": dynamic_axes} if dynamic_axes else None,
        )
    return path


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """narrow.onnx (16 channels) and wide.onnx (256) with a dynamic batch; fixed.onnx (batch 1);
    any_size.onnx (dynamic batch, height and width)."""
    directory = tmp_path_factory.mktemp("onnx")
    export(conv_net(16), directory / "narrow.onnx", {0: "batch"})
    export(conv_net(256), directory / "wide.onnx", {0: "batch"})
    export(conv_net(16), directory / "fixed.onnx")
    export(conv_net(16), directory / "any_size.onnx", {0: "batch", 2: "height", 3: "width"})
    return directory


@pytest.fixture(scope="module")
def narrow(onnx_dir: Path) -> Path:
    return onnx_dir / "narrow.onnx"


@pytest.fixture(scope="module")
def wide(onnx_dir: Path) -> Path:
    return onnx_dir / "wide.onnx"


# --- the library ------------------------------------------------------------------------------


def test_side_by_side_ratios_and_statistics(narrow: Path, wide: Path) -> None:
    result = run_latency([narrow, wide], FAST)
    first, second = result.rows
    assert [row.path for row in result.rows] == [str(narrow), str(wide)]
    assert first.ratio == 1.0
    # 256 vs 16 channels is ~250× the multiply-adds: slower by far more than any machine noise
    assert second.ratio > 1.0
    assert second.ratio == pytest.approx(second.p50_ms / first.p50_ms)
    for row in result.rows:
        assert row.runs == FAST.runs and row.batch == 1
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.std_ms >= 0
        assert row.throughput == pytest.approx(1 / (row.mean_ms / 1e3))


def test_rows_carry_the_file_size_and_the_profile_names_the_slowest_operators(
    narrow: Path, wide: Path
) -> None:
    plain = run_latency([narrow], FAST).rows[0]
    assert plain.bytes == narrow.stat().st_size and "operators" not in plain.to_json()
    import dataclasses

    result = run_latency([narrow, wide], dataclasses.replace(FAST, profile=True, profile_top=2))
    for row in result.rows:
        assert row.bytes == Path(row.path).stat().st_size
        assert 1 <= len(row.operators) <= 2
        assert [o["ms"] for o in row.operators] == sorted(
            (o["ms"] for o in row.operators), reverse=True
        )
        assert all(0 < o["share"] <= 1 and o["nodes"] >= 1 for o in row.operators)
    wide_ops = {o["op"]: o for o in result.rows[1].operators}
    assert "Conv" in wide_ops and wide_ops["Conv"]["share"] > 0.5  # 256 channels: Conv dominates
    assert result.rows[1].to_json()["operators"] == result.rows[1].operators


def test_runs_are_interleaved_in_alternating_order(narrow: Path, wide: Path) -> None:
    result = run_latency([narrow, wide, narrow], FAST)
    assert result.round_orders == [[0, 1, 2], [2, 1, 0]]
    assert [round_order(2, r) for r in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]


def test_config_and_environment_are_recorded(narrow: Path) -> None:
    result = run_latency([narrow], FAST)
    assert result.config["runs"] == 10 and result.config["warmup"] == 2
    assert result.config["batch_sizes"] == (1,)
    assert result.environment["onnxruntime"] == ort.__version__
    assert result.environment["provider"] == "CPUExecutionProvider"
    assert result.environment["session_providers"] == ["CPUExecutionProvider"]
    assert result.environment["threads"] == 1
    assert result.environment["cpu_count"] >= 1


def test_time_budget_stops(narrow: Path) -> None:
    quick = run_latency([narrow], LatencyConfig(warmup=0, budget_seconds=1e-6))
    assert quick.rows[0].runs == MIN_BUDGET_RUNS
    timed = run_latency([narrow], LatencyConfig(warmup=0, budget_seconds=0.2))
    assert timed.rows[0].runs >= MIN_BUDGET_RUNS


def test_one_row_per_model_and_batch(narrow: Path, wide: Path) -> None:
    config = LatencyConfig(warmup=1, runs=5, batch_sizes=(1, 3))
    rows = run_latency([narrow, wide], config).rows
    assert [(Path(r.path).name, r.batch) for r in rows] == [
        ("narrow.onnx", 1),
        ("wide.onnx", 1),
        ("narrow.onnx", 3),
        ("wide.onnx", 3),
    ]
    assert rows[0].ratio == 1.0 and rows[2].ratio == 1.0  # relative to the first at that batch
    assert rows[3].ratio == pytest.approx(rows[3].p50_ms / rows[2].p50_ms)


def test_config_checks_its_values() -> None:
    assert LatencyConfig(batch_sizes=(4, 1, 4)).batch_sizes == (4, 1)
    for bad in (
        {"runs": 0},
        {"warmup": -1},
        {"budget_seconds": 0.0},
        {"batch_sizes": ()},
        {"batch_sizes": (0,)},
        {"threads": 0},
        {"provider": ""},
        {"seed": -1},
    ):
        with pytest.raises(UsageError):
            LatencyConfig(**bad)


def test_symbolic_input_size_is_refused(onnx_dir: Path) -> None:
    with pytest.raises(UsageError, match="symbolic dimensions besides the batch"):
        run_latency([onnx_dir / "any_size.onnx"], FAST)


def test_a_bad_file_is_an_input_file_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    with pytest.raises(InputFileError, match="is not a readable ONNX model"):
        run_latency([text], FAST)


# --- the command ------------------------------------------------------------------------------


def test_cli_json(narrow: Path, wide: Path) -> None:
    result = invoke("latency", narrow, wide, *FAST_FLAGS, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [set(row) for row in rows] == [ROW_KEYS, ROW_KEYS]
    assert [row["path"] for row in rows] == [str(narrow), str(wide)]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 1.0
    assert "p50 ms" in result.stderr and "CPUExecutionProvider" in result.stderr


def test_cli_without_json_keeps_stdout_empty(narrow: Path) -> None:
    result = invoke("latency", narrow, *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "narrow.onnx" in result.stderr


def test_cli_batches_repeatable_and_comma_separated(narrow: Path) -> None:
    result = invoke("latency", narrow, "--warmup", 1, "--runs", 3, "--batch", 1, "--batch", "2,4")
    assert result.exit_code == 0, result.output
    result = invoke(
        "latency", narrow, "--warmup", 1, "--runs", 3, "--batch", "1", "--batch", "2,4", "--json"
    )
    assert [row["batch"] for row in json.loads(result.stdout)] == [1, 2, 4]


def test_cli_budget(narrow: Path) -> None:
    result = invoke("latency", narrow, "--warmup", 0, "--budget-seconds", 0.05, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["runs"] >= MIN_BUDGET_RUNS


def test_fixed_batch_model_refuses_another_batch(onnx_dir: Path) -> None:
    fixed = onnx_dir / "fixed.onnx"
    line = assert_one_error(invoke("latency", fixed, *FAST_FLAGS, "--batch", 4))
    assert line == (
        f"error: {fixed} has a fixed batch size of 1, not 4; use --batch 1 "
        "or export it with a dynamic batch axis."
    )
    assert invoke("latency", fixed, *FAST_FLAGS, "--batch", 1).exit_code == 0


def test_bad_files(narrow: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    assert_one_error(invoke("latency", narrow, missing), contains=f"{missing} does not exist")
    text = tmp_path / "text.onnx"
    text.write_text("this is not protobuf\n")
    assert_one_error(invoke("latency", text), contains="is not a readable ONNX model")
    truncated = tmp_path / "truncated.onnx"
    data = narrow.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_error(
        invoke("latency", narrow, truncated), contains=f"{truncated} is not a readable"
    )
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_one_error(invoke("latency", empty), contains="is not a readable ONNX model")
    assert_one_error(invoke("latency", tmp_path), contains="is a directory")


def test_bad_flags(narrow: Path) -> None:
    line = assert_one_error(invoke("latency", narrow, "--provider", "NoSuchProvider"))
    assert "unknown execution provider 'NoSuchProvider'" in line
    assert "CPUExecutionProvider" in line
    assert_one_error(invoke("latency", narrow, "--runs", 0), contains="runs must be at least 1")
    assert_one_error(invoke("latency", narrow, "--batch", "1,x"), contains="--batch")
    assert_one_error(invoke("latency", narrow, "--threads", 0), contains="threads")

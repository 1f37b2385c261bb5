"""The generalised-LeNet sweep: `snptool sweep` end to end on digits (tiny LeNets, 1 epoch):
JSON, sweep.json, reuse and resume of runs, bad flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import Result

from snptool.config import SweepConfig, TrainConfig, second_depth
from snptool.core.checkpoint import read_metadata
from snptool.core.files import command_line, sha256_file
from snptool.errors import UsageError
from snptool.training.train import run_train
from tests.conftest import assert_one_error, invoke

TINY = ["--data", "digits", "--d1", "2,4", "--seeds", "0,1", "--epochs", "1", "--device", "cpu"]


TINY += ["--bootstrap", "200"]


def test_config_rounds_d2_halves_up_and_checks_combinations():
    assert SweepConfig(d1=(3, 6, 12), ratio=16 / 6).d2 == (8, 16, 32)
    assert second_depth(1, 2.5) == 3 and second_depth(3, 2.5) == 8  # round() would give 2, 8
    with pytest.raises(UsageError, match="at least 2 distinct d1"):
        SweepConfig(d1=(4,))
    with pytest.raises(UsageError, match="2 seeds"):
        SweepConfig(seeds=(0,))
    assert SweepConfig(seeds=(0,), bootstrap=0).seeds == (0,)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, dict, Result]:
    """One tiny sweep through the CLI: d1 2, 4 × seeds 0, 1, one epoch on digits."""
    folder = tmp_path_factory.mktemp("sweep") / "runs"
    result = invoke("sweep", *TINY, "-o", folder, "--json")
    assert result.exit_code == 0, result.output
    return folder, json.loads(result.stdout), result


def test_sweep_prints_points_fit_and_config_as_json(swept):
    folder, document, result = swept
    points = document["points"]
    assert [(p["d1"], p["d2"], p["seed"]) for p in points] == [
        (2, 5, 0),
        (2, 5, 1),
        (4, 11, 0),
        (4, 11, 1),
    ]
    for point in points:
        assert point["error"] == pytest.approx(1 - point["accuracy"])
        assert point["status"] == "trained"
        metadata = read_metadata(point["checkpoint"])
        assert metadata["arch"]["kwargs"]["filters"] == [point["d1"], point["d2"]]
        assert metadata["arch"]["kwargs"]["fc_widths"] == [120, 84]
        assert metadata["training"]["config"]["seed"] == point["seed"]
        assert metadata["training"]["final_accuracy"] == point["accuracy"]
    fit = document["fit"]
    assert {"rho", "rho_ci", "prefactor", "r2", "method", "bootstrap", "confidence"} <= set(fit)
    assert fit["method"] == "runs" and fit["bootstrap"] == 200 and len(fit["rho_ci"]) == 2
    assert fit["rho_ci"][0] <= fit["rho"] <= fit["rho_ci"][1]
    assert document["config"]["accuracy"] == "final" and document["config"]["train"]["epochs"] == 1
    assert "mean error" in result.stderr and "ρ" in result.stderr


def test_sweep_writes_the_same_json_with_provenance(swept):
    folder, document, _ = swept
    written = json.loads((folder / "sweep.json").read_text())
    assert {k: written[k] for k in document} == document
    inputs = written["provenance"]["inputs"]
    assert len(inputs) == 4
    for point in document["points"]:
        record = inputs[Path(point["checkpoint"]).name]
        assert record["sha256"] == sha256_file(point["checkpoint"])
    assert written["test_data"]["spec"] == "digits"
    assert written["provenance"]["command"] == command_line()  # this process's argv
    assert not list(folder.glob("*.part")) and not list(folder.glob(".*"))


def test_sweep_reuses_complete_runs(swept, tmp_path):
    folder = shutil.copytree(swept[0], tmp_path / "runs")
    hashes = {p: sha256_file(p) for p in folder.glob("*.safetensors")}
    result = invoke("sweep", *TINY, "-o", folder, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert {p["status"] for p in document["points"]} == {"reused"}
    assert [p["accuracy"] for p in document["points"]] == [
        p["accuracy"] for p in swept[1]["points"]
    ]
    assert {p: sha256_file(p) for p in folder.glob("*.safetensors")} == hashes
    assert "epoch 1/1" not in result.stderr  # nothing trained


def test_sweep_resumes_runs_cut_short_like_an_uninterrupted_run(swept, tmp_path):
    folder = shutil.copytree(swept[0], tmp_path / "runs")
    result = invoke("sweep", *TINY, "--epochs", "2", "-o", folder, "--json")
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)["points"]
    assert {p["status"] for p in points} == {"resumed"}
    assert len(read_metadata(points[0]["checkpoint"])["training"]["history"]) == 2
    straight = run_train(
        "lenet",
        "digits",
        tmp_path / "straight.safetensors",
        TrainConfig(epochs=2, device="cpu", seed=0),
        arch_kwargs={"filters": [2, 5], "fc_widths": [120, 84]},
    )
    assert points[0]["accuracy"] == straight.final_accuracy
    assert not list(folder.glob(".*"))


def test_sweep_trains_again_a_run_whose_best_file_is_missing(swept, tmp_path):
    folder = shutil.copytree(swept[0], tmp_path / "runs")
    (folder / "lenet-4-11-seed1.best.safetensors").unlink()
    result = invoke("sweep", *TINY, "--accuracy", "best", "-o", folder, "--json")
    assert result.exit_code == 0, result.output
    statuses = [p["status"] for p in json.loads(result.stdout)["points"]]
    assert statuses == ["reused", "reused", "reused", "trained"]
    assert (folder / "lenet-4-11-seed1.best.safetensors").exists()


def test_sweep_refuses_runs_trained_with_other_settings_before_training(swept, tmp_path):
    folder = shutil.copytree(swept[0], tmp_path / "runs")
    (folder / "lenet-4-11-seed1.safetensors").unlink()  # would be trained first if unchecked
    line = assert_one_error(invoke("sweep", *TINY, "--lr", "0.02", "-o", folder))
    assert "lenet-2-5-seed0.safetensors was trained with other settings" in line
    assert "learning_rate 0.01, not 0.02" in line
    assert not (folder / "lenet-4-11-seed1.safetensors").exists()
    line = assert_one_error(invoke("sweep", *TINY, "--fc-widths", "16", "-o", folder))
    assert "other settings (architecture lenet" in line and "'fc_widths': [120, 84]" in line


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--d1", "8"], "at least 2 distinct d1 values"),
        (["--d1", "4,4,8"], "d1 values repeat"),
        (["--d1", "4,x"], "--d1 '4,x' must be comma-separated whole numbers"),
        (["--seeds", "0"], "a bootstrap interval needs at least 2 seeds (or --bootstrap 0)"),
        (["--ratio", "0"], "ratio must be positive"),
        (["--accuracy", "middle"], "accuracy is one of"),
        (["--fit", "median"], "fit is one of"),
        (["--confidence", "1.5"], "confidence must lie in (0, 1)"),
        (["--lr-step", "0"], "lr step must be at least 1 epoch"),
        (["--data", "nonsense"], "unknown data spec 'nonsense'"),
    ],
)
def test_bad_flags_give_one_line_errors(tmp_path, flags, message):
    line = assert_one_error(invoke("sweep", *TINY, *flags, "-o", tmp_path / "runs"))
    assert message in line
    assert not (tmp_path / "runs").exists()  # nothing is created for a run that cannot start


def test_sweep_refuses_a_file_as_output_folder(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    line = assert_one_error(invoke("sweep", *TINY, "-o", target))
    assert "is a file; give a folder" in line


def test_sweep_compares_the_transformer_recipe_and_takes_older_files_as_defaults(swept, tmp_path):
    from snptool.config import DataConfig
    from snptool.training.sweep import _DataRecords, run_difference

    folder = shutil.copytree(swept[0], tmp_path / "runs")
    line = assert_one_error(invoke("sweep", *TINY, "--optimizer", "adamw", "-o", folder))
    assert "was trained with other settings (optimizer sgd, not adamw)" in line

    # A file written before these settings existed was trained with their defaults.
    metadata = read_metadata(folder / "lenet-2-5-seed0.safetensors")
    for name in ("optimizer", "schedule", "min_lr", "warmup_epochs", "mixup", "cutmix"):
        del metadata["training"]["config"][name]
    config = TrainConfig(epochs=1, device="cpu", seed=0)
    records = _DataRecords("digits", DataConfig())
    kwargs = {"filters": [2, 5], "fc_widths": [120, 84]}
    assert run_difference(metadata, "digits", config, kwargs, records) is None
    cosine = TrainConfig(epochs=1, device="cpu", seed=0, schedule="cosine")
    assert run_difference(metadata, "digits", cosine, kwargs, records) == (
        "schedule step, not cosine"
    )

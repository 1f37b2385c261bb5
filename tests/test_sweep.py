"""The generalised-LeNet sweep: the power-law fit on synthetic points, and `snptool sweep` end to
end on digits (tiny LeNets, 1 epoch): JSON, sweep.json, reuse and resume of runs, bad flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from snptool.cli import app
from snptool.config import SweepConfig, TrainConfig, second_depth
from snptool.core.checkpoint import read_metadata
from snptool.core.files import command_line, sha256_file
from snptool.errors import DataError, UsageError
from snptool.training.power_law import fit_power_law
from snptool.training.train import run_train

runner = CliRunner()
TINY = ["--data", "digits", "--d1", "2,4", "--seeds", "0,1", "--epochs", "1", "--device", "cpu"]
TINY += ["--bootstrap", "200"]


def invoke(*args: object) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


def one_error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def grid(d1_values=(2, 4, 8, 16, 32), seeds=5) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(d1_values, seeds), np.tile(np.arange(seeds), len(d1_values))


@pytest.mark.parametrize("method", ["runs", "means"])
def test_fit_recovers_a_known_exponent_from_noisy_points(method):
    d1, seeds = grid()
    noise = np.exp(np.random.default_rng(0).normal(0.0, 0.05, d1.shape))
    errors = 0.8 * d1**-0.35 * noise
    fit = fit_power_law(d1, errors, seeds, method=method, bootstrap=500, bootstrap_seed=1)
    assert abs(fit.rho - 0.35) < 0.03
    assert fit.rho_ci[0] < 0.35 < fit.rho_ci[1]
    assert fit.rho_ci[1] - fit.rho_ci[0] < 0.1
    assert fit.prefactor == pytest.approx(0.8, rel=0.1)
    assert 0.9 < fit.r2 < 1.0
    assert fit.points == (25 if method == "runs" else 5)


@pytest.mark.parametrize("method", ["runs", "means"])
def test_fit_is_exact_on_noise_free_points(method):
    d1, seeds = grid((3, 6, 12, 24), seeds=3)
    fit = fit_power_law(d1, 0.9 * d1**-0.5, seeds, method=method, bootstrap=50)
    assert fit.rho == pytest.approx(0.5, abs=1e-12)
    assert fit.prefactor == pytest.approx(0.9, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.rho_ci == pytest.approx((0.5, 0.5), abs=1e-12)


def test_fit_methods_differ_as_documented():
    """`means` fits log(mean error); `runs` every run (its slope is that of the mean log)."""
    d1, seeds = grid((2, 4, 8), seeds=2)
    errors = np.array([0.9, 0.5, 0.6, 0.6, 0.3, 0.5])
    runs = fit_power_law(d1, errors, seeds, method="runs", bootstrap=0)
    means = fit_power_law(d1, errors, seeds, method="means", bootstrap=0)
    mean_log = np.log(errors).reshape(3, 2).mean(1)
    log_mean = np.log(errors.reshape(3, 2).mean(1))
    x = np.log([2, 4, 8])
    assert runs.rho == pytest.approx(-np.polyfit(x, mean_log, 1)[0], abs=1e-12)
    assert means.rho == pytest.approx(-np.polyfit(x, log_mean, 1)[0], abs=1e-12)
    assert runs.rho_ci is None and means.rho != pytest.approx(runs.rho)


def test_bootstrap_is_seeded_and_resamples_within_each_d1():
    d1, seeds = grid((2, 4, 8, 16), seeds=3)
    errors = 0.7 * d1**-0.3 * np.exp(np.random.default_rng(3).normal(0, 0.1, d1.shape))
    first = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=5)
    again = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=5)
    other = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=6)
    assert first.rho_ci == again.rho_ci and first.rho_ci != other.rho_ci
    wider = fit_power_law(d1, errors, seeds, bootstrap=300, bootstrap_seed=5, confidence=0.99)
    assert wider.rho_ci[0] <= first.rho_ci[0] and wider.rho_ci[1] >= first.rho_ci[1]


def test_fit_refuses_points_it_cannot_fit():
    d1, seeds = grid((2, 4), seeds=2)
    with pytest.raises(DataError, match="error 0"):
        fit_power_law(d1, np.array([0.5, 0.4, 0.3, 0.0]), seeds)
    with pytest.raises(UsageError, match="2 or more distinct d1"):
        fit_power_law(np.array([4, 4]), np.array([0.5, 0.4]), np.array([0, 1]))
    with pytest.raises(UsageError, match="at least 2 seeds at every d1"):
        fit_power_law(np.array([2, 4]), np.array([0.5, 0.4]), np.array([0, 0]))
    with pytest.raises(UsageError, match="only once"):
        fit_power_law(np.array([2, 2, 4]), np.array([0.5, 0.5, 0.4]), np.array([0, 0, 1]))


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
    line = one_error_line(invoke("sweep", *TINY, "--lr", "0.02", "-o", folder))
    assert "lenet-2-5-seed0.safetensors was trained with other settings" in line
    assert "learning_rate 0.01, not 0.02" in line
    assert not (folder / "lenet-4-11-seed1.safetensors").exists()
    line = one_error_line(invoke("sweep", *TINY, "--fc-widths", "16", "-o", folder))
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
    line = one_error_line(invoke("sweep", *TINY, *flags, "-o", tmp_path / "runs"))
    assert message in line
    assert not (tmp_path / "runs").exists()  # nothing is created for a run that cannot start


def test_sweep_refuses_a_file_as_output_folder(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    line = one_error_line(invoke("sweep", *TINY, "-o", target))
    assert "is a file; give a folder" in line


def test_sweep_compares_the_transformer_recipe_and_takes_older_files_as_defaults(swept, tmp_path):
    from snptool.config import DataConfig
    from snptool.training.sweep import _DataRecords, run_difference

    folder = shutil.copytree(swept[0], tmp_path / "runs")
    line = one_error_line(invoke("sweep", *TINY, "--optimizer", "adamw", "-o", folder))
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

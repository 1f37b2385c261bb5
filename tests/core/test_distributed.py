"""torchrun runs of train, probe and matrix: 2 gloo processes on CPU against one process.

Each distributed run is a real `torch.distributed.run` (torchrun) subprocess with a time
limit. Three launches serve the file: `python -m snptool train` (the two-rank model), one
launch of tests/_torchrun_steps.py that runs resume, probe, matrix and two misconfigured
trainings one after another in one process group (each rank's exit status, stdout and stderr
recorded per step; "{rank}" gives the ranks different flags), and a misconfigured
`python -m snptool train` whose failure torchrun itself reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from snptool.analysis.matrix import run_matrix
from snptool.config import MatrixConfig, TrainConfig
from snptool.core.checkpoint import read_metadata
from snptool.errors import UsageError
from snptool.training.train import run_train
from tests.conftest import PROBE_LAYERS, REPO_ROOT, TINY_PROBE, invoke

TIMEOUT = 300  # seconds for one distributed command (two processes on a loaded 2-core box)
STEPS = REPO_ROOT / "tests" / "_torchrun_steps.py"
# lenet5 has no batch norm or dropout, so without augmentation two ranks with half batches
# average to the one-process gradient: the weights agree up to float rounding
EXACT_TRAIN = ["--arch", "lenet5", "--data", "digits", "--no-augment", "--device", "cpu"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def torchrun(*args: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node PROCESSES -m snptool ARGS` in `cwd`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(processes), "-m", "snptool", *args]
    return subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def torchrun_steps(steps: list[dict], folder: Path) -> dict[str, list[dict]]:
    """Run `steps` ({"name", "cwd", "args"}) in one launch; {name: [rank 0, rank 1 record]}."""
    plan = folder / "plan.json"
    plan.write_text(json.dumps([{**step, "cwd": str(step["cwd"])} for step in steps]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", str(STEPS), str(plan)]
    launch = subprocess.run(
        command, cwd=folder, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    return {
        step["name"]: [json.loads((folder / f"{step['name']}.rank{r}.json").read_text())
                       for r in range(2)]
        for step in steps
    }  # fmt: skip


def _ok(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # one JSON document: rank 0 alone printed


def _step_ok(ranks: list[dict]) -> dict:
    assert [r["returncode"] for r in ranks] == [0, 0], ranks[0]["stderr"][-3000:]
    assert ranks[1]["stdout"] == ""  # rank 0 alone printed
    return json.loads(ranks[0]["stdout"])  # one JSON document


@pytest.fixture(scope="module")
def trained_two(tmp_path_factory) -> tuple[Path, dict]:
    """One epoch of EXACT_TRAIN on two ranks."""
    directory = tmp_path_factory.mktemp("ddp_train")
    result = torchrun("train", *EXACT_TRAIN, "--epochs", "1", "-o", "two.safetensors", "--json",
                      cwd=directory)  # fmt: skip
    return directory / "two.safetensors", _ok(result)


@pytest.fixture(scope="module")
def steps(trained_two, checkpoint_path, probes_path, tmp_path_factory) -> dict:
    """One launch of every other two-rank step: {name: (its folder, [rank 0, rank 1])}."""
    folder = tmp_path_factory.mktemp("ddp_steps")
    layers = [part for layer in PROBE_LAYERS for part in ("--layer", layer)]
    plan = {
        "resume": (trained_two[0].parent, ["train", "--resume", trained_two[0].name, "--epochs",
                   "2", "-o", "resumed.safetensors", "--device", "cpu", "--json"]),
        "probe": (folder / "probe", ["probe", str(checkpoint_path), *layers, "--epochs",
                  str(TINY_PROBE.epochs), "--device", "cpu", "-o", "two.probes.safetensors",
                  "--json"]),
        "matrix": (folder / "matrix", ["matrix", str(checkpoint_path), str(probes_path), "--data",
                   "digits", "--device", "cpu", "-o", "two.h5", "--json"]),
        # misconfigured last, so the successful steps above run in a fresh process group
        "uneven_batch": (folder / "uneven_batch", ["train", *EXACT_TRAIN, "--batch-size", "33",
                         "-o", "x.safetensors"]),
        "outputs_differ": (folder / "outputs_differ", ["train", *EXACT_TRAIN, "--epochs", "1",
                           "-o", "rank{rank}.safetensors"]),
    }  # fmt: skip
    for cwd, _ in plan.values():
        cwd.mkdir(exist_ok=True)
    results = torchrun_steps(
        [{"name": name, "cwd": cwd, "args": args} for name, (cwd, args) in plan.items()], folder
    )
    return {name: (cwd, results[name]) for name, (cwd, _) in plan.items()}


@pytest.mark.long
def test_two_rank_training_matches_one_process(trained_two, tmp_path):
    two_path, summary = trained_two
    config = TrainConfig(epochs=1, augment=False, device="cpu")
    one = run_train("lenet5", "digits", tmp_path / "one.safetensors", config)
    one_weights, two_weights = load_file(one.output), load_file(two_path)
    assert one_weights.keys() == two_weights.keys()
    for name, value in one_weights.items():
        torch.testing.assert_close(two_weights[name], value, rtol=1e-4, atol=1e-5)
    record, one_record = summary["history"][0], one.history[0]
    assert record["loss"] == pytest.approx(one_record.loss, rel=1e-4)
    assert record["test_accuracy"] == pytest.approx(one_record.test_accuracy, abs=0.01)
    # the same file format: the same metadata keys, plus the world size of the run
    training = read_metadata(two_path)["training"]
    assert training["world_size"] == 2
    assert set(training) - {"world_size"} == set(read_metadata(one.output)["training"])
    assert training["test_data"]["samples"] == 359  # every test image, counted once


@pytest.mark.long
def test_two_rank_training_resumes(steps):
    folder, ranks = steps["resume"]
    summary = _step_ok(ranks)
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    assert read_metadata(folder / "resumed.safetensors")["training"]["epochs_done"] == 2


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


@pytest.mark.long
def test_two_rank_probe_matches_one_process(steps, probe_result):
    folder, ranks = steps["probe"]
    summary = _step_ok(ranks)
    one, two = _tensors(Path(probe_result.output)), _tensors(folder / "two.probes.safetensors")
    assert one.keys() == two.keys()
    for split in ("train", "test"):  # exact counts: no padded duplicates
        assert torch.equal(two[f"count/{split}"], one[f"count/{split}"])
    for key in one:
        if key.startswith("mean/"):
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
        elif key.startswith("probe/"):
            torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4)
    accuracy = {tap.name: tap.test_accuracy for tap in probe_result.taps}
    for layer in summary["layers"]:
        assert layer["test_accuracy"] == pytest.approx(accuracy[layer["name"]], abs=0.01)
    assert summary["model_accuracy"] == pytest.approx(probe_result.model_accuracy, abs=1e-9)


@pytest.mark.long
def test_two_rank_matrix_matches_one_process(steps, checkpoint_path, probes_path, tmp_path):
    folder, ranks = steps["matrix"]
    summary = _step_ok(ranks)
    one = tmp_path / "one.h5"
    first_run = run_matrix(
        checkpoint_path, probes_path, one, MatrixConfig(device="cpu"), data_spec="digits"
    )
    assert {layer["source"] for layer in summary["layers"]} == {"forward pass"}
    assert [p.name for p in folder.iterdir()] == ["two.h5"]  # rank 1 wrote none
    with h5py.File(one) as first, h5py.File(folder / "two.h5") as second:
        for name in PROBE_LAYERS:
            a, b = first[f"layers/{name}/matrix"][()], second[f"layers/{name}/matrix"][()]
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    samples = {layer.layer: layer.samples for layer in first_run.layers}
    assert {layer["layer"]: layer["samples"] for layer in summary["layers"]} == samples  # exact


@pytest.mark.long
def test_output_paths_that_differ_between_ranks_are_one_error(steps):
    folder, results = steps["outputs_differ"]
    assert [r["returncode"] for r in results] == [2, 2]
    assert results[0]["stderr"].strip().splitlines() == [
        "error: -o differs between ranks (rank 0: rank0.safetensors, rank 1: rank1.safetensors); "
        "give every rank the same -o."
    ]
    assert results[1]["stderr"] == "" and results[0]["stdout"] == results[1]["stdout"] == ""
    assert list(folder.iterdir()) == []


@pytest.mark.long
def test_more_ranks_than_images_is_one_error(tmp_path):
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)  # one image of each of two classes
    np.savez(tmp_path / "two.npz", images=images, labels=np.array([0, 1]), class_names=["a", "b"])
    result = torchrun("train", "--arch", "lenet5", "--data", "npz:two.npz,two.npz",
                      "--device", "cpu", "--epochs", "1", "--batch-size", "3",
                      "-o", "m.safetensors", cwd=tmp_path, processes=3)  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: the training split has 2 samples, fewer than the 3 processes; "
        "run torchrun with --nproc-per-node at most 2."
    ]
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.long
def test_batch_that_does_not_split_over_the_ranks_is_one_error(steps):
    folder, results = steps["uneven_batch"]
    assert [r["returncode"] for r in results] == [2, 2]
    assert results[0]["stderr"].strip().splitlines() == [
        "error: --batch-size 33 does not split evenly over 2 processes; "
        "give a multiple of the world size."
    ]
    assert results[1]["stderr"] == "" and results[0]["stdout"] == results[1]["stdout"] == ""
    assert list(folder.iterdir()) == []


def test_bf16_autocast_trains_on_cpu(tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, device="cpu", amp="bf16")
    result = run_train("lenet5", "digits", tmp_path / "bf16.safetensors", config)
    assert result.history[-1].loss < result.history[0].loss
    assert result.final_accuracy > 0.5  # 2 epochs in fp32 reach ~0.9
    weights = load_file(result.output)
    assert all(value.dtype == torch.float32 for value in weights.values())  # fp32 master weights
    assert read_metadata(result.output)["training"]["config"]["amp"] == "bf16"


def test_fp16_on_cpu_is_an_error(tmp_path):
    config = TrainConfig(epochs=1, device="cpu", amp="fp16")
    with pytest.raises(UsageError, match="--amp fp16 needs a CUDA device"):
        run_train("lenet5", "digits", tmp_path / "x.safetensors", config)
    assert list(tmp_path.iterdir()) == []


def test_world_size_without_torchrun_is_one_error(tmp_path, monkeypatch):
    # checked before any process group starts, so in this process (CliRunner)
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    result = invoke("train", *EXACT_TRAIN, "-o", "x.safetensors")
    assert result.exit_code == 2 and result.stdout == "" and list(tmp_path.iterdir()) == []
    assert result.stderr.strip().splitlines() == [
        "error: WORLD_SIZE is 2 but RANK, MASTER_ADDR, MASTER_PORT is not set; "
        "start distributed runs with torchrun."
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_cuda_training_with_autocast_and_channels_last(amp, tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, device="cuda", amp=amp)
    result = run_train("tiny_vgg", "digits", tmp_path / f"{amp}.safetensors", config)
    assert result.history[-1].loss < result.history[0].loss
    assert result.final_accuracy > 0.5
    weights = load_file(result.output)  # saved contiguous (NCHW) from the NHWC model
    assert all(value.is_contiguous() for value in weights.values())


def test_quiet_off_does_not_wake_a_silent_rank(capsys):
    from snptool.core import console

    try:
        console.set_rank(1)
        console.set_quiet(False)  # a later command's --quiet default in the same process
        console.log("rank 1 talking")
        console.emit_json({"rank": 1})
    finally:
        console.set_rank(0)
        console.set_quiet(False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    console.log("rank 0 talking")
    assert "rank 0 talking" in capsys.readouterr().err

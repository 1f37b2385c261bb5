"""The command line: exit codes, JSON on stdout, one-line errors on stderr, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from snptool import __version__
from snptool.cli import app
from snptool.core.architectures import build_model
from snptool.core.checkpoint import METADATA_KEY, read_metadata
from snptool.core.files import atomic_path, sha256_file, write_bytes_atomic
from snptool.data.datasets import load_data
from snptool.errors import InputFileError
from snptool.training.train import TrainResult

runner = CliRunner()  # typer's runner keeps stdout and stderr apart (result.stdout/.stderr)


def invoke(*args: object, **kwargs) -> Result:
    return runner.invoke(app, [str(arg) for arg in args], **kwargs)


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def assert_one_error(result: Result, expected: str | None = None, *, contains: str = "") -> str:
    """Exit 2, nothing on stdout, exactly one non-empty stderr line `error: …`; returns it."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    if expected is not None:
        assert lines[0] == f"error: {expected}"
    assert contains in lines[0]
    return lines[0]


def part_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.part"))


@pytest.fixture
def foreign_weights(tmp_path: Path) -> Path:
    """A torch.save'd, DataParallel-style state dict of a real tiny_vgg."""
    torch.manual_seed(0)
    model, _ = build_model("tiny_vgg", num_classes=10)
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture
def empty_npz(tmp_path: Path) -> Path:
    path = tmp_path / "empty.npz"
    np.savez(path, images=np.zeros((0, 32, 32, 3), np.uint8), labels=np.zeros(0, np.int64))
    return path


# --- the commands -----------------------------------------------------------------------------


def test_train(synthetic_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = invoke(
        "train",
        "--arch",
        "tiny_vgg",
        "--data",
        f"npz:{synthetic_npz}",
        "--epochs",
        2,
        "--batch-size",
        8,
        "--lr",
        0.05,
        "--device",
        "cpu",
        "-o",
        out,
        "--json",
    )
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "output",
        "best_output",
        "best_epoch",
        "best_accuracy",
        "final_accuracy",
        "history",
        "config",
    }
    assert payload["output"] == str(out)
    assert payload["best_output"] == str(tmp_path / "model.best.safetensors")
    assert [r["epoch"] for r in payload["history"]] == [1, 2]
    assert payload["config"]["batch_size"] == 8 and payload["config"]["learning_rate"] == 0.05
    assert out.is_file() and Path(payload["best_output"]).is_file()
    assert read_metadata(out)["class_names"] == ["a", "b", "c"]
    assert "epoch 2/2" in result.stderr and "best test accuracy" in result.stderr
    assert part_files(tmp_path) == []


def test_quiet_leaves_only_json(synthetic_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    args = ["-q", "train", "--arch", "tiny_vgg", "--data", f"npz:{synthetic_npz}"]
    result = invoke(*args, "--epochs", 1, "--batch-size", 16, "-o", out, "--json")
    assert_ok(result)
    assert result.stderr == ""
    assert json.loads(result.stdout)["history"][0]["epoch"] == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train"], "Missing option '--output' / '-o'; see `snptool train --help`."),
        (
            ["train", "--epochs", "x", "-o", "m.safetensors"],
            "Invalid value for '--epochs': Input should be a valid integer, unable to parse "
            "string as an integer; see `snptool train --help`.",
        ),
        (["probe"], "Missing argument 'checkpoint'; see `snptool probe --help`."),
        (["nosuch"], "No such command 'nosuch'; see `snptool --help`."),
        (["trian"], "No such command 'trian'. Did you mean 'train'? See `snptool --help`."),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    assert_one_error(invoke(*args), expected)
    assert not (Path.cwd() / "m.safetensors").exists()


def test_no_arguments_print_the_help() -> None:
    result = invoke()
    assert "Commands:" in result.output and "train" in result.output


def test_import(foreign_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported.safetensors"
    result = invoke(
        "import",
        foreign_weights,
        "--arch",
        "tiny_vgg",
        "--num-classes",
        10,
        "--mean",
        "0.4,0.5,0.6",
        "--std",
        "0.2",
        "-o",
        out,
        "--json",
    )
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert payload == {
        "output": str(out),
        "arch": "tiny_vgg",
        "num_classes": 10,
        "tensors": payload["tensors"],
        "stripped_prefix": "module.",
        "missing": [],
        "unexpected": [],
        "mismatched": [],
    }
    assert payload["tensors"] > 10
    metadata = read_metadata(out)
    assert metadata["input"]["mean"] == [0.4, 0.5, 0.6]
    assert metadata["input"]["std"] == [0.2, 0.2, 0.2]
    assert f"imported {payload['tensors']} tensors into {out} (10 classes)" in result.stderr
    assert "stripped the key prefix 'module.'" in result.stderr
    assert "warning" not in result.stderr


def test_import_without_normalisation_warns(foreign_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.safetensors"
    result = invoke("import", foreign_weights, "--arch", "tiny_vgg", "-o", out)
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: no --mean or --std given, so the checkpoint records mean 0.5,0.5,0.5 and std "
        "0.5,0.5,0.5 (pixels scaled to [-1, 1]); if the weights were trained with another "
        "normalisation, import again with it, e.g. --mean 0.4914,0.4822,0.4465 "
        "--std 0.2470,0.2435,0.2616."
    ]
    assert read_metadata(out)["input"]["mean"] == [0.5, 0.5, 0.5]

    out = tmp_path / "only_std.safetensors"
    result = invoke("import", foreign_weights, "--arch", "tiny_vgg", "--std", "0.25", "-o", out)
    assert_ok(result)
    assert (
        "warning: no --mean given, so the checkpoint records mean 0.5,0.5,0.5 and std "
        "0.25,0.25,0.25; if the weights" in result.stderr
    )


def test_import_no_strict_warns(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = build_model("tiny_vgg", num_classes=10)
    state = {k: v for k, v in model.state_dict().items() if k != "classifier.2.bias"}
    weights = tmp_path / "partial.pt"
    torch.save(state, weights)
    out = tmp_path / "out.safetensors"
    strict = invoke("import", weights, "--arch", "tiny_vgg", "-o", out)
    assert_one_error(strict, contains="1 missing (classifier.2.bias)")
    assert not out.exists()

    result = invoke("import", weights, "--arch", "tiny_vgg", "--no-strict", "-o", out, "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["missing"] == ["classifier.2.bias"]
    assert "warning: 1 missing tensors: classifier.2.bias" in result.stderr


def test_layers(checkpoint_path: Path) -> None:
    result = invoke("layers", checkpoint_path, "--json")
    assert_ok(result)
    layers = json.loads(result.stdout)
    assert isinstance(layers, list) and layers
    for layer in layers:
        assert {"layer", "shape", "unit", "units", "positions"} <= set(layer)
    first = layers[0]
    assert (first["layer"], first["shape"], first["unit"]) == ("features.0", [8, 32, 32], "channel")
    assert (first["units"], first["positions"]) == (8, 32 * 32)
    by_name = {x["layer"]: x for x in layers}
    logits = by_name["classifier.2"]
    assert (logits["shape"], logits["unit"], logits["units"], logits["positions"]) == (
        [10],
        "node",
        10,
        1,
    )
    assert by_name["features.1"]["module"] == "BatchNorm2d"
    assert str(checkpoint_path) in result.stderr  # the table's title

    one = invoke("layers", checkpoint_path, "--layer", "features.2", "--json")
    assert_ok(one)
    assert [x["layer"] for x in json.loads(one.stdout)] == ["features.2"]
    taps = invoke("layers", checkpoint_path, "--taps-only", "--json")
    assert_ok(taps)
    assert all(x["probe_tap"] for x in json.loads(taps.stdout))
    assert [x["layer"] for x in json.loads(taps.stdout)] == [
        "features.2",
        "features.6",
        "features.10",
        "classifier.1",
    ]
    assert "inferred" not in taps.stderr


def test_layers_of_an_imported_torchvision_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = build_model("torchvision:resnet18", {}, num_classes=10)
    weights, checkpoint = tmp_path / "resnet18.pt", tmp_path / "resnet18.safetensors"
    torch.save(model.state_dict(), weights)
    arch = [
        "--arch",
        "torchvision:resnet18",
        "--num-classes",
        "10",
        "--mean",
        "0.5",
        "--std",
        "0.25",
    ]
    assert_ok(invoke("import", weights, *arch, "-o", checkpoint))

    taps = invoke("layers", checkpoint, "--taps-only", "--json")
    assert_ok(taps)
    rows = json.loads(taps.stdout)
    layers = ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    assert [(x["layer"], x["calls"], x["probe_tap"]) for x in rows] == [
        (layer, 1, True) for layer in layers
    ]
    assert f"{checkpoint} (probe taps inferred: the model declares none)" in taps.stderr

    table = invoke("layers", checkpoint, "--layer", "layer1.0.relu", "--layer", "layer1.0.conv1")
    assert_ok(table)
    header, *cells = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in table.stderr.replace("┃", "│").splitlines()
        if line.startswith("│")
    ]
    assert header == [
        "tap (--layer)",
        "module",
        "shape",
        "unit",
        "units",
        "positions",
        "calls",
        "probe tap",
    ]
    assert cells == [
        ["layer1.0.conv1", "Conv2d", "64×8×8", "channel", "64", "64", "1", ""],
        ["layer1.0.relu", "ReLU", "64×8×8", "channel", "64", "64", "2", ""],  # twice per block
    ]


def test_evaluate(trained: TrainResult) -> None:
    result = invoke("evaluate", trained.output, "--device", "cpu", "--json")
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert {"accuracy", "per_class", "samples"} <= set(payload)
    assert payload["samples"] == 359 and payload["split"] == "test" and payload["data"] == "digits"
    assert payload["accuracy"] == pytest.approx(trained.final_accuracy)
    assert list(payload["per_class"]) == [str(i) for i in range(10)]
    assert f"accuracy {payload['accuracy']:.4f} on 359 images" in result.stderr

    train_split = invoke("evaluate", trained.output, "--split", "train", "--json")
    assert_ok(train_split)
    assert json.loads(train_split.stdout)["samples"] == 1438


def test_models() -> None:
    result = invoke("models", "--json")
    assert_ok(result)
    rows = json.loads(result.stdout)
    names = [row["name"] for row in rows]
    assert {"tiny_vgg", "tiny_lenet", "vgg16"} <= set(names)
    assert all(set(row) == {"name", "description", "input_size"} for row in rows)
    assert "architectures" in result.stderr


def test_version_and_no_args() -> None:
    result = invoke("--version")
    assert_ok(result)
    assert result.stdout.strip() == f"snptool {__version__}"
    bare = invoke()
    assert "Usage" in bare.output and "train" in bare.output


# --- bad input: one line on stderr, exit status 2 ---------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    assert_one_error(invoke("layers", path), f"checkpoint {path} does not exist; check the path.")
    assert_one_error(invoke("evaluate", path), f"checkpoint {path} does not exist; check the path.")
    assert_one_error(
        invoke("import", tmp_path / "absent.pt", "--arch", "tiny_vgg", "-o", tmp_path / "x"),
        f"weights file {tmp_path / 'absent.pt'} does not exist; check the path.",
    )


def test_directory_instead_of_a_file(tmp_path: Path, foreign_weights: Path) -> None:
    assert_one_error(
        invoke("layers", tmp_path), f"checkpoint {tmp_path} is a directory; give a file."
    )
    assert_one_error(invoke("evaluate", tmp_path), contains="is a directory")
    assert_one_error(
        invoke("import", tmp_path, "--arch", "tiny_vgg", "-o", tmp_path / "x.safetensors"),
        f"weights file {tmp_path} is a directory; give a file.",
    )
    assert_one_error(
        invoke("import", foreign_weights, "--arch", "tiny_vgg", "-o", tmp_path),
        f"output {tmp_path} is a directory; give a file name.",
    )


def test_corrupt_and_truncated_checkpoints(tmp_path: Path, checkpoint_path: Path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    line = assert_one_error(invoke("layers", corrupt), contains="is not a readable safetensors")
    assert str(corrupt) in line

    data = checkpoint_path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_error(invoke("evaluate", truncated), contains="it may be truncated")
    assert_one_error(invoke("layers", truncated), contains="it may be truncated")


def test_unknown_layer(checkpoint_path: Path) -> None:
    assert_one_error(
        invoke("layers", checkpoint_path, "--layer", "nope"),
        "the model has no layer 'nope'; run `snptool layers CHECKPOINT` to list them.",
    )
    line = assert_one_error(invoke("layers", checkpoint_path, "--layer", "featurs.0"))
    assert "the model has no layer 'featurs.0'; did you mean features.0" in line


def test_checkpoint_that_does_not_match_its_architecture(
    tmp_path: Path, checkpoint_path: Path
) -> None:
    with safe_open(str(checkpoint_path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    metadata["arch"] = {"spec": "tiny_lenet", "kwargs": {"num_classes": 10}}
    relabelled = tmp_path / "relabelled.safetensors"
    save_file(tensors, str(relabelled), metadata={METADATA_KEY: json.dumps(metadata)})
    for command in ("layers", "evaluate"):
        line = assert_one_error(invoke(command, relabelled))
        assert "do not match architecture tiny_lenet" in line and "unexpected" in line


def test_empty_data_set(checkpoint_path: Path, empty_npz: Path, tmp_path: Path) -> None:
    assert_one_error(
        invoke("evaluate", checkpoint_path, "--data", f"npz:{empty_npz}"),
        f"the test split of npz:{empty_npz} holds no images; check the data set.",
    )
    out = tmp_path / "x.safetensors"
    result = invoke("train", "--arch", "tiny_vgg", "--data", f"npz:{empty_npz}", "-o", out)
    assert_one_error(result, contains="holds no images")
    assert not out.exists()


def test_unknown_data_spec(checkpoint_path: Path) -> None:
    line = assert_one_error(invoke("evaluate", checkpoint_path, "--data", "mnist"))
    assert line.startswith("error: unknown data spec 'mnist'; use one of digits, cifar10")


def test_unknown_arch(tmp_path: Path, foreign_weights: Path) -> None:
    out = tmp_path / "x.safetensors"
    line = assert_one_error(invoke("train", "--arch", "tiny_vg", "--epochs", 1, "-o", out))
    assert "unknown architecture 'tiny_vg'. Did you mean tiny_vgg" in line
    assert_one_error(
        invoke("import", foreign_weights, "--arch", "torchvision:resnet19", "-o", out),
        contains="torchvision has no classification model 'resnet19'. Did you mean resnet18",
    )
    assert_one_error(
        invoke("import", foreign_weights, "-o", out),
        "give the architecture of the weights with --arch SPEC.",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "contains"),
    [
        (["--arch-kwargs", "{bad"], "--arch-kwargs '{bad' is not valid JSON"),
        (["--input-size", "0"], "--input-size '0' must be S or HxW"),
        (["--mean", "a,b"], "--mean 'a,b' must be comma-separated numbers"),
        (["--std", "0.5,0.5"], "input std has 2 values but the input has 3 channels"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--test-fraction", "1.5"], "test fraction must lie in (0, 1)"),
    ],
)
def test_bad_train_flags(tmp_path: Path, flags: list[str], contains: str) -> None:
    out = tmp_path / "x.safetensors"
    assert_one_error(invoke("train", "--arch", "tiny_vgg", *flags, "-o", out), contains=contains)
    assert not out.exists()


def test_output_equal_to_input_is_refused(foreign_weights: Path, checkpoint_path: Path) -> None:
    digest = sha256_file(foreign_weights)
    assert_one_error(
        invoke("import", foreign_weights, "--arch", "tiny_vgg", "-o", foreign_weights),
        f"output {foreign_weights} is also an input; write to another file.",
    )
    assert sha256_file(foreign_weights) == digest

    digest = sha256_file(checkpoint_path)
    result = invoke("train", "--resume", checkpoint_path, "--epochs", 3, "-o", checkpoint_path)
    assert_one_error(result, contains="is also an input")
    assert sha256_file(checkpoint_path) == digest


# --- atomic outputs ---------------------------------------------------------------------------


def test_failed_import_creates_no_output(tmp_path: Path, foreign_weights: Path) -> None:
    out = tmp_path / "out.safetensors"
    line = assert_one_error(invoke("import", foreign_weights, "--arch", "tiny_lenet", "-o", out))
    assert "do not match architecture tiny_lenet" in line
    assert not out.exists() and part_files(tmp_path) == []


@pytest.mark.parametrize("arch", ["tiny_vg", "model_defs.vgg:tiny_vgg"])
def test_failed_train_leaves_existing_output(tmp_path: Path, arch: str) -> None:
    # Both fail after the data is loaded: an unknown name, and a model that does not fit the
    # digits' native 1×8×8 input.
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"an earlier result")
    assert_one_error(invoke("train", "--arch", arch, "--data", "digits", "-o", out))
    assert out.read_bytes() == b"an earlier result"
    assert not (tmp_path / "model.best.safetensors").exists()
    assert part_files(tmp_path) == []


def test_interrupted_command_exits_130_and_keeps_output(tmp_path: Path) -> None:
    arch_file = tmp_path / "interrupting.py"
    arch_file.write_text(
        textwrap.dedent(
            """
            def factory(num_classes=10):
                raise KeyboardInterrupt
            """
        )
    )
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"an earlier result")
    result = invoke("train", "--arch", f"{arch_file}:factory", "-o", out)
    assert result.exit_code == 130
    assert (
        result.stderr.strip()
        == "error: interrupted; the file being written was discarded, no input changed."
    )
    assert out.read_bytes() == b"an earlier result" and part_files(tmp_path) == []


@pytest.mark.parametrize("exception", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_leaves_the_destination(tmp_path: Path, exception) -> None:
    destination = tmp_path / "result.safetensors"
    destination.write_bytes(b"old")
    with pytest.raises(type(exception)), atomic_path(destination) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".part")
        temporary.write_bytes(b"half of the new fi")
        raise exception
    assert destination.read_bytes() == b"old"
    assert part_files(tmp_path) == [] and sorted(tmp_path.iterdir()) == [destination]

    write_bytes_atomic(destination, b"new")
    assert destination.read_bytes() == b"new" and part_files(tmp_path) == []


def test_interrupted_first_write_creates_nothing(tmp_path: Path) -> None:
    destination = tmp_path / "fresh.safetensors"
    with pytest.raises(OSError), atomic_path(destination) as temporary:
        temporary.write_bytes(b"partial")
        raise OSError("no space left on device")
    assert list(tmp_path.iterdir()) == []


# --- --debug and startup ----------------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    result = invoke("--debug", "layers", path)
    assert isinstance(result.exception, InputFileError)
    assert result.exit_code == 1 and result.stderr == ""
    with pytest.raises(InputFileError, match="does not exist"):
        runner.invoke(app, ["--debug", "layers", str(path)], catch_exceptions=False)
    from_env = invoke("layers", path, env={"SNPTOOL_DEBUG": "1"})
    assert isinstance(from_env.exception, InputFileError)
    # Without the flag the next command is back to one line.
    assert_one_error(invoke("layers", path))


def test_debug_traceback_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    command = [sys.executable, "-m", "snptool", "--debug", "layers", str(path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert "Traceback (most recent call last)" in completed.stderr
    assert "snptool.errors.InputFileError" in completed.stderr


HELP_SCRIPT = """
import sys
from snptool.cli import app
try:
    app(sys.argv[1:])
except SystemExit as stop:
    assert stop.code == 0, stop.code
print("TORCH_LOADED", "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["sweep", "--help"]])
def test_help_does_not_import_torch(args: list[str]) -> None:
    command = [sys.executable, "-c", HELP_SCRIPT, *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "Usage" in completed.stdout
    assert completed.stdout.strip().splitlines()[-1] == "TORCH_LOADED False"


# --- probe, matrix, clusters ------------------------------------------------------------------


def test_probe_matrix_clusters(checkpoint_path: Path, trained: TrainResult, tmp_path: Path) -> None:
    probes = tmp_path / "probes.safetensors"
    result = invoke(
        "probe", checkpoint_path, "--all", "--epochs", 2, "--device", "cpu", "-o", probes, "--json"
    )
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "output",
        "checkpoint",
        "data",
        "mode",
        "model_accuracy",
        "layers",
        "seconds",
    }
    assert (payload["output"], payload["data"], payload["mode"]) == (
        str(probes),
        "digits",
        "cached",
    )
    assert payload["model_accuracy"] == pytest.approx(trained.final_accuracy)
    taps = ["features.2", "features.6", "features.10", "classifier.1"]
    assert [layer["name"] for layer in payload["layers"]] == taps
    for layer in payload["layers"]:
        assert {"layer", "unit", "units", "positions", "train_accuracy"} <= set(layer)
        assert 0.2 < layer["test_accuracy"] <= 1.0
    assert "layer accuracy" in result.stderr
    assert f"model accuracy {payload['model_accuracy']:.4f}" in result.stderr
    assert probes.is_file() and part_files(tmp_path) == []

    matrices = tmp_path / "matrices.h5"
    args = ["matrix", checkpoint_path, probes, "--split", "test", "--device", "cpu"]
    result = invoke(*args, "-o", matrices, "--json")
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert (payload["output"], payload["split"]) == (str(matrices), "test")
    assert [layer["layer"] for layer in payload["layers"]] == taps
    assert {(x["samples"], x["classes"], x["source"]) for x in payload["layers"]} == {
        (359, 10, "probe file")
    }
    assert "matrices (test split)" in result.stderr

    result = invoke("clusters", matrices, "--json")
    assert_ok(result)
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and [row["layer"] for row in rows] == taps
    keys = {
        "layer",
        "units",
        "units_without_clusters",
        "accuracy",
        "mean_cluster_size",
        "clusters_per_unit",
        "labels_per_unit",
        "noise_per_unit",
        "snr",
    }
    probed = probe_taps(probes)
    for row in rows:
        assert keys <= set(row)
        assert row["units"] == probed[row["layer"]]["units"]
        assert row["accuracy"] == pytest.approx(probed[row["layer"]]["test_accuracy"])
        assert 0 <= row["units_without_clusters"] <= row["units"]
    assert f"clusters (threshold 0.3) → {matrices}" in result.stderr
    with h5py.File(matrices, "r") as handle:
        for row in rows:
            clusters = handle[f"layers/{row['layer']}/clusters"]
            assert int((clusters["count"][()] == 0).sum()) == row["units_without_clusters"]


def probe_taps(probes: Path) -> dict[str, dict]:
    """The probe file's tap records by name (read with safetensors, not snptool)."""
    with safe_open(str(probes), framework="pt") as handle:
        return {tap["name"]: tap for tap in json.loads(handle.metadata()["snptool"])["taps"]}


@pytest.fixture
def named_matrices(make_matrix_file) -> Path:
    """One layer of 3 units over 4 labels; unit 1 serves {cat, dog} and {truck}."""
    matrices = np.zeros((3, 4, 4), dtype=np.float32)
    matrices[0] = np.eye(4)
    matrices[1, :2, :2] = 1.0
    matrices[1, 3, 3] = 0.8
    matrices[2] = -1.0
    return make_matrix_file({"conv": matrices}, ["cat", "dog", "ship", "truck"])


def test_clusters_of_one_unit(named_matrices: Path) -> None:
    result = invoke("clusters", named_matrices, "--layer", "conv", "--unit", 1, "--json")
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert payload["clusters"] == [["cat", "dog"], ["truck"]]
    assert (payload["layer"], payload["unit"], payload["signal"], payload["noise"]) == (
        "conv",
        1,
        5,
        0,
    )
    assert "cat, dog" in result.stderr and "truck" in result.stderr
    assert "ship" not in result.stderr
    assert "conv unit 1: maximum 1, signal 5, noise 0 (threshold 0.3)" in result.stderr


def test_probe_errors(checkpoint_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "probes.safetensors"
    assert_one_error(
        invoke("probe", checkpoint_path, "--layer", "nope", "-o", out),
        "the model has no layer 'nope'; run `snptool layers CHECKPOINT` to list them.",
    )
    assert_one_error(
        invoke("probe", checkpoint_path, "--layer", "features.2,featurs.6", "-o", out),
        contains="the model has no layer 'featurs.6'; did you mean features.6",
    )
    for flags in ([], ["--all", "--layer", "features.2"]):
        assert_one_error(
            invoke("probe", checkpoint_path, *flags, "-o", out),
            "give either --layer NAME (repeatable) or --all.",
        )
    assert_one_error(
        invoke("probe", checkpoint_path, "--all", "--memory-budget", "lots", "-o", out),
        "memory size 'lots' is not a size like 4GiB, 512MiB or 2e9.",
    )
    assert_one_error(
        invoke("probe", checkpoint_path, "--layer", "features.2:node", "-o", out),
        contains="read it as channel, not node",
    )
    assert not out.exists() and part_files(tmp_path) == []


def test_matrix_errors(checkpoint_path: Path, probes_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "matrices.h5"
    assert_one_error(
        invoke("matrix", checkpoint_path, checkpoint_path, "-o", out),
        f"{checkpoint_path} is not a probe file but a checkpoint; make one with `snptool probe`.",
    )
    assert_one_error(
        invoke("matrix", checkpoint_path, probes_path, "--layer", "features.6", "-o", out),
        f"{probes_path} has no probe for 'features.6'; "
        "it has features.2, features.10, classifier.1.",
    )
    assert_one_error(
        invoke("matrix", checkpoint_path, probes_path, "--split", "val", "-o", out),
        "unknown split 'val'; use one of train, test, all.",
    )
    absent = tmp_path / "absent.safetensors"
    assert_one_error(
        invoke("matrix", checkpoint_path, absent, "-o", out),
        f"probe file {absent} does not exist; check the path.",
    )
    assert_one_error(
        invoke("matrix", absent, probes_path, "-o", out),
        f"checkpoint {absent} does not exist; check the path.",
    )
    assert not out.exists() and part_files(tmp_path) == []


def test_clusters_errors(named_matrices: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    line = assert_one_error(invoke("clusters", corrupt), contains="is not a readable HDF5 file")
    assert line.startswith(f"error: {corrupt}") and line.endswith("it may be truncated.")

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(named_matrices.read_bytes()[:1000])
    assert_one_error(invoke("clusters", truncated), contains="is not a readable HDF5 file")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.zeros(3)
    assert_one_error(
        invoke("clusters", foreign),
        f"{foreign} is not an snptool matrix file; make one with `snptool matrix`.",
    )
    digest = sha256_file(named_matrices)
    assert_one_error(
        invoke("clusters", named_matrices, "--layer", "conv", "--unit", 3),
        "layer conv has units 0..2; --unit 3 is not one.",
    )
    assert_one_error(
        invoke("clusters", named_matrices, "--layer", "fc", "--unit", 0),
        "the matrix file has no layer 'fc'; it has conv.",
    )
    assert_one_error(
        invoke("clusters", named_matrices, "--unit", 0),
        "--unit and --layer go together: --layer NAME --unit N.",
    )
    assert_one_error(
        invoke("clusters", named_matrices, "--threshold", 1.5),
        "threshold must lie in [0, 1), not 1.5.",
    )
    assert sha256_file(named_matrices) == digest


def test_heads(head_matrices: Path) -> None:
    result = invoke("heads", head_matrices, "--json")
    assert_ok(result)
    (row,) = json.loads(result.stdout)
    assert row["layer"] == "blocks.0.attn.heads:head" and row["overlap_measure"] == "jaccard"
    assert [head["labels"] for head in row["heads"]] == [["a", "b"], ["b", "c"], []]
    assert row["labels_without_heads"] == ["d", "e"] and row["overlap"][2] == [0.0, 0.0, None]
    assert "blocks.0.attn.heads:head: 3 heads, layer acc 0.75, threshold 0.3" in result.stderr
    assert "mean jaccard overlap 0.1111\n" in result.stderr
    assert "heads per label: a 1, b 2, c 1, d 0, e 0" in result.stderr
    assert "labels served by no head: d, e" in result.stderr
    quiet = invoke("--quiet", "heads", head_matrices, "--overlap", "coefficient", "--json")
    assert_ok(quiet)
    assert quiet.stderr == "" and json.loads(quiet.stdout)[0]["mean_overlap"] == 0.5


def test_heads_errors(head_matrices: Path, named_matrices: Path, tmp_path: Path) -> None:
    assert_one_error(
        invoke("heads", named_matrices),
        f"{named_matrices} has no head layers; probe a HeadOutputs layer as LAYER:head "
        "(see `snptool layers CHECKPOINT`), then run matrix and clusters.",
    )
    assert_one_error(
        invoke("heads", head_matrices, "--layer", "conv"),
        f"layer conv of {head_matrices} holds channel units, not heads; "
        "its head layers are blocks.0.attn.heads:head.",
    )
    assert_one_error(
        invoke("heads", head_matrices, "--overlap", "cosine"),
        "unknown overlap 'cosine'; use one of jaccard, coefficient.",
    )
    absent = tmp_path / "absent.h5"
    assert_one_error(
        invoke("heads", absent), f"matrix file {absent} does not exist; check the path."
    )


def test_class_subset_is_inherited_along_the_pipeline(tmp_path: Path) -> None:
    model, probes, matrices = (tmp_path / n for n in ("m.safetensors", "p.safetensors", "m.h5"))
    common = ["--device", "cpu", "--json"]
    train = ["train", "--arch", "tiny_vgg", "--epochs", 2, "--lr", 0.05, "-o", model]
    assert_ok(invoke(*train, "--classes", "7,1,4", *common))
    result = invoke("evaluate", model, *common)
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert list(payload["per_class"]) == ["1", "4", "7"]
    full_test = load_data("digits", "test").labels
    assert payload["samples"] == int(np.isin(full_test.numpy(), [1, 4, 7]).sum())
    assert_ok(invoke("probe", model, "--layer", "classifier.1", "--epochs", 1, "-o", probes))
    result = invoke("matrix", model, probes, "--split", "test", "-o", matrices, *common)
    assert_ok(result)
    assert json.loads(result.stdout)["layers"][0]["classes"] == 3
    assert_one_error(invoke("evaluate", model, "--classes", "1,4,8"), contains="trained on 1, 4, 7")
    assert_one_error(invoke("evaluate", model, "--classes", "1,x"), contains="no class 'x'")
    assert_one_error(invoke("evaluate", model, "--num-classes-subset", 1), contains="at least 2")

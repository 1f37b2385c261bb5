"""Checkpoint files (safetensors + JSON metadata): round trips, mismatches, foreign and damaged
files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from snptool import __version__
from snptool.config import InputSpec
from snptool.core.architectures import build_model
from snptool.core.checkpoint import (
    METADATA_KEY,
    make_metadata,
    read_checkpoint,
    read_metadata,
    write_checkpoint,
)
from snptool.core.files import provenance
from snptool.errors import (
    CheckpointMismatchError,
    InputFileError,
)
from tests.conftest import assert_one_error, invoke

CLASSES = [f"class{i}" for i in range(10)]


HISTORY = [
    {"epoch": 1, "learning_rate": 0.05, "loss": 1.5, "test_accuracy": 0.6},
    {"epoch": 2, "learning_rate": 0.03, "loss": 0.7, "test_accuracy": 0.875},
]


def _tiny_vgg(seed: int = 0) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model, record = build_model("tiny_vgg", num_classes=len(CLASSES))
    # Make the BatchNorm statistics non-trivial, so the round trip covers buffers too.
    model.train()
    model(torch.randn(4, 3, 32, 32))
    return model.eval(), record


def _metadata(
    record: dict, source: Path | None = None, class_names: list[str] = CLASSES, **extra
) -> dict:
    spec = InputSpec(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261), resize=36)
    return make_metadata(
        arch=record,
        class_names=class_names,
        input_spec=spec,
        data="digits",
        provenance=provenance({"data": source}),
        training={"history": HISTORY, "saved": "last"},
        **extra,
    )


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def _header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_is_bit_exact_and_keeps_metadata(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    source = tmp_path / "source.bin"
    source.write_bytes(b"some input bytes")
    metadata = _metadata(record, source)
    path = tmp_path / "model.safetensors"

    write_checkpoint(path, model, metadata)
    checkpoint = read_checkpoint(path)

    original = model.state_dict()
    loaded = checkpoint.model.state_dict()
    assert loaded.keys() == original.keys()
    for name, tensor in original.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name
    assert checkpoint.metadata == json.loads(json.dumps(metadata))
    assert checkpoint.metadata["arch"] == {"spec": "tiny_vgg", "kwargs": {"num_classes": 10}}
    assert checkpoint.class_names == CLASSES and checkpoint.num_classes == 10
    assert checkpoint.input_spec == InputSpec(
        mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261), resize=36
    )
    assert checkpoint.metadata["training"]["history"] == HISTORY
    recorded = checkpoint.metadata["provenance"]
    assert recorded["inputs"]["data"] == {
        "path": str(source),
        "sha256": hashlib.sha256(b"some input bytes").hexdigest(),
    }
    assert recorded["command"] and recorded["snptool_version"] == __version__
    assert checkpoint.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert checkpoint.extras == {}
    assert not checkpoint.model.training

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.model(x), model(x), rtol=0, atol=0)


def test_a_module_that_checks_its_state_version_reloads(untrained_checkpoint) -> None:
    path = untrained_checkpoint("torchvision:mnasnet0_5")  # MNASNet refuses a state without
    model = read_checkpoint(path).model  # its version, which safetensors does not keep
    with safe_open(str(path), framework="pt") as handle:
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, handle.get_tensor(name), rtol=0, atol=0)


def test_read_metadata_needs_no_tensors(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    path = tmp_path / "model.safetensors"
    write_checkpoint(path, model, _metadata(record))
    assert read_metadata(path)["class_names"] == CLASSES
    assert json.loads(_header(path)[METADATA_KEY])["format_version"] == 1


def test_extras_are_kept_apart_from_weights(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    momentum = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    mask = torch.tensor([True, False, True])
    path = tmp_path / "model.safetensors"
    extras = {"snptool/momentum/features.0.weight": momentum, "snptool/mask/features.0": mask}

    write_checkpoint(path, model, _metadata(record), extras)
    checkpoint = read_checkpoint(path)

    assert set(checkpoint.extras) == set(extras)
    assert torch.equal(checkpoint.extras["snptool/momentum/features.0.weight"], momentum)
    assert torch.equal(checkpoint.extras["snptool/mask/features.0"], mask)
    assert not any("/" in name for name in checkpoint.model.state_dict())
    assert set(_tensors(path)) == set(model.state_dict()) | set(extras)


def test_write_replaces_a_file_atomically(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old content")
    write_checkpoint(path, model, _metadata(record))
    assert read_metadata(path)["arch"]["spec"] == "tiny_vgg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# --- mismatches and foreign files -------------------------------------------------------------


def _write_raw(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None) -> Path:
    header = {"format": "pt"}
    if metadata is not None:
        header[METADATA_KEY] = json.dumps(metadata)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=header)
    return path


def test_weights_relabelled_as_another_arch_are_refused(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    metadata = _metadata({"spec": "tiny_lenet", "kwargs": {"num_classes": 10}})
    path = _write_raw(tmp_path / "relabelled.safetensors", model.state_dict(), metadata)
    with pytest.raises(CheckpointMismatchError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "do not match architecture tiny_lenet" in message
    assert "unexpected" in message and "features.1.running_mean" in message
    assert "check --arch" in message


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    tensors = dict(model.state_dict())
    del tensors["classifier.2.bias"]
    path = _write_raw(tmp_path / "missing.safetensors", tensors, _metadata(record))
    with pytest.raises(CheckpointMismatchError, match=r"1 missing \(classifier\.2\.bias\)"):
        read_checkpoint(path)


def test_wrongly_shaped_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    tensors = dict(model.state_dict())
    tensors["classifier.2.weight"] = torch.zeros(5, 16)
    tensors["bogus.weight"] = torch.zeros(2)
    path = _write_raw(tmp_path / "reshaped.safetensors", tensors, _metadata(record))
    with pytest.raises(CheckpointMismatchError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "1 unexpected (bogus.weight)" in message
    assert "1 wrongly shaped (classifier.2.weight: file [5, 16] vs model [10, 16])" in message
    assert "missing" not in message


def test_batchnorm_counters_may_be_absent(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    tensors = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    path = _write_raw(tmp_path / "no_counters.safetensors", tensors, _metadata(record))
    loaded = read_checkpoint(path).model.state_dict()
    torch.testing.assert_close(loaded["features.1.running_var"], tensors["features.1.running_var"])


def test_safetensors_without_snptool_metadata_points_to_import(tmp_path: Path) -> None:
    model, _ = _tiny_vgg()
    path = _write_raw(tmp_path / "foreign.safetensors", model.state_dict(), None)
    with pytest.raises(InputFileError, match="snptool import") as error:
        read_checkpoint(path)
    assert "not an snptool checkpoint" in str(error.value)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    model, record = _tiny_vgg()
    metadata = {**_metadata(record), "format_version": 99}
    path = _write_raw(tmp_path / "future.safetensors", model.state_dict(), metadata)
    with pytest.raises(InputFileError, match="upgrade snptool"):
        read_metadata(path)


def test_corrupt_metadata_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: "{not json"})
    with pytest.raises(InputFileError, match="corrupt snptool metadata"):
        read_metadata(path)


@pytest.mark.parametrize("cut", ["half", "random"])
def test_unreadable_files_give_input_file_error(
    tmp_path: Path, checkpoint_path: Path, cut: str
) -> None:
    data = checkpoint_path.read_bytes()
    path = tmp_path / "broken.safetensors"
    if cut == "half":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputFileError, match="not a readable safetensors file"):
        read_checkpoint(path)


def test_missing_and_directory_paths(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(InputFileError, match="is a directory"):
        read_checkpoint(tmp_path)


# --- through the command line ---------------------------------------------------------------------


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

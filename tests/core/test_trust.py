"""core/trust.py: a file's record never makes snptool run code the user did not name.

Every refusal is checked by its effect, not only its message: the code a crafted record names
would create a marker file, and the marker must not appear.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from torch import nn

from snptool.config import InputSpec
from snptool.core.architectures import build_model, build_model_from_record
from snptool.core.checkpoint import (
    METADATA_KEY,
    make_metadata,
    read_checkpoint,
    read_metadata,
    write_checkpoint,
)
from snptool.core.files import sha256_file
from snptool.core.trust import current_trust, trust_code
from snptool.errors import ArchitectureError
from tests.conftest import assert_ok, assert_one_error, invoke

# A factory file whose import leaves a marker beside it: importing it is running it.
FACTORY_FILE = """
from pathlib import Path
from torch import nn

Path(__file__).with_suffix(".ran").touch()


def net(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))
"""


def _checkpoint(path: Path, record: dict, model: nn.Module | None = None) -> Path:
    """A real checkpoint of `model` (else tiny_vgg) whose architecture record is `record`."""
    model = model or build_model("tiny_vgg", num_classes=10)[0]
    metadata = make_metadata(
        arch=record,
        class_names=[str(i) for i in range(10)],
        input_spec=InputSpec(channels=3, height=8, width=8),
        data="digits",
        provenance={},
    )
    write_checkpoint(path, model.eval(), metadata)
    return path


def _file_checkpoint(tmp_path: Path) -> tuple[Path, str, Path]:
    """A checkpoint built by a file factory: (checkpoint, spec, marker its import leaves).

    The record is written by hand, so this process has not imported the file (and cached it)
    before the command under test: the marker appears exactly when that command runs it.
    """
    factory = tmp_path / "factory.py"
    factory.write_text(f"{FACTORY_FILE}# {tmp_path}\n")  # unique: modules are cached by sha256
    spec = f"{factory}:net"
    record = {
        "spec": spec,
        "kwargs": {"num_classes": 10},
        "source": {"path": str(factory), "sha256": sha256_file(factory)},
    }
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    return (
        _checkpoint(tmp_path / "file.safetensors", record, model),
        spec,
        factory.with_suffix(".ran"),
    )


def test_a_module_function_in_the_record_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = _checkpoint(
        tmp_path / "evil.safetensors",
        {"spec": "os:system", "kwargs": {"command": f"touch {marker}"}},
    )
    for command in ("evaluate", "layers", "export"):
        line = assert_one_error(invoke(*_args(command, evil, tmp_path)))
        assert "os:system" in line and "--arch os:system" in line and "--trust-code" in line
        assert not marker.exists(), command


def _args(command: str, checkpoint: Path, tmp_path: Path) -> list:
    return {
        "evaluate": ["evaluate", checkpoint],
        "layers": ["layers", checkpoint],
        "export": ["export", checkpoint, "-o", tmp_path / "out.onnx"],
        "probe": ["probe", checkpoint, "--all", "-o", tmp_path / "p.safetensors"],
        "prune": [
            "prune",
            checkpoint,
            "--method",
            "magnitude-channels",
            "--target-macs",
            "0.5",
            "-o",
            tmp_path / "pruned.safetensors",
        ],
    }[command]


def test_every_command_refuses_an_untrusted_file_factory(tmp_path: Path) -> None:
    checkpoint, spec, marker = _file_checkpoint(tmp_path)
    for command in ("evaluate", "layers", "export", "probe", "prune"):
        line = assert_one_error(invoke(*_args(command, checkpoint, tmp_path)))
        assert f"--arch {spec}" in line, line
        assert not marker.exists(), command
    assert not list(tmp_path.glob("*.onnx")) and not (tmp_path / "p.safetensors").exists()


def test_a_factory_beside_the_checkpoint_does_not_run_untrusted(tmp_path: Path) -> None:
    """A record naming a bare `factory.py:net` that lies in the checkpoint's own folder, with
    the file's hash, or without one (which no trust can make run)."""
    factory = tmp_path / "factory.py"
    factory.write_text(f"{FACTORY_FILE}# {tmp_path}\n")
    source = {"path": "factory.py", "sha256": sha256_file(factory)}
    record = {"spec": "factory.py:net", "kwargs": {}, "source": source}
    evil = _checkpoint(tmp_path / "beside.safetensors", record)
    assert_one_error(invoke("evaluate", evil), contains="--arch factory.py:net")
    unhashed = _checkpoint(tmp_path / "unhashed.safetensors", {"spec": "factory.py:net"})
    line = assert_one_error(invoke("evaluate", unhashed, "--trust-code"))
    assert "has no source record with its sha256" in line
    assert not (tmp_path / "factory.ran").exists()


def test_the_named_spec_or_trust_code_runs_it(tmp_path: Path) -> None:
    checkpoint, spec, marker = _file_checkpoint(tmp_path)
    assert_ok(invoke("layers", checkpoint, "--trust-code"))
    assert marker.exists()
    assert_ok(invoke("layers", checkpoint, "--arch", spec))


def test_another_spec_on_the_command_line_trusts_nothing(tmp_path: Path) -> None:
    checkpoint, spec, marker = _file_checkpoint(tmp_path)
    assert_one_error(invoke("layers", checkpoint, "--arch", "other.py:net"), contains=spec)
    assert not marker.exists()


def test_a_changed_factory_file_is_refused_naming_both_hashes(tmp_path: Path) -> None:
    checkpoint, spec, marker = _file_checkpoint(tmp_path)
    recorded = read_metadata(checkpoint)["arch"]["source"]["sha256"]
    factory = Path(spec.rpartition(":")[0])
    factory.write_text(factory.read_text() + "# changed\n")
    line = assert_one_error(invoke("layers", checkpoint, "--trust-code"))
    assert recorded[:16] in line and "sha256" in line and line.count("sha256") == 2
    assert not marker.exists()


def test_python_api_refuses_until_trusted(tmp_path: Path) -> None:
    checkpoint, spec, marker = _file_checkpoint(tmp_path)
    assert not current_trust().allows(spec)
    with pytest.raises(ArchitectureError, match="runs only when you trust it"):
        read_checkpoint(checkpoint)
    assert not marker.exists()
    with trust_code(spec):
        assert read_checkpoint(checkpoint).num_classes == 10
    assert not current_trust().allows(spec)  # the block ends the trust
    with trust_code(everything=True):
        assert current_trust().allows("anything:at_all")


def test_a_module_spec_with_trust_still_gets_only_json_kwargs(tmp_path: Path) -> None:
    record = {"spec": "torch.nn:Identity", "kwargs": {"unused": "__import__('os')"}}
    with trust_code("torch.nn:Identity"):
        model = build_model_from_record(record)
    assert type(model).__name__ == "Identity"  # the string reached the class as a string


@pytest.mark.parametrize(
    ("spec", "kwargs"),
    [
        ("timm:resnet18", {"checkpoint_path": "weights.pth"}),
        ("timm:resnet18", {"pretrained": True}),
        ("timm:resnet18", {"pretrained_cfg_overlay": {"file": "w.pth"}}),
        ("torchvision:resnet18", {"weights": "IMAGENET1K_V1"}),
    ],
)
def test_zoo_builders_never_load_weights_a_record_names(spec: str, kwargs: dict) -> None:
    pytest.importorskip("timm")
    with pytest.raises(ArchitectureError, match="built untrained"):
        build_model_from_record({"spec": spec, "kwargs": kwargs})


def test_onnx_metadata_naming_code_runs_nothing(valid, tmp_path: Path) -> None:
    """No ONNX reader rebuilds a model from the metadata's architecture record."""
    marker = tmp_path / "MARKER"
    graph = onnx.load(str(valid.onnx))
    document = {
        "arch": {"spec": "os:system", "kwargs": {"command": f"touch {marker}"}},
        "input": {"channels": 3, "height": 8, "width": 8, "mean": [0.5], "std": [0.5]},
        "class_names": [str(i) for i in range(3)],
    }
    graph.metadata_props.add(key=METADATA_KEY, value=json.dumps(document))
    path = tmp_path / "crafted.onnx"
    onnx.save(graph, str(path))
    invoke("latency", path, "--runs", "2", "--warmup", "0")
    invoke("evaluate", path, "--data", "digits")
    invoke("quantize", path, "--data", "digits", "-o", tmp_path / "q.onnx")
    assert not marker.exists()


def test_checkpoint_commands_offer_both_ways_to_trust() -> None:
    for command in (
        "train",
        "evaluate",
        "layers",
        "probe",
        "matrix",
        "prune",
        "export",
        "committee",
    ):
        help_text = invoke(command, "--help").stdout
        assert "--trust-code" in help_text and "--arch" in help_text, command

"""Architecture specs (registry names, torchvision:, package modules, files), --arch-kwargs and
`snptool models`."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from snptool.config import InputSpec
from snptool.core.architectures import build_model, build_model_from_record, parse_arch_kwargs
from snptool.core.checkpoint import (
    make_metadata,
    read_checkpoint,
    write_checkpoint,
)
from snptool.core.files import sha256_file
from snptool.core.trust import trust_code
from snptool.errors import (
    ArchitectureError,
    UsageError,
)
from tests.conftest import assert_ok, assert_one_error, invoke

# --- architecture specs -----------------------------------------------------------------------


def _logits_shape(model: nn.Module) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(model.eval()(torch.zeros(2, 3, 32, 32)).shape)


def test_registry_name() -> None:
    model, record = build_model("tiny_vgg", num_classes=7)
    assert record == {"spec": "tiny_vgg", "kwargs": {"num_classes": 7}}
    assert _logits_shape(model) == (2, 7)


def test_explicit_num_classes_in_kwargs_wins() -> None:
    model, record = build_model("tiny_vgg", {"num_classes": 4}, num_classes=7)
    assert record["kwargs"] == {"num_classes": 4}
    assert _logits_shape(model) == (2, 4)


def test_torchvision_spec_passes_num_classes() -> None:
    model, record = build_model("torchvision:resnet18", num_classes=4)
    assert record == {"spec": "torchvision:resnet18", "kwargs": {"num_classes": 4}}
    assert model.fc.out_features == 4
    assert _logits_shape(model) == (2, 4)


def test_package_module_spec() -> None:
    model, record = build_model("model_defs.vgg:tiny_vgg", num_classes=5)
    assert record == {"spec": "model_defs.vgg:tiny_vgg", "kwargs": {"num_classes": 5}}
    assert "source" not in record
    assert _logits_shape(model) == (2, 5)


ARCH_FILE = textwrap.dedent(
    """
    from torch import nn


    def factory(num_classes=10, width=4):
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, num_classes),
        )


    def no_classes():
        return nn.Linear(3 * 32 * 32, 2)


    NOT_A_FACTORY = 3
    """
)


def test_file_spec_records_source_and_rebuilds(tmp_path: Path) -> None:
    arch_file = tmp_path / "my_arch.py"
    arch_file.write_text(ARCH_FILE)
    model, record = build_model(f"{arch_file}:factory", {"width": 6}, num_classes=3)
    assert record["kwargs"] == {"width": 6, "num_classes": 3}
    assert record["source"] == {
        "path": str(arch_file.resolve()),
        "sha256": sha256_file(arch_file),
    }
    assert _logits_shape(model) == (2, 3)
    with trust_code(f"{arch_file}:factory"):
        rebuilt = build_model_from_record(json.loads(json.dumps(record)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_file_spec_is_found_beside_the_checkpoint_after_a_move(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    arch_file = first / "moved_arch.py"
    arch_file.write_text(ARCH_FILE)
    model, record = build_model(f"{arch_file}:factory", num_classes=3)
    path = second / "model.safetensors"
    metadata = make_metadata(
        arch=record,
        class_names=["a", "b", "c"],
        input_spec=InputSpec(),
        data="digits",
        provenance={},
    )
    write_checkpoint(path, model, metadata)
    shutil.move(str(arch_file), second / "moved_arch.py")

    with trust_code(f"{arch_file}:factory"):  # the moved file has the recorded sha256
        checkpoint = read_checkpoint(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(checkpoint.model.state_dict()[name], tensor)


def test_factory_without_num_classes_is_called_without_it(tmp_path: Path) -> None:
    arch_file = tmp_path / "plain_arch.py"
    arch_file.write_text(ARCH_FILE)
    model, record = build_model(f"{arch_file}:no_classes", num_classes=10)
    assert record["kwargs"] == {}
    assert isinstance(model, nn.Linear)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("tiny_vg", r"unknown architecture 'tiny_vg'\. Did you mean tiny_vgg"),
        ("vgg_unknown_zzz", r"Run `snptool models`"),
        ("torchvision:resnet19", r"torchvision has no classification model 'resnet19'.*resnet18"),
        ("no/such/file.py:factory", r"architecture file no/such/file.py does not exist"),
        ("model_defs.vgg:tiny_vgggg", r"'tiny_vgggg'; closest callables there: tiny_vgg"),
        ("snptool_no_such_module:f", r"cannot import module snptool_no_such_module"),
    ],
)
def test_unknown_specs_raise_architecture_error(spec: str, pattern: str) -> None:
    with pytest.raises(ArchitectureError, match=pattern):
        build_model(spec, num_classes=10)


def test_file_spec_errors_are_one_line(tmp_path: Path) -> None:
    arch_file = tmp_path / "my_arch.py"
    arch_file.write_text(ARCH_FILE)
    with pytest.raises(ArchitectureError, match="has no factory 'NOT_A_FACTORY'"):
        build_model(f"{arch_file}:NOT_A_FACTORY")
    with pytest.raises(ArchitectureError, match="cannot build architecture .* with"):
        build_model(f"{arch_file}:factory", {"depth": 3})
    broken = tmp_path / "broken_arch.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(
        ArchitectureError, match="importing .* failed: RuntimeError: boom at import"
    ):
        build_model(f"{broken}:factory")


def test_empty_spec_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--arch"):
        build_model("")


# --- --arch-kwargs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, {}),
        ([], {}),
        ('{"widths": [8, 16], "dropout": 0.5}', {"widths": [8, 16], "dropout": 0.5}),
        (["depth=3,name=wide", "flag=true"], {"depth": 3, "name": "wide", "flag": True}),
        (["ratio=0.25", '{"depth": 5}'], {"ratio": 0.25, "depth": 5}),
        ("kernel = 5", {"kernel": 5}),
        ("size=null", {"size": None}),
        ("widths=[32,64,128],dropout=0.1", {"widths": [32, 64, 128], "dropout": 0.1}),
        ('name="a,b",fc={"x": [1, 2]}', {"name": "a,b", "fc": {"x": [1, 2]}}),
    ],
)
def test_parse_arch_kwargs(values, expected) -> None:
    assert parse_arch_kwargs(values) == expected


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ("{not json", "is not valid JSON"),
        ("depth", "is not key=value or a JSON object"),
        ("=3", "is not key=value or a JSON object"),
        ("a=1,,b=2", "is not key=value or a JSON object"),
    ],
)
def test_parse_arch_kwargs_rejects_bad_input(values: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        parse_arch_kwargs(values)


# --- through the command line ---------------------------------------------------------------------


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


def test_models() -> None:
    result = invoke("models", "--json")
    assert_ok(result)
    rows = json.loads(result.stdout)
    names = [row["name"] for row in rows]
    assert {"tiny_vgg", "tiny_lenet", "vgg16"} <= set(names)
    assert all(set(row) == {"name", "description", "input_size"} for row in rows)
    assert "architectures" in result.stderr

"""Importing third-party weights files: containers, prefixes, safety, mismatches, real files,
and `snptool import`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from snptool.config import EvaluateConfig, ImportConfig, InputSpec
from snptool.core.architectures import build_model
from snptool.core.checkpoint import read_checkpoint, read_metadata
from snptool.core.files import sha256_file
from snptool.errors import CheckpointMismatchError, InputFileError, UsageError
from snptool.training.evaluate import run_evaluate
from snptool.training.importer import (
    read_foreign_weights,
    run_import,
    strip_prefix,
    unwrap_state_dict,
)
from tests.conftest import (
    REPO_ROOT,
    SHARED_CHECKPOINTS,
    assert_ok,
    assert_one_error,
    invoke,
    part_files,
)

THIRD_PARTY = REPO_ROOT / "examples" / "third_party"


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


CONFIG = ImportConfig(arch="tiny_vgg", num_classes=10)


class NotWeights:
    """An arbitrary Python object: unpickling it would run code from this module."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _foreign_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model, _ = build_model("tiny_vgg", num_classes=10)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # non-trivial BatchNorm statistics
    return model.eval()


def _logits(model: nn.Module) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.eval()(x)


def test_import_of_a_wrapped_torch_state_dict(tmp_path: Path) -> None:
    model = _foreign_model()
    weights = tmp_path / "foreign.pth"
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "best_acc": 0.5, "state_dict": state}, weights)
    out = tmp_path / "imported.safetensors"

    result = run_import(weights, out, CONFIG)

    assert result.stripped_prefix == "module."
    assert result.num_classes == 10 and result.tensors == len(state)
    assert (result.missing, result.unexpected, result.mismatched) == ([], [], [])
    checkpoint = read_checkpoint(out)
    torch.testing.assert_close(_logits(checkpoint.model), _logits(model), rtol=0, atol=0)
    assert checkpoint.class_names == [str(i) for i in range(10)]
    assert checkpoint.metadata["imported"]["stripped_prefix"] == "module."
    assert checkpoint.metadata["provenance"]["inputs"]["weights"]["sha256"] == sha256_file(weights)
    assert checkpoint.input_spec == InputSpec()


def test_import_of_a_safetensors_file_with_class_names(tmp_path: Path) -> None:
    model = _foreign_model(1)
    weights = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "imported.safetensors"
    names = tuple(f"c{i}" for i in range(10))
    spec = InputSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD)

    result = run_import(weights, out, ImportConfig(arch="tiny_vgg", class_names=names, input=spec))

    assert result.stripped_prefix == ""
    checkpoint = read_checkpoint(out)
    torch.testing.assert_close(_logits(checkpoint.model), _logits(model), rtol=0, atol=0)
    assert checkpoint.class_names == list(names)
    assert checkpoint.input_spec == spec


def test_pickled_python_object_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": NotWeights()}, weights)
    with pytest.raises(InputFileError, match="cannot be read safely with weights_only=True"):
        run_import(weights, tmp_path / "out.safetensors", CONFIG)
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_pt_file(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(_foreign_model().state_dict(), whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputFileError, match="not a readable PyTorch weights file"):
        read_foreign_weights(cut)
    garbage = tmp_path / "garbage.th"
    garbage.write_bytes(b"\x00\x01 definitely not torch")
    with pytest.raises(InputFileError):
        read_foreign_weights(garbage)


def test_file_without_a_state_dict(tmp_path: Path) -> None:
    weights = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, weights)
    with pytest.raises(InputFileError, match=r"holds no state dict .*keys epoch, lr"):
        read_foreign_weights(weights)


def test_unwrap_and_strip_prefix() -> None:
    tensor = torch.zeros(1)
    nested = {"meta": 1, "ema": {"model": {"_orig_mod.a.weight": tensor, "_orig_mod.b": tensor}}}
    weights = unwrap_state_dict(nested, "x")
    assert set(weights) == {"_orig_mod.a.weight", "_orig_mod.b"}
    stripped, prefix = strip_prefix(weights, {"a.weight", "b"})
    assert prefix == "_orig_mod." and set(stripped) == {"a.weight", "b"}
    unchanged, prefix = strip_prefix({"a.weight": tensor}, {"a.weight"})
    assert prefix == "" and set(unchanged) == {"a.weight"}


def test_weights_of_another_arch_are_refused_with_names(tmp_path: Path) -> None:
    weights = tmp_path / "vgg.pt"
    torch.save(_foreign_model().state_dict(), weights)
    out = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointMismatchError) as error:
        run_import(weights, out, dataclasses.replace(CONFIG, arch="tiny_lenet"))
    message = str(error.value)
    assert "do not match architecture tiny_lenet" in message
    assert "unexpected (" in message and "features.1.running_mean" in message
    assert not out.exists()


def test_non_strict_imports_what_matches(tmp_path: Path) -> None:
    model = _foreign_model()
    state = dict(model.state_dict())
    del state["classifier.2.bias"]
    state["aux_head.weight"] = torch.ones(3)
    weights = tmp_path / "partial.pt"
    torch.save(state, weights)
    out = tmp_path / "out.safetensors"

    with pytest.raises(CheckpointMismatchError, match="--no-strict") as error:
        run_import(weights, out, CONFIG)
    assert "1 missing (classifier.2.bias)" in str(error.value)
    assert "1 unexpected (aux_head.weight)" in str(error.value)

    result = run_import(weights, out, dataclasses.replace(CONFIG, strict=False))
    assert result.missing == ["classifier.2.bias"]
    assert result.unexpected == ["aux_head.weight"]
    loaded = read_checkpoint(out).model.state_dict()
    assert torch.equal(loaded["classifier.2.weight"], state["classifier.2.weight"])
    assert torch.equal(loaded["features.0.weight"], state["features.0.weight"])
    assert "aux_head.weight" not in loaded


def test_non_strict_still_refuses_wrong_shapes(tmp_path: Path) -> None:
    state = dict(_foreign_model().state_dict())
    state["classifier.2.weight"] = torch.zeros(4, 16)
    weights = tmp_path / "reshaped.pt"
    torch.save(state, weights)
    pattern = r"wrongly shaped \(classifier\.2\.weight: file \[4, 16\] vs model \[10, 16\]\)"
    with pytest.raises(CheckpointMismatchError, match=pattern):
        run_import(weights, tmp_path / "out.safetensors", dataclasses.replace(CONFIG, strict=False))


def test_class_names_must_match_the_outputs(tmp_path: Path) -> None:
    weights = tmp_path / "vgg.pt"
    torch.save(_foreign_model().state_dict(), weights)
    config = ImportConfig(arch="tiny_vgg", arch_kwargs={"num_classes": 10}, class_names=("a", "b"))
    with pytest.raises(UsageError, match="2 class names given but the model has 10 outputs"):
        run_import(weights, tmp_path / "out.safetensors", config)
    with pytest.raises(UsageError, match="--num-classes 7 but the model has 10 outputs"):
        run_import(
            weights,
            tmp_path / "out.safetensors",
            ImportConfig(arch="tiny_vgg", arch_kwargs={"num_classes": 10}, num_classes=7),
        )
    assert not (tmp_path / "out.safetensors").exists()


def test_import_usage_errors(tmp_path: Path) -> None:
    weights = tmp_path / "vgg.pt"
    torch.save(_foreign_model().state_dict(), weights)
    digest = sha256_file(weights)
    with pytest.raises(UsageError, match="--arch SPEC"):
        run_import(weights, tmp_path / "out.safetensors", ImportConfig())
    with pytest.raises(UsageError, match="is also an input"):
        run_import(weights, weights, CONFIG)
    assert sha256_file(weights) == digest
    with pytest.raises(InputFileError, match="does not exist"):
        run_import(tmp_path / "absent.pt", tmp_path / "out.safetensors", CONFIG)


# --- real third-party checkpoints -------------------------------------------------------------


def _cifar_subset(cifar_npz: Path, tmp_path: Path, count: int = 1000) -> Path:
    with np.load(cifar_npz) as archive:
        images, labels = archive["images"][:count], archive["labels"][:count]
        names = archive["class_names"]
    path = tmp_path / f"cifar10_first{count}.npz"
    np.savez(path, images=images, labels=labels, class_names=names, test=np.ones(count, bool))
    return path


def _shared_checkpoint(name: str) -> Path:
    path = SHARED_CHECKPOINTS / name
    if not path.is_file():
        pytest.skip(f"third-party checkpoint {path} not found (see shared/checkpoints/README.md)")
    return path


RESNET20 = (
    "akamaster_resnet20-12fca82f.th",
    "cifar_resnet.py:resnet20",
    IMAGENET_MEAN,
    IMAGENET_STD,
)


RESNET56 = (
    "akamaster_resnet56-4bfd9763.th",
    "cifar_resnet.py:resnet56",
    IMAGENET_MEAN,
    IMAGENET_STD,
)


CAPTUM = ("captum_cifar_torchvision.pt", "tutorial_net.py:net", (0.5,), (0.5,))


def _import_real(name: str, arch: str, mean, std, data: Path, out: Path) -> None:
    config = ImportConfig(
        arch=f"{THIRD_PARTY / arch}", input=InputSpec(mean=mean, std=std), data=f"npz:{data}"
    )
    imported = run_import(_shared_checkpoint(name), out, config)
    assert imported.num_classes == 10 and not imported.missing and not imported.unexpected


# Full-test-set accuracies measured in shared/checkpoints/README.md: 0.9173, 0.9339, 0.5907.
@pytest.mark.parametrize(
    ("weights", "floor"), [(RESNET20, 0.88), (CAPTUM, 0.5)], ids=["resnet20", "captum"]
)
def test_real_checkpoint_import_and_accuracy(
    cifar_npz: Path, tmp_path: Path, weights: tuple, floor: float
) -> None:
    subset = _cifar_subset(cifar_npz, tmp_path)
    out = tmp_path / "imported.safetensors"
    _import_real(*weights, data=subset, out=out)
    result = run_evaluate(out, config=EvaluateConfig(device="cpu"))
    assert result.samples == 1000 and result.data == f"npz:{subset}"
    assert list(result.per_class)[:2] == ["airplane", "automobile"]
    assert result.accuracy > floor


@pytest.mark.slow
@pytest.mark.parametrize(
    ("weights", "accuracy"),
    [(RESNET20, 0.9173), (RESNET56, 0.9339), (CAPTUM, 0.5907)],
    ids=["resnet20", "resnet56", "captum"],
)
def test_real_checkpoint_full_test_set(
    cifar_npz: Path, tmp_path: Path, weights: tuple, accuracy: float
) -> None:
    out = tmp_path / "imported.safetensors"
    _import_real(*weights, data=cifar_npz, out=out)
    result = run_evaluate(
        out, f"npz:{cifar_npz}", EvaluateConfig(split="all", batch_size=1000, device="cpu")
    )
    assert result.samples == 10_000
    assert result.accuracy == pytest.approx(accuracy, abs=5e-5)


# --- the command ------------------------------------------------------------------------------


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


# --- atomic outputs ---------------------------------------------------------------------------


def test_failed_import_creates_no_output(tmp_path: Path, foreign_weights: Path) -> None:
    out = tmp_path / "out.safetensors"
    line = assert_one_error(invoke("import", foreign_weights, "--arch", "tiny_lenet", "-o", out))
    assert "do not match architecture tiny_lenet" in line
    assert not out.exists() and part_files(tmp_path) == []

"""model_defs/efficientnet.py: CIFAR stem, torchvision compatibility, knobs, fx, CLI, ONNX."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.fx
import torchvision
from torch import nn

from model_defs import create_model, get_model_entry

TAPS = [f"features.{i}" for i in range(9)]
# EfficientNet-B0 at 32×32 with a stride-1 stem: (channels, side) of features.0 … features.8
B0_STAGE_SHAPES = [(32, 32), (16, 32), (24, 16), (40, 8), (80, 4), (112, 4), (192, 2)]
B0_STAGE_SHAPES += [(320, 2), (1280, 2)]


def _stage_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    handles = [
        model.get_submodule(tap).register_forward_hook(
            lambda mod, inp, out: shapes.append(tuple(out.shape))
        )
        for tap in model.probe_taps
    ]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return shapes


def test_b0_stem_runs_at_stride_one(images: torch.Tensor) -> None:
    model = create_model("efficientnet_b0_cifar", num_classes=7)
    assert model.probe_taps == TAPS
    assert model.features[0][0].stride == (1, 1)
    expected = [(2, channels, side, side) for channels, side in B0_STAGE_SHAPES]
    assert _stage_shapes(model, images) == expected  # last stage 2×2, not 1×1
    with torch.no_grad():
        assert model(images).shape == (2, 7)


def test_torchvision_weights_load_apart_from_the_classifier() -> None:
    reference = torchvision.models.efficientnet_b0()  # ImageNet layout, 1000 classes, stride 2
    assert reference.features[0][0].stride == (2, 2)
    state = reference.state_dict()
    same = create_model("efficientnet_b0_cifar", num_classes=1000)
    same.load_state_dict(state)  # strict: every name and shape agrees
    torch.testing.assert_close(
        same.features[3][1].block[1][0].weight, state["features.3.1.block.1.0.weight"]
    )
    model = create_model("efficientnet_b0_cifar")
    body = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    result = model.load_state_dict(body, strict=False)
    assert sorted(result.missing_keys) == ["classifier.1.bias", "classifier.1.weight"]
    assert not result.unexpected_keys


def test_tiny_is_one_small_block_per_stage(images: torch.Tensor) -> None:
    model = create_model("tiny_efficientnet")
    assert model.probe_taps == TAPS
    assert all(len(model.features[i]) == 1 for i in range(1, 8))
    shapes = _stage_shapes(model, images)
    assert [s[1] for s in shapes] == [8, 8, 8, 16, 16, 16, 16, 16, 16]
    assert [s[2] for s in shapes] == [32, 32, 16, 8, 4, 4, 2, 2, 2]  # B0's strides
    assert sum(p.numel() for p in model.parameters()) < 20_000


def test_width_depth_dropout_and_stochastic_depth_knobs(images: torch.Tensor) -> None:
    model = create_model(
        "tiny_efficientnet", width_mult=2.0, depth_mult=2.0, dropout=0.5, stochastic_depth_prob=0.4
    )
    assert all(len(model.features[i]) == 2 for i in range(1, 8))
    assert [s[1] for s in _stage_shapes(model, images)] == [16, 16, 16, 32, 32, 32, 32, 32, 32]
    assert model.classifier[0].p == 0.5
    last_block = model.features[7][1]
    assert last_block.stochastic_depth.p == pytest.approx(0.4 * 13 / 14)  # torchvision's ramp
    b0 = create_model("efficientnet_b0_cifar", width_mult=0.5, depth_mult=0.5)
    assert [len(b0.features[i]) for i in range(1, 8)] == [1, 1, 1, 2, 2, 2, 1]
    with pytest.raises(ValueError, match="width_mult=0"):
        create_model("tiny_efficientnet", width_mult=0)


def test_eval_is_deterministic_and_fx_traces(images: torch.Tensor) -> None:
    model = create_model("tiny_efficientnet", dropout=0.5, stochastic_depth_prob=0.5).eval()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)
        torch.testing.assert_close(traced(images), model(images), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(images), model(images))


def test_models_and_layers_list_the_family(
    untrained_checkpoint: Callable[..., Path], invoke_json
) -> None:
    rows = {row["name"]: row for row in invoke_json("models", "--json")}
    for name in ("efficientnet_b0_cifar", "tiny_efficientnet"):
        assert rows[name]["description"] == get_model_entry(name).description != ""
    taps = invoke_json("layers", untrained_checkpoint("tiny_efficientnet"), "--taps-only", "--json")
    assert [x["layer"] for x in taps] == TAPS
    assert taps[0]["shape"] == [8, 32, 32] and taps[-1]["shape"] == [16, 2, 2]


def test_export_passes_parity(
    untrained_checkpoint: Callable[..., Path], tmp_path: Path, invoke_json
) -> None:
    path = untrained_checkpoint("tiny_efficientnet")
    result = invoke_json("export", path, "-o", tmp_path / "tiny.onnx", "--json")
    assert (tmp_path / "tiny.onnx").is_file() and result["samples"] == 64
    assert result["max_abs_diff"] <= result["parity_tolerance"]
    assert result["argmax_agreement"] == 1.0 and result["macs"] > 0

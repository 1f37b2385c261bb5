"""Layers: the analysable layers of a model, inferred probe taps, and `snptool layers`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from snptool.analysis.layers import analysable_layers, discover_layers, run_layers
from snptool.config import InputSpec
from snptool.core.architectures import build_model
from snptool.core.taps import resolve_taps
from tests.conftest import assert_ok, assert_one_error, invoke

SPEC = InputSpec()  # 3×32×32


SMALL = InputSpec(height=8, width=8)


def test_analysable_layers() -> None:
    for arch in ("tiny_vgg", "tiny_lenet"):
        model, _ = build_model(arch, num_classes=10)
        assert analysable_layers(model, SPEC) == model.probe_taps
    assert build_model("tiny_lenet", num_classes=10)[0].probe_taps == [
        "features.1",
        "features.4",
        "classifier.1",
    ]
    plain = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), nn.Flatten(), nn.Linear(256, 3)
    )
    assert analysable_layers(plain, SMALL) == ["0.0", "0.1", "1", "2"]


def test_layer_norm_2d_stays_channels_first_when_width_equals_channels() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(nn.Conv2d(3, 8, 1), timm_layers.LayerNorm2d(8), nn.GELU())  # W = C = 8
    by_layer = {x.layer: x for x in discover_layers(model, SMALL) if x.default_unit}
    assert [(by_layer[n].unit, by_layer[n].units) for n in ("1", "2")] == [("channel", 8)] * 2
    nhwc = nn.Sequential(nn.Conv2d(3, 8, 1), nn.LayerNorm(8))  # normalises over W: NHWC
    assert [x.unit for x in discover_layers(nhwc, SMALL) if x.layer == "1"] == [
        "channel-last",
        "channel",
    ]


# --- probe taps of models that declare none ---------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("torchvision:resnet18", ["layer1", "layer2", "layer3", "layer4", "avgpool"]),
        ("timm:convnext_atto", ["stages.0", "stages.1", "stages.2", "stages.3", "head.norm"]),
    ],
)
def test_taps_only_infers_stage_taps(arch: str, expected: list[str], untrained_checkpoint) -> None:
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    checkpoint = untrained_checkpoint(arch)
    result = run_layers(checkpoint, probe_taps_only=True)
    assert result.inferred_taps
    assert [x.layer for x in result.layers] == expected
    assert all(x.probe_tap and x.calls == 1 and x.default_unit for x in result.layers)
    model, _ = build_model(arch, {}, num_classes=10)
    taps = resolve_taps(model.eval(), expected, SPEC)  # each resolves and runs once
    assert [t.name for t in taps] == expected
    full = run_layers(checkpoint)
    assert {x.layer for x in full.layers if x.probe_tap} == set(expected)


def test_declared_probe_taps_are_not_inferred(checkpoint_path: Path) -> None:
    result = run_layers(checkpoint_path, probe_taps_only=True)
    assert not result.inferred_taps
    assert [x.layer for x in result.layers] == [
        "features.2",
        "features.6",
        "features.10",
        "classifier.1",
    ]


# --- the command ------------------------------------------------------------------------------


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
        "note",
    ]
    assert cells == [
        ["layer1.0.conv1", "Conv2d", "64×8×8", "channel", "64", "64", "1", "", ""],
        ["layer1.0.relu", "ReLU", "64×8×8", "channel", "64", "64", "2", "", ""],  # twice a block
    ]


def test_unknown_layer(checkpoint_path: Path) -> None:
    assert_one_error(
        invoke("layers", checkpoint_path, "--layer", "nope"),
        "the model has no layer 'nope'; run `snptool layers CHECKPOINT` to list them.",
    )
    line = assert_one_error(invoke("layers", checkpoint_path, "--layer", "featurs.0"))
    assert "the model has no layer 'featurs.0'; did you mean features.0" in line

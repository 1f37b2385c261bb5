"""Taps: several layers in one forward pass, [N, U, P] views, copies, and layer errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import torch
from torch import nn

from snptool.analysis.clusters import run_clusters
from snptool.analysis.layers import analysable_layers
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import InputSpec, MatrixConfig, ProbeConfig
from snptool.core.architectures import build_model
from snptool.core.taps import UNIT_KINDS, TapRecorder, UnitKind, resolve_taps
from snptool.errors import LayerError
from tests.conftest import TINY_CONVNEXT

SPEC = InputSpec()  # 3×32×32


SMALL = InputSpec(height=8, width=8)


@pytest.fixture
def vgg() -> nn.Module:
    torch.manual_seed(0)
    model, _ = build_model("tiny_vgg", num_classes=10)
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def count_calls(module: nn.Module) -> list[int]:
    """A one-element counter that a forward pre-hook on `module` increments."""
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_pre_hook(hook)
    return calls


class Tokens(nn.Module):
    """[N, C, H, W] → [N, H·W, C]: a token tensor like a transformer's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class SharedActivation(nn.Module):
    """One ReLU used after both convs: it runs twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.head(torch.flatten(x, 1))


def test_one_forward_pass_taps_every_layer_in_forward_order(
    vgg: nn.Module, images: torch.Tensor
) -> None:
    recorder = TapRecorder(vgg, ["classifier.1", "features.2", "features.6"], SPEC)
    calls = count_calls(vgg)  # after the recorder's own dummy pass
    outputs, logits = recorder.run(images)
    assert calls == [1] and logits is None
    assert list(outputs) == ["features.2", "features.6", "classifier.1"]
    assert [t.name for t in recorder.taps] == list(outputs)
    shapes = {name: tuple(t.shape) for name, t in outputs.items()}
    assert shapes == {
        "features.2": (4, 8, 32 * 32),  # channel units: U = C, P = H·W
        "features.6": (4, 16, 16 * 16),
        "classifier.1": (4, 16, 1),  # node units: U = D, P = 1
    }
    units = [(t.unit, t.units, t.positions, t.shape) for t in recorder.taps]
    assert units == [
        ("channel", 8, 1024, (8, 32, 32)),
        ("channel", 16, 256, (16, 16, 16)),
        ("node", 16, 1, (16,)),
    ]
    with torch.no_grad():
        conv = vgg.features[:3](images)
        hidden = vgg.classifier[:2](torch.flatten(vgg.features(images), 1))
    torch.testing.assert_close(outputs["features.2"], conv.reshape(4, 8, -1), rtol=0, atol=0)
    torch.testing.assert_close(outputs["classifier.1"][:, :, 0], hidden, rtol=0, atol=0)


def test_run_stops_after_the_last_tap_unless_full(vgg: nn.Module, images: torch.Tensor) -> None:
    recorder = TapRecorder(vgg, ["features.6"], SPEC)
    later = count_calls(vgg.features[8])
    head = count_calls(vgg.classifier)
    outputs, logits = recorder.run(images)
    assert logits is None and list(outputs) == ["features.6"]
    assert later == [0] and head == [0]

    outputs, logits = recorder.run(images, full=True)
    assert later == [1] and head == [1]
    with torch.no_grad():
        expected = vgg(images)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        outputs["features.6"], vgg.features[:7](images).detach().reshape(4, 16, -1)
    )


def test_tap_input_reads_module_inputs(vgg: nn.Module, images: torch.Tensor) -> None:
    recorder = TapRecorder(vgg, ["classifier.0", "features.3"], SPEC, tap_input=True)
    outputs, _ = recorder.run(images)
    assert list(outputs) == ["features.3@input", "classifier.0@input"]
    assert all(t.tap_input for t in recorder.taps)
    with torch.no_grad():
        relu = vgg.features[:3](images)  # features.3 (pool) reads the ReLU's output
        flat = torch.flatten(vgg.features(images), 1)
    torch.testing.assert_close(outputs["features.3@input"], relu.reshape(4, 8, -1))
    assert outputs["classifier.0@input"].shape == (4, 256, 1)
    torch.testing.assert_close(outputs["classifier.0@input"][:, :, 0], flat)


def test_tapped_tensors_are_copies_before_an_inplace_relu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(256, 3)
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        conv = model[0](x)
    outputs, logits = TapRecorder(model, ["0"], SMALL).run(x, full=True)
    assert logits is not None  # the in-place ReLU ran on the conv's output tensor
    assert (outputs["0"] < 0).any()
    torch.testing.assert_close(outputs["0"], conv.reshape(2, 4, 64), rtol=0, atol=0)


def test_token_tensor_reads_as_feature_units() -> None:
    model = nn.Sequential(nn.Conv2d(3, 5, 1), Tokens(), nn.Flatten(), nn.Linear(5 * 64, 3))
    x = torch.randn(2, 3, 8, 8)
    (tap,) = resolve_taps(model, ["1"], SMALL)
    assert (tap.unit, tap.units, tap.positions, tap.shape) == ("feature", 5, 64, (64, 5))
    outputs, _ = TapRecorder(model, ["1"], SMALL).run(x)
    with torch.no_grad():
        expected = model[0](x).flatten(2)  # [N, D, T]: unit d holds the T positions
    torch.testing.assert_close(outputs["1"], expected)


def test_unit_kind_syntax(vgg: nn.Module) -> None:
    channel, node = resolve_taps(vgg, ["classifier.1:node", "features.2:channel"], SPEC)
    assert (channel.name, channel.unit, channel.default_unit) == ("features.2", "channel", True)
    assert (node.name, node.unit, node.units) == ("classifier.1", "node", 16)
    with pytest.raises(LayerError, match=r"shape \[2, 8, 32, 32\]; read it as channel, not node"):
        resolve_taps(vgg, ["features.2:node"], SPEC)
    with pytest.raises(LayerError, match="read it as node, not feature"):
        resolve_taps(vgg, ["classifier.1:feature"], SPEC)
    with pytest.raises(LayerError, match="requested twice"):
        resolve_taps(vgg, ["features.2", "features.2:channel"], SPEC)


def test_a_second_unit_kind_names_its_taps(
    vgg: nn.Module, images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Channel pairs of a conv output, registered the way the transformer issue adds `head`.
    pairs = UnitKind(
        "pairs",
        "two channels",
        lambda module, s: s[1] // 2 if len(s) == 4 else None,
        lambda x, units: x.reshape(len(x), units, -1),
    )
    monkeypatch.setitem(UNIT_KINDS, "pairs", pairs)
    recorder = TapRecorder(vgg, ["features.2:pairs", "features.2"], SPEC)
    assert [(t.name, t.unit, t.units, t.positions) for t in recorder.taps] == [
        ("features.2:pairs", "pairs", 4, 2048),
        ("features.2", "channel", 8, 1024),
    ]
    calls = count_calls(vgg)
    outputs, _ = recorder.run(images)
    assert calls == [1] and set(outputs) == {"features.2:pairs", "features.2"}
    torch.testing.assert_close(outputs["features.2:pairs"], outputs["features.2"].reshape(4, 4, -1))


def test_unknown_layer_suggests_close_names(vgg: nn.Module) -> None:
    with pytest.raises(LayerError, match="no layer 'featurs.2'; did you mean features.2"):
        TapRecorder(vgg, ["featurs.2"], SPEC)
    with pytest.raises(LayerError) as error:
        resolve_taps(vgg, ["features.2", "nothing_like_it"], SPEC)
    assert str(error.value) == (
        "the model has no layer 'nothing_like_it'; run `snptool layers CHECKPOINT` to list them."
    )
    with pytest.raises(LayerError, match="no layer given"):
        resolve_taps(vgg, [], SPEC)


def test_a_module_that_runs_twice_is_refused() -> None:
    model = SharedActivation().eval()
    with pytest.raises(LayerError, match="act runs 2 times per forward pass"):
        TapRecorder(model, ["act"], SMALL)
    assert analysable_layers(model, SMALL) == ["conv1", "conv2", "head"]


# --- channels-last tensors --------------------------------------------------------------------


def test_channels_last_mlp_reads_its_last_axis_as_units() -> None:
    model, _ = build_model(TINY_CONVNEXT, {}, num_classes=10)  # width 12, hidden 24, 8×8
    taps = ["block.to_nhwc", "block.norm", "block.mlp.0", "block.mlp.1", "block.mlp.1:channel"]
    recorder = TapRecorder(model.eval(), taps, SPEC)
    readings = [(t.name, t.unit, t.units, t.positions, t.shape) for t in recorder.taps]
    assert readings == [
        ("block.to_nhwc", "channel-last", 12, 64, (8, 8, 12)),
        ("block.norm", "channel-last", 12, 64, (8, 8, 12)),
        ("block.mlp.0", "channel-last", 24, 64, (8, 8, 24)),
        ("block.mlp.1", "channel-last", 24, 64, (8, 8, 24)),
        ("block.mlp.1:channel", "channel", 8, 8 * 24, (8, 8, 24)),  # on request: the H axis
    ]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    outputs, _ = recorder.run(x)
    with torch.no_grad():
        block = model.block
        hidden = block.mlp[:2](block.norm(block.conv_dw(model.stem(x)).permute(0, 2, 3, 1)))
    assert hidden.shape == (2, 8, 8, 24)  # (B, H, W, C)
    expected = hidden.permute(0, 3, 1, 2).reshape(2, 24, 64)  # unit c holds channel c
    torch.testing.assert_close(outputs["block.mlp.1"], expected, rtol=0, atol=0)
    for c in (0, 5, 23):
        torch.testing.assert_close(outputs["block.mlp.1"][:, c], hidden[..., c].reshape(2, 64))
    after = resolve_taps(model, ["block.to_nchw", "block"], SPEC)
    assert [(t.unit, t.units) for t in after] == [("channel", 12), ("channel", 12)]


def test_torchvision_swin_and_timm_convnext_mlps() -> None:
    swin, _ = build_model("torchvision:swin_t", {}, num_classes=10)
    hidden, merged = resolve_taps(swin.eval(), ["features.5.1.mlp.1", "features.6"], SPEC)
    assert (hidden.unit, hidden.units, hidden.positions, hidden.shape) == (
        "channel-last",
        1536,
        4,
        (2, 2, 1536),
    )
    assert (merged.unit, merged.units) == ("channel-last", 768)
    (pooled,) = resolve_taps(swin, ["avgpool"], SPEC)  # after the Permute back to NCHW
    assert (pooled.unit, pooled.units) == ("channel", 768)

    timm = pytest.importorskip("timm")
    convnext = timm.create_model("convnext_atto", num_classes=10, conv_mlp=False).eval()
    block = "stages.1.blocks.0"
    taps = [f"{block}.norm", f"{block}.mlp.fc1", f"{block}.mlp.act", block]
    readings = [(t.unit, t.units) for t in resolve_taps(convnext, taps, SPEC)]
    assert readings == [
        ("channel-last", 80),  # the LayerNorm after the block's own x.permute(0, 2, 3, 1)
        ("channel-last", 320),
        ("channel-last", 320),
        ("channel", 80),  # the block's output is NCHW again
    ]
    conv_mlp = timm.create_model("convnext_atto", num_classes=10).eval()  # NCHW 1×1 convs
    readings = [(t.unit, t.units) for t in resolve_taps(conv_mlp, taps, SPEC)]
    assert readings == [("channel", 80), ("channel", 320), ("channel", 320), ("channel", 80)]


def test_probe_matrix_clusters_on_a_channels_last_tap(untrained_checkpoint, tmp_path: Path) -> None:
    checkpoint = untrained_checkpoint(TINY_CONVNEXT)
    probes = tmp_path / "probes.safetensors"
    config = ProbeConfig(epochs=2, device="cpu")
    result = run_probe(checkpoint, ["stem", "block.mlp.1"], probes, config)
    assert [(x.name, x.unit, x.units, x.positions) for x in result.taps] == [
        ("stem", "channel", 12, 64),
        ("block.mlp.1", "channel-last", 24, 64),
    ]
    matrices = tmp_path / "matrices.h5"
    run_matrix(checkpoint, probes, matrices, MatrixConfig("test", device="cpu"))
    forward = tmp_path / "forward.h5"
    run_matrix(checkpoint, probes, forward, MatrixConfig("test", device="cpu"), data_spec="digits")
    clusters = run_clusters(matrices)
    assert [(x["layer"], x["units"]) for x in clusters.layers] == [
        ("stem", 12),
        ("block.mlp.1", 24),
    ]
    with h5py.File(matrices, "r") as stored, h5py.File(forward, "r") as computed:
        matrix = stored["layers/block.mlp.1/matrix"]
        assert matrix.shape == (24, 10, 10) and matrix.attrs["unit"] == "channel-last"
        torch.testing.assert_close(
            torch.from_numpy(computed["layers/block.mlp.1/matrix"][()]),
            torch.from_numpy(matrix[()]),
            rtol=1e-4,
            atol=1e-5,
        )
        assert stored["layers/block.mlp.1/clusters/count"].shape == (24,)

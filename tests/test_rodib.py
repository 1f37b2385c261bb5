"""model_defs/rodib.py: the delayed layers against a hand computation, slots, training, export."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from model_defs import create_model
from model_defs.rodib import DelayedConv
from snptool.config import ExportConfig, TrainConfig
from snptool.core.architectures import cut_after
from snptool.deploy.checked_export import count_graph_macs, export_onnx
from snptool.training.train import run_train

TAPS = ["features.2", "features.6", "features.10", "features.14", "head_input"]


def _set_known_head(model: nn.Module) -> None:
    """Small distinct numbers in every delayed conv and the delayed FC; BatchNorm3d statistics
    and affine parameters that keep many units above zero."""
    with torch.no_grad():
        layers = [m for m in model.delayed if isinstance(m, DelayedConv)]
        for index, layer in enumerate([*layers, model.classifier]):
            for offset, tensor in enumerate([layer.weight, layer.bias]):
                values = torch.arange(tensor.numel(), dtype=tensor.dtype) + 3 * index + offset
                tensor.copy_(torch.sin(values).reshape(tensor.shape) * 0.5)
        for bn in (m for m in model.delayed if isinstance(m, nn.BatchNorm3d)):
            wave = torch.sin(torch.arange(bn.num_features, dtype=bn.weight.dtype))
            bn.running_mean.copy_(0.1 * wave)
            bn.running_var.copy_(1 + 0.5 * wave.abs())
            bn.weight.copy_(1 + 0.3 * wave)
            bn.bias.copy_(0.3 + 0.1 * wave)


def _hand_delayed_block(conv: DelayedConv, bn: nn.BatchNorm3d, series: list) -> list:
    """h[j][t][y][x]: delayed 3×3 conv, BN, ReLU, 2×2 max-pool of series[i][t][y][x] (the input
    time series; one step for the impulse), by loops over t, j, i, delays d and the kernel."""
    w, b = conv.weight.tolist(), conv.bias.tolist()
    c_out, c_in, delays = conv.weight.shape[:3]
    steps_in, side = len(series[0]), len(series[0][0])
    out = []
    for j in range(c_out):
        scale = bn.weight[j].item() / math.sqrt(bn.running_var[j].item() + bn.eps)
        channel = []
        for t in range(steps_in + delays - 1):
            z = [[b[j]] * side for _ in range(side)]
            for y, x, i, d, kh, kw in itertools.product(
                range(side), range(side), range(c_in), range(delays), range(3), range(3)
            ):
                row, col = y + kh - 1, x + kw - 1
                if 0 <= t - d < steps_in and 0 <= row < side and 0 <= col < side:  # in(t − d)
                    z[y][x] += w[j][i][d][kh][kw] * series[i][t - d][row][col]
            relu = [
                [max(0.0, (v - bn.running_mean[j].item()) * scale + bn.bias[j].item()) for v in r]
                for r in z
            ]
            pooled = [
                [
                    max(relu[2 * y + a][2 * x + c] for a in (0, 1) for c in (0, 1))
                    for x in range(side // 2)
                ]
                for y in range(side // 2)
            ]
            channel.append(pooled)
        out.append(channel)
    return out


def _hand_delayed_fc(model: nn.Module, hidden: list) -> list[float]:
    """y(t) = b + Σ_f Σ_d w[0][f][d] · h_f(t − d) by loops over t, f and d; the FC input h_f(t)
    flattens hidden[c][t][y][x] over (c, y, x)."""
    w, b = model.classifier.weight.tolist(), model.classifier.bias.item()
    steps_in, delays = len(hidden[0]), len(w[0][0])
    flat = [
        [hidden[c][t][y][x] for c in range(len(hidden)) for y, x in _pixels(hidden[c][t])]
        for t in range(steps_in)
    ]
    series = []
    for t in range(steps_in + delays - 1):
        y = b
        for f, d in itertools.product(range(len(flat[0])), range(delays)):
            if 0 <= t - d < steps_in:
                y += w[0][f][d] * flat[t - d][f]
        series.append(y)
    return series


def _pixels(image: list) -> list[tuple[int, int]]:
    return list(itertools.product(range(len(image)), range(len(image[0]))))


def _hand_time_series(model: nn.Module, static: torch.Tensor) -> torch.Tensor:
    """The output time series of each sample from the static part's output, by hand."""
    blocks = [model.delayed[k : k + 4] for k in range(0, len(model.delayed), 4)]
    result = []
    for sample in static.tolist():
        series = [[channel] for channel in sample]  # [i][t = 0][y][x]: the impulse
        for conv, bn, _, _ in blocks:
            series = _hand_delayed_block(conv, bn, series)
        result.append(_hand_delayed_fc(model, series))
    return torch.tensor(result, dtype=torch.float64)


@pytest.mark.parametrize(
    "delays, steps", [([2, 3], 1 + 1 + 2), ([2, 3, 2], 1 + 1 + 2 + 1), ([1, 2, 3], 1 + 1 + 2)]
)
def test_delayed_layers_match_a_hand_computation(
    delays: list[int], steps: int, images: torch.Tensor
) -> None:
    torch.manual_seed(0)  # the weights, whatever ran before: some draws leave a sample constant
    model = create_model(
        "tiny_rodib",
        widths=[4, 4, 4, 3, 2],
        delays=delays,
        delay_layers=len(delays),
        num_classes=3,
        slot_offset=1,
    )
    model = model.double().eval()
    _set_known_head(model)
    convs = [m for m in model.delayed if isinstance(m, DelayedConv)]
    assert [c.impulse for c in [*convs, model.classifier]] == [True] + [False] * len(convs)
    with torch.no_grad():
        static = model.forward_features(images.double())
        series = model.forward_time_series(static)
        logits = model(images.double())
    expected = _hand_time_series(model, static)
    assert series.shape == (2, steps)
    assert (expected.std(dim=1) > 1e-3).all()  # y(t) varies over time: the delays matter
    torch.testing.assert_close(series, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, expected[:, 1:4], rtol=1e-12, atol=1e-12)  # slots 1…3


def test_every_layer_delayed_matches_the_zero_padded_convolution(images: torch.Tensor) -> None:
    """delay_layers=6: the image itself is the impulse. Each delayed layer against the
    definition computed the expensive way: a conv3d with kernel (D, 3, 3) (a conv1d for the FC)
    over the zero-padded time axis, the delay axis flipped to turn correlation into convolution."""
    model = create_model(
        "tiny_rodib", widths=[3, 3, 2, 2, 2], delays=2, delay_layers=6, num_classes=7
    )
    model = model.double().eval()
    _set_known_head(model)
    assert len(model.features) == 0 and model.probe_taps == ["head_input"]
    x = images.double().unsqueeze(2)  # (B, 3, 1, H, W)
    with torch.no_grad():
        for layer in model.delayed:
            if isinstance(layer, DelayedConv):
                weight, pad = torch.flip(layer.weight, dims=[2]), (layer.delays - 1, 1, 1)
                expected = nn.functional.conv3d(x, weight, layer.bias, padding=pad)
                x = layer(x)
                torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
            else:
                x = layer(x)
        fc = model.classifier
        flat = model.head_input(x.transpose(1, 2)).transpose(1, 2)  # (B, F, T)
        weight = torch.flip(fc.weight, dims=[2])
        expected = nn.functional.conv1d(flat, weight, fc.bias, padding=fc.delays - 1)
        torch.testing.assert_close(fc(flat), expected, rtol=1e-12, atol=1e-12)
        assert model(images.double()).shape == (2, 7)  # T_out = 1 + 6 · (2 − 1)


def test_fc_delays_only_is_a_linear_layer(images: torch.Tensor) -> None:
    model = create_model("rodib_vgg6", widths=[8, 8, 8, 8, 6], num_classes=5).eval()
    fc = model.classifier
    linear = nn.Linear(6, 5)
    with torch.no_grad():
        linear.weight.copy_(fc.weight[0].T)  # label k reads delay k: w[0, i, k]
        linear.bias.fill_(fc.bias.item())
        features = torch.flatten(model.forward_features(images), 1)
        torch.testing.assert_close(model(images), linear(features), rtol=1e-5, atol=1e-6)
    assert isinstance(model.delayed, nn.Sequential) and len(model.delayed) == 0


@pytest.mark.parametrize(
    "kwargs, num_classes, steps",
    [
        ({}, 10, 10),
        ({"delays": 12, "slot_offset": 2}, 10, 12),
        ({"delay_layers": 2}, 10, 19),
        ({"delay_layers": 2, "delays": [3, 8]}, 10, 10),
        ({"fc_input": 8, "delay_layers": 2}, 10, 19),
    ],
)
def test_output_shapes(kwargs: dict, num_classes: int, steps: int, images: torch.Tensor) -> None:
    fc_input = kwargs.get("fc_input", 16)
    widths = [4, 4, 8, 8, fc_input]
    model = create_model("rodib_vgg6", widths=widths, num_classes=num_classes, **kwargs).eval()
    with torch.no_grad():
        assert model(images).shape == (2, num_classes)
        assert model.forward_time_series(model.forward_features(images)).shape == (2, steps)
    assert model.classifier.weight.shape == (1, fc_input, model.classifier.delays)


def test_narrow_fc_input_for_rodib_and_vgg6() -> None:
    narrow = create_model("rodib_vgg6", fc_input=8, delay_layers=2)
    assert narrow.classifier.weight.shape[1] == 8 < 10
    assert create_model("vgg6", widths=[16, 32, 64, 128, 8]).classifier[0].in_features == 8
    pooled = create_model("tiny_rodib", fc_input=4, input_size=64).eval()
    assert pooled.classifier.weight.shape[1] == 4  # 2×2 left after 5 pools: global max-pool
    with torch.no_grad():
        assert pooled(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="disagree"):
        create_model("rodib_vgg6", widths=[4, 4, 4, 4, 16], fc_input=8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"delays": 9}, "leaves 9 slots for 10 labels"),
        ({"slot_offset": 1}, "leaves 9 slots for 10 labels"),
        ({"delay_layers": 2, "slot_offset": 10}, "leaves 9 slots"),
        ({"slot_offset": -1}, ">= 0"),
        ({"delay_layers": 7}, "delay_layers=7 must be 1"),
        ({"delay_layers": 0}, "delay_layers=0 must be 1"),
        ({"delays": [10, 10]}, "expected 1"),
        ({"delays": 0}, "at least 1"),
    ],
)
def test_invalid_knobs_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("rodib_vgg6", num_classes=10, **kwargs)


def test_taps_fire_and_cut_with_fx(images: torch.Tensor) -> None:
    model = create_model("tiny_rodib", num_classes=7).eval()
    assert model.probe_taps == TAPS
    with torch.no_grad():
        body = cut_after(model, "head_input")
        assert body(images).shape == (2, 7, 16)  # (B, T, F): 7 delays in the conv, 16 channels
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(images), model(images))


def test_cross_entropy_falls_while_training() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 4
    means = torch.randn(4, 3, 1, 1, generator=generator)
    images = means[labels] + 0.5 * torch.randn(64, 3, 32, 32, generator=generator)
    torch.manual_seed(0)
    model = create_model("tiny_rodib", num_classes=4).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(30):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4


def test_snptool_train_runs_unchanged(tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, flip=False, device="cpu")
    result = run_train("tiny_rodib", "digits", tmp_path / "rodib.safetensors", config)
    assert result.history[1].loss < result.history[0].loss
    assert result.best_accuracy > 0.3  # 10 labels: chance is 0.1


def test_layers_and_export_parity(
    untrained_checkpoint: Callable[..., Path], tmp_path: Path, invoke_json
) -> None:
    path = untrained_checkpoint("tiny_rodib")
    taps = invoke_json("layers", path, "--taps-only", "--json")
    assert [row["layer"] for row in taps] == TAPS
    head = taps[-1]
    assert (head["unit"], head["units"], head["positions"]) == ("feature", 16, 10)
    result = invoke_json("export", path, "-o", tmp_path / "rodib.onnx", "--json")
    assert (tmp_path / "rodib.onnx").is_file() and result["samples"] == 64
    assert result["max_abs_diff"] <= result["parity_tolerance"]
    assert result["argmax_agreement"] == 1.0


# tiny_rodib on 32×32×3, 10 labels: static convs 3→8 (32²), 8→8 (16²), 8→16 (8²), 16→16 (4²);
# the delayed conv 16→16 at 2×2 sees the impulse: D = 10 slices, each a static conv; the delayed
# FC (16 inputs after the last pool, one output) sees T = 10 steps, each through D = 10 slices.
TINY_RODIB_MACS = (
    32 * 32 * 8 * 27
    + 16 * 16 * 8 * 72
    + 8 * 8 * 16 * 72
    + 4 * 4 * 16 * 144  # static
    + 10 * (2 * 2 * 16 * 144)  # delayed conv: D × its static MACs
    + 10 * 10 * 16  # delayed FC: T × D × F
)  # = 572,992


def _onnx_macs(name: str, **kwargs) -> int:
    model = create_model(name, **kwargs).eval()
    return count_graph_macs(export_onnx(model, (3, 32, 32), ExportConfig(), source=name))


def test_macs_equal_the_hand_count() -> None:
    assert TINY_RODIB_MACS == 572_992
    assert _onnx_macs("tiny_rodib") == TINY_RODIB_MACS


def test_two_delayed_layers_cost_about_twice_the_vgg6() -> None:
    # quarter width, 16-32-64-128-128: the last conv is 13 % of VGG-6's MACs; delaying it and
    # the FC (128 inputs, T = D = 10) multiplies both by 10, the whole by 2.16
    static = 32 * 32 * 16 * 27 + 16 * 16 * 32 * 144 + 8 * 8 * 64 * 288 + 4 * 4 * 128 * 576
    last_conv, fc = 2 * 2 * 128 * 1152, 128 * 10
    vgg6 = _onnx_macs("vgg6", width_factor=0.25)
    assert vgg6 == static + last_conv + fc
    rodib = _onnx_macs("rodib_vgg6", width_factor=0.25, delay_layers=2)
    assert rodib == static + 10 * last_conv + 10 * fc
    assert 2.0 < rodib / vgg6 < 2.3
    assert _onnx_macs("rodib_vgg6", width_factor=0.25) == vgg6  # FC delays only: the VGG-6

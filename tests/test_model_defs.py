"""Registry sweep and family-specific checks for model_defs."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import nn

from model_defs import create_model, get_model_entry, list_models, register_model
from model_defs.vgg import VGG

NUM_CLASSES = 7


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 32, 32)


# --- registry sweep ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_model_forward_and_taps(name: str, images: torch.Tensor) -> None:
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    entry = get_model_entry(name)
    assert entry.description and entry.input_size == (3, 32, 32)
    assert model.probe_taps, "every model exposes probe taps"

    fired: list[tuple[str, type]] = []
    for tap in model.probe_taps:
        model.get_submodule(tap).register_forward_hook(
            lambda mod, inp, out, tap=tap: fired.append((tap, type(out)))
        )
    with torch.no_grad():
        out = model(images)

    assert out.shape == (2, NUM_CLASSES)
    assert not torch.isnan(out).any()
    # every tap fires once, in forward order, with a tensor
    assert fired == [(tap, torch.Tensor) for tap in model.probe_taps]


def test_register_duplicate_name_raises() -> None:
    def vgg16() -> nn.Module:
        """A second vgg16."""
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(vgg16)
    assert get_model_entry("vgg16").builder is not vgg16


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(KeyError) as excinfo:
        create_model("vgg99")
    message = str(excinfo.value)
    assert "vgg99" in message
    assert all(name in message for name in list_models())


def test_list_models_is_sorted() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"vgg16", "avgg16", "tiny_vgg", "lenet5", "tiny_lenet"} <= set(names)


# --- VGG and A-VGG ----------------------------------------------------------------------------


@functools.cache
def _default(name: str) -> nn.Module:
    """A registered model with its defaults, built once (A-VGG8 alone has 138 M parameters)."""
    return create_model(name).eval()


def _blocks(*blocks: tuple[int, int]) -> list[int]:
    """Conv widths of blocks of k convs of n filters, given as (k, n)."""
    return [n for k, n in blocks for _ in range(k)]


def _layout(model: nn.Module) -> list[int | tuple[str, int]]:
    """The conv widths and pools ("A"/"M", kernel) of `model.features`, in order."""
    layout: list[int | tuple[str, int]] = []
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            layout.append(layer.out_channels)
        elif isinstance(layer, nn.AvgPool2d | nn.MaxPool2d):
            kind = "A" if isinstance(layer, nn.AvgPool2d) else "M"
            assert layer.stride == layer.kernel_size, "pools do not overlap"
            layout.append((kind, layer.kernel_size))
    return layout


def _sides(model: nn.Module, kinds: tuple[type, ...]) -> list[int]:
    """Spatial side of the output of every `kinds` layer in `features`, for a 32×32 input."""
    sides: list[int] = []
    hooks = [
        layer.register_forward_hook(lambda mod, inp, out: sides.append(out.shape[-1]))
        for layer in model.features
        if isinstance(layer, kinds)
    ]
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return sides


def _linear_widths(model: nn.Module) -> list[int]:
    return [m.out_features for m in model.classifier if isinstance(m, nn.Linear)]


# METHODS §11 table (arXiv 2303.05800): blocks 1-3, first pool, block 4, second pool, FC widths.
AVGG_TABLE = {
    "avgg6": (_blocks((1, 64), (1, 128), (1, 256)), ("A", 2), _blocks((2, 512)), ("M", 8), [10]),
    "avgg8": (
        _blocks((1, 64), (1, 128), (1, 256)),
        ("A", 2),
        _blocks((2, 512)),
        ("M", 4),
        [8192, 8192, 10],
    ),
    "avgg13": (
        _blocks((2, 64), (2, 128), (3, 256)),
        ("A", 4),
        _blocks((3, 512)),
        ("M", 4),
        [2048, 2048, 10],
    ),
    "avgg14": (_blocks((2, 64), (2, 128), (3, 256)), ("A", 4), _blocks((6, 512)), ("M", 2), [10]),
    "avgg16": (
        _blocks((2, 64), (2, 128), (3, 256)),
        ("A", 4),
        _blocks((6, 512)),
        ("M", 2),
        [4096, 4096, 10],
    ),
}


@pytest.mark.parametrize(
    "name, num_weight_layers",
    [("vgg6", 6), ("vgg8", 8), ("vgg11", 11), ("vgg13", 13), ("vgg16", 16)]
    + [("avgg6", 6), ("avgg8", 8), ("avgg13", 13), ("avgg14", 14), ("avgg16", 16)],
)
def test_vgg_weight_layer_count_matches_name(name: str, num_weight_layers: int) -> None:
    model = _default(name)
    weight_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weight_layers) == num_weight_layers
    assert len(model.probe_taps) == num_weight_layers - 1  # every layer but the output


@pytest.mark.parametrize("name", sorted(AVGG_TABLE))
def test_avgg_layout_matches_methods_table(name: str) -> None:
    early, first_pool, block4, second_pool, fc = AVGG_TABLE[name]
    model = _default(name)
    assert _layout(model) == [*early, first_pool, *block4, second_pool]
    assert _linear_widths(model) == fc
    # every conv is 3×3 conv + BN + ReLU keeping the size: 32×32 until the first pool
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert len(model.probe_taps) == len(convs) + len(fc) - 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == len(convs)
    first, second = 32 // first_pool[1], 32 // first_pool[1] // second_pool[1]
    assert _sides(model, (nn.AvgPool2d, nn.MaxPool2d)) == [first, second]
    assert _sides(model, (nn.Conv2d,)) == [32] * len(early) + [first] * len(block4)
    assert model.classifier[0].in_features == 512 * second * second


@pytest.mark.parametrize("name", ["vgg6", "vgg8", "vgg11", "vgg13", "vgg16"])
def test_plain_vgg_pools_2x2_max_down_to_1x1(name: str) -> None:
    model = _default(name)
    pools = [v for v in _layout(model) if isinstance(v, tuple)]
    assert pools == [("M", 2)] * 5
    assert _sides(model, (nn.MaxPool2d,)) == [16, 8, 4, 2, 1]
    assert model.classifier[0].in_features == 512


@pytest.mark.parametrize("name", [f"vgg{m}" for m in (6, 8, 11, 13, 16)] + sorted(AVGG_TABLE))
def test_vgg_docstring_states_parameter_count(name: str) -> None:
    stated = re.search(r"([\d.]+) M parameters", get_model_entry(name).description)
    assert stated, "the builder's first docstring line states its parameter count"
    decimals = len(stated.group(1).partition(".")[2])
    count = sum(p.numel() for p in _default(name).parameters())
    assert round(count / 1e6, decimals) == float(stated.group(1))


def test_width_factor_scales_convs_and_hidden_fc(images: torch.Tensor) -> None:
    model = create_model("avgg8", width_factor=0.25, num_classes=NUM_CLASSES).eval()
    assert _layout(model) == [16, 32, 64, ("A", 2), 128, 128, ("M", 4)]
    assert model.classifier[0].in_features == 128 * 4 * 4
    assert _linear_widths(model) == [2048, 2048, NUM_CLASSES]
    with torch.no_grad():
        assert model(images).shape == (2, NUM_CLASSES)
    # explicit widths are scaled too; plain VGGs take the knob as well
    halved = create_model("avgg6", widths=[8, 16, 32, 64, 64], width_factor=0.5)
    assert [v for v in _layout(halved) if isinstance(v, int)] == [4, 8, 16, 32, 32]
    assert _linear_widths(create_model("vgg8", width_factor=0.5)) == [256, 256, 10]
    with pytest.raises(ValueError, match="width_factor"):
        create_model("avgg6", width_factor=0)


@pytest.mark.parametrize("name", ["vgg11", "avgg6"])
def test_vgg_widths_override(name: str, images: torch.Tensor) -> None:
    default = _layout(_default(name))
    widths = [4 + i for i in range(len(_convs(_default(name))))]
    model = create_model(name, widths=widths, fc_widths=[12], num_classes=NUM_CLASSES).eval()
    assert [conv.out_channels for conv in _convs(model)] == widths
    # the pools stay where they were
    assert [v for v in _layout(model) if isinstance(v, tuple)] == [
        v for v in default if isinstance(v, tuple)
    ]
    assert _linear_widths(model) == [12, NUM_CLASSES]
    with torch.no_grad():
        assert model(images).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ["vgg11", "avgg6"])
def test_vgg_wrong_widths_length_raises(name: str) -> None:
    num_convs = len(_convs(_default(name)))
    with pytest.raises(ValueError, match=f"expected {num_convs}"):
        create_model(name, widths=[8] * (num_convs + 1))


@pytest.mark.parametrize("token", [("X", 2), ("A", 0), "P"])
def test_vgg_bad_pool_token_raises(token: object) -> None:
    with pytest.raises(ValueError, match="pool is"):
        VGG([8, token, 8])


def test_vgg_dropout_and_no_batch_norm(images: torch.Tensor) -> None:
    model = create_model("vgg8", dropout=0.5, batch_norm=False).eval()
    assert sum(isinstance(m, nn.Dropout) for m in model.classifier) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.probe_taps[-2:] == ["classifier.1", "classifier.4"]
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)


def test_vgg_other_input_size() -> None:
    model = create_model("tiny_vgg", input_size=64, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    assert create_model("tiny_avgg", input_size=64).classifier[0].in_features == 16 * 8 * 8
    with pytest.raises(ValueError, match="input_size"):
        create_model("vgg16", input_size=16)
    with pytest.raises(ValueError, match="input_size"):
        create_model("avgg6", input_size=8)  # 8 → 4 → 0 after the 8×8 max-pool


# --- LeNet ------------------------------------------------------------------------------------


def test_lenet_filters_set_conv_channels(images: torch.Tensor) -> None:
    model = create_model("lenet", filters=(10, 20), num_classes=NUM_CLASSES).eval()
    assert [conv.out_channels for conv in _convs(model)] == [10, 20]
    assert model.classifier[0].in_features == 20 * 5 * 5  # 32 → 28 → 14 → 10 → 5
    with torch.no_grad():
        assert model(images).shape == (2, NUM_CLASSES)


def test_lenet5_is_classic() -> None:
    model = create_model("lenet5")
    assert [conv.out_channels for conv in _convs(model)] == [6, 16]
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [120, 84, 10]
    assert model.probe_taps == ["features.1", "features.4", "classifier.1", "classifier.3"]

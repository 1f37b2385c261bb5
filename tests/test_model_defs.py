"""Registry sweep and family-specific checks for model_defs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_defs import create_model, get_model_entry, list_models, register_model

NUM_CLASSES = 7
VGG_PAIRS = [("vgg6", "avgg6"), ("vgg8", "avgg8"), ("vgg13", "avgg13"), ("vgg16", "avgg16")]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _pools_before_last_conv(model: nn.Module) -> int:
    layers = list(model.features)
    last_conv = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d))
    return sum(isinstance(layer, nn.MaxPool2d) for layer in layers[:last_conv])


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


@pytest.mark.parametrize(
    "name, num_weight_layers",
    [("vgg6", 6), ("vgg8", 8), ("vgg11", 11), ("vgg13", 13), ("vgg16", 16)]
    + [("avgg6", 6), ("avgg8", 8), ("avgg13", 13), ("avgg14", 14), ("avgg16", 16)],
)
def test_vgg_weight_layer_count_matches_name(name: str, num_weight_layers: int) -> None:
    model = create_model(name)
    weight_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(weight_layers) == num_weight_layers
    assert len(model.probe_taps) == num_weight_layers - 1  # every layer but the output


@pytest.mark.parametrize("plain, late", VGG_PAIRS)
def test_avgg_moves_pools_after_last_conv(plain: str, late: str, images: torch.Tensor) -> None:
    vgg, avgg = create_model(plain), create_model(late)
    assert _pools_before_last_conv(avgg) == 2 < _pools_before_last_conv(vgg)
    assert isinstance(avgg.features[-1], nn.MaxPool2d) and avgg.features[-1].kernel_size == 8
    assert vgg.classifier[0].in_features == avgg.classifier[0].in_features
    with torch.no_grad():
        assert vgg.forward_features(images).shape == avgg.forward_features(images).shape


def test_avgg_early_pools_kwarg() -> None:
    model = create_model("avgg8", early_pools=4)
    assert _pools_before_last_conv(model) == 4
    assert model.features[-1].kernel_size == 2
    with pytest.raises(ValueError, match="early_pools"):
        create_model("avgg8", early_pools=6)
    with pytest.raises(TypeError):
        create_model("vgg8", early_pools=2)


@pytest.mark.parametrize("name", ["vgg11", "avgg6"])
def test_vgg_widths_override(name: str, images: torch.Tensor) -> None:
    num_convs = len(_convs(create_model(name)))
    widths = [4 + i for i in range(num_convs)]
    model = create_model(name, widths=widths, fc_widths=[12], num_classes=NUM_CLASSES).eval()
    assert [conv.out_channels for conv in _convs(model)] == widths
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [
        12,
        NUM_CLASSES,
    ]
    with torch.no_grad():
        assert model(images).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ["vgg11", "avgg6"])
def test_vgg_wrong_widths_length_raises(name: str) -> None:
    num_convs = len(_convs(create_model(name)))
    with pytest.raises(ValueError, match=f"expected {num_convs}"):
        create_model(name, widths=[8] * (num_convs + 1))


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
    with pytest.raises(ValueError, match="input_size"):
        create_model("vgg16", input_size=16)


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

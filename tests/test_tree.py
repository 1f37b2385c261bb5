"""model_defs/tree.py: Tree-3 sizes by hand, the tree layer against loops, training, taps, ONNX."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import h5py
import pytest
import torch
from torch import nn

from model_defs import create_model, get_model_entry
from model_defs.tree import TreeLayer
from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import ClustersConfig, MatrixConfig, ProbeConfig, TrainConfig
from snptool.core.architectures import cut_after
from snptool.training.train import run_train
from tests.conftest import invoke

TAPS = ["features.1", "tree.nodes"]


def _sizes(module: nn.Module) -> list[int]:
    return [p.numel() for p in module.parameters()]


def test_tree3_parameter_counts_by_hand() -> None:
    k, m = 6, 16
    model = create_model("tree3")
    # layer 1: 3 colours × K filters of 5×5 on one channel each, one bias per filter
    assert _sizes(model.features) == [3 * k * 25, 3 * k]  # 450 + 18
    # tree layer: per branch 3 colours × 7 blocks × (2 rows × 14 columns × K) weights, a bias
    # per node (3 × 7 per branch)
    assert _sizes(model.tree) == [m * 3 * 7 * (2 * 14 * k), m * 3 * 7]  # 56,448 + 336
    assert _sizes(model.classifier) == [21 * m * 10, 10]  # 3,360 + 10
    assert sum(_sizes(model)) == 468 + 56_784 + 3_370 == 60_622
    assert sum(_sizes(create_model("lenet5"))) == 62_006  # the paper's comparison


def test_tree3_variants_and_shapes(images: torch.Tensor) -> None:
    model = create_model("tree3").eval()
    large = create_model("tree3_k15_m80")
    assert isinstance(model.features[1], nn.Sigmoid) and isinstance(model.tree.nodes, nn.Sigmoid)
    assert isinstance(large.features[1], nn.ReLU) and isinstance(large.tree.nodes, nn.ReLU)
    assert large.classifier.in_features == 21 * 80
    assert large.tree.layer.weight.shape == (80, 3, 7, 15, 2, 14)
    with torch.no_grad():
        features = model.forward_features(images)
        assert features.shape == (2, 18, 14, 14)
        assert model.tree(features).shape == (2, 21 * 16)
        assert model(images).shape == (2, 10)
    relu = create_model("tree3", activation="relu")
    assert isinstance(relu.features[1], nn.ReLU) and isinstance(relu.tree.nodes, nn.ReLU)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"activation": "tanh"}, "activation='tanh'"), ({"input_size": 30}, "does not split")],
)
def test_invalid_knobs_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model("tiny_tree", **kwargs)


def _naive_tree(layer: TreeLayer, x: torch.Tensor) -> torch.Tensor:
    """node (m, c, j) = bias + Σ_k Σ_r Σ_w weight[m, c, j, k, r, w] · x[c·K + k, j·R + r, w],
    by loops; nodes ordered branch, colour, block."""
    branches, colours, blocks, filters, rows, side = layer.weight.shape
    out = torch.zeros(x.shape[0], branches * colours * blocks, dtype=x.dtype)
    for b, m, c, j in itertools.product(
        range(x.shape[0]), range(branches), range(colours), range(blocks)
    ):
        total = layer.bias[m, c, j].item()
        for k, r, w in itertools.product(range(filters), range(rows), range(side)):
            total += layer.weight[m, c, j, k, r, w].item() * x[b, c * filters + k, j * rows + r, w]
        out[b, (m * colours + c) * blocks + j] = total
    return out


def test_tree_layer_matches_a_loop_computation() -> None:
    torch.manual_seed(0)
    layer = TreeLayer(branches=2, colours=3, filters=2, side=4).double()
    with torch.no_grad():
        layer.bias.normal_()
        x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
        torch.testing.assert_close(layer(x), _naive_tree(layer, x), rtol=1e-12, atol=1e-12)
    # each weight has a single route: one weight moves exactly one node of one sample
    with torch.no_grad():
        before = layer(x)
        layer.weight[1, 2, 0, 1, 1, 3] += 1.0
        changed = (layer(x) - before).abs() > 0
    assert changed.sum(1).tolist() == [1, 1] and changed[0, (1 * 3 + 2) * 2 + 0]


def test_layer_one_sees_each_colour_only_through_its_own_filters(images: torch.Tensor) -> None:
    model = create_model("tiny_tree").eval()  # K = 2: channels 2c, 2c + 1 read colour c
    conv = model.features[0]
    assert conv.groups == 3 and conv.weight.shape == (6, 1, 5, 5)
    with torch.no_grad():
        before = conv(images)
        for colour in range(3):
            shifted = images.clone()
            shifted[:, colour] += 1.0
            moved = (conv(shifted) - before).abs().amax(dim=(0, 2, 3)) > 1e-6
            assert moved.tolist() == [c // 2 == colour for c in range(6)]


def test_taps_fire_and_cut_with_fx(images: torch.Tensor) -> None:
    model = create_model("tiny_tree").eval()
    assert model.probe_taps == TAPS
    with torch.no_grad():
        assert cut_after(model, "features.1")(images).shape == (2, 6, 28, 28)
        assert cut_after(model, "tree.nodes")(images).shape == (2, 21 * 3)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(images), model(images))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """tiny_tree trained 2 epochs on digits, probed, its matrices written and clustered."""
    directory = tmp_path_factory.mktemp("tree")
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, flip=False, device="cpu")
    trained = run_train("tiny_tree", "digits", directory / "tree.safetensors", config)
    probes_path = directory / "tree.probes.safetensors"
    probes = run_probe(trained.output, TAPS, probes_path, ProbeConfig(epochs=2, device="cpu"))
    matrices = directory / "tree.h5"
    run_matrix(trained.output, probes_path, matrices, MatrixConfig(device="cpu"))
    run_clusters(matrices, ClustersConfig(threshold=0.3))
    return {"trained": trained, "probes": probes.to_json()["layers"], "matrices": matrices}


def test_snptool_train_probe_and_matrix_on_the_taps(analysed: dict) -> None:
    trained, probes = analysed["trained"], analysed["probes"]
    assert trained.history[1].loss < trained.history[0].loss
    assert trained.best_accuracy > 0.3  # 10 labels: chance is 0.1
    readings = [(row["layer"], row["unit"], row["units"], row["positions"]) for row in probes]
    assert readings == [("features.1", "channel", 6, 784), ("tree.nodes", "node", 63, 1)]
    assert all(row["test_accuracy"] > 0.3 for row in probes)
    with h5py.File(analysed["matrices"]) as handle:
        shapes = {tap: handle["layers"][tap]["matrix"].shape for tap in TAPS}
    assert shapes == {"features.1": (6, 10, 10), "tree.nodes": (63, 10, 10)}


def test_afcc_prunes_the_classifier_but_not_the_tree_layer(
    analysed: dict, tmp_path: Path, invoke_json
) -> None:
    checkpoint, matrices = analysed["trained"].output, analysed["matrices"]
    args = ["prune", checkpoint, "--clusters", matrices, "--method", "afcc", "--json"]
    result = invoke_json(*args, "--layers", "tree.nodes", "-o", tmp_path / "pruned.safetensors")
    assert [(row["layer"], row["module"]) for row in result["layers"]] == [("output", "classifier")]
    assert 0 < result["layers"][0]["dilution"] < 1
    # the tree layer's weights are no Conv2d / Linear: prune refuses, with one error line
    refused = invoke(*args, "--layers", "features.1,tree.nodes", "-o", tmp_path / "x")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
    assert "tree.layer (TreeLayer) reads features.1" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_layers_and_export_parity(
    untrained_checkpoint: Callable[..., Path], tmp_path: Path, invoke_json
) -> None:
    path = untrained_checkpoint("tiny_tree")
    taps = invoke_json("layers", path, "--taps-only", "--json")
    assert [(row["layer"], row["unit"], row["units"]) for row in taps] == [
        ("features.1", "channel", 6),
        ("tree.nodes", "node", 63),
    ]
    result = invoke_json("export", path, "-o", tmp_path / "tree.onnx", "--json")
    assert (tmp_path / "tree.onnx").is_file() and result["samples"] == 64
    assert result["max_abs_diff"] <= result["parity_tolerance"]
    assert result["argmax_agreement"] == 1.0
    assert result["params"] == sum(_sizes(create_model("tiny_tree")))
    # conv 6 maps × 28² × 25, tree 63 nodes × (2 × 14 × 2), FC 63 × 10: the bmm is a MatMul
    assert result["macs"] == 6 * 28 * 28 * 25 + 63 * 56 + 63 * 10


def test_models_lists_the_tree_family(invoke_json) -> None:
    rows = {row["name"]: row for row in invoke_json("models", "--json")}
    for name in ("tree", "tree3", "tree3_k15_m80", "tiny_tree"):
        assert rows[name]["description"] == get_model_entry(name).description != ""
        assert rows[name]["input_size"] == [3, 32, 32]

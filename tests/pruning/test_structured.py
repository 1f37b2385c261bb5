"""prune --method units (and Torch-Pruning's criteria): whole channels / nodes removed through
Torch-Pruning's DependencyGraph on a residual network, an EfficientNet block and a CCT
feed-forward; the smaller model reloads from its safetensors file alone and exports with parity.

The exactness check: a masked dense model whose "dead" units have no outgoing connection left
(every reader's columns zero) is pruned with those units ranked first (their matrices serve no
label); the pruned model must compute the same logits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnxruntime
import pytest
import torch

from snptool.analysis.clusters import run_clusters
from snptool.config import (
    RESEARCH_RANKING,
    ClustersConfig,
    ConnectionConfig,
    FinetuneConfig,
    InputSpec,
    PruneConfig,
    RemovalConfig,
)
from snptool.core.architectures import build_model
from snptool.core.checkpoint import make_metadata, read_checkpoint, write_checkpoint
from snptool.core.matrix_file import create_layer, create_matrix_file
from snptool.core.resizing import tensor_shapes
from snptool.deploy.export import run_export
from snptool.errors import ArchitectureError, LayerError, UsageError
from snptool.pruning.prune import run_prune
from snptool.pruning.structured import removed_count
from tests.conftest import REPO_ROOT, TINY_RESNET

CIFAR_RESNET = REPO_ROOT / "examples" / "third_party" / "cifar_resnet.py"
CLASSES = 10


def matrices(units: int, dead: set[int]) -> np.ndarray:
    """Unit u serves label u mod 10 (a one-label clique); a dead unit has a negative matrix."""
    result = np.zeros((units, CLASSES, CLASSES), dtype=np.float32)
    for unit in range(units):
        if unit in dead:
            result[unit] = -1.0
        else:
            result[unit, unit % CLASSES, unit % CLASSES] = 1.0
    return result


def clusters_file(path: Path, taps: dict[str, tuple[int, set[int]]]) -> Path:
    """A clustered matrix file: tap → (units, dead units)."""
    with h5py.File(path, "w") as handle:
        create_matrix_file(handle, [str(i) for i in range(CLASSES)], {"split": "train"})
        for order, (tap, (units, dead)) in enumerate(taps.items()):
            attrs = {"layer": tap, "unit": "channel", "units": units, "positions": 1}
            dataset = create_layer(handle, tap, units, CLASSES, {**attrs, "accuracy": 0.5})
            dataset[...] = matrices(units, dead)
            dataset.parent.attrs["order"] = order
    run_clusters(path, ClustersConfig(threshold=0.3))
    return path


def untrained(arch: str, folder: Path) -> Path:
    """An untrained checkpoint of a user's architecture file, BatchNorm statistics moved."""
    torch.manual_seed(0)
    model, record = build_model(arch, {}, num_classes=CLASSES)
    with torch.no_grad():
        for _ in range(2):
            model.train()(torch.rand(8, 3, 32, 32) * 2 - 1)
    metadata = make_metadata(
        arch=record,
        class_names=[str(i) for i in range(CLASSES)],
        input_spec=InputSpec(),
        data="digits",
        provenance={},
    )
    path = folder / "dense.safetensors"
    write_checkpoint(path, model.eval(), metadata)
    return path


def masked(checkpoint: Path, columns: dict[str, set[int]], output: Path) -> Path:
    """The checkpoint with the listed input columns of each named module zeroed."""
    loaded = read_checkpoint(checkpoint)
    with torch.no_grad():
        for name, dead in columns.items():
            loaded.model.get_submodule(name).weight[:, sorted(dead)] = 0
    write_checkpoint(output, loaded.model, loaded.metadata)
    return output


def inputs(count: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return read_checkpoint(path).model.eval()(x)


RESEARCH = {"ranking": RESEARCH_RANKING, "coverage": 0}  # what these tests' label sets exercise


def prune(
    checkpoint: Path,
    clusters: Path,
    output: Path,
    layers: list[str] | None = None,
    *,
    method: str = "units",
    classifier: str = "model",
    finetune_epochs: int = 0,
    **removal,
):
    config = PruneConfig(
        method=method,
        connections=ConnectionConfig(classifier=classifier),
        removal=RemovalConfig(**{**RESEARCH, "min_channels": 1, **removal}),
        finetune=FinetuneConfig(epochs=finetune_epochs),
        device="cpu",
    )
    return run_prune(checkpoint, clusters, output, config, layers=layers)


def groups_of(path: Path) -> dict[str, dict]:
    """The groups a pruned checkpoint records, less the criterion that ordered them."""
    record = read_checkpoint(path).metadata["pruning"]["structured"]
    groups = record["channel_groups"]
    return {g["root"]: {k: v for k, v in g.items() if k != "criterion"} for g in groups}


# --- tiny ResNet: the residual stream is coupled ---------------------------------------------

RESNET_DEAD_STREAM = {1, 4, 6}  # of the 8 channels of layer1's residual stream
RESNET_DEAD_INNER = {0, 5, 7}  # of the 8 inner channels of layer1.1 (same share)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("structured-resnet")
    dense = untrained(TINY_RESNET, folder)
    stream_readers = ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"]
    columns = {name: RESNET_DEAD_STREAM for name in stream_readers}
    columns["layer1.1.conv2"] = RESNET_DEAD_INNER
    masked_path = masked(dense, columns, folder / "masked.safetensors")
    taps = {
        "layer1.0": (8, RESNET_DEAD_STREAM),  # both block outputs read the same stream
        "layer1.1": (8, RESNET_DEAD_STREAM),
        "layer1.1.relu1": (8, RESNET_DEAD_INNER),
    }
    clusters = clusters_file(folder / "matrices.h5", taps)
    pruned = folder / "pruned.safetensors"
    prune(masked_path, clusters, pruned, remove_fraction=3 / 8)
    return {"dense": dense, "masked": masked_path, "clusters": clusters, "pruned": pruned}


def test_resnet_stream_channels_are_removed_together_from_every_coupled_module(resnet):
    model = read_checkpoint(resnet["pruned"]).model
    stream = 8 - len(RESNET_DEAD_STREAM)
    assert model.conv1.out_channels == model.bn1.num_features == stream
    for block in model.layer1:
        assert block.conv1.in_channels == block.conv2.out_channels == block.bn2.num_features
        assert block.conv2.out_channels == stream
    assert model.layer2[0].conv1.in_channels == model.layer2[0].shortcut[0].in_channels == stream
    assert model.layer1[1].conv1.out_channels == 8 - 3  # 3/8 of the inner channels
    assert model.layer1[0].conv1.out_channels == 8  # no tap reads it: left dense
    groups = groups_of(resnet["pruned"])
    assert sorted(groups["conv1"]["taps"]) == ["layer1.0", "layer1.1"]
    kept = [c for c in range(8) if c not in RESNET_DEAD_STREAM]
    assert groups["conv1"]["kept"] == kept


def test_pruned_resnet_equals_the_masked_dense_model(resnet):
    x = inputs()
    torch.testing.assert_close(logits(resnet["pruned"], x), logits(resnet["masked"], x))


def test_pruned_resnet_reloads_in_a_fresh_process(resnet, tmp_path):
    x = inputs(3, seed=2)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch\n"
        "from snptool.core.checkpoint import read_checkpoint\n"
        "from snptool.core.trust import trust_code\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad(), trust_code(sys.argv[4]):\n"
        "    y = read_checkpoint(sys.argv[1]).model(x)\n"
        "torch.save(y, sys.argv[3])\n"
    )
    root = str(REPO_ROOT)
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(resnet["pruned"]),
            str(tmp_path / "x.pt"),
            str(tmp_path / "y.pt"),
            TINY_RESNET,
        ],
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": root, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    torch.testing.assert_close(
        torch.load(tmp_path / "y.pt", weights_only=True), logits(resnet["pruned"], x)
    )


def test_pruned_resnet_exports_smaller_with_parity_in_onnxruntime(resnet, tmp_path):
    dense = run_export(resnet["dense"], tmp_path / "dense.onnx")
    result = run_export(resnet["pruned"], tmp_path / "pruned.onnx")
    assert result.max_abs_diff <= 1e-4
    assert result.params < dense.params and result.macs < dense.macs
    x = inputs(3, seed=4)
    session = onnxruntime.InferenceSession(
        str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"]
    )
    (onnx_logits,) = session.run(["logits"], {"input": x.numpy()})
    assert np.abs(onnx_logits - logits(resnet["pruned"], x).numpy()).max() <= 1e-4


@pytest.mark.parametrize(
    "method", ["units", "magnitude-channels", "taylor", "lamp", "group-norm", "random-channels"]
)
def test_every_criterion_reaches_the_mac_target_on_the_same_groups(resnet, tmp_path, method):
    output = tmp_path / f"{method}.safetensors"
    result = prune(resnet["dense"], resnet["clusters"], output, method=method, target_macs=0.5)
    size = result.size
    assert size["macs"] <= 0.5 * size["dense_macs"] < size["dense_macs"]
    assert sorted(groups_of(output)) == ["conv1", "layer1.1.conv1"]
    pruning = read_checkpoint(output).metadata["pruning"]
    assert pruning["method"] == method
    assert pruning["structured"]["ranking"] == (
        ["labels", "maximum", "noise"] if method == "units" else None
    )


def test_magnitude_ranking_key_orders_channels_as_torch_prunings_l1(resnet, tmp_path):
    units, l1 = tmp_path / "units.safetensors", tmp_path / "l1.safetensors"
    prune(resnet["dense"], resnet["clusters"], units, ranking=("magnitude",), remove_fraction=0.5)
    prune(resnet["dense"], resnet["clusters"], l1, method="magnitude-channels", remove_fraction=0.5)
    assert groups_of(units) == groups_of(l1)
    record = read_checkpoint(units).metadata["pruning"]["structured"]
    assert record["ranking"] == ["magnitude"]


def test_units_ranks_by_l1_with_two_channels_per_label_by_default(resnet, tmp_path):
    # the best ranking of the criteria screen. Every live unit here is its label's only
    # channel, so the coverage keeps them after the channels serving no label; L1 alone mixes
    units, l1 = tmp_path / "units.safetensors", tmp_path / "l1.safetensors"
    removal = RemovalConfig(remove_fraction=0.5, min_channels=1)  # the default ranking
    config = PruneConfig(method="units", removal=removal, device="cpu")
    run_prune(resnet["dense"], resnet["clusters"], units, config)
    prune(resnet["dense"], resnet["clusters"], l1, ranking=("magnitude",), remove_fraction=0.5)
    record = read_checkpoint(units).metadata["pruning"]["structured"]
    assert (record["ranking"], record["coverage"]) == (["magnitude"], 2)
    for root, dead in (("conv1", RESNET_DEAD_STREAM), ("layer1.1.conv1", RESNET_DEAD_INNER)):
        removed = set(range(8)) - set(groups_of(units)[root]["kept"])
        assert dead < removed and len(removed) == 4
    l1_removed = set(range(8)) - set(groups_of(l1)["conv1"]["kept"])
    assert not RESNET_DEAD_STREAM.issubset(l1_removed)


@pytest.mark.parametrize("ranking", [("margin",), ("margin", "magnitude")])
def test_margin_rankings_remove_the_dead_units_first_and_keep_the_logits(resnet, tmp_path, ranking):
    output = tmp_path / "margin.safetensors"
    prune(
        resnet["masked"],
        resnet["clusters"],
        output,
        ranking=ranking,
        remove_fraction=3 / 8,
        coverage=1,
    )
    x = inputs()
    assert torch.allclose(logits(output, x), logits(resnet["masked"], x), atol=1e-5)
    record = read_checkpoint(output).metadata["pruning"]
    assert record["structured"]["ranking"] == list(ranking)
    assert record["structured"]["coverage"] == 1
    assert record["config"]["removal"]["coverage"] == 1


def test_random_channels_follow_the_seed(resnet, tmp_path):
    def kept(seed: int, name: str) -> dict:
        output = tmp_path / name
        config = PruneConfig(
            method="random-channels",
            removal=RemovalConfig(min_channels=1, remove_fraction=0.5),
            finetune=FinetuneConfig(epochs=0),
            seed=seed,
            device="cpu",
        )
        run_prune(resnet["dense"], resnet["clusters"], output, config)
        return groups_of(output)

    assert kept(1, "a.safetensors") == kept(1, "b.safetensors")
    assert kept(1, "a.safetensors") != kept(2, "c.safetensors")


def test_finetuning_trains_every_module_of_the_pruned_model(resnet, tmp_path):
    plain, tuned = tmp_path / "plain.safetensors", tmp_path / "tuned.safetensors"
    prune(resnet["dense"], resnet["clusters"], plain, target_macs=0.6)
    result = prune(resnet["dense"], resnet["clusters"], tuned, target_macs=0.6, finetune_epochs=1)
    (row,) = result.history
    assert row["epoch"] == 1 and row["loss"] > 0 and "test_accuracy" not in row
    before, after = read_checkpoint(plain).model, read_checkpoint(tuned).model
    assert tensor_shapes(before) == tensor_shapes(after)
    for name in ("conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv2.weight", "linear.bias"):
        assert not torch.equal(before.state_dict()[name], after.state_dict()[name]), name
    assert 0.0 <= result.accuracy_after <= 1.0


def test_every_finetuning_epoch_is_tested_on_request(resnet, tmp_path):
    config = PruneConfig(
        method="magnitude-channels",
        removal=RemovalConfig(min_channels=1, target_macs=0.6),
        finetune=FinetuneConfig(epochs=2, lr_decay=0.5, learning_rate=0.01, test_every_epoch=True),
        device="cpu",
    )
    output = tmp_path / "tested.safetensors"
    result = run_prune(resnet["dense"], resnet["clusters"], output, config)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert [row["learning_rate"] for row in result.history] == [0.01, 0.005]
    assert result.history[-1]["test_accuracy"] == result.accuracy_after
    recorded = read_checkpoint(output).metadata["pruning"]["finetune_history"]
    assert recorded == result.history


def test_probe_classifier_is_refused(resnet, tmp_path):
    with pytest.raises(UsageError, match="classifier"):
        prune(resnet["dense"], resnet["clusters"], tmp_path / "x.safetensors", classifier="probe")


# --- option-A CIFAR ResNet: the zero-padding shortcut ----------------------------------------


def option_a_resnet(folder: Path) -> tuple[Path, Path]:
    """ResNet-20 with dead stream channels: stage 1's channel 3 and stage 2's channels 0, 1,
    stage 3's 0-3 (outside the zero-padding shortcut's reach: no shortcut feeds them) are zero
    at every producer (the stem's and every block's last BN), so removing them is exact."""
    dense = untrained(f"{CIFAR_RESNET}:resnet20", folder)
    loaded = read_checkpoint(dense)
    model = loaded.model
    with torch.no_grad():
        for stage, dead in (
            (model.layer1, [3]),
            (model.layer2, [0, 1]),
            (model.layer3, [0, 1, 2, 3]),
        ):
            norms = [block.bn2 for block in stage] + ([model.bn1] if stage is model.layer1 else [])
            for norm in norms:
                norm.weight[dead] = 0
                norm.bias[dead] = 0
    masked_path = folder / "masked.safetensors"
    write_checkpoint(masked_path, model, loaded.metadata)
    return masked_path, clusters_file(
        folder / "matrices.h5",
        {"layer1.2": (16, {3}), "layer2.2": (32, {0, 1}), "layer3.2": (64, {0, 1, 2, 3})},
    )


def test_option_a_streams_are_pruned_through_the_zero_padding_shortcut(tmp_path):
    masked_path, clusters = option_a_resnet(tmp_path)
    output = tmp_path / "streams.safetensors"
    prune(masked_path, clusters, output, remove_fraction=1 / 16)
    loaded = read_checkpoint(output)  # rebuilt from the record: resized modules, channel maps
    assert loaded.metadata["pruning"]["structured"]["left_dense"] == {}
    model = loaded.model
    assert model.conv1.out_channels == model.layer1[2].conv2.out_channels == 15
    assert model.layer2[0].conv1.in_channels == 15 and model.layer2[0].conv2.out_channels == 30
    assert model.layer3[0].conv1.in_channels == 30 and model.linear.in_features == 60
    maps = loaded.metadata["arch"]["channel_maps"]
    assert maps["layer2.0.shortcut"]["kept_in"] == [c for c in range(16) if c != 3]
    assert maps["layer2.0.shortcut"]["kept_out"] == list(range(2, 32))
    assert maps["layer3.0.shortcut"]["kept_out"] == list(range(4, 64))
    x = inputs()
    torch.testing.assert_close(logits(output, x), logits(masked_path, x))
    result = run_export(output, tmp_path / "streams.onnx")
    assert result.max_abs_diff <= 1e-4
    session = onnxruntime.InferenceSession(
        str(tmp_path / "streams.onnx"), providers=["CPUExecutionProvider"]
    )
    (onnx_logits,) = session.run(["logits"], {"input": x.numpy()})
    assert np.abs(onnx_logits - logits(masked_path, x).numpy()).max() <= 1e-4


@pytest.mark.long
def test_option_a_streams_prune_again_and_a_wrong_channel_map_is_refused(tmp_path):
    masked_path, clusters = option_a_resnet(tmp_path)
    once, twice = tmp_path / "once.safetensors", tmp_path / "twice.safetensors"
    prune(masked_path, clusters, once, remove_fraction=1 / 16)
    x = inputs()
    prune(once, clusters, twice, target_macs=0.5)  # pruning a pruned model composes the maps
    loaded = read_checkpoint(twice)
    assert logits(twice, x).shape == (5, CLASSES)
    assert len(loaded.metadata["arch"]["channel_maps"]["layer2.0.shortcut"]["kept_in"]) < 15
    metadata = json.loads(json.dumps(loaded.metadata))
    metadata["arch"]["channel_maps"] = {
        "layer9.shortcut": metadata["arch"]["channel_maps"]["layer2.0.shortcut"]
    }
    broken = tmp_path / "broken.safetensors"
    write_checkpoint(broken, loaded.model, metadata)
    with pytest.raises(ArchitectureError, match="channel maps do not fit"):
        read_checkpoint(broken)


# --- EfficientNet (MBConv) and CCT feed-forward --------------------------------------------


def test_efficientnet_hidden_channels_removed_equal_the_masked_model(
    untrained_checkpoint, tmp_path
):
    dense = untrained_checkpoint("tiny_efficientnet")
    model = read_checkpoint(dense).model
    hidden = model.get_submodule("features.3.0.block.0.0").out_channels
    dead = {0, 3, hidden - 1}
    block = "features.3.0.block"
    masked_path = masked(
        dense, {f"{block}.3.0": dead, f"{block}.2.fc1": dead}, tmp_path / "masked.safetensors"
    )
    clusters = clusters_file(tmp_path / "matrices.h5", {f"{block}.0": (hidden, dead)})
    output = tmp_path / "pruned.safetensors"
    prune(masked_path, clusters, output, remove_fraction=len(dead) / hidden)
    pruned = read_checkpoint(output).model
    for name in (f"{block}.0.0", f"{block}.1.0", f"{block}.2.fc2"):
        assert pruned.get_submodule(name).out_channels == hidden - len(dead)
    assert pruned.get_submodule(f"{block}.1.0").groups == hidden - len(dead)  # still depthwise
    assert pruned.get_submodule(f"{block}.3.0").in_channels == hidden - len(dead)
    x = inputs()
    torch.testing.assert_close(logits(output, x), logits(masked_path, x))
    assert run_export(output, tmp_path / "pruned.onnx").max_abs_diff <= 1e-4


def test_cct_feedforward_nodes_removed_equal_the_masked_model(untrained_checkpoint, tmp_path):
    dense = untrained_checkpoint("tiny_cct")
    block = "classifier.blocks.0"
    nodes = read_checkpoint(dense).model.get_submodule(f"{block}.linear1").out_features
    dead = {1, 2, nodes - 3}
    masked_path = masked(dense, {f"{block}.linear2": dead}, tmp_path / "masked.safetensors")
    clusters = clusters_file(tmp_path / "matrices.h5", {f"{block}.activation": (nodes, dead)})
    output = tmp_path / "pruned.safetensors"
    prune(masked_path, clusters, output, remove_fraction=len(dead) / nodes)
    pruned = read_checkpoint(output).model
    assert pruned.get_submodule(f"{block}.linear1").out_features == nodes - len(dead)
    assert pruned.get_submodule(f"{block}.linear2").in_features == nodes - len(dead)
    x = inputs()
    torch.testing.assert_close(logits(output, x), logits(masked_path, x))
    assert run_export(output, tmp_path / "pruned.onnx").max_abs_diff <= 1e-4
    # the token stream reaches the positional embedding (a bare parameter): refused
    stream = clusters_file(tmp_path / "stream.h5", {f"{block}.linear2": (16, set())})
    with pytest.raises(LayerError, match="cannot be removed"):
        prune(dense, stream, tmp_path / "stream.safetensors")


def test_round_to_keeps_multiples_and_at_least_one():
    assert [removed_count(64, 0.516, r) for r in (1, 8)] == [33, 32]
    assert removed_count(16, 0.9, 8) == 8  # keeps round_to channels
    assert removed_count(4, 0.9, 8) == 0  # a group narrower than round_to stays
    assert removed_count(8, 1.0) == 7  # one channel always stays


@pytest.mark.parametrize("target, stepped", [(0.9, ["layer1.1.conv1"]), (0.6, [])])
def test_deepest_groups_step_down_where_the_uniform_share_overshoots(
    resnet, tmp_path, target, stepped
):
    # At widths of 4 both 8-channel groups halve together (0.51 of the MACs); a target of 0.9
    # is met by halving only the deeper group, 0.6 needs both (the uniform share).
    sizes = {}
    for allocation in ("uniform", "deepest-first"):
        output = tmp_path / f"{allocation}.safetensors"
        result = prune(
            resnet["dense"],
            resnet["clusters"],
            output,
            target_macs=target,
            round_to=4,
            allocation=allocation,
        )
        sizes[allocation] = result.size["macs"] / result.size["dense_macs"]
        record = read_checkpoint(output).metadata["pruning"]["structured"]
        assert record["allocation"] == allocation
        kept = {root: len(group["kept"]) for root, group in groups_of(output).items()}
    assert record["stepped_down"] == stepped
    assert kept == {"conv1": 4 if not stepped else 8, "layer1.1.conv1": 4}
    assert sizes["uniform"] <= sizes["deepest-first"] <= target
    assert (sizes["uniform"] < sizes["deepest-first"]) == bool(stepped)


def margin_clusters_file(path: Path, taps: dict[str, list[float]]) -> Path:
    """A clustered matrix file whose unit u sends `margins[u]` to the correct label of every
    label and nothing to the wrong ones: its `margin` is exactly margins[u]."""
    with h5py.File(path, "w") as handle:
        create_matrix_file(handle, [str(i) for i in range(CLASSES)], {"split": "train"})
        for order, (tap, margins) in enumerate(taps.items()):
            attrs = {"layer": tap, "unit": "channel", "units": len(margins), "positions": 1}
            dataset = create_layer(handle, tap, len(margins), CLASSES, {**attrs, "accuracy": 0.5})
            dataset[...] = np.asarray(margins, dtype=np.float32)[:, None, None] * np.eye(CLASSES)
            dataset.parent.attrs["order"] = order
    run_clusters(path, ClustersConfig(threshold=0.3))
    return path


@pytest.fixture(scope="module")
def uneven_margins(tmp_path_factory) -> Path:
    """The tiny ResNet's stream carried by channel 0 alone, its inner channels all alike."""
    stream = [8.0] + [0.1] * 7
    taps = {"layer1.0": stream, "layer1.1": stream, "layer1.1.relu1": [1.0] * 8}
    return margin_clusters_file(tmp_path_factory.mktemp("margins") / "m.h5", taps)


def kept_widths(path: Path) -> dict[str, int]:
    return {root: len(group["kept"]) for root, group in groups_of(path).items()}


def test_margin_mass_prunes_the_group_whose_margin_few_channels_carry(
    resnet, uneven_margins, tmp_path
):
    widths, records = {}, {}
    for allocation in ("uniform", "margin-mass"):
        output = tmp_path / f"{allocation}.safetensors"
        result = prune(
            resnet["dense"],
            uneven_margins,
            output,
            method="magnitude-channels",
            target_macs=0.7,
            allocation=allocation,
        )
        assert result.size["macs"] <= 0.7 * result.size["dense_macs"]
        widths[allocation] = kept_widths(output)
        records[allocation] = read_checkpoint(output).metadata["pruning"]["structured"]
    assert widths["uniform"]["conv1"] == widths["uniform"]["layer1.1.conv1"]
    assert widths["margin-mass"]["conv1"] < widths["margin-mass"]["layer1.1.conv1"]
    record = records["margin-mass"]
    assert record["allocation"] == "margin-mass" and 0 < record["allocation_parameter"] < 1
    assert record["fraction"] is None and 0 < record["removed_share"] < 1


def test_global_allocation_removes_the_lowest_normalised_scores_first(
    resnet, uneven_margins, tmp_path
):
    # normalised margins: stream channel 0 ≈ 7.4, the other seven ≈ 0.09; inner channels 1.0
    output = tmp_path / "global.safetensors"
    result = prune(
        resnet["dense"],
        uneven_margins,
        output,
        ranking=("margin",),
        target_macs=0.8,
        allocation="global",
    )
    assert result.size["macs"] <= 0.8 * result.size["dense_macs"]
    widths = kept_widths(output)
    assert widths["layer1.1.conv1"] == 8 and widths["conv1"] < 8
    assert 0 in groups_of(output)["conv1"]["kept"]  # the stream's one strong channel
    record = read_checkpoint(output).metadata["pruning"]["structured"]
    assert record["allocation"] == "global" and 0.09 < record["allocation_parameter"] <= 1.0


def test_margin_mass_needs_matrices_on_every_pruned_group(resnet, tmp_path):
    with pytest.raises(UsageError, match="margin-mass"):
        prune(
            resnet["dense"],
            resnet["clusters"],
            tmp_path / "out.safetensors",
            ["layer1.1.relu1", "layer1.1"],
            target_macs=0.7,
            allocation="margin-mass",
            fill="magnitude-channels",
        )


def test_group_norm_sparsity_training_shrinks_the_weights_it_ranks(resnet, tmp_path):
    norms = {}
    for reg in (0.0, 0.5):
        output = tmp_path / f"reg{reg}.safetensors"
        result = prune(
            resnet["dense"],
            resnet["clusters"],
            output,
            method="group-norm",
            target_macs=0.6,
            sparsity_epochs=1,
            sparsity_reg=reg,
        )
        assert result.size["macs"] <= 0.6 * result.size["dense_macs"]
        pruning = read_checkpoint(output).metadata["pruning"]
        assert [row["epoch"] for row in pruning["sparsity_history"]] == [1]
        assert pruning["config"]["removal"]["sparsity_reg"] == reg
        weights = read_checkpoint(output).model.state_dict()
        norms[reg] = sum(float(w.square().sum()) for n, w in weights.items() if "conv" in n)
    assert norms[0.5] < 0.9 * norms[0.0]


def test_sparsity_training_serves_group_norm_only(resnet, tmp_path):
    with pytest.raises(UsageError, match="--sparsity-epochs"):
        prune(
            resnet["dense"],
            resnet["clusters"],
            tmp_path / "out.safetensors",
            method="magnitude-channels",
            target_macs=0.6,
            sparsity_epochs=1,
        )


def test_afcc_grouped_groups_the_inner_conv_of_a_residual_block(tmp_path):
    # the block's second conv reads the inner channels and writes the norm before the addition:
    # grouped by label, its outputs put back in order for the addition
    from snptool.pruning.compact import compact_model

    dense = untrained(TINY_RESNET, tmp_path)
    layers = ["layer1.1.relu1", "layer1.1.bn2"]
    clusters = clusters_file(tmp_path / "m.h5", {tap: (8, set()) for tap in layers})
    output = tmp_path / "grouped.safetensors"
    config = PruneConfig(
        method="afcc-grouped",
        connections=ConnectionConfig(groups=2, label_grouping="contiguous"),
        finetune=FinetuneConfig(epochs=0),
        device="cpu",
    )
    run_prune(dense, clusters, output, config, layers=layers)
    checkpoint = read_checkpoint(output)
    compact, report = compact_model(checkpoint)
    assert report.grouped == {"layer1.1.conv2": 2}
    assert compact.get_submodule("layer1.1.conv2").groups == 2
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(compact(x), checkpoint.model.eval()(x), rtol=1e-5, atol=1e-5)
    result = run_export(output, tmp_path / "grouped.onnx")
    assert result.max_abs_diff <= 1e-4 and result.macs < result.dense_macs


def test_bad_settings_are_refused():
    with pytest.raises(UsageError, match="target MACs"):
        PruneConfig(method="units", removal=RemovalConfig(target_macs=1.5))
    with pytest.raises(UsageError, match="ranking"):
        PruneConfig(method="units", removal=RemovalConfig(ranking=("labels", "loudness")))
    with pytest.raises(UsageError, match="round to"):
        PruneConfig(method="units", removal=RemovalConfig(round_to=0))
    with pytest.raises(UsageError, match="allocation"):
        PruneConfig(method="units", removal=RemovalConfig(allocation="widest"))
    with pytest.raises(UsageError, match="coverage"):
        PruneConfig(method="units", removal=RemovalConfig(coverage=-1))


@pytest.mark.long
def test_cli_prunes_to_the_mac_target_and_refuses_bad_input_in_one_line(resnet, tmp_path):
    root = str(REPO_ROOT)
    environment = {"PYTHONPATH": root, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "snptool", "--quiet", "prune", str(resnet["dense"])]
    command += ["--arch", TINY_RESNET]  # the checkpoint's file factory, trusted by name
    command += ["--clusters", str(resnet["clusters"]), "--method", "magnitude-channels"]
    command += ["--min-channels", "1"]
    output = tmp_path / "cli.safetensors"
    done = subprocess.run(
        [*command, "--target-macs", "0.5", "--device", "cpu", "-o", str(output), "--json"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    size = json.loads(done.stdout)["size"]
    assert size["macs"] <= 0.5 * size["dense_macs"]
    bad = subprocess.run(
        [*command, "--target-macs", "1.5", "-o", str(tmp_path / "bad.safetensors")],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "target MACs" in bad.stderr
    no_clusters = [sys.executable, "-m", "snptool", "prune", str(resnet["dense"]), "--trust-code"]
    no_clusters += ["--method"]
    bad = subprocess.run(
        [*no_clusters, "units", "-o", str(tmp_path / "bad.safetensors")],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert bad.returncode == 2 and not (tmp_path / "bad.safetensors").exists()
    assert bad.stderr.strip().count("\n") == 0 and "give --clusters" in bad.stderr


def test_weight_criteria_need_no_clusters_when_the_taps_are_listed(resnet, tmp_path):
    taps = ["layer1.0", "layer1.1", "layer1.1.relu1"]
    with_clusters, without = tmp_path / "with.safetensors", tmp_path / "without.safetensors"
    config = {"method": "magnitude-channels", "remove_fraction": 0.5}
    prune(resnet["dense"], resnet["clusters"], with_clusters, layers=taps, **config)
    prune(resnet["dense"], None, without, layers=taps, **config)
    assert groups_of(without) == groups_of(with_clusters)
    provenance = read_checkpoint(without).metadata["provenance"]["inputs"]
    assert "clusters" not in provenance
    every = tmp_path / "every.safetensors"
    prune(resnet["dense"], None, every, **config)  # no taps: every prunable group
    assert set(groups_of(without)) < set(groups_of(every))

"""prune, compact and export on the pointwise convs of EfficientNet's inverted-residual blocks.

An MBConv computes project(SE(depthwise(expand(x)))), plus x when the shapes match. AFCC prunes
its two 1×1 convs: the expand conv (block input → `block.0`) and the projection conv (SE output
`block.2` → `block.3`). A hidden channel left without any projection connection also loses its
SE squeeze input, so compaction cuts it out of the expand conv, the depthwise conv, both
BatchNorms, the SE's two convs and the projection. Channels that a residual addition reads stay.

tiny_efficientnet (untrained, BatchNorm statistics moved) with hand-made matrices clustered by
`run_clusters`, so the label sets, and with them the dead units, are known in advance. Stage 2
has no residual and feeds only stage 3's expand conv; stages 1, 5 and 7 add their input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import onnxruntime
import pytest
import torch

from snptool.analysis.clusters import run_clusters
from snptool.config import ClustersConfig, PruneConfig
from snptool.core.checkpoint import MASK_PREFIX, masks_of, read_checkpoint, write_checkpoint
from snptool.core.matrix_file import (
    create_layer,
    create_matrix_file,
    layer_group,
    open_matrix_file,
    read_layer_clusters,
)
from snptool.deploy.export import run_export
from snptool.errors import LayerError
from snptool.pruning.compact import compact_model
from snptool.pruning.connections import Connection, connections
from snptool.pruning.finetune import apply_masks
from snptool.pruning.masks import squeeze_masks
from snptool.pruning.prune import run_prune
from tests.conftest import invoke

CLASSES = 10
EXPAND = ["features.2", "features.3.0.block.0"]  # stage 3's expand conv, 8 → 16
PROJECT = ["features.5.0.block.2", "features.5.0.block.3"]  # stage 5's projection, 32 → 16
STAGE1 = ["features.1.0.block.1", "features.1.0.block.2"]  # expand ratio 1: no expand conv
DEAD_HIDDEN = {0, 7, 9}  # hidden units of stage 5 that serve no label
DEAD_INPUTS = {1, 5}  # units of features.2 that serve no label


def unit_sets(units: int, dead: set[int] = frozenset()) -> list[set[int]]:
    """Two labels per unit, none for the `dead` units."""
    return [set() if u in dead else {u % CLASSES, (3 * u + 1) % CLASSES} for u in range(units)]


LABEL_SETS = {
    EXPAND[0]: unit_sets(8, DEAD_INPUTS),
    EXPAND[1]: unit_sets(16),
    PROJECT[0]: unit_sets(32, DEAD_HIDDEN),
    PROJECT[1]: unit_sets(16),
    STAGE1[0]: unit_sets(8, {2}),
    STAGE1[1]: unit_sets(8),
}


def matrices(sets: list[set[int]]) -> np.ndarray:
    """A unit with labels S gets the clique S × S; one without labels a negative matrix."""
    result = np.full((len(sets), CLASSES, CLASSES), -1.0, dtype=np.float32)
    for unit, labels in enumerate(sets):
        if labels:
            index = sorted(labels)
            result[unit] = 0.0
            result[unit][np.ix_(index, index)] = 1.0
    return result


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint: Callable[..., Path]) -> Path:
    return untrained_checkpoint("tiny_efficientnet")


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("effnet") / "matrices.h5"
    with h5py.File(path, "w") as handle:
        create_matrix_file(handle, [str(i) for i in range(CLASSES)], {"split": "train"})
        for order, (tap, sets) in enumerate(LABEL_SETS.items()):
            attrs = {"layer": tap, "unit": "channel", "units": len(sets), "positions": 1}
            dataset = create_layer(handle, tap, len(sets), CLASSES, {**attrs, "accuracy": 0.5})
            dataset[...] = matrices(sets)
            dataset.parent.attrs["order"] = order
    run_clusters(path, ClustersConfig(threshold=0.3))
    return path


@pytest.fixture(scope="module")
def pruned(checkpoint: Path, clusters: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("effnet-pruned") / "pruned.safetensors"
    result = run_prune(
        checkpoint, clusters, output, PruneConfig(device="cpu"), layers=[EXPAND, PROJECT]
    )
    return result, output


def afcc_rule(sources: list[set[int]], targets: list[set[int]]) -> torch.Tensor:
    """[targets, sources]: keep the kernel slice a → b iff Λ(a) ∩ Λ(b) ≠ ∅ (METHODS.md §8)."""
    return torch.tensor([[bool(a & b) for a in sources] for b in targets], dtype=torch.bool)


def inputs(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(compact: torch.nn.Module, reference: torch.nn.Module) -> None:
    x = inputs(6, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), reference.eval()(x), rtol=1e-5, atol=1e-5)


def test_the_pointwise_convs_of_an_mbconv_are_connections(checkpoint: Path):
    loaded = read_checkpoint(checkpoint)
    model = loaded.model
    assert connections(model, loaded, EXPAND) == [Connection("features.3.0.block.0.0", *EXPAND, 1)]
    assert connections(model, loaded, PROJECT) == [
        Connection("features.5.0.block.3.0", *PROJECT, 1)
    ]
    # without a residual addition, the stage output is the projection's own output
    stage3 = ["features.3.0.block.2", "features.3"]
    assert connections(model, loaded, stage3) == [Connection("features.3.0.block.3.0", *stage3, 1)]


def test_afcc_masks_the_pointwise_convs_and_the_squeeze_of_dead_hidden_units(
    checkpoint: Path, clusters: Path, pruned
):
    result, output = pruned
    with open_matrix_file(clusters) as handle:
        sets = {t: read_layer_clusters(layer_group(handle, t)).label_sets() for t in LABEL_SETS}
    assert sets == LABEL_SETS  # the clusters recover the hand-made label sets
    masks = masks_of(read_checkpoint(output))
    assert set(masks) == {
        "features.3.0.block.0.0.weight",
        "features.5.0.block.3.0.weight",
        "features.5.0.block.2.fc1.weight",
    }
    for layers in (EXPAND, PROJECT):
        module = connections(read_checkpoint(checkpoint).model, read_checkpoint(checkpoint), layers)
        mask = masks[module[0].module + ".weight"]
        expected = afcc_rule(LABEL_SETS[layers[0]], LABEL_SETS[layers[1]])
        assert torch.equal(mask, expected[:, :, None, None].expand_as(mask))
    squeeze = masks["features.5.0.block.2.fc1.weight"]
    assert squeeze.shape == (4, 32, 1, 1)
    dead = {u for u in range(32) if not squeeze[:, u].any()}
    assert dead == DEAD_HIDDEN and squeeze[:, sorted(set(range(32)) - dead)].all()
    # only the masked parameters changed, and only where masked
    before = read_checkpoint(checkpoint).model.state_dict()
    after = read_checkpoint(output).model.state_dict()
    for name, tensor in before.items():
        if name in masks:
            assert torch.equal(after[name][masks[name]], tensor[masks[name]])
            assert not after[name][~masks[name]].any()
        else:
            assert torch.equal(after[name], tensor), name
    reported = {(layer.layer, layer.module) for layer in result.layers}
    assert reported == {
        ("features.3.0.block.0", "features.3.0.block.0.0"),
        ("features.5.0.block.3", "features.5.0.block.3.0"),
        ("features.5.0.block.2", "features.5.0.block.2.fc1"),
    }
    assert all(0 < layer.dilution < 1 for layer in result.layers)


def test_compaction_cuts_dead_hidden_units_out_of_the_whole_block(pruned):
    _, output = pruned
    loaded = read_checkpoint(output)
    compact, report = compact_model(loaded)
    hidden = 32 - len(DEAD_HIDDEN)
    assert report.removed == {"features.5.0.block.2": 3, "features.2": 2}
    block = compact.features[5][0].block
    assert block[0][0].out_channels == block[0][1].num_features == hidden
    assert block[1][0].in_channels == block[1][0].out_channels == block[1][0].groups == hidden
    assert block[1][1].num_features == hidden
    assert block[2].fc1.in_channels == block[2].fc2.out_channels == hidden
    assert block[2].fc2.bias.shape == (hidden,)
    assert block[3][0].in_channels == hidden
    # the residual stream of stage 5 stays 16 wide: its input and its projection's output
    assert block[0][0].in_channels == block[3][0].out_channels == 16
    # features.2 is read by stage 3's expand conv alone: its unused units go
    assert compact.features[2][0].block[3][0].out_channels == 8 - len(DEAD_INPUTS)
    assert compact.features[3][0].block[0][0].in_channels == 8 - len(DEAD_INPUTS)
    assert_same_outputs(compact, loaded.model)


def test_export_of_the_pruned_efficientnet_is_smaller_with_parity(pruned, tmp_path: Path):
    _, output = pruned
    onnx_path = tmp_path / "pruned.onnx"
    result = run_export(output, onnx_path)
    assert result.max_abs_diff <= 1e-4 and result.argmax_agreement == 1.0
    assert result.params < result.dense_params and result.macs < result.dense_macs
    x = inputs(3, seed=5)  # a batch size the exporter never saw
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        expected = read_checkpoint(output).model.eval()(x).numpy()
    assert np.abs(logits - expected).max() <= 1e-4


def hand_pruned(checkpoint: Path, layers: list[str], columns: list[int], output: Path) -> Path:
    """The first connection of `layers` with its input `columns` cut, recorded as run_prune does."""
    loaded = read_checkpoint(checkpoint)
    model = loaded.model
    chain = connections(model, loaded, layers)
    weight = model.get_submodule(chain[0].module).weight
    mask = torch.ones_like(weight, dtype=torch.bool)
    mask[:, columns] = False
    masks = {chain[0].module + ".weight": mask}
    apply_masks(model, masks)
    metadata = dict(loaded.metadata)
    metadata["pruning"] = {"method": "hand", "layers": layers, "connections": [vars(chain[0])]}
    write_checkpoint(
        output, model, metadata, {MASK_PREFIX + k: v.to(torch.uint8) for k, v in masks.items()}
    )
    return output


def test_channels_a_residual_addition_reads_stay(checkpoint: Path, tmp_path: Path):
    # features.4 (no residual) feeds stage 5's expand conv and stage 5's residual addition
    layers = ["features.4", "features.5.0.block.0"]
    path = hand_pruned(checkpoint, layers, [3, 7], tmp_path / "expand5.safetensors")
    loaded = read_checkpoint(path)
    compact, report = compact_model(loaded)
    assert compact.features[4][0].block[3][0].out_channels == 16
    assert compact.features[5][0].block[0][0].in_channels == 16
    assert report.removed == {}
    assert_same_outputs(compact, loaded.model)


def test_a_block_without_expand_conv_keeps_its_hidden_units(
    checkpoint: Path, clusters: Path, tmp_path: Path
):
    output = tmp_path / "stage1.safetensors"
    run_prune(checkpoint, clusters, output, PruneConfig(device="cpu"), layers=STAGE1)
    loaded = read_checkpoint(output)
    mask = masks_of(loaded)["features.1.0.block.2.0.weight"]
    assert set(masks_of(loaded)) == {"features.1.0.block.2.0.weight"}  # the SE is untouched
    assert not mask[:, 2].any()  # unit 2 serves no label: no projection connection
    compact, _ = compact_model(loaded)
    # its hidden units are the stem's outputs, which the residual addition reads: all stay
    assert compact.features[1][0].block[0][0].out_channels == 8
    assert compact.features[1][0].block[2][0].in_channels == 8
    assert_same_outputs(compact, loaded.model)


REFUSED = [
    (["features.3.0.block.0", "features.3.0.block.1"], "is a depthwise conv"),
    (["features.3.0.block.0", "features.3.0.block.3"], "is a depthwise conv"),
    (["features.3.0.block.1", "features.3.0.block.2"], "belongs to the squeeze-excitation"),
    (["features.5.0.block.2", "features.5"], "residual addition"),
    (["features.5.0.block.3", "features.6.0.block.0"], "residual addition"),
]


@pytest.mark.parametrize("layers, message", REFUSED)
def test_layers_afcc_cannot_prune_are_refused_in_one_line(
    checkpoint: Path, layers: list[str], message: str
):
    loaded = read_checkpoint(checkpoint)
    with pytest.raises(LayerError, match=message) as error:
        connections(loaded.model, loaded, layers)
    assert "\n" not in str(error.value)


def test_the_cli_refuses_the_residual_sum_with_exit_2(
    checkpoint: Path, tmp_path: Path, make_matrix_file: Callable[..., Path]
):
    layers = ["features.5.0.block.2", "features.5"]
    sets = {layers[0]: unit_sets(32), layers[1]: unit_sets(16)}
    names = [str(i) for i in range(10)]
    path = make_matrix_file({t: matrices(s) for t, s in sets.items()}, names, checkpoint=checkpoint)
    run_clusters(path)
    output = tmp_path / "refused.safetensors"
    result = invoke(
        "prune",
        checkpoint,
        "--clusters",
        path,
        "--layers",
        ",".join(layers),
        "--device",
        "cpu",
        "-o",
        output,
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0
    assert "features.5 is not the output of features.5.0.block.3.0 alone" in result.stderr
    assert not output.exists()


def test_efficientnet_b0_keeps_the_channels_its_residual_blocks_read(
    untrained_checkpoint: Callable[..., Path], tmp_path: Path
):
    """B0's stage 2 has two blocks: block 0's output also feeds block 1's residual addition,
    while stage 1's output feeds stage 2's first expand conv alone. (The untrained B0's logits
    hardly move when a channel is perturbed, so readers are found block by block.)"""
    dense = untrained_checkpoint("efficientnet_b0_cifar")
    loaded = read_checkpoint(dense)
    model = loaded.model
    chains = [
        ["features.1", "features.2.0.block.0"],
        ["features.2.0", "features.2.1.block.0"],
        ["features.2.1.block.2", "features.2.1.block.3"],
    ]
    chain = [c for layers in chains for c in connections(model, loaded, layers)]
    masks = {}
    for connection in chain:
        mask = torch.ones_like(model.get_submodule(connection.module).weight, dtype=torch.bool)
        mask[:, :10] = False  # the first 10 input units lose every connection
        masks[connection.module + ".weight"] = mask
    masks.update(squeeze_masks(model, chain, masks))
    apply_masks(model, masks)
    metadata = dict(loaded.metadata)
    metadata["pruning"] = {"method": "hand", "connections": [vars(c) for c in chain]}
    path = tmp_path / "b0.safetensors"
    write_checkpoint(
        path, model, metadata, {MASK_PREFIX + k: v.to(torch.uint8) for k, v in masks.items()}
    )
    pruned = read_checkpoint(path)
    compact, report = compact_model(pruned)
    assert report.removed == {"features.1": 10, "features.2.1.block.2": 10}
    assert compact.features[1][0].block[2][0].out_channels == 16 - 10
    assert compact.features[2][0].block[3][0].out_channels == 24  # read by a residual addition
    assert compact.features[2][1].block[1][0].groups == 144 - 10
    assert_same_outputs(compact, pruned.model)

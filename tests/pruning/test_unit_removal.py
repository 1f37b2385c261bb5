"""prune --method heads (whole heads and feed-forward nodes) and andc on a transformer: masks,
compaction into a smaller graph, export parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import (
    ClustersConfig,
    ConnectionConfig,
    FinetuneConfig,
    ProbeConfig,
    PruneConfig,
    RemovalConfig,
    TrainConfig,
)
from snptool.core.checkpoint import masks_of, read_checkpoint
from snptool.core.matrix_file import layer_group, open_matrix_file, read_layer_clusters
from snptool.deploy.export import run_export
from snptool.errors import LayerError, UsageError
from snptool.pruning.compact import compact_model
from snptool.pruning.prune import run_prune
from snptool.pruning.unit_removal import units_to_remove
from snptool.training.train import run_train

HEADS = [f"classifier.blocks.{i}.self_attn.heads:head" for i in (0, 1)]
NODES = [f"classifier.blocks.{i}.activation" for i in (0, 1)]
FF_OUT = [f"classifier.blocks.{i}.linear2" for i in (0, 1)]
POOLED = "classifier.pooled"


@pytest.fixture(scope="module")
def cct(tmp_path_factory) -> tuple[Path, Path]:
    """tiny_cct with 2 blocks, 4 heads and 64 tokens, trained briefly on digits, probed and
    clustered."""
    folder = tmp_path_factory.mktemp("cct")
    config = TrainConfig(epochs=3, batch_size=32, learning_rate=0.05, flip=False, device="cpu")
    kwargs = {"num_blocks": 2, "num_heads": 4, "conv_layers": 2}  # 64 tokens
    trained = run_train(
        "tiny_cct", "digits", folder / "cct.safetensors", config, arch_kwargs=kwargs
    )
    checkpoint = Path(trained.output)
    layers = ["tokenizer", *HEADS, *NODES, *FF_OUT, POOLED]
    run_probe(
        checkpoint, layers, folder / "probes.safetensors", ProbeConfig(epochs=3, device="cpu")
    )
    run_matrix(checkpoint, folder / "probes.safetensors", folder / "matrices.h5")
    run_clusters(folder / "matrices.h5", ClustersConfig(threshold=0.3))
    return checkpoint, folder / "matrices.h5"


def test_units_to_remove_takes_the_empty_then_the_fewest_labels():
    sets = [{0, 1}, set(), {2}, {3}, {4, 5, 6}, {7}]
    maximum = np.array([1.0, 0.5, 0.9, 0.2, 1.0, 0.7])
    assert units_to_remove(sets, maximum, 0.0).tolist() == [0, 1, 0, 0, 0, 0]
    # fewest labels first; among single-label units the weakest maximum first (3, then 5)
    assert units_to_remove(sets, maximum, 0.5).tolist() == [0, 1, 0, 1, 0, 1]
    assert units_to_remove([set(), set()], np.zeros(2), 0.0).sum() == 1  # one unit stays


@pytest.mark.long
def test_heads_method_removes_heads_and_nodes_and_exports_a_smaller_graph(cct, tmp_path):
    checkpoint, matrices = cct
    output = tmp_path / "heads.safetensors"
    config = PruneConfig(
        method="heads",
        removal=RemovalConfig(remove_fraction=0.5),
        finetune=FinetuneConfig(epochs=1),
        device="cpu",
    )
    result = run_prune(checkpoint, matrices, output, config, layers=[*HEADS, *NODES])
    pruned = read_checkpoint(output)
    masks = masks_of(pruned)
    record = {r["layer"]: r for r in pruned.metadata["pruning"]["heads"]}
    with open_matrix_file(matrices) as handle:
        sets = {n: read_layer_clusters(layer_group(handle, n)).label_sets() for n in HEADS}
    weights = dict(pruned.model.named_parameters())
    for block, layer in enumerate(HEADS):
        kept = record[layer]["kept"]
        assert len(kept) == 2  # half of 4 heads
        removed = [h for h in range(4) if h not in kept]
        assert max(len(sets[layer][h]) for h in removed) <= min(len(sets[layer][h]) for h in kept)
        proj = masks[f"classifier.blocks.{block}.self_attn.proj.weight"].reshape(16, 4, 4)
        assert (
            proj[:, kept].all()
            and not proj.sum(dim=(0, 2))[[h for h in range(4) if h not in kept]].any()
        )
        qkv = masks[f"classifier.blocks.{block}.self_attn.qkv.weight"].reshape(3, 4, 4, 16)
        assert qkv[:, kept].all() and qkv.sum() == 3 * 2 * 4 * 16
    for name, mask in masks.items():
        assert not weights[name][~mask].any(), f"{name} regrew removed weights"
    assert {layer.layer for layer in result.layers} == {*HEADS, *NODES}
    assert all(layer.dilution == pytest.approx(0.5) for layer in result.layers)

    compact, report = compact_model(pruned)
    assert report.heads == dict.fromkeys(HEADS, 2)
    assert report.removed == dict.fromkeys(NODES, 16)  # 32 hidden nodes, half removed
    attention = compact.get_submodule("classifier.blocks.0.self_attn")
    assert attention.num_heads == attention.heads.num_heads == 2
    assert attention.qkv.out_features == 3 * 2 * 4 and attention.proj.in_features == 8
    assert compact.get_submodule("classifier.blocks.1.linear1").out_features == 16
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), pruned.model.eval()(x), atol=1e-5, rtol=1e-5)
    exported = run_export(output, tmp_path / "heads.onnx").to_json()
    assert exported["max_abs_diff"] <= 1e-4
    assert (
        exported["params"] < exported["dense_params"] and exported["macs"] < exported["dense_macs"]
    )


@pytest.mark.long
def test_heads_method_refuses_other_units_and_the_probe_classifier(cct, tmp_path):
    checkpoint, matrices = cct
    with pytest.raises(LayerError, match="removes heads and nodes"):
        run_prune(
            checkpoint,
            matrices,
            tmp_path / "x.safetensors",
            PruneConfig(method="heads", device="cpu"),
            layers=["classifier.blocks.0.self_attn.heads:head", "tokenizer"],
        )
    with pytest.raises(UsageError, match="drop --classifier probe"):
        run_prune(
            checkpoint,
            matrices,
            tmp_path / "x.safetensors",
            PruneConfig(
                method="heads", connections=ConnectionConfig(classifier="probe"), device="cpu"
            ),
            layers=HEADS,
        )


@pytest.mark.long
def test_andc_prunes_every_feed_forward_block_and_the_output_of_a_transformer(cct, tmp_path):
    checkpoint, matrices = cct
    output = tmp_path / "andc.safetensors"
    chains = [[NODES[0], FF_OUT[0]], [NODES[1], FF_OUT[1]], [POOLED]]
    result = run_prune(
        checkpoint, matrices, output, PruneConfig(method="andc", device="cpu"), layers=chains
    )
    assert [layer.module for layer in result.layers] == [*FF_OUT, "classifier.fc"]
    pruned = read_checkpoint(output)
    masks = masks_of(pruned)
    assert set(masks) == {f"{m}.weight" for m in (*FF_OUT, "classifier.fc")}
    assert pruned.metadata["pruning"]["chains"] == chains
    with open_matrix_file(matrices) as handle:
        pooled = read_layer_clusters(layer_group(handle, POOLED)).label_sets()
    for unit, labels in enumerate(pooled):
        assert masks["classifier.fc.weight"][:, unit].nonzero().flatten().tolist() == sorted(labels)
    exported = run_export(output, tmp_path / "andc.onnx").to_json()
    assert exported["max_abs_diff"] <= 1e-4


@pytest.mark.long
def test_a_weight_layer_in_two_chains_is_refused(cct, tmp_path):
    checkpoint, matrices = cct
    with pytest.raises(LayerError, match="two chains"):
        run_prune(
            checkpoint,
            matrices,
            tmp_path / "x.safetensors",
            PruneConfig(method="andc", device="cpu"),
            layers=[[NODES[0], FF_OUT[0]], [NODES[0], FF_OUT[0]]],
        )


@pytest.mark.long
def test_connection_methods_point_head_taps_to_the_heads_method(cct, tmp_path):
    checkpoint, matrices = cct
    with pytest.raises(LayerError, match="--method heads"):
        run_prune(
            checkpoint,
            matrices,
            tmp_path / "x.safetensors",
            PruneConfig(method="afcc", device="cpu"),
            layers=HEADS[:1],
        )

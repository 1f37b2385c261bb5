"""compact: pruned units cut out of the network, with the same outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from snptool.config import ConnectionConfig
from snptool.core.checkpoint import MASK_PREFIX, read_checkpoint, write_checkpoint
from snptool.pruning.compact import compact_model
from snptool.pruning.connections import connections
from snptool.pruning.finetune import apply_masks

LAYERS = ["features.6", "features.10", "classifier.1"]


def pruned_by_hand(checkpoint_path: Path, tmp_path: Path) -> Path:
    """tiny_vgg with masks that kill units in every way compaction handles."""
    checkpoint = read_checkpoint(checkpoint_path)
    model = checkpoint.model
    chain = connections(model, checkpoint, LAYERS)  # features.8, classifier.0, classifier.2
    masks = {
        f"{c.module}.weight": torch.ones_like(
            model.get_submodule(c.module).weight, dtype=torch.bool
        )
        for c in chain
    }
    masks["features.8.weight"][:, 3] = False  # unit 3 of features.6: no outgoing → removed
    masks["features.8.weight"][5] = (
        False  # unit 5 of features.10: no incoming → constant, folded into classifier.0
    )
    masks["classifier.0.weight"][:, 16 * 7 : 16 * 8] = False  # unit 7 of features.10: no outgoing
    masks["classifier.2.weight"][:, 2] = False  # unit 2 of classifier.1: no outgoing
    with torch.no_grad():
        model.get_submodule("features.8").bias[5] = 0.7  # a constant that survives BN and ReLU
        bn = model.get_submodule("features.9")
        bn.running_mean[5], bn.bias[5] = 0.0, 0.2
    apply_masks(model, masks)
    metadata = dict(checkpoint.metadata)
    metadata["pruning"] = {"method": "hand", "connections": [vars(c) for c in chain]}
    output = tmp_path / "hand.safetensors"
    extras = {MASK_PREFIX + k: v.to(torch.uint8) for k, v in masks.items()}
    write_checkpoint(output, model, metadata, extras)
    return output


def test_compaction_removes_dead_units_and_keeps_the_outputs(checkpoint_path: Path, tmp_path: Path):
    path = pruned_by_hand(checkpoint_path, tmp_path)
    reference = read_checkpoint(path).model.eval()
    compact, report = compact_model(read_checkpoint(path))
    assert report.removed == {"features.6": 1, "features.10": 2, "classifier.1": 1}
    assert report.folded == {"features.6": 0, "features.10": 1, "classifier.1": 0}
    assert compact.get_submodule("features.4").out_channels == 15
    assert compact.get_submodule("features.8").in_channels == 15
    assert compact.get_submodule("features.8").out_channels == 14
    assert compact.get_submodule("features.9").num_features == 14
    assert compact.get_submodule("classifier.0").in_features == 14 * 16
    assert compact.get_submodule("classifier.2").in_features == 15
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(compact(x), reference(x), rtol=1e-5, atol=1e-5)


def test_a_constant_unit_before_a_padded_conv_is_kept(checkpoint_path: Path, tmp_path: Path):
    checkpoint = read_checkpoint(checkpoint_path)
    model = checkpoint.model
    chain = connections(model, checkpoint, ["features.2", "features.6", "features.10"])
    masks = {
        f"{c.module}.weight": torch.ones_like(
            model.get_submodule(c.module).weight, dtype=torch.bool
        )
        for c in chain
    }
    masks["features.4.weight"][2] = False  # unit 2 of features.6 has no inputs; features.8 pads
    with torch.no_grad():
        model.get_submodule("features.4").bias[2] = 0.5
        model.get_submodule("features.5").running_mean[2] = -1.0
    apply_masks(model, masks)
    metadata = dict(checkpoint.metadata)
    metadata["pruning"] = {"method": "hand", "connections": [vars(c) for c in chain]}
    path = tmp_path / "padded.safetensors"
    write_checkpoint(
        path, model, metadata, {MASK_PREFIX + k: v.to(torch.uint8) for k, v in masks.items()}
    )
    compact, report = compact_model(read_checkpoint(path))
    assert report.kept_constant["features.6"] == 1 and report.removed["features.6"] == 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            compact(x), read_checkpoint(path).model.eval()(x), rtol=1e-5, atol=1e-5
        )


def test_an_unpruned_checkpoint_is_left_as_it_is(checkpoint_path: Path):
    checkpoint = read_checkpoint(checkpoint_path)
    compact, report = compact_model(checkpoint)
    assert compact is checkpoint.model and report.removed == {}


def test_export_of_a_pruned_checkpoint_is_smaller_and_equal(checkpoint_path: Path, tmp_path: Path):
    from snptool.deploy.export import run_export

    path = pruned_by_hand(checkpoint_path, tmp_path)
    result = run_export(path, tmp_path / "pruned.onnx")
    assert result.max_abs_diff <= 1e-4 and result.argmax_agreement == 1.0
    assert result.params < result.dense_params and result.macs < result.dense_macs


def test_afcc_grouped_exports_grouped_convolutions(checkpoint_path: Path, tmp_path: Path):
    import onnx

    from snptool.analysis.clusters import run_clusters
    from snptool.analysis.matrix import run_matrix
    from snptool.analysis.probe import run_probe
    from snptool.config import ProbeConfig, PruneConfig
    from snptool.deploy.export import run_export
    from snptool.pruning.prune import run_prune

    layers = ["features.2", "features.6", "features.10", "classifier.1"]
    run_probe(checkpoint_path, layers, tmp_path / "p.safetensors", ProbeConfig(epochs=3))
    run_matrix(checkpoint_path, tmp_path / "p.safetensors", tmp_path / "m.h5")
    run_clusters(tmp_path / "m.h5")
    pruned = tmp_path / "g.safetensors"
    run_prune(
        checkpoint_path,
        tmp_path / "m.h5",
        pruned,
        PruneConfig(method="afcc-grouped", connections=ConnectionConfig(groups=4)),
    )
    compact, report = compact_model(read_checkpoint(pruned))
    assert report.grouped == {"features.4": 4, "features.8": 4}
    assert compact.get_submodule("features.8").groups == 4
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            compact(x), read_checkpoint(pruned).model.eval()(x), rtol=1e-5, atol=1e-5
        )
    result = run_export(pruned, tmp_path / "g.onnx")
    assert result.max_abs_diff <= 1e-4 and result.macs < result.dense_macs
    groups = [
        attribute.i
        for node in onnx.load(str(tmp_path / "g.onnx")).graph.node
        if node.op_type == "Conv"
        for attribute in node.attribute
        if attribute.name == "group"
    ]
    assert sorted(groups) == [1, 4, 4]

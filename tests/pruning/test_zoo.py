"""Networks we did not write (issue 21): torchvision and timm models pruned to half their MACs
through every prunable group, rebuilt from their checkpoints, exported with parity, and counted
by the one MAC counter, which the ONNX graph's count confirms.

The quick set covers the block types that need care: depthwise and squeeze-excitation
(MobileNetV3), grouped convolutions (RegNet), a convolutional classifier (SqueezeNet), layer
scales and channels-last MLPs (ConvNeXt), fused-qkv attention heads (timm ViT) and
nn.MultiheadAttention (torchvision ViT). The whole torchvision zoo runs behind `--runslow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
import torchvision

from snptool.analysis.clusters import run_clusters
from snptool.analysis.layers import run_layers
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import (
    ExportConfig,
    LatencyConfig,
    MatrixConfig,
    ProbeConfig,
    PruneConfig,
    RemovalConfig,
)
from snptool.core.checkpoint import read_checkpoint, write_checkpoint
from snptool.core.macs import count_macs
from snptool.deploy.checked_export import count_graph_macs
from snptool.deploy.export import run_export
from snptool.deploy.latency import run_latency
from snptool.errors import ArchitectureError, UsageError
from snptool.pruning.prune import run_prune
from tests.conftest import FIXED_WIDTH

SMALL = {  # kwargs that keep a model small at 32×32 (ViTs are built for their input size)
    "torchvision:vit_b_16": {"image_size": 32},
    "torchvision:vit_b_32": {"image_size": 32},
    "torchvision:alexnet": {"input_size": 64},  # pools 32×32 down to nothing
    "torchvision:inception_v3": {"input_size": 75, "aux_logits": False, "init_weights": False},
    "torchvision:maxvit_t": {"input_size": 224},  # windows of 7 over 224 / 32
    "timm:vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8, "depth": 2},
    "timm:convnext_atto": {"depths": (1, 1, 1, 1)},
}
LONG = pytest.mark.long  # ~9 s each on two cores: out of the quick loop
QUICK = [
    pytest.param("torchvision:mobilenet_v3_small", marks=LONG),
    pytest.param("torchvision:regnet_x_400mf", marks=LONG),
    "torchvision:squeezenet1_1",
    "timm:convnext_atto",
    "timm:vit_tiny_patch16_224",
    pytest.param("timm:poolformer_s12", marks=LONG),  # MetaFormer: Scale keeps a (C, 1, 1) shape
]
# Models whose channels Torch-Pruning 1.6 cannot follow: snptool refuses them in one line.
REFUSED = {
    "shufflenet_v2": "channel shuffle: Torch-Pruning's reshape index mapping divides by zero",
    "swin": "Torch-Pruning's grouping does not finish (index mappings through window reshapes)",
    "maxvit": "Torch-Pruning's grouping does not finish (index mappings through window reshapes)",
}
# Over 150 M parameters (torchvision's model table): beyond the suite's two cores and 24 GiB.
GIANTS = {"convnext_large", "regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32"}


@pytest.fixture
def zoo_checkpoint(untrained_checkpoint):
    """zoo_checkpoint(spec) → an untrained checkpoint of a zoo model (32×32 unless SMALL
    says otherwise)."""

    def write(spec: str) -> Path:
        pytest.importorskip(spec.split(":")[0])
        return untrained_checkpoint(spec, **SMALL.get(spec, {}))

    return write


def prune_export_check(dense: Path, folder: Path, **options) -> dict:
    """Prune to half the MACs by magnitude, reload, export; check every agreement."""
    checkpoint = read_checkpoint(dense)
    spec, shape = checkpoint.metadata["arch"]["spec"], checkpoint.input_spec.shape
    pruned, graph_path = folder / "pruned.safetensors", folder / "pruned.onnx"
    removal = RemovalConfig(target_macs=0.5, **options)
    config = PruneConfig(method="magnitude-channels", removal=removal, device="cpu")
    result = run_prune(dense, None, pruned, config)
    ratio = result.size["mac_ratio"]
    assert 0.48 <= ratio <= 0.5, f"{spec} pruned to {ratio:.3f} of its MACs"
    loaded = read_checkpoint(pruned)
    assert loaded.metadata["pruning"]["structured"]["mac_ratio"] == ratio
    assert count_macs(loaded.model, shape) == result.size["macs"]
    exported = run_export(pruned, graph_path, ExportConfig(parity_samples=8))
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = loaded.model(x)
    (actual,) = session.run(None, {"input": x.numpy()})
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(torch.from_numpy(actual), expected, atol=1e-4 * scale, rtol=1e-4)
    assert exported.macs == result.size["macs"] and exported.dense_macs == result.size["dense_macs"]
    graph = count_graph_macs(onnx.load(str(graph_path)))
    assert abs(graph / exported.macs - 1) < 0.01, f"ONNX counts {graph}, we {exported.macs}"
    return {"dense": dense, "pruned": pruned, "onnx": graph_path, "ratio": ratio}


@pytest.mark.parametrize("spec", QUICK)
def test_zoo_model_prunes_to_half_its_macs_and_exports(spec, zoo_checkpoint, tmp_path):
    prune_export_check(zoo_checkpoint(spec), tmp_path)


TINY_TORCHVISION_VIT = {  # torchvision's ViT code (nn.MultiheadAttention) at a tiny width
    "image_size": 32,
    "patch_size": 8,
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "mlp_dim": 64,
}


def test_torchvision_vit_counts_its_attention_projections(untrained_checkpoint, tmp_path):
    spec = "torchvision.models.vision_transformer:VisionTransformer"
    dense = untrained_checkpoint(spec, **TINY_TORCHVISION_VIT)
    model = read_checkpoint(dense).model
    graph_path = tmp_path / "dense.onnx"
    exported = run_export(dense, graph_path, ExportConfig(parity_samples=2))
    graph = count_graph_macs(onnx.load(str(graph_path)))
    assert exported.macs == count_macs(model, (3, 32, 32))
    assert abs(graph / exported.macs - 1) < 0.01  # in/out projections of every block counted


@pytest.mark.long
def test_units_ranks_the_analysed_groups_and_fills_the_rest(zoo_checkpoint, tmp_path):
    dense = zoo_checkpoint("torchvision:regnet_x_400mf")
    layers = run_layers(dense, probe_taps_only=True)
    assert layers.inferred_taps and layers.layers  # a foreign model gets stage taps
    taps = ["trunk_output.block2", "trunk_output.block3"]
    probes, matrices = tmp_path / "probes.safetensors", tmp_path / "matrices.h5"
    run_probe(dense, taps, probes, ProbeConfig(epochs=1, device="cpu"))
    run_matrix(dense, probes, matrices, MatrixConfig(device="cpu"))
    run_clusters(matrices)
    pruned = tmp_path / "units.safetensors"
    config = PruneConfig(
        method="units",
        removal=RemovalConfig(target_macs=0.5, fill="magnitude-channels"),
        device="cpu",
    )
    result = run_prune(dense, matrices, pruned, config)
    assert 0.48 <= result.size["mac_ratio"] <= 0.5
    groups = read_checkpoint(pruned).metadata["pruning"]["structured"]["channel_groups"]
    criteria = {g["criterion"] for g in groups}
    assert criteria == {"units", "magnitude-channels"}
    assert {t for g in groups for t in g["taps"]} == set(taps)
    only_tapped = tmp_path / "tapped.safetensors"
    config = PruneConfig(method="units", removal=RemovalConfig(remove_fraction=0.25), device="cpu")
    run_prune(dense, matrices, only_tapped, config)
    tapped = read_checkpoint(only_tapped).metadata["pruning"]["structured"]["channel_groups"]
    assert len(tapped) < len(groups) and all(g["taps"] for g in tapped)


@pytest.mark.parametrize("spec", ["torchvision:mnasnet0_5", "timm:resnet18d"])
def test_global_allocation_prunes_a_foreign_model_to_half_its_macs(spec, zoo_checkpoint, tmp_path):
    prune_export_check(zoo_checkpoint(spec), tmp_path, allocation="global")
    record = read_checkpoint(tmp_path / "pruned.safetensors").metadata["pruning"]["structured"]
    shares = {1 - len(g["kept"]) / g["channels"] for g in record["channel_groups"]}
    assert record["allocation"] == "global" and len(shares) > 1  # the groups' shares differ


@pytest.mark.long
def test_the_margin_criteria_prune_a_foreign_model_where_it_was_analysed(zoo_checkpoint, tmp_path):
    dense = zoo_checkpoint("timm:resnet18d")
    taps = ["layer2.0.act1", "layer3.0.act1", "layer4.0.act1"]  # three blocks' inner channels
    probes, matrices = tmp_path / "probes.safetensors", tmp_path / "matrices.h5"
    run_probe(dense, taps, probes, ProbeConfig(epochs=1, device="cpu"))
    run_matrix(dense, probes, matrices, MatrixConfig(device="cpu"))
    run_clusters(matrices)
    for method, allocation, ranking in (
        ("units", "global", {"ranking": ("margin",)}),  # the matrices rank and allocate
        ("magnitude-channels", "margin-mass", {}),  # the matrices allocate, L1 ranks
    ):
        pruned = tmp_path / f"{allocation}.safetensors"
        removal = RemovalConfig(target_macs=0.8, allocation=allocation, **ranking)
        config = PruneConfig(method=method, removal=removal, device="cpu")
        result = run_prune(dense, matrices, pruned, config, layers=taps)
        assert result.size["mac_ratio"] <= 0.8
        record = read_checkpoint(pruned).metadata["pruning"]["structured"]
        assert record["allocation"] == allocation and record["allocation_parameter"] is not None
        shares = {1 - len(g["kept"]) / g["channels"] for g in record["channel_groups"]}
        assert len(record["channel_groups"]) == 3 and len(shares) > 1
        exported = run_export(
            pruned, tmp_path / f"{allocation}.onnx", ExportConfig(parity_samples=4)
        )
        assert exported.max_abs_diff <= 1e-3 and exported.macs == result.size["macs"]


def test_an_unreachable_target_is_refused_and_writes_nothing(zoo_checkpoint, tmp_path):
    dense = zoo_checkpoint("torchvision:squeezenet1_1")
    output = tmp_path / "pruned.safetensors"
    config = PruneConfig(
        method="magnitude-channels", removal=RemovalConfig(target_macs=0.1, min_channels=48)
    )
    with pytest.raises(UsageError, match=r"--target-macs 0.1 cannot be reached: .* leaves 0\.\d+"):
        run_prune(dense, None, output, config)
    assert not output.exists()
    low_floor = PruneConfig(
        method="magnitude-channels", removal=RemovalConfig(target_macs=0.1, min_channels=4)
    )
    run_prune(dense, None, output, low_floor)  # reachable once groups may shrink further
    assert read_checkpoint(output).metadata["pruning"]["structured"]["mac_ratio"] <= 0.1


def test_channel_shuffle_is_refused_in_one_line(zoo_checkpoint, tmp_path):
    dense = zoo_checkpoint("torchvision:shufflenet_v2_x0_5")
    output = tmp_path / "pruned.safetensors"
    config = PruneConfig(
        method="magnitude-channels", removal=RemovalConfig(target_macs=0.5), device="cpu"
    )
    with pytest.raises(ArchitectureError, match="Torch-Pruning cannot follow the channels of"):
        run_prune(dense, None, output, config)
    assert not output.exists()
    exported = run_export(dense, tmp_path / "dense.onnx", ExportConfig(parity_samples=4))
    assert exported.macs == count_macs(read_checkpoint(dense).model, (3, 32, 32))


@pytest.mark.long
def test_a_grouping_that_does_not_finish_is_refused_in_one_line(zoo_checkpoint, tmp_path):
    dense = zoo_checkpoint("torchvision:swin_t")
    output = tmp_path / "pruned.safetensors"
    config = PruneConfig(
        method="magnitude-channels", removal=RemovalConfig(target_macs=0.5, grouping_seconds=3)
    )
    with pytest.raises(ArchitectureError, match="did not finish grouping the channels of Swin"):
        run_prune(dense, None, output, config)
    assert not output.exists()


def test_a_network_that_no_longer_runs_is_refused_in_one_line(untrained_checkpoint, tmp_path):
    dense = untrained_checkpoint(FIXED_WIDTH)
    output = tmp_path / "pruned.safetensors"
    config = PruneConfig(
        method="magnitude-channels", removal=RemovalConfig(target_macs=0.5, min_channels=1)
    )
    with pytest.raises(ArchitectureError, match=r"FixedWidth no longer runs .* _fixed_width.py:"):
        run_prune(dense, None, output, config)
    assert not output.exists()


@pytest.mark.long
def test_export_needs_no_data_set_and_latency_runs(zoo_checkpoint, tmp_path):
    checked = prune_export_check(zoo_checkpoint("torchvision:mobilenet_v3_small"), tmp_path)
    for name in ("dense", "pruned"):
        checkpoint = read_checkpoint(checked[name])
        metadata = {**checkpoint.metadata, "data": None}  # as an imported checkpoint has
        write_checkpoint(checked[name], checkpoint.model, metadata)
    dense_onnx = tmp_path / "dense.onnx"
    exported = run_export(checked["dense"], dense_onnx, ExportConfig(parity_samples=4))
    assert exported.data.startswith("random normal inputs")
    document = json.loads(onnx.load(str(dense_onnx)).metadata_props[0].value)
    assert document["parity"]["data"].startswith("random normal inputs")
    result = run_latency([dense_onnx, checked["onnx"]], LatencyConfig(runs=30, warmup=5))
    assert [row.ratio for row in result.rows][0] == 1.0 and result.rows[1].p50_ms > 0


def _torchvision_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.slow
@pytest.mark.parametrize("name", _torchvision_models())
def test_every_torchvision_model(name, zoo_checkpoint, tmp_path):
    if name in GIANTS:
        pytest.skip("over 150 M parameters: beyond this suite's two cores and 24 GiB")
    dense = zoo_checkpoint(f"torchvision:{name}")
    if name.startswith(tuple(REFUSED)):
        with pytest.raises(ArchitectureError, match="Torch-Pruning (cannot follow|did not finish)"):
            prune_export_check(dense, tmp_path, grouping_seconds=10)
        return
    prune_export_check(dense, tmp_path)

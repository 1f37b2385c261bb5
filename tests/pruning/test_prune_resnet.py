"""prune, compact and export on conv pairs inside the residual blocks of third-party ResNets.

A BasicBlock computes relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). Pruning the pair
(bn1 → bn2) masks conv2 only: conv1's outputs are the units of bn1, conv2's inputs read them.
conv2's outputs (bn2) are added to the residual stream, so compaction may cut bn1's units (the
inside of the block) but never a channel of the stream.

Covered: torchvision's resnet18 (num_classes=10, one short epoch on a synthetic npz) and
akamaster's trained CIFAR ResNet-20 (imported with examples/third_party/cifar_resnet.py, skipped
when the shared checkpoint or CIFAR-10 file is absent).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import ImportConfig, InputSpec, ProbeConfig, PruneConfig, TrainConfig
from snptool.core.checkpoint import MASK_PREFIX, masks_of, read_checkpoint, write_checkpoint
from snptool.core.matrix_file import layer_group, open_matrix_file, read_layer_clusters
from snptool.deploy.export import run_export
from snptool.errors import LayerError
from snptool.pruning.compact import compact_model
from snptool.pruning.connections import Connection, connections
from snptool.pruning.finetune import apply_masks
from snptool.pruning.prune import run_prune
from snptool.training.importer import run_import
from snptool.training.train import run_train
from tests.conftest import CIFAR_NPZ, REPO_ROOT, SHARED_CHECKPOINTS

RESNET20_WEIGHTS = SHARED_CHECKPOINTS / "akamaster_resnet20-12fca82f.th"
CIFAR_RESNET = REPO_ROOT / "examples" / "third_party" / "cifar_resnet.py"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESNET18_LAYERS = ["layer1.0.bn1", "layer1.0.bn2"]
RESNET20_LAYERS = ["layer1.0.relu1", "layer1.0.bn2"]
INNER_CONNECTION = Connection("layer1.0.conv2", "layer1.0.bn1", "layer1.0.bn2", 1)
PROBE = ProbeConfig(epochs=5, device="cpu")
CLASSES = 10


# --- helpers ----------------------------------------------------------------------------------


def label_sets(clusters_path: Path, layers: list[str]) -> dict[str, list[set[int]]]:
    """Λ(u) of every unit, read straight from the clusters file."""
    with open_matrix_file(clusters_path) as handle:
        return {
            name: read_layer_clusters(layer_group(handle, name)).label_sets() for name in layers
        }


def probe_matrix_clusters(checkpoint: Path, layers: list[str], folder: Path) -> Path:
    probes = folder / "probes.safetensors"
    run_probe(checkpoint, layers, probes, PROBE)
    matrices = folder / "matrices.h5"
    run_matrix(checkpoint, probes, matrices)
    run_clusters(matrices)
    return matrices


def afcc_rule(sources: list[set[int]], targets: list[set[int]]) -> torch.Tensor:
    """[targets, sources]: keep the kernel slice a → b iff Λ(a) ∩ Λ(b) ≠ ∅ (METHODS.md §8)."""
    return torch.tensor([[bool(a & b) for a in sources] for b in targets], dtype=torch.bool)


def state(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).model.state_dict()


def assert_only_masked_parameter_changed(dense: Path, pruned: Path, masked: str) -> None:
    """Every tensor of the pruned model equals the dense one, except `masked`'s pruned zeros."""
    before, after = state(dense), state(pruned)
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        if name != masked:
            assert torch.equal(after[name], tensor), (
                f"{name} changed though only {masked} is pruned"
            )
    mask = masks_of(read_checkpoint(pruned))[masked]
    assert torch.equal(after[masked][mask], before[masked][mask])
    assert not after[masked][~mask].any()


def hand_pruned(
    checkpoint_path: Path,
    layers: list[str],
    kill: Callable[[dict[str, torch.Tensor]], None],
    output: Path,
) -> Path:
    """A pruned checkpoint with hand-made masks, recorded the way run_prune records them."""
    checkpoint = read_checkpoint(checkpoint_path)
    model = checkpoint.model
    chain = connections(model, checkpoint, layers)
    masks = {
        f"{c.module}.weight": torch.ones_like(
            model.get_submodule(c.module).weight, dtype=torch.bool
        )
        for c in chain
    }
    kill(masks)
    apply_masks(model, masks)
    metadata = dict(checkpoint.metadata)
    metadata["pruning"] = {
        "method": "hand",
        "layers": layers,
        "connections": [vars(c) for c in chain],
    }
    extras = {MASK_PREFIX + k: v.to(torch.uint8) for k, v in masks.items()}
    write_checkpoint(output, model, metadata, extras)
    return output


def inputs(count: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def onnx_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    return logits


def assert_onnx_matches_masked_model(onnx_path: Path, pruned: Path) -> None:
    """An independent parity check: a batch size the exporter never saw, random inputs."""
    x = inputs(3, seed=5)
    with torch.no_grad():
        expected = read_checkpoint(pruned).model.eval()(x).numpy()
    assert np.abs(onnx_logits(onnx_path, x) - expected).max() <= 1e-4


def dead_inputs(mask: torch.Tensor) -> torch.Tensor:
    """Input units of a conv mask [out, in, kh, kw] with no connection left."""
    return ~mask.any(dim=(0, 2, 3))


# --- torchvision resnet18 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resnet18")


@pytest.fixture(scope="module")
def resnet18_npz(resnet18_folder: Path) -> Path:
    """200 RGB 32×32 images in 10 classes (brightness and red tint by class), 50 of them test."""
    rng = np.random.default_rng(0)
    labels = np.arange(200, dtype=np.int64) % CLASSES
    images = np.linspace(30, 225, CLASSES)[labels][:, None, None, None] + rng.normal(
        0, 25, size=(200, 32, 32, 3)
    )
    images[..., 0] += (labels % 3)[:, None, None] * 20
    path = resnet18_folder / "synthetic10.npz"
    np.savez(
        path,
        images=np.clip(images, 0, 255).astype(np.uint8),
        labels=labels,
        class_names=np.array([f"c{i}" for i in range(CLASSES)]),
        test=np.arange(200) // CLASSES % 4 == 0,  # every class in both splits
    )
    return path


@pytest.fixture(scope="module")
def resnet18(resnet18_folder: Path, resnet18_npz: Path) -> Path:
    """torchvision's resnet18 with 10 classes after one epoch on the synthetic set (~2 s)."""
    result = run_train(
        "torchvision:resnet18",
        f"npz:{resnet18_npz}",
        resnet18_folder / "resnet18.safetensors",
        TrainConfig(epochs=1, batch_size=50, device="cpu"),
        arch_kwargs={"num_classes": CLASSES},
    )
    return Path(result.output)


@pytest.fixture(scope="module")
def resnet18_clusters(resnet18: Path, resnet18_folder: Path) -> Path:
    return probe_matrix_clusters(resnet18, RESNET18_LAYERS, resnet18_folder)


@pytest.fixture(scope="module")
def resnet18_pruned(resnet18: Path, resnet18_clusters: Path, resnet18_folder: Path):
    output = resnet18_folder / "resnet18.pruned.safetensors"
    result = run_prune(
        resnet18, resnet18_clusters, output, PruneConfig(device="cpu"), layers=RESNET18_LAYERS
    )
    return result, output


def test_resnet18_checkpoint_is_the_torchvision_model_at_32px(resnet18: Path):
    checkpoint = read_checkpoint(resnet18)
    assert checkpoint.metadata["arch"] == {
        "spec": "torchvision:resnet18",
        "kwargs": {"num_classes": CLASSES},
    }
    assert checkpoint.input_spec.shape == (3, 32, 32)
    assert checkpoint.model.fc.out_features == CLASSES


def test_probe_refuses_the_relu_that_runs_twice_in_a_torchvision_block(
    resnet18: Path, tmp_path: Path
):
    with pytest.raises(LayerError, match="layer1.0.relu runs 2 times"):
        run_probe(resnet18, ["layer1.0.relu"], tmp_path / "relu.safetensors", PROBE)
    assert not (tmp_path / "relu.safetensors").exists()


def test_the_pair_inside_a_block_is_one_connection_through_conv2(resnet18: Path):
    checkpoint = read_checkpoint(resnet18)
    chain = connections(checkpoint.model, checkpoint, RESNET18_LAYERS)
    # bn2 feeds the next block through the residual addition, not the output layer: no second
    # connection
    assert chain == [INNER_CONNECTION]


def test_afcc_inside_a_torchvision_block_masks_only_conv2(
    resnet18: Path, resnet18_clusters: Path, resnet18_pruned
):
    result, output = resnet18_pruned
    pruned = read_checkpoint(output)
    masks = masks_of(pruned)
    assert set(masks) == {"layer1.0.conv2.weight"}
    mask = masks["layer1.0.conv2.weight"]
    assert mask.shape == (64, 64, 3, 3)
    sets = label_sets(resnet18_clusters, RESNET18_LAYERS)
    expected = afcc_rule(sets["layer1.0.bn1"], sets["layer1.0.bn2"])  # [bn2 units, bn1 units]
    for kh in range(3):
        for kw in range(3):
            assert torch.equal(mask[:, :, kh, kw], expected)
    # the residual path (bn2, the shortcut, the next block, downsample) and all else untouched
    assert_only_masked_parameter_changed(resnet18, output, "layer1.0.conv2.weight")
    [layer] = result.layers
    assert (layer.layer, layer.module, layer.weights) == ("layer1.0.bn2", "layer1.0.conv2", 36864)
    assert layer.dilution == pytest.approx(1 - expected.float().mean().item())
    for accuracy in (result.dense_accuracy, result.accuracy_before, result.accuracy_after):
        assert 0.0 <= accuracy <= 1.0
    record = pruned.metadata["pruning"]
    assert record["layers"] == RESNET18_LAYERS
    assert record["connections"] == [vars(INNER_CONNECTION)]


def test_export_of_the_afcc_pruned_resnet18(resnet18_pruned, resnet18_folder: Path):
    _, output = resnet18_pruned
    onnx_path = resnet18_folder / "resnet18.pruned.onnx"
    result = run_export(output, onnx_path)
    assert result.max_abs_diff <= 1e-4 and result.argmax_agreement == 1.0
    assert_onnx_matches_masked_model(onnx_path, output)
    mask = masks_of(read_checkpoint(output))["layer1.0.conv2.weight"]
    dead = int(dead_inputs(mask).sum())
    if dead:  # units of bn1 without outgoing connections are cut: conv1 and bn1 shrink
        assert result.params < result.dense_params and result.macs < result.dense_macs
    else:
        assert (result.params, result.macs) == (result.dense_params, result.dense_macs)
    graph = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert int(meta["snptool.params"]) == result.params


DEAD_BN1_UNITS = [3, 17, 40]
CUT_BN2_INPUTS = [5]  # a bn2 unit (a channel of the residual stream) with no incoming connection


def kill_inside_block(masks: dict[str, torch.Tensor]) -> None:
    mask = masks["layer1.0.conv2.weight"]
    mask[:, DEAD_BN1_UNITS] = False  # no outgoing connection: removed from conv1, bn1, conv2
    mask[CUT_BN2_INPUTS] = False  # conv2 output 5 is 0 + the stream: it must stay
    mask[10, 20, 1, 1] = False  # a single weight: nothing to remove


def test_compaction_inside_a_torchvision_block_keeps_the_residual_stream(
    resnet18: Path, tmp_path: Path
):
    path = hand_pruned(resnet18, RESNET18_LAYERS, kill_inside_block, tmp_path / "hand.safetensors")
    checkpoint = read_checkpoint(path)
    reference = read_checkpoint(path).model.eval()
    compact, report = compact_model(checkpoint)
    kept = 64 - len(DEAD_BN1_UNITS)
    assert report.removed == {"layer1.0.bn1": len(DEAD_BN1_UNITS)}
    assert compact.get_submodule("layer1.0.conv1").out_channels == kept
    assert compact.get_submodule("layer1.0.bn1").num_features == kept
    assert compact.get_submodule("layer1.0.conv2").in_channels == kept
    # the residual stream stays 64 channels wide
    assert compact.get_submodule("layer1.0.conv2").out_channels == 64
    assert compact.get_submodule("layer1.0.bn2").num_features == 64
    assert compact.get_submodule("layer1.0.conv1").in_channels == 64
    assert compact.get_submodule("layer1.1.conv1").in_channels == 64
    dense = dict(read_checkpoint(resnet18).model.named_modules())
    for name, module in compact.named_modules():
        if name and not name.startswith(("layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2")):
            for key, tensor in module.state_dict().items():
                if "." not in key:
                    assert torch.equal(tensor, dense[name].state_dict()[key]), f"{name}.{key}"
    x = inputs(8, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), reference(x), rtol=1e-5, atol=1e-5)

    onnx_path = tmp_path / "hand.onnx"
    result = run_export(path, onnx_path)
    assert result.max_abs_diff <= 1e-4 and result.argmax_agreement == 1.0
    assert result.params < result.dense_params and result.macs < result.dense_macs
    assert_onnx_matches_masked_model(onnx_path, path)


def test_compaction_before_the_output_layer_keeps_the_residual_stream(
    resnet18: Path, tmp_path: Path
):
    def kill(masks: dict[str, torch.Tensor]) -> None:
        masks["fc.weight"][:, [3, 7]] = False  # avgpool units 3, 7 (stream channels) unused

    path = hand_pruned(resnet18, ["avgpool"], kill, tmp_path / "fc.safetensors")
    reference = read_checkpoint(path).model.eval()
    compact, _ = compact_model(read_checkpoint(path))
    x = inputs(4, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), reference(x), rtol=1e-5, atol=1e-5)
    # the stream is shared by every block: only fc's input columns may go
    assert compact.get_submodule("layer4.1.conv2").out_channels == 512
    assert compact.get_submodule("layer4.1.bn2").num_features == 512


def test_a_pair_across_the_residual_addition_is_refused_or_kept_coupled(
    resnet18: Path, tmp_path: Path
):
    layers = ["layer1.0.bn2", "layer1.1.bn1"]
    checkpoint = read_checkpoint(resnet18)
    try:
        connections(checkpoint.model, checkpoint, layers)
    except LayerError:
        return  # refusing the pair is a correct answer: bn2 is not what layer1.1.conv1 reads

    def kill(masks: dict[str, torch.Tensor]) -> None:
        masks["layer1.1.conv1.weight"][:, [3, 7]] = False

    path = hand_pruned(resnet18, layers, kill, tmp_path / "cross.safetensors")
    reference = read_checkpoint(path).model.eval()
    compact, _ = compact_model(read_checkpoint(path))
    x = inputs(4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), reference(x), rtol=1e-5, atol=1e-5)
    assert compact.get_submodule("layer1.0.conv2").out_channels == 64


# --- akamaster's trained CIFAR ResNet-20 ------------------------------------------------------


@pytest.fixture(scope="module")
def resnet20_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resnet20")


@pytest.fixture(scope="module")
def resnet20(resnet20_folder: Path) -> Path:
    """akamaster's ResNet-20 imported with 500 CIFAR-10 test images (250 train, 250 test)."""
    if not RESNET20_WEIGHTS.is_file():
        pytest.skip(f"third-party checkpoint {RESNET20_WEIGHTS} not found")
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"real CIFAR-10 data not found at {CIFAR_NPZ}")
    with np.load(CIFAR_NPZ) as archive:
        images, labels = archive["images"][:500], archive["labels"][:500]
        names = archive["class_names"]
    data = resnet20_folder / "cifar10_first500.npz"
    np.savez(data, images=images, labels=labels, class_names=names, test=np.arange(500) % 2 == 1)
    config = ImportConfig(
        arch=f"{CIFAR_RESNET}:resnet20",
        input=InputSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        data=f"npz:{data}",
    )
    output = resnet20_folder / "resnet20.safetensors"
    imported = run_import(RESNET20_WEIGHTS, output, config)
    assert imported.num_classes == CLASSES and not imported.missing and not imported.unexpected
    return output


def test_afcc_inside_a_block_of_the_real_resnet20(resnet20: Path, resnet20_folder: Path):
    clusters = probe_matrix_clusters(resnet20, RESNET20_LAYERS, resnet20_folder)
    output = resnet20_folder / "resnet20.pruned.safetensors"
    result = run_prune(
        resnet20, clusters, output, PruneConfig(device="cpu"), layers=RESNET20_LAYERS
    )
    assert result.dense_accuracy > 0.85
    assert isinstance(result.accuracy_before, float) and 0.0 <= result.accuracy_before <= 1.0
    assert result.accuracy_after == result.accuracy_before  # no fine-tuning

    masks = masks_of(read_checkpoint(output))
    assert set(masks) == {"layer1.0.conv2.weight"}
    mask = masks["layer1.0.conv2.weight"]
    sets = label_sets(clusters, RESNET20_LAYERS)
    expected = afcc_rule(sets["layer1.0.relu1"], sets["layer1.0.bn2"])
    assert torch.equal(mask, expected[:, :, None, None].expand(16, 16, 3, 3))
    assert_only_masked_parameter_changed(resnet20, output, "layer1.0.conv2.weight")

    dead = int(dead_inputs(mask).sum())
    compact, report = compact_model(read_checkpoint(output))
    assert report.removed == {"layer1.0.relu1": dead}
    assert compact.get_submodule("layer1.0.conv1").out_channels == 16 - dead
    assert compact.get_submodule("layer1.0.conv2").in_channels == 16 - dead
    assert compact.get_submodule("layer1.0.conv2").out_channels == 16  # the stream

    onnx_path = resnet20_folder / "resnet20.pruned.onnx"
    exported = run_export(output, onnx_path)
    assert exported.max_abs_diff <= 1e-4 and exported.argmax_agreement == 1.0
    assert_onnx_matches_masked_model(onnx_path, output)
    if dead:
        assert exported.params < exported.dense_params
    else:
        assert exported.params == exported.dense_params


def test_pruning_the_output_layer_of_the_real_resnet20_keeps_the_residual_stream(
    resnet20: Path, tmp_path: Path
):
    def kill(masks: dict[str, torch.Tensor]) -> None:
        masks["linear.weight"][:, 5] = False  # unit 5 of the stream serves no label

    path = hand_pruned(resnet20, ["layer3.2.relu2"], kill, tmp_path / "linear.safetensors")
    result = run_export(path, tmp_path / "linear.onnx")
    assert result.max_abs_diff <= 1e-4
    assert_onnx_matches_masked_model(tmp_path / "linear.onnx", path)

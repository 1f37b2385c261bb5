"""Probes: the silencing identity behind every matrix, the probe file, cached vs streamed
features, and layer accuracy on trained networks (METHODS.md §4–5)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import ProbeResult, run_probe
from snptool.config import DataConfig, MatrixConfig, ProbeConfig, TrainConfig, config_to_dict
from snptool.core.checkpoint import read_checkpoint
from snptool.core.files import sha256_file
from snptool.core.taps import TapRecorder
from snptool.data.datasets import load_data, prepare_batch
from snptool.training.train import TrainResult, run_train
from tests.conftest import assert_one_error, invoke, part_files

Features = dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def read_probe_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["snptool"])


def class_means(values: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Mean of `values` [N, …] over the samples of each label → [C, …]."""
    return torch.stack([values[labels == c].mean(0) for c in range(classes)])


def tap_activations(
    checkpoint_path: Path | str, taps: list[str], split: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The taps' activations [N, U, P] and the labels of one digits split, computed here."""
    checkpoint = read_checkpoint(checkpoint_path)
    spec = checkpoint.input_spec
    recorder = TapRecorder(checkpoint.model, taps, spec)
    data = load_data("digits", split, DataConfig().inherit(checkpoint.metadata))
    parts: dict[str, list[torch.Tensor]] = {t.name: [] for t in recorder.taps}
    labels = []
    with torch.no_grad():
        for images, batch_labels in data.batches(spec, 128):
            outputs, _ = recorder.run(prepare_batch(images, spec))
            for name, tensor in outputs.items():
                parts[name].append(tensor)
            labels.append(batch_labels)
    return {k: torch.cat(v) for k, v in parts.items()}, torch.cat(labels)


@pytest.fixture(scope="module")
def features(checkpoint_path: Path, probe_result: ProbeResult) -> Features:
    """The taps' activations [N, U, P] and labels of both digits splits, computed here."""
    taps = [t.name for t in probe_result.taps]
    return {split: tap_activations(checkpoint_path, taps, split) for split in ("train", "test")}


# --- the single-unit matrix is the silenced probe's mean output --------------------------------


def assert_silenced_probes_give_the_matrices(
    matrices: Path,
    probes_path: Path,
    activations: dict[str, torch.Tensor],
    labels: torch.Tensor,
    units_per_layer: int = 4,
) -> None:
    """For random units u of every tap: keeping only u's probe weights and averaging the
    probe's output per true label gives M[u] of the HDF5 file; all units together give the
    whole probe's mean output."""
    weights = read_tensors(probes_path)
    rng = np.random.default_rng(0)
    with h5py.File(matrices, "r") as handle:
        for name, values in activations.items():
            matrix = torch.from_numpy(handle["layers"][name]["matrix"][()]).double()
            weight = weights[f"probe/{name}"].double()  # [C, U, P]
            classes, units, positions = weight.shape
            assert matrix.shape == (units, classes, classes)
            flat = values.reshape(len(labels), -1).double()
            probe = nn.Linear(units * positions, classes, bias=False).double()
            for unit in rng.choice(units, size=min(units, units_per_layer), replace=False):
                silenced = torch.zeros_like(weight)
                silenced[:, unit, :] = weight[:, unit, :]  # W'[k, v, p] = W[k, v, p] iff v == u
                with torch.no_grad():
                    probe.weight.copy_(silenced.reshape(classes, -1))
                    expected = class_means(probe(flat), labels, classes)  # [true, output]
                assert expected.abs().max() > 0
                scale = float(expected.abs().max())
                torch.testing.assert_close(matrix[unit], expected, rtol=1e-4, atol=1e-5 * scale)
            # h is linear: all units together give the whole probe's mean output per label
            full = class_means(flat @ weight.reshape(classes, -1).T, labels, classes)
            torch.testing.assert_close(
                matrix.sum(0), full, rtol=1e-4, atol=1e-5 * float(full.abs().max())
            )


@pytest.mark.parametrize("split", ["train", "test"])
def test_silencing_all_but_one_unit_gives_that_units_matrix(
    split: str, checkpoint_path: Path, probes_path: Path, features: Features, tmp_path: Path
) -> None:
    matrices = tmp_path / "matrices.h5"
    run_matrix(checkpoint_path, probes_path, matrices, MatrixConfig(split=split, device="cpu"))
    activations, labels = features[split]
    with h5py.File(matrices, "r") as handle:
        assert handle["layers"][next(iter(activations))]["matrix"].attrs["split"] == split
    assert_silenced_probes_give_the_matrices(matrices, probes_path, activations, labels)


def test_silencing_all_but_one_head_or_node_gives_its_matrix(
    trained_vit: TrainResult, tiny_probe: ProbeConfig, tmp_path: Path
) -> None:
    # A head tap (U = h = 2, P = T·d = 17·8) and a token tap (feature nodes: U = D = 16, P = T).
    heads = "encoder.layers.encoder_layer_1.self_attention.heads:head"
    nodes = "encoder.layers.encoder_layer_0"
    probes, matrices = tmp_path / "vit.probes.safetensors", tmp_path / "vit.h5"
    result = run_probe(trained_vit.output, [heads, nodes], probes, tiny_probe)
    shapes = {t.name: (t.unit, t.units, t.positions) for t in result.taps}
    assert shapes == {heads: ("head", 2, 17 * 8), nodes: ("feature", 16, 17)}
    run_matrix(trained_vit.output, probes, matrices, MatrixConfig(device="cpu"))
    with h5py.File(matrices, "r") as handle:
        attrs = handle["layers"][heads]["matrix"].attrs
        assert (attrs["unit"], attrs["layer"]) == ("head", heads.removesuffix(":head"))
    activations, labels = tap_activations(trained_vit.output, [heads, nodes], "train")
    assert_silenced_probes_give_the_matrices(matrices, probes, activations, labels)
    # the forward pass of `matrix --data` re-taps `LAYER:head` and views it the same way
    forward = tmp_path / "vit.forward.h5"
    run_matrix(trained_vit.output, probes, forward, MatrixConfig(device="cpu"), data_spec="digits")
    with h5py.File(matrices, "r") as stored, h5py.File(forward, "r") as computed:
        for name in (heads, nodes):
            np.testing.assert_allclose(
                computed["layers"][name]["matrix"][()],
                stored["layers"][name]["matrix"][()],
                rtol=1e-4,
                atol=1e-6,
            )


# --- the probe file ---------------------------------------------------------------------------


def test_probe_file_contents(
    probe_result: ProbeResult,
    probes_path: Path,
    checkpoint_path: Path,
    trained: TrainResult,
    tiny_probe: ProbeConfig,
    features: Features,
) -> None:
    names = ["features.2", "features.10", "classifier.1"]
    assert [t.name for t in probe_result.taps] == names
    shapes = {"features.2": (10, 8, 1024), "features.10": (10, 16, 64), "classifier.1": (10, 16, 1)}
    tensors = read_tensors(probes_path)
    expected_keys = {"count/train", "count/test"}
    for name in names:
        expected_keys |= {f"probe/{name}", f"mean/train/{name}", f"mean/test/{name}"}
    assert set(tensors) == expected_keys
    for name, shape in shapes.items():
        for prefix in ("probe", "mean/train", "mean/test"):
            assert tuple(tensors[f"{prefix}/{name}"].shape) == shape
            assert tensors[f"{prefix}/{name}"].dtype == torch.float32
    for split in ("train", "test"):
        labels = features[split][1]
        assert tensors[f"count/{split}"].tolist() == torch.bincount(labels, minlength=10).tolist()
    assert int(tensors["count/train"].sum()) == 1438 and int(tensors["count/test"].sum()) == 359

    metadata = read_probe_metadata(probes_path)
    assert metadata["kind"] == "probes" and metadata["mode"] == "cached"
    assert metadata["checkpoint"]["sha256"] == sha256_file(checkpoint_path)
    assert metadata["checkpoint"]["path"] == str(checkpoint_path)
    assert metadata["provenance"]["inputs"]["checkpoint"]["sha256"] == sha256_file(checkpoint_path)
    assert metadata["config"] == config_to_dict(tiny_probe)
    assert metadata["class_names"] == [str(i) for i in range(10)]
    assert metadata["data"]["train"]["spec"] == "digits"
    assert metadata["data"]["test"]["samples"] == 359
    assert metadata["model_accuracy"]["test"] == pytest.approx(trained.final_accuracy)
    assert probe_result.model_accuracy == pytest.approx(trained.final_accuracy)
    taps = {tap["name"]: tap for tap in metadata["taps"]}
    assert list(taps) == names
    for result in probe_result.taps:
        tap = taps[result.name]
        assert tap["train_accuracy"] == result.train_accuracy
        assert tap["test_accuracy"] == result.test_accuracy
        assert 0.5 < tap["test_accuracy"] <= 1.0  # 5 epochs already beat chance (0.1) by far
        assert (tap["units"], tap["positions"]) == shapes[result.name][1:]
        assert tap["tap_input"] is False
    assert taps["classifier.1"]["unit"] == "node" and taps["features.2"]["unit"] == "channel"


def test_class_means_equal_a_hand_computation(probes_path: Path, features: Features) -> None:
    tensors = read_tensors(probes_path)
    for split, (activations, labels) in features.items():
        for name, values in activations.items():
            expected = class_means(values.double(), labels, 10).float()
            torch.testing.assert_close(
                tensors[f"mean/{split}/{name}"], expected, rtol=1e-5, atol=1e-6
            )


def test_streamed_features_give_the_cached_probes(
    checkpoint_path: Path,
    probe_result: ProbeResult,
    probes_path: Path,
    tiny_probe: ProbeConfig,
    tmp_path: Path,
) -> None:
    output = tmp_path / "streamed.safetensors"
    config = dataclasses.replace(tiny_probe, memory_budget="1KiB")
    streamed = run_probe(checkpoint_path, [t.name for t in probe_result.taps], output, config)
    assert streamed.mode == "streamed" and read_probe_metadata(output)["mode"] == "streamed"
    cached_tensors, streamed_tensors = read_tensors(probes_path), read_tensors(output)
    assert set(cached_tensors) == set(streamed_tensors)
    for key, value in cached_tensors.items():
        torch.testing.assert_close(streamed_tensors[key], value, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(streamed.taps, probe_result.taps, strict=True):
        assert mine.name == theirs.name
        assert mine.train_accuracy == pytest.approx(theirs.train_accuracy, abs=1e-5)
        assert mine.test_accuracy == pytest.approx(theirs.test_accuracy, abs=1e-5)


def test_probing_a_modules_input_equals_probing_the_previous_output(
    checkpoint_path: Path,
    probes_path: Path,
    tiny_probe: ProbeConfig,
    tmp_path: Path,
) -> None:
    # features.3 (max-pool) reads features.2 (ReLU): the same features, so the same means.
    output = tmp_path / "inputs.safetensors"
    config = dataclasses.replace(tiny_probe, tap_input=True)
    result = run_probe(checkpoint_path, ["features.3"], output, config)
    assert [t.name for t in result.taps] == ["features.3@input"]
    tensors, reference = read_tensors(output), read_tensors(probes_path)
    assert set(tensors) == {
        "probe/features.3@input",
        "mean/train/features.3@input",
        "mean/test/features.3@input",
        "count/train",
        "count/test",
    }
    assert tensors["probe/features.3@input"].shape == reference["probe/features.2"].shape
    for prefix in ("mean/train", "mean/test"):
        torch.testing.assert_close(
            tensors[f"{prefix}/features.3@input"],
            reference[f"{prefix}/features.2"],
            rtol=1e-5,
            atol=1e-6,
        )
    (tap,) = read_probe_metadata(output)["taps"]
    assert (tap["name"], tap["layer"], tap["tap_input"]) == ("features.3@input", "features.3", True)


def test_a_layers_probe_does_not_depend_on_the_layers_probed_with_it(
    checkpoint_path: Path, probes_path: Path, tiny_probe: ProbeConfig, tmp_path: Path
) -> None:
    alone = tmp_path / "alone.safetensors"
    run_probe(checkpoint_path, ["features.10"], alone, tiny_probe)
    torch.testing.assert_close(
        read_tensors(alone)["probe/features.10"],
        read_tensors(probes_path)["probe/features.10"],
        rtol=1e-5,
        atol=1e-6,
    )


# --- layer accuracy ---------------------------------------------------------------------------


def test_layer_accuracy_of_the_last_conv_block_matches_the_model_on_digits(
    tmp_path: Path,
) -> None:
    # cosine decay settles the last epoch: with a constant step the final test accuracy swings
    # by several points from machine to machine (AVX-512 VNNI vs not), and the probe with it
    config = TrainConfig(
        epochs=4, batch_size=32, learning_rate=0.05, flip=False, device="cpu", schedule="cosine"
    )
    checkpoint = tmp_path / "tiny_vgg.safetensors"
    trained = run_train("tiny_vgg", "digits", checkpoint, config)
    assert trained.final_accuracy > 0.9
    result = run_probe(
        checkpoint, ["features.10"], tmp_path / "probes.safetensors", ProbeConfig(device="cpu")
    )
    (tap,) = result.taps
    assert result.model_accuracy == pytest.approx(trained.final_accuracy)
    assert abs(tap.test_accuracy - result.model_accuracy) <= 0.05


@pytest.mark.long
def test_layer_accuracy_of_the_last_conv_block_matches_the_model_on_cifar10(
    cifar_npz: Path, tmp_path: Path
) -> None:
    # 4,000 training and 1,000 test images of the real CIFAR-10 test set; tiny_vgg reaches
    # ~0.5 in 10 epochs (~16 s on one CPU thread), the default probe recipe takes ~6 s.
    with np.load(cifar_npz) as archive:
        images, labels, names = (archive[k][:5000] for k in ("images", "labels", "class_names"))
    test = np.arange(5000) >= 4000
    subset = tmp_path / "cifar10_5k.npz"
    np.savez(subset, images=images, labels=labels, class_names=names, test=test)
    config = TrainConfig(
        epochs=10, batch_size=32, learning_rate=0.02, lr_step=3, lr_decay=0.5, device="cpu"
    )
    checkpoint = tmp_path / "tiny_vgg.safetensors"
    trained = run_train("tiny_vgg", f"npz:{subset}", checkpoint, config)
    assert trained.final_accuracy > 0.4  # chance is 0.1
    result = run_probe(
        checkpoint, ["features.10"], tmp_path / "probes.safetensors", ProbeConfig(device="cpu")
    )
    (tap,) = result.taps
    assert result.model_accuracy == pytest.approx(trained.final_accuracy)
    assert abs(tap.test_accuracy - result.model_accuracy) <= 0.05


# --- the command ------------------------------------------------------------------------------


def test_probe_errors(checkpoint_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "probes.safetensors"
    assert_one_error(
        invoke("probe", checkpoint_path, "--layer", "nope", "-o", out),
        "the model has no layer 'nope'; run `snptool layers CHECKPOINT` to list them.",
    )
    assert_one_error(
        invoke("probe", checkpoint_path, "--layer", "features.2,featurs.6", "-o", out),
        contains="the model has no layer 'featurs.6'; did you mean features.6",
    )
    for flags in ([], ["--all", "--layer", "features.2"]):
        assert_one_error(
            invoke("probe", checkpoint_path, *flags, "-o", out),
            "give either --layer NAME (repeatable) or --all.",
        )
    assert_one_error(
        invoke("probe", checkpoint_path, "--all", "--memory-budget", "lots", "-o", out),
        "memory size 'lots' is not a size like 4GiB, 512MiB or 2e9.",
    )
    assert_one_error(
        invoke("probe", checkpoint_path, "--layer", "features.2:node", "-o", out),
        contains="read it as channel, not node",
    )
    assert not out.exists() and part_files(tmp_path) == []

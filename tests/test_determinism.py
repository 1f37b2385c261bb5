"""The same seed gives bit-identical outputs on CPU for train, probe, matrix, clusters and prune.

Each step runs twice into two folders; tensors and HDF5 datasets must match byte for byte and
the metadata must match except the provenance time and measured speeds (VOLATILE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from safetensors import safe_open

from snptool.analysis.clusters import run_clusters
from snptool.analysis.matrix import run_matrix
from snptool.analysis.probe import run_probe
from snptool.config import (
    ClustersConfig,
    FinetuneConfig,
    MatrixConfig,
    ProbeConfig,
    PruneConfig,
    TrainConfig,
)
from snptool.pruning.prune import run_prune
from snptool.training.train import run_train

# Leaves that may differ between two identical runs: wall-clock time and speeds.
VOLATILE = {"time", "seconds", "images_per_second", "timings"}
LAYERS = ["features.2", "features.6", "features.10", "classifier.1"]
TRAIN = TrainConfig(epochs=2, batch_size=32, learning_rate=0.05, device="cpu", seed=3)
PROBE = ProbeConfig(epochs=3, device="cpu", seed=3)
PRUNE = PruneConfig(finetune=FinetuneConfig(epochs=1, augment=True), device="cpu", seed=3)


def differing_leaves(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths of the leaves where two JSON documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [p for k in keys for p in differing_leaves(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for x, y in zip(a, b, strict=True) for p in differing_leaves(x, y, path)]
    return [] if a == b else [path]


def assert_same_metadata(a: dict, b: dict, folders: tuple[Path, Path]) -> None:
    texts = [json.dumps(document) for document in (a, b)]
    for folder in folders:
        texts = [text.replace(str(folder), "RUN") for text in texts]
    leaves = differing_leaves(*map(json.loads, texts))
    unexpected = [p for p in leaves if not set(p.split("/")) & VOLATILE]
    assert unexpected == [], unexpected


def safetensors_content(path: Path) -> tuple[dict[str, bytes], dict]:
    with safe_open(str(path), framework="numpy") as handle:
        tensors = {k: handle.get_tensor(k).tobytes() for k in handle.keys()}  # noqa: SIM118
        return tensors, json.loads(handle.metadata()["snptool"])


def assert_same_safetensors(a: Path, b: Path) -> None:
    tensors_a, metadata_a = safetensors_content(a)
    tensors_b, metadata_b = safetensors_content(b)
    assert tensors_a.keys() == tensors_b.keys()
    different = [k for k in tensors_a if tensors_a[k] != tensors_b[k]]
    assert different == [], different
    assert_same_metadata(metadata_a, metadata_b, (a.parent, b.parent))


def hdf5_content(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    datasets: dict[str, bytes] = {}
    attrs: dict[str, Any] = {}

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            datasets[name] = np.ascontiguousarray(item[()]).tobytes()
        for key, value in item.attrs.items():
            if key in ("DIMENSION_LIST", "REFERENCE_LIST"):
                continue  # object references: their addresses, not content
            attrs[f"{name}@{key}"] = value

    with h5py.File(path, "r") as handle:
        visit("", handle)
        handle.visititems(visit)
    return datasets, attrs


def assert_same_hdf5(a: Path, b: Path) -> None:
    datasets_a, attrs_a = hdf5_content(a)
    datasets_b, attrs_b = hdf5_content(b)
    assert datasets_a.keys() == datasets_b.keys()
    assert [k for k in datasets_a if datasets_a[k] != datasets_b[k]] == []
    assert attrs_a.keys() == attrs_b.keys()
    for key, value in attrs_a.items():
        other = attrs_b[key]
        if key.endswith("@snptool"):
            assert_same_metadata(json.loads(value), json.loads(other), (a.parent, b.parent))
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, other), key
        else:
            assert value == other, key


@pytest.fixture(scope="module")
def twice(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every step run twice, each run in its own folder, from the same inputs."""
    folders = tmp_path_factory.mktemp("run_a"), tmp_path_factory.mktemp("run_b")
    outputs: dict[str, list[Path]] = {step: [] for step in ("train", "probe", "matrix")}
    outputs |= {"clusters": [], "prune": []}
    shared = folders[0]
    for folder in folders:
        outputs["train"].append(
            Path(run_train("tiny_vgg", "digits", folder / "m.safetensors", TRAIN).output)
        )
    checkpoint = outputs["train"][0]
    for folder in folders:
        outputs["probe"].append(
            Path(run_probe(checkpoint, LAYERS, folder / "p.safetensors", PROBE).output)
        )
    probes = outputs["probe"][0]
    config = MatrixConfig(device="cpu")
    for folder in folders:
        outputs["matrix"].append(
            Path(run_matrix(checkpoint, probes, folder / "x.h5", config).output)
        )
    matrices = outputs["matrix"][0]
    for folder in folders:
        output = folder / "c.h5"
        outputs["clusters"].append(
            Path(run_clusters(matrices, ClustersConfig(), output=output).output)
        )
    clusters = outputs["clusters"][0]
    for folder in folders:
        outputs["prune"].append(
            Path(run_prune(checkpoint, clusters, folder / "q.safetensors", PRUNE).output)
        )
    assert shared.exists()
    return {step: (paths[0], paths[1]) for step, paths in outputs.items()}


@pytest.mark.parametrize("step", ["train", "probe", "prune"])
def test_safetensors_outputs_are_bit_identical(twice, step: str) -> None:
    assert_same_safetensors(*twice[step])


@pytest.mark.parametrize("step", ["matrix", "clusters"])
def test_hdf5_outputs_are_bit_identical(twice, step: str) -> None:
    assert_same_hdf5(*twice[step])


def test_best_checkpoints_are_bit_identical(twice) -> None:
    a, b = twice["train"]
    assert_same_safetensors(a.with_name("m.best.safetensors"), b.with_name("m.best.safetensors"))


def test_the_comparison_sees_a_different_seed(twice, tmp_path: Path) -> None:
    """A third run with another seed differs, so the checks above can fail."""
    other = run_train(
        "tiny_vgg", "digits", tmp_path / "m.safetensors", TrainConfig(**{**vars(TRAIN), "seed": 4})
    )
    with pytest.raises(AssertionError):
        assert_same_safetensors(twice["train"][0], Path(other.output))

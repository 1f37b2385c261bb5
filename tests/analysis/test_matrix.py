"""Single-unit matrices: the contraction, chunking, splits, the forward-pass path and the
HDF5 schema (METHODS.md §5)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from snptool.analysis.matrix import run_matrix, unit_matrices
from snptool.analysis.probe import ProbeResult, run_probe
from snptool.config import MatrixConfig, ProbeConfig
from snptool.core.files import sha256_file
from snptool.core.taps import UNIT_KINDS, UnitKind
from snptool.errors import InputFileError
from tests.conftest import assert_one_error, invoke, part_files

CPU = MatrixConfig(device="cpu")


def read_matrices(path: Path) -> dict[str, np.ndarray]:
    """The matrices by tap, in the order they were written (the groups' `order` attribute)."""
    with h5py.File(path, "r") as handle:
        groups = sorted(handle["layers"].values(), key=lambda group: group.attrs["order"])
        return {group.name.rsplit("/", 1)[1]: group["matrix"][()] for group in groups}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def assert_same_matrices(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)
    for name, matrix in expected.items():
        scale = float(np.abs(matrix).max())
        torch.testing.assert_close(
            torch.from_numpy(actual[name]), torch.from_numpy(matrix), rtol=1e-4, atol=1e-6 * scale
        )


@pytest.fixture(scope="module")
def train_matrices(
    checkpoint_path: Path, probes_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The default run: train split, means from the probe file."""
    output = tmp_path_factory.mktemp("matrix") / "matrices.h5"
    run_matrix(checkpoint_path, probes_path, output, CPU)
    return output


def test_unit_matrices_equal_a_per_unit_per_sample_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    classes, units, positions, samples = 4, 3, 5, 37
    weights = torch.randn(classes, units, positions, generator=generator, dtype=torch.float64)
    activations = torch.randn(samples, units, positions, generator=generator, dtype=torch.float64)
    labels = torch.arange(samples) % classes
    w, a, y = weights.numpy(), activations.numpy(), labels.numpy()
    naive = np.zeros((units, classes, classes))
    for u in range(units):
        for c in range(classes):
            members = [x for x in range(samples) if y[x] == c]
            for x in members:
                for k in range(classes):
                    h = sum(w[k, u, p] * a[x, u, p] for p in range(positions))  # h[u, k](x)
                    naive[u, c, k] += h / len(members)
    means = torch.stack([activations[labels == c].mean(0) for c in range(classes)])
    computed = unit_matrices(weights, means)
    assert computed.shape == (units, classes, classes)
    torch.testing.assert_close(computed, torch.from_numpy(naive), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(computed, computed.transpose(1, 2))  # rows and columns differ


def test_chunked_equals_unchunked(
    checkpoint_path: Path, probes_path: Path, train_matrices: Path, tmp_path: Path
) -> None:
    output = tmp_path / "chunked.h5"
    result = run_matrix(
        checkpoint_path, probes_path, output, MatrixConfig(device="cpu", units_per_chunk=1)
    )
    assert [x.layer for x in result.layers] == ["features.2", "features.10", "classifier.1"]
    chunked, whole = read_matrices(output), read_matrices(train_matrices)
    assert_same_matrices(chunked, whole)


def test_matrices_are_the_probe_contracted_with_the_class_means(
    probes_path: Path, train_matrices: Path
) -> None:
    tensors = read_tensors(probes_path)
    for name, matrix in read_matrices(train_matrices).items():
        expected = unit_matrices(tensors[f"probe/{name}"], tensors[f"mean/train/{name}"])
        torch.testing.assert_close(torch.from_numpy(matrix), expected)


def test_split_all_is_the_count_weighted_combination(
    checkpoint_path: Path, probes_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "all.h5"
    result = run_matrix(checkpoint_path, probes_path, output, MatrixConfig("all", device="cpu"))
    assert {x.samples for x in result.layers} == {1797}
    assert {x.source for x in result.layers} == {"probe file"}
    tensors = read_tensors(probes_path)
    train, test = tensors["count/train"].double(), tensors["count/test"].double()
    expected = {}
    for name in read_matrices(output):
        means = (
            tensors[f"mean/train/{name}"].double() * train[:, None, None]
            + tensors[f"mean/test/{name}"].double() * test[:, None, None]
        ) / (train + test)[:, None, None]
        expected[name] = unit_matrices(tensors[f"probe/{name}"].double(), means).float().numpy()
    assert_same_matrices(read_matrices(output), expected)

    # the same means from one forward pass over all the data
    forward = tmp_path / "all_forward.h5"
    result = run_matrix(
        checkpoint_path, probes_path, forward, MatrixConfig("all", device="cpu"), data_spec="digits"
    )
    assert {x.source for x in result.layers} == {"forward pass"}
    assert_same_matrices(read_matrices(forward), expected)


@pytest.mark.parametrize("split", ["train", "test"])
def test_forward_pass_equals_the_probe_file(
    split: str, checkpoint_path: Path, probes_path: Path, tmp_path: Path
) -> None:
    config = MatrixConfig(split, device="cpu")
    stored, forward = tmp_path / "stored.h5", tmp_path / "forward.h5"
    from_file = run_matrix(checkpoint_path, probes_path, stored, config)
    from_data = run_matrix(checkpoint_path, probes_path, forward, config, data_spec="digits")
    assert {x.source for x in from_file.layers} == {"probe file"}
    assert {x.source for x in from_data.layers} == {"forward pass"}
    assert [x.samples for x in from_data.layers] == [x.samples for x in from_file.layers]
    assert from_file.layers[0].samples == {"train": 1438, "test": 359}[split]
    assert_same_matrices(read_matrices(forward), read_matrices(stored))


def test_forward_pass_of_input_taps_and_other_unit_kinds(
    checkpoint_path: Path, tiny_probe: ProbeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tap names carry "@input" and a ":unit" suffix; the forward pass must re-tap them exactly.
    pairs = UnitKind(
        "pairs",
        "two channels",
        lambda module, s: s[1] // 2 if len(s) == 4 else None,
        lambda x, units: x.reshape(len(x), units, -1),
    )
    monkeypatch.setitem(UNIT_KINDS, "pairs", pairs)
    probes = tmp_path / "inputs.safetensors"
    config = dataclasses.replace(tiny_probe, epochs=1, tap_input=True)
    run_probe(checkpoint_path, ["features.3", "features.3:pairs", "classifier.0"], probes, config)
    stored, forward = tmp_path / "stored.h5", tmp_path / "forward.h5"
    run_matrix(checkpoint_path, probes, stored, CPU)
    run_matrix(checkpoint_path, probes, forward, CPU, data_spec="digits")
    matrices = read_matrices(forward)
    assert list(matrices) == ["features.3@input", "features.3@input:pairs", "classifier.0@input"]
    assert matrices["features.3@input:pairs"].shape == (4, 10, 10)
    assert matrices["classifier.0@input"].shape == (256, 10, 10)
    assert_same_matrices(matrices, read_matrices(stored))


def test_only_the_named_layers(checkpoint_path: Path, probes_path: Path, tmp_path: Path) -> None:
    output = tmp_path / "one.h5"
    result = run_matrix(checkpoint_path, probes_path, output, CPU, layers=["features.10"])
    assert [x.layer for x in result.layers] == ["features.10"]
    assert list(read_matrices(output)) == ["features.10"]
    twice = run_matrix(
        checkpoint_path, probes_path, tmp_path / "twice.h5", CPU, layers=["features.10"] * 2
    )
    assert [x.layer for x in twice.layers] == ["features.10"]
    with pytest.raises(InputFileError, match="has no probe for 'features.6'; it has features.2"):
        run_matrix(checkpoint_path, probes_path, tmp_path / "x.h5", CPU, layers=["features.6"])
    assert not (tmp_path / "x.h5").exists()


def test_another_checkpoint_is_refused(
    checkpoint_path: Path, probes_path: Path, tmp_path: Path
) -> None:
    # Same weights, other metadata: another file, so the probes do not belong to it.
    with safe_open(str(checkpoint_path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        header = handle.metadata()
    metadata = json.loads(header["snptool"])
    metadata["note"] = "a copy"
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={**header, "snptool": json.dumps(metadata)})
    output = tmp_path / "x.h5"
    for data_spec in (None, "digits"):  # means from the probe file, or from a forward pass
        with pytest.raises(InputFileError, match="was made from another checkpoint than"):
            run_matrix(other, probes_path, output, CPU, data_spec=data_spec)
    with pytest.raises(InputFileError, match="checkpoint .*absent.safetensors does not exist"):
        run_matrix(tmp_path / "absent.safetensors", probes_path, output, CPU)
    assert not output.exists()


def test_hdf5_schema(
    train_matrices: Path, probes_path: Path, checkpoint_path: Path, probe_result: ProbeResult
) -> None:
    accuracy = {t.name: t.test_accuracy for t in probe_result.taps}
    units = {"features.2": (8, 1024), "features.10": (16, 64), "classifier.1": (16, 1)}
    with h5py.File(train_matrices, "r") as handle:
        names = [n.decode() if isinstance(n, bytes) else n for n in handle.attrs["class_names"]]
        assert names == [str(i) for i in range(10)]
        metadata = json.loads(handle.attrs["snptool"])
        assert metadata["checkpoint"]["sha256"] == sha256_file(checkpoint_path)
        assert metadata["probes"]["sha256"] == sha256_file(probes_path)
        assert metadata["split"] == "train" and metadata["data"] == "digits"
        assert metadata["config"]["split"] == "train"
        assert handle["true_label"][()].tolist() == list(range(10))
        assert handle["output_label"][()].tolist() == list(range(10))
        assert sorted(handle["layers"]) == sorted(units)
        for order, (name, (count, positions)) in enumerate(units.items()):
            group = handle["layers"][name]
            assert group.attrs["order"] == order
            matrix = group["matrix"]
            assert matrix.shape == (count, 10, 10) and matrix.dtype == np.float32
            attrs = dict(matrix.attrs)
            assert attrs["unit"] == ("node" if name.startswith("classifier") else "channel")
            assert (attrs["units"], attrs["positions"]) == (count, positions)
            assert attrs["split"] == "train" and attrs["samples"] == 1438
            assert attrs["accuracy"] == pytest.approx(accuracy[name])
            assert attrs["layer"] == name
            assert matrix.dims[0][0].name == f"/layers/{name}/unit"
            assert matrix.dims[1][0].name == "/true_label"
            assert matrix.dims[2][0].name == "/output_label"
            assert [d.label for d in matrix.dims] == ["unit", "true_label", "output_label"]
            assert group["unit"][()].tolist() == list(range(count))
            assert np.isfinite(matrix[()]).all() and np.abs(matrix[()]).max() > 0


# --- the command ------------------------------------------------------------------------------


def test_matrix_errors(checkpoint_path: Path, probes_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "matrices.h5"
    assert_one_error(
        invoke("matrix", checkpoint_path, checkpoint_path, "-o", out),
        f"{checkpoint_path} is not a probe file but a checkpoint; make one with `snptool probe`.",
    )
    assert_one_error(
        invoke("matrix", checkpoint_path, probes_path, "--layer", "features.6", "-o", out),
        f"{probes_path} has no probe for 'features.6'; "
        "it has features.2, features.10, classifier.1.",
    )
    assert_one_error(
        invoke("matrix", checkpoint_path, probes_path, "--split", "val", "-o", out),
        "unknown split 'val'; use one of train, test, all.",
    )
    absent = tmp_path / "absent.safetensors"
    assert_one_error(
        invoke("matrix", checkpoint_path, absent, "-o", out),
        f"probe file {absent} does not exist; check the path.",
    )
    assert_one_error(
        invoke("matrix", absent, probes_path, "-o", out),
        f"checkpoint {absent} does not exist; check the path.",
    )
    assert not out.exists() and part_files(tmp_path) == []

"""Clusters, noise and SNR on hand-built matrices, and their place in the matrix file
(METHODS.md §6)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from snptool.analysis.clusters import (
    UnitClusters,
    find_clusters,
    layer_statistics,
    run_clusters,
    run_unit_report,
    unit_clusters,
)
from snptool.config import ClustersConfig
from snptool.core.files import sha256_file
from snptool.core.matrix_file import LayerClusters, read_layer_clusters
from snptool.errors import LayerError, UsageError
from tests.conftest import assert_ok, assert_one_error, invoke

FIELDS = (
    "count",
    "labels",
    "signal",
    "noise",
    "maximum",
    "members",
    "cluster_offsets",
    "unit_offsets",
)


def marks(size: int, pairs: list[tuple[int, int]], diagonal: list[int]) -> np.ndarray:
    """A boolean [C, C] matrix marked on `diagonal` and symmetrically on `pairs`."""
    marked = np.zeros((size, size), dtype=bool)
    for j in diagonal:
        marked[j, j] = True
    for i, j in pairs:
        marked[i, j] = marked[j, i] = True
    return marked


def square(size: int, clusters: list[list[int]], value: float = 1.0) -> np.ndarray:
    """A float [C, C] matrix with `value` on every cluster's square, small values elsewhere."""
    matrix = np.full((size, size), 0.05)
    for cluster in clusters:
        matrix[np.ix_(cluster, cluster)] = value
    return matrix


# --- the greedy squares ------------------------------------------------------------------------


def test_disjoint_squares() -> None:
    marked = marks(7, [(0, 1), (3, 4), (3, 5), (4, 5)], [0, 1, 3, 4, 5, 6])
    assert find_clusters(marked) == [[0, 1], [3, 4, 5], [6]]


def test_greedy_order_smallest_label_first_then_ascending_scan() -> None:
    # 0 fits with 2 and with 3, but 2 and 3 do not fit together: the ascending scan takes 2.
    marked = marks(4, [(0, 2), (0, 3), (1, 3)], [0, 1, 2, 3])
    assert find_clusters(marked) == [[0, 2], [1, 3]]
    # A chain 0–1–2: 0 takes 1, so 2 stays alone although 1–2 is a square too.
    assert find_clusters(marks(3, [(0, 1), (1, 2)], [0, 1, 2])) == [[0, 1], [2]]
    # Label 0 is not a candidate (its diagonal is unmarked), so 1 starts the first cluster.
    assert find_clusters(marks(3, [(0, 1), (1, 2)], [1, 2])) == [[1, 2]]


def test_a_square_needs_both_directions_and_every_pair() -> None:
    one_way = marks(3, [], [0, 1, 2])
    one_way[0, 1] = True  # row 0 → column 1 only
    assert find_clusters(one_way) == [[0], [1], [2]]
    # 0–1, 0–2 and 1–2 marked, but 1–3 missing: {0, 1, 2} then {3}.
    marked = marks(4, [(0, 1), (0, 2), (1, 2), (0, 3), (2, 3)], [0, 1, 2, 3])
    assert find_clusters(marked) == [[0, 1, 2], [3]]


def test_singletons_signal_and_noise() -> None:
    result = unit_clusters(np.eye(5) * 3.0, 0.3)
    assert result.clusters == [[0], [1], [2], [3], [4]]
    assert (result.signal, result.noise, result.maximum) == (5, 0, 3.0)

    matrix = square(5, [[0, 1], [3]])
    matrix[4, 0] = 0.5  # off-diagonal marks outside any cluster are noise
    matrix[2, 3] = 0.9
    matrix[1, 1] = 2.0  # the maximum: the rest is normalised by 2
    result = unit_clusters(matrix, 0.3)
    assert result.clusters == [[0, 1], [3]]
    assert result.signal == 2**2 + 1**2
    assert result.noise == 1  # 0.9 / 2 > 0.3 but 0.5 / 2 is not
    assert result.maximum == 2.0


def test_units_whose_maximum_is_not_positive_have_nothing() -> None:
    negative = -np.ones((4, 4)) - np.eye(4)
    for matrix in (negative, np.zeros((4, 4))):
        result = unit_clusters(matrix, 0.3)
        assert (result.clusters, result.signal, result.noise) == ([], 0, 0)
    assert unit_clusters(negative, 0.0).maximum == -1.0


def test_threshold_is_strict() -> None:
    matrix = np.zeros((3, 3))
    matrix[0, 0] = 2.0
    matrix[1, 1] = 0.6  # exactly 0.3 × 2.0
    matrix[2, 2] = np.nextafter(0.6, 1.0)  # just above
    assert unit_clusters(matrix, 0.3).clusters == [[0], [2]]
    half = np.diag([4.0, 2.0, 2.5]).astype(np.float32)  # float32, as read from the file
    assert unit_clusters(half, 0.5).clusters == [[0], [2]]
    assert unit_clusters(half, 0.0).clusters == [[0], [1], [2]]


# --- layer figures and the flat layout ----------------------------------------------------------


def example_units() -> list[UnitClusters]:
    only_noise = np.zeros((4, 4))
    only_noise[0, 1] = 1.0  # positive maximum, nothing on the diagonal: noise without clusters
    matrices = [
        square(4, [[0, 1], [3]]),
        square(4, [[2]]),
        only_noise,
        -np.ones((4, 4)),
        square(4, [[0, 1, 2]]),
    ]
    matrices[0][2, 3] = matrices[0][3, 2] = 0.8  # two noise marks
    matrices[4][3, 0] = 0.7  # one noise mark
    units = [unit_clusters(matrix, 0.3) for matrix in matrices]
    expected = [
        ([[0, 1], [3]], 5, 2),
        ([[2]], 1, 0),
        ([], 0, 1),
        ([], 0, 0),
        ([[0, 1, 2]], 9, 1),
    ]
    assert [(u.clusters, u.signal, u.noise) for u in units] == expected
    return units


def test_layer_statistics() -> None:
    statistics = layer_statistics(LayerClusters.from_units(example_units()))
    with_clusters = 3  # units 0, 1, 4
    assert statistics["units"] == 5 and statistics["units_without_clusters"] == 2
    assert statistics["mean_cluster_size"] == pytest.approx((2 + 1 + 1 + 3) / 4)
    assert statistics["clusters_per_unit"] == pytest.approx((2 + 1 + 1) / with_clusters)
    assert statistics["labels_per_unit"] == pytest.approx((3 + 1 + 3) / with_clusters)
    assert statistics["noise_per_unit"] == pytest.approx((2 + 0 + 1) / with_clusters)
    assert statistics["signal_per_unit"] == pytest.approx((5 + 1 + 9) / with_clusters)
    assert statistics["snr"] == pytest.approx(15 / 3)  # mean signal / mean noise
    assert statistics["snr_labels"] == pytest.approx(7 / 3)
    assert statistics["all_units"] == pytest.approx(
        {
            "clusters_per_unit": 4 / 5,
            "labels_per_unit": 7 / 5,
            "noise_per_unit": 4 / 5,  # unit 2's noise counts here only
            "signal_per_unit": 15 / 5,
        }
    )


def test_snr_is_none_without_noise_or_clusters() -> None:
    clean = [unit_clusters(square(3, [[0, 1]]), 0.3), unit_clusters(np.eye(3), 0.3)]
    statistics = layer_statistics(LayerClusters.from_units(clean))
    assert statistics["noise_per_unit"] == 0 and statistics["snr"] is None
    assert statistics["snr_labels"] is None
    empty = layer_statistics(LayerClusters.from_units([unit_clusters(-np.eye(3), 0.3)]))
    assert empty["units_without_clusters"] == 1 and empty["snr"] is None
    assert math.isnan(empty["mean_cluster_size"]) and math.isnan(empty["clusters_per_unit"])
    assert empty["all_units"]["noise_per_unit"] == 0


def test_flat_arrays_round_trip() -> None:
    units = example_units()
    layer = LayerClusters.from_units(units)
    assert layer.count.tolist() == [2, 1, 0, 0, 1]
    assert layer.labels.tolist() == [3, 1, 0, 0, 3]
    assert layer.members.tolist() == [0, 1, 3, 2, 0, 1, 2]
    assert layer.cluster_offsets.tolist() == [0, 2, 3, 4, 7]
    assert layer.unit_offsets.tolist() == [0, 2, 3, 3, 3, 4]
    assert [layer.clusters_of(u) for u in range(5)] == [u.clusters for u in units]
    assert layer.label_sets() == [{0, 1, 3}, {2}, set(), set(), {0, 1, 2}]
    assert layer.maximum.tolist() == [1.0, 1.0, 1.0, -1.0, 1.0]


# --- the matrix file --------------------------------------------------------------------------


@pytest.fixture
def matrices(make_matrix_file: Callable[..., Path]) -> Path:
    """Two layers of hand-made matrices over the labels cat, dog, ship, truck."""
    conv = np.stack(
        [
            square(4, [[0, 1], [3]]),
            square(4, [[2]]),
            -np.ones((4, 4)),
            square(4, [[0, 1, 2]], value=2.0) + np.eye(4) * 0.5,  # maximum 2.5 on the diagonal
        ]
    )
    conv[1, 0, 3] = 0.5  # one noise mark at threshold 0.3
    fc = np.stack([np.eye(4), square(4, [[1, 2, 3]])])
    layers = {"conv": conv.astype(np.float32), "fc": fc.astype(np.float32)}
    return make_matrix_file(layers, ["cat", "dog", "ship", "truck"])


def test_run_clusters_writes_every_layer(matrices: Path) -> None:
    result = run_clusters(matrices, ClustersConfig(threshold=0.3))
    assert result.output == str(matrices)
    assert [row["layer"] for row in result.layers] == ["conv", "fc"]
    with h5py.File(matrices, "r") as handle:
        group = handle["layers/conv/clusters"]
        assert set(group) == set(FIELDS)
        assert group["count"][()].tolist() == [2, 1, 0, 1]
        assert group["members"][()].tolist() == [0, 1, 3, 2, 0, 1, 2]
        assert group["cluster_offsets"][()].tolist() == [0, 2, 3, 4, 7]
        assert group["unit_offsets"][()].tolist() == [0, 2, 3, 3, 4]
        assert group["signal"][()].tolist() == [5, 1, 0, 9]
        assert group["noise"][()].tolist() == [0, 1, 0, 0]
        assert group["maximum"][()].tolist() == [1.0, 1.0, -1.0, 2.5]
        assert group.attrs["threshold"] == 0.3
        statistics = json.loads(group.attrs["statistics"])
        assert handle["layers/fc/clusters/count"][()].tolist() == [4, 1]
    layer = LayerClusters(**{name: np.asarray(v) for name, v in read_clusters(matrices).items()})
    assert statistics == layer_statistics(layer)
    assert statistics["snr"] == pytest.approx(15.0)  # mean signal 15 / 3, mean noise 1 / 3
    assert result.layers[0] == {"layer": "conv", "accuracy": 0.5, **statistics}


def test_a_layer_without_clusters_stores_strict_json(
    make_matrix_file: Callable[..., Path],
) -> None:
    path = make_matrix_file({"dead": -np.ones((2, 3, 3), dtype=np.float32)}, ["a", "b", "c"])
    (row,) = run_clusters(path).layers
    assert row["units_without_clusters"] == 2 and math.isnan(row["mean_cluster_size"])
    with h5py.File(path, "r") as handle:
        text = handle["layers/dead/clusters"].attrs["statistics"]

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    statistics = json.loads(text, parse_constant=refuse)
    assert statistics["mean_cluster_size"] is None and statistics["snr"] is None
    assert statistics["all_units"]["clusters_per_unit"] == 0


def read_clusters(path: Path, tap: str = "conv") -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {name: value[()] for name, value in handle[f"layers/{tap}/clusters"].items()}


def test_rerun_replaces_the_clusters(matrices: Path) -> None:
    run_clusters(matrices, ClustersConfig(threshold=0.3))
    result = run_clusters(matrices, ClustersConfig(threshold=0.9))
    # at 0.9 unit 3's square (2.0 / 2.5 = 0.8) falls apart, unit 1's noise (0.5) goes
    assert result.layers[0]["snr"] is None
    clusters = read_clusters(matrices)
    assert clusters["count"].tolist() == [2, 1, 0, 3]
    assert clusters["members"].tolist() == [0, 1, 3, 2, 0, 1, 2]
    assert clusters["unit_offsets"].tolist() == [0, 2, 3, 3, 6]
    assert clusters["noise"].tolist() == [0, 0, 0, 0]
    with h5py.File(matrices, "r") as handle:
        assert handle["layers/conv/clusters"].attrs["threshold"] == 0.9
        assert list(handle["layers/conv"]) == ["clusters", "matrix", "unit"]
        assert read_layer_clusters(handle["layers/fc"]).clusters_of(1) == [[1, 2, 3]]


def test_output_copy_leaves_the_input_unchanged(matrices: Path, tmp_path: Path) -> None:
    digest = sha256_file(matrices)
    copy = tmp_path / "with_clusters.h5"
    result = run_clusters(matrices, output=copy)
    assert result.output == str(copy)
    assert sha256_file(matrices) == digest
    with h5py.File(matrices, "r") as handle:
        assert "clusters" not in handle["layers/conv"]
    assert read_clusters(copy)["count"].tolist() == [2, 1, 0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrices.h5", "with_clusters.h5"]


def test_unit_report(matrices: Path) -> None:
    report = run_unit_report(matrices, "conv", 3)
    assert report.clusters == [["cat", "dog", "ship"]]
    assert (report.signal, report.noise, report.maximum) == (9, 0, 2.5)
    assert run_unit_report(matrices, "conv", 3, ClustersConfig(0.9)).clusters == [
        ["cat"],
        ["dog"],
        ["ship"],
    ]
    with pytest.raises(UsageError, match="layer conv has units 0..3; --unit 4 is not one"):
        run_unit_report(matrices, "conv", 4)
    with pytest.raises(LayerError, match="the matrix file has no layer 'pool'; it has conv, fc"):
        run_unit_report(matrices, "pool", 0)
    with h5py.File(matrices, "r") as handle, pytest.raises(UsageError, match="no clusters yet"):
        read_layer_clusters(handle["layers/conv"])


def _brute_force_clusters(marked: np.ndarray) -> list[list[int]]:
    """METHODS.md §6 step 2 written literally: check the whole square for every candidate."""
    remaining = [int(j) for j in np.flatnonzero(np.diagonal(marked))]
    clusters = []
    while remaining:
        cluster = [remaining.pop(0)]
        for candidate in list(remaining):
            square = cluster + [candidate]
            if marked[np.ix_(square, square)].all():
                cluster.append(candidate)
                remaining.remove(candidate)
        clusters.append(cluster)
    return clusters


def test_find_clusters_equals_the_literal_rule_on_random_matrices() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        size = int(rng.integers(1, 13))
        marked = rng.random((size, size)) < rng.uniform(0.2, 0.95)
        assert find_clusters(marked) == _brute_force_clusters(marked)


# --- the command ------------------------------------------------------------------------------


def test_clusters_of_one_unit(named_matrices: Path) -> None:
    result = invoke("clusters", named_matrices, "--layer", "conv", "--unit", 1, "--json")
    assert_ok(result)
    payload = json.loads(result.stdout)
    assert payload["clusters"] == [["cat", "dog"], ["truck"]]
    assert (payload["layer"], payload["unit"], payload["signal"], payload["noise"]) == (
        "conv",
        1,
        5,
        0,
    )
    assert "cat, dog" in result.stderr and "truck" in result.stderr
    assert "ship" not in result.stderr
    assert "conv unit 1: maximum 1, signal 5, noise 0 (threshold 0.3)" in result.stderr


def test_clusters_errors(named_matrices: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    line = assert_one_error(invoke("clusters", corrupt), contains="is not a readable HDF5 file")
    assert line.startswith(f"error: {corrupt}") and line.endswith("it may be truncated.")

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(named_matrices.read_bytes()[:1000])
    assert_one_error(invoke("clusters", truncated), contains="is not a readable HDF5 file")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.zeros(3)
    assert_one_error(
        invoke("clusters", foreign),
        f"{foreign} is not an snptool matrix file; make one with `snptool matrix`.",
    )
    digest = sha256_file(named_matrices)
    assert_one_error(
        invoke("clusters", named_matrices, "--layer", "conv", "--unit", 3),
        "layer conv has units 0..2; --unit 3 is not one.",
    )
    assert_one_error(
        invoke("clusters", named_matrices, "--layer", "fc", "--unit", 0),
        "the matrix file has no layer 'fc'; it has conv.",
    )
    assert_one_error(
        invoke("clusters", named_matrices, "--unit", 0),
        "--unit and --layer go together: --layer NAME --unit N.",
    )
    assert_one_error(
        invoke("clusters", named_matrices, "--threshold", 1.5),
        "threshold must lie in [0, 1), not 1.5.",
    )
    assert sha256_file(named_matrices) == digest

"""`snptool clusters`: clusters, noise and SNR of every unit's matrix (METHODS.md §6).

For one unit: normalise the matrix by its maximum, mark elements strictly above the
threshold (a unit whose maximum is <= 0 has no clusters and no noise), then grow greedy
squares from the marked diagonal labels in ascending order. Signal = Σ |cluster|²,
noise = marked − signal. Written to /layers/<tap>/clusters/ of the matrix file:

    count [U]            clusters per unit          labels [U]   labels in clusters
    signal [U], noise [U], maximum [U]
    members [n]          the clusters' labels, concatenated (int32)
    cluster_offsets [K+1]  cluster k is members[cluster_offsets[k]:cluster_offsets[k+1]]
    unit_offsets [U+1]     unit u owns clusters unit_offsets[u]:unit_offsets[u+1]
    attrs: threshold, statistics (JSON of the layer figures)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snptool.config import ClustersConfig
from snptool.core import console
from snptool.core.files import check_output_path
from snptool.core.matrix_file import (
    LayerClusters,
    class_names,
    edit_matrix_file,
    layer_group,
    layer_names,
    open_matrix_file,
    read_units,
    write_layer_clusters,
)
from snptool.errors import UsageError

READ_BYTES = 64 * 2**20  # matrices read per step: 16 units at 1,000 labels


def find_clusters(marked: np.ndarray) -> list[list[int]]:
    """Greedy squares on a boolean [C, C] matrix, from the marked diagonal, ascending.

    The smallest remaining candidate starts a cluster; the others are scanned once in
    ascending order and join when the square on cluster ∪ {t} is all marked. Compatibility
    only shrinks as a cluster grows, so jumping to the next compatible candidate is the scan.
    """
    available = np.diagonal(marked).copy()
    clusters = []
    while available.any():
        first = int(np.argmax(available))
        available[first] = False
        cluster = [first]
        compatible = marked[first, :] & marked[:, first] & available
        while True:
            later = np.flatnonzero(compatible[cluster[-1] + 1 :])
            if not len(later):
                break
            candidate = cluster[-1] + 1 + int(later[0])
            cluster.append(candidate)
            available[candidate] = False
            compatible &= marked[candidate, :] & marked[:, candidate] & available
        clusters.append(cluster)
    return clusters


@dataclass(frozen=True)
class UnitClusters:
    clusters: list[list[int]]
    signal: int
    noise: int
    maximum: float


def unit_clusters(matrix: np.ndarray, threshold: float) -> UnitClusters:
    """The clusters, signal and noise of one unit's [C, C] matrix."""
    maximum = float(matrix.max())
    if not maximum > 0:
        return UnitClusters([], 0, 0, maximum)
    marked = matrix / maximum > threshold
    clusters = find_clusters(marked)
    signal = sum(len(c) ** 2 for c in clusters)
    return UnitClusters(clusters, signal, int(marked.sum()) - signal, maximum)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def layer_statistics(layer: LayerClusters) -> dict[str, Any]:
    """Per-layer figures (METHODS.md §6.5–6): averages over units with clusters, and over all."""
    with_clusters = layer.count > 0
    sizes = np.diff(layer.cluster_offsets)
    signal, noise = _mean(layer.signal[with_clusters]), _mean(layer.noise[with_clusters])
    labels = _mean(layer.labels[with_clusters])
    return {
        "units": int(len(layer.count)),
        "units_without_clusters": int((~with_clusters).sum()),
        "mean_cluster_size": _mean(sizes),
        "clusters_per_unit": _mean(layer.count[with_clusters]),
        "labels_per_unit": labels,
        "noise_per_unit": noise,
        "signal_per_unit": signal,
        "snr": _ratio(signal, noise),
        "snr_labels": _ratio(labels, noise),
        "all_units": {
            "clusters_per_unit": _mean(layer.count),
            "labels_per_unit": _mean(layer.labels),
            "noise_per_unit": _mean(layer.noise),
            "signal_per_unit": _mean(layer.signal),
        },
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    """SNR; None (JSON null) where the noise is 0 or nothing was measured."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


def cluster_layer(
    dataset, threshold: float, task: console.ProgressTask | None = None
) -> LayerClusters:
    """Clusters of every unit of an HDF5 [U, C, C] dataset, read a few units at a time."""
    units = []
    step = max(1, READ_BYTES // (4 * dataset.shape[1] * dataset.shape[2]))
    for start in range(0, dataset.shape[0], step):
        for matrix in read_units(dataset, start, start + step):
            units.append(unit_clusters(matrix, threshold))
        if task is not None:
            task.advance(min(step, dataset.shape[0] - start))
    return LayerClusters.from_units(units)


@dataclass(frozen=True)
class ClustersResult:
    output: str
    threshold: float
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return self.layers


def run_clusters(
    matrices_path: str | Path,
    config: ClustersConfig | None = None,
    *,
    output: str | Path | None = None,
) -> ClustersResult:
    """Find the clusters of every layer; write them into the matrix file (or a copy at `output`)."""
    config = config or ClustersConfig()
    destination = Path(output) if output else Path(matrices_path)
    if output:
        check_output_path(output, matrices_path)
    rows = []
    with edit_matrix_file(matrices_path, destination) as handle:
        for name in layer_names(handle):
            group = layer_group(handle, name)
            dataset = group["matrix"]
            with console.progress(f"clusters {name}", dataset.shape[0]) as task:
                layer = cluster_layer(dataset, config.threshold, task)
            statistics = layer_statistics(layer)
            write_layer_clusters(group, layer, config.threshold, statistics)
            rows.append(
                {
                    "layer": name,
                    "accuracy": float(dataset.attrs.get("accuracy", float("nan"))),
                    **statistics,
                }
            )
    return ClustersResult(str(destination), config.threshold, rows)


@dataclass(frozen=True)
class UnitReport:
    layer: str
    unit: int
    threshold: float
    clusters: list[list[str]]
    signal: int
    noise: int
    maximum: float

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def run_unit_report(
    matrices_path: str | Path, layer: str, unit: int, config: ClustersConfig | None = None
) -> UnitReport:
    """One unit's clusters, with class names, computed from its matrix."""
    config = config or ClustersConfig()
    with open_matrix_file(matrices_path) as handle:
        dataset = layer_group(handle, layer)["matrix"]
        if not 0 <= unit < dataset.shape[0]:
            raise UsageError(
                f"layer {layer} has units 0..{dataset.shape[0] - 1}; --unit {unit} is not one."
            )
        result = unit_clusters(dataset[unit], config.threshold)
        names = class_names(handle)
    clusters = [[names[j] for j in cluster] for cluster in result.clusters]
    return UnitReport(
        layer, unit, config.threshold, clusters, result.signal, result.noise, result.maximum
    )

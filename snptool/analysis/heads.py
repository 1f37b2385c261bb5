"""`snptool heads`: the labels each attention head serves, and how the heads share them.

Symmetry breaking (arXiv 2501.12900, 2506.23832; METHODS.md §7): every head becomes an expert
for a subset of the labels. For each head layer (unit kind `head`) of a matrix file that
`snptool clusters` has processed: Λ(h), the union of head h's clusters (METHODS.md §8); the
heads serving each label; the labels no head serves; the overlap of every two heads' label sets
and its mean over the pairs of heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snptool.config import HeadsConfig
from snptool.core.matrix_file import (
    LayerClusters,
    class_names,
    layer_group,
    layer_names,
    open_matrix_file,
    read_layer_clusters,
)
from snptool.errors import LayerError

HEAD_UNIT = "head"


def label_overlap(first: set[int], second: set[int], measure: str) -> float | None:
    """|A ∩ B| / |A ∪ B| (`jaccard`) or |A ∩ B| / min(|A|, |B|) (`coefficient`); None where
    that is 0 / 0 (an empty label set)."""
    shared = len(first & second)
    total = len(first | second) if measure == "jaccard" else min(len(first), len(second))
    return shared / total if total else None


def overlap_matrix(label_sets: list[set[int]], measure: str) -> list[list[float | None]]:
    """The h × h overlaps of the heads' label sets (symmetric; 1 on the diagonal)."""
    return [[label_overlap(a, b, measure) for b in label_sets] for a in label_sets]


def mean_overlap(overlaps: list[list[float | None]]) -> float | None:
    """The mean over the pairs of heads i < j whose overlap is defined (None if none is)."""
    pairs = [value for i, row in enumerate(overlaps) for value in row[i + 1 :] if value is not None]
    return sum(pairs) / len(pairs) if pairs else None


@dataclass(frozen=True)
class HeadLayerReport:
    """One head layer: its heads' clusters (label indices) and overlaps; `to_json` names the
    labels by class name."""

    layer: str
    module: str
    threshold: float
    accuracy: float
    measure: str
    class_names: list[str]
    clusters: list[list[list[int]]]  # head → clusters → labels
    overlap: list[list[float | None]]

    @property
    def label_sets(self) -> list[set[int]]:
        return [{j for cluster in head for j in cluster} for head in self.clusters]

    def label_heads(self) -> dict[str, list[int]]:
        """Each label (class name) → the heads whose label set holds it."""
        sets = self.label_sets
        return {
            name: [h for h, labels in enumerate(sets) if j in labels]
            for j, name in enumerate(self.class_names)
        }

    def to_json(self) -> dict[str, Any]:
        names, sets = self.class_names, self.label_sets
        label_heads = self.label_heads()
        return {
            "layer": self.layer,
            "module": self.module,
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "overlap_measure": self.measure,
            "heads": [
                {
                    "head": f"{self.module}:h{h}",
                    "labels": [names[j] for j in sorted(labels)],
                    "clusters": [[names[j] for j in cluster] for cluster in self.clusters[h]],
                }
                for h, labels in enumerate(sets)
            ],
            "label_heads": label_heads,
            "labels_without_heads": [name for name, heads in label_heads.items() if not heads],
            "labels_per_head": sum(map(len, sets)) / len(sets),
            "heads_per_label": sum(map(len, label_heads.values())) / len(names),
            "overlap": self.overlap,
            "mean_overlap": mean_overlap(self.overlap),
        }


@dataclass(frozen=True)
class HeadsResult:
    matrices: str
    layers: list[HeadLayerReport] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [layer.to_json() for layer in self.layers]


def head_layers(handle, path: str | Path, requested: list[str] | None) -> list[str]:
    """The requested layers (all head layers when None), each checked to be a head layer."""
    heads = [n for n in layer_names(handle) if _unit(handle, n) == HEAD_UNIT]
    if not heads:
        raise LayerError(
            f"{path} has no head layers; probe a HeadOutputs layer as LAYER:head "
            "(see `snptool layers CHECKPOINT`), then run matrix and clusters."
        )
    for name in requested or []:
        if _unit(handle, name) != HEAD_UNIT:
            raise LayerError(
                f"layer {name} of {path} holds {_unit(handle, name)} units, not heads; "
                f"its head layers are {', '.join(heads)}."
            )
    return list(dict.fromkeys(requested)) if requested else heads


def _unit(handle, name: str) -> str:
    return str(layer_group(handle, name)["matrix"].attrs.get("unit", ""))


def head_layer_report(name: str, group, names: list[str], config: HeadsConfig) -> HeadLayerReport:
    """The report of one head layer, from the clusters `snptool clusters` wrote."""
    found: LayerClusters = read_layer_clusters(group)
    matrix = group["matrix"]
    return HeadLayerReport(
        layer=name,
        module=str(matrix.attrs.get("layer", name)),
        threshold=float(group["clusters"].attrs["threshold"]),
        accuracy=float(matrix.attrs.get("accuracy", float("nan"))),
        measure=config.overlap,
        class_names=names,
        clusters=[found.clusters_of(h) for h in range(len(found.count))],
        overlap=overlap_matrix(found.label_sets(), config.overlap),
    )


def run_heads(
    matrices_path: str | Path,
    config: HeadsConfig | None = None,
    *,
    layers: list[str] | None = None,
) -> HeadsResult:
    """The head report of every head layer in a matrix file with clusters (or of `layers`)."""
    config = config or HeadsConfig()
    with open_matrix_file(matrices_path) as handle:
        names = class_names(handle)
        reports = [
            head_layer_report(name, layer_group(handle, name), names, config)
            for name in head_layers(handle, matrices_path, layers)
        ]
    return HeadsResult(str(matrices_path), reports)

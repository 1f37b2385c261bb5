"""The HDF5 file of single-unit matrices and clusters (schema in docs/file-formats.md).

    /                         attrs: snptool (JSON: provenance, checkpoint, data, split),
                              class_names, format_version
    /true_label, /output_label  [C] int32 dimension scales (attr class_names)
    /layers/<tap>/unit        [U] int32 dimension scale
    /layers/<tap>/matrix      [U, C, C] float32, rows = true label, columns = output label;
                              attrs unit, units, positions, split, samples, accuracy, layer
    /layers/<tap>/clusters/   written by `snptool clusters` (see analysis/clusters.py)

Plain h5py (or xarray with the h5netcdf engine) reads it without snptool.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import h5py
import numpy as np
from pydantic import Field

from snptool.core import console
from snptool.core.files import atomic_path, require_file, require_space, strict_json
from snptool.core.schema import (
    Count,
    FileReference,
    LenientRecord,
    Name,
    Record,
    check_class_names,
    record_problem,
    validate_record,
)
from snptool.errors import InputFileError, LayerError, UsageError, first_line

FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20


def create_matrix_file(handle: h5py.File, class_names: list[str], metadata: dict[str, Any]) -> None:
    """Root attributes and the two label dimension scales."""
    handle.attrs["format_version"] = FORMAT_VERSION
    handle.attrs["class_names"] = np.array(class_names, dtype=h5py.string_dtype())
    handle.attrs["snptool"] = json.dumps(metadata, sort_keys=True)
    for name in ("true_label", "output_label"):
        scale = handle.create_dataset(name, data=np.arange(len(class_names), dtype=np.int32))
        scale.attrs["class_names"] = np.array(class_names, dtype=h5py.string_dtype())
        scale.make_scale(name)
    handle.create_group("layers")


def create_layer(
    handle: h5py.File, name: str, units: int, classes: int, attrs: dict[str, Any]
) -> h5py.Dataset:
    """An empty [U, C, C] matrix dataset for one tap, chunked by whole units."""
    group = handle["layers"].create_group(name)
    unit_scale = group.create_dataset("unit", data=np.arange(units, dtype=np.int32))
    unit_scale.make_scale("unit")
    per_chunk = max(1, min(units, CHUNK_BYTES // (4 * classes * classes)))
    matrix = group.create_dataset(
        "matrix",
        shape=(units, classes, classes),
        dtype=np.float32,
        chunks=(per_chunk, classes, classes),
    )
    matrix.dims[0].attach_scale(unit_scale)
    matrix.dims[1].attach_scale(handle["true_label"])
    matrix.dims[2].attach_scale(handle["output_label"])
    for dim, label in enumerate(("unit", "true_label", "output_label")):
        matrix.dims[dim].label = label
    for key, value in attrs.items():
        matrix.attrs[key] = value
    return matrix


@contextmanager
def open_matrix_file(path: str | Path, mode: str = "r") -> Iterator[h5py.File]:
    """Open an existing matrix file, with one-line errors for missing or corrupt files."""
    path = require_file(path, "matrix file")
    try:
        handle = h5py.File(path, mode)
    except OSError as error:
        raise InputFileError(
            f"{path} is not a readable HDF5 file ({first_line(error)}); it may be truncated."
        ) from None
    with handle, _read_errors(path):
        if "layers" not in handle or "format_version" not in handle.attrs:
            raise InputFileError(
                f"{path} is not an snptool matrix file; make one with `snptool matrix`."
            )
        problem = schema_problem(handle)
        if problem:
            raise InputFileError(
                f"{path} is a damaged matrix file ({problem}); make it again with `snptool matrix`."
            )
        yield handle


@contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """HDF5 errors while reading an open file (a corrupt object or chunk) as one line."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as error:
        raise InputFileError(
            f"{path} cannot be read ({first_line(error)}); it is corrupt, so make it again."
        ) from error


class MatrixFileRecord(LenientRecord):
    """The root `snptool` attribute: what the matrices were computed from."""

    checkpoint: FileReference | None = None
    probes: FileReference | None = None
    split: Literal["train", "test", "all"] | None = None
    data: str | None = None


class LayerRecord(LenientRecord):
    """A layer's matrix attributes (create_layer)."""

    layer: Name | None = None
    unit: Name | None = None
    units: Count | None = None
    positions: Count | None = None
    samples: Annotated[int, Field(ge=0)] | None = None
    accuracy: float | None = None
    order: Annotated[int, Field(ge=0)] = 0


def schema_problem(handle: h5py.File) -> str | None:
    """What in an open matrix file departs from the schema (see above), else None."""
    version = handle.attrs["format_version"]
    if not isinstance(version, (int, np.integer)) or not 1 <= version <= FORMAT_VERSION:
        return f"format {version}, but this snptool reads up to {FORMAT_VERSION}"
    if "class_names" not in handle.attrs or "snptool" not in handle.attrs:
        return "no class_names or snptool attribute"
    try:
        record = json.loads(handle.attrs["snptool"])
        if not isinstance(record, dict):
            raise ValueError
    except (ValueError, TypeError):
        return "the snptool attribute is not a JSON object"
    problem = record_problem(MatrixFileRecord, record, "snptool")
    names = class_names(handle)
    try:
        check_class_names(names, None)
    except ValueError as error:
        problem = problem or f"class_names {error}"
    if problem:
        return problem
    if not isinstance(handle["layers"], h5py.Group):
        return "/layers is not a group"
    if not len(handle["layers"]):
        return "/layers holds no layer"
    for name, group in handle["layers"].items():
        problem = _layer_problem(name, group, len(names))
        if problem:
            return problem
    return None


def _layer_problem(name: str, group: Any, classes: int) -> str | None:
    matrix = group.get("matrix") if isinstance(group, h5py.Group) else None
    if not isinstance(matrix, h5py.Dataset):
        return f"layer {name} has no matrix dataset"
    if matrix.dtype.kind != "f" or matrix.ndim != 3 or matrix.shape[1:] != (classes,) * 2:
        return (
            f"layer {name}'s matrix is {matrix.dtype} {list(matrix.shape)}, "
            f"not float [units, {classes}, {classes}]"
        )
    attributes = {k: _plain(v) for k, v in {**group.attrs, **matrix.attrs}.items()}
    attributes.pop("DIMENSION_LIST", None)
    attributes.pop("DIMENSION_LABELS", None)
    problem = record_problem(LayerRecord, attributes, f"layer {name}")
    if problem is None and attributes.get("units", len(matrix)) != len(matrix):
        problem = f"layer {name} says {attributes['units']} units but its matrix has {len(matrix)}"
    return problem


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a Python value (numpy scalars → int / float / str)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def read_units(dataset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Units start…stop-1 of a [U, C, C] matrix dataset, refusing NaN or infinite values."""
    block = dataset[start:stop]
    if not np.isfinite(block).all():
        raise InputFileError(
            f"the matrix of {dataset.parent.name.removeprefix('/layers/')} holds NaN or "
            "infinite values; make the matrix file again with `snptool matrix`."
        )
    return block


@contextmanager
def edit_matrix_file(source: str | Path, destination: str | Path) -> Iterator[h5py.File]:
    """Edit a copy of `source` and rename it to `destination`: an interruption loses nothing."""
    with open_matrix_file(source):
        pass
    require_space(destination, Path(source).stat().st_size)
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)
        with h5py.File(temporary, "r+") as handle, _read_errors(Path(source)):
            yield handle


def class_names(handle: h5py.File) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in handle.attrs["class_names"]]


def layer_names(handle: h5py.File) -> list[str]:
    """Tap names in the order they were written."""
    group = handle["layers"]
    return sorted(group, key=lambda name: group[name].attrs.get("order", 0))


def layer_group(handle: h5py.File, name: str) -> h5py.Group:
    if name not in handle["layers"]:
        known = ", ".join(layer_names(handle))
        raise LayerError(f"the matrix file has no layer {name!r}; it has {known}.")
    return handle["layers"][name]


def metadata(handle: h5py.File) -> dict[str, Any]:
    return json.loads(handle.attrs["snptool"])


def check_made_from(handle: h5py.File, checkpoint: Any) -> None:
    """The matrices must be those of `checkpoint` (a core.checkpoint.Checkpoint): the sha256
    the file records, and its classes; a file that records none (matrices made by hand or by
    other code) is used with a warning."""
    path, recorded = Path(handle.filename), metadata(handle).get("checkpoint")
    if not recorded:
        console.log(
            f"warning: {path} does not record the checkpoint its matrices were computed from; "
            f"they are used for {checkpoint.path} unchecked."
        )
    elif recorded["sha256"] != checkpoint.sha256:
        raise InputFileError(
            f"{path} was computed for another checkpoint than {checkpoint.path}; "
            "run probe, matrix and clusters on this checkpoint first."
        )
    if class_names(handle) != checkpoint.class_names:
        raise InputFileError(
            f"{path} names other classes than {checkpoint.path}; make it again with "
            "`snptool matrix`."
        )


@dataclass
class LayerClusters:
    """Every unit's clusters of one layer, as flat arrays (the file layout)."""

    count: np.ndarray
    labels: np.ndarray
    signal: np.ndarray
    noise: np.ndarray
    maximum: np.ndarray
    members: np.ndarray
    cluster_offsets: np.ndarray
    unit_offsets: np.ndarray

    @classmethod
    def from_units(cls, units: list) -> LayerClusters:
        clusters = [c for unit in units for c in unit.clusters]
        sizes = np.array([len(c) for c in clusters], dtype=np.int64)
        return cls(
            count=np.array([len(u.clusters) for u in units], dtype=np.int32),
            labels=np.array([sum(len(c) for c in u.clusters) for u in units], dtype=np.int32),
            signal=np.array([u.signal for u in units], dtype=np.int64),
            noise=np.array([u.noise for u in units], dtype=np.int64),
            maximum=np.array([u.maximum for u in units], dtype=np.float32),
            members=np.array([j for c in clusters for j in c], dtype=np.int32),
            cluster_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            unit_offsets=np.concatenate([[0], np.cumsum([len(u.clusters) for u in units])]).astype(
                np.int64
            ),
        )

    def clusters_of(self, unit: int) -> list[list[int]]:
        first, last = self.unit_offsets[unit], self.unit_offsets[unit + 1]
        return [
            self.members[self.cluster_offsets[k] : self.cluster_offsets[k + 1]].tolist()
            for k in range(first, last)
        ]

    def label_sets(self) -> list[set[int]]:
        """Λ(u): the union of each unit's clusters."""
        return [set(j for c in self.clusters_of(u) for j in c) for u in range(len(self.count))]


ARRAYS = tuple(f.name for f in dataclasses.fields(LayerClusters))


def write_layer_clusters(group, layer: LayerClusters, threshold: float, statistics: dict) -> None:
    if "clusters" in group:
        del group["clusters"]
    target = group.create_group("clusters")
    for name in ARRAYS:
        target.create_dataset(name, data=getattr(layer, name))
    target.attrs["threshold"] = threshold
    target.attrs["rule"] = (
        "strictly above threshold x unit maximum; greedy squares from the diagonal"
    )
    target.attrs["statistics"] = json.dumps(strict_json(statistics), allow_nan=False)


def _clusters_group(group) -> h5py.Group:
    if "clusters" not in group:
        raise UsageError(
            "the matrix file has no clusters yet; run `snptool clusters MATRICES.h5` first."
        )
    return group["clusters"]


def read_layer_clusters(group) -> LayerClusters:
    """A layer's clusters, checked against its matrix (lengths, offsets, label indices)."""
    target = _clusters_group(group)
    missing = [name for name in ARRAYS if not isinstance(target.get(name), h5py.Dataset)]
    layer = None if missing else LayerClusters(**{name: target[name][()] for name in ARRAYS})
    units, classes = group["matrix"].shape[:2]
    problem = f"no {', '.join(missing)}" if missing else clusters_problem(layer, units, classes)
    if problem:
        raise InputFileError(
            f"{group.file.filename}: the clusters of layer {group.name.removeprefix('/layers/')} "
            f"are damaged ({problem}); run `snptool clusters` on it again."
        )
    return layer


class ClusterStatistics(Record):
    """A layer's cluster statistics (`clusters` attribute `statistics`; null: not defined)."""

    units: Annotated[int, Field(ge=0)]
    units_without_clusters: Annotated[int, Field(ge=0)]
    mean_cluster_size: float | None
    clusters_per_unit: float | None
    labels_per_unit: float | None
    noise_per_unit: float | None
    snr: float | None


def read_layer_statistics(group: h5py.Group) -> dict[str, Any]:
    """The statistics `clusters` wrote for a layer, validated."""
    where = f"{group.file.filename}: the cluster statistics of {group.name.removeprefix('/')}"
    try:
        statistics = json.loads(_clusters_group(group).attrs.get("statistics", ""))
    except (ValueError, TypeError):
        raise InputFileError(
            f"{where} are not JSON; run `snptool clusters` on the file again."
        ) from None
    validate_record(
        ClusterStatistics, statistics, where=where, fix="run `snptool clusters` on the file again"
    )
    return statistics


def clusters_problem(layer: LayerClusters, units: int, classes: int) -> str | None:
    """What makes a layer's cluster arrays inconsistent with U units and C labels, else None."""
    for name in ARRAYS:
        array = getattr(layer, name)
        if array.ndim != 1 or array.dtype.kind not in ("f" if name == "maximum" else "iu"):
            return f"{name} is {array.dtype} {list(array.shape)}, not a 1-D array of numbers"
    per_unit = ("count", "labels", "signal", "noise", "maximum")
    wrong = [n for n in per_unit if len(getattr(layer, n)) != units]
    if wrong:
        return f"{', '.join(wrong)} must hold one value per unit ({units})"
    if not np.isfinite(layer.maximum).all():
        return "maximum holds NaN or infinite values"
    clusters = len(layer.cluster_offsets) - 1
    for name, offsets, end in (
        ("unit_offsets", layer.unit_offsets, clusters),
        ("cluster_offsets", layer.cluster_offsets, len(layer.members)),
    ):
        if (
            len(offsets) < 1
            or offsets[0] != 0
            or offsets[-1] != end
            or (np.diff(offsets) < 0).any()
        ):
            return f"{name} must rise from 0 to {end}"
    if len(layer.unit_offsets) != units + 1:
        return f"unit_offsets must hold {units + 1} offsets"
    if len(layer.members) and (layer.members.min() < 0 or layer.members.max() >= classes):
        return f"members must be labels 0…{classes - 1}"
    return None

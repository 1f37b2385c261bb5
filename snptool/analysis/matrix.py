"""`snptool matrix`: the labels × labels matrix of every unit (METHODS.md §5).

    M[u, c, k] = Σ_p W[k, u, p] · Ā[c, u, p]

W is the probe, Ā the per-class mean activation. Both come from the probe file when it holds
the means of the requested split (no forward pass); `all` combines the train and test means
by their counts; otherwise the network runs once over the split. Units are processed in
chunks, so 1,000 labels × 2,048 units fit in a few hundred MiB.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import torch

from snptool.analysis.features import run_sharded_split
from snptool.config import DataConfig, MatrixConfig, config_to_dict
from snptool.core import console, distributed
from snptool.core.checkpoint import read_checkpoint, read_metadata
from snptool.core.devices import resolve_device
from snptool.core.files import (
    atomic_path,
    check_output_path,
    provenance,
    require_file,
    require_space,
    sha256_file,
)
from snptool.core.matrix_file import create_layer, create_matrix_file
from snptool.core.probe_file import ProbeFile
from snptool.core.taps import TapRecorder
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.errors import InputFileError

CHUNK_BUDGET = 256 * 2**20


def unit_matrices(weights: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """[C, U, P] probe weights and [C, U, P] class means → [U, C, C] (true label, output label)."""
    return torch.einsum("kup,cup->uck", weights, means)


@dataclass(frozen=True)
class LayerMatrix:
    layer: str
    unit: str
    units: int
    classes: int
    samples: int
    accuracy: float
    source: str

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class MatrixResult:
    output: str
    split: str
    layers: list[LayerMatrix] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "split": self.split,
            "seconds": self.seconds,
            "layers": [layer.to_json() for layer in self.layers],
        }


class MeanSource:
    """Per-class means [C, U, P] of one split, by tap and unit range, and the class counts."""

    def __init__(
        self, probes: ProbeFile, split: str, computed: dict[str, torch.Tensor] | None, counts
    ):
        self.probes, self.split, self.computed, self.counts = probes, split, computed, counts

    def means(self, name: str, units: slice) -> torch.Tensor:
        if self.computed is not None:
            return self.computed[name][:, units, :]
        if self.split != "all":
            return self.probes.tensor(f"mean/{self.split}/{name}", units)
        parts = [
            (self.probes.tensor(f"mean/{s}/{name}", units), self.probes.tensor(f"count/{s}"))
            for s in ("train", "test")
        ]
        total = sum(count for _, count in parts).clamp(min=1).float()
        return (
            sum(mean * count.float()[:, None, None] for mean, count in parts) / total[:, None, None]
        )


def mean_source(
    probes: ProbeFile, config: MatrixConfig, checkpoint_path, data_spec, data_config
) -> MeanSource:
    """Means from the probe file where it has them, else from one forward pass."""
    split = config.split
    stored = ("train", "test") if split == "all" else (split,)
    if data_spec is None and all(probes.has_means(s) for s in stored):
        counts = sum(probes.tensor(f"count/{s}") for s in stored)
        return MeanSource(probes, split, None, counts)
    device = resolve_device(config.device)
    checkpoint = read_checkpoint(checkpoint_path, device)
    if checkpoint.sha256 != probes.metadata["checkpoint"]["sha256"]:
        raise InputFileError(
            f"{probes.path} was made from another checkpoint than {checkpoint_path}; "
            "probe this checkpoint first."
        )
    spec = checkpoint.input_spec
    taps = [probes.tap(name) for name in probes.tap_names]
    requests = [t["name"].replace("@input", "") for t in taps]  # LAYER[:UNIT]
    recorder = TapRecorder(
        checkpoint.model, requests, spec, tap_input=any(t.get("tap_input") for t in taps)
    )
    data_spec = data_spec or probes.metadata["data"]["train"]["spec"]
    data = load_checkpoint_data(checkpoint, data_spec, split, data_config)
    result = run_sharded_split(
        checkpoint.model,
        recorder,
        data,
        spec,
        batch_size=config.forward_batch_size,
        device=device,
        cache=False,
        description=f"means ({split})",
    )
    computed = {
        t.name: result.means(t.name).reshape(-1, t.units, t.positions) for t in recorder.taps
    }
    return MeanSource(probes, split, computed, result.counts)


def run_matrix(
    checkpoint_path: str | Path,
    probes_path: str | Path,
    output: str | Path,
    config: MatrixConfig | None = None,
    *,
    layers: list[str] | None = None,
    data_spec: str | None = None,
    data_config: DataConfig | None = None,
) -> MatrixResult:
    """Write the [U, C, C] matrices of the probed layers (all, or `layers`) to HDF5."""
    config = config or MatrixConfig()
    distributed.setup(resolve_device(config.device))
    distributed.check_agreement(
        {
            "-o": output,
            "CHECKPOINT": checkpoint_path,
            "PROBES": probes_path,
            "--layer": layers,
            "--data": data_spec,
            "the matrix flags": config_to_dict(config),
            "the data flags": data_config and config_to_dict(data_config),
        }
    )
    check_output_path(output, checkpoint_path, probes_path)
    started = time.perf_counter()
    probes = ProbeFile(probes_path)
    probed = probes.metadata["checkpoint"]["sha256"]
    if sha256_file(require_file(checkpoint_path, "checkpoint")) != probed:  # even with no forward
        raise InputFileError(
            f"{probes_path} was made from another checkpoint than {checkpoint_path}; "
            "probe this checkpoint first."
        )
    checkpoint_classes = read_metadata(checkpoint_path)["class_names"]
    if probes.metadata["class_names"] != checkpoint_classes:
        raise InputFileError(
            f"{probes_path} names the classes {', '.join(probes.metadata['class_names'][:4])}…, "
            f"but {checkpoint_path} names {', '.join(checkpoint_classes[:4])}…; probe this "
            "checkpoint again."
        )
    names = list(dict.fromkeys(layers or probes.tap_names))  # a layer named twice is one layer
    for name in names:
        if name not in probes.tap_names:
            raise InputFileError(
                f"{probes_path} has no probe for {name!r}; it has {', '.join(probes.tap_names)}."
            )
    source = mean_source(probes, config, checkpoint_path, data_spec, data_config)
    class_names = probes.metadata["class_names"]
    classes = len(class_names)
    metadata = {
        "checkpoint": probes.metadata["checkpoint"],
        "probes": {"path": str(probes_path), "sha256": sha256_file(probes_path)},
        "data": data_spec or probes.metadata["data"]["train"]["spec"],
        "split": config.split,
        "config": config_to_dict(config),
        "provenance": provenance({"checkpoint": checkpoint_path, "probes": probes_path}),
    }
    results = []
    units = sum(probes.tap(name)["units"] for name in names)
    require_space(output, units * classes * classes * 4)  # float32 [U, C, C] per layer
    with _matrix_handle(output) as handle:
        create_matrix_file(handle, class_names, metadata)
        for order, name in enumerate(names):
            tap = probes.tap(name)
            units, positions = tap["units"], tap["positions"]
            samples = int(source.counts.sum())
            dataset = create_layer(
                handle,
                name,
                units,
                classes,
                {
                    "layer": tap["layer"],
                    "unit": tap["unit"],
                    "units": units,
                    "positions": positions,
                    "split": config.split,
                    "samples": samples,
                    "class_samples": source.counts.long().numpy(),
                    "accuracy": tap["test_accuracy"],
                },
            )
            dataset.parent.attrs["order"] = order
            step = config.units_per_chunk or max(
                1, CHUNK_BUDGET // (4 * classes * (2 * positions + classes))
            )
            with console.progress(f"matrix {name}", units) as task:
                for start in range(0, units, step):
                    chunk = slice(start, min(units, start + step))
                    weights = probes.tensor(f"probe/{name}", chunk).float()
                    dataset[chunk] = unit_matrices(
                        weights, source.means(name, chunk).float()
                    ).numpy()
                    task.advance(chunk.stop - chunk.start)
            results.append(
                LayerMatrix(
                    name,
                    tap["unit"],
                    units,
                    classes,
                    samples,
                    tap["test_accuracy"],
                    "forward pass" if source.computed is not None else "probe file",
                )
            )
    return MatrixResult(str(output), config.split, results, time.perf_counter() - started)


@contextlib.contextmanager
def _matrix_handle(output: str | Path):
    """The HDF5 file to write, atomically; under torchrun, ranks but 0 get one in memory only."""
    if not distributed.is_main():
        with h5py.File(
            f"rank{distributed.rank()}.h5", "w", driver="core", backing_store=False
        ) as h:
            yield h
        return
    with atomic_path(output) as temporary, h5py.File(temporary, "w") as handle:
        yield handle

"""Peak memory of `matrix` and `clusters` at ImageNet scale: 1,000 labels × 2,048 units.

Writes a synthetic probe file shaped like a ResNet-50's pooled features (2,048 nodes, P = 1,
or --positions P) with 1,000 classes, then runs `snptool matrix` and `snptool clusters` in
subprocesses and reports each one's peak resident memory (the matrices alone are
2,048 × 1,000 × 1,000 float32 = 8.2 GB on disk).

    python examples/benchmarks/imagenet_scale_memory.py [--units 2048 --classes 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine
from safetensors.torch import save_file

from snptool.config import InputSpec
from snptool.core.checkpoint import make_metadata, write_checkpoint


def write_inputs(folder: Path, units: int, classes: int, positions: int) -> tuple[Path, Path]:
    """A real (tiny) checkpoint to name in the provenance, and a probe file of the given shape."""
    checkpoint = folder / "model.safetensors"
    model = torch.nn.Linear(units, classes)
    names = [f"class{i}" for i in range(classes)]
    write_checkpoint(
        checkpoint,
        model,
        make_metadata(
            arch={
                "spec": "torch.nn:Linear",
                "kwargs": {"in_features": units, "out_features": classes},
            },
            class_names=names,
            input_spec=InputSpec(),
            data=None,
            provenance={},
        ),
    )
    generator = torch.Generator().manual_seed(0)
    shape = (classes, units, positions)
    tensors = {
        "probe/fc": torch.randn(shape, generator=generator),
        "mean/train/fc": torch.rand(shape, generator=generator),
        "count/train": torch.full((classes,), 1300),
    }
    from snptool.core.files import sha256_file

    metadata = {
        "kind": "probes",
        "format_version": 1,
        "class_names": names,
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "data": {"train": {"spec": "imagenet:synthetic", "split": "train"}},
        "taps": [
            {
                "name": "fc",
                "layer": "fc",
                "unit": "node",
                "units": units,
                "positions": positions,
                "train_accuracy": 0.0,
                "test_accuracy": 0.0,
                "tap_input": False,
                "shape": [units],
            }
        ],
    }
    probes = folder / "probes.safetensors"
    save_file(tensors, str(probes), metadata={"snptool": json.dumps(metadata)})
    return checkpoint, probes


def peak_of(command: list[str]) -> tuple[float, float]:
    """(peak RSS in GiB, seconds) of a child process."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak_kib / 2**20, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--positions", type=int, default=1)
    parser.add_argument("--keep", default=None, help="folder to keep the files in")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="snptool-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, probes = write_inputs(folder, args.units, args.classes, args.positions)
    snptool = [sys.executable, "-m", "snptool", "--quiet"]
    matrices = folder / "matrices.h5"
    # RUSAGE_CHILDREN is the maximum over all children so far: run matrix first, then clusters
    matrix_peak, matrix_seconds = peak_of(
        [*snptool, "matrix", str(checkpoint), str(probes), "-o", str(matrices)]
    )
    size = matrices.stat().st_size
    clusters_peak, clusters_seconds = peak_of([*snptool, "clusters", str(matrices)])
    print(
        json.dumps(
            {
                "units": args.units,
                "classes": args.classes,
                "positions": args.positions,
                "matrix_file_gib": round(size / 2**30, 2),
                "matrix": {
                    "peak_rss_gib": round(matrix_peak, 2),
                    "seconds": round(matrix_seconds, 1),
                },
                "clusters": {
                    "peak_rss_gib_max_of_both": round(clusters_peak, 2),
                    "seconds": round(clusters_seconds, 1),
                },
                **machine(),
            },
            indent=2,
        )
    )
    if not args.keep:
        for path in folder.iterdir():
            path.unlink()
        os.rmdir(folder)


if __name__ == "__main__":
    main()

"""Feature extraction of `probe` + the `matrix` contraction vs a bare forward pass.

snptool's side taps every analysable layer in one forward pass, sums the activations per
class, caches the features, and contracts probe weights with the class means into every
unit's matrix. The bare side runs the same network over the same batches and nothing else:
the physical floor. Target: ratio <= 1.2.

    python examples/benchmarks/probe_extraction.py CHECKPOINT [--data npz:FILE] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import interleaved, machine

from snptool.analysis.features import run_split
from snptool.analysis.layers import analysable_layers
from snptool.analysis.matrix import unit_matrices
from snptool.config import DataConfig
from snptool.core.checkpoint import read_checkpoint
from snptool.core.taps import TapRecorder
from snptool.data.datasets import load_data, prepare_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=None, help="data spec (default: the checkpoint's)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    checkpoint = read_checkpoint(args.checkpoint)
    model, spec = checkpoint.model, checkpoint.input_spec
    data = load_data(
        args.data or checkpoint.metadata["data"],
        args.split,
        DataConfig().inherit(checkpoint.metadata),
    )
    recorder = TapRecorder(model, analysable_layers(model, spec), spec)
    probes = {
        t.name: torch.randn(checkpoint.num_classes, t.units, t.positions) for t in recorder.taps
    }

    @torch.no_grad()
    def bare() -> None:
        for images, _ in data.batches(spec, args.batch_size):
            model(prepare_batch(images, spec))

    def snptool_side() -> None:
        split = run_split(
            model,
            recorder,
            data,
            spec,
            batch_size=args.batch_size,
            device=torch.device("cpu"),
            cache=True,
            description="features",
        )
        for tap in recorder.taps:
            means = split.means(tap.name).reshape(-1, tap.units, tap.positions)
            unit_matrices(probes[tap.name], means)

    seconds = interleaved(
        {"bare_forward": bare, "probe_features_and_matrix": snptool_side}, args.rounds
    )
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "arch": checkpoint.metadata["arch"],
                "images": len(data),
                "taps": [t.name for t in recorder.taps],
                "feature_floats_per_image": sum(t.units * t.positions for t in recorder.taps),
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "ratio": round(seconds["probe_features_and_matrix"] / seconds["bare_forward"], 3),
                **machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Our matrix computation (class means + one contraction) vs a per-unit loop over samples.

Both start from the same tapped activations A [N, U, P] and probe weights W [C, U, P] and
produce M [U, C, C]. The loops compute every unit's fields h[u, k](x) = Σ_p W[k,u,p] a[u,p](x)
and average them per true label: sample by sample (`per_unit_per_sample`), and, a stronger
baseline, in batches of 250 samples (`per_unit_batched`). Ours sums the activations per class
once and contracts (METHODS.md §5). The results are checked equal.

    python examples/benchmarks/matrix_vs_loop.py [--samples 2000 --units 128 --positions 64]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from _common import interleaved, machine

from snptool.analysis.matrix import unit_matrices


def class_means(activations: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    one_hot = F.one_hot(labels, classes).T.float()
    sums = one_hot @ activations.reshape(len(labels), -1)
    return (sums / one_hot.sum(1, keepdim=True)).reshape(classes, *activations.shape[1:])


def ours(weights, activations, labels, classes):
    return unit_matrices(weights, class_means(activations, labels, classes))


def per_unit_loop(weights, activations, labels, classes, batch=250):
    units = activations.shape[1]
    counts = torch.bincount(labels, minlength=classes).float()
    result = torch.zeros(units, classes, classes)
    for unit in range(units):
        for start in range(0, len(labels), batch):
            fields = activations[start : start + batch, unit, :] @ weights[:, unit, :].T  # [B, C]
            result[unit].index_add_(0, labels[start : start + batch], fields)
        result[unit] /= counts[:, None]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    activations = torch.rand(args.samples, args.units, args.positions, generator=generator)
    labels = torch.randint(0, args.classes, (args.samples,), generator=generator)
    weights = torch.randn(args.classes, args.units, args.positions, generator=generator)

    def loop(batch: int):
        return lambda: per_unit_loop(weights, activations, labels, args.classes, batch)

    reference = loop(1)()
    for result in (loop(250)(), ours(weights, activations, labels, args.classes)):
        torch.testing.assert_close(result, reference, rtol=1e-4, atol=1e-3)
    seconds = interleaved(
        {
            "per_unit_per_sample": loop(1),
            "per_unit_batched": loop(250),
            "ours": lambda: ours(weights, activations, labels, args.classes),
        },
        args.rounds,
    )
    print(
        json.dumps(
            {
                "shape": {
                    "samples": args.samples,
                    "units": args.units,
                    "positions": args.positions,
                    "classes": args.classes,
                },
                "seconds": {k: round(v, 4) for k, v in seconds.items()},
                "speedup_vs_per_sample": round(seconds["per_unit_per_sample"] / seconds["ours"], 1),
                "speedup_vs_batched": round(seconds["per_unit_batched"] / seconds["ours"], 1),
                **machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

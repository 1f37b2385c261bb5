"""`snptool probe` on cached features vs re-running the network every epoch, same run.

Both modes train the same probes on the same mini-batch order, so they reach the same
accuracy; the ratio is what caching saves. (Forced streaming: --memory-budget 1KiB.)

    python examples/benchmarks/probe_cached_vs_streamed.py CHECKPOINT [--layer L ...] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import interleaved, machine

from snptool.analysis.probe import run_probe
from snptool.config import ProbeConfig
from snptool.core import console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--layer", action="append", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", default=None)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    console.set_quiet(True)
    results = {}
    with tempfile.TemporaryDirectory() as folder:

        def probe(mode: str, budget: str):
            def run() -> None:
                results[mode] = run_probe(
                    args.checkpoint,
                    args.layer,
                    Path(folder) / f"{mode}.safetensors",
                    ProbeConfig(epochs=args.epochs, memory_budget=budget),
                    data_spec=args.data,
                )

            return run

        seconds = interleaved(
            {"cached": probe("cached", "64GiB"), "streamed": probe("streamed", "1KiB")}, args.rounds
        )
    report = {
        mode: {
            "seconds": round(seconds[mode], 2),
            "mode": result.mode,
            "layer_accuracy": {t.name: t.test_accuracy for t in result.taps},
        }
        for mode, result in results.items()
    }
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "epochs": args.epochs,
                **report,
                "ratio_streamed_over_cached": round(
                    report["streamed"]["seconds"] / report["cached"]["seconds"], 2
                ),
                "equal_accuracy": report["cached"]["layer_accuracy"]
                == report["streamed"]["layer_accuracy"],
                **machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""CCT-7/3x1 vs the same model with its first encoder blocks replaced by conv blocks.

Both models are exported by `snptool export` (parameters and MACs of the ONNX graphs, parity
on digits), then timed side by side in one run: onnxruntime through `snptool latency` and
eager PyTorch interleaved, batch 1, 1 thread. Weights are untrained: latency and counts do
not depend on them.

    python examples/benchmarks/cct_conv_blocks.py --conv-blocks 2 --runs 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _common import interleaved, machine

from snptool.config import InputSpec, LatencyConfig
from snptool.core.architectures import build_model
from snptool.core.checkpoint import make_metadata, write_checkpoint
from snptool.deploy.export import run_export
from snptool.deploy.latency import run_latency


def write_untrained(path: Path, arch: str, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model, record = build_model(arch, kwargs, num_classes=10)
    metadata = make_metadata(
        arch=record,
        class_names=[str(i) for i in range(10)],
        input_spec=InputSpec(),
        data="digits",
        provenance={},
    )
    write_checkpoint(path, model.eval(), metadata)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cct_7_3x1")
    parser.add_argument("--conv-blocks", type=int, default=2)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {
        "transformer": {},
        f"conv_blocks={args.conv_blocks}": {"conv_blocks": args.conv_blocks},
    }
    with tempfile.TemporaryDirectory() as directory:
        models, exports = {}, {}
        for name, kwargs in variants.items():
            checkpoint = Path(directory) / f"{name}.safetensors"
            models[name] = write_untrained(checkpoint, args.arch, kwargs)
            exports[name] = run_export(checkpoint, checkpoint.with_suffix(".onnx"))
        onnx = run_latency([e.output for e in exports.values()], LatencyConfig(runs=args.runs))
    x = torch.randn(1, 3, 32, 32)

    def forward(model: torch.nn.Module):
        return lambda: model(x)

    with torch.no_grad():
        eager = interleaved({n: forward(m) for n, m in models.items()}, rounds=args.runs)
    base, other = variants
    report = {
        "arch": args.arch,
        "machine": machine(),
        "models": {
            name: {
                "params": exports[name].params,
                "macs": exports[name].macs,
                "parity_max_abs_diff": exports[name].max_abs_diff,
                "onnxruntime_p50_ms": row.p50_ms,
                "torch_median_ms": eager[name] * 1e3,
            }
            for name, row in zip(variants, onnx.rows, strict=True)
        },
        "ratios": {
            "params": exports[other].params / exports[base].params,
            "macs": exports[other].macs / exports[base].macs,
            "onnxruntime_latency": onnx.rows[1].p50_ms / onnx.rows[0].p50_ms,
            "torch_latency": eager[other] / eager[base],
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

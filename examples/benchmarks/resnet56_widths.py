"""How fast onnxruntime runs CIFAR ResNet-56 at other channel widths: untrained option-A
ResNet-56 variants with the given stage stream and inner widths, exported and timed side by side
(batch 1, one thread, interleaved runs), against the dense 16/32/64.

    python examples/benchmarks/resnet56_widths.py "16,16,32/16,16,32" "16,32,64/8,16,32"

Each argument is STREAMS/INNER (three stages each). Prints the MAC ratio, the p50 ratio and the
share of the ideal speed-up ((1 / p50 ratio) / (1 / MAC ratio)). On AVX-512 CPUs onnxruntime's
NCHWc convolutions work in blocks of 16 channels, so widths that are multiples of 16 come
closest to the ideal.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import torch.nn.functional as F
from torch import nn

DENSE = ((16, 32, 64), (16, 32, 64))


class Shortcut(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.left = (outputs - inputs) // 2
        self.right = outputs - inputs - self.left

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.left, self.right))


class Block(nn.Module):
    def __init__(self, inputs: int, inner: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = Shortcut(inputs, outputs) if stride != 1 else nn.Identity()

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


def resnet56(streams, inners) -> nn.Module:
    blocks, width = [], streams[0]
    for stage, (stream, inner) in enumerate(zip(streams, inners, strict=True)):
        for index in range(9):
            blocks.append(Block(width, inner, stream, 2 if index == 0 and stage else 1))
            width = stream
    return nn.Sequential(
        nn.Conv2d(3, streams[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(streams[0]),
        nn.ReLU(),
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def macs(streams, inners) -> int:
    total, width, pixels = 3 * streams[0] * 9 * 32 * 32, streams[0], 32 * 32
    for stage, (stream, inner) in enumerate(zip(streams, inners, strict=True)):
        pixels //= 4 if stage else 1
        for _ in range(9):
            total += pixels * 9 * (width * inner + inner * stream)
            width = stream
    return total


def session(streams, inners, folder: Path) -> onnxruntime.InferenceSession:
    path = folder / f"{'-'.join(map(str, (*streams, *inners)))}.onnx"
    torch.onnx.export(resnet56(streams, inners).eval(), torch.zeros(1, 3, 32, 32), path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(arguments: list[str], runs: int = 200) -> None:
    configs = [DENSE] + [
        tuple(tuple(int(w) for w in part.split(",")) for part in a.split("/")) for a in arguments
    ]
    with tempfile.TemporaryDirectory() as folder:
        sessions = [session(*config, Path(folder)) for config in configs]
        x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
        times = [[] for _ in sessions]
        for _ in range(runs):  # interleaved, so load changes hit every model alike
            for timing, s in zip(times, sessions, strict=True):
                start = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: x})
                timing.append(time.perf_counter() - start)
    dense_p50, dense_macs = np.median(times[0]), macs(*DENSE)
    for config, timing in zip(configs, times, strict=True):
        ratio, mac_ratio = np.median(timing) / dense_p50, macs(*config) / dense_macs
        print(
            f"streams {config[0]} inner {config[1]}: MACs {mac_ratio:.3f}, p50 ratio "
            f"{ratio:.3f}, share of ideal {mac_ratio / ratio:.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

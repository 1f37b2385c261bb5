"""Training throughput (images/s) of snptool's train step vs a bare PyTorch step.

Both loops train the same architecture on the same 32×32 batches in one run, interleaved
round by round so machine drift hits both alike. snptool's step includes what `snptool
train` does per batch (uint8 → float, mean/std, random translation + flip); the bare step
feeds pre-normalised tensors without augmentation, the floor for that model on this machine.

    python examples/benchmarks/train_throughput.py --arch vgg11 --batches 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import model_defs
from snptool.config import InputSpec, TrainConfig
from snptool.data.datasets import augment_batch, prepare_batch

CIFAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10_test.npz"


def load_images(count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if CIFAR.exists():
        with np.load(CIFAR) as archive:
            images = torch.from_numpy(archive["images"][:count]).permute(0, 3, 1, 2).contiguous()
            labels = torch.from_numpy(archive["labels"][:count]).long()
        return images, labels, "CIFAR-10 test images"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (count,), generator=generator), "random 32x32 images"


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def time_steps(step, batches) -> float:
    started = time.perf_counter()
    for images, labels in batches:
        step(images, labels)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(batch_size=args.batch_size)
    spec = InputSpec()
    images, labels, source = load_images(args.batch_size * args.batches)
    batches = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, len(images), args.batch_size)
    ]
    normalised = [(prepare_batch(x, spec), y) for x, y in batches]

    torch.manual_seed(0)
    ours, bare = model_defs.create_model(args.arch), model_defs.create_model(args.arch)
    bare.load_state_dict(ours.state_dict())
    ours.train(), bare.train()
    ours_optimizer, bare_optimizer = make_optimizer(ours, config), make_optimizer(bare, config)
    generator = torch.Generator().manual_seed(0)

    def snptool_step(x: torch.Tensor, y: torch.Tensor) -> None:
        batch = augment_batch(prepare_batch(x, spec), config.translate, config.flip, generator)
        loss = F.cross_entropy(ours(batch), y)
        ours_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ours_optimizer.step()

    def bare_step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(bare(x), y)
        bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bare_optimizer.step()

    time_steps(snptool_step, batches[:2])  # warm-up
    time_steps(bare_step, normalised[:2])
    rates = {"snptool": [], "bare": []}
    count = sum(len(y) for _, y in batches)
    runs = {"snptool": (snptool_step, batches), "bare": (bare_step, normalised)}
    for round_index in range(args.rounds):
        order = list(runs) if round_index % 2 == 0 else list(reversed(runs))  # A B, B A, …
        for name in order:
            step, data = runs[name]
            rates[name].append(count / time_steps(step, data))
    median = {name: statistics.median(values) for name, values in rates.items()}
    report = {
        "arch": args.arch,
        "images": source,
        "batch_size": args.batch_size,
        "batches_per_round": args.batches,
        "rounds": args.rounds,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "images_per_second": {k: round(v, 1) for k, v in median.items()},
        "ratio_bare_over_snptool": round(median["bare"] / median["snptool"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

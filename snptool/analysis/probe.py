"""`snptool probe`: layer accuracy from one bias-free linear read-out per tapped layer.

METHODS.md §4. The frozen network runs once per split, tapping every requested layer in the
same forward pass; that pass also sums the per-class activations (the means `matrix` needs).
Probes train on cached features when they fit the memory budget, else on features streamed
from the network every epoch, in the same mini-batch order.

Output (safetensors): `probe/<tap>` [C, U, P], `mean/<split>/<tap>` [C, U, P],
`count/<split>` [C], and the metadata document under the key `snptool` (kind "probes").
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from snptool.analysis.features import SplitPass, run_sharded_split
from snptool.analysis.layers import analysable_layers
from snptool.config import DataConfig, InputSpec, ProbeConfig, config_to_dict
from snptool.core import console, distributed
from snptool.core.checkpoint import Checkpoint, read_checkpoint
from snptool.core.devices import resolve_device, to_device
from snptool.core.files import atomic_path, check_output_path, provenance
from snptool.core.seeds import stream_seed
from snptool.core.taps import Tap, TapRecorder
from snptool.core.training_loop import Runtime, run_steps
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.data.datasets import DataSplit, prepare_batch

FORMAT_VERSION = 1
SPLITS = ("train", "test")


@dataclass(frozen=True)
class TapProbe:
    name: str
    layer: str
    unit: str
    units: int
    positions: int
    train_accuracy: float
    test_accuracy: float

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class ProbeResult:
    output: str
    checkpoint: str
    data: str
    mode: str
    model_accuracy: float
    taps: list[TapProbe] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "checkpoint": self.checkpoint,
            "data": self.data,
            "mode": self.mode,
            "model_accuracy": self.model_accuracy,
            "layers": [tap.to_json() for tap in self.taps],
            "seconds": self.seconds,
        }


def feature_bytes(taps: list[Tap], samples: int) -> int:
    return 4 * samples * sum(t.units * t.positions for t in taps)


def epoch_order(samples: int, seed: int, epoch: int) -> np.ndarray:
    """The mini-batch order of one probe epoch (the same in cached and streamed mode)."""
    return np.random.default_rng(stream_seed(seed, epoch)).permutation(samples)


def cached_batches(
    split: SplitPass, order: np.ndarray, batch_size: int
) -> Iterator[tuple[dict, torch.Tensor]]:
    for start in range(0, len(order), batch_size):
        index = torch.as_tensor(order[start : start + batch_size])
        yield {name: values[index] for name, values in split.features.items()}, split.labels[index]


def streamed_batches(
    recorder: TapRecorder,
    data: DataSplit,
    spec: InputSpec,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[dict, torch.Tensor]]:
    for images, labels in data.images.batches(order, batch_size, spec, data.config.workers):
        with torch.no_grad():  # not around the yield: the consumer trains with gradients
            outputs, _ = recorder.run(prepare_batch(to_device(images, device), spec))
        yield {name: t.reshape(len(labels), -1) for name, t in outputs.items()}, labels


def fit_probes(
    taps: list[Tap],
    num_classes: int,
    batches_of_epoch,
    samples: int,
    config: ProbeConfig,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Train one bias-free Linear(U·P, C) per tap; return the weights [C, U·P] by tap name.

    `batches_of_epoch(epoch)` yields ({tap: [B, U·P]}, labels). SGD with Nesterov momentum,
    weight decay and lr × `lr_decay` every epoch; init uniform in ±1/sqrt(U·P).
    """
    probes = nn.ModuleDict()
    for tap in taps:
        linear = nn.Linear(tap.units * tap.positions, num_classes, bias=False)
        bound = 1.0 / math.sqrt(tap.units * tap.positions)
        # seeded per tap, so a layer's probe does not depend on which others are probed with it
        seed = stream_seed(config.seed, zlib.crc32(tap.name.encode()))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
        probes[_module_key(tap.name)] = linear
    probes.to(device)
    optimizer = torch.optim.SGD(
        probes.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    runtime = Runtime(ProbeSet(probes, taps, device), device)
    steps = config.epochs * math.ceil(samples / config.batch_size)
    with console.progress("probe", steps) as task:
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * config.lr_decay**epoch
            batches = (
                (features, labels.to(device), labels)
                for features, labels in batches_of_epoch(epoch)
            )
            totals = run_steps(
                runtime,
                optimizer,
                batches,
                lambda outputs, labels: sum(F.cross_entropy(o, labels) for o in outputs.values()),
                on_step=lambda totals: task.advance(),
            )
            loss = float(totals.loss) / max(1, totals.seen * len(taps))
            task.describe(f"probe epoch {epoch + 1}/{config.epochs} loss {loss:.3g} per tap")
    return {tap.name: probes[_module_key(tap.name)].weight.detach().cpu() for tap in taps}


class ProbeSet(nn.Module):
    """Every tap's read-out in one module: {tap: [B, U·P] features} → {tap: [B, C] logits}."""

    def __init__(self, probes: nn.ModuleDict, taps: list[Tap], device: torch.device) -> None:
        super().__init__()
        self.probes, self.names, self.device = probes, [tap.name for tap in taps], device

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            name: self.probes[_module_key(name)](features[name].to(self.device))
            for name in self.names
        }


def _module_key(name: str) -> str:
    return name.replace(".", "_").replace("@", "__").replace(":", "___")


@torch.no_grad()
def probe_accuracy(weights: dict[str, torch.Tensor], batches) -> dict[str, float]:
    """Top-1 accuracy of each probe over the batches ({tap: [B, U·P]}, labels)."""
    correct = dict.fromkeys(weights, 0)
    seen = 0
    for features, labels in batches:
        for name, weight in weights.items():
            logits = features[name].to(weight.device) @ weight.T
            correct[name] += int((logits.argmax(1).cpu() == labels).sum())
        seen += len(labels)
    return {name: value / max(1, seen) for name, value in correct.items()}


def run_probe(
    checkpoint_path: str | Path,
    layers: list[str] | None,
    output: str | Path,
    config: ProbeConfig | None = None,
    *,
    data_spec: str | None = None,
    data_config: DataConfig | None = None,
) -> ProbeResult:
    """Fit probes on `layers` (None: every analysable layer) and write the probe file."""
    config = config or ProbeConfig()
    device = distributed.setup(resolve_device(config.device))
    distributed.check_agreement(
        {
            "-o": output,
            "CHECKPOINT": checkpoint_path,
            "--layer": layers,
            "--data": data_spec,
            "the probe flags": config_to_dict(config),
            "the data flags": data_config and config_to_dict(data_config),
        }
    )
    check_output_path(output, checkpoint_path)
    checkpoint = read_checkpoint(checkpoint_path, device)
    spec = checkpoint.input_spec
    layers = layers or analysable_layers(checkpoint.model, spec)
    recorder = TapRecorder(checkpoint.model, layers, spec, tap_input=config.tap_input)
    splits = {
        name: load_checkpoint_data(checkpoint, data_spec, name, data_config) for name in SPLITS
    }
    needed = sum(feature_bytes(recorder.taps, len(split)) for split in splits.values())
    cache = needed <= config.memory_budget_bytes
    mode = "cached" if cache else "streamed"
    if not cache:
        console.log(
            f"features need {needed / 2**30:.2f} GiB > budget {config.memory_budget}: "
            "streaming them from the network every epoch"
        )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    passes = {  # under torchrun each rank runs its shard; every rank then fits the same probes
        name: run_sharded_split(
            checkpoint.model,
            recorder,
            split,
            spec,
            batch_size=config.forward_batch_size,
            device=device,
            cache=cache,
            description=f"features ({name})",
        )
        for name, split in splits.items()
    }
    timings["forward"] = time.perf_counter() - started

    def batches_of(name: str, order: np.ndarray):
        if cache:
            return cached_batches(passes[name], order, config.batch_size)
        return streamed_batches(recorder, splits[name], spec, order, config.batch_size, device)

    started = time.perf_counter()
    samples = len(splits["train"])
    weights = fit_probes(
        recorder.taps,
        checkpoint.num_classes,
        lambda epoch: batches_of("train", epoch_order(samples, config.seed, epoch)),
        samples,
        config,
        device,
    )
    timings["fit"] = time.perf_counter() - started
    device_weights = {name: w.to(device) for name, w in weights.items()}
    accuracy = {
        name: probe_accuracy(device_weights, batches_of(name, np.arange(len(split))))
        for name, split in splits.items()
    }
    results = [
        TapProbe(
            tap.name,
            tap.layer,
            tap.unit,
            tap.units,
            tap.positions,
            accuracy["train"][tap.name],
            accuracy["test"][tap.name],
        )
        for tap in recorder.taps
    ]
    metadata = _probe_metadata(
        checkpoint, splits, results, recorder.taps, passes, config, mode, checkpoint_path
    )
    if distributed.is_main():
        write_probe_file(output, recorder.taps, weights, passes, metadata)
    return ProbeResult(
        str(output),
        str(checkpoint_path),
        splits["train"].spec,
        mode,
        passes["test"].model_accuracy,
        results,
        timings,
    )


def write_probe_file(
    output: str | Path,
    taps: list[Tap],
    weights: dict[str, torch.Tensor],
    passes: dict[str, SplitPass],
    metadata: dict[str, Any],
) -> None:
    """Probe weights, class means and counts as [C, U, P] tensors, written atomically."""
    tensors = {}
    for tap in taps:
        shape = (len(metadata["class_names"]), tap.units, tap.positions)
        tensors[f"probe/{tap.name}"] = weights[tap.name].reshape(shape).contiguous()
        for split, split_pass in passes.items():
            tensors[f"mean/{split}/{tap.name}"] = (
                split_pass.means(tap.name).reshape(shape).contiguous()
            )
    for split, split_pass in passes.items():
        tensors[f"count/{split}"] = split_pass.counts
    with atomic_path(output) as temporary:
        save_file(
            tensors, str(temporary), metadata={"snptool": json.dumps(metadata, sort_keys=True)}
        )


def _probe_metadata(
    checkpoint: Checkpoint, splits, results, taps, passes, config, mode, checkpoint_path
) -> dict:
    return {
        "kind": "probes",
        "format_version": FORMAT_VERSION,
        "checkpoint": {"path": str(checkpoint_path), "sha256": checkpoint.sha256},
        "class_names": checkpoint.class_names,
        "data": {name: split.record() for name, split in splits.items()},
        "model_accuracy": {name: p.model_accuracy for name, p in passes.items()},
        "taps": [
            {**result.to_json(), "tap_input": tap.tap_input, "shape": list(tap.shape)}
            for result, tap in zip(results, taps, strict=True)
        ],
        "config": config_to_dict(config),
        "mode": mode,
        "provenance": provenance({"checkpoint": checkpoint_path}),
    }

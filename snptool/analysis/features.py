"""Tapped features of a data split: one forward pass sums every tap per class (and may cache it).

The pass behind `probe` (METHODS.md §4) and `matrix` (§5); under torchrun each rank runs its
own shard and the sums are all-reduced, so every rank holds what one process would.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from snptool.config import InputSpec
from snptool.core import console, distributed
from snptool.core.devices import to_device
from snptool.core.taps import Tap, TapRecorder
from snptool.data.datasets import DataSplit, prepare_batch


@dataclass
class SplitPass:
    """What one forward pass over a split yields: class sums and counts, maybe features."""

    sums: dict[str, torch.Tensor]  # [C, U·P] float64
    counts: torch.Tensor  # [C]
    labels: torch.Tensor  # [N]
    features: dict[str, torch.Tensor] | None  # [N, U·P] float32 when cached
    model_correct: int = 0

    def means(self, name: str) -> torch.Tensor:
        return (self.sums[name] / self.counts.clamp(min=1)[:, None].double()).float()

    @property
    def model_accuracy(self) -> float:
        return self.model_correct / max(1, len(self.labels))


@torch.no_grad()
def run_split(
    model: nn.Module,
    recorder: TapRecorder,
    data: DataSplit,
    spec: InputSpec,
    *,
    batch_size: int,
    device: torch.device,
    cache: bool,
    description: str,
) -> SplitPass:
    """One pass over `data`: per-class sums of every tap (and the features, if `cache`)."""
    classes = data.num_classes
    sums = {
        t.name: torch.zeros(classes, t.units * t.positions, dtype=torch.float64, device=device)
        for t in recorder.taps
    }
    counts = torch.zeros(classes, dtype=torch.long)
    features = (
        {t.name: torch.empty(len(data), t.units * t.positions) for t in recorder.taps}
        if cache
        else None
    )
    correct, start = 0, 0
    with console.progress(description, data.num_batches(batch_size)) as task:
        for images, labels in data.batches(spec, batch_size):
            on_device = labels.to(device)
            # per-class sums of the batch by one float32 GEMM, accumulated in float64
            one_hot = F.one_hot(on_device, classes).T.float()
            rows = slice(start, start + len(labels))
            consume = functools.partial(_accumulate, sums, features, one_hot, rows)
            _, logits = recorder.run(
                prepare_batch(to_device(images, device), spec), full=True, consume=consume
            )
            correct += int((logits.argmax(1) == on_device).sum())
            counts += torch.bincount(labels, minlength=classes)
            start += len(labels)
            task.advance()
    return SplitPass(
        {k: v.cpu() for k, v in sums.items()}, counts, data.labels.clone(), features, correct
    )


def run_sharded_split(
    model: nn.Module, recorder: TapRecorder, data: DataSplit, spec: InputSpec, **options: Any
) -> SplitPass:
    """`run_split` on this rank's exact shard, combined over ranks (`run_split` in one process).

    Sums, counts and correct predictions are all-reduced; cached features are gathered back
    into the split's order, so every rank holds what one process would.
    """
    if not distributed.is_distributed():
        return run_split(model, recorder, data, spec, **options)
    part = run_split(model, recorder, distributed.shard_split(data), spec, **options)
    features = part.features
    if features is not None:
        features = {k: distributed.gather_shards(v, len(data)) for k, v in features.items()}
    return SplitPass(
        {k: distributed.all_reduce_sum(v) for k, v in part.sums.items()},
        distributed.all_reduce_sum(part.counts),
        data.labels.clone(),
        features,
        round(distributed.sum_numbers(part.model_correct)[0]),
    )


def _accumulate(
    sums, features, one_hot: torch.Tensor, rows: slice, tap: Tap, view: torch.Tensor
) -> None:
    """Add a batch's tapped view to the class sums (and the feature cache)."""
    flat = view.reshape(view.shape[0], -1)
    sums[tap.name] += (one_hot @ flat).double()
    if features is not None:
        features[tap.name][rows] = flat

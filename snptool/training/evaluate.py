"""Top-1 accuracy of a model on a data split, overall and per class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from snptool.config import DataConfig, EvaluateConfig, InputSpec
from snptool.core import console
from snptool.core.checkpoint import read_checkpoint
from snptool.core.devices import resolve_device, to_device
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.data.datasets import DataSplit, prepare_batch


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    samples: int
    per_class: list[float]


@dataclass(frozen=True)
class EvaluateResult:
    checkpoint: str
    data: str
    split: str
    accuracy: float
    loss: float
    samples: int
    per_class: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "data": self.data,
            "split": self.split,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "samples": self.samples,
            "per_class": self.per_class,
        }


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: DataSplit,
    spec: InputSpec,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    description: str = "evaluate",
) -> Evaluation:
    """Accuracy, mean cross-entropy and per-class accuracy of `model` (put in eval mode)."""
    was_training = model.training
    model.eval()
    classes = data.num_classes
    correct = torch.zeros(classes, dtype=torch.long)
    total = torch.zeros(classes, dtype=torch.long)
    loss_sum = 0.0
    with console.progress(description, data.num_batches(batch_size)) as task:
        for images, labels in data.batches(spec, batch_size):
            logits = model(prepare_batch(to_device(images, device), spec))
            loss_sum += F.cross_entropy(logits, labels.to(device), reduction="sum").item()
            hits = (logits.argmax(1).cpu() == labels).long()
            correct += torch.bincount(labels, weights=hits, minlength=classes).long()
            total += torch.bincount(labels, minlength=classes)
            task.advance()
    model.train(was_training)
    samples = int(total.sum())
    per_class = [
        float(c) / float(t) if t else float("nan") for c, t in zip(correct, total, strict=True)
    ]
    return Evaluation(float(correct.sum()) / samples, loss_sum / samples, samples, per_class)


def run_evaluate(
    checkpoint_path: str | Path,
    data_spec: str | None = None,
    config: EvaluateConfig | None = None,
    data_config: DataConfig | None = None,
) -> EvaluateResult:
    """Evaluate a checkpoint; the data spec defaults to the one it was trained on."""
    config = config or EvaluateConfig()
    device = resolve_device(config.device)
    checkpoint = read_checkpoint(checkpoint_path, device)
    data = load_checkpoint_data(checkpoint, data_spec, config.split, data_config)
    result = evaluate_model(
        checkpoint.model, data, checkpoint.input_spec, batch_size=config.batch_size, device=device
    )
    per_class = dict(zip(checkpoint.class_names, result.per_class, strict=True))
    return EvaluateResult(
        str(checkpoint_path),
        data.spec,
        config.split,
        result.accuracy,
        result.loss,
        result.samples,
        per_class,
    )

"""`snptool prune`: label-guided dilution of a network (METHODS.md §8), then masked fine-tuning
(finetune.py).

For the listed (analysed) layers ℓ1 … ℓn, in forward order:
- the weight layer that produces ℓ(i+1) reads ℓi's units; AFCC keeps its kernel slice from
  input unit a to output unit b iff Λℓi(a) ∩ Λℓ(i+1)(b) ≠ ∅ (Λ = union of a unit's clusters);
- when ℓn feeds the output layer directly, unit u keeps its connection to label k iff k ∈ Λℓn(u).
Fully connected layers follow the same rule with nodes; a Linear that reads a flattened conv
tap gives every channel its H·W inputs. Masks are stored as tensors (`snptool/mask/<param>`)
so the zeros survive fine-tuning and export.

Inverted-residual (MBConv) blocks (connections.py): the expand conv (block input →
`<block>.block.0`) and the projection conv (SE output `<block>.block.2` → `<block>.block.3`)
follow the rule. **Decision**: a hidden channel that keeps no projection connection is cut out
of its block: the squeeze-excitation's squeeze conv loses its column too (the channel's mean
would still gate the others), so compaction removes the channel exactly. Blocks without an
expand conv (expand ratio 1) keep their SE: their hidden channels are the block input's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snptool.config import (
    DataConfig,
    PruneConfig,
    config_to_dict,
)
from snptool.core.checkpoint import (
    MASK_PREFIX,
    Checkpoint,
    make_metadata,
    read_checkpoint,
    write_checkpoint,
)
from snptool.core.devices import resolve_device
from snptool.core.files import check_output_path, provenance
from snptool.core.training_loop import check_amp
from snptool.data.checkpoint_data import load_checkpoint_data
from snptool.data.datasets import DataSplit, prepare_batch
from snptool.pruning.finetune import apply_masks, dense_teacher, finetune, trainable_modules
from snptool.pruning.methods import (
    METHODS,
    PrunedLayer,
    PruneInputs,
    PrunePlan,
    layer_chains,
    read_label_sets,
)
from snptool.pruning.sparsity import regularised_model
from snptool.training.evaluate import evaluate_model


@dataclass(frozen=True)
class PruneResult:
    output: str
    method: str
    dense_accuracy: float
    accuracy_before: float
    accuracy_after: float
    layers: list[PrunedLayer] = field(default_factory=list)
    seconds: float = 0.0
    size: dict[str, Any] | None = None  # MACs and parameters, dense and pruned (unit removal)
    history: list[dict] = field(default_factory=list)  # one row per fine-tuning epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "method": self.method,
            "dense_accuracy": self.dense_accuracy,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "layers": [layer.to_json() for layer in self.layers],
            "seconds": self.seconds,
            "size": self.size,
            "history": self.history,
        }


def taylor_batches(
    checkpoint: Checkpoint, data: DataSplit, config: PruneConfig, device: torch.device
) -> list:
    """The first `config.removal.taylor_batches` shuffled training batches (prepared): Taylor's."""
    batches = []
    spec = checkpoint.input_spec
    batch_size = config.finetune.batch_size
    for images, labels in data.batches(spec, batch_size, shuffle=True, seed=config.seed):
        batches.append((prepare_batch(images.to(device), spec), labels.to(device)))
        if len(batches) == config.removal.taylor_batches:
            break
    return batches


def fine_tune(
    model: nn.Module,
    plan: PrunePlan,
    checkpoint: Checkpoint,
    train_data: DataSplit,
    config: PruneConfig,
    device: torch.device,
    teacher: nn.Module | None,
    every_module: bool,
    test: Callable[[nn.Module], float] | None = None,
) -> list[dict]:
    """Fine-tune the pruned `model` with the plan's masks enforced (finetune.py), augmented as
    the checkpoint was trained, distilled from `teacher` if given; its per-epoch history
    (tested by `test` after every epoch when given)."""
    modules = trainable_modules(model, config.finetune, plan.masks, every_module=every_module)
    training = (checkpoint.metadata.get("training") or {}).get("config") or {}
    augmentation = (training.get("translate", 4), training.get("flip", True))
    spec = checkpoint.input_spec
    return finetune(
        model,
        plan.masks,
        train_data,
        spec,
        config.finetune,
        modules,
        device,
        augmentation,
        teacher,
        seed=config.seed,
        test=test,
    )


def run_prune(
    checkpoint_path: str | Path,
    clusters_path: str | Path | None,
    output: str | Path,
    config: PruneConfig | None = None,
    *,
    layers: list[str] | list[list[str]] | None = None,
    probes_path: str | Path | None = None,
    data_spec: str | None = None,
    data_config: DataConfig | None = None,
) -> PruneResult:
    """Dilute a checkpoint by its units' label sets, fine-tune, and write the pruned checkpoint.

    `layers` is one chain of consecutive analysed layers, or several chains (lists) pruned
    together, e.g. the feed-forward layers of every transformer block; default: every layer
    in the clusters file, as one chain. With `config.connections.classifier == "probe"` the
    network is cut after the last listed layer and classified by that layer's probe (from
    `probes_path`), as in the authors' code. The weight criteria (`config.WEIGHT_CRITERIA`)
    need no clusters file (`clusters_path=None`) when `layers` names the taps.
    """
    config = config or PruneConfig()
    method = METHODS[config.method]
    method.check(config, clusters_path)
    check_output_path(output, checkpoint_path, clusters_path, probes_path)
    started = time.perf_counter()
    device = resolve_device(config.device)
    check_amp(config.finetune.amp, device, "--finetune-amp")  # before any work
    checkpoint = read_checkpoint(checkpoint_path, device)
    spec = checkpoint.input_spec
    chains = layer_chains(layers)
    flat = [name for names_ in chains for name in names_] if chains else None
    if clusters_path is None:
        names, label_sets = list(flat or []), {}
    else:
        names, label_sets = read_label_sets(
            clusters_path, checkpoint, flat, config, method.label_sets
        )
    train_data = None
    sparse = config.removal.sparsity_epochs > 0
    if config.finetune.epochs or method.needs_batches or sparse:
        train_data = load_checkpoint_data(checkpoint, data_spec, "train", data_config)
    batches = None
    if method.needs_batches:
        batches = taylor_batches(checkpoint, train_data, config, device)
    ranked, sparsity_history = checkpoint, []
    if sparse:
        ranked, sparsity_history = regularised_model(checkpoint, train_data, config, device)
    inputs = PruneInputs(
        ranked, clusters_path, names, chains or [names], label_sets, probes_path, batches
    )
    plan = method.plan(inputs, config)
    model, masks = plan.model, plan.masks
    model.to(device)
    test_data = load_checkpoint_data(checkpoint, data_spec, "test", data_config)
    dense = evaluate_model(
        checkpoint.model, test_data, spec, device=device, description="dense"
    ).accuracy
    distilling = config.finetune.distill and config.finetune.epochs
    teacher = dense_teacher(checkpoint.model) if distilling else None
    apply_masks(model, masks)
    before = evaluate_model(model, test_data, spec, device=device, description="pruned").accuracy
    after, history = before, []

    def test(tuned: nn.Module) -> float:
        return evaluate_model(
            tuned, test_data, spec, device=device, description="fine-tuned"
        ).accuracy

    if config.finetune.epochs:
        every_module = method.removes_channels
        each_epoch = test if config.finetune.test_every_epoch else None
        history = fine_tune(
            model, plan, checkpoint, train_data, config, device, teacher, every_module, each_epoch
        )
        after = history[-1]["test_accuracy"] if each_epoch else test(model)
    record = {
        "method": config.method,
        "layers": names,
        "chains": chains or [names],
        "connections": [vars(c) for c in plan.connections],
        "dilution": {layer.module: layer.dilution for layer in plan.layers},
        "dense_accuracy": dense,
        "accuracy_before": before,
        "accuracy_after": after,
        "finetune_history": history,
        "sparsity_history": sparsity_history,
        "config": config_to_dict(config),
        **plan.record,
    }
    meta = make_metadata(
        arch=plan.arch,
        class_names=checkpoint.class_names,
        input_spec=spec,
        data=checkpoint.metadata.get("data"),
        provenance=provenance(
            {"checkpoint": checkpoint_path, "clusters": clusters_path, "probes": probes_path}
        ),
        training=checkpoint.metadata.get("training"),
        pruning=record,
    )
    extras = {MASK_PREFIX + name: mask.to(torch.uint8) for name, mask in masks.items()}
    write_checkpoint(output, model, meta, extras)
    size = plan.record.get("structured")
    if size is not None:
        keys = (
            "dense_macs",
            "macs",
            "mac_ratio",
            "dense_params",
            "params",
            "fraction",
            "removed_share",
        )
        size = {key: size[key] for key in keys}
    return PruneResult(
        str(output),
        config.method,
        dense,
        before,
        after,
        plan.layers,
        time.perf_counter() - started,
        size,
        history,
    )


__all__ = ["run_prune", "PruneResult"]

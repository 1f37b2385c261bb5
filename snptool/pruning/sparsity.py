"""Sparsity-regularised training before channel removal: Torch-Pruning's group-norm criterion
as DepGraph prescribes it (Fang et al. 2023). The dense model trains `sparsity_epochs` with
the group regulariser added to every gradient (each coupled group's channels pulled toward
zero, the weakest hardest: `GroupNormPruner.regularize`), so the group norms that rank the
channels separate before `group-norm` removes the weakest.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch_pruning as tp

from snptool.config import PruneConfig
from snptool.core.channel_maps import CUSTOMIZED_PRUNERS, unwrap_unchanged, wrap_channel_maps
from snptool.core.checkpoint import Checkpoint
from snptool.data.datasets import DataSplit
from snptool.pruning.finetune import finetune
from snptool.pruning.structured import classifier_of


def regularised_model(
    checkpoint: Checkpoint, train_data: DataSplit, config: PruneConfig, device: torch.device
) -> tuple[Checkpoint, list[dict]]:
    """The checkpoint with its model trained `config.removal.sparsity_epochs` epochs under the
    group-norm sparsity regulariser (every module trained, the fine-tuning's SGD settings, no
    distillation), and the per-epoch history; the checkpoint itself is left unchanged."""
    model = copy.deepcopy(checkpoint.model).to(device)
    shape = checkpoint.input_spec.shape
    wrap_channel_maps(model, shape)  # as the channel removal groups them
    pruner = tp.pruner.GroupNormPruner(
        model,
        torch.zeros(1, *shape, device=device),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=config.removal.sparsity_reg,
        ignored_layers=classifier_of(model),
        customized_pruners=CUSTOMIZED_PRUNERS,
    )
    training = (checkpoint.metadata.get("training") or {}).get("config") or {}
    settings = dataclasses.replace(
        config.finetune, epochs=config.removal.sparsity_epochs, distill=0.0, test_every_epoch=False
    )
    history = finetune(
        model,
        {},
        train_data,
        checkpoint.input_spec,
        settings,
        [name for name, _ in model.named_children()],
        device,
        (training.get("translate", 4), training.get("flip", True)),
        seed=config.seed,
        regularize=lambda: pruner.regularize(model),
        description="sparsity training",
    )
    unwrap_unchanged(model)
    return dataclasses.replace(checkpoint, model=model.eval()), history


__all__ = ["regularised_model"]

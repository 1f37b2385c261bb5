"""Fine-tuning of a pruned network with its masks enforced, optionally distilled from the dense
model: the second half of `snptool prune`, through the step loop that `train` uses too
(core/training_loop.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from snptool.config import FinetuneConfig
from snptool.core import console
from snptool.core.architectures import ProbeHeadModel
from snptool.core.seeds import seed_everything, stream_seed
from snptool.core.training_loop import Runtime, run_steps
from snptool.data.datasets import DataSplit, augment_batch, prepare_batch
from snptool.errors import LayerError


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights in place (`masks` maps parameter names to 0/1 tensors)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask.to(parameters[name].device, parameters[name].dtype))


def finetune_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    config: FinetuneConfig,
) -> torch.Tensor:
    """Cross-entropy, mixed with distillation from `teacher_logits` when config.distill > 0."""
    loss = F.cross_entropy(logits, labels)
    if teacher_logits is None or not config.distill:
        return loss
    t = config.distill_temperature
    soft = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        log_target=True,
        reduction="batchmean",
    )
    return (1 - config.distill) * loss + config.distill * t * t * soft


def finetune(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    train_data: DataSplit,
    spec,
    config: FinetuneConfig,
    train_modules: list[str],
    device: torch.device,
    augmentation: tuple[int, bool] = (4, True),
    teacher: nn.Module | None = None,
    *,
    seed: int = 0,
    test: Callable[[nn.Module], float] | None = None,
    regularize: Callable[[], None] | None = None,
    description: str = "fine-tune",
) -> list[dict]:
    """Train `train_modules` with the masks re-applied after every step; everything else frozen.

    `augmentation` (translation in pixels, flip) is the one the model was trained with;
    `teacher` (the dense model, eval mode) is distilled from when config.distill > 0. Returns
    one row per epoch (lr, mean loss, training accuracy, and `test`'s accuracy when given).
    `regularize` edits the gradients before every step (sparsity.py).
    """
    translate, flip = augmentation
    seed_everything(seed)
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(m + ".") for m in train_modules))
        if parameter.requires_grad:
            trainable.append(parameter)
    optimizer = torch.optim.SGD(
        trainable,
        lr=config.learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    runtime = Runtime.with_amp(model, device, config.amp, flag="--finetune-amp")
    history: list[dict] = []
    steps = config.epochs * train_data.num_batches(config.batch_size)
    with console.progress(description, steps) as task:
        for epoch in range(config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * config.lr_decay**epoch
            model.train()  # BatchNorm statistics follow the diluted layers
            if config.freeze_bn_stats:
                for module in model.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            generator = torch.Generator().manual_seed(stream_seed(seed, epoch))
            shuffled = train_data.batches(
                spec, config.batch_size, shuffle=True, seed=stream_seed(seed, epoch)
            )

            def prepared(batches=shuffled, generator=generator):
                for images, labels in batches:
                    x = prepare_batch(images.to(device), spec)
                    if config.augment:
                        x = augment_batch(x, translate, flip, generator)
                    teacher_logits = None
                    if teacher is not None and config.distill:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                    labels = labels.to(device)
                    yield x, (labels, teacher_logits), labels

            totals = run_steps(
                runtime,
                optimizer,
                prepared(),
                lambda logits, targets: finetune_loss(logits.float(), *targets, config),
                after_step=lambda: apply_masks(model, masks),
                on_step=lambda totals: task.advance(),
                before_step=regularize,
            )
            row = {
                "epoch": epoch + 1,
                "learning_rate": optimizer.param_groups[0]["lr"],
                "loss": float(totals.loss) / max(totals.seen, 1),
                "train_accuracy": float(totals.correct) / max(totals.seen, 1),
            }
            if test is not None:
                row["test_accuracy"] = test(model.eval())
            history.append(row)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.eval()
    return history


def trainable_modules(
    model: nn.Module,
    config: FinetuneConfig,
    masks: dict[str, torch.Tensor],
    *,
    every_module: bool = False,
) -> list[str]:
    """The modules to fine-tune: `config.train_layers` (named as in the original network, also
    with `--classifier probe`, whose probe is `head`; `all` for every module), else the pruned
    modules whose parameters carry masks, or every module (`every_module`: after channel
    removal, which may change any shape)."""
    if not config.train_layers and not every_module:
        return sorted({name.rpartition(".")[0] for name in masks})
    if not config.train_layers or "all" in config.train_layers:
        return [name for name, _ in model.named_children()]
    names = {name for name, _ in model.named_parameters()}
    prefix = "body." if isinstance(model, ProbeHeadModel) else ""
    modules = []
    for layer in config.train_layers:
        module = layer if layer == "head" or layer.startswith(prefix) else prefix + layer
        if not any(name.startswith(module + ".") for name in names):
            raise LayerError(
                f"--train-layers {layer} names no module with parameters; "
                "use module names as `snptool layers` prints them."
            )
        modules.append(module)
    return modules


def dense_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of the dense model (eval mode) to distill from."""
    teacher = copy.deepcopy(model).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher

"""`snptool train`: the research's training recipe (METHODS.md §3) on any architecture spec.

Every epoch writes the last state (with the optimiser's state, so `--resume` continues
exactly) and, when the test accuracy improved, the best state. Shuffling, augmentation,
mixing and dropout are seeded per epoch and the lr is a pure function of the step, so a
resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from snptool.config import DataConfig, InputSpec, TrainConfig, config_to_dict
from snptool.core import console, distributed
from snptool.core.architectures import build_model, default_input_size, run_dummy_input
from snptool.core.checkpoint import Checkpoint, make_metadata, read_checkpoint, write_checkpoint
from snptool.core.devices import resolve_device, to_device
from snptool.core.files import check_output_path, provenance
from snptool.core.seeds import seed_everything, stream_seed
from snptool.core.training_loop import Runtime, StepTotals, check_amp, run_steps
from snptool.core.trust import trust_code
from snptool.data.checkpoint_data import check_classes
from snptool.data.datasets import DataSplit, augment_batch, load_data, prepare_batch
from snptool.data.mixing import apply_mix, draw_mix, mixing_rng
from snptool.errors import UsageError
from snptool.training.evaluate import evaluate_model

OPTIMIZER_PREFIX = "snptool/optimizer/"  # + state key + "/" + parameter name
LEGACY_MOMENTUM_PREFIX = "snptool/momentum/"  # + parameter name: SGD files before AdamW
ADAMW_BETAS = (0.9, 0.999)
RANK_SEED_STRIDE = 7_919  # per-rank offset of the augmentation and dropout seeds


@dataclass(frozen=True)
class InputOverrides:
    """Input-spec flags of `train` and `import`; None keeps the default."""

    channels: int | None = None
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None

    def resolve(self, fallback: tuple[int, int, int]) -> InputSpec:
        channels = self.channels or fallback[0]
        height, width = self.size or fallback[1:]
        default = InputSpec(channels=channels)
        return InputSpec(
            channels=channels,
            height=height,
            width=width,
            mean=self.mean or default.mean,
            std=self.std or default.std,
            resize=self.resize,
        )


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    learning_rate: float
    loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    images_per_second: float


EPOCH_FIELDS = frozenset(f.name for f in dataclasses.fields(EpochRecord))


@dataclass(frozen=True)
class TrainResult:
    output: str
    best_output: str
    best_epoch: int
    best_accuracy: float
    final_accuracy: float
    history: list[EpochRecord] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "best_output": self.best_output,
            "best_epoch": self.best_epoch,
            "best_accuracy": self.best_accuracy,
            "final_accuracy": self.final_accuracy,
            "history": [vars(record) for record in self.history],
            "config": self.config,
        }


def best_output_path(output: str | Path) -> Path:
    """OUT.safetensors → OUT.best.safetensors."""
    output = Path(output)
    return output.with_name(f"{output.stem}.best{output.suffix or '.safetensors'}")


def learning_rate_at(epoch: float, config: TrainConfig) -> float:
    """The lr `epoch` epochs into the run (from 0; fractional per step: epoch + batch / batches).

    step: lr × q^⌊epoch / Δt⌋. cosine: min_lr + (lr − min_lr)·½(1 + cos(π·(epoch − W) / (E − W)))
    after W warm-up epochs of E. During the warm-up, min_lr + (that − min_lr)·epoch / W.
    """
    warmup, floor = config.warmup_epochs, config.min_lr
    if config.schedule == "cosine":
        progress = min(max(epoch - warmup, 0.0) / (config.epochs - warmup), 1.0)
        rate = floor + (config.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        rate = config.learning_rate * config.lr_decay ** (math.floor(epoch) // config.lr_step)
    if epoch < warmup:
        rate = floor + (rate - floor) * epoch / warmup
    return rate


def training_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy against labels [B] or mixed targets [B, K], each target first
    smoothed to (1 − ε)·target + ε / K."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2 weight decay) or AdamW (decoupled weight decay); without
    `decay_norm_bias`, 1-D parameters (biases, norm scales) are not decayed (timm's rule)."""
    parameters: Any = list(model.parameters())
    if not config.decay_norm_bias:
        parameters = [
            {"params": [p for p in parameters if p.ndim > 1]},
            {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0},
        ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            parameters,
            lr=config.learning_rate,
            betas=ADAMW_BETAS,
            weight_decay=config.weight_decay,
        )
    return torch.optim.SGD(
        parameters,
        lr=config.learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def run_train(
    arch: str | None,
    data_spec: str | None,
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    arch_kwargs: dict[str, Any] | None = None,
    data_config: DataConfig | None = None,
    inputs: InputOverrides | None = None,
    resume: str | Path | None = None,
    best_output: str | Path | None = None,
) -> TrainResult:
    """Train `arch` on `data_spec` and write the last and the best checkpoint.

    With `resume`, the architecture, input spec, data spec and split come from that file.
    """
    config = config or TrainConfig()
    data_config = data_config or DataConfig()
    device = distributed.setup(resolve_device(config.device))
    check_amp(config.amp, device)
    best_output = Path(best_output) if best_output else best_output_path(output)
    distributed.check_agreement(
        {
            "-o": output,
            "--best-output": best_output,
            "--resume": resume,
            "--arch": arch,
            "--data": data_spec,
            "--arch-kwargs": arch_kwargs,
            "the training flags": config_to_dict(config),
            "the data flags": config_to_dict(data_config),
            "the input flags": inputs,
        }
    )
    check_output_path(output, resume)
    check_output_path(best_output, resume)
    if Path(output).resolve() == best_output.resolve():
        raise UsageError("--best-output must differ from -o.")
    if config.batch_size % distributed.world_size():
        raise distributed.DistributedError(
            f"--batch-size {config.batch_size} does not split evenly over "
            f"{distributed.world_size()} processes; give a multiple of the world size."
        )

    state = _resume_state(resume, arch, config.optimizer, device) if resume is not None else None
    if state is not None:
        data_spec = data_spec or state.metadata.get("data")
        data_config = data_config.inherit(state.metadata)
    data_spec = data_spec or "digits"
    train_data = load_data(data_spec, "train", data_config)
    test_data = load_data(data_spec, "test", data_config)
    seed_everything(config.seed)
    if state is not None:
        check_classes(state, train_data)
        model, metadata = state.model, state.metadata
        spec, arch_record = state.input_spec, metadata["arch"]
        history = [
            EpochRecord(**{k: r[k] for k in EPOCH_FIELDS}) for r in metadata["training"]["history"]
        ]
    else:
        if not arch:
            raise UsageError("give --arch NAME (or --resume CHECKPOINT).")
        fallback = default_input_size(arch) or train_data.native_shape or (3, 32, 32)
        spec = (inputs or InputOverrides()).resolve(fallback)
        model, arch_record = build_model(arch, arch_kwargs, num_classes=train_data.num_classes)
        run_dummy_input(model, spec.shape, arch)
        history = []
    runtime = _runtime(model, config, device)
    optimizer = build_optimizer(model, config)
    if state is not None:
        _restore_optimizer(model, optimizer, state.extras)

    def save(
        path: Path, kind: str, epochs: list[EpochRecord], extras: dict | None, weights: nn.Module
    ):
        if not distributed.is_main():  # under torchrun rank 0 alone writes
            return
        metadata = make_metadata(
            arch=arch_record,
            class_names=train_data.class_names,
            input_spec=spec,
            data=data_spec,
            provenance=provenance({"resume": resume, "data": train_data.source_file}),
            training=_training_record(config, epochs, kind, train_data, test_data),
        )
        write_checkpoint(path, weights, metadata, extras)

    best = max(history, key=lambda r: r.test_accuracy, default=None)
    start = len(history)
    if start >= config.epochs:
        raise UsageError(
            f"{resume} has already trained {start} epochs; raise --epochs above {start}."
        )
    steps = (config.epochs - start) * train_data.num_batches(config.batch_size)
    with console.progress("train", steps) as task:
        for epoch in range(start, config.epochs):
            record = _train_epoch(
                runtime, model, optimizer, train_data, test_data, spec, config, epoch, task
            )
            history.append(record)
            console.log(
                f"epoch {epoch + 1}/{config.epochs}  loss {record.loss:.4f}  "
                f"train {record.train_accuracy:.4f}  test {record.test_accuracy:.4f}  "
                f"lr {record.learning_rate:.3g}  {record.images_per_second:.0f} img/s"
            )
            save(Path(output), "last", history, _optimizer_extras(model, optimizer), model)
            if best is None or record.test_accuracy > best.test_accuracy:
                best = record
                save(best_output, "best", history, None, model)
    last = history[-1]
    return TrainResult(
        str(output),
        str(best_output),
        best.epoch,
        best.test_accuracy,
        last.test_accuracy,
        history,
        config_to_dict(config),
    )


def _runtime(model: nn.Module, config: TrainConfig, device: torch.device) -> Runtime:
    """Move the model to its device (NHWC for convs on CUDA) and wrap it in DDP under torchrun."""
    channels_last = (
        config.channels_last
        and device.type == "cuda"
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )
    if channels_last:
        model.to(device, memory_format=torch.channels_last)
    else:
        model.to(device)
    forward = model
    if distributed.is_distributed():
        device_ids = [device] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return Runtime.with_amp(forward, device, config.amp, channels_last=channels_last)


def epoch_shard(data: DataSplit, config: TrainConfig, epoch: int) -> np.ndarray:
    """This rank's sample order for one epoch: the split's seeded shuffle, strided over the
    ranks (rank r takes every W-th, the last samples % W dropped), so the ranks' batches
    together are the one-process run's global batches."""
    order = data.order(shuffle=True, seed=stream_seed(config.seed, epoch))
    if not distributed.is_distributed():
        return order
    return order[distributed.shard_indices(len(order), "the training split", even=True)]


def _train_epoch(
    runtime: Runtime,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_data: DataSplit,
    test_data: DataSplit,
    spec: InputSpec,
    config: TrainConfig,
    epoch: int,
    task: console.ProgressTask,
) -> EpochRecord:
    device, rank_seed = runtime.device, distributed.rank() * RANK_SEED_STRIDE
    batch_size = config.batch_size // distributed.world_size()
    order = epoch_shard(train_data, config, epoch)
    steps = math.ceil(len(order) / batch_size)
    torch.manual_seed(stream_seed(config.seed, epoch) + rank_seed)  # dropout etc.
    generator = torch.Generator().manual_seed(stream_seed(config.seed, epoch) + rank_seed)
    mixing = mixing_rng(config.seed, epoch)
    mixes = config.mixup > 0 or config.cutmix > 0
    model.train()
    clock = {"started": 0.0, "busy": 0.0}
    loaded = train_data.images.batches(order, batch_size, spec, train_data.config.workers)

    def prepared():
        for step, (images, labels) in enumerate(loaded):
            clock["started"] = time.perf_counter()  # data loading is not busy time
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(epoch + step / steps, config)
            x = prepare_batch(to_device(images, device), spec)
            if config.augment:
                x = augment_batch(x, config.translate, config.flip, generator)
            labels = to_device(labels, device)
            if mixes:  # soft targets; accuracy against each image's larger share
                draw = draw_mix(config.mixup, config.cutmix, config.mix_prob, *x.shape[2:], mixing)
                x, targets = apply_mix(x, labels, train_data.num_classes, draw)
                labels = targets.argmax(1)
            else:
                targets = labels
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, targets, labels

    def on_step(totals: StepTotals) -> None:
        clock["busy"] += time.perf_counter() - clock["started"]
        task.advance()
        if task.live:
            task.describe(
                f"epoch {epoch + 1}/{config.epochs} loss {float(totals.loss) / totals.seen:.3f}"
            )

    loop_started = time.perf_counter()
    totals = run_steps(
        runtime,
        optimizer,
        prepared(),
        lambda logits, targets: training_loss(logits.float(), targets, config.label_smoothing),
        on_step=on_step,
    )
    busy = clock["busy"]
    if device.type == "cuda":  # steps run asynchronously: time the whole loop, synced once
        torch.cuda.synchronize(device)
        busy = time.perf_counter() - loop_started
    test = _evaluate_shards(model, test_data, spec, config, device)
    loss_total, correct_total, seen_total, busy_total = distributed.sum_numbers(
        float(totals.loss), float(totals.correct), totals.seen, busy
    )
    busy = busy_total / distributed.world_size()  # the mean rank's time
    return EpochRecord(
        epoch=epoch + 1,
        learning_rate=learning_rate_at(epoch, config),
        loss=loss_total / seen_total,
        train_accuracy=correct_total / seen_total,
        test_loss=test.loss,
        test_accuracy=test.accuracy,
        seconds=busy,
        images_per_second=seen_total / busy if busy else 0.0,
    )


def _evaluate_shards(model, test_data, spec, config, device):
    """Test accuracy and loss: each rank its exact shard, the sums combined over ranks."""
    shard = distributed.shard_split(test_data)
    test = evaluate_model(
        model, shard, spec, batch_size=config.eval_batch_size, device=device, description="test"
    )
    if not distributed.is_distributed():
        return test
    correct, loss, samples = distributed.sum_numbers(
        round(test.accuracy * test.samples), test.loss * test.samples, test.samples
    )
    return dataclasses.replace(
        test, accuracy=correct / samples, loss=loss / samples, samples=int(samples), per_class=[]
    )


def _training_record(config, history, kind, train_data, test_data) -> dict[str, Any]:
    best = max(history, key=lambda r: r.test_accuracy)
    record = {
        "config": config_to_dict(config),
        "history": [vars(r) for r in history],
        "epochs_done": len(history),
        "saved": kind,
        "saved_epoch": len(history) if kind == "last" else best.epoch,
        "best_epoch": best.epoch,
        "best_accuracy": best.test_accuracy,
        "final_accuracy": history[-1].test_accuracy,
        "train_data": train_data.record(),
        "test_data": test_data.record(),
    }
    if distributed.is_distributed():  # one-process files stay as they were
        record["world_size"] = distributed.world_size()
    return record


def _resume_state(
    resume: str | Path, arch: str | None, optimizer: str, device: torch.device
) -> Checkpoint:
    with trust_code(arch):  # the spec named here may run, as when training started
        state = read_checkpoint(resume, device)
    if arch and arch != state.metadata["arch"]["spec"]:
        raise UsageError(
            f"--arch {arch} differs from {resume}'s {state.metadata['arch']['spec']}; drop --arch."
        )
    training = state.metadata.get("training") or {}
    if training.get("saved") != "last":
        raise UsageError(
            f"{resume} is not the last state of a `snptool train` run; resume from its -o file."
        )
    incomplete = [r for r in training.get("history") or [] if not r.keys() >= EPOCH_FIELDS]
    if incomplete or not training.get("history"):
        raise UsageError(
            f"{resume}'s training history is empty or lacks "
            f"{', '.join(sorted(EPOCH_FIELDS - incomplete[0].keys())) if incomplete else 'epochs'}"
            "; a run can be resumed only from the last state `snptool train` wrote."
        )
    trained_with = (training.get("config") or {}).get("optimizer", "sgd")
    if optimizer != trained_with:
        raise UsageError(
            f"{resume} was trained with --optimizer {trained_with}; resume it with the same."
        )
    state.model.train()
    return state


def _optimizer_extras(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Every tensor of the optimiser's per-parameter state (SGD's momentum, AdamW's moments
    and step), keyed OPTIMIZER_PREFIX + state key + "/" + parameter name."""
    extras = {}
    for name, parameter in model.named_parameters():
        for key, value in optimizer.state.get(parameter, {}).items():
            if isinstance(value, torch.Tensor):
                extras[f"{OPTIMIZER_PREFIX}{key}/{name}"] = value
    return extras


def _restore_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, extras: dict) -> None:
    """Load `_optimizer_extras` (or an older file's momentum) into a fresh optimiser."""
    parameters = dict(model.named_parameters())
    order = [p for group in optimizer.param_groups for p in group["params"]]
    index = {id(parameter): i for i, parameter in enumerate(order)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for extra, value in extras.items():
        if extra.startswith(LEGACY_MOMENTUM_PREFIX):
            key, name = "momentum_buffer", extra.removeprefix(LEGACY_MOMENTUM_PREFIX)
        elif extra.startswith(OPTIMIZER_PREFIX):
            key, name = extra.removeprefix(OPTIMIZER_PREFIX).split("/", 1)
        else:
            continue
        if name in parameters:
            state.setdefault(index[id(parameters[name])], {})[key] = value.clone()
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})  # casts to each parameter


__all__ = ["run_train", "TrainResult", "EpochRecord", "InputOverrides", "best_output_path"]

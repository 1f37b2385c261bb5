"""The one SGD step loop: `train`, prune's fine-tuning and `probe`'s read-outs all run it.

Each caller yields its own prepared batches (preprocessing, augmentation, mixing, a teacher's
logits, tapped features) and says how to score the forward pass's output; the loop runs the
forward pass (under autocast where the runtime asks for it), the backward pass, the caller's
`before_step` hook (a regulariser edits the gradients there), one optimiser step, the caller's
`after_step` hook (fine-tuning re-applies its masks there) and sums the loss, and the correct
predictions where the output is one logits tensor, on the device, so no step waits for the host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from snptool.errors import UsageError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # `--amp` mode → autocast dtype


def check_amp(amp: str, device: torch.device, flag: str = "--amp") -> None:
    """Refuse fp16 autocast off CUDA (`flag` names the option in the error)."""
    if amp == "fp16" and device.type != "cuda":
        raise UsageError(f"{flag} fp16 needs a CUDA device, not {device}; use {flag} bf16.")


@dataclass
class Runtime:
    """How the training step runs: the module to call (DDP-wrapped under torchrun), autocast
    dtype, fp16 gradient scaler, NHWC inputs."""

    forward: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @classmethod
    def with_amp(
        cls, forward: nn.Module, device: torch.device, amp: str, *, flag: str = "--amp", **kwargs
    ) -> Runtime:
        """A runtime under the `amp` mode (off, bf16, or fp16 with a gradient scaler)."""
        check_amp(amp, device, flag)
        scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        return cls(forward, device, AMP_DTYPES.get(amp), scaler, **kwargs)

    def backward_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        before_step: Callable[[], None] | None = None,
    ) -> None:
        """Backward pass, `before_step` (it may edit the gradients), optimiser step."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if before_step is not None:
            self.scaler.unscale_(optimizer)
            before_step()
        self.scaler.step(optimizer)
        self.scaler.update()


@dataclass
class StepTotals:
    """Sums over the steps so far: loss × samples (float64) and correct predictions, on the
    device, and the samples seen."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0


# (inputs, what the loss reads, labels for accuracy)
Batch = tuple[Any, Any, torch.Tensor]
Loss = Callable[[Any, Any], torch.Tensor]  # (the forward pass's output, what the loss reads)


def run_steps(
    runtime: Runtime,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    loss_of: Loss,
    *,
    after_step: Callable[[], None] | None = None,
    on_step: Callable[[StepTotals], None] | None = None,
    before_step: Callable[[], None] | None = None,
) -> StepTotals:
    """One optimiser step per batch; `before_step` runs between the backward pass and the step
    (a regulariser edits the gradients there), `after_step` after each step, `on_step` gets the
    running totals (progress, timing). Correct predictions count where the output is a
    [B, classes] tensor of logits."""
    totals = StepTotals(
        torch.zeros((), dtype=torch.float64, device=runtime.device),
        torch.zeros((), dtype=torch.long, device=runtime.device),
    )
    for x, targets, labels in batches:
        with runtime.autocast():
            output = runtime.forward(x)
            loss = loss_of(output, targets)
        runtime.backward_step(loss, optimizer, before_step)
        if after_step is not None:
            after_step()
        totals.loss += loss.detach().double() * len(labels)
        if isinstance(output, torch.Tensor):
            totals.correct += (output.argmax(1) == labels).sum()
        totals.seen += len(labels)
        if on_step is not None:
            on_step(totals)
    if not bool(torch.isfinite(totals.loss)):  # one check a pass: no per-step device sync
        raise UsageError(
            f"training diverged: the loss became {float(totals.loss)} in this epoch, so "
            "nothing of it is written (the files of earlier epochs are kept); lower --lr, "
            "--weight-decay or the mixing, and train again."
        )
    return totals

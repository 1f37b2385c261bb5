"""Mixup and CutMix of training batches (the CCT authors' recipe: timm's batch mode).

A batch is mixed with its own reverse (image i with image B − 1 − i) at one λ ~ Beta(α, α):
mixup blends the images, x·λ + x_rev·(1 − λ); CutMix pastes a box of the reversed batch,
side √(1 − λ) of the image's about a uniform centre, clipped, and takes λ = the kept fraction
of the pixels. The targets are λ·onehot(y) + (1 − λ)·onehot(y_rev).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from snptool.core.seeds import stream_seed


@dataclass(frozen=True)
class MixDraw:
    """One batch's draw: `kind` mixup or cutmix, the target weight `lam` of the batch itself,
    and CutMix's pasted box of rows [top, bottom) and columns [left, right)."""

    kind: str
    lam: float
    box: tuple[int, int, int, int] | None = None


def mixing_rng(seed: int, epoch: int) -> np.random.Generator:
    """The draws of one epoch, from the training seed (a resumed run repeats them)."""
    return np.random.default_rng(stream_seed(seed, epoch) % 2**63)


def draw_mix(
    mixup: float,
    cutmix: float,
    mix_prob: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> MixDraw | None:
    """None (the batch stays unmixed, probability 1 − `mix_prob`) or the batch's mix.

    With both alphas > 0, CutMix or mixup with probability ½ each. Alphas of 0 are off.
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    if rng.random() >= mix_prob:
        return None
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    if not use_cutmix:
        return MixDraw("mixup", float(rng.beta(mixup, mixup)))
    box = cutmix_box(float(rng.beta(cutmix, cutmix)), height, width, rng)
    top, bottom, left, right = box
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return MixDraw("cutmix", kept, box)


def cutmix_box(
    lam: float, height: int, width: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Rows [top, bottom), columns [left, right) of a box of ≈ (1 − lam) of the area."""
    side = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * side), int(width * side)
    centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(centre_y - box_h // 2, 0), min(centre_y + box_h // 2, height)
    left, right = max(centre_x - box_w // 2, 0), min(centre_x + box_w // 2, width)
    return top, bottom, left, right


def apply_mix(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, draw: MixDraw | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixed batch and its soft targets [B, num_classes] (one-hot when `draw` is None)."""
    targets = F.one_hot(labels, num_classes).to(x.dtype)
    if draw is None:
        return x, targets
    reverse = x.flip(0)
    if draw.kind == "mixup":
        mixed = x * draw.lam + reverse * (1.0 - draw.lam)
    else:
        top, bottom, left, right = draw.box
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = reverse[:, :, top:bottom, left:right]
    return mixed, targets * draw.lam + targets.flip(0) * (1.0 - draw.lam)


__all__ = ["MixDraw", "apply_mix", "cutmix_box", "draw_mix", "mixing_rng"]

"""Seeds: one for the whole process, and one per numbered stream (epoch, tap) of a seeded run."""

from __future__ import annotations

import random

import numpy as np
import torch

STREAM_STRIDE = 100_003  # a prime, so neighbouring seeds' streams do not collide early


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: int) -> int:
    """The seed of stream `stream` of a run seeded with `seed`: an epoch's shuffling,
    augmentation or mixing (`stream` = the epoch), a probe's initialisation (its tap's hash)."""
    return seed * STREAM_STRIDE + stream

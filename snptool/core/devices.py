"""Device choice and seeding."""

from __future__ import annotations

import torch

from snptool.config import check_device
from snptool.errors import UsageError


def resolve_device(device: str) -> torch.device:
    """`auto` → cuda when available, else cpu; `cuda` without a GPU is an error."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--device {device} was asked for, but no CUDA device is available; use --device cpu."
        )
    return torch.device(device)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host batch on `device`; to CUDA through pinned memory, so the copy overlaps compute."""
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)

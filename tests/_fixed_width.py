"""A user's network that keeps a width outside its parameters (`self.width`), as some
third-party models do: once channels are removed its forward no longer runs."""

from __future__ import annotations

import torch
from torch import nn


class FixedWidth(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.width = 16
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).view(x.shape[0], self.width, -1).mean(-1)  # (B, C)
        return self.head(x)


def fixed_width(num_classes: int = 10) -> FixedWidth:
    return FixedWidth(num_classes)

"""A user's network that folds image patches into the batch axis inside a block, as timm's
MobileViT does: the folded modules' outputs have no per-image first axis."""

from __future__ import annotations

import torch
from torch import nn


class Folded(nn.Module):
    """Runs `inner` on the four quadrants of every image as separate batch entries."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inner = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        patches = x.reshape(batch, channels, 2, height // 2, 2, width // 2)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(-1, channels, height // 2, width // 2)
        y = self.inner(patches)  # (4B, C, H/2, W/2)
        y = y.reshape(batch, 2, 2, channels, height // 2, width // 2).permute(0, 3, 1, 4, 2, 5)
        return y.reshape(batch, channels, height, width)


class FoldingNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Folded(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def folding_net(num_classes: int = 10) -> FoldingNet:
    return FoldingNet(num_classes)

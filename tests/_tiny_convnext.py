"""A tiny ConvNeXt-like network for tests (a user's own architecture file): a patchify stem and
one block whose MLP runs on channels-last tensors, as torchvision's CNBlock does."""

import torch
from torch import nn


class Permute(nn.Module):
    """torchvision.ops.Permute: the module that turns NCHW into NHWC and back."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.to_nhwc = Permute([0, 2, 3, 1])
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.to_nchw = Permute([0, 3, 1, 2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.to_nhwc(self.conv_dw(x))))  # (B, H, W, C)
        return x + self.to_nchw(y)


class TinyConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 12, hidden: int = 24) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 4, stride=4)  # 32×32 → 8×8
        self.block = Block(width, hidden)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def tiny_convnext(num_classes: int = 10) -> TinyConvNeXt:
    return TinyConvNeXt(num_classes)

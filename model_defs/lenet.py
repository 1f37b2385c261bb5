"""Generalised LeNet: two conv layers with configurable filter counts.

Shallow-LeNet scaling: arXiv 2211.11106; ../shared/METHODS.md §9.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model_defs._blocks import conv_bn_relu, fc_head, relu_taps
from model_defs._registry import register_model

CLASSIC_FILTERS = (6, 16)  # LeNet-5's conv depths
CLASSIC_FC_WIDTHS = (120, 84)


class LeNet(nn.Module):
    """LeNet: `features` (conv, relu, pool, conv, relu, pool) then `classifier` (FC head).

    Args:
        filters: output channels of the two conv layers.
        fc_widths: hidden FC widths.
        kernel_size: conv kernel side; convs are unpadded.
        input_size: side of the square input, used to size the first FC layer.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        filters: Sequence[int] = CLASSIC_FILTERS,
        fc_widths: Sequence[int] = CLASSIC_FC_WIDTHS,
        kernel_size: int = 5,
        input_size: int = 32,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(filters) != 2:
            raise ValueError(f"filters has {len(filters)} entries; expected 2 (one per conv)")
        layers: list[nn.Module] = []
        side = input_size
        for width in filters:
            layers += conv_bn_relu(
                in_channels, int(width), kernel_size=kernel_size, padding=0, batch_norm=batch_norm
            )
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            in_channels = int(width)
            side = (side - kernel_size + 1) // 2  # valid conv, then 2×2 pool
        if side < 1:
            raise ValueError(f"input_size={input_size} is too small for kernel_size={kernel_size}")
        self.features = nn.Sequential(*layers)
        self.classifier = fc_head(in_channels * side * side, fc_widths, num_classes)
        self.probe_taps: list[str] = relu_taps("features", self.features) + relu_taps(
            "classifier", self.classifier
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) → (B, filters[1], H', W')

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))  # (B, filters[1]·H'·W') → (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def lenet(**kwargs) -> LeNet:
    """Generalised LeNet: two 5×5 conv layers with `filters` channels, then FC layers."""
    return LeNet(**kwargs)


@register_model
def lenet5(**kwargs) -> LeNet:
    """LeNet-5: conv 6 and 16 filters, FC 120 and 84."""
    return LeNet(**{"filters": CLASSIC_FILTERS, "fc_widths": CLASSIC_FC_WIDTHS, **kwargs})


@register_model
def tiny_lenet(**kwargs) -> LeNet:
    """Tiny LeNet for tests: conv 4 and 8 filters, FC 16."""
    return LeNet(**{"filters": (4, 8), "fc_widths": (16,), **kwargs})

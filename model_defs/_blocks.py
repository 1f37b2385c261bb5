"""Layers shared by two or more model families: conv-bn-relu stacks, FC heads, tap lists."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int = 3,
    padding: int = 1,
    batch_norm: bool = True,
) -> list[nn.Module]:
    """Return [Conv2d, BatchNorm2d, ReLU] (no BatchNorm2d when `batch_norm` is False).

    A list, not a Sequential, so the layers flatten into the caller's `features` and keep
    torchvision's indices (`features.0` conv, `features.1` bn, `features.2` relu).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=padding)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=False))  # not inplace: forward hooks on taps see the output
    return layers


def fc_head(
    in_features: int, hidden: Sequence[int], num_classes: int, *, dropout: float = 0.0
) -> nn.Sequential:
    """Return Linear, ReLU[, Dropout] per hidden width, then Linear(…, num_classes).

    Dropout sits after each hidden ReLU, i.e. before the next FC layer, as in torchvision's
    VGG classifier, so its state-dict keys (`classifier.0`, `.3`, `.6`) line up.
    """
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=False)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def relu_taps(prefix: str, layers: nn.Sequential) -> list[str]:
    """Return the qualified names (`<prefix>.<index>`) of the ReLUs in `layers`, in order."""
    return [f"{prefix}.{i}" for i, layer in enumerate(layers) if isinstance(layer, nn.ReLU)]


class HeadOutputs(nn.Identity):
    """Identity on the concatenated head outputs `[B, T, h·d]` before an attention's output
    projection: the tap of single-head performance (METHODS.md §7).

    `num_heads` tells snptool how the last dimension splits into heads (unit kind `head`).
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"

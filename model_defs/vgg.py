"""VGG and A-VGGm for 32×32 inputs, in torchvision's module layout.

A-VGGm: arXiv 2303.05800; ../shared/METHODS.md §9. m counts weight layers (conv + FC).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model_defs._blocks import conv_bn_relu, fc_head, relu_taps
from model_defs._registry import register_model

# Conv widths in order; "M" is a 2×2 max-pool. "A", "B", "D" are torchvision's VGG-11/13/16.
CONV_CFGS: dict[str, list[int | str]] = {
    "5": [64, "M", 128, "M", 256, "M", 512, "M", 512, "M"],
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "tiny": [8, "M", 16, "M", 16, "M"],
}
FC_WIDTH = 512  # hidden FC width of every full-size VGG here


def _with_widths(cfg: list[int | str], widths: Sequence[int] | None) -> list[int | str]:
    """Replace the conv widths of `cfg` by `widths`, one per conv layer."""
    if widths is None:
        return list(cfg)
    num_convs = sum(1 for v in cfg if v != "M")
    if len(widths) != num_convs:
        raise ValueError(
            f"widths has {len(widths)} entries; expected {num_convs} (one per conv layer)"
        )
    it = iter(widths)
    return [v if v == "M" else int(next(it)) for v in cfg]


def _move_pools_late(cfg: list[int | str], early_pools: int) -> tuple[list[int | str], int]:
    """Keep the first `early_pools` pools; return the cfg without the rest and their merged kernel.

    The k removed 2×2 pools become one 2**k pool after the last conv block (A-VGGm, METHODS §9),
    so the classifier sees the same spatial size as in the plain VGG.
    """
    num_pools = cfg.count("M")
    if not 0 <= early_pools <= num_pools:
        raise ValueError(f"early_pools={early_pools} must be between 0 and {num_pools}")
    kept: list[int | str] = []
    seen = 0
    for v in cfg:
        if v == "M":
            seen += 1
            if seen > early_pools:
                continue
        kept.append(v)
    return kept, 2 ** (num_pools - early_pools)


class VGG(nn.Module):
    """VGG: `features` (conv-bn-relu blocks and max-pools) then `classifier` (FC head).

    Args:
        cfg: conv widths and "M" (2×2 max-pool) in order.
        fc_widths: hidden FC widths; empty for a single Linear classifier.
        final_pool: kernel (= stride) of one more max-pool after the last conv block
            (A-VGGm's late pooling); 1 for none.
        input_size: side of the square input, used to size the first FC layer.
    """

    def __init__(
        self,
        cfg: list[int | str],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        fc_widths: Sequence[int] = (),
        batch_norm: bool = True,
        dropout: float = 0.0,
        input_size: int = 32,
        final_pool: int = 1,
    ) -> None:
        super().__init__()
        self.features = self._make_features(cfg, in_channels, batch_norm, final_pool)
        side = self._output_side(cfg, input_size, final_pool)
        last_width = [v for v in cfg if v != "M"][-1]
        self.classifier = fc_head(last_width * side * side, fc_widths, num_classes, dropout=dropout)
        self.probe_taps: list[str] = relu_taps("features", self.features) + relu_taps(
            "classifier", self.classifier
        )
        self._init_weights()

    @staticmethod
    def _make_features(
        cfg: list[int | str], in_channels: int, batch_norm: bool, final_pool: int
    ) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += conv_bn_relu(in_channels, int(v), batch_norm=batch_norm)
                in_channels = int(v)
        if final_pool > 1:
            layers.append(nn.MaxPool2d(kernel_size=final_pool, stride=final_pool))
        return nn.Sequential(*layers)

    @staticmethod
    def _output_side(cfg: list[int | str], input_size: int, final_pool: int) -> int:
        """Spatial side after the pools (3×3 convs with padding 1 keep the size)."""
        side = input_size
        for v in cfg:
            if v == "M":
                side //= 2
        side //= final_pool
        if side < 1:
            raise ValueError(f"input_size={input_size} is too small for this model's pools")
        return side

    def _init_weights(self) -> None:
        """torchvision's VGG initialisation."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) → (B, C', H', W')

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))  # (B, C'·H'·W') → (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build(
    cfg_name: str,
    hidden: Sequence[int],
    early_pools: int | None = None,
    /,
    *,
    widths: Sequence[int] | None = None,
    fc_widths: Sequence[int] | None = None,
    **kwargs,
) -> VGG:
    """Build a VGG from a CONV_CFGS entry; `early_pools` set makes it an A-VGG."""
    cfg = _with_widths(CONV_CFGS[cfg_name], widths)
    final_pool = 1
    if early_pools is not None:
        cfg, final_pool = _move_pools_late(cfg, early_pools)
    hidden = list(fc_widths) if fc_widths is not None else list(hidden)
    return VGG(cfg, fc_widths=hidden, final_pool=final_pool, **kwargs)


@register_model
def vgg6(**kwargs) -> VGG:
    """VGG-6: 5 conv layers (64-128-256-512-512) and 1 FC layer."""
    return _build("5", [], **kwargs)


@register_model
def vgg8(**kwargs) -> VGG:
    """VGG-8: 5 conv layers (64-128-256-512-512) and 3 FC layers."""
    return _build("5", [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def vgg11(**kwargs) -> VGG:
    """VGG-11: torchvision config A (8 conv layers) and 3 FC layers."""
    return _build("A", [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def vgg13(**kwargs) -> VGG:
    """VGG-13: torchvision config B (10 conv layers) and 3 FC layers."""
    return _build("B", [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def vgg16(**kwargs) -> VGG:
    """VGG-16: torchvision config D (13 conv layers) and 3 FC layers."""
    return _build("D", [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def avgg6(*, early_pools: int = 2, **kwargs) -> VGG:
    """A-VGG6: VGG-6 with the pools after the first `early_pools` merged after the last conv."""
    return _build("5", [], early_pools, **kwargs)


@register_model
def avgg8(*, early_pools: int = 2, **kwargs) -> VGG:
    """A-VGG8: VGG-8 with the pools after the first `early_pools` merged after the last conv."""
    return _build("5", [FC_WIDTH, FC_WIDTH], early_pools, **kwargs)


@register_model
def avgg13(*, early_pools: int = 2, **kwargs) -> VGG:
    """A-VGG13: VGG-13 with the pools after the first `early_pools` merged after the last conv."""
    return _build("B", [FC_WIDTH, FC_WIDTH], early_pools, **kwargs)


@register_model
def avgg14(*, early_pools: int = 2, **kwargs) -> VGG:
    """A-VGG14: config D (13 conv) and 1 FC layer, pools after the first `early_pools` merged."""
    return _build("D", [], early_pools, **kwargs)


@register_model
def avgg16(*, early_pools: int = 2, **kwargs) -> VGG:
    """A-VGG16: VGG-16 with the pools after the first `early_pools` merged after the last conv."""
    return _build("D", [FC_WIDTH, FC_WIDTH], early_pools, **kwargs)


@register_model
def tiny_vgg(**kwargs) -> VGG:
    """Tiny VGG for tests: 3 conv layers (8-16-16) and 2 FC layers (16 hidden)."""
    return _build("tiny", [16], **kwargs)

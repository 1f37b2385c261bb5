"""VGG and A-VGGm for 32×32 inputs, in torchvision's module layout.

A-VGGm: arXiv 2303.05800; ../shared/METHODS.md §11 (the authors' layouts). m counts weight layers
(conv + FC). Every builder takes `widths`, `fc_widths`, `width_factor`, `dropout`, `batch_norm`,
`num_classes`, `in_channels`, `input_size`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model_defs._blocks import conv_bn_relu, fc_head, relu_taps
from model_defs._registry import register_model

# A cfg lists, in order, conv widths (3×3 conv + BN + ReLU) and pools: "M" is a 2×2 max-pool,
# ("M", k) a k×k max-pool and ("A", k) a k×k average pool (kernel = stride = k).
Pool = tuple[str, int]
Token = int | str | Pool
POOL_LAYERS: dict[str, type[nn.Module]] = {"M": nn.MaxPool2d, "A": nn.AvgPool2d}

# Plain VGGs; "A", "B", "D" are torchvision's VGG-11/13/16.
CONV_CFGS: dict[str, list[Token]] = {
    "5": [64, "M", 128, "M", 256, "M", 512, "M", 512, "M"],
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "tiny": [8, "M", 16, "M", 16, "M"],
}
FC_WIDTH = 512  # hidden FC width of every full-size plain VGG here

# A-VGGm (METHODS §11): blocks 1–3 at full resolution, an average pool, block 4, a max pool.
AVGG_CFGS: dict[str, list[Token]] = {
    "6": [64, 128, 256, ("A", 2), 512, 512, ("M", 8)],
    "8": [64, 128, 256, ("A", 2), 512, 512, ("M", 4)],
    "13": [64, 64, 128, 128, 256, 256, 256, ("A", 4), 512, 512, 512, ("M", 4)],
    "14": [64, 64, 128, 128, 256, 256, 256, ("A", 4), 512, 512, 512, 512, 512, 512, ("M", 2)],
    "16": [64, 64, 128, 128, 256, 256, 256, ("A", 4), 512, 512, 512, 512, 512, 512, ("M", 2)],
    "tiny": [8, 16, ("A", 2), 16, ("M", 4)],
}
AVGG_FC_WIDTHS: dict[str, list[int]] = {
    "6": [],
    "8": [8192, 8192],
    "13": [2048, 2048],
    "14": [],
    "16": [4096, 4096],
    "tiny": [16],
}


def as_pool(token: Token) -> Pool | None:
    """Return (kind, kernel) of a pool token, or None for a conv width."""
    if isinstance(token, int):
        return None
    if token == "M":
        return "M", 2
    if isinstance(token, tuple) and len(token) == 2 and token[0] in POOL_LAYERS:
        kind, kernel = token
        if isinstance(kernel, int) and kernel >= 1:
            return kind, kernel
    raise ValueError(f"bad cfg entry {token!r}: a pool is 'M', ('M', k) or ('A', k), k ≥ 1")


def conv_widths(cfg: Sequence[Token]) -> list[int]:
    """The conv widths of `cfg`, in order."""
    return [int(v) for v in cfg if as_pool(v) is None]


def _with_widths(cfg: Sequence[Token], widths: Sequence[int] | None) -> list[Token]:
    """Replace the conv widths of `cfg` by `widths`, one per conv layer."""
    if widths is None:
        return list(cfg)
    num_convs = len(conv_widths(cfg))
    if len(widths) != num_convs:
        raise ValueError(
            f"widths has {len(widths)} entries; expected {num_convs} (one per conv layer)"
        )
    it = iter(widths)
    return [v if as_pool(v) else int(next(it)) for v in cfg]


def _scale(width: int, width_factor: float) -> int:
    return max(1, round(width * width_factor))


def _with_width_factor(
    cfg: Sequence[Token], hidden: Sequence[int], width_factor: float
) -> tuple[list[Token], list[int]]:
    """Scale every conv width and hidden FC width by `width_factor` (rounded, at least 1)."""
    if not width_factor > 0:
        raise ValueError(f"width_factor={width_factor} must be positive")
    scaled = [v if as_pool(v) else _scale(int(v), width_factor) for v in cfg]
    return scaled, [_scale(w, width_factor) for w in hidden]


class VGG(nn.Module):
    """VGG: `features` (conv-bn-relu blocks and pools) then `classifier` (FC head).

    Args:
        cfg: conv widths and pool tokens ("M", ("M", k), ("A", k)) in order.
        fc_widths: hidden FC widths; empty for a single Linear classifier.
        input_size: side of the square input; the first FC layer reads
            last conv width × side² where side is what the pools leave of it.
    """

    def __init__(
        self,
        cfg: Sequence[Token],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        fc_widths: Sequence[int] = (),
        batch_norm: bool = True,
        dropout: float = 0.0,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        self.features = self._make_features(cfg, in_channels, batch_norm)
        side = self._output_side(cfg, input_size)
        last_width = conv_widths(cfg)[-1]
        self.classifier = fc_head(last_width * side * side, fc_widths, num_classes, dropout=dropout)
        self.probe_taps: list[str] = relu_taps("features", self.features) + relu_taps(
            "classifier", self.classifier
        )
        self._init_weights()

    @staticmethod
    def _make_features(cfg: Sequence[Token], in_channels: int, batch_norm: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            pool = as_pool(v)
            if pool is not None:
                kind, kernel = pool
                layers.append(POOL_LAYERS[kind](kernel_size=kernel, stride=kernel))
            else:
                layers += conv_bn_relu(in_channels, int(v), batch_norm=batch_norm)
                in_channels = int(v)
        return nn.Sequential(*layers)

    @staticmethod
    def _output_side(cfg: Sequence[Token], input_size: int) -> int:
        """Spatial side after the pools (3×3 convs with padding 1 keep the size)."""
        side = input_size
        for v in cfg:
            pool = as_pool(v)
            if pool is not None:
                side //= pool[1]
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
    cfg: Sequence[Token],
    hidden: Sequence[int],
    /,
    *,
    widths: Sequence[int] | None = None,
    fc_widths: Sequence[int] | None = None,
    width_factor: float = 1.0,
    **kwargs,
) -> VGG:
    """Build a VGG from a cfg and hidden FC widths.

    `widths` (one per conv) and `fc_widths` replace the table's; `width_factor` then scales
    every conv and hidden FC width (e.g. 0.25 for CPU-sized variants).
    """
    cfg = _with_widths(cfg, widths)
    hidden = list(fc_widths) if fc_widths is not None else list(hidden)
    cfg, hidden = _with_width_factor(cfg, hidden, width_factor)
    return VGG(cfg, fc_widths=hidden, **kwargs)


@register_model
def vgg6(**kwargs) -> VGG:
    """VGG-6: 5 conv layers (64-128-256-512-512) and 1 FC layer; 3.92 M parameters."""
    return _build(CONV_CFGS["5"], [], **kwargs)


@register_model
def vgg8(**kwargs) -> VGG:
    """VGG-8: 5 conv layers (64-128-256-512-512) and 3 FC layers; 4.44 M parameters."""
    return _build(CONV_CFGS["5"], [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def vgg11(**kwargs) -> VGG:
    """VGG-11: torchvision config A (8 conv layers) and 3 FC layers; 9.76 M parameters."""
    return _build(CONV_CFGS["A"], [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def vgg13(**kwargs) -> VGG:
    """VGG-13: torchvision config B (10 conv layers) and 3 FC layers; 9.94 M parameters."""
    return _build(CONV_CFGS["B"], [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def vgg16(**kwargs) -> VGG:
    """VGG-16: torchvision config D (13 conv layers) and 3 FC layers; 15.25 M parameters."""
    return _build(CONV_CFGS["D"], [FC_WIDTH, FC_WIDTH], **kwargs)


@register_model
def avgg6(**kwargs) -> VGG:
    """A-VGG6 (arXiv 2303.05800): 5 conv and 1 FC layer, pooling late; 3.93 M parameters.

    64-128-256 at 32×32, avg-pool 2 (→ 16), 512-512, max-pool 8 (→ 2), FC 2048 → 10.
    """
    return _build(AVGG_CFGS["6"], AVGG_FC_WIDTHS["6"], **kwargs)


@register_model
def avgg8(**kwargs) -> VGG:
    """A-VGG8 (arXiv 2303.05800): 5 conv and 3 FC layers, pooling late; 138.2 M parameters.

    64-128-256 at 32×32, avg-pool 2 (→ 16), 512-512, max-pool 4 (→ 4),
    FC 8192 → 8192 → 8192 → 10.
    """
    return _build(AVGG_CFGS["8"], AVGG_FC_WIDTHS["8"], **kwargs)


@register_model
def avgg13(**kwargs) -> VGG:
    """A-VGG13 (arXiv 2303.05800): 10 conv and 3 FC layers, pooling late; 16.05 M parameters.

    64×2, 128×2, 256×3 at 32×32, avg-pool 4 (→ 8), 512×3, max-pool 4 (→ 2),
    FC 2048 → 2048 → 2048 → 10.
    """
    return _build(AVGG_CFGS["13"], AVGG_FC_WIDTHS["13"], **kwargs)


@register_model
def avgg14(**kwargs) -> VGG:
    """A-VGG14 (arXiv 2303.05800): 13 conv and 1 FC layer, pooling late; 14.81 M parameters.

    64×2, 128×2, 256×3 at 32×32, avg-pool 4 (→ 8), 512×6, max-pool 2 (→ 4), FC 8192 → 10.
    """
    return _build(AVGG_CFGS["14"], AVGG_FC_WIDTHS["14"], **kwargs)


@register_model
def avgg16(**kwargs) -> VGG:
    """A-VGG16 (arXiv 2303.05800): 13 conv and 3 FC layers, pooling late; 65.10 M parameters.

    64×2, 128×2, 256×3 at 32×32, avg-pool 4 (→ 8), 512×6, max-pool 2 (→ 4),
    FC 8192 → 4096 → 4096 → 10.
    """
    return _build(AVGG_CFGS["16"], AVGG_FC_WIDTHS["16"], **kwargs)


@register_model
def tiny_vgg(**kwargs) -> VGG:
    """Tiny VGG for tests: 3 conv layers (8-16-16) and 2 FC layers (16 hidden)."""
    return _build(CONV_CFGS["tiny"], [16], **kwargs)


@register_model
def tiny_avgg(**kwargs) -> VGG:
    """Tiny A-VGG for tests: 8-16, avg-pool 2, 16, max-pool 4, FC 16-10."""
    return _build(AVGG_CFGS["tiny"], AVGG_FC_WIDTHS["tiny"], **kwargs)

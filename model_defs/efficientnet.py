"""EfficientNet-B0 for 32×32 inputs: torchvision's definition and module names, CIFAR stem.

EfficientNet: arXiv 1905.11946. The stem conv runs at stride 1, so a 32×32 input leaves a
2×2 map in the last stage (1×1 at torchvision's stride 2).
"""

from __future__ import annotations

from functools import partial

import torch
from torchvision.models.efficientnet import EfficientNet, MBConvConfig

from model_defs._registry import register_model

# Per stage: (expand ratio, kernel, stride, input channels, output channels, blocks).
# "b0" is torchvision's EfficientNet-B0 table (the paper's Table 1).
STAGE_CFGS: dict[str, list[tuple[int, int, int, int, int, int]]] = {
    "b0": [
        (1, 3, 1, 32, 16, 1),
        (6, 3, 2, 16, 24, 2),
        (6, 5, 2, 24, 40, 2),
        (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3),
        (6, 5, 2, 112, 192, 4),
        (6, 3, 1, 192, 320, 1),
    ],
    "tiny": [
        (1, 3, 1, 8, 8, 1),
        (2, 3, 2, 8, 8, 1),
        (2, 5, 2, 8, 16, 1),
        (2, 3, 2, 16, 16, 1),
        (2, 5, 1, 16, 16, 1),
        (2, 5, 2, 16, 16, 1),
        (2, 3, 1, 16, 16, 1),
    ],
}
LAST_CONV_MULT = {"b0": 4, "tiny": 1}  # last 1×1 conv width / last stage's width (B0: 1280)


class EfficientNetCifar(EfficientNet):
    """torchvision's EfficientNet with the stem conv (`features.0.0`) at stride 1.

    Module names are torchvision's (`features.<stage>…`, `classifier.1`), so its state dicts
    load apart from the classifier when `num_classes` differs. Probe taps: the outputs of the
    stem, the seven MBConv stages and the last 1×1 conv (`features.0` … `features.8`).
    """

    def __init__(
        self,
        stages: list[MBConvConfig],
        *,
        num_classes: int = 10,
        dropout: float = 0.2,
        stochastic_depth_prob: float = 0.2,
        last_channel: int | None = None,
    ) -> None:
        super().__init__(
            stages,
            dropout,
            stochastic_depth_prob=stochastic_depth_prob,
            num_classes=num_classes,
            last_channel=last_channel,
        )
        self.features[0][0].stride = (1, 1)  # CIFAR stem: keep 32×32 in the first stage
        self.probe_taps: list[str] = [f"features.{i}" for i in range(len(self.features))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, 32, 32) → (B, C, 2, 2)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(x), 1))  # (B, C) → (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build(
    cfg_name: str, /, *, width_mult: float = 1.0, depth_mult: float = 1.0, **kwargs
) -> EfficientNetCifar:
    """Build from a STAGE_CFGS table, scaled as torchvision's MBConvConfig scales widths, depths."""
    if width_mult <= 0 or depth_mult <= 0:
        raise ValueError(f"width_mult={width_mult} and depth_mult={depth_mult} must be positive")
    stage = partial(MBConvConfig, width_mult=width_mult, depth_mult=depth_mult)
    stages = [stage(*row) for row in STAGE_CFGS[cfg_name]]
    last_channel = LAST_CONV_MULT[cfg_name] * stages[-1].out_channels
    return EfficientNetCifar(stages, last_channel=last_channel, **kwargs)


@register_model
def efficientnet_b0_cifar(**kwargs) -> EfficientNetCifar:
    """EfficientNet-B0 (torchvision's layout) with a stride-1 stem for 32×32 inputs."""
    return _build("b0", **kwargs)


@register_model
def tiny_efficientnet(**kwargs) -> EfficientNetCifar:
    """Tiny EfficientNet for tests: seven one-block MBConv stages of 8–16 channels."""
    return _build("tiny", **kwargs)

"""RoDiB: a VGG-6 whose single output unit, read at M time steps, labels M classes.

arXiv 2410.11384 (only the abstract is public); ../shared/METHODS.md §9. The topology is ours:

- The image is an impulse at t = 0: the static conv blocks run once (T = 1).
- The last `delay_layers` weight layers (1 = the FC layer only, 2 = also the last conv, …, up to
  all 5 convs and the FC) carry delays. A connection i → j has D weights w[j, i, d], one per delay
  d = 0 … D−1, and out_j(t) = b_j + Σ_i Σ_d w[j, i, d] · in_i(t − d): a causal, full convolution
  over time. Each delayed layer adds D − 1 time steps, so the output has
  T_out = 1 + Σ (D − 1) steps.
- How it is computed (`DelayedConv`): the D delay slices of a layer are one static layer with
  C_out·D outputs, weight row j·D + d = w[j, :, d]. The first delayed layer sees the impulse, so
  its output over time is that static layer's output with the D slices read as time steps
  (out_j(t) = b_j + Σ_i w[j, i, t] · in_i(0)): D times the static layer's MACs. A later delayed
  layer applies it at each of its T input steps (a conv3d with kernel (1, k, k), a conv1d with
  kernel 1 for the FC) and overlap-adds: out(t) = b + Σ_d z_d(t − d), T·D times the static MACs.
  No product with a zero-padded step is computed (a conv3d with kernel (D, k, k) over the padded
  time axis would cost T_out·D× instead). With `delay_layers=2` and D = 10 the last conv and the
  FC cost 10× their static MACs and the whole VGG-6 2.25× (2.16× at width 1/4).
- BN+ReLU apply at every time step. A delayed conv's BatchNorm3d normalises each channel with
  one mean and variance over (batch, T, H, W): every time step of a channel shares its statistics
  and affine parameters, as they share the channel's weights. The 2×2 max-pool acts per step.
- The FC layer has one output unit; its time series y(t), t = 0 … T_out − 1, is read at label
  slots: label k's logit is y(slot_offset + k), so training is ordinary cross-entropy.

With delays on the FC only, y(t) = b + Σ_i w[i, t] h_i: exactly a Linear(F, M) with one shared
bias, so RoDiB equals the M-output VGG-6. It differs when more layers carry delays (hidden units
become time series and the FC sees F·T inputs) and so when the labels outnumber the FC's input
width F (`fc_input`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model_defs._blocks import conv_bn_relu, relu_taps
from model_defs._registry import register_model
from model_defs.vgg import CONV_CFGS

VGG6_WIDTHS = tuple(v for v in CONV_CFGS["5"] if v != "M")  # 64-128-256-512-512
TINY_WIDTHS = (8, 8, 16, 16, 16)


class DelayedConv(nn.Module):
    """A layer with D delays per connection over a time axis (dim 2): causal, full length.

    `weight[j, i, d, …]` is the weight of delay d; input (B, C_in, T, …) → (B, C_out, T + D − 1,
    …). `kernel_size` 0 makes it a delayed FC layer on (B, F, T); k > 0 a delayed k×k conv on
    (B, C, T, H, W) with padding k // 2. `impulse=True` declares that the input is an impulse
    (T = 1): the output is then the static layer with C_out·D outputs, reshaped to time.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        delays: int,
        *,
        kernel_size: int = 0,
        impulse: bool = False,
    ) -> None:
        super().__init__()
        if delays < 1:
            raise ValueError(f"delays={delays} must be at least 1")
        spatial = (kernel_size, kernel_size) if kernel_size else ()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.delays = delays
        self.kernel_size = kernel_size
        self.impulse = impulse
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, delays, *spatial))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def static_weight(self) -> torch.Tensor:
        """The delay slices as one static layer: (C_out·D, C_in, …), row j·D + d = w[j, :, d]."""
        # static sizes, not self.weight.shape: torch.fx traces shapes as proxies
        spatial = (self.kernel_size, self.kernel_size) if self.kernel_size else ()
        rows = self.out_channels * self.delays
        return self.weight.transpose(1, 2).reshape(rows, self.in_channels, *spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_out, delays = self.out_channels, self.delays
        weight, pad = self.static_weight(), self.kernel_size // 2
        if self.impulse:  # z_j(d) = b_j + Σ_i w[j, i, d] · in_i(0) is already out_j(t = d)
            bias = self.bias.repeat_interleave(delays)
            if self.kernel_size:
                z = F.conv2d(x[:, :, 0], weight, bias, padding=pad)  # (B, C_out·D, H, W)
            else:
                z = F.linear(x[:, :, 0], weight, bias)  # (B, C_out·D)
            return self._split_rows(z)  # (B, C_out, T = D, …)
        # every input step through the static layer: z[:, j, d, t] = Σ_i w[j, i, d] · in_i(t)
        if self.kernel_size:
            z = F.conv3d(x, weight.unsqueeze(2), padding=(0, pad, pad))  # (B, C_out·D, T, H, W)
        else:
            z = F.conv1d(x, weight.unsqueeze(2))  # (B, C_out·D, T)
        z = self._split_rows(z)  # (B, C_out, D, T, …)
        # overlap-add: out(t) = Σ_d z_d(t − d); F.pad lists the last axis first, time last
        spatial = 2 if self.kernel_size else 0  # static axes, for torch.fx: no z.dim()
        out = sum(F.pad(z[:, :, d], (0, 0) * spatial + (d, delays - 1 - d)) for d in range(delays))
        return out + self.bias.view(c_out, 1, *[1] * spatial)

    def _split_rows(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C_out·D, …) → (B, C_out, D, …). A reshape with the trailing sizes read one by one,
        not unflatten: ONNX shape inference follows it, and torch.fx never iterates a shape."""
        trailing = [z.shape[axis] for axis in range(2, 2 + self._trailing_axes())]
        return z.reshape(-1, self.out_channels, self.delays, *trailing)

    def _trailing_axes(self) -> int:
        """Axes after the channels in a static output: time (unless impulse), then H and W."""
        return (0 if self.impulse else 1) + (2 if self.kernel_size else 0)

    def extra_repr(self) -> str:
        in_channels, out_channels = self.in_channels, self.out_channels
        kernel = f", kernel_size={self.kernel_size}" if self.kernel_size else ""
        return (
            f"{in_channels}, {out_channels}, delays={self.delays}{kernel}, impulse={self.impulse}"
        )


class RoDiB(nn.Module):
    """Static conv blocks (`features`), delayed conv blocks (`delayed`), then a delayed FC layer
    with one output unit (`classifier`) read at the label slots.

    Args:
        widths: conv widths; each conv-bn-relu is followed by a 2×2 max-pool.
        delays: delays per delayed layer, first to last (the last is the FC layer).
        final_pool: kernel (= stride) of one more max-pool after the last conv block; 1 for none.
    """

    def __init__(
        self,
        widths: Sequence[int],
        delays: Sequence[int],
        *,
        num_classes: int = 10,
        slot_offset: int = 0,
        in_channels: int = 3,
        input_size: int = 32,
        final_pool: int = 1,
    ) -> None:
        super().__init__()
        delayed_convs = len(delays) - 1
        self.features = _static_blocks(widths[: len(widths) - delayed_convs], in_channels)
        self.delayed = _delayed_blocks([in_channels, *widths], delays[:-1], final_pool)
        if not delayed_convs and final_pool > 1:
            self.features.append(nn.MaxPool2d(final_pool, final_pool))
        # (B, T, C, H, W) → (B, T, C·H·W): the FC input, one F-vector per time step. The tap of
        # the delayed part: snptool reads [B, T, F] as F units over T positions. A torch.nn
        # module, so torch.fx keeps it as a leaf that a cut (`snptool probe`) can find.
        self.head_input = nn.Flatten(2)
        side = _output_side(len(widths), input_size, final_pool)
        fc_input = widths[-1] * side * side
        self.classifier = DelayedConv(fc_input, 1, delays[-1], impulse=not delayed_convs)
        self.slots = _label_slots(delays, num_classes, slot_offset)
        self.probe_taps: list[str] = relu_taps("features", self.features) + ["head_input"]
        self._init_weights()

    def _init_weights(self) -> None:
        """VGG's initialisation (model_defs/vgg.py), each delay slice as a static layer."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, DelayedConv) and m.kernel_size:
                fan_out = m.weight.shape[0] * m.kernel_size**2
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, DelayedConv):
                nn.init.normal_(m.weight, 0, 0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, H, W) → (B, C, H', W'), the static part at t = 0

    def forward_time_series(self, x: torch.Tensor) -> torch.Tensor:
        """The output unit's time series y(t): (B, C, H', W') → (B, T_out)."""
        x = self.delayed(x.unsqueeze(2))  # (B, C, 1, H', W') → (B, C', T, H'', W'')
        x = self.head_input(x.transpose(1, 2))  # (B, T, F)
        return torch.flatten(self.classifier(x.transpose(1, 2)), 1)  # (B, 1, T_out) → (B, T_out)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        start, stop = self.slots
        return self.forward_time_series(x)[:, start:stop]  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _static_blocks(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    """conv-bn-relu + 2×2 max-pool per width, in VGG's `features` layout."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += conv_bn_relu(in_channels, width) + [nn.MaxPool2d(kernel_size=2, stride=2)]
        in_channels = width
    return nn.Sequential(*layers)


def _delayed_blocks(
    channels: Sequence[int], delays: Sequence[int], final_pool: int
) -> nn.Sequential:
    """Delayed conv + BatchNorm3d + ReLU + 2×2 max-pool (per time step) for the last convs.

    `channels` is the input channels then every conv width; the first delayed conv sees the
    static part's output, an impulse."""
    layers: list[nn.Module] = []
    first = len(channels) - len(delays)
    pairs = zip(channels[first - 1 : -1], channels[first:], delays, strict=True)
    for index, (in_channels, width, d) in enumerate(pairs):
        conv = DelayedConv(in_channels, width, d, kernel_size=3, impulse=index == 0)
        layers += [conv, nn.BatchNorm3d(width)]
        layers += [nn.ReLU(inplace=False), nn.MaxPool3d((1, 2, 2), (1, 2, 2))]
    if delays and final_pool > 1:
        layers.append(nn.MaxPool3d((1, final_pool, final_pool), (1, final_pool, final_pool)))
    return nn.Sequential(*layers)


def _output_side(num_pools: int, input_size: int, final_pool: int) -> int:
    side = input_size // 2**num_pools // final_pool
    if side < 1:
        raise ValueError(f"input_size={input_size} is too small for this model's pools")
    return side


def _label_slots(delays: Sequence[int], num_classes: int, slot_offset: int) -> tuple[int, int]:
    """(first, last + 1) slot of y read as logits; T_out = 1 + Σ (D − 1) for a static input."""
    steps = 1 + sum(d - 1 for d in delays)
    if slot_offset < 0 or steps - slot_offset < num_classes:
        raise ValueError(
            f"the output has {steps} time steps (delays {list(delays)}); slot_offset="
            f"{slot_offset} leaves {steps - slot_offset} slots for {num_classes} labels; "
            "raise delays or lower slot_offset (>= 0)"
        )
    return slot_offset, slot_offset + num_classes


def _resolve_delays(
    delays: int | Sequence[int] | None, delay_layers: int, num_classes: int
) -> list[int]:
    layers = len(VGG6_WIDTHS) + 1
    if not 1 <= delay_layers <= layers:
        raise ValueError(
            f"delay_layers={delay_layers} must be 1 (the FC) … {layers} (every conv and the FC)"
        )
    if delays is None:
        delays = num_classes
    if isinstance(delays, int):
        return [delays] * delay_layers
    if len(delays) != delay_layers:
        raise ValueError(
            f"delays has {len(delays)} entries; expected {delay_layers} (one per delayed layer)"
        )
    return [int(d) for d in delays]


def _resolve_widths(widths: Sequence[int], width_factor: float, fc_input: int | None) -> list[int]:
    if len(widths) != len(VGG6_WIDTHS):
        raise ValueError(f"widths has {len(widths)} entries; expected {len(VGG6_WIDTHS)}")
    if not width_factor > 0:
        raise ValueError(f"width_factor={width_factor} must be positive")
    widths = [max(1, round(int(w) * width_factor)) for w in widths]
    if fc_input is not None:
        widths[-1] = int(fc_input)
    return widths


def _build(
    default_widths: Sequence[int],
    default_delay_layers: int,
    /,
    *,
    widths: Sequence[int] | None = None,
    width_factor: float = 1.0,
    fc_input: int | None = None,
    delays: int | Sequence[int] | None = None,
    delay_layers: int | None = None,
    num_classes: int = 10,
    input_size: int = 32,
    **kwargs,
) -> RoDiB:
    """Resolve the knobs. `width_factor` scales every conv width (rounded, at least 1), as in
    model_defs/vgg.py. `fc_input` then sets the last conv width and, where the input leaves
    more than 1×1 after the pools, adds a global max-pool so the FC input is exactly `fc_input`.
    `delay_layers` counts the delayed weight layers from the FC back; `delays` (one int, or one
    per delayed layer, first to last) defaults to num_classes per delayed layer."""
    if widths is not None and fc_input is not None and int(widths[-1]) != int(fc_input):
        raise ValueError(f"widths[-1]={widths[-1]} and fc_input={fc_input} disagree; pass one")
    widths = _resolve_widths(default_widths if widths is None else widths, width_factor, fc_input)
    delay_layers = default_delay_layers if delay_layers is None else delay_layers
    delays = _resolve_delays(delays, delay_layers, num_classes)
    side = _output_side(len(widths), input_size, 1)
    final_pool = side if fc_input is not None else 1
    return RoDiB(
        widths,
        delays,
        num_classes=num_classes,
        input_size=input_size,
        final_pool=final_pool,
        **kwargs,
    )


@register_model
def rodib_vgg6(**kwargs) -> RoDiB:
    """RoDiB VGG-6: 5 conv (64-128-256-512-512) and 1 delayed FC with one output unit."""
    return _build(VGG6_WIDTHS, 1, **kwargs)


@register_model
def tiny_rodib(**kwargs) -> RoDiB:
    """Tiny RoDiB for tests: 5 conv (8-8-16-16-16), the last conv and the FC delayed."""
    return _build(TINY_WIDTHS, 2, **kwargs)

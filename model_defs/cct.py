"""Compact Convolutional Transformer (CCT) for 32×32 inputs, in SHI-Labs' module layout.

CCT: arXiv 2104.05704 (github.com/SHI-Labs/Compact-Transformers); single-node and single-head
performance in CCT: arXiv 2501.12900, 2506.23832; ../shared/METHODS.md §7.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from model_defs._blocks import HeadOutputs
from model_defs._registry import register_model

# Presets, named L_KxC as in the CCT paper: L encoder blocks, C tokenizer convs of K×K.
CCT_CFGS: dict[str, dict[str, Any]] = {
    "7_3x1": {"num_blocks": 7, "embed_dim": 256, "num_heads": 4, "mlp_ratio": 2.0},
    "2_3x2": {
        "num_blocks": 2,
        "embed_dim": 128,
        "num_heads": 2,
        "mlp_ratio": 1.0,
        "conv_layers": 2,
    },
    "tiny": {"num_blocks": 1, "embed_dim": 16, "num_heads": 2, "mlp_ratio": 2.0},
}
TOKENIZER_HIDDEN_WIDTH = 64  # SHI-Labs' width of the tokenizer convs before the last one
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = 3, 2, 1  # the tokenizer's max-pool after every conv


def _conv_stride_padding(kernel_size: int) -> tuple[int, int]:
    """SHI-Labs' tokenizer conv stride and padding for a kernel size (3 → 1, 1; 7 → 2, 3)."""
    return max(1, kernel_size // 2 - 1), max(1, kernel_size // 2)


def _tokenizer_side(input_size: int, kernel_size: int, conv_layers: int) -> int:
    """Side of the tokenizer's feature map (T = side²) for a square input."""
    stride, padding = _conv_stride_padding(kernel_size)
    side = input_size
    for _ in range(conv_layers):
        side = (side + 2 * padding - kernel_size) // stride + 1
        side = (side + 2 * POOL_PADDING - POOL_KERNEL) // POOL_STRIDE + 1
    return side


def _drop_path_rates(stochastic_depth_prob: float, num_blocks: int) -> list[float]:
    """Stochastic-depth rate per block, growing linearly from 0 to `stochastic_depth_prob`."""
    if num_blocks == 1:
        return [0.0]
    return [stochastic_depth_prob * i / (num_blocks - 1) for i in range(num_blocks)]


def _check_arguments(
    *,
    embed_dim: int,
    num_heads: int,
    mlp_ratio: float,
    num_blocks: int,
    conv_blocks: int,
    kernel_size: int,
    conv_layers: int,
    rates: dict[str, float],
) -> None:
    """Raise a ValueError naming the first argument that cannot build a CCT."""
    if num_heads < 1 or embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
    if num_blocks < 1:
        raise ValueError(f"num_blocks={num_blocks} must be at least 1")
    if not 0 <= conv_blocks <= num_blocks:
        raise ValueError(f"conv_blocks={conv_blocks} must be between 0 and num_blocks={num_blocks}")
    if int(embed_dim * mlp_ratio) < 1:
        raise ValueError(f"mlp_ratio={mlp_ratio} leaves no hidden feed-forward units")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size} must be odd and positive")
    if conv_layers < 1:
        raise ValueError(f"conv_layers={conv_layers} must be at least 1")
    for name, rate in rates.items():
        if not 0 <= rate < 1:
            raise ValueError(f"{name}={rate} must be in [0, 1)")


class Tokenizer(nn.Module):
    """`conv_layers` × (K×K conv without bias, ReLU, 3×3/2 max-pool): image → feature map.

    Returns `[B, D, H', W']`; the model flattens it into T = H'·W' tokens (after any conv
    blocks). SHI-Labs' tokenizer flattens inside; the weights are the same.
    """

    def __init__(
        self, in_channels: int, embed_dim: int, *, kernel_size: int, conv_layers: int
    ) -> None:
        super().__init__()
        stride, padding = _conv_stride_padding(kernel_size)
        widths = [in_channels] + [TOKENIZER_HIDDEN_WIDTH] * (conv_layers - 1) + [embed_dim]
        self.conv_layers = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(w_in, w_out, kernel_size, stride=stride, padding=padding, bias=False),
                    nn.ReLU(),
                    nn.MaxPool2d(POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_PADDING),
                )
                for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(x)  # (B, C, H, W) → (B, D, H', W')


class Attention(nn.Module):
    """Multi-head self-attention; the concatenated head outputs pass `heads` (HeadOutputs).

    Reshapes read only B and T from the input (no data-dependent branches): it traces with
    torch.fx, and ONNX shape inference (snptool's MAC count) follows it through the export.
    It sizes itself from `num_heads` and `head_dim` alone, so heads can be cut out of it.
    """

    removable_heads = True  # qkv rows [q | k | v] × heads, `heads`, `proj`: see remove_heads

    def __init__(
        self, dim: int, num_heads: int, *, attention_dropout: float, projection_dropout: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.heads = HeadOutputs(num_heads)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(projection_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, h, T, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, T, T)
        weights = self.attn_drop(weights.softmax(dim=-1))
        heads = (weights @ v).transpose(1, 2).reshape(batch, tokens, -1)  # (B, T, h·d)
        return self.proj_drop(self.proj(self.heads(heads)))  # (B, T, D)


class TransformerEncoderLayer(nn.Module):
    """One CCT encoder block, exactly as SHI-Labs' `TransformerEncoderLayer` computes it.

    The MHA sub-block is pre-norm (`pre_norm` → `self_attn`, residual), but the FF sub-block
    is not: `norm1` normalises the residual stream itself, and the FF residual is added to that
    normalised stream (x = norm1(x); x = x + FF(x)). Kept so their checkpoints load and mean
    the same. Taps `[B, T, D]`: `mha_output` is the stream after the MHA sub-block (before
    `norm1`), `ff_output` the stream after the FF sub-block (= the block's output); the
    sub-blocks' own outputs before their residuals are `self_attn` and `linear2`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        *,
        dropout: float,
        attention_dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pre_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(
            dim, num_heads, attention_dropout=attention_dropout, projection_dropout=dropout
        )
        self.mha_drop_path = StochasticDepth(drop_path, "row")
        self.mha_output = nn.Identity()
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, hidden)
        self.activation = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout2 = nn.Dropout(dropout)
        self.ff_drop_path = StochasticDepth(drop_path, "row")
        self.ff_output = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mha_output(x + self.mha_drop_path(self.self_attn(self.pre_norm(x))))
        x = self.norm1(x)  # SHI-Labs: LayerNorm on the residual stream
        ff = self.linear2(self.dropout1(self.activation(self.linear1(x))))
        return self.ff_output(x + self.ff_drop_path(self.dropout2(ff)))  # (B, T, D)


class ConvBlock(nn.Module):
    """Residual depthwise-separable conv block at width D on the tokenizer's feature map:
    x + drop_path(bn2(pointwise(relu(bn1(depthwise3×3(x)))))).

    Replaces an encoder block for low latency (METHODS.md §7). Decision: depthwise-separable,
    because a full 3×3 conv at width 256 costs about as many MACs as the attention block at
    256 tokens and more parameters; this one costs about a tenth of both.
    """

    def __init__(self, dim: int, *, drop_path: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.act = nn.ReLU()
        self.pointwise = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.pointwise(self.act(self.bn1(self.depthwise(x)))))
        return x + self.drop_path(y)  # (B, D, H, W)


class TransformerClassifier(nn.Module):
    """Positional embedding, encoder blocks, LayerNorm, sequence pooling and the final Linear
    (SHI-Labs' `classifier`)."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        *,
        dropout: float,
        attention_dropout: float,
        drop_path_rates: list[float],
    ) -> None:
        super().__init__()
        self.positional_emb = nn.Parameter(torch.zeros(1, num_tokens, dim))  # learnable
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerEncoderLayer(
                dim,
                num_heads,
                mlp_ratio,
                dropout=dropout,
                attention_dropout=attention_dropout,
                drop_path=rate,
            )
            for rate in drop_path_rates
        )
        self.norm = nn.LayerNorm(dim)
        self.attention_pool = nn.Linear(dim, 1)
        self.pooled = nn.Identity()  # tap: the pooled [B, D] nodes the final Linear reads
        self.fc = nn.Linear(dim, num_classes)

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.dropout(tokens + self.positional_emb)  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.attention_pool(x).softmax(dim=1)  # (B, T, 1): sequence pooling
        pooled = self.pooled(torch.flatten(weights.transpose(1, 2) @ x, 1))  # (B, D)
        return self.fc(pooled)  # (B, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(tokens))


class CCT(nn.Module):
    """CCT: `tokenizer` (convs) → `conv_blocks` → tokens → `classifier` (encoder, pooling, fc).

    Args:
        input_size: side of the square input; sizes the positional embedding (T tokens).
        embed_dim: D, the tokenizer's output channels and the token width.
        num_heads: h; each head has d = D / h features.
        num_blocks: N, encoder blocks including the ones `conv_blocks` replaces.
        conv_blocks: k; the first k of the N blocks are ConvBlocks on the `[B, D, H', W']`
            feature map before it is flattened into tokens (the low-latency variant).
        kernel_size, conv_layers: the tokenizer's K×K convs and their count.
        dropout: on the embedded tokens, the attention projection and the FF sub-block.
        attention_dropout: on the attention weights.
        stochastic_depth_prob: the last block's stochastic-depth rate (linear from 0).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        embed_dim: int = 256,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        num_blocks: int = 7,
        conv_blocks: int = 0,
        kernel_size: int = 3,
        conv_layers: int = 1,
        dropout: float = 0.0,
        attention_dropout: float = 0.1,
        stochastic_depth_prob: float = 0.1,
    ) -> None:
        super().__init__()
        rates = {
            "dropout": dropout,
            "attention_dropout": attention_dropout,
            "stochastic_depth_prob": stochastic_depth_prob,
        }
        _check_arguments(
            embed_dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_blocks=num_blocks,
            conv_blocks=conv_blocks,
            kernel_size=kernel_size,
            conv_layers=conv_layers,
            rates=rates,
        )
        side = _tokenizer_side(input_size, kernel_size, conv_layers)
        drop_path_rates = _drop_path_rates(stochastic_depth_prob, num_blocks)
        self.tokenizer = Tokenizer(
            in_channels, embed_dim, kernel_size=kernel_size, conv_layers=conv_layers
        )
        self.conv_blocks = nn.ModuleList(
            ConvBlock(embed_dim, drop_path=rate) for rate in drop_path_rates[:conv_blocks]
        )
        self.classifier = TransformerClassifier(
            side * side,
            embed_dim,
            num_heads,
            mlp_ratio,
            num_classes,
            dropout=dropout,
            attention_dropout=attention_dropout,
            drop_path_rates=drop_path_rates[conv_blocks:],
        )
        self.probe_taps: list[str] = (
            ["tokenizer"]
            + [f"conv_blocks.{i}" for i in range(conv_blocks)]
            + [f"classifier.blocks.{i}" for i in range(num_blocks - conv_blocks)]
            + ["classifier.pooled"]
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """SHI-Labs' initialisation (BatchNorm of the conv blocks as torchvision's)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
        nn.init.trunc_normal_(self.classifier.positional_emb, std=0.2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x)  # (B, D, H', W')
        for block in self.conv_blocks:
            x = block(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, T, D), T = H'·W'
        return self.classifier.forward_features(tokens)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_head(x)  # (B, T, D) → (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build(cfg_name: str, /, **kwargs) -> CCT:
    """Build a CCT from a CCT_CFGS preset; keyword arguments override it."""
    return CCT(**{**CCT_CFGS[cfg_name], **kwargs})


@register_model
def cct(**kwargs) -> CCT:
    """Compact Convolutional Transformer, every knob a keyword (defaults: CCT-7/3x1)."""
    return CCT(**kwargs)


@register_model
def cct_7_3x1(**kwargs) -> CCT:
    """CCT-7/3x1: one 3×3 tokenizer conv (256 tokens), 7 blocks, D 256, 4 heads, MLP ratio 2."""
    return _build("7_3x1", **kwargs)


@register_model
def cct_2_3x2(**kwargs) -> CCT:
    """CCT-2/3x2: two 3×3 tokenizer convs (64 tokens), 2 blocks, D 128, 2 heads, MLP ratio 1."""
    return _build("2_3x2", **kwargs)


@register_model
def tiny_cct(**kwargs) -> CCT:
    """Tiny CCT for tests: one 3×3 tokenizer conv (256 tokens), 1 block, D 16, 2 heads."""
    return _build("tiny", **kwargs)

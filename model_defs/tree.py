"""Tree-3: a shared colour-wise conv layer, a tree layer of M unshared branches, one FC layer.

arXiv 2211.11378; ../shared/METHODS.md §9 and §11. Every branch sees the whole image:

- layer 1 (`features`): K 5×5 filters per colour channel, each colour convolved only with its
  own K filters (`Conv2d(3, 3K, 5, groups=3)`, no padding, 32 → 28), activation, 2×2 max-pool
  (→ 14×14). Its filters are shared by all branches, so it is computed once.
- layer 2 (`tree`): for each branch m, colour c and block j, one node sums, with weights of its
  own (no sharing across branches or blocks), the K pooled maps of colour c over rows 2j, 2j+1
  and all 14 columns, plus a bias: 7 nodes per colour, 21 per branch, 21·M in all; activation.
- layer 3 (`classifier`): Linear(21·M, num_classes).

Each tree-layer weight thus has a single route to one node. Biases: one per layer-1 filter,
one per tree node, one per label. Initialisation is He-normal (fan-in), biases
zero.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from model_defs._registry import register_model

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class TreeLayer(nn.Module):
    """Unshared weights from each colour's K pooled maps to M·C·J tree nodes: (B, C·K, H, W)
    → (B, M·C·J), nodes ordered branch, colour, block (node = (m·C + c)·J + j).

    Block j of colour c is rows j·R … j·R + R − 1, all W columns, of the K maps of colour c
    (channels c·K … c·K + K − 1, the order a grouped conv writes them). `weight[m, c, j, k, r,
    w]` weighs map k, row j·R + r, column w for branch m; `bias[m, c, j]` is the node's bias.
    """

    def __init__(
        self, branches: int, colours: int, filters: int, side: int, *, block_rows: int = 2
    ) -> None:
        super().__init__()
        if side % block_rows:
            raise ValueError(f"a {side}×{side} map does not split into blocks of {block_rows} rows")
        self.branches, self.colours, self.filters = branches, colours, filters
        self.side, self.block_rows = side, block_rows
        self.blocks = side // block_rows
        self.weight = nn.Parameter(
            torch.empty(branches, colours, self.blocks, filters, block_rows, side)
        )
        self.bias = nn.Parameter(torch.zeros(branches, colours, self.blocks))
        nn.init.kaiming_normal_(self.weight.view(-1, filters * block_rows * side), mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, c, j = self.branches, self.colours, self.blocks
        k, r, w = self.filters, self.block_rows, self.side
        # (B, C·K, H, W) → (C, J, B, K, R, W) → (C·J, B, K·R·W): one row per sample and block
        x = x.reshape(-1, c, k, j, r, w).permute(1, 3, 0, 2, 4, 5).reshape(c * j, -1, k * r * w)
        weight = self.weight.permute(1, 2, 3, 4, 5, 0).reshape(c * j, k * r * w, m)
        nodes = torch.bmm(x, weight)  # (C·J, B, M): every branch and block in one batched matmul
        nodes = nodes.permute(1, 2, 0) + self.bias.reshape(1, m, c * j)  # (B, M, C·J)
        return nodes.flatten(1)  # (B, M·C·J)

    def extra_repr(self) -> str:
        return (
            f"branches={self.branches}, colours={self.colours}, filters={self.filters}, "
            f"blocks={self.blocks}×({self.block_rows}×{self.side})"
        )


class Tree3(nn.Module):
    """Tree-3: `features` (grouped conv, activation, pool), `tree` (`layer`, `nodes`: the
    activation), then `classifier` (Linear).

    Args:
        filters: K, layer-1 filters per colour channel.
        branches: M, the tree's branches; the classifier reads 21·M nodes (32×32 input).
        activation: "sigmoid" or "relu", after layer 1 and after the tree layer.
        kernel_size: layer-1 kernel side; the conv is unpadded.
        input_size: side of the square input; the pooled map's side must be even.
    """

    def __init__(
        self,
        *,
        filters: int = 6,
        branches: int = 16,
        activation: str = "sigmoid",
        num_classes: int = 10,
        in_channels: int = 3,
        kernel_size: int = 5,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; expected one of {sorted(ACTIVATIONS)}")
        side = (input_size - kernel_size + 1) // 2  # valid conv, then 2×2 pool
        if side < 2:
            raise ValueError(f"input_size={input_size} is too small for kernel_size={kernel_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, in_channels * filters, kernel_size, groups=in_channels),
            ACTIVATIONS[activation](),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        layer = TreeLayer(branches, in_channels, filters, side)
        self.tree = nn.Sequential(
            OrderedDict(layer=layer, nodes=ACTIVATIONS[activation]())  # `tree.nodes`: the tap
        )
        self.classifier = nn.Linear(branches * in_channels * layer.blocks, num_classes)
        self.probe_taps: list[str] = ["features.1", "tree.nodes"]
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal (fan-in) conv and FC weights, zero biases; TreeLayer initialises itself."""
        for module in (self.features[0], self.classifier):
            nn.init.kaiming_normal_(module.weight, mode="fan_in")
            nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 3, 32, 32) → (B, 3K, 14, 14)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.tree(x))  # (B, 3K, 14, 14) → (B, 21·M) → (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def tree(**kwargs) -> Tree3:
    """Tree-3 with `filters` (K) per colour and `branches` (M); sigmoid unless `activation`."""
    return Tree3(**kwargs)


@register_model
def tree3(**kwargs) -> Tree3:
    """Tree-3, K = 6, M = 16, sigmoid: 60,622 parameters (LeNet-5 has 62,006)."""
    return Tree3(**{"filters": 6, "branches": 16, "activation": "sigmoid", **kwargs})


@register_model
def tree3_k15_m80(**kwargs) -> Tree3:
    """Tree-3, K = 15, M = 80, ReLU: the paper's largest tree."""
    return Tree3(**{"filters": 15, "branches": 80, "activation": "relu", **kwargs})


@register_model
def tiny_tree(**kwargs) -> Tree3:
    """Tiny Tree-3 for tests: K = 2, M = 3, ReLU."""
    return Tree3(**{"filters": 2, "branches": 3, "activation": "relu", **kwargs})

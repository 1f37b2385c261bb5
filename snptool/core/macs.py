"""The one MAC counter: multiply-accumulates of one sample, counted by torch's own FLOP counter
(`torch.utils.flop_counter`) on the operations the model actually runs.

Convolutions (grouped and depthwise included), matrix products (Linear, attention projections,
`matmul`, `bmm`) and scaled dot-product attention count; element-wise operations, pooling and
normalisation do not. `prune`, `export` and every JSON field called `macs` use this count; it
agrees with a count of the exported ONNX graph's Conv, Gemm and MatMul nodes
(`export.count_graph_macs`) within 1 % on the torchvision and timm zoos (the zoo test checks it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _attention_on_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU kernel of scaled dot-product attention, which torch's table lacks (its
    two matrix products, as for the CUDA kernels)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_MISSING = {aten._scaled_dot_product_flash_attention_for_cpu: _attention_on_cpu}


@torch.no_grad()
def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs of one (C, H, W) sample through `model` in eval mode (half torch's FLOP count)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with FlopCounterMode(display=False, custom_mapping=_MISSING) as counter:
            model(torch.zeros(1, *shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def count_parameters(model: nn.Module) -> int:
    """Elements of the model's parameters, each shared tensor once."""
    return sum(p.numel() for p in model.parameters())

"""Head taps for third-party attentions (METHODS.md §7): the concatenated head outputs pass
through a `HeadOutputs` submodule before the output projection.

torch's nn.MultiheadAttention (torchvision's ViTs) never calls its `out_proj` as a submodule,
so `expose_heads` swaps it for `HeadedMultiheadAttention`: the same parameters under the same
names, the same outputs. timm's Attention calls `self.norm` (an Identity unless scale_norm) on
the concatenated heads right before `self.proj`; that Identity becomes a HeadOutputs.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from model_defs._blocks import HeadOutputs

# timm's attentions whose forward ends `x = self.norm(heads); x = self.proj(x)`.
TIMM_ATTENTIONS = ("Attention", "AttentionRope")


class HeadedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose concatenated heads `[B, L, h·d]` pass through `heads` (a
    HeadOutputs) before `out_proj`. Parameters, their names and outputs are the original's;
    the attention is computed in Python (scaled_dot_product_attention without weights), not by
    torch's fused kernel, so forward hooks see every step.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.heads = HeadOutputs(self.num_heads)

    @classmethod
    def from_module(cls, original: nn.MultiheadAttention) -> HeadedMultiheadAttention:
        """The same attention as `original`, sharing its parameters (nothing is copied)."""
        with torch.device("meta"):  # placeholders, replaced by the original's parameters
            headed = cls(
                original.embed_dim,
                original.num_heads,
                dropout=original.dropout,
                bias=original.in_proj_bias is not None,
                add_bias_kv=original.bias_k is not None,
                add_zero_attn=original.add_zero_attn,
                kdim=original.kdim,
                vdim=original.vdim,
                batch_first=original.batch_first,
            )
        for name, _ in list(headed.named_parameters(recurse=False)):
            setattr(headed, name, getattr(original, name))
        headed.out_proj = original.out_proj
        return headed.train(original.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """nn.MultiheadAttention.forward (same arguments, same results)."""
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        batched = query.dim() == 3
        if not batched:  # (L, E) → (1, L, E); a (S,) key padding mask → (1, S)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) → (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._attention_inputs(query, key, value)  # (B, h, L, d), (B, h, S, d) × 2
        mask = self._additive_mask(key_padding_mask, attn_mask, q, k.shape[2])
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, h, L, S)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            weights = F.dropout(weights, dropout)
            heads = weights @ v
        else:
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        heads = heads.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.embed_dim)  # (B, L, h·d)
        output = self.out_proj(self.heads(heads))
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if not batched:
            output = output.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        return output, weights

    def _attention_inputs(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected queries, keys and values split into heads: (B, h, ·, d) each."""
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        batch = q.shape[0]
        if self.bias_k is not None:  # add_bias_kv: one learned key and value more
            k = torch.cat([k, self.bias_k.expand(batch, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, -1)], dim=1)
        q, k, v = (
            x.reshape(batch, -1, self.num_heads, self.head_dim).transpose(1, 2) for x in (q, k, v)
        )
        if self.add_zero_attn:  # one all-zero key and value more
            k = torch.cat([k, k.new_zeros(batch, self.num_heads, 1, self.head_dim)], dim=2)
            v = torch.cat([v, v.new_zeros(batch, self.num_heads, 1, self.head_dim)], dim=2)
        return q, k, v

    def _additive_mask(
        self,
        key_padding_mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        q: torch.Tensor,
        keys: int,
    ) -> torch.Tensor | None:
        """Both masks as one float mask added to the scores, broadcast to (B, h, L, keys).

        Boolean masks mark what may not be attended (-inf); float masks are added as they are.
        The keys added by add_bias_kv / add_zero_attn are never masked.
        """
        batch, heads, length = q.shape[0], q.shape[1], q.shape[2]
        masks = []
        if attn_mask is not None:  # (L, S) or (B·h, L, S)
            shape = (1, 1, length, -1) if attn_mask.dim() == 2 else (batch, heads, length, -1)
            masks.append(_as_additive(attn_mask, q.dtype).reshape(shape))
        if key_padding_mask is not None:  # (B, S)
            masks.append(_as_additive(key_padding_mask, q.dtype).reshape(batch, 1, 1, -1))
        if not masks:
            return None
        mask = masks[0] if len(masks) == 1 else masks[0] + masks[1]
        return F.pad(mask, (0, keys - mask.shape[-1]))


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def expose_heads(model: nn.Module) -> list[str]:
    """Give every attention in `model` a HeadOutputs head tap, in place; return their names.

    nn.MultiheadAttention becomes HeadedMultiheadAttention; in timm's Attention and
    AttentionRope the Identity `norm` before `proj` becomes a HeadOutputs (with scale_norm or
    a gate there is no head tap). State-dict keys and outputs stay the same.
    """
    timm_types = _timm_attention_types()
    exposed = []
    for name, module in list(model.named_modules()):
        if type(module) is nn.MultiheadAttention and name:
            parent, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent), child, HeadedMultiheadAttention.from_module(module)
            )
            exposed.append(name)
        elif (
            type(module) in timm_types
            and type(module.norm) is nn.Identity
            and getattr(module, "gate", None) is None
        ):
            module.norm = HeadOutputs(module.num_heads)
            exposed.append(name)
    return exposed


def _timm_attention_types() -> tuple[type, ...]:
    """timm's attention classes, if timm is loaded (a model built without it holds none)."""
    module = sys.modules.get("timm.layers.attention")
    if module is None:
        return ()
    return tuple(getattr(module, name) for name in TIMM_ATTENTIONS if hasattr(module, name))

"""LoRA on the attention projections (q, k, v of the packed ``in_proj_weight``, and ``out_proj``).

``W' = W + scale * B @ A`` through ``torch.nn.utils.parametrize``, so that ``nn.MultiheadAttention`` (which reads
its weights directly) sees the updated weights. B starts at zero: the patched model equals the original until it
trains.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRADelta(nn.Module):
    """Parametrization of a (n_parts * D, D_in) weight: adds scale * B_i @ A_i to the selected parts."""

    def __init__(self, d_in: int, d_out: int, rank: int, parts: tuple[bool, ...], scale: float, enabled):
        super().__init__()
        self.parts, self.scale, self.enabled, self.d_out = parts, scale, enabled, d_out
        n = sum(parts)
        self.lora_a = nn.Parameter(torch.empty(n, rank, d_in))
        self.lora_b = nn.Parameter(torch.zeros(n, d_out, rank))
        for a in self.lora_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled():
            return weight
        delta = torch.bmm(self.lora_b, self.lora_a) * self.scale  # (n, d_out, d_in)
        chunks, used = [], 0
        for i, on in enumerate(self.parts):
            if on:
                chunks.append(delta[used])
                used += 1
            else:
                chunks.append(torch.zeros_like(weight[i * self.d_out : (i + 1) * self.d_out]))
        return weight + torch.cat(chunks).to(weight.dtype)


def attention_parametrizations(attn: nn.MultiheadAttention, rank: int, targets: tuple[str, ...], scale: float,
                               enabled) -> list[tuple[nn.Module, str, LoRADelta]]:
    """[(module, tensor name, parametrization)] for one attention layer."""
    D = attn.embed_dim
    out = []
    qkv = tuple(t in targets for t in ("q", "k", "v"))
    if any(qkv):
        out.append((attn, "in_proj_weight", LoRADelta(D, D, rank, qkv, scale, enabled)))
    if "o" in targets:
        out.append((attn.out_proj, "weight", LoRADelta(D, D, rank, (True,), scale, enabled)))
    return out

"""M2-CLIP's cross-modal masked-language-modelling head.

A 13th text block, copied from the 12th, cross-attends from the caption tokens to the per-frame
visual embeddings; ``ln_final``; a BERT-style prediction head over the word list of the class names.
The copied block is frozen, as every backbone weight: a frozen copy of a frozen block is the block
itself, so the decoder calls the text tower's last block (its attention as cross-attention) rather
than holding a second copy of its weights. What trains: the mask embedding (unless the word "mask" stands
in for it), a text adapter before the block's MLP and, in the SSv2 variant, one before its attention (the
release adapts the 13th block as one of its text blocks), the prediction head, and a projection of the
visual embeddings where their width differs from the text width.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.methods.base import EXTRA_FORWARD_METHODS
from msta_fast.methods.m2clip.adapters import TextAdapter
from msta_fast.methods.towers import find_towers


class MLMHead(nn.Module):
    """BERT's prediction head: dense, GELU, LayerNorm, then a linear decoder to the word list."""

    def __init__(self, width: int, vocab: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.decoder = nn.Linear(width, vocab)
        for layer in (self.dense, self.decoder):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, L, width) -> logits (N, L, vocab)."""
        return self.decoder(self.norm(F.gelu(self.dense(x))))


class MLMDecoder(nn.Module):
    """The trainable parts of the MLM head (see the module docstring)."""

    def __init__(self, text_width: int, embed_dim: int, vocab: int, adapter_dim: int, zero_init_adapter: bool = True,
                 *, pre_attn: bool = False, mask_embedding: bool = True):
        super().__init__()
        if mask_embedding:
            self.mask_embedding = nn.Parameter(torch.randn(text_width) * 0.02)
        else:
            self.register_parameter("mask_embedding", None)
        self.adapter = TextAdapter(text_width, adapter_dim, zero_init_adapter)
        self.adapter_attn = TextAdapter(text_width, adapter_dim, zero_init_adapter) if pre_attn else None
        self.visual_proj = nn.Linear(embed_dim, text_width) if embed_dim != text_width else None
        self.head = MLMHead(text_width, vocab)

    def forward(self, model: nn.Module, text_tokens: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """text_tokens: (N, L, Dt) output of the text tower's last block; frames: (N, T, E) per-frame visual
        embeddings -> word logits (N, L, vocab)."""
        text = find_towers(model).text
        block = text.blocks[-1]
        if not hasattr(block, CROSS_FORWARD):
            raise RuntimeError("the text tower's last block has no decoder method: patch the model with mlm_vocab")
        memory = self.visual_proj(frames) if self.visual_proj is not None else frames
        x = getattr(block, CROSS_FORWARD)(text_tokens, memory, self.adapter, self.adapter_attn)
        return self.head(text_module(model, "ln_final")(x))

    def attach(self, block: nn.Module):
        """Give the text tower's last block the decoder's pass as a method, listed in the block's
        ``EXTRA_FORWARD_METHODS`` so that FSDP2 gathers the block's weights for it as for a forward.
        Returns a handle whose ``remove()`` takes it away again (``unpatch``)."""
        block.__dict__[CROSS_FORWARD] = types.MethodType(cross_forward, block)
        block.__dict__[EXTRA_FORWARD_METHODS] = (*getattr(block, EXTRA_FORWARD_METHODS, ()), CROSS_FORWARD)
        return _MethodHandle(block)


CROSS_FORWARD = "m2clip_cross_forward"


def cross_forward(block: nn.Module, text_tokens: torch.Tensor, memory: torch.Tensor, adapter: nn.Module,
                  adapter_attn: nn.Module | None = None):
    """The 13th block on the weights of ``block`` (bound as its method ``m2clip_cross_forward``): the
    pre-attention adapter (the SSv2 variant; on the caption tokens only), cross-attention from the caption tokens
    (N, L, Dt) to ``memory`` (N, T, Dt), the adapter, the MLP."""
    if adapter_attn is not None:
        text_tokens = adapter_attn(text_tokens)
    attended = _cross_attention(block, block.ln_1(text_tokens), block.ln_1(memory))
    x = text_tokens + _layer_scale(block, "ls_1", attended)
    x = adapter(x)
    return x + _layer_scale(block, "ls_2", block.mlp(block.ln_2(x)))


class _MethodHandle:
    def __init__(self, block: nn.Module):
        self.block = block

    def remove(self) -> None:
        self.block.__dict__.pop(CROSS_FORWARD, None)
        rest = tuple(n for n in getattr(self.block, EXTRA_FORWARD_METHODS, ()) if n != CROSS_FORWARD)
        self.block.__dict__[EXTRA_FORWARD_METHODS] = rest
        if not rest:
            del self.block.__dict__[EXTRA_FORWARD_METHODS]


def _layer_scale(block: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    scale = getattr(block, name, None)  # open_clip's optional LayerScale (an Identity in CLIP)
    return scale(x) if scale is not None else x


def _cross_attention(block: nn.Module, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The block's attention with keys and values from ``memory``: (N, L, D), (N, T, D) -> (N, L, D).

    ``forward`` is called directly: the hooks on this attention belong to the encoder's adapters and
    must not run inside the decoder."""
    attn = block.attn
    if attn.batch_first:
        return attn.forward(query, memory, memory, need_weights=False)[0]
    q, m = query.transpose(0, 1), memory.transpose(0, 1)
    return attn.forward(q, m, m, need_weights=False)[0].transpose(0, 1)


def text_module(model: nn.Module, name: str) -> nn.Module:
    """``token_embedding`` or ``ln_final`` of the text tower of ViCLIP, FrameCLIP or an open_clip CLIP."""
    if hasattr(model, "text_encoder"):
        owner = model.text_encoder
    else:
        owner = getattr(model, "clip", model)
    module = getattr(owner, name, None)
    if module is None:
        raise TypeError(f"cannot find the text tower's {name} in {type(model).__name__}")
    return module


def text_token_features(
    model: nn.Module, ids: torch.Tensor, replace: torch.Tensor | None = None, embedding: torch.Tensor | None = None
) -> torch.Tensor:
    """Output of the text tower's last block (N, L, Dt) for token ids (N, L), adapters included.

    ``replace`` (N, L) bool: positions whose token embedding becomes ``embedding`` (Dt,) (the mask).
    """
    text = find_towers(model).text
    captured = {}

    def keep_output(block, args, out):
        captured["tokens"] = out.transpose(0, 1) if text.seq_first else out

    def put_mask(module, args, out):
        return torch.where(replace.unsqueeze(-1).to(out.device), embedding.to(out.dtype), out)

    handles = [text.blocks[-1].register_forward_hook(keep_output)]
    if replace is not None:
        handles.append(text_module(model, "token_embedding").register_forward_hook(put_mask))
    try:
        model.encode_text(ids)
    finally:
        for handle in handles:
            handle.remove()
    return captured["tokens"]

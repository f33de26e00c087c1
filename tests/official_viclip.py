"""A test-only transcription of the published ViCLIP forward pass (InternVideo's module layout:
sequence-first blocks, ``einops`` rearranges, the class token taken from the first B frame rows),
written from method.md. Used to check that our ViCLIP computes the same function on the same
weights, and that ``msta_fast.patch`` works on a model laid out like the official one."""

from __future__ import annotations

from collections import OrderedDict

import torch
from einops import rearrange
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.type(torch.float32)).type(x.dtype)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model, n_head, attn_mask=None, norm=nn.LayerNorm):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)  # sequence-first
        self.ln_1 = norm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = norm(d_model)
        self.attn_mask = attn_mask

    def attention(self, x):
        mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None, norm=nn.LayerNorm):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, attn_mask, norm) for _ in range(layers)])

    def forward(self, x):
        for r in self.resblocks:
            x = r(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, num_frames):
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, (1, patch_size, patch_size), (1, patch_size, patch_size), bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x)
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
        x = torch.cat(
            [self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype), x], dim=1
        )
        x = x + self.positional_embedding.to(x.dtype)
        cls_tokens = x[:B, :1, :]
        x = x[:, 1:]
        x = rearrange(x, "(b t) n m -> (b n) t m", b=B, t=T)
        if x.size(1) == 1:
            x = x + self.temporal_positional_embedding.mean(1)
        else:
            x = x + self.temporal_positional_embedding
        x = rearrange(x, "(b n) t m -> b (n t) m", b=B, t=T)
        x = torch.cat((cls_tokens, x), dim=1)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)
        x = self.transformer(x)
        x = self.ln_post(x)
        return x[0] @ self.proj


class CLIPText(nn.Module):
    def __init__(self, embed_dim, context_length, vocab_size, width, heads, layers):
        super().__init__()
        mask = torch.empty(context_length, context_length).fill_(float("-inf")).triu_(1)
        self.transformer = Transformer(width, layers, heads, attn_mask=mask, norm=LayerNorm)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))

    def forward(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


class OfficialViCLIP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.vision_encoder = VisionTransformer(
            cfg.image_size,
            cfg.patch_size,
            cfg.vision_width,
            cfg.vision_layers,
            cfg.vision_heads,
            cfg.embed_dim,
            cfg.num_frames,
        )
        self.text_encoder = CLIPText(
            cfg.embed_dim, cfg.context_length, cfg.vocab_size, cfg.text_width, cfg.text_heads, cfg.text_layers
        )
        self.temp = nn.Parameter(torch.tensor(0.01))

    def encode_vision(self, image):
        return self.vision_encoder(image.permute(0, 2, 1, 3, 4).contiguous())

    def encode_text(self, ids):
        return self.text_encoder(ids)

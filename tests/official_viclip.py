"""A test double of the official InternVideo ViCLIP module (``Data/InternVid/viclip/``), written from the facts of
method.md section 1, so that the tests run what users of that module run:

- the vision blocks are sequence-first (L, B, D), with DropPath on both residual branches (rates linearly from 0
  to ``drop_path``, timm's per-row form: it drops rows of dim 0, which in this layout are tokens) and an MLP
  ``c_fc, gelu, drop1, c_proj, drop2``;
- ``ViCLIP.__init__`` hard-codes ``vision_encoder_checkpoint_num = 24``: the vision Transformer runs every block
  (index < 24) through ``torch.utils.checkpoint.checkpoint(blk, x)`` without ``use_reentrant``, which is the
  reentrant kind (passed explicitly here, to say the same without PyTorch's warning);
- ``encode_vision(x, test=False)``: the default masks 90% of the patch tokens (a fixed count, random positions),
  in eval mode too; ``test=True`` is the inference path;
- ``encode_text`` takes strings and tokenises them itself (context 32, int32 ids); the text blocks are an
  ``nn.Sequential`` with fp32 LayerNorms, run by ``checkpoint_sequential`` when ``checkpoint_num`` > 0 (0 here,
  as in the official ``ViCLIP``);
- the parameter names of the published checkpoints: msta_fast's ViCLIP state dict loads into it strictly.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from einops import rearrange
from torch import nn
from torch.utils import checkpoint

from msta_fast.models.tokenizer import tokenize


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class LayerNormFp32(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.type(torch.float32)).type(x.dtype)


class DropPath(nn.Module):
    """timm's drop path: each row of dim 0 of the branch kept with probability 1 - p and scaled by 1 / (1 - p)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class VisionBlock(nn.Module):
    def __init__(self, width, heads, drop_path=0.0, dropout=0.0):
        super().__init__()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout)  # sequence-first
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("drop1", nn.Dropout(dropout)),
            ("c_proj", nn.Linear(width * 4, width)),
            ("drop2", nn.Dropout(dropout)),
        ]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = None

    def attention(self, x):
        return self.attn(x, x, x, need_weights=False, attn_mask=self.attn_mask)[0]

    def forward(self, x):
        x = x + self.drop_path1(self.attention(self.ln_1(x)))
        return x + self.drop_path2(self.mlp(self.ln_2(x)))


class VisionTransformerBlocks(nn.Module):
    """The official vision ``Transformer``: blocks with index < ``checkpoint_num`` under reentrant checkpointing."""

    def __init__(self, width, layers, heads, drop_path=0.0, checkpoint_num=0):
        super().__init__()
        rates = [r.item() for r in torch.linspace(0, drop_path, layers)]
        self.resblocks = nn.ModuleList(VisionBlock(width, heads, rates[i]) for i in range(layers))
        self.checkpoint_num = checkpoint_num

    def forward(self, x):
        for i, block in enumerate(self.resblocks):
            x = checkpoint.checkpoint(block, x, use_reentrant=True) if i < self.checkpoint_num else block(x)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, num_frames, drop_path=0.0,
                 checkpoint_num=0):
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, (1, patch_size, patch_size), (1, patch_size, patch_size), bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, num_frames, width))
        self.transformer = VisionTransformerBlocks(width, layers, heads, drop_path, checkpoint_num)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim) * scale)
        self.dropout = nn.Dropout(0.0)

    def mask_tokens(self, x, masking_prob):
        """Drop ``int(masking_prob * L)`` random tokens of each row: (B, L, D) -> (B, L - Lm, D)."""
        B, L, _ = x.shape
        dropped = torch.zeros(B, L)
        order = torch.argsort(torch.rand_like(dropped), dim=-1)[:, : int(masking_prob * L)]
        dropped[torch.arange(B).unsqueeze(-1).expand_as(order), order] = 1
        return x[~dropped.bool()].reshape(B, -1, x.shape[-1])

    def forward(self, x, masking_prob=0.0):
        x = self.conv1(x)
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, C, dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        cls_tokens = x[:B, :1, :]
        x = rearrange(x[:, 1:], "(b t) n m -> (b n) t m", b=B, t=T)
        if x.size(1) == 1:
            x = x + self.temporal_positional_embedding.mean(1)
        else:
            x = x + self.temporal_positional_embedding
        x = rearrange(x, "(b n) t m -> b (n t) m", b=B, t=T)
        if masking_prob > 0.0:
            x = self.mask_tokens(x, masking_prob)
        x = self.ln_pre(torch.cat((cls_tokens, x), dim=1))
        x = self.transformer(x.permute(1, 0, 2))  # (L, B, D)
        x = self.ln_post(x)
        return self.dropout(x[0]) @ self.proj


class TextBlock(nn.Module):
    def __init__(self, width, heads, attn_mask):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNormFp32(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = LayerNormFp32(width)
        self.attn_mask = attn_mask

    def attention(self, x):
        mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextTransformerBlocks(nn.Module):
    def __init__(self, width, layers, heads, attn_mask, checkpoint_num=0):
        super().__init__()
        self.resblocks = nn.Sequential(*[TextBlock(width, heads, attn_mask) for _ in range(layers)])
        self.checkpoint_num = checkpoint_num

    def forward(self, x):
        if self.checkpoint_num > 0:
            segments = min(self.checkpoint_num, len(self.resblocks))
            return checkpoint.checkpoint_sequential(self.resblocks, segments, x, use_reentrant=True)
        return self.resblocks(x)


class CLIPText(nn.Module):
    def __init__(self, embed_dim, context_length, vocab_size, width, heads, layers, checkpoint_num=0):
        super().__init__()
        self.context_length = context_length
        mask = torch.empty(context_length, context_length).fill_(float("-inf")).triu_(1)
        self.transformer = TextTransformerBlocks(width, layers, heads, mask, checkpoint_num)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = LayerNormFp32(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))

    def tokenize(self, texts, context_length=77):
        """Strings -> int32 ids (N, context_length), cut texts ending with the end-of-text token."""
        return tokenize([texts] if isinstance(texts, str) else list(texts), context_length).to(torch.int)

    def forward(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection


class OfficialViCLIP(nn.Module):
    """``cfg``: a msta_fast ``ViCLIPConfig`` (the sizes). The defaults are those hard-coded in the official
    ``ViCLIP.__init__``: drop path 0.1, checkpoint_num 24, masking_prob 0.9."""

    def __init__(self, cfg, drop_path=0.1, checkpoint_num=24, masking_prob=0.9):
        super().__init__()
        self.max_txt_l = cfg.context_length
        self.masking_prob = masking_prob
        self.vision_encoder = VisionTransformer(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers,
                                               cfg.vision_heads, cfg.embed_dim, cfg.num_frames, drop_path,
                                               checkpoint_num)
        self.text_encoder = CLIPText(cfg.embed_dim, cfg.context_length, cfg.vocab_size, cfg.text_width,
                                     cfg.text_heads, cfg.text_layers)
        self.temp = nn.Parameter(torch.ones([]) / 100.0)

    def encode_vision(self, image, test=False):
        """image: (B, T, 3, H, W) or (B, 3, H, W) -> (B, embed_dim); masked unless ``test``."""
        image = image.permute(0, 2, 1, 3, 4).contiguous() if image.ndim == 5 else image.unsqueeze(2)
        if not test and self.masking_prob > 0.0:
            return self.vision_encoder(image, masking_prob=self.masking_prob)
        return self.vision_encoder(image)

    def encode_text(self, text):
        """Strings -> (N, embed_dim)."""
        device = next(self.text_encoder.parameters()).device
        ids = self.text_encoder.tokenize(text, context_length=self.max_txt_l).to(device)
        return self.text_encoder(ids)

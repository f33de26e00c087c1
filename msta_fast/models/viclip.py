"""ViCLIP: CLIP with the image tower turned into a video tower (method.md section 1).

Video tokens: one class token, then patch tokens ordered patch-major, time-minor (token
``1 + n*T + t`` is patch ``n`` of frame ``t``), with joint space-time attention over all of them.
Module and parameter names are those of the published checkpoints, so a state dict loads as is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from msta_fast.models.tokenizer import tokenize
from msta_fast.models.transformer import LayerNormFp32, Transformer


@dataclass(frozen=True)
class ViCLIPConfig:
    """Architecture of a ViCLIP model; heads default to width / 64 as in every released model."""

    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 8
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int | None = None
    embed_dim: int = 512
    text_width: int = 512
    text_layers: int = 12
    text_heads: int | None = None
    vocab_size: int = 49408
    context_length: int = 32

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name in ("vision", "text"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            heads = heads or max(1, width // 64)
            if width % heads:
                raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")
            object.__setattr__(self, f"{name}_heads", heads)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


PRESETS: dict[str, ViCLIPConfig] = {
    "viclip-b16": ViCLIPConfig(),
    "viclip-l14": ViCLIPConfig(
        patch_size=14, vision_width=1024, vision_layers=24, embed_dim=768, text_width=768, text_layers=12
    ),
    # For tests and the built-in synthetic default: same structure, a few hundred thousand parameters
    # outside the token embedding.
    "viclip-tiny": ViCLIPConfig(
        image_size=32, patch_size=8, vision_width=64, vision_layers=2, embed_dim=64, text_width=64, text_layers=2
    ),
}


def list_models() -> list[str]:
    return sorted(PRESETS)


def get_config(name: str = "viclip-b16", **overrides) -> ViCLIPConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown ViCLIP preset {name!r}; known: {list_models()}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ViCLIPConfig)}
    if unknown:
        raise ValueError(f"unknown ViCLIP config keys {sorted(unknown)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class VisionTransformer3D(nn.Module):
    """ViCLIP's video tower: (B, 3, T, H, W) -> (B, embed_dim)."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        width, p = cfg.vision_width, cfg.patch_size
        scale = width**-0.5
        self.patch_size = p
        self.conv1 = nn.Conv3d(3, width, kernel_size=(1, p, p), stride=(1, p, p), bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> tokens (B, 1 + N*T, D) in ViCLIP's order, before ``ln_pre``."""
        x = self.conv1(x)
        B, D, T, gh, gw = x.shape
        frames = x.permute(0, 2, 3, 4, 1).reshape(B * T, gh * gw, D)
        cls = self.class_embedding.to(x.dtype) + x.new_zeros(B * T, 1, D)
        frames = torch.cat([cls, frames], dim=1) + self.positional_embedding.to(x.dtype)
        cls_tokens = frames[:B, :1]  # identical for every frame
        patches = frames[:, 1:].reshape(B, T, gh * gw, D).transpose(1, 2)  # (B, N, T, D)
        temporal = self.temporal_positional_embedding
        if T == 1:
            patches = patches + temporal.mean(1).to(x.dtype)
        elif T == temporal.shape[1]:
            patches = patches + temporal.to(x.dtype)
        else:
            raise ValueError(
                f"the model has a temporal embedding for {temporal.shape[1]} frames but got {T}; "
                f"load the checkpoint with num_frames={T} to resize it"
            )
        return torch.cat([cls_tokens, patches.reshape(B, gh * gw * T, D)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_pre(self.embed(x))
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


class TextTransformer(nn.Module):
    """CLIP's text tower at context 32: ids (N, L) -> (N, embed_dim), pooled at EOT (argmax id)."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        width = cfg.text_width
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, width))
        self.transformer = Transformer(width, cfg.text_layers, cfg.text_heads, norm_layer=LayerNormFp32)
        self.ln_final = LayerNormFp32(width)
        self.text_projection = nn.Parameter(torch.empty(width, cfg.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def causal_mask(self, length: int, device: torch.device) -> torch.Tensor:
        return torch.full((length, length), float("-inf"), device=device).triu_(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        if L > self.context_length:
            raise ValueError(f"token ids of length {L} exceed the context length {self.context_length}")
        x = self.token_embedding(ids) + self.positional_embedding[:L]
        x = self.transformer(x, self.causal_mask(L, ids.device))
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=ids.device), ids.argmax(dim=-1)] @ self.text_projection


class ViCLIP(nn.Module):
    """Video tower, text tower and the similarity temperature ``temp`` (logits = cos / temp)."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        self.config = cfg
        self.vision_encoder = VisionTransformer3D(cfg)
        self.text_encoder = TextTransformer(cfg)
        self.temp = nn.Parameter(torch.tensor(0.01))

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, T, 3, H, W) ImageNet-normalised -> (B, embed_dim), not normalised."""
        if video.ndim != 5:
            raise ValueError(f"expected a video batch (B, T, 3, H, W), got shape {tuple(video.shape)}")
        return self.vision_encoder(video.permute(0, 2, 1, 3, 4))

    def encode_text(self, texts: list[str] | str | torch.Tensor) -> torch.Tensor:
        """texts: strings or ids (N, <=32) -> (N, embed_dim), not normalised."""
        if not isinstance(texts, torch.Tensor):
            texts = tokenize(texts, self.config.context_length)
        return self.text_encoder(texts.to(self.temp.device))

    def forward(self, video: torch.Tensor, texts: list[str] | torch.Tensor) -> torch.Tensor:
        """Similarity logits (B, N) = cos(video, text) / temp."""
        v = nn.functional.normalize(self.encode_video(video), dim=-1)
        t = nn.functional.normalize(self.encode_text(texts), dim=-1)
        return v @ t.t() / self.temp

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision_encoder.transformer.grad_checkpointing = enable
        self.text_encoder.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {
            "temp",
            "vision_encoder.class_embedding",
            "vision_encoder.positional_embedding",
            "vision_encoder.temporal_positional_embedding",
            "text_encoder.positional_embedding",
        }


def build_viclip(name: str = "viclip-b16", **overrides) -> ViCLIP:
    """A randomly initialised ViCLIP; works under ``with torch.device("meta"):``."""
    return ViCLIP(get_config(name, **overrides))

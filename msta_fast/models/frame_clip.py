"""Frame-wise CLIP (the paper's "vanilla CLIP"): open_clip's image tower encodes each frame, the
frame embeddings are averaged. Loads OpenAI / open_clip weights and ViCLIP checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

from msta_fast.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from msta_fast.models.checkpoint import CheckpointMismatchError, check_keys, read_state_dict
from msta_fast.models.tokenizer import tokenize


class FlattenFrames(nn.Module):
    """(B, T, 3, H, W) -> (B*T, 3, H, W). A module of its own so that what runs per frame (a temporal adapter)
    can read the frames per clip off its input, as it reads the patch grid off the image tower's."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.flatten(0, 1)


class FrameCLIP(nn.Module):
    """Video (B, T, 3, H, W), ImageNet-normalised like ViCLIP's input -> mean of frame embeddings.

    ``pixel_stats`` says what the wrapped weights expect ("imagenet" for ViCLIP weights, "clip"
    for OpenAI weights); the input is re-normalised when they differ, so that every model in the
    project takes the same tensors.
    """

    def __init__(self, clip: open_clip.CLIP, pixel_stats: str = "clip"):
        super().__init__()
        if pixel_stats not in ("clip", "imagenet"):
            raise ValueError(f"pixel_stats must be 'clip' or 'imagenet', got {pixel_stats!r}")
        self.clip = clip
        self.pixel_stats = pixel_stats
        mean, std = (CLIP_MEAN, CLIP_STD) if pixel_stats == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        # x_model = (x * std_in + mean_in - mean) / std = x * a + b, per channel.
        a = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        b = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("renorm_scale", a.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("renorm_shift", b.view(1, 3, 1, 1), persistent=False)
        self.flatten_frames = FlattenFrames()

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    @property
    def temp(self) -> torch.Tensor:
        return torch.exp(-self.clip.logit_scale)

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> per-frame embeddings (B, T, E)."""
        B, T = video.shape[:2]
        frames = self.flatten_frames(video)
        if self.pixel_stats == "clip":
            frames = frames * self.renorm_scale.to(frames.dtype) + self.renorm_shift.to(frames.dtype)
        return self.clip.encode_image(frames).view(B, T, -1)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.encode_frames(video).mean(1)

    def encode_text(self, texts: list[str] | str | torch.Tensor) -> torch.Tensor:
        if not isinstance(texts, torch.Tensor):
            texts = tokenize(texts, self.context_length)
        return self.clip.encode_text(texts.to(self.clip.logit_scale.device))

    def forward(self, video: torch.Tensor, texts: list[str] | torch.Tensor) -> torch.Tensor:
        v = nn.functional.normalize(self.encode_video(video), dim=-1)
        t = nn.functional.normalize(self.encode_text(texts), dim=-1)
        return v @ t.t() / self.temp

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)


def viclip_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ViCLIP state dict -> open_clip CLIP state dict (method.md section 1): the temporal
    embedding is dropped, conv1 squeezed to 2-D, ``logit_scale = log(1 / temp)``."""
    out = {}
    for k, v in sd.items():
        if k == "temp":
            out["logit_scale"] = torch.log(1.0 / v.float()).reshape(())
        elif k == "vision_encoder.temporal_positional_embedding":
            continue
        elif k == "vision_encoder.conv1.weight":
            out["visual.conv1.weight"] = v.squeeze(2)
        elif k.startswith("vision_encoder."):
            out["visual." + k[len("vision_encoder.") :]] = v
        elif k.startswith("text_encoder."):
            out[k[len("text_encoder.") :]] = v
        else:
            out[k] = v
    return out


def clip_from_state_dict(
    sd: dict[str, torch.Tensor], source: str = "state dict", quick_gelu: bool = True
) -> open_clip.CLIP:
    """An open_clip CLIP (fp32) whose ViT architecture is read off an OpenAI-format state dict (heads =
    width / 64, as in every OpenAI model); keys must match exactly. The activation cannot be read off
    the weights: OpenAI's and ViCLIP's use QuickGELU, open_clip's own (LAION, DataComp) plain GELU."""
    try:
        vision_width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
        text_width = sd["ln_final.weight"].shape[0]
        vision_cfg = CLIPVisionCfg(
            layers=_count_blocks(sd, "visual.transformer.resblocks."),
            width=vision_width,
            patch_size=patch,
            image_size=patch * grid,
            head_width=64,
        )
        text_cfg = CLIPTextCfg(
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            width=text_width,
            heads=text_width // 64,
            layers=_count_blocks(sd, "transformer.resblocks."),
        )
        embed_dim = sd["text_projection"].shape[1]
    except KeyError as e:
        raise CheckpointMismatchError(source, [e.args[0]], []) from None
    model = open_clip.CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu=quick_gelu)
    check_keys(model, sd, source)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return model.eval()


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def build_frame_clip(
    name: str = "ViT-B-16", context_length: int | None = None, pixel_stats: str = "clip", **kwargs
) -> FrameCLIP:
    """A randomly initialised frame-wise CLIP from an open_clip model name (QuickGELU, as OpenAI's)."""
    clip = open_clip.create_model(
        name, pretrained=None, force_quick_gelu=True, force_context_length=context_length, **kwargs
    )
    return FrameCLIP(clip, pixel_stats)


def frame_clip_from_viclip(viclip: nn.Module) -> FrameCLIP:
    """The frame-wise CLIP that holds the weights of a ViCLIP model (its temporal embedding dropped)."""
    sd = viclip_to_open_clip({k: v.detach().cpu() for k, v in viclip.state_dict().items()})
    return FrameCLIP(clip_from_state_dict(sd, "ViCLIP model"), pixel_stats="imagenet")


def load_frame_clip(path: str | Path, quick_gelu: bool = True) -> FrameCLIP:
    """Frame-wise CLIP from an OpenAI / open_clip state dict or a ViCLIP checkpoint.

    A ViCLIP checkpoint keeps ViCLIP's ImageNet input statistics and context 32; OpenAI weights
    expect CLIP's statistics (the input is re-normalised inside). Pass ``quick_gelu=False`` for
    open_clip's own (non-OpenAI) ViT-B/16 weights, which were trained with plain GELU.
    """
    path = Path(path)
    try:
        sd = read_state_dict(path)
    except ValueError:
        # OpenAI's releases are TorchScript archives; torch.jit.load runs no pickled Python.
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    if any(k.startswith("vision_encoder.") for k in sd):
        return FrameCLIP(clip_from_state_dict(viclip_to_open_clip(sd), str(path)), pixel_stats="imagenet")
    # OpenAI's files carry three scalar tensors that are not weights.
    sd = {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    return FrameCLIP(clip_from_state_dict(sd, str(path), quick_gelu), pixel_stats="clip")

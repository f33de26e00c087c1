"""Reading ViCLIP checkpoints as published: ``{"model": state_dict}`` .pth files, bare or wrapped
state dicts, ``module.``-prefixed keys and safetensors. The architecture is read off the shapes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from msta_fast.models.viclip import ViCLIP, ViCLIPConfig

_WRAPPER_KEYS = ("model", "state_dict", "module")
_PREFIXES = ("module.", "model.")


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model: lists the missing and unexpected keys."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str], shapes: list[str] = ()):
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)
        lines = [f"{source} does not fit the model:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:40]) + (" ..." if len(keys) > 40 else ""))
        super().__init__("\n".join(lines))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Flat state dict from any accepted checkpoint format; loads with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True: {e}") from e
    while isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        wrapper = next((k for k in _WRAPPER_KEYS if k in sd), None)
        if wrapper is None:
            raise ValueError(f"{path}: no state dict found (top-level keys: {sorted(sd)[:20]})")
        sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return strip_prefixes(sd)


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _count_blocks(sd: dict[str, torch.Tensor], tower: str) -> int:
    pattern = re.compile(rf"^{tower}\.transformer\.resblocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(sd: dict[str, torch.Tensor], source: str = "state dict", **overrides) -> ViCLIPConfig:
    """ViCLIPConfig from tensor shapes; heads default to width / 64."""
    try:
        conv = sd["vision_encoder.conv1.weight"]
        pos = sd["vision_encoder.positional_embedding"]
        grid = math.isqrt(pos.shape[0] - 1)
        shape_cfg = dict(
            patch_size=conv.shape[-1],
            image_size=grid * conv.shape[-1],
            num_frames=sd["vision_encoder.temporal_positional_embedding"].shape[1],
            vision_width=conv.shape[0],
            vision_layers=_count_blocks(sd, "vision_encoder"),
            embed_dim=sd["vision_encoder.proj"].shape[1],
            text_width=sd["text_encoder.token_embedding.weight"].shape[1],
            text_layers=_count_blocks(sd, "text_encoder"),
            vocab_size=sd["text_encoder.token_embedding.weight"].shape[0],
            context_length=sd["text_encoder.positional_embedding"].shape[0],
        )
    except KeyError as e:
        raise CheckpointMismatchError(source, [e.args[0]], []) from None
    return ViCLIPConfig(**{**shape_cfg, **overrides})


def resize_temporal_embedding(emb: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(1, T0, D) -> (1, num_frames, D) by linear interpolation over time."""
    if emb.shape[1] == num_frames:
        return emb
    out = F.interpolate(emb.float().transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(emb.dtype)


def resize_positional_embedding(emb: torch.Tensor, grid: int) -> torch.Tensor:
    """(1 + g0*g0, D) -> (1 + grid*grid, D): bicubic over the patch grid, class position kept."""
    g0 = math.isqrt(emb.shape[0] - 1)
    if g0 == grid:
        return emb
    patches = emb[1:].float().reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([emb[:1].float(), patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)]).to(emb.dtype)


def check_keys(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(source, missing, unexpected, shapes)


def load_viclip(path: str | Path, dtype: torch.dtype = torch.float32, **overrides) -> ViCLIP:
    """ViCLIP from a published checkpoint; keys must match exactly.

    ``num_frames`` or ``image_size`` overrides interpolate the temporal / spatial positional
    embeddings; other overrides (``vision_heads``, ``text_heads``) go to the config.
    """
    sd = read_state_dict(path)
    cfg = infer_config(sd, str(path), **overrides)
    if "vision_encoder.temporal_positional_embedding" in sd:
        sd["vision_encoder.temporal_positional_embedding"] = resize_temporal_embedding(
            sd["vision_encoder.temporal_positional_embedding"], cfg.num_frames
        )
        sd["vision_encoder.positional_embedding"] = resize_positional_embedding(
            sd["vision_encoder.positional_embedding"], cfg.grid_size
        )
    with torch.device("meta"):
        model = ViCLIP(cfg)
    check_keys(model, sd, str(path))
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model

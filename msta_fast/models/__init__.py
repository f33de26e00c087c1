"""Backbones: ViCLIP (our implementation of the published architecture) and frame-wise CLIP."""

from msta_fast.constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from msta_fast.models.checkpoint import (
    AmbiguousCheckpointWarning,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    load_viclip,
    read_state_dict,
)
from msta_fast.models.frame_clip import FrameCLIP, build_frame_clip, frame_clip_from_viclip, load_frame_clip
from msta_fast.models.tokenizer import tokenize
from msta_fast.models.viclip import ViCLIP, ViCLIPConfig, build_viclip, get_config, list_models

__all__ = [
    "AmbiguousCheckpointWarning",
    "CLIP_MEAN",
    "CLIP_STD",
    "CheckpointMismatchError",
    "FrameCLIP",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "UnsafeCheckpointError",
    "ViCLIP",
    "ViCLIPConfig",
    "build_frame_clip",
    "build_viclip",
    "frame_clip_from_viclip",
    "get_config",
    "list_models",
    "load_frame_clip",
    "load_viclip",
    "read_state_dict",
    "tokenize",
]

"""msta-fast: parameter-efficient transfer of video-language models to action recognition."""

from msta_fast.adapter_io import load_adapters, read_adapters, save_adapters
from msta_fast.methods import get_method, list_methods, register_method
from msta_fast.models import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointMismatchError,
    FrameCLIP,
    ViCLIP,
    ViCLIPConfig,
    build_frame_clip,
    build_viclip,
    frame_clip_from_viclip,
    list_models,
    load_frame_clip,
    load_viclip,
    tokenize,
)
from msta_fast.patching import adapter_parameters, disable_adapters, patch, trainable_parameters, unpatch

__version__ = "0.1.0"

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointMismatchError",
    "FrameCLIP",
    "ViCLIP",
    "ViCLIPConfig",
    "adapter_parameters",
    "build_frame_clip",
    "build_viclip",
    "disable_adapters",
    "frame_clip_from_viclip",
    "get_method",
    "list_methods",
    "list_models",
    "load_adapters",
    "load_frame_clip",
    "load_viclip",
    "patch",
    "read_adapters",
    "register_method",
    "save_adapters",
    "tokenize",
    "trainable_parameters",
    "unpatch",
]

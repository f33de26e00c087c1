"""msta-fast: parameter-efficient transfer of video-language models to action recognition."""

from msta_fast.adapters import (
    PatchConfig,
    adapter_parameters,
    disable_adapters,
    load_adapters,
    patch,
    save_adapters,
    trainable_parameters,
    unpatch,
)
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

__version__ = "0.1.0"

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointMismatchError",
    "FrameCLIP",
    "PatchConfig",
    "ViCLIP",
    "ViCLIPConfig",
    "adapter_parameters",
    "build_frame_clip",
    "build_viclip",
    "disable_adapters",
    "frame_clip_from_viclip",
    "list_models",
    "load_adapters",
    "load_frame_clip",
    "load_viclip",
    "patch",
    "save_adapters",
    "tokenize",
    "trainable_parameters",
    "unpatch",
]

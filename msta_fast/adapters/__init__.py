"""Adapters and ``patch``: MSTA, LoRA, AdaptFormer, full fine-tuning and zero-shot, in plain PyTorch."""

from msta_fast.adapters.config import METHODS, PatchConfig
from msta_fast.adapters.io import adapter_state_dict, load_adapters, read_adapters, save_adapters
from msta_fast.adapters.patching import (
    ParameterReport,
    adapter_parameters,
    count_trainable,
    disable_adapters,
    get_patch_state,
    patch,
    trainable_parameters,
    unpatch,
)

__all__ = [
    "METHODS",
    "ParameterReport",
    "PatchConfig",
    "adapter_parameters",
    "adapter_state_dict",
    "count_trainable",
    "disable_adapters",
    "get_patch_state",
    "load_adapters",
    "patch",
    "read_adapters",
    "save_adapters",
    "trainable_parameters",
    "unpatch",
]

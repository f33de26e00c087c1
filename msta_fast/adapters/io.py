"""Saving and loading adapters alone: safetensors of the adapter weights, the patch options in
its metadata. A few MB instead of the whole model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from msta_fast.adapters.config import PatchConfig
from msta_fast.adapters.patching import adapter_parameters, get_patch_state, patch
from msta_fast.models.checkpoint import CheckpointMismatchError

FORMAT = "msta_fast.adapters/1"


def _full(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 shards parameters as DTensors: gather the full tensor for saving.
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: _full(p.detach()).cpu().contiguous() for n, p in adapter_parameters(model).items()}


def save_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapter weights and options to ``path`` (safetensors), atomically."""
    state = get_patch_state(model)
    if state is None:
        raise RuntimeError("the model is not patched: nothing to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "config": json.dumps(state.config.to_dict())}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(adapter_state_dict(model), tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_adapters(path: str | os.PathLike) -> tuple[PatchConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not an msta_fast adapter file (metadata format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return PatchConfig.from_dict(json.loads(meta["config"])), tensors


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters saved by :func:`save_adapters`. An unpatched model is patched with the saved
    options first; a patched one must have been patched with the same options."""
    path = Path(path)
    saved, tensors = read_adapters(path)
    state = get_patch_state(model)
    if state is None:
        options = saved.to_dict()
        patch(model, **options)
        state = get_patch_state(model)
    elif state.config.to_dict() != saved.to_dict():
        ours, theirs = state.config.to_dict(), saved.to_dict()
        diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs.get(k)}
        raise ValueError(f"{path}: saved with other patch options (model vs file): {diff}")
    params = adapter_parameters(model)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    shapes = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(p.shape)}"
        for k, p in params.items()
        if k in tensors and tensors[k].shape != _full(p).shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(str(path), missing, unexpected, shapes)
    with torch.no_grad():
        for name, p in params.items():
            src = tensors[name].to(p.dtype)
            if hasattr(p, "full_tensor"):
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(p.device), p.device_mesh, p.placements)
            p.copy_(src)
    return model

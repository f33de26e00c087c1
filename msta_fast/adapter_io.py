"""Adapters saved alone: safetensors of the adapter weights, the method and its options in the metadata (PEFT's
``adapter_model.safetensors`` + ``adapter_config.json``, in one file). A few MB instead of the whole model.

Metadata keys: ``format`` (``msta_fast.adapters/2``), ``method``, ``config`` (JSON of the method's options),
``backbone`` (the shapes of the model's own parameters and, for a ViCLIP, its architecture: :func:`load_adapters`
names what differs on another backbone) and any extra JSON-serialisable entries the caller adds (a run's class
names, prompt, frames, ...). Files of format 1 (one flat option
dict for every method) still load: :func:`config_from_v1` keeps the options that apply to the saved method.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from msta_fast.methods.base import MethodConfig, OptionError, patch_state
from msta_fast.methods.registry import get_method
from msta_fast.models.checkpoint import CheckpointMismatchError
from msta_fast.patching import adapter_parameters, patch

FORMAT = "msta_fast.adapters/2"
FORMAT_V1 = "msta_fast.adapters/1"
# format 1 names -> the method's option names
_V1_RENAMES = {"lora": {"dim": "rank", "lora_targets": "targets"}}


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2-sharded parameter (a DTensor; a collective), or ``t`` itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights by name, whole and on the CPU (a collective under FSDP2: every rank calls it)."""
    return {n: full_tensor(p.detach()).cpu().contiguous() for n, p in adapter_parameters(model).items()}


def backbone_description(model: nn.Module) -> dict:
    """The backbone's parameter shapes (adapters left out) and, where the model has one, its architecture."""
    state = patch_state(model)
    own = set(state.adapter_names) if state is not None and not state.attachment.trains_everything else set()
    # a parametrized weight (LoRA) is the same backbone weight: name it as the unpatched model does
    shapes = {_unparametrized(n): list(p.shape) for n, p in model.named_parameters() if n not in own}
    out = {"shapes": shapes}
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        out["architecture"] = {k: list(v) if isinstance(v, tuple) else v
                               for k, v in dataclasses.asdict(config).items()}
    return out


def _unparametrized(name: str) -> str:
    return name.replace(".parametrizations.", ".").removesuffix(".original")


def backbone_differences(saved: dict, model: nn.Module) -> list[str]:
    """What differs between the backbone an adapter file was saved on and ``model``'s, as readable lines."""
    now = backbone_description(model)
    lines = []
    for key in sorted(set(saved.get("architecture", {})) | set(now.get("architecture", {}))):
        a, b = saved.get("architecture", {}).get(key), now.get("architecture", {}).get(key)
        if "architecture" in saved and "architecture" in now and a != b:
            lines.append(f"architecture {key}: file {a} vs model {b}")
    old, new = saved.get("shapes", {}), now["shapes"]
    lines += [f"{k}: file {tuple(old[k])} vs model {tuple(new[k])}" for k in sorted(set(old) & set(new))
              if old[k] != new[k]]
    if missing := sorted(set(old) - set(new)):
        lines.append(f"parameters the file's backbone had and this model lacks: {missing[:8]}"
                     + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if extra := sorted(set(new) - set(old)):
        lines.append(f"parameters of this model the file's backbone lacked: {extra[:8]}"
                     + (f" and {len(extra) - 8} more" if len(extra) > 8 else ""))
    return lines


def _atomic_save(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_adapters(model: nn.Module, path: str | os.PathLike, *, extra: dict | None = None,
                  write: bool = True) -> Path:
    """Write the adapter weights and options to ``path`` (safetensors), atomically.

    ``extra``: more JSON-serialisable metadata, each key stored as its own JSON string. Under FSDP2 every rank
    calls this (the weights are gathered) and only the rank with ``write=True`` writes.
    """
    state = patch_state(model)
    if state is None:
        raise RuntimeError("the model is not patched: nothing to save")
    path = Path(path)
    tensors = adapter_state_dict(model)
    if write:
        metadata = {"format": FORMAT, "method": state.method, "config": json.dumps(state.config.to_dict()),
                    "backbone": json.dumps(backbone_description(model))}
        reserved = set(metadata) & set(extra or {})
        if reserved:
            raise ValueError(f"extra metadata may not use the keys {sorted(reserved)}")
        metadata.update({k: json.dumps(v) for k, v in (extra or {}).items()})
        _atomic_save(tensors, path, metadata)
    return path


def config_from_v1(saved: dict) -> tuple[str, MethodConfig]:
    """(method, config) from a format-1 option dict: the options that apply to its method, renamed as now."""
    method = saved["method"]
    spec = get_method(method)
    renames = _V1_RENAMES.get(method, {})
    names = set(spec.config.option_names())
    options = {renames.get(k, k): v for k, v in saved.items() if renames.get(k, k) in names}
    return method, spec.config.from_options(**options)


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The metadata of an adapter file, JSON values decoded; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(f"{path}: not an msta_fast adapter file (metadata format {meta.get('format')!r})")
    out = {}
    for key, value in meta.items():
        if key in ("format", "method"):
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: metadata entry {key!r} is not valid JSON ({e})") from e
    return out


def read_adapters(path: str | os.PathLike) -> tuple[str, MethodConfig, dict[str, torch.Tensor]]:
    """(method, config, tensors) of an adapter file."""
    path = Path(path)
    meta = read_adapter_metadata(path)
    try:
        if meta["format"] == FORMAT_V1:
            method, config = config_from_v1(meta["config"])
        else:
            method = meta["method"]
            config = get_method(method).config.from_options(**meta["config"])
    except (KeyError, TypeError, OptionError) as e:
        raise ValueError(f"{path}: the adapter options in its metadata are not valid ({e})") from e
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: cannot read the adapter weights ({e})") from e
    return method, config, tensors


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters saved by :func:`save_adapters`. An unpatched model is patched with the saved method and
    options first; a patched one must have been patched with the same ones (the differences are listed)."""
    path = Path(path)
    method, saved, tensors = read_adapters(path)
    backbone = read_adapter_metadata(path).get("backbone")
    if backbone is not None and (differences := backbone_differences(backbone, model)):
        raise CheckpointMismatchError(str(path), [], [], [f"the adapters were saved on another backbone: {line}"
                                                          for line in differences])
    state = patch_state(model)
    if state is None:
        patch(model, method, config=saved)
    elif state.method != method or state.config != saved:
        ours, theirs = state.config.to_dict(), saved.to_dict()
        keys = sorted(set(ours) | set(theirs))
        diff = {k: (ours.get(k), theirs.get(k)) for k in keys if ours.get(k) != theirs.get(k)}
        if state.method != method:
            diff["method"] = (state.method, method)
        raise ValueError(f"{path}: saved with other patch options (model vs file): {diff}")
    params = adapter_parameters(model)
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(full_tensor(p).shape)}"
              for k, p in params.items() if k in tensors and tensors[k].shape != full_tensor(p).shape]
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


__all__ = ["FORMAT", "adapter_state_dict", "full_tensor", "load_adapters", "read_adapter_metadata", "read_adapters",
           "save_adapters"]

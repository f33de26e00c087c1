"""Training checkpoints, written atomically: a new folder per save, then an atomic switch of a pointer file.

Layout of a job's checkpoint folder ``<job>/checkpoints/``::

    LATEST                    name of the newest complete checkpoint (replaced with os.replace)
    step000123/adapters.safetensors   trainable parameters (msta_fast.save_adapters format)
    step000123/state.pt       optimizer (full, unsharded), scheduler, sampler, counters, best metric
    step000123/rng_rank{r}.pt torch / numpy / python / CUDA random states of rank r

A killed run leaves at worst an incomplete ``stepN`` folder that ``LATEST`` does not name. Everything loads
with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from msta_fast.adapters.io import FORMAT, adapter_state_dict
from msta_fast.adapters.patching import get_patch_state
from msta_fast.training.distributed import DistInfo, barrier

POINTER = "LATEST"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
            "cached": cached}


def _python_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_adapters(model: nn.Module, path: Path, info: DistInfo) -> None:
    """Adapter weights as ``msta_fast.save_adapters`` writes them (gathered from FSDP shards on every rank,
    written by rank 0, atomically)."""
    tensors = adapter_state_dict(model)  # a collective under FSDP: every rank calls it
    if not info.is_main:
        return
    config = get_patch_state(model).config
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict())}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """``id(parameter) -> name`` for the optimizer's parameters, recorded when first asked (right after the
    optimizer is built, while FSDP2's sharded parameters are the registered ones; later, a module's registered
    parameters can be gathered copies)."""
    if not hasattr(optimizer, "msta_fast_names"):
        optimizer.msta_fast_names = {id(p): n for n, p in model.named_parameters()}
    return optimizer.msta_fast_names


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name, with FSDP-sharded tensors gathered whole (a collective:
    every rank calls it) and moved to the CPU; plus the param groups' hyperparameters (lr included)."""
    names = optimizer_names(model, optimizer)
    state, groups = {}, []
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            state[names[id(p)]] = {k: _full(v).detach().cpu().clone() if isinstance(v, torch.Tensor) else v
                                   for k, v in sorted(optimizer.state.get(p, {}).items())}
    return {"state": state, "param_groups": groups}


def restore_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of :func:`gather_optimizer_state`, re-sharding tensors as their parameters are."""
    names = optimizer_names(model, optimizer)
    params = {names[id(p)]: p for group in optimizer.param_groups for p in group["params"]}
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise ValueError("the checkpoint's optimizer has another number of parameter groups")
    for group, stored in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        if [params[n] for n in stored["params"]] != group["params"]:
            raise ValueError("the checkpoint's optimizer holds other parameters than this run's")
        group.update({k: v for k, v in stored.items() if k != "params"})
    for name, entry in saved["state"].items():
        p = params[name]
        restored = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and hasattr(p, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            elif isinstance(value, torch.Tensor) and value.ndim > 0:
                value = value.to(p.device)
            restored[key] = value
        if restored:
            optimizer.state[p] = restored


def save_checkpoint(folder: Path, *, model: nn.Module, optimizer, scheduler, state: dict,
                    info: DistInfo) -> Path:
    """Save a complete checkpoint of step ``state["step"]`` and point ``LATEST`` at it; returns its folder.

    ``state`` holds the loop's counters and the sampler state (plain Python values and tensors).
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step{state['step']:09d}"
    if info.is_main:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
    barrier(info)
    optim_state = gather_optimizer_state(model, optimizer)  # a collective under FSDP
    write_adapters(model, target / "adapters.safetensors", info)
    torch.save(rng_state(), target / f"rng_rank{info.rank}.pt")
    if info.is_main:
        torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(), **state}, target / "state.pt")
    barrier(info)
    if info.is_main:
        previous = latest_checkpoint(folder)
        _atomic_text(folder / POINTER, target.name)
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)
    barrier(info)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / POINTER
    if not pointer.is_file():
        return None
    target = folder / pointer.read_text().strip()
    if not (target / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {target}, which is incomplete or missing")
    return target


def load_checkpoint(target: Path, *, model: nn.Module, optimizer, scheduler,
                    info: DistInfo) -> dict:
    """Restore adapters, optimizer, scheduler and this rank's RNG from ``target``; returns the loop state."""
    from msta_fast.adapters.io import load_adapters

    load_adapters(model, target / "adapters.safetensors")
    saved = torch.load(target / "state.pt", map_location="cpu", weights_only=True)
    restore_optimizer_state(model, optimizer, saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    rng_file = target / f"rng_rank{info.rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: resume with the same number of processes")
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    return saved

"""Training checkpoints, written atomically: a new folder per save, renamed into place when complete, then an
atomic switch of a pointer file; the previous checkpoint is deleted only after its successor is complete.

Layout of a job's checkpoint folder ``<job>/checkpoints/``::

    LATEST                    name of the newest complete checkpoint (replaced with os.replace)
    step000123/adapters.safetensors   trainable parameters (msta_fast.save_adapters format)
    step000123/state.pt       optimizer (full, unsharded, keyed by parameter name), scheduler, sampler, counters
    step000123/rng_rank{r}.pt torch / numpy / python / CUDA random states of rank r

A killed run leaves at worst a ``.partial`` folder that ``LATEST`` does not name. Everything loads with
``weights_only=True``; what resume reads is validated (an unreadable pointer or state names the file).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from msta_fast.adapter_io import full_tensor, load_adapters, save_adapters
from msta_fast.training.distributed import DistInfo, barrier
from msta_fast.training.files import atomic_write_text

POINTER = "LATEST"
PARTIAL = ".partial"


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


def _param_names(optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """``id(parameter) -> name`` from the optimizer's own parameter groups (``param_names``, see build_optimizer)."""
    names = {}
    for group in optimizer.param_groups:
        if "param_names" not in group:
            raise ValueError("the optimizer's parameter groups carry no param_names (build it with build_optimizer)")
        names.update({id(p): n for p, n in zip(group["params"], group["param_names"], strict=True)})
    return names


def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name, with FSDP-sharded tensors gathered whole (a collective:
    every rank calls it) and moved to the CPU; plus the param groups' hyperparameters (lr included)."""
    names = _param_names(optimizer)
    state, groups = {}, []
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k not in ("params", "param_names")},
                       "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            state[names[id(p)]] = {k: full_tensor(v).detach().cpu().clone() if isinstance(v, torch.Tensor) else v
                                   for k, v in sorted(optimizer.state.get(p, {}).items())}
    return {"state": state, "param_groups": groups}


def restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Inverse of :func:`gather_optimizer_state`, re-sharding tensors as their parameters are."""
    names = _param_names(optimizer)
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

    ``state`` holds the loop's counters and the sampler state (plain Python values and tensors). The folder is
    written as ``step<N>.partial`` and renamed when complete, to a name no other folder has (``step<N>-1`` if a
    killed run left a ``step<N>``), so that ``LATEST`` always names a complete checkpoint; the previous one is
    deleted last.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = f"step{state['step']:09d}"
    partial = folder / (base + PARTIAL)
    if info.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    barrier(info)
    optim_state = gather_optimizer_state(optimizer)  # a collective under FSDP
    save_adapters(model, partial / "adapters.safetensors", write=info.is_main)  # a collective under FSDP
    torch.save(rng_state(), partial / f"rng_rank{info.rank}.pt")
    if info.is_main:
        torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(), **state}, partial / "state.pt")
    barrier(info)
    if info.is_main:
        name, k = base, 0
        while (folder / name).exists():
            k += 1
            name = f"{base}-{k}"
        partial.rename(folder / name)
        atomic_write_text(folder / POINTER, name)
        for old in folder.iterdir():  # the previous checkpoint, and what killed runs left
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return latest_checkpoint(folder)


def latest_checkpoint(folder: Path, missing_ok: bool = False) -> Path | None:
    """The checkpoint ``LATEST`` names, or None when there is none yet. An incomplete one is an error (or, with
    ``missing_ok``, None: a save may replace it)."""
    pointer = folder / POINTER
    if not pointer.is_file():
        return None
    target = folder / pointer.read_text().strip()
    if not (target / "state.pt").is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{pointer} names {target}, which is incomplete or missing")
    return target


def load_checkpoint(target: Path, *, model: nn.Module, optimizer, scheduler, info: DistInfo) -> dict:
    """Restore adapters, optimizer, scheduler and this rank's RNG from ``target``; returns the loop state."""
    load_adapters(model, target / "adapters.safetensors")
    try:
        saved = torch.load(target / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a damaged file
        raise ValueError(f"{target / 'state.pt'} is unreadable ({type(e).__name__}: {e})") from e
    restore_optimizer_state(optimizer, saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    rng_file = target / f"rng_rank{info.rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: resume with the same number of processes")
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    return saved

"""Distributed setup under ``torchrun`` (one node or many): process group, device, FSDP2 or DDP wrapping of the
:class:`~msta_fast.training.step.TrainStep`, and the small collectives the recipes need. Without ``torchrun``
everything degrades to a single process.

FSDP2 (``fully_shard``) shards every transformer block of both towers, then the root (the step, whose forward
computes the loss; its evaluation methods are registered as forwards too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from msta_fast.methods.base import EXTRA_FORWARD_METHODS
from msta_fast.training.step import FORWARD_METHODS, TrainStep


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Initialise from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL on GPUs, gloo on
    the CPU. Without those variables: one process, on the GPU if there is one."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return DistInfo(rank, world, local, device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_max(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of both towers (the FSDP units)."""
    blocks = []
    for name, module in model.named_modules():
        if name.endswith("transformer.resblocks") and isinstance(module, nn.ModuleList):
            blocks.extend(module)
    return blocks


def wrap(step: TrainStep, info: DistInfo, strategy: str = "fsdp") -> nn.Module:
    """The step placed on the device and, under torchrun, sharded (FSDP2) or replicated (DDP)."""
    wrapper = step.to(info.device)
    if not info.enabled:
        return wrapper
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(wrapper, device_ids=ids)
    if strategy != "fsdp":
        raise ValueError(f"unknown distributed strategy {strategy!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in transformer_blocks(step.model):
        fully_shard(block, mesh=mesh)
        for name in getattr(block, EXTRA_FORWARD_METHODS, ()):
            register_fsdp_forward_method(block, name)
    # FSDP2 cannot shard 0-d parameters (ViCLIP's temperature): they stay whole on every rank.
    scalars = {p for p in wrapper.parameters() if p.ndim == 0}
    fully_shard(wrapper, mesh=mesh, ignored_params=scalars or None)
    for name in FORWARD_METHODS:
        register_fsdp_forward_method(wrapper, name)
    return wrapper


def reshard(wrapper: nn.Module) -> None:
    """Put FSDP2-sharded parameters back in their sharded state. FSDP2 keeps the root's parameters gathered
    after a forward without backward (evaluation); until resharded, ``named_parameters()`` returns the gathered
    copies, which neither the optimizer nor a checkpoint load must see."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return
    for module in wrapper.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def unwrap(wrapper: nn.Module) -> TrainStep:
    """The TrainStep inside a DDP wrapper (FSDP2 wraps in place)."""
    return wrapper.module if isinstance(wrapper, nn.parallel.DistributedDataParallel) else wrapper

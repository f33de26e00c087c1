"""Distributed setup under ``torchrun`` (one node or many): process group, device, FSDP2 or DDP wrapping, and
the collectives the recipes need. Without ``torchrun`` everything degrades to a single process.

FSDP2 (``fully_shard``) shards every transformer block of both towers, then the root. The recipes call the
model through :class:`DualEncoder`, one root ``forward`` per step that also computes the training loss, so
that FSDP's hooks gather the parameters before the towers, the adapters, the temperature and any head that
runs after the towers (M2-CLIP's) are used, and DDP sees every parameter that gets a gradient.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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


def gather_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of each tensor concatenated in rank order (the tensors of one call share their row
    count; ranks may hold different counts), with the gradient flowing back to each rank's own rows. The
    tensors themselves without a process group of more than one rank.

    A batch-wide (contrastive) loss computed by every rank on the gathered batch, followed by the usual
    averaging of parameter gradients (DDP, FSDP), gives the gradient of one process on the whole batch:
    the gather's backward sums the ranks' copies of the gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    from torch.distributed.nn.functional import all_gather

    rows = tensors[0].shape[0]
    count = torch.tensor([rows], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    gathered = []
    for tensor in tensors:
        padding = tensor.new_zeros(max(counts) - rows, *tensor.shape[1:])
        parts = all_gather(torch.cat([tensor, padding]))
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]))
    return tuple(gathered)


def all_reduce_max(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DualEncoder(nn.Module):
    """One ``forward`` for both towers: ``(video (B, T, 3, H, W) | None, text ids (N, L) | None)`` ->
    ``(video embeddings (B, E) | None, text embeddings (N, E) | None)``.

    With ``labels`` (B,) it returns the training loss of the batch instead, ``objective(video embeddings,
    text embeddings, labels, item_seeds) -> (loss, parts)``, computed inside the forward (outside autocast,
    on the embeddings as the towers returned them)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.objective: Callable | None = None  # set per job by the recipe

    def forward(self, video: torch.Tensor | None = None, text: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, item_seeds: torch.Tensor | None = None):
        v = self.model.encode_video(video) if video is not None else None
        t = self.model.encode_text(text) if text is not None else None
        if labels is None:
            return v, t
        if self.objective is None:
            raise RuntimeError("DualEncoder got labels but has no objective (set dual_encoder(wrapper).objective)")
        with torch.autocast(labels.device.type, enabled=False):
            return self.objective(v, t, labels, item_seeds)


# A block may list here the names of methods other than ``forward`` that use its weights (M2-CLIP's decoder
# pass on the text tower's last block); under FSDP2 they gather the weights as a forward does.
EXTRA_FORWARD_METHODS = "msta_fast_forward_methods"


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks of both towers (the FSDP units)."""
    blocks = []
    for name, module in model.named_modules():
        if name.endswith("transformer.resblocks") and isinstance(module, nn.ModuleList):
            blocks.extend(module)
    return blocks


def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "fsdp") -> nn.Module:
    """``DualEncoder(model)`` placed on the device and, under torchrun, sharded (FSDP2) or replicated (DDP)."""
    wrapper = DualEncoder(model.to(info.device))
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
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
        for name in getattr(block, EXTRA_FORWARD_METHODS, ()):
            register_fsdp_forward_method(block, name)
    # FSDP2 cannot shard 0-d parameters (ViCLIP's temperature): they stay whole on every rank.
    scalars = {p for p in wrapper.parameters() if p.ndim == 0}
    fully_shard(wrapper, mesh=mesh, ignored_params=scalars or None)
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


def dual_encoder(wrapper: nn.Module) -> DualEncoder:
    """The DualEncoder inside a DDP wrapper (FSDP2 wraps in place)."""
    return wrapper.module if hasattr(wrapper, "module") and not isinstance(wrapper, DualEncoder) else wrapper


def unwrap(wrapper: nn.Module) -> nn.Module:
    """The ViCLIP model inside a (DDP-wrapped) DualEncoder."""
    return dual_encoder(wrapper).model

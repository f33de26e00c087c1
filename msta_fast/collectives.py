"""The one collective that losses and evaluation need: gathering a batch from every rank, with gradients.

Without a process group of more than one rank (one process, or no ``torchrun``) it returns its inputs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def gather_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of each tensor concatenated in rank order (the tensors of one call share their row
    count; ranks may hold different counts), with the gradient flowing back to each rank's own rows.

    A batch-wide (contrastive) loss computed by every rank on the gathered batch, followed by the usual
    averaging of parameter gradients (DDP, FSDP), gives the gradient of one process on the whole batch: the
    gather's backward sums the ranks' copies of the gradient."""
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

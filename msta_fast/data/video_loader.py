"""What the torch and DALI loaders share: the list, the sampler, the batch count and the per-epoch count of
unreadable videos.

Both yield the same batch dicts: ``video`` float ``(B, T, 3, S, S)`` normalised, and ``(B,)`` tensors ``label``,
``video_index``, ``view_index`` (for multi-view evaluation, see ``sampling.aggregate_views``), ``replaced``,
``failed_index`` and ``item_seed`` (see ``items.item_fields``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

from .items import ClipOptions, video_path
from .lists import Sample
from .sampling import EvalSampler, TrainSampler, rank_and_world

log = logging.getLogger(__name__)


class VideoLoader:
    """Batches of the items of a video list, in the order of ``sampler``, sharded over ranks.

    Training: ``sampler`` is a ``TrainSampler`` (shuffled per epoch, resumable with ``state_dict`` /
    ``load_state_dict``). Evaluation: an ``EvalSampler`` (every (video, view) exactly once over all ranks, each
    rank a contiguous block padded to equal length; gather per-item outputs in rank order and apply
    ``sampling.drop_padding`` or ``aggregate_views``). ``rank``/``world_size`` default to those of the initialised
    process group (torchrun), else 0 and 1.

    At the end of every pass it warns with the count of replaced items and the first paths, and keeps their
    dataset indices in ``last_epoch_failures``. Subclasses implement ``_batches``.
    """

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, options: ClipOptions, *,
                 batch_size: int, rank: int | None = None, world_size: int | None = None):
        if not samples:
            raise ValueError("a video loader needs a non-empty list of (path, label)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.samples, self.options, self.batch_size = samples, options, batch_size
        self.data_root = Path(data_root) if data_root is not None else None
        rank, world_size = rank_and_world(rank, world_size)
        if options.train:
            self.sampler = TrainSampler(len(samples), seed=options.seed, rank=rank, world_size=world_size)
        else:
            self.sampler = EvalSampler(len(samples) * options.num_views, rank=rank, world_size=world_size)
        self.last_epoch_failures: list[int] = []

    @property
    def num_views(self) -> int:
        """Items per video (evaluation views; 1 in training)."""
        return self.options.num_views

    def path(self, index: int) -> Path:
        return video_path(self.data_root, self.samples[index][0])

    def __len__(self) -> int:
        """Batches left in this pass (the last one may be smaller)."""
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Training: the epoch whose order the next pass follows (evaluation has one order)."""
        if isinstance(self.sampler, TrainSampler):
            self.sampler.set_epoch(epoch)

    def _batches(self) -> Iterator[dict]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        failures: list[int] = []
        for batch in self._batches():
            failures.extend(batch["failed_index"][batch["replaced"]].tolist())
            yield batch
        self.last_epoch_failures = failures
        if failures:
            paths = ", ".join(str(self.path(i)) for i in sorted(set(failures))[:5])
            # a summary: every failure was logged as a warning where it happened (a worker, maybe); the recipes
            # count, list and bound them per epoch (msta_fast.training.unreadable)
            log.info("%d items were unreadable this pass and replaced (first: %s)", len(failures), paths)

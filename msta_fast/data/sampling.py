"""Which frames, which views, which videos on which rank.

- Frames (``frame_indices``): "segments" (the paper's): the video is split into T equal segments; training takes
  a random frame from each, testing the middle one (clip ``c`` of ``C`` shifts the pick to ``(c + 0.5) / C`` of the
  segment). A video shorter than T frames repeats frames. "stride" (M2-CLIP's K-400 recipe): T frames ``stride``
  apart from a random start in training, from starts spread evenly over the video in testing.
- Views: multi-view testing scores C temporal clips x ``num_crops`` spatial crops of every video; the view index
  is ``clip * num_crops + crop``.
- Ranks: ``TrainSampler`` shuffles deterministically per (seed, epoch), shards across ranks and can resume
  mid-epoch; ``EvalSampler`` gives each rank a contiguous block, padded at the end, so that gathering the ranks'
  outputs in rank order and keeping the first ``len(dataset)`` rows (``drop_padding``) is exact: every
  (video, view) exactly once, none dropped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Frame indices of one clip -> int64 ``(num_segments,)``, each in ``[0, num_frames)``, non-decreasing.

    Training: a uniformly random frame inside each of the T equal segments (``rng`` required). Testing: the frame
    at fraction ``(clip + 0.5) / num_clips`` of each segment (the middle one for a single clip).
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip {clip} out of range for num_clips={num_clips}")
    segment = num_frames / num_segments
    starts = np.arange(num_segments) * segment
    if train:
        if rng is None:
            raise ValueError("training sampling needs rng=np.random.Generator")
        offsets = rng.random(num_segments) * segment
    else:
        offsets = np.full(num_segments, segment * (clip + 0.5) / num_clips)
    # floor keeps the pick inside its segment; with fewer frames than segments frames repeat.
    return np.minimum(np.floor(starts + offsets).astype(np.int64), num_frames - 1)


def stride_indices(
    num_frames: int,
    num_samples: int,
    stride: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Frame indices of one clip of ``num_samples`` frames ``stride`` apart -> int64 ``(num_samples,)``.

    The clip spans ``(num_samples - 1) * stride + 1`` frames. Training: it starts at a uniformly random frame; in a
    video too short for it, the indices that fall past the end repeat the last one inside. Testing: clip ``c`` of
    ``C`` starts at ``round(c * slack / (C - 1))`` (``slack // 2`` for one clip), ``slack`` being the frames the
    video has beyond the span (0 if none); indices past the end take the last frame.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip {clip} out of range for num_clips={num_clips}")
    offsets = np.arange(num_samples, dtype=np.int64) * stride
    span = int(offsets[-1]) + 1
    if train:
        if rng is None:
            raise ValueError("training sampling needs rng=np.random.Generator")
        if span >= num_frames:
            inside = offsets[offsets < num_frames]
            return np.concatenate([inside, np.full(num_samples - len(inside), inside[-1])])
        return int(rng.integers(num_frames - span + 1)) + offsets
    slack = max(num_frames - span, 0)
    start = slack // 2 if num_clips == 1 else round(slack * clip / (num_clips - 1))
    return np.minimum(start + offsets, num_frames - 1)


SAMPLINGS = ("segments", "stride")


def frame_indices(num_frames: int, num_samples: int, *, train: bool, sampling: str = "segments", stride: int = 16,
                  rng: np.random.Generator | None = None, clip: int = 0, num_clips: int = 1) -> np.ndarray:
    """The frames of one clip by ``sampling``: :func:`segment_indices` or :func:`stride_indices` (``stride``)."""
    if sampling == "segments":
        return segment_indices(num_frames, num_samples, train=train, rng=rng, clip=clip, num_clips=num_clips)
    if sampling == "stride":
        return stride_indices(num_frames, num_samples, stride, train=train, rng=rng, clip=clip, num_clips=num_clips)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else those of the initialised ``torch.distributed`` group (torchrun), else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return (dist.get_rank() if rank is None else rank), (dist.get_world_size() if world_size is None
                                                                 else world_size)
        return (0 if rank is None else rank), (1 if world_size is None else world_size)
    return rank, world_size


def split_view(view: int, num_crops: int) -> tuple[int, int]:
    """View index -> (temporal clip, spatial crop)."""
    return divmod(view, num_crops)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the random choices of one training item, independent of which worker decodes it."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


class TrainSampler(Sampler):
    """Shuffled, rank-sharded, resumable training order. Yields ``(dataset index, item seed)`` pairs.

    Every epoch is a permutation drawn from ``(seed, epoch)``; it is padded by wrapping around so that every rank
    gets ``ceil(N / world_size)`` items (as ``DistributedSampler``). The item seed makes
    frame choice and augmentation depend only on (seed, epoch, index), not on the worker.

    Resume: ``state_dict(consumed)`` records the epoch and how many items this rank's loop has consumed;
    ``load_state_dict`` makes the next iteration start right after them.
    """

    def __init__(self, num_items: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError("TrainSampler needs at least one item")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.num_items, self.seed, self.rank, self.world_size = num_items, seed, rank, world_size
        self.epoch = 0
        self._start = 0  # items of this epoch already consumed before a resume
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def _per_rank(self) -> int:
        return math.ceil(self.num_items / self.world_size)

    def __len__(self) -> int:
        return self._per_rank() - self._start

    def epoch_order(self) -> list[int]:
        """This rank's dataset indices for the current epoch (all of them, resume ignored)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=g).tolist()
        total = self._per_rank() * self.world_size
        order = (order * math.ceil(total / self.num_items))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self):
        order = self.epoch_order()
        start, self._start = self._start, 0  # a resume applies to one pass only
        self._yielded = start
        for index in order[start:]:
            self._yielded += 1
            yield index, item_seed(self.seed, self.epoch, index)

    def state_dict(self, consumed: int | None = None) -> dict:
        """Resume point. ``consumed``: items of this epoch the training loop has used on this rank (pass it when
        the DataLoader prefetches; default: items the sampler has handed out)."""
        consumed = self._yielded if consumed is None else consumed
        return {"epoch": self.epoch, "consumed": int(consumed), "seed": self.seed, "num_items": self.num_items,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_items", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self._start = int(state["consumed"])
        if self._start >= self._per_rank():  # the epoch was finished: go on with the next one
            self.epoch, self._start = self.epoch + 1, 0


class EvalSampler(Sampler):
    """Rank ``r`` of ``W`` gets the contiguous block ``[r * S, (r + 1) * S)`` with ``S = ceil(N / W)``.

    Positions past the end repeat the last item (padding), so every rank runs the same number of batches (needed
    by collective ops). Only the tail of the last ranks is padding, so concatenating the ranks' outputs in rank
    order and keeping the first N rows restores the dataset order exactly (``drop_padding``).
    """

    def __init__(self, num_items: int, *, rank: int = 0, world_size: int = 1):
        if num_items < 1:
            raise ValueError("EvalSampler needs at least one item")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.per_rank = math.ceil(num_items / world_size)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        begin = self.rank * self.per_rank
        for position in range(begin, begin + self.per_rank):
            yield min(position, self.num_items - 1)


def drop_padding(gathered: torch.Tensor, num_items: int) -> torch.Tensor:
    """Rows of ``all_gather``-ed eval outputs ``(W * S, ...)``, in rank order -> ``(num_items, ...)`` in dataset
    order, padding removed."""
    if gathered.shape[0] < num_items:
        raise ValueError(f"gathered {gathered.shape[0]} rows, fewer than the {num_items} items: a rank is missing")
    return gathered[:num_items]


def aggregate_views(
    scores: torch.Tensor, video_index: torch.Tensor, view_index: torch.Tensor, num_videos: int, num_views: int
) -> torch.Tensor:
    """Average per-view scores into per-video scores.

    Args:
        scores: ``(M, K)`` scores (softmax probabilities or logits) of M evaluated items, possibly with padding
            duplicates of (video, view) pairs, which are counted once.
        video_index, view_index: ``(M,)`` int tensors.
    Returns:
        ``(num_videos, K)`` mean over the ``num_views`` views. Raises if a (video, view) pair is missing.
    """
    key = video_index.long() * num_views + view_index.long()
    if key.numel() and (key.min() < 0 or key.max() >= num_videos * num_views):
        raise ValueError("video or view index out of range")
    first = torch.full((num_videos * num_views,), -1, dtype=torch.long)
    # scatter the row numbers in reverse so that the first occurrence of each key wins
    rows = torch.arange(key.numel())
    first.scatter_(0, key.flip(0), rows.flip(0))
    missing = (first < 0).nonzero().flatten()
    if missing.numel():
        video, view = divmod(int(missing[0]), num_views)
        raise ValueError(f"{missing.numel()} (video, view) pairs were not evaluated, first video {video} view {view}")
    return scores[first].view(num_videos, num_views, -1).float().mean(dim=1)

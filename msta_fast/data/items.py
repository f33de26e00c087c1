"""What one item of a video list is, for both loaders (torch workers and DALI), and what happens when its video
cannot be read.

An item is a training clip (one per video) or an evaluation view (``num_clips x num_crops`` per video, item ``i``
= video ``i // num_views``, view ``i % num_views``). ``ClipOptions`` describes the clips.

Unreadable videos (missing, empty, truncated, not a video, too slow to decode) are skipped with a logged warning
naming the file, every time (a ``warnings.warn`` would be shown once per process), and replaced so that batches keep
their shape (``strict=True`` raises instead):

- training (``read_or_replace``): by another video of the list drawn from the item's own generator (its own
  label), up to ``MAX_RETRIES`` times in a row;
- evaluation (``read_or_skip``): by a black clip (``black_clip``) with the original label and indices, so that
  every (video, view) still appears exactly once.

Either way the item's ``replaced`` is true and ``failed_index`` names the listed video that could not be read
(-1 otherwise; ``item_fields``): what the run counts, lists and bounds (``msta_fast.training.unreadable``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch

from msta_fast.constants import IMAGENET_MEAN, IMAGENET_STD

from .decode import VideoDecodeError
from .lists import Sample
from .sampling import SAMPLINGS, frame_indices
from .transforms import normalize

log = logging.getLogger(__name__)

# Unreadable videos in a row before a training item gives up (the list is probably wrong, not one file).
MAX_RETRIES = 10

R = TypeVar("R")


@dataclass(frozen=True)
class ClipOptions:
    """The clips a loader makes of a list.

    Attributes:
        train: training clips (random frames, augmentation, one per video) or evaluation views.
        num_frames: T, frames per clip (one per equal segment of the video).
        size: S, side of the square output frames.
        num_clips, num_crops: evaluation views per video (temporal clips x 1 or 3 spatial crops); forced to 1 in
            training.
        seed: training order and per-item seeds (see ``sampling.TrainSampler``).
        augment: the paper's training augmentation; off = the evaluation centre crop.
        flip_prob: horizontal flip probability (0 where a flip changes the class: SSv2, directions).
        mean, std: per-channel normalisation (``CLIP_MEAN``/``CLIP_STD`` for OpenAI CLIP weights).
        strict: raise ``VideoDecodeError`` on an unreadable video instead of replacing it.
        sampling, frame_stride: which frames (``sampling.frame_indices``): "segments" (T equal segments, the
            paper's) or "stride" (T frames ``frame_stride`` apart, M2-CLIP's K-400 recipe).
    """

    train: bool = True
    num_frames: int = 8
    size: int = 224
    num_clips: int = 1
    num_crops: int = 1
    seed: int = 0
    augment: bool = True
    flip_prob: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    strict: bool = False
    sampling: str = "segments"
    frame_stride: int = 16

    def __post_init__(self):
        if self.train:  # frozen: the dataclass's own way to normalise fields
            object.__setattr__(self, "num_clips", 1)
            object.__setattr__(self, "num_crops", 1)
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        if self.num_frames < 1 or self.size < 1 or self.num_clips < 1:
            raise ValueError(f"num_frames, size and num_clips must be positive, got {self.num_frames}, {self.size}, "
                             f"{self.num_clips}")
        if self.num_crops not in (1, 3, 4):
            raise ValueError(f"num_crops must be 1, 3 or 4, got {self.num_crops}")
        if self.sampling not in SAMPLINGS or self.frame_stride < 1:
            raise ValueError(f"sampling must be one of {SAMPLINGS} and frame_stride >= 1, got {self.sampling!r}, "
                             f"{self.frame_stride}")

    def frames(self, num_frames: int, **where) -> np.ndarray:
        """The frame indices of one clip of a video of ``num_frames`` frames (``where``: ``rng=`` in training,
        ``clip=`` in evaluation)."""
        return frame_indices(num_frames, self.num_frames, train=self.train, sampling=self.sampling,
                             stride=self.frame_stride, num_clips=self.num_clips, **where)

    @property
    def num_views(self) -> int:
        """Items per video: ``num_clips * num_crops`` (1 in training)."""
        return self.num_clips * self.num_crops


def video_path(data_root: str | os.PathLike | None, relative: str) -> Path:
    """Path of a list entry: under ``data_root``, or as listed when there is none."""
    return Path(data_root) / relative if data_root is not None else Path(relative)


@dataclass(frozen=True)
class Read(Generic[R]):
    """The outcome of reading one item's video."""

    video_index: int  # the video that was read (in training possibly a replacement)
    value: R | None  # what the read function returned; None: an evaluation video that could not be read
    failed_index: int  # the listed video that could not be read, -1 if none

    @property
    def replaced(self) -> bool:
        return self.failed_index >= 0


def read_or_replace(read: Callable[[int], R], index: int, rng: np.random.Generator, num_videos: int, *,
                    strict: bool) -> Read[R]:
    """Training: ``read(index)``, and while it raises ``VideoDecodeError`` ``read(j)`` of a video ``j`` drawn
    uniformly from the list with ``rng`` (the item's generator, so that the replacement depends on the item's seed
    only). Raises after ``MAX_RETRIES`` replacements fail too, or at once when ``strict``."""
    tried, failed, failures = index, -1, 0
    while True:
        try:
            return Read(tried, read(tried), failed)
        except VideoDecodeError as e:
            if strict:
                raise
            log.warning("skipping unreadable video (%s); replaced by another one", e)
            failures += 1
            if failures > MAX_RETRIES:
                raise VideoDecodeError(e.path, f"{failures} videos in a row were unreadable") from e
            tried, failed = int(rng.integers(num_videos)), index


def read_or_skip(read: Callable[[int], R], index: int, *, strict: bool) -> Read[R]:
    """Evaluation: ``read(index)``; a ``VideoDecodeError`` gives ``value=None`` (score the item on
    ``black_clip``), or is raised when ``strict``."""
    try:
        return Read(index, read(index), -1)
    except VideoDecodeError as e:
        if strict:
            raise
        log.warning("skipping unreadable video (%s); scored on a black clip", e)
        return Read(index, None, index)


def black_clip(options: ClipOptions, device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised black clip ``(T, 3, S, S)`` that stands in for an unreadable evaluation video."""
    zeros = torch.zeros(options.num_frames, 3, options.size, options.size, device=device)
    return normalize(zeros, options.mean, options.std)


def item_fields(samples: list[Sample], read: Read, view: int, seed: int) -> dict:
    """An item's entries of a batch dict besides ``video``: ``label`` (of the video read), ``video_index``,
    ``view_index``, ``replaced``, ``failed_index`` and ``item_seed`` (what a training item's random choices
    came from; -1 in evaluation)."""
    return {"label": samples[read.video_index][1], "video_index": read.video_index, "view_index": view,
            "replaced": read.replaced, "failed_index": read.failed_index, "item_seed": seed}

"""PyTorch video datasets and loaders (decord, PyAV or DALI-on-CPU decoding in DataLoader workers).

Batches are dicts: ``video`` float ``(B, T, 3, S, S)`` ImageNet-normalised, ``label`` ``(B,)``, ``video_index``
and ``view_index`` ``(B,)`` (for multi-view evaluation, see ``sampling.aggregate_views``), and ``replaced``
``(B,)`` bool, true where the item's video could not be decoded (``failed_index`` names it, else -1).

Unreadable videos (missing, empty, truncated, not a video) are skipped with a warning and replaced so that
batches keep their shape: in training by another random video of the list (its own label), in evaluation by a
black clip with the original label and indices (``replaced`` true), so that every (video, view) still appears
exactly once. ``VideoLoader`` counts them and reports them at the end of the epoch; ``strict=True`` raises
instead.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .decode import VideoDecodeError, open_video
from .lists import Sample
from .sampling import EvalSampler, TrainSampler, item_seed, rank_and_world, segment_indices, split_view
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize, train_transform


class VideoDataset(Dataset):
    """Clips of the videos of a list.

    Training (``train=True``): one item per video; keys are dataset indices or ``(index, item seed)`` pairs as
    ``TrainSampler`` yields them (the seed fixes frame choice and augmentation). Evaluation: one item per
    (video, view), ``len = videos x num_clips x num_crops``, item ``i`` = video ``i // views``, view ``i % views``.
    """

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, *, num_frames: int = 8,
                 size: int = 224, train: bool = True, num_clips: int = 1, num_crops: int = 1,
                 backend: str = "decord", strict: bool = False, seed: int = 0, augment: bool = True,
                 max_retries: int = 10, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip_prob: float = 0.5):
        if not samples:
            raise ValueError("VideoDataset needs a non-empty list of (path, label)")
        self.samples = samples
        self.data_root = Path(data_root) if data_root is not None else None
        self.num_frames, self.size, self.train = num_frames, size, train
        self.num_clips, self.num_crops = (1, 1) if train else (num_clips, num_crops)
        self.backend, self.strict, self.seed, self.augment = backend, strict, seed, augment
        self.max_retries, self.mean, self.std = max_retries, tuple(mean), tuple(std)
        self.flip_prob = flip_prob  # 0 where a flip changes the class (SSv2's "left to right", directions)
        self._last_clip: tuple[tuple[int, int], torch.Tensor] | None = None  # see _eval_frames

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    @property
    def num_videos(self) -> int:
        return len(self.samples)

    def __len__(self) -> int:
        return self.num_videos * self.num_views

    def path(self, index: int) -> Path:
        relative = self.samples[index][0]
        return self.data_root / relative if self.data_root is not None else Path(relative)

    def __getitem__(self, key) -> dict:
        if self.train:
            index, seed = key if isinstance(key, tuple) else (key, item_seed(self.seed, 0, key))
            return self._train_item(int(index), int(seed))
        return self._eval_item(int(key))

    def _train_item(self, index: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        tried, replaced = index, False
        for attempt in range(self.max_retries + 1):
            try:
                with open_video(self.path(tried), self.backend) as video:
                    frames = video.read(segment_indices(video.num_frames, self.num_frames, train=True, rng=rng))
                break
            except VideoDecodeError as e:
                if self.strict:
                    raise
                warnings.warn(f"skipping unreadable video ({e}); replaced by another one", stacklevel=2)
                if attempt == self.max_retries:
                    raise VideoDecodeError(e.path, f"{self.max_retries + 1} videos in a row were unreadable") from e
                tried, replaced = int(rng.integers(len(self.samples))), True
        if self.augment:
            clip = train_transform(frames, self.size, rng, self.mean, self.std, p_flip=self.flip_prob)
        else:
            clip = eval_transform(frames, self.size, mean=self.mean, std=self.std)
        # item_seed: what the item's random choices came from; loss terms with their own randomness (M2-CLIP's
        # masks) seed from it too, so that they do not depend on the batch or the number of processes.
        return {"video": clip, "label": self.samples[tried][1], "video_index": tried, "view_index": 0,
                "replaced": replaced, "failed_index": index if replaced else -1, "item_seed": seed}

    def _eval_item(self, item: int) -> dict:
        index, view = divmod(item, self.num_views)
        clip_id, crop = split_view(view, self.num_crops)
        try:
            clip = eval_transform(self._eval_frames(index, clip_id), self.size, crop, self.num_crops, self.mean,
                                  self.std)
            replaced = False
        except VideoDecodeError as e:
            if self.strict:
                raise
            warnings.warn(f"skipping unreadable video ({e}); scored on a black clip", stacklevel=2)
            clip = normalize(torch.zeros(self.num_frames, 3, self.size, self.size), self.mean, self.std)
            replaced = True
        return {"video": clip, "label": self.samples[index][1], "video_index": index, "view_index": view,
                "replaced": replaced, "failed_index": index if replaced else -1}


    def _eval_frames(self, index: int, clip_id: int) -> torch.Tensor:
        """Decoded frames of one temporal clip. The spatial crops of a clip are consecutive items, which a worker
        gets in one batch, so one cached clip saves decoding each video ``num_crops`` times."""
        key = (index, clip_id)
        if self._last_clip is not None and self._last_clip[0] == key:
            return self._last_clip[1]
        with open_video(self.path(index), self.backend) as video:
            idx = segment_indices(video.num_frames, self.num_frames, train=False, clip=clip_id,
                                  num_clips=self.num_clips)
            frames = video.read(idx)
        self._last_clip = (key, frames)
        return frames


class VideoLoader:
    """A ``DataLoader`` over a ``VideoDataset`` that counts replaced (unreadable) videos per epoch.

    At the end of every pass it warns with the count and the first paths, and keeps them in
    ``last_epoch_failures`` (a list of dataset indices).
    """

    def __init__(self, dataset: VideoDataset, sampler, *, batch_size: int, num_workers: int = 0,
                 drop_last: bool = False, pin_memory: bool = False):
        self.dataset, self.sampler = dataset, sampler
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 drop_last=drop_last, pin_memory=pin_memory,
                                 persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)
        self.last_epoch_failures: list[int] = []

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        failures: list[int] = []
        for batch in self.loader:
            if batch["replaced"].any():
                failures.extend(batch["failed_index"][batch["replaced"]].tolist())
            yield batch
        self.last_epoch_failures = failures
        if failures:
            paths = ", ".join(str(self.dataset.path(i)) for i in sorted(set(failures))[:5])
            warnings.warn(f"{len(failures)} items were unreadable this epoch and replaced (first: {paths})",
                          stacklevel=2)


def build_train_loader(samples: list[Sample], data_root, *, batch_size: int, num_frames: int = 8,
                       size: int = 224, num_workers: int = 0, seed: int = 0, rank: int | None = None,
                       world_size: int | None = None,
                       backend: str = "decord", strict: bool = False, drop_last: bool = False,
                       pin_memory: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       flip_prob: float = 0.5) -> VideoLoader:
    """Shuffled, augmented, rank-sharded training loader (resumable through ``loader.sampler.state_dict``).

    ``rank``/``world_size`` default to those of the initialised process group (torchrun), else 0 and 1.
    """
    rank, world_size = rank_and_world(rank, world_size)
    dataset = VideoDataset(samples, data_root, num_frames=num_frames, size=size, train=True, backend=backend,
                           strict=strict, seed=seed, mean=mean, std=std, flip_prob=flip_prob)
    sampler = TrainSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
    return VideoLoader(dataset, sampler, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                       pin_memory=pin_memory)


def build_eval_loader(samples: list[Sample], data_root, *, batch_size: int, num_frames: int = 8, size: int = 224,
                      num_clips: int = 1, num_crops: int = 1, num_workers: int = 0, rank: int | None = None,
                      world_size: int | None = None, backend: str = "decord", strict: bool = False,
                      pin_memory: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> VideoLoader:
    """Multi-view evaluation loader: every (video, view) exactly once over all ranks, no batch dropped.

    Each rank sees a contiguous block padded to equal length; gather per-item outputs in rank order and apply
    ``sampling.drop_padding`` (or ``aggregate_views``, which ignores duplicates) to recover the dataset order.
    ``rank``/``world_size`` default to those of the initialised process group (torchrun), else 0 and 1.
    """
    rank, world_size = rank_and_world(rank, world_size)
    dataset = VideoDataset(samples, data_root, num_frames=num_frames, size=size, train=False, num_clips=num_clips,
                           num_crops=num_crops, backend=backend, strict=strict, mean=mean, std=std)
    sampler = EvalSampler(len(dataset), rank=rank, world_size=world_size)
    return VideoLoader(dataset, sampler, batch_size=batch_size, num_workers=num_workers, drop_last=False,
                       pin_memory=pin_memory)

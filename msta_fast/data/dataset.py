"""The PyTorch video dataset and its loader (decord, PyAV or DALI-on-CPU decoding in DataLoader workers).

Items are the dicts of ``video_loader``'s batches, with ``video`` float ``(T, 3, S, S)``; unreadable videos are
replaced as ``items`` says.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .decode import open_video
from .items import ClipOptions, black_clip, item_fields, read_or_replace, read_or_skip, video_path
from .lists import Sample
from .sampling import item_seed, segment_indices, split_view
from .transforms import eval_transform, train_transform
from .video_loader import VideoLoader


class VideoDataset(Dataset):
    """Clips of the videos of a list, decoded with ``backend`` (``"decord"``, ``"pyav"``, ``"dali"``).

    Training: one item per video; keys are dataset indices or ``(index, item seed)`` pairs as ``TrainSampler``
    yields them (the seed fixes frame choice, augmentation and replacement). Evaluation: one item per
    (video, view), ``len = videos x views``. ``device`` is where ``backend="dali"`` decodes and where the clips
    are made.
    """

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, options: ClipOptions, *,
                 backend: str = "decord", device: str = "cpu"):
        if not samples:
            raise ValueError("VideoDataset needs a non-empty list of (path, label)")
        self.samples, self.data_root, self.options = samples, data_root, options
        self.backend, self.device = backend, device
        self._last_clip: tuple[tuple[int, int], torch.Tensor] | None = None  # see _eval_frames

    @property
    def num_views(self) -> int:
        return self.options.num_views

    def __len__(self) -> int:
        return len(self.samples) * self.num_views

    def __getitem__(self, key) -> dict:
        if self.options.train:
            index, seed = key if isinstance(key, tuple) else (key, item_seed(self.options.seed, 0, key))
            return self._train_item(int(index), int(seed))
        return self._eval_item(int(key))

    def _open(self, index: int):
        return open_video(video_path(self.data_root, self.samples[index][0]), self.backend, self.device)

    def _train_item(self, index: int, seed: int) -> dict:
        o = self.options
        rng = np.random.default_rng(seed)

        def read(i: int) -> torch.Tensor:
            with self._open(i) as video:
                return video.read(segment_indices(video.num_frames, o.num_frames, train=True, rng=rng))

        result = read_or_replace(read, index, rng, len(self.samples), strict=o.strict)
        if o.augment:
            clip = train_transform(result.value, o.size, rng, o.mean, o.std, p_flip=o.flip_prob)
        else:
            clip = eval_transform(result.value, o.size, mean=o.mean, std=o.std)
        return {"video": clip, **item_fields(self.samples, result, 0, seed)}

    def _eval_item(self, item: int) -> dict:
        o = self.options
        index, view = divmod(item, self.num_views)
        clip_id, crop = split_view(view, o.num_crops)
        result = read_or_skip(lambda i: self._eval_frames(i, clip_id), index, strict=o.strict)
        if result.value is None:
            clip = black_clip(o, self.device)
        else:
            clip = eval_transform(result.value, o.size, crop, o.num_crops, o.mean, o.std)
        return {"video": clip, **item_fields(self.samples, result, view, -1)}

    def _eval_frames(self, index: int, clip_id: int) -> torch.Tensor:
        """Decoded frames of one temporal clip. The spatial crops of a clip are consecutive items, which a worker
        gets in one batch, so one cached clip saves decoding each video ``num_crops`` times."""
        key = (index, clip_id)
        if self._last_clip is not None and self._last_clip[0] == key:
            return self._last_clip[1]
        with self._open(index) as video:
            idx = segment_indices(video.num_frames, self.options.num_frames, train=False, clip=clip_id,
                                  num_clips=self.options.num_clips)
            frames = video.read(idx)
        self._last_clip = (key, frames)
        return frames


class TorchVideoLoader(VideoLoader):
    """A ``DataLoader`` over a ``VideoDataset`` (``dataset``) with ``num_workers`` worker processes."""

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, options: ClipOptions, *,
                 batch_size: int, backend: str = "decord", num_workers: int = 0, pin_memory: bool = False,
                 rank: int | None = None, world_size: int | None = None):
        super().__init__(samples, data_root, options, batch_size=batch_size, rank=rank, world_size=world_size)
        self.dataset = VideoDataset(samples, data_root, options, backend=backend)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                 prefetch_factor=4 if num_workers else None)

    def _batches(self):
        return iter(self.loader)

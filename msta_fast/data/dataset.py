"""The PyTorch video dataset and its loader (decord, PyAV, torchcodec or DALI-on-CPU decoding in DataLoader
workers; torchcodec on NVDEC in the loading process).

Items are the dicts of ``video_loader``'s batches, with ``video`` float ``(T, 3, S, S)``; unreadable videos (and,
with ``decode_timeout``, videos whose decoding takes longer than that) are replaced as ``items`` says.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .decode import check_backend, open_video
from .items import ClipOptions, black_clip, item_fields, read_or_replace, read_or_skip, video_path
from .lists import Sample
from .sampling import item_seed, split_view
from .transforms import eval_transform, train_transform
from .video_loader import VideoLoader


class VideoDataset(Dataset):
    """Clips of the videos of a list, decoded with ``backend`` (``"decord"``, ``"pyav"``, ``"torchcodec"``,
    ``"dali"``).

    Training: one item per video; keys are dataset indices or ``(index, item seed)`` pairs as ``TrainSampler``
    yields them (the seed fixes frame choice, augmentation and replacement). Evaluation: one item per
    (video, view), ``len = videos x views``. ``device`` is where ``backend="torchcodec"`` or ``"dali"`` decodes
    and where the clips are made. ``decode_timeout``: seconds one video may take to decode on the CPU (None: no
    limit; see ``decode.open_video``); a video that takes longer is unreadable.
    """

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, options: ClipOptions, *,
                 backend: str = "decord", device: str = "cpu", decode_timeout: float | None = None):
        if not samples:
            raise ValueError("VideoDataset needs a non-empty list of (path, label)")
        check_backend(backend, device)  # a missing library fails here, not as every video of the epoch
        self.samples, self.data_root, self.options = samples, data_root, options
        self.backend, self.device, self.decode_timeout = backend, device, decode_timeout
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
        return open_video(video_path(self.data_root, self.samples[index][0]), self.backend, self.device,
                          timeout=self.decode_timeout)

    def _train_item(self, index: int, seed: int) -> dict:
        o = self.options
        rng = np.random.default_rng(seed)

        def read(i: int) -> torch.Tensor:
            with self._open(i) as video:
                return video.read(o.frames(video.num_frames, rng=rng))

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
            idx = self.options.frames(video.num_frames, clip=clip_id)
            frames = video.read(idx)
        self._last_clip = (key, frames)
        return frames


class TorchVideoLoader(VideoLoader):
    """A ``DataLoader`` over a ``VideoDataset`` (``dataset``) with ``num_workers`` worker processes.

    Workers are persistent (started once, not every epoch) and keep 4 batches each in flight. ``backend=
    "torchcodec"`` with ``device="cuda"`` and no workers decodes on NVDEC in this process (CUDA does not survive a
    fork into workers), one batch ahead in a thread so that decoding overlaps the training step.
    """

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, options: ClipOptions, *,
                 batch_size: int, backend: str = "decord", num_workers: int = 0, pin_memory: bool = False,
                 device: str = "cpu", decode_timeout: float | None = None, rank: int | None = None,
                 world_size: int | None = None):
        super().__init__(samples, data_root, options, batch_size=batch_size, rank=rank, world_size=world_size)
        gpu = backend == "torchcodec" and str(device).startswith("cuda") and num_workers == 0
        self.decode_device = "cuda" if gpu else "cpu"
        self.dataset = VideoDataset(samples, data_root, options, backend=backend, device=self.decode_device,
                                    decode_timeout=decode_timeout)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory and not gpu, persistent_workers=num_workers > 0,
                                 prefetch_factor=4 if num_workers else None)

    def _batches(self):
        if self.decode_device == "cuda":
            return prefetched(iter(self.loader), depth=1)
        return iter(self.loader)


def prefetched(iterator: Iterator, depth: int = 1) -> Iterator:
    """``iterator``'s items, made ``depth`` items ahead in a thread (the order and any exception are kept)."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():  # a consumer that stops early must not leave the thread blocked here
            try:
                ahead.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            put(("error", e))

    threading.Thread(target=produce, name="msta-fast-prefetch", daemon=True).start()
    try:
        while True:
            kind, value = ahead.get()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        stop.set()

"""A DALI video loader with the semantics of ``dataset.VideoLoader``: same sampler, frames, crops and batches.

Python chooses what the CPU loader chooses (sampler order, segment frame indices and augmentation parameters
from the same per-item seeds) and feeds it to a DALI pipeline, which decodes (``fn.decoders.video``; ``"cpu"``
for VP8/VP9/MJPEG, ``"mixed"`` = NVDEC on the GPU for H.264/HEVC/AV1/MPEG-4), crops, resizes and flips
(``fn.resize``, ``fn.crop_mirror_normalize``). Colour jitter, grayscale and normalisation then run as torch ops on
the output device, with the same code as the CPU loader. Batches are the same dicts as ``VideoLoader``'s, with
``video`` a ``(B, T, 3, S, S)`` float tensor on the device.

Unreadable videos: a video that cannot be probed is replaced before it reaches DALI (as in ``VideoDataset``);
if DALI fails on a batch, the batch is decoded again one video at a time to find and replace the culprit.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .decode import PyAVSource, VideoDecodeError, decode_frames
from .lists import Sample
from .sampling import EvalSampler, TrainSampler, rank_and_world, segment_indices, split_view
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    apply_color,
    eval_crops,
    normalize,
    sample_train_params,
)


class _Item:
    """Everything Python decides for one clip before DALI runs."""

    __slots__ = ("index", "view", "label", "encoded", "frames", "box", "params", "replaced", "failed_index", "seed")

    def __init__(self, index, view, label, encoded, frames, box, params, replaced, failed_index, seed=-1):
        self.index, self.view, self.label, self.encoded, self.frames = index, view, label, encoded, frames
        self.box, self.params, self.replaced, self.failed_index = box, params, replaced, failed_index
        self.seed = seed  # the training item's seed (as the torch loader's "item_seed"); -1 in evaluation


class DaliVideoLoader:
    """Train or multi-view eval loader decoding with DALI. Iterating yields batch dicts (see module doc)."""

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, *, batch_size: int,
                 num_frames: int = 8, size: int = 224, train: bool = True, num_clips: int = 1, num_crops: int = 1,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None, device: str = "cuda",
                 num_threads: int = 4, strict: bool = False, augment: bool = True, max_retries: int = 10,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, flip_prob: float = 0.5):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.samples, self.data_root = samples, Path(data_root) if data_root is not None else None
        self.batch_size, self.num_frames, self.size, self.train = batch_size, num_frames, size, train
        self.num_clips, self.num_crops = (1, 1) if train else (num_clips, num_crops)
        self.seed, self.device, self.num_threads = seed, device, num_threads
        self.strict, self.augment, self.max_retries = strict, augment, max_retries
        self.mean, self.std, self.flip_prob = tuple(mean), tuple(std), flip_prob
        views = self.num_clips * self.num_crops
        rank, world_size = rank_and_world(rank, world_size)
        if train:
            self.sampler = TrainSampler(len(samples), seed=seed, rank=rank, world_size=world_size)
        else:
            self.sampler = EvalSampler(len(samples) * views, rank=rank, world_size=world_size)
        self._probe_cache: dict[Path, tuple[int, int, int]] = {}
        self._pipe = None
        self._pool = ThreadPoolExecutor(num_threads)
        self.last_epoch_failures: list[int] = []

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def path(self, index: int) -> Path:
        relative = self.samples[index][0]
        return self.data_root / relative if self.data_root is not None else Path(relative)

    # -- Python side: choose frames and augmentation exactly as VideoDataset does --------------------------------
    def _probe(self, path: Path) -> tuple[int, int, int]:
        """(frame count, height, width), cached; raises VideoDecodeError."""
        if path not in self._probe_cache:
            with PyAVSource(path) as video:
                stream = video._container.streams.video[0]
                self._probe_cache[path] = (video.num_frames, stream.height, stream.width)
        return self._probe_cache[path]

    def _prepare(self, key) -> _Item:
        if self.train:
            index, seed = key
            rng = np.random.default_rng(seed)
            tried, replaced = index, False
            for attempt in range(self.max_retries + 1):
                try:
                    count, height, width = self._probe(self.path(tried))
                    encoded = np.fromfile(self.path(tried), dtype=np.uint8)
                    break
                except VideoDecodeError as e:
                    if self.strict:
                        raise
                    warnings.warn(f"skipping unreadable video ({e}); replaced by another one", stacklevel=2)
                    if attempt == self.max_retries:
                        raise VideoDecodeError(e.path, "too many unreadable videos in a row") from e
                    tried, replaced = int(rng.integers(len(self.samples))), True
            frames = segment_indices(count, self.num_frames, train=True, rng=rng)
            if self.augment:
                params = sample_train_params(height, width, rng, p_flip=self.flip_prob)
            else:
                params = AugmentParams(eval_crops(height, width, self.size, 1)[0], False, (), False)
            return _Item(tried, 0, self.samples[tried][1], encoded, frames, params.crop, params, replaced,
                         index if replaced else -1, int(seed))
        index, view = divmod(key, self.num_views)
        clip, crop = split_view(view, self.num_crops)
        try:
            count, height, width = self._probe(self.path(index))
            encoded = np.fromfile(self.path(index), dtype=np.uint8)
        except VideoDecodeError as e:
            if self.strict:
                raise
            warnings.warn(f"skipping unreadable video ({e}); scored on a black clip", stacklevel=2)
            return _Item(index, view, self.samples[index][1], None, None, None, None, True, index)
        frames = segment_indices(count, self.num_frames, train=False, clip=clip, num_clips=self.num_clips)
        box = eval_crops(height, width, self.size, self.num_crops)[crop]
        return _Item(index, view, self.samples[index][1], encoded, frames, box, None, False, -1)

    # -- DALI side -------------------------------------------------------------------------------------------
    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        decoder_device = "mixed" if self.device == "cuda" else "cpu"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                      device_id=0 if self.device == "cuda" else None, exec_dynamic=True, prefetch_queue_depth=1)
        def clips():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            mirror = fn.external_source(name="mirror", dtype=types.INT32, ndim=0)
            video = fn.decoders.video(encoded, device=decoder_device, frames=frames)
            video = fn.resize(video, roi_start=roi_start, roi_end=roi_end, size=[self.size, self.size],
                              interp_type=types.INTERP_LINEAR, antialias=True)
            # float in [0, 1], frames x channels x H x W; colour and normalisation follow in torch
            return fn.crop_mirror_normalize(video, mirror=mirror, mean=[0.0], std=[255.0], dtype=types.FLOAT,
                                            output_layout="FCHW")

        pipe = clips()
        pipe.build()
        return pipe

    def _run_dali(self, items: list[_Item]) -> torch.Tensor:
        if self._pipe is None:
            self._pipe = self._build()
        pipe = self._pipe
        pipe.feed_input("encoded", [it.encoded for it in items])
        pipe.feed_input("frames", [it.frames.astype(np.int32) for it in items])
        # ROI in (y, x) order, the tensor's dimension order
        pipe.feed_input("roi_start", [np.array([it.box[0], it.box[1]], np.float32) for it in items])
        pipe.feed_input("roi_end", [np.array([it.box[0] + it.box[2], it.box[1] + it.box[3]], np.float32)
                                    for it in items])
        pipe.feed_input("mirror", [np.array(int(bool(it.params and it.params.flip)), np.int32) for it in items])
        (out,) = pipe.run()
        return _to_torch(out, self.device)

    def _decode_one(self, item: _Item) -> torch.Tensor:
        """Fallback for a failed batch: one clip through the single-video DALI path, resized in torch."""
        from .transforms import crop_resize

        frames = decode_frames(self.path(item.index), item.frames, backend="dali", device=self.device)
        clip = crop_resize(frames, item.box, self.size)
        return clip.flip(-1) if item.params is not None and item.params.flip else clip

    def _prepare_all(self, keys) -> list[_Item]:
        return list(self._pool.map(self._prepare, keys))

    def _batch(self, items: list[_Item]) -> dict:
        decodable = [it for it in items if it.encoded is not None]
        clips = {}
        if decodable:
            try:
                out = self._run_dali(decodable)
                clips = {id(it): out[i] for i, it in enumerate(decodable)}
            except Exception as e:  # DALI reports a bad sample as a failure of the whole batch
                warnings.warn(f"DALI failed on a batch ({str(e)[:200]}); decoding its videos one by one",
                              stacklevel=2)
                self._pipe = None  # a pipeline that raised is not reused
                for it in decodable:
                    try:
                        clips[id(it)] = self._decode_one(it)
                    except VideoDecodeError:
                        if self.strict:
                            raise
                        it.replaced, it.failed_index = True, it.index
        black = normalize(torch.zeros(self.num_frames, 3, self.size, self.size, device=self._torch_device()),
                          self.mean, self.std)
        videos = []
        for it in items:
            clip = clips.get(id(it))
            if clip is None:
                videos.append(black)
                continue
            if it.params is not None:
                clip = apply_color(clip, it.params)
            videos.append(normalize(clip, self.mean, self.std))
        return {
            "video": torch.stack(videos),
            "label": torch.tensor([it.label for it in items]),
            "video_index": torch.tensor([it.index for it in items]),
            "view_index": torch.tensor([it.view for it in items]),
            "replaced": torch.tensor([it.replaced for it in items]),
            "failed_index": torch.tensor([it.failed_index for it in items]),
            "item_seed": torch.tensor([it.seed for it in items]),
        }

    def _torch_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "cuda" else "cpu")

    def __iter__(self):
        failures: list[int] = []
        keys = list(self.sampler)
        chunks = [keys[start:start + self.batch_size] for start in range(0, len(keys), self.batch_size)]
        # Python's part of the next batch (probing, reading the files) overlaps DALI's work on this one
        ahead = ThreadPoolExecutor(1)
        try:
            pending = ahead.submit(self._prepare_all, chunks[0]) if chunks else None
            for i in range(len(chunks)):
                items = pending.result()
                pending = ahead.submit(self._prepare_all, chunks[i + 1]) if i + 1 < len(chunks) else None
                batch = self._batch(items)
                failures.extend(batch["failed_index"][batch["replaced"]].tolist())
                yield batch
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)
        self.last_epoch_failures = failures
        if failures:
            paths = ", ".join(str(self.path(i)) for i in sorted(set(failures))[:5])
            warnings.warn(f"{len(failures)} items were unreadable this epoch and replaced (first: {paths})",
                          stacklevel=2)


def _to_torch(tensor_list, device: str) -> torch.Tensor:
    """DALI TensorList of equal-shape float samples -> torch ``(B, ...)`` on the same device."""
    if device == "cuda":
        import nvidia.dali.plugin.pytorch as dali_torch

        dense = tensor_list.as_tensor()
        result = torch.empty(dense.shape(), dtype=torch.float32, device="cuda")
        dali_torch.feed_ndarray(dense, result, cuda_stream=torch.cuda.current_stream())
        return result
    return torch.from_numpy(np.array(tensor_list.as_array()))

"""The DALI video loader: the torch loader's items (same sampler, frames, crops, augmentation and replacements),
decoded by DALI.

Python chooses what the torch loader chooses (sampler order, segment frame indices, augmentation parameters and
replacement videos from the same per-item seeds) and feeds it to a DALI pipeline, which decodes
(``fn.decoders.video``; ``"cpu"`` for VP8/VP9/MJPEG, ``"mixed"`` = NVDEC on the GPU for H.264/HEVC/AV1/MPEG-4),
crops, resizes and flips (``fn.resize``, ``fn.crop_mirror_normalize``). Colour jitter, grayscale and normalisation
then run as torch ops on the output device, with the same code as the torch loader. Batches are the same dicts
(``video_loader``), with ``video`` on the device.

Rotated videos (a display matrix, which DALI ignores): crops and augmentation are chosen on the upright frame as
the torch loader chooses them; DALI crops the same region of the stored frame and resizes it to the square
output, which is then turned upright (and flipped) in torch: a quarter turn of a square, exact.

Unreadable videos: a video that cannot be probed is replaced before it reaches DALI (``items``); DALI reports a
video it cannot decode as a failure of the whole batch, which is then made again item by item by
``VideoDataset`` on DALI's one-video decoder, replacing the culprit as the torch loader does.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from .dataset import VideoDataset
from .decode import PyAVSource
from .items import ClipOptions, black_clip, item_fields, read_or_replace, read_or_skip
from .lists import Sample
from .sampling import split_view
from .transforms import AugmentParams, apply_color, eval_crops, normalize, sample_train_params
from .video_loader import VideoLoader


class _Item:
    """Everything Python decides for one clip before DALI runs."""

    __slots__ = ("key", "fields", "encoded", "frames", "box", "params", "turns")

    def __init__(self, key, fields: dict, encoded=None, frames=None, box=None, params: AugmentParams | None = None,
                 turns: int = 0, size: tuple[int, int] = (0, 0)):
        self.key, self.fields = key, fields  # the sampler's key; the batch entries besides "video"
        self.encoded, self.frames, self.params = encoded, frames, params  # encoded None: black clip
        # box: the crop in the stored (not yet upright) frame; turns: counter-clockwise quarter turns to upright
        self.box, self.turns = (stored_box(box, turns, size) if box is not None else None), turns


def stored_box(box: tuple[int, int, int, int], turns: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A crop box ``(top, left, h, w)`` of the upright frame of ``size`` (H, W) -> the same pixels' box in the
    stored frame, which ``np.rot90(stored, turns)`` turns upright."""
    top, left, h, w = box
    height, width = size  # upright
    if turns == 1:  # upright row i = stored column W_s - 1 - i, upright column j = stored row j (W_s = height)
        return left, height - top - h, w, h
    if turns == 2:
        return height - top - h, width - left - w, h, w
    if turns == 3:  # upright row i = stored column i, upright column j = stored row H_s - 1 - j (H_s = width)
        return width - left - w, top, w, h
    return box


class DaliVideoLoader(VideoLoader):
    """Train or multi-view eval loader decoding with DALI on ``device`` (``"cpu"`` or ``"cuda"``) with
    ``num_threads`` CPU threads. Iterating yields batch dicts (see module doc)."""

    def __init__(self, samples: list[Sample], data_root: str | os.PathLike | None, options: ClipOptions, *,
                 batch_size: int, device: str = "cuda", num_threads: int = 4, rank: int | None = None,
                 world_size: int | None = None):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        super().__init__(samples, data_root, options, batch_size=batch_size, rank=rank, world_size=world_size)
        self.device, self.num_threads = device, num_threads
        # a batch DALI fails on is made again item by item, by the torch dataset's code on DALI's one-video decoder
        self._one_by_one = VideoDataset(samples, data_root, options, backend="dali", device=device)
        self._probe_cache: dict[Path, tuple[int, int, int]] = {}
        self._pipe = None
        self._pool = ThreadPoolExecutor(num_threads)

    # -- Python side: choose frames and augmentation exactly as VideoDataset does --------------------------------
    def _probe(self, index: int) -> tuple[int, int, int, int, np.ndarray]:
        """(frame count, upright height, upright width, quarter turns, encoded bytes) of video ``index``; raises
        VideoDecodeError."""
        path = self.path(index)
        if path not in self._probe_cache:
            with PyAVSource(path) as video:
                self._probe_cache[path] = (video.num_frames, *video.frame_size, video.turns)
        return (*self._probe_cache[path], np.fromfile(path, dtype=np.uint8))

    def _prepare(self, key) -> _Item:
        o = self.options
        if o.train:
            index, seed = key
            rng = np.random.default_rng(seed)
            result = read_or_replace(self._probe, index, rng, len(self.samples), strict=o.strict)
            count, height, width, turns, encoded = result.value
            frames = o.frames(count, rng=rng)
            if o.augment:
                params = sample_train_params(height, width, rng, p_flip=o.flip_prob)
            else:
                params = AugmentParams(eval_crops(height, width, o.size, 1)[0], False, (), False)
            return _Item(key, item_fields(self.samples, result, 0, int(seed)), encoded, frames, params.crop, params,
                         turns, (height, width))
        index, view = divmod(key, self.num_views)
        clip, crop = split_view(view, o.num_crops)
        result = read_or_skip(self._probe, index, strict=o.strict)
        fields = item_fields(self.samples, result, view, -1)
        if result.value is None:
            return _Item(key, fields)
        count, height, width, turns, encoded = result.value
        frames = o.frames(count, clip=clip)
        return _Item(key, fields, encoded, frames, eval_crops(height, width, o.size, o.num_crops)[crop], None, turns,
                     (height, width))

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
            video = fn.resize(video, roi_start=roi_start, roi_end=roi_end, size=[self.options.size, self.options.size],
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
        # a rotated clip is flipped after it is turned upright (in _batch)
        pipe.feed_input("mirror", [np.array(int(bool(it.params and it.params.flip and not it.turns)), np.int32)
                                   for it in items])
        (out,) = pipe.run()
        return _to_torch(out, self.device)

    def _prepare_all(self, keys) -> list[_Item]:
        return list(self._pool.map(self._prepare, keys))

    def _batch(self, items: list[_Item]) -> dict:
        decodable = [it for it in items if it.encoded is not None]
        try:
            out = self._run_dali(decodable) if decodable else None
        except Exception as e:  # DALI reports a bad sample as a failure of the whole batch
            warnings.warn(f"DALI failed on a batch ({str(e)[:200]}); decoding its videos one by one", stacklevel=2)
            self._pipe = None  # a pipeline that raised is not reused
            return default_collate([self._one_by_one[it.key] for it in items])
        clips = {id(it): out[i] for i, it in enumerate(decodable)}
        o = self.options
        videos = []
        for it in items:
            if it.encoded is None:
                videos.append(black_clip(o, self.device))
                continue
            clip = clips[id(it)]
            if it.turns:
                clip = torch.rot90(clip, it.turns, dims=(-2, -1))
                if it.params is not None and it.params.flip:
                    clip = clip.flip(-1)
            if it.params is not None:
                clip = apply_color(clip, it.params)
            videos.append(normalize(clip, o.mean, o.std))
        fields = {key: torch.tensor([it.fields[key] for it in items]) for key in items[0].fields}
        return {"video": torch.stack(videos), **fields}

    def _batches(self):
        keys = list(self.sampler)
        chunks = [keys[start:start + self.batch_size] for start in range(0, len(keys), self.batch_size)]
        # Python's part of the next batch (probing, reading the files) overlaps DALI's work on this one
        ahead = ThreadPoolExecutor(1)
        try:
            pending = ahead.submit(self._prepare_all, chunks[0]) if chunks else None
            for i in range(len(chunks)):
                items = pending.result()
                pending = ahead.submit(self._prepare_all, chunks[i + 1]) if i + 1 < len(chunks) else None
                yield self._batch(items)
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)


def _to_torch(tensor_list, device: str) -> torch.Tensor:
    """DALI TensorList of equal-shape float samples -> torch ``(B, ...)`` on the same device."""
    if device == "cuda":
        import nvidia.dali.plugin.pytorch as dali_torch

        dense = tensor_list.as_tensor()
        result = torch.empty(dense.shape(), dtype=torch.float32, device="cuda")
        dali_torch.feed_ndarray(dense, result, cuda_stream=torch.cuda.current_stream())
        return result
    return torch.from_numpy(np.array(tensor_list.as_array()))

"""The loader factory: training or multi-view evaluation batches of a video list, decoded by DataLoader workers
(decord, PyAV, torchcodec) or by NVIDIA DALI, with the same items and batches either way (see ``video_loader``)."""

from __future__ import annotations

import importlib.util
import os

import torch

from msta_fast.constants import IMAGENET_MEAN, IMAGENET_STD

from .dali_loader import DaliVideoLoader
from .dataset import TorchVideoLoader
from .items import ClipOptions
from .lists import Sample
from .video_loader import VideoLoader

LOADERS = ("auto", "torch", "dali")
# Seconds one video may take to open and decode before it counts as unreadable: a 10 s clip takes well under a
# second, a long 1080p video read by PyAV (sequentially, up to the last frame wanted) several; a hung decoder
# never ends.
DECODE_TIMEOUT = 60.0


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def build_loader(
    samples: list[Sample],
    data_root: str | os.PathLike | None,
    *,
    train: bool,
    batch_size: int,
    num_frames: int = 8,
    size: int = 224,
    num_clips: int = 1,
    num_crops: int = 1,
    seed: int = 0,
    augment: bool = True,
    flip_prob: float = 0.5,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    strict: bool = False,
    sampling: str = "segments",
    frame_stride: int = 16,
    loader: str = "auto",
    backend: str = "decord",
    device: str | torch.device = "cpu",
    decode_timeout: float | None = DECODE_TIMEOUT,
    num_workers: int = 0,
    num_threads: int = 4,
    rank: int | None = None,
    world_size: int | None = None,
) -> VideoLoader:
    """Batches of clips ``(B, T, 3, S, S)`` of the videos of ``samples`` (paths relative to ``data_root``).

    Args:
        train: shuffled, augmented, one clip per video, resumable (``loader.sampler.state_dict`` /
            ``load_state_dict``, ``loader.set_epoch``); else ``num_clips`` temporal clips x ``num_crops`` (1 or 3)
            spatial crops of every video, each exactly once over all ranks.
        batch_size: per rank; the last batch may be smaller (nothing is dropped).
        num_frames, size: T frames per clip (one per equal segment), S x S pixels.
        seed: the training order and every item's frames, augmentation and replacement videos.
        augment, flip_prob: the paper's training augmentation (off: the centre crop), its flip probability.
        mean, std: normalisation (``CLIP_MEAN``/``CLIP_STD`` for OpenAI CLIP weights).
        strict: raise on an unreadable video instead of replacing it (``items`` says how).
        sampling, frame_stride: which frames: "segments" (T equal segments) or "stride" (T frames
            ``frame_stride`` apart), see ``sampling.frame_indices``.
        loader: ``"torch"`` (DataLoader with ``num_workers`` processes decoding with ``backend``: ``"decord"``,
            ``"pyav"``, ``"torchcodec"``, or ``"dali"`` on the CPU), ``"dali"`` (DALI decodes whole batches on
            ``device`` with ``num_threads`` threads: NVDEC on a GPU; VP8/VP9/MJPEG on the CPU), or ``"auto"`` (DALI
            when ``device`` is a GPU and nvidia-dali is installed, else torch).
        device: where the batches are used: DALI's output device; with a GPU the torch loader pins its batches,
            and ``backend="torchcodec"`` with ``num_workers=0`` decodes on NVDEC in this process.
        decode_timeout: seconds one video may take to open and decode on the CPU (torch loader) before it counts
            as unreadable and is replaced (a hung decoder never stalls the epoch); None or 0: no limit, and
            decoding runs in the worker itself instead of its decoding child (see ``decode_process``).
        rank, world_size: this process's shard; default: the initialised process group's (torchrun), else 0, 1.

    Returns:
        A ``VideoLoader`` (``TorchVideoLoader`` or ``DaliVideoLoader``): iterate it for batch dicts (``video``,
        ``label``, ``video_index``, ``view_index``, ``replaced``, ``failed_index``, ``item_seed``); it has
        ``samples``, ``num_views``, ``sampler``, ``set_epoch`` and ``last_epoch_failures``.
    """
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; choose one of {LOADERS}")
    device = torch.device(device).type
    if loader == "dali" and not dali_installed():
        raise RuntimeError("loader='dali' needs nvidia-dali: pip install msta-fast[dali]")
    if loader == "auto":
        loader = "dali" if device == "cuda" and dali_installed() else "torch"
    options = ClipOptions(train=train, num_frames=num_frames, size=size, num_clips=num_clips, num_crops=num_crops,
                          seed=seed, augment=augment, flip_prob=flip_prob, mean=mean, std=std, strict=strict,
                          sampling=sampling, frame_stride=frame_stride)
    if loader == "dali":
        return DaliVideoLoader(samples, data_root, options, batch_size=batch_size, device=device,
                               num_threads=num_threads, rank=rank, world_size=world_size)
    return TorchVideoLoader(samples, data_root, options, batch_size=batch_size, backend=backend,
                            num_workers=num_workers, pin_memory=device == "cuda", device=device,
                            decode_timeout=decode_timeout, rank=rank, world_size=world_size)

"""Data loaders for the recipes: the DALI loader on GPUs when it is installed, decord (or PyAV) workers
otherwise; both shard across ranks, evaluate every (video, view) exactly once and resume mid-epoch."""

from __future__ import annotations

import importlib.util
import logging

import torch

from msta_fast.data import DaliVideoLoader, EvalSampler, EvalSet, TrainSampler, VideoDataset, VideoLoader
from msta_fast.data.lists import Sample
from msta_fast.training.distributed import DistInfo

log = logging.getLogger(__name__)


def use_dali(cfg: dict, info: DistInfo) -> bool:
    choice = cfg["data"]["loader"]
    available = info.device.type == "cuda" and importlib.util.find_spec("nvidia.dali") is not None
    if choice == "dali" and not available:
        raise RuntimeError("data.loader=dali needs a CUDA device and nvidia-dali (pip install msta-fast[dali])")
    return choice == "dali" or (choice == "auto" and available)


def subsample(samples: list[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples spread evenly over the list (lists are grouped by class), 0 = all."""
    if not limit or len(samples) <= limit:
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


def train_loader(samples: list[Sample], data_root, cfg: dict, info: DistInfo, *, seed: int, batch_size: int):
    """Shuffled, augmented (unless ``data.augment`` is off), rank-sharded loader; ``loader.sampler`` resumes."""
    m, d = cfg["model"], cfg["data"]
    samples = subsample(samples, cfg["debug"]["max_videos"])
    if use_dali(cfg, info):
        return DaliVideoLoader(samples, data_root, batch_size=batch_size, num_frames=m["num_frames"],
                               size=m["image_size"], train=True, seed=seed, rank=info.rank,
                               world_size=info.world_size, device="cuda", strict=d["strict"], augment=d["augment"],
                               flip_prob=d["flip_prob"])
    dataset = VideoDataset(samples, data_root, num_frames=m["num_frames"], size=m["image_size"], train=True,
                           backend=d["backend"], strict=d["strict"], seed=seed, augment=d["augment"],
                           flip_prob=d["flip_prob"])
    sampler = TrainSampler(len(dataset), seed=seed, rank=info.rank, world_size=info.world_size)
    return VideoLoader(dataset, sampler, batch_size=batch_size, num_workers=d["num_workers"],
                       pin_memory=info.device.type == "cuda")


def eval_loader(evalset: EvalSet, data_root, cfg: dict, info: DistInfo):
    """Multi-view loader (``eval.num_clips`` x ``eval.num_crops``, 0 = the protocol's views)."""
    m, d, e = cfg["model"], cfg["data"], cfg["eval"]
    clips, crops = e["num_clips"] or evalset.num_clips, e["num_crops"] or evalset.num_crops
    samples = subsample(evalset.samples, cfg["debug"]["max_videos"])
    if use_dali(cfg, info):
        return DaliVideoLoader(samples, data_root, batch_size=e["batch_size"], num_frames=m["num_frames"],
                               size=m["image_size"], train=False, num_clips=clips, num_crops=crops,
                               rank=info.rank, world_size=info.world_size, device="cuda", strict=d["strict"])
    dataset = VideoDataset(samples, data_root, num_frames=m["num_frames"], size=m["image_size"], train=False,
                           num_clips=clips, num_crops=crops, backend=d["backend"], strict=d["strict"])
    sampler = EvalSampler(len(dataset), rank=info.rank, world_size=info.world_size)
    return VideoLoader(dataset, sampler, batch_size=e["batch_size"], num_workers=d["num_workers"],
                       pin_memory=info.device.type == "cuda")


def iterate_keeping_rng(loader):
    """Iterate ``loader`` without consuming the global torch RNG (a DataLoader draws its workers' base seed
    from it when its iterator starts), so that dropout masks after a mid-epoch resume match an uninterrupted
    run. Items get their randomness from the sampler's per-item seeds, not from the workers' seeds."""
    state = torch.get_rng_state()
    iterator = iter(loader)
    try:
        first = next(iterator)  # the DataLoader iterator is created here
    except StopIteration:
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state)
    yield first
    yield from iterator

"""The recipes' loaders: ``msta_fast.data.build_loader`` with the options of the run's config (``data.loader``:
DALI on GPUs when it is installed, decord or PyAV workers otherwise)."""

from __future__ import annotations

import torch

from msta_fast.data import EvalSet, VideoLoader, build_loader
from msta_fast.data.lists import Sample
from msta_fast.training.distributed import DistInfo


def subsample(samples: list[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples spread evenly over the list (lists are grouped by class), 0 = all."""
    if not limit or len(samples) <= limit:
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


def _common(cfg: dict, info: DistInfo) -> dict:
    """The loader options shared by training and evaluation."""
    d = cfg["data"]
    if d["loader"] == "dali" and info.device.type != "cuda":
        raise RuntimeError("data.loader=dali needs a CUDA device and nvidia-dali (pip install msta-fast[dali])")
    return dict(num_frames=cfg["model"]["num_frames"], size=cfg["model"]["image_size"], strict=d["strict"],
                sampling=d["sampling"], frame_stride=d["frame_stride"],
                loader=d["loader"], backend=d["backend"], device=info.device, num_workers=d["num_workers"],
                decode_timeout=d["decode_timeout"],
                rank=info.rank, world_size=info.world_size)


def train_loader(samples: list[Sample], data_root, cfg: dict, info: DistInfo, *, seed: int,
                 batch_size: int) -> VideoLoader:
    """Shuffled, augmented (unless ``data.augment`` is off), rank-sharded loader; ``loader.sampler`` resumes."""
    d = cfg["data"]
    return build_loader(subsample(samples, cfg["debug"]["max_videos"]), data_root, train=True, batch_size=batch_size,
                        seed=seed, augment=d["augment"], flip_prob=d["flip_prob"], **_common(cfg, info))


def eval_loader(evalset: EvalSet, data_root, cfg: dict, info: DistInfo) -> VideoLoader:
    """Multi-view loader (``eval.num_clips`` x ``eval.num_crops``, 0 = the protocol's views)."""
    e = cfg["eval"]
    return build_loader(subsample(evalset.samples, cfg["debug"]["max_videos"]), data_root, train=False,
                        batch_size=e["batch_size"], num_clips=e["num_clips"] or evalset.num_clips,
                        num_crops=e["num_crops"] or evalset.num_crops, **_common(cfg, info))


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

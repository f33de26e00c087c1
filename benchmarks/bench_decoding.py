"""Clips/s of the decoding backends and loaders on Kinetics-like videos (10 s, 25 fps, 340x256, H.264).

Each clip is 8 frames chosen by training segment sampling. Providers:

- ``decode``: ``decode_frames`` alone (one process), per backend (decord, PyAV).
- ``loader``: the PyTorch loader (decode + multi-scale crop to 224 + jitter + normalisation) with 1 and 2
  workers, batch 8, per backend.
- GPU only: the DALI loader (NVDEC decode, GPU resize and jitter) against the decord loader with 16 workers.

Run: ``pytest benchmarks/bench_decoding.py --benchmark-only`` (about 1-2 minutes on 2 CPU cores). The videos
are generated once into ``$MSTA_FAST_BENCH_VIDEOS`` (default ``<repo>/.cache/bench_videos``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from msta_fast.data import build_loader, decode_frames
from msta_fast.data.encode import write_video
from msta_fast.data.sampling import segment_indices

NUM_VIDEOS, SECONDS, FPS, HEIGHT, WIDTH, CLIP_FRAMES, SIZE = 8, 10, 25, 256, 340, 8, 224
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")


def kinetics_like(seed: int) -> np.ndarray:
    """(250, 256, 340, 3) uint8: a drifting gradient with a moving disc (compresses like real footage, not
    like noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    frames = np.empty((SECONDS * FPS, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(len(frames)):
        cx, cy = 40 + t * 1.1, HEIGHT / 2 + 50 * np.sin(t / 15 + seed)
        background = np.stack([(x + 2 * t) % 256, (0.8 * y + t) % 256, np.full_like(x, 60 + 10 * seed)], -1)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < 30**2)[..., None]
        frames[t] = np.where(disc, colour, background)
    return frames


@pytest.fixture(scope="module")
def videos() -> list[tuple[str, int]]:
    default = Path(__file__).resolve().parents[1] / ".cache" / "bench_videos"
    root = Path(os.environ.get("MSTA_FAST_BENCH_VIDEOS", default))
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(NUM_VIDEOS):
        path = root / f"kinetics_like_{i}.mp4"
        if not path.is_file():
            write_video(path, kinetics_like(i), fps=FPS, codec="h264")
        samples.append((str(path), 0))
    return samples


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode(benchmark, record_result, videos, backend):
    rng = np.random.default_rng(0)

    def decode_all():
        for path, _ in videos:
            decode_frames(path, segment_indices(SECONDS * FPS, CLIP_FRAMES, train=True, rng=rng), backend=backend)

    benchmark.pedantic(decode_all, rounds=3, iterations=1, warmup_rounds=1)
    clips_per_s = len(videos) / benchmark.stats["mean"]
    benchmark.extra_info["clips_per_s"] = clips_per_s
    record_result("decoding_cpu", provider=f"decode_frames[{backend}]", workers=0, clips_per_s=clips_per_s)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_loader(benchmark, record_result, videos, backend, workers):
    # repeat the list so that an epoch keeps the workers busy
    loader = build_loader(videos * 4, None, train=True, batch_size=8, num_frames=CLIP_FRAMES, size=SIZE,
                          loader="torch", num_workers=workers, backend=backend)

    def epoch():
        return sum(len(batch["video"]) for batch in loader)

    benchmark.pedantic(epoch, rounds=2, iterations=1, warmup_rounds=1)
    clips_per_s = 4 * len(videos) / benchmark.stats["mean"]
    benchmark.extra_info["clips_per_s"] = clips_per_s
    record_result("decoding_cpu", provider=f"loader[{backend}]", workers=workers, clips_per_s=clips_per_s)


@needs_gpu
@pytest.mark.parametrize("provider", ["dali", "decord-16-workers"])
def test_gpu_loader(benchmark, record_result, videos, provider):
    samples = videos * 8
    # the torch loader pins its batches for a CUDA device
    kind = dict(loader="dali", num_threads=8) if provider == "dali" else dict(loader="torch", num_workers=16)
    loader = build_loader(samples, None, train=True, batch_size=32, num_frames=CLIP_FRAMES, size=SIZE, device="cuda",
                          **kind)

    def epoch():
        count = 0
        for batch in loader:
            video = batch["video"].cuda(non_blocking=True)
            count += len(video)
        torch.cuda.synchronize()
        return count

    benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    clips_per_s = len(samples) / benchmark.stats["mean"]
    benchmark.extra_info["clips_per_s"] = clips_per_s
    record_result("decoding_gpu", provider=provider, clips_per_s=clips_per_s, measured=time.strftime("%Y-%m-%d"))

"""Clips/s of the decoding backends and the loaders, side by side in one run, as ratios to PyAV.

Two kinds of video, 8 of each, 8 frames per clip chosen by training segment sampling:

- ``k400``: Kinetics-like, 10 s at 25 fps, 340x256, H.264 (.mp4);
- ``ssv2``: Something-Something-v2-like, 4 s at 12 fps, 426x240, VP9 (.webm).

Providers, per backend (PyAV, decord = the decord2 package, torchcodec when it and FFmpeg are installed):

- ``decode_frames``: decoding alone, in this process;
- ``decode_frames bounded``: the same through the decoding child that bounds the time per video (the loaders'
  default, ``decode_timeout``): its cost over the line above is the price of the bound;
- ``loader``: the torch loader (decode + multi-scale crop to 224 + jitter + normalisation), batch 8, with 1, 2, ...
  workers (up to the CPU count).
- GPU only: the DALI loader and the torchcodec loader on NVDEC against the decord loader with 16 workers.

``vs_pyav`` is each row's clips/s over PyAV's in the same row group of the same run. Run:
``pytest benchmarks/bench_decoding.py --benchmark-only`` (a few minutes on 2 CPU cores); results go to
``benchmarks/results/decoding_*``. The videos are generated once into ``$MSTA_FAST_BENCH_VIDEOS`` (default
``<repo>/.cache/bench_videos``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from msta_fast.data import build_loader, decode_frames
from msta_fast.data.decode import check_backend
from msta_fast.data.encode import write_video
from msta_fast.data.sampling import segment_indices

NUM_VIDEOS, CLIP_FRAMES, SIZE = 8, 8, 224
FORMATS = {  # name -> (seconds, fps, height, width, codec, extension)
    "k400": (10, 25, 256, 340, "h264", ".mp4"),
    "ssv2": (4, 12, 240, 426, "vp9", ".webm"),
}
WORKERS = list(range(1, min(os.cpu_count() or 1, 4) + 1))
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")


def _available(backend: str) -> bool:
    try:
        check_backend(backend)
    except RuntimeError:
        return False
    return True


BACKENDS = [b for b in ("pyav", "decord", "torchcodec") if _available(b)]


def interleaved(benchmark, providers: dict, rounds: int) -> dict[str, float]:
    """Clips/s of each provider (name -> function returning the clips it made): ``rounds`` rounds that each run
    every provider once, in turn, so that a change in the machine's load (its cores are shared) hits all alike;
    the median round of each."""
    times: dict[str, list[float]] = {name: [] for name in providers}
    clips: dict[str, int] = {}

    def one_round():
        for name, run in providers.items():
            start = time.perf_counter()
            clips[name] = run()
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)
    return {name: clips[name] / float(np.median(times[name][1:])) for name in providers}  # [0]: the warm-up


def record_all(record_result, fmt: str, workers: int, measured: dict[tuple[str, str], float]) -> None:
    """One row per (provider, backend), with its ratio to PyAV's clips/s with the same provider."""
    for (provider, backend), clips_per_s in measured.items():
        reference = measured.get((provider, "pyav"))
        record_result("decoding_cpu", provider=f"{provider}[{backend}]", format=fmt, workers=workers,
                      clips_per_s=clips_per_s, vs_pyav=clips_per_s / reference if reference else None)


def scene(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    """(frames, height, width, 3) uint8: a drifting gradient with a moving disc (compresses like real footage, not
    like noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        cx, cy = 40 + t * 1.1, height / 2 + 50 * np.sin(t / 15 + seed)
        background = np.stack([(x + 2 * t) % 256, (0.8 * y + t) % 256, np.full_like(x, 60 + 10 * seed)], -1)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < 30**2)[..., None]
        out[t] = np.where(disc, colour, background)
    return out


@pytest.fixture(scope="module")
def videos() -> dict[str, list[tuple[str, int]]]:
    default = Path(__file__).resolve().parents[1] / ".cache" / "bench_videos"
    root = Path(os.environ.get("MSTA_FAST_BENCH_VIDEOS", default))
    root.mkdir(parents=True, exist_ok=True)
    lists = {}
    for name, (seconds, fps, height, width, codec, ext) in FORMATS.items():
        lists[name] = []
        for i in range(NUM_VIDEOS):
            path = root / f"{name}_like_{i}{ext}"
            if not path.is_file():
                write_video(path, scene(i, seconds * fps, height, width), fps=fps, codec=codec)
            lists[name].append((str(path), 0))
    return lists


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_decode(benchmark, record_result, videos, fmt):
    seconds, fps = FORMATS[fmt][:2]

    def decode_all(backend: str, timeout: float | None):
        def run():
            rng = np.random.default_rng(0)
            for path, _ in videos[fmt]:
                indices = segment_indices(seconds * fps, CLIP_FRAMES, train=True, rng=rng)
                decode_frames(path, indices, backend=backend, timeout=timeout)
            return len(videos[fmt])

        return run

    providers = {(provider, backend): decode_all(backend, timeout) for backend in BACKENDS
                 for provider, timeout in (("decode_frames", None), ("decode_frames bounded", 60))}
    # one thread each, as in a loader's worker: torchcodec makes its frames with torch ops, whose threads would
    # otherwise compete with the other processes for the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured = interleaved(benchmark, providers, rounds=7)
    finally:
        torch.set_num_threads(threads)
    record_all(record_result, fmt, 0, measured)


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_loader(benchmark, record_result, videos, fmt, workers):
    samples = videos[fmt] * 4  # an epoch that keeps the workers busy

    def epoch(loader):
        return lambda: sum(len(batch["video"]) for batch in loader)

    # persistent workers: each loader starts its workers once, in the warm-up round
    providers = {("loader", backend): epoch(build_loader(samples, None, train=True, batch_size=8,
                                                         num_frames=CLIP_FRAMES, size=SIZE, loader="torch",
                                                         num_workers=workers, backend=backend))
                 for backend in BACKENDS}
    measured = interleaved(benchmark, providers, rounds=5)
    record_all(record_result, fmt, workers, measured)


@needs_gpu
@pytest.mark.parametrize("provider", ["dali", "torchcodec-nvdec", "decord-16-workers"])
def test_gpu_loader(benchmark, record_result, videos, provider):
    samples = videos["k400"] * 8
    # the torch loader pins its batches for a CUDA device; torchcodec on NVDEC decodes in this process
    kind = {"dali": dict(loader="dali", num_threads=8),
            "torchcodec-nvdec": dict(loader="torch", backend="torchcodec", num_workers=0),
            "decord-16-workers": dict(loader="torch", num_workers=16)}[provider]
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

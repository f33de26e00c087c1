"""Where an epoch's time goes: waiting for the loader's next batch vs the training step (the data-stall figure),
and the clips per second it makes. A loader that keeps the step waiting is the first thing to fix on a fast GPU."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch

STALL_HINT = 0.25  # waiting this fraction of the epoch or more: say that the loader is the bottleneck


class EpochTimer:
    """Wraps an epoch's batch iterator: ``for batch in timer.batches(loader)``; ``timer.add(clips)`` per batch."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.wait = 0.0
        self.clips = 0
        self.started = time.perf_counter()

    def batches(self, iterable: Iterable) -> Iterator:
        iterator = iter(iterable)
        while True:
            before = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.wait += time.perf_counter() - before
            yield batch

    def add(self, clips: int) -> None:
        self.clips += clips

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def summary(self) -> dict[str, float]:
        """``clips_per_s`` of the epoch, ``data_wait_s`` and ``data_wait_fraction`` (of the epoch's time),
        ``step_s`` (the rest), and ``peak_memory_gb`` on a GPU."""
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = max(self.elapsed, 1e-9)
        out = {"clips_per_s": self.clips / elapsed, "data_wait_s": self.wait, "step_s": elapsed - self.wait,
               "data_wait_fraction": self.wait / elapsed}
        if self.device is not None and self.device.type == "cuda":
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out

    def postfix(self) -> dict[str, str]:
        """For the progress line: clips/s and the share of the time spent waiting for data so far."""
        elapsed = max(self.elapsed, 1e-9)
        out = {"clips/s": f"{self.clips / elapsed:.1f}", "data wait": f"{100 * self.wait / elapsed:.0f}%"}
        if self.device is not None and self.device.type == "cuda":
            out["peak mem"] = f"{torch.cuda.max_memory_allocated(self.device) / 2**30:.1f}G"
        return out


def stall_hint(summary: dict[str, float], num_workers: int) -> str | None:
    """One line when the loader is the bottleneck, else None."""
    if summary["data_wait_fraction"] < STALL_HINT:
        return None
    return (f"the loader is the bottleneck: {100 * summary['data_wait_fraction']:.0f}% of the epoch was spent waiting "
            f"for batches ({summary['clips_per_s']:.1f} clips/s); raise data.num_workers (now {num_workers}) or "
            "decode on the GPU (data.loader=dali, or data.backend=torchcodec)")

"""The data-stall figure on a real loader: a loader made deliberately slow shows up as waiting, with the hint that
the loader is the bottleneck; the torch loader keeps its workers across epochs (persistent workers)."""

import os
import threading
import time

import numpy as np
import pytest
from decode_helpers import write_clip

import msta_fast.data.decode as decode
from msta_fast.data import build_loader, decode_process
from msta_fast.data.decode import DecordSource
from msta_fast.training.throughput import EpochTimer, stall_hint

T, S = 4, 16
SLOW_SECONDS = 0.3  # per video read, against a training step that does nothing


class Slow(DecordSource):
    def read(self, indices):
        time.sleep(SLOW_SECONDS)
        return super().read(indices)


class RecordsItsProcess(DecordSource):
    """Leaves a file named after the process that decodes."""

    folder = None

    def read(self, indices):
        (self.folder / f"pid-{os.getpid()}").touch()
        return super().read(indices)


@pytest.fixture
def videos(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        write_clip(tmp_path / f"v{i}.mp4", np.repeat(rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8), 8, 0))
    return tmp_path, [(f"v{i}.mp4", i % 2) for i in range(6)]


@pytest.fixture
def backend_as(monkeypatch):
    def use(cls):
        monkeypatch.setitem(decode._SOURCES, "decord", cls)
        decode_process.stop()

    yield use
    decode_process.stop()


def test_a_slow_loader_is_reported_as_the_bottleneck(videos, backend_as):
    root, samples = videos
    backend_as(Slow)
    loader = build_loader(samples, root, train=True, batch_size=2, num_frames=T, size=S, num_workers=0)
    timer = EpochTimer()
    batches = 0
    for batch in timer.batches(loader):
        timer.add(len(batch["video"]))  # the "step" does nothing
        batches += 1
    summary = timer.summary()
    assert batches == 3 and summary["data_wait_s"] >= len(samples) * SLOW_SECONDS
    assert summary["data_wait_fraction"] > 0.5 and 0 < summary["clips_per_s"] <= 1 / SLOW_SECONDS
    assert summary["data_wait_s"] + summary["step_s"] == pytest.approx(timer.elapsed, abs=0.05)
    hint = stall_hint(summary, num_workers=0)
    assert hint is not None and "the loader is the bottleneck" in hint and "now 0" in hint


def test_workers_persist_across_epochs(videos, backend_as, tmp_path_factory):
    root, samples = videos
    RecordsItsProcess.folder = tmp_path_factory.mktemp("pids")
    backend_as(RecordsItsProcess)
    loader = build_loader(samples, root, train=True, batch_size=1, num_frames=T, size=S, num_workers=2,
                          decode_timeout=None)  # decoding in the workers themselves
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert sum(len(b["video"]) for b in loader) == len(samples)
    # two worker processes in all: they were started once, not once per epoch
    assert len(list(RecordsItsProcess.folder.iterdir())) == 2


def test_prefetching_keeps_order_and_errors():
    from msta_fast.data.dataset import prefetched

    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("broken video list")

    got = prefetched(failing())
    assert next(got) == 1
    with pytest.raises(ValueError, match="broken video list"):
        next(got)
    early = prefetched(iter(range(10**6)))
    assert next(early) == 0
    threads = [t for t in threading.enumerate() if t.name == "msta-fast-prefetch"]
    assert threads
    early.close()  # a consumer that stops early leaves no thread blocked on a full queue
    for thread in threads:
        thread.join(timeout=60)  # a bound only against a hang: it ends within one poll of its queue
        assert not thread.is_alive()

"""A bounded time per video: a decoder that hangs (in C with the GIL held, as decord's get_batch can), is slow to
open or crashes makes its video unreadable, named, and skipped and replaced by the loaders like a corrupt one; the
epoch goes on. Without a limit decoding stays in the calling process."""

import ctypes
import faulthandler
import logging
import os
import signal
import time
import warnings

import numpy as np
import pytest
import torch
from decode_helpers import CPU_BACKENDS, needs_torchcodec, write_clip

import msta_fast.data.decode as decode
from msta_fast.data import build_loader, decode_process
from msta_fast.data.decode import DecordSource, VideoDecodeError, VideoDecodeTimeout, decode_frames

# How long a hung decoder blocks: only reached if the time limit failed, and then the test fails instead of hanging
HANG_SECONDS = 120
T, S = 4, 24


class HangsInRead(DecordSource):
    """decord, except that reading a video named ``hang*`` blocks in C holding the GIL (a thread cannot interrupt
    that, nor can a SIGALRM handler)."""

    def read(self, indices):
        if self.path.name.startswith("hang"):
            ctypes.PyDLL(None).sleep(HANG_SECONDS)
        return super().read(indices)


class HangsInOpen(DecordSource):
    def __init__(self, path, *args, **kwargs):
        if path.name.startswith("hang"):
            time.sleep(HANG_SECONDS)
        super().__init__(path, *args, **kwargs)


class Crashes(DecordSource):
    def read(self, indices):
        if self.path.name.startswith("hang"):
            faulthandler.disable()  # pytest's handler would print the crash's traceback
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().read(indices)


@pytest.fixture
def videos(tmp_path):
    """Six good videos and, fourth in the list, one named hang.mp4 (itself a good video)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(7):
        name = "hang.mp4" if i == 3 else f"v{i}.mp4"
        frames = np.repeat(rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), 12, axis=0)
        write_clip(tmp_path / name, frames)
        samples.append((name, i % 2))
    return tmp_path, samples


@pytest.fixture
def backend_as(monkeypatch):
    """``backend_as(cls)``: decord replaced by ``cls`` in the decoding children started from now on."""

    def use(cls):
        monkeypatch.setitem(decode._SOURCES, "decord", cls)
        decode_process.stop()  # the next child is forked with the replacement

    yield use
    decode_process.stop()  # before monkeypatch puts decord back: no child keeps the replacement


@pytest.mark.parametrize("cls", [HangsInRead, HangsInOpen])
def test_a_hung_decoder_is_stopped_and_names_the_video(videos, backend_as, cls):
    root, _ = videos
    backend_as(cls)
    with pytest.raises(VideoDecodeTimeout, match=r"hang\.mp4: decoding took longer than 1 s") as info:
        decode_frames(root / "hang.mp4", [0, 1], timeout=1)
    assert isinstance(info.value, VideoDecodeError) and info.value.path == str(root / "hang.mp4")
    # the next video gets a fresh decoding process
    assert decode_frames(root / "v0.mp4", [0, 5], timeout=1).shape == (2, 32, 32, 3)


def test_a_crashing_decoder_is_an_unreadable_video(videos, backend_as):
    root, _ = videos
    backend_as(Crashes)
    with pytest.raises(VideoDecodeError, match=r"hang\.mp4: the decoding process died \(killed by SIGSEGV\)"):
        decode_frames(root / "hang.mp4", [0, 1], timeout=30)
    assert decode_frames(root / "v0.mp4", [0, 5], timeout=30).shape == (2, 32, 32, 3)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_loaders_replace_a_video_that_hangs(videos, backend_as, num_workers, caplog):
    root, samples = videos
    backend_as(HangsInRead)
    kwargs = dict(batch_size=3, num_frames=T, size=S, decode_timeout=1, num_workers=num_workers)
    loader = build_loader(samples, root, train=True, seed=0, **kwargs)
    caplog.set_level(logging.INFO, logger="msta_fast.data")
    batches = list(loader)
    assert any("hang.mp4" in r.getMessage() for r in caplog.records)
    assert sum(len(b["video"]) for b in batches) == len(samples)  # the epoch went on
    assert loader.last_epoch_failures == [3]
    replaced = torch.cat([b["replaced"] for b in batches])
    assert replaced.sum() == 1 and 3 not in torch.cat([b["video_index"] for b in batches])[replaced].tolist()

    loader = build_loader(samples, root, train=False, **kwargs)
    caplog.clear()
    batches = list(loader)
    assert any("hang.mp4" in r.getMessage() for r in caplog.records)
    assert torch.cat([b["replaced"] for b in batches]).tolist() == [i == 3 for i in range(len(samples))]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bounded_decoding_gives_the_same_frames(videos, backend):
    root, _ = videos
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a read-only array handed to torch
        bounded = decode_frames(root / "v1.mp4", [3, 0, 3, 11], backend=backend, timeout=30)
    assert torch.equal(bounded, decode_frames(root / "v1.mp4", [3, 0, 3, 11], backend=backend))


@needs_torchcodec
def test_torchcodec_decodes_in_the_child_of_a_process_that_used_its_threads(tmp_path):
    # frames large enough for torch to split its work over threads (small ones run serially either way)
    path = tmp_path / "large.mp4"
    write_clip(path, np.random.default_rng(0).integers(0, 255, (8, 256, 340, 3), dtype=np.uint8))
    decode_process.stop()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.randn(4_000_000).sin_().sum()  # a parallel region: the OpenMP pool the child inherits a copy of
        frames = decode_frames(path, list(range(8)), backend="torchcodec", timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(frames, decode_frames(path, list(range(8)), backend="pyav"))


def test_without_a_limit_decoding_stays_in_this_process(videos):
    root, _ = videos
    decode_process.stop()
    decode_frames(root / "v0.mp4", [0], timeout=None)
    decode_frames(root / "v0.mp4", [0], timeout=0)
    assert decode_process._STATE.child is None
    decode_frames(root / "v0.mp4", [0], timeout=30)
    child = decode_process._STATE.child
    assert child is not None and child.pid != os.getpid()
    decode_process.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)  # stopped and reaped


def test_the_recipe_option_reaches_the_loader():
    from msta_fast.training.config import build_config
    from msta_fast.training.distributed import DistInfo
    from msta_fast.training.loaders import train_loader

    cfg = build_config(None, overrides=["data.decode_timeout=7.5", "data.loader=torch", "data.num_workers=0"])
    loader = train_loader([("a.mp4", 0)], None, cfg, DistInfo(), seed=0, batch_size=1)
    assert loader.dataset.decode_timeout == 7.5
    with pytest.raises(ValueError, match="decode_timeout"):
        build_config(None, overrides=["data.decode_timeout=-1"])

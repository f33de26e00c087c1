"""The items both loaders share: clip options, which video replaces an unreadable one, retry limits, the
replaced / failed_index bookkeeping; and the loader factory's choices."""

from pathlib import Path

import numpy as np
import pytest

from msta_fast.data import VideoDecodeError, build_loader
from msta_fast.data.dataset import TorchVideoLoader
from msta_fast.data.items import MAX_RETRIES, ClipOptions, read_or_replace, read_or_skip


def reader(unreadable: set[int]):
    calls = []

    def read(index: int) -> str:
        calls.append(index)
        if index in unreadable:
            raise VideoDecodeError(f"v{index}.mp4", "empty file")
        return f"frames of {index}"

    return read, calls


def test_a_readable_video_is_read_once():
    read, calls = reader(set())
    result = read_or_replace(read, 3, np.random.default_rng(0), 10, strict=False)
    assert (result.video_index, result.value, result.failed_index, result.replaced) == (3, "frames of 3", -1, False)
    assert calls == [3]


def test_training_replacements_come_from_the_items_generator(caplog):
    read, calls = reader({3, 4, 5})
    result = read_or_replace(read, 3, np.random.default_rng(7), 10, strict=False)
    # the replacements are the draws of the item's generator, in order, until one is readable
    draws = np.random.default_rng(7)
    expected = [3]
    while expected[-1] in {3, 4, 5}:
        expected.append(int(draws.integers(10)))
    assert calls == expected and len(calls) > 1
    assert result.video_index == expected[-1] and result.failed_index == 3 and result.replaced
    # every failure is logged, naming its file (a warnings.warn would be shown once per process)
    failures = [r.getMessage() for r in caplog.records if "replaced by another one" in r.getMessage()]
    assert len(failures) == len(calls) - 1 and "v3.mp4" in failures[0]


def test_training_gives_up_after_max_retries_and_strict_raises_at_once():
    read, calls = reader(set(range(4)))
    with pytest.raises(VideoDecodeError, match=f"{MAX_RETRIES + 1} videos in a row"):
        read_or_replace(read, 0, np.random.default_rng(0), 4, strict=False)
    assert len(calls) == MAX_RETRIES + 1
    read, calls = reader({0})
    with pytest.raises(VideoDecodeError, match="v0.mp4"):
        read_or_replace(read, 0, np.random.default_rng(0), 4, strict=True)
    assert calls == [0]


def test_evaluation_skips_an_unreadable_video(caplog):
    read, _ = reader({2})
    result = read_or_skip(read, 2, strict=False)
    assert any("black clip" in r.getMessage() and "v2.mp4" in r.getMessage() for r in caplog.records)
    assert (result.video_index, result.value, result.failed_index, result.replaced) == (2, None, 2, True)
    assert read_or_skip(read, 1, strict=False).value == "frames of 1"
    with pytest.raises(VideoDecodeError):
        read_or_skip(read, 2, strict=True)


def test_clip_options():
    assert ClipOptions(train=True, num_clips=4, num_crops=3).num_views == 1  # views are an evaluation option
    assert ClipOptions(train=False, num_clips=4, num_crops=3).num_views == 12
    with pytest.raises(ValueError, match="num_crops"):
        ClipOptions(train=False, num_crops=2)


def test_the_factory_chooses_the_loader():
    samples = [("a.mp4", 0), ("b.mp4", 1), ("c.mp4", 0)]
    loader = build_loader(samples, "videos", train=False, batch_size=2, num_clips=2, num_crops=3)  # auto, CPU
    assert isinstance(loader, TorchVideoLoader)
    assert loader.samples == samples and loader.num_views == 6 and len(loader.sampler) == 18 and len(loader) == 9
    assert loader.path(1) == Path("videos/b.mp4")
    with pytest.raises(ValueError, match="unknown loader"):
        build_loader(samples, None, train=True, batch_size=2, loader="nvdec")
    with pytest.raises(ValueError, match="non-empty"):
        build_loader([], None, train=True, batch_size=2)

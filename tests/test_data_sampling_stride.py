"""Frame sampling "stride" (M2-CLIP's K-400 recipe: T frames ``stride`` apart) against hand-computed indices, the
dispatch by ``sampling``, the option threaded through the datasets and the recipes' loaders, and 4 test crops."""

import contextlib

import numpy as np
import pytest
import torch

from msta_fast.data import dataset as dataset_module
from msta_fast.data.dataset import VideoDataset
from msta_fast.data.items import ClipOptions
from msta_fast.data.sampling import frame_indices, segment_indices, stride_indices
from msta_fast.data.transforms import eval_crops
from msta_fast.training.config import build_config
from msta_fast.training.distributed import DistInfo
from msta_fast.training.loaders import train_loader


def test_training_clip_starts_anywhere_the_span_fits():
    # 8 frames 16 apart span 113 frames: in a 200-frame video the start is uniform in 0..87
    starts = set()
    for seed in range(300):
        idx = stride_indices(200, 8, 16, train=True, rng=np.random.default_rng(seed))
        assert idx.dtype == np.int64 and np.array_equal(np.diff(idx), [16] * 7)
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 87 and len(starts) > 60
    # exactly the span: the only start is 0
    assert stride_indices(113, 8, 16, train=True, rng=np.random.default_rng(0)).tolist() == list(range(0, 113, 16))


def test_training_clip_in_a_short_video_repeats_the_last_index_inside():
    idx = stride_indices(50, 8, 16, train=True, rng=np.random.default_rng(0))
    assert idx.tolist() == [0, 16, 32, 48, 48, 48, 48, 48]
    assert stride_indices(1, 4, 16, train=True, rng=np.random.default_rng(0)).tolist() == [0, 0, 0, 0]


def test_test_clips_spread_their_starts_over_the_video():
    # slack = 200 - 113 = 87: one clip starts at 43; three at 0, round(43.5) = 44, 87
    assert stride_indices(200, 8, 16, train=False).tolist() == list(range(43, 43 + 113, 16))
    starts = [int(stride_indices(200, 8, 16, train=False, clip=c, num_clips=3)[0]) for c in range(3)]
    assert starts == [0, 44, 87]
    # a short video: the clip starts at 0, indices past the end take the last frame
    assert stride_indices(50, 8, 16, train=False, clip=2, num_clips=3).tolist() == [0, 16, 32, 48, 49, 49, 49, 49]


def test_errors_and_dispatch():
    with pytest.raises(ValueError, match="stride must be >= 1"):
        stride_indices(10, 4, 0, train=False)
    with pytest.raises(ValueError, match="needs rng"):
        stride_indices(10, 4, 2, train=True)
    with pytest.raises(ValueError, match="sampling must be one of"):
        frame_indices(10, 4, train=False, sampling="random")
    assert np.array_equal(frame_indices(90, 8, train=False), segment_indices(90, 8, train=False))
    assert np.array_equal(frame_indices(90, 8, train=False, sampling="stride", stride=4),
                          stride_indices(90, 8, 4, train=False))


class _FakeVideo:
    """Records the frame indices a dataset reads."""

    num_frames = 200
    reads: list = []

    def read(self, indices):
        self.reads.append(np.asarray(indices).tolist())
        return torch.zeros(len(indices), 40, 48, 3, dtype=torch.uint8)


@pytest.fixture
def fake_videos(monkeypatch):
    _FakeVideo.reads = []
    monkeypatch.setattr(dataset_module, "open_video", lambda *args, **kwargs: contextlib.nullcontext(_FakeVideo()))
    return _FakeVideo.reads


def test_the_dataset_reads_the_frames_of_its_sampling(fake_videos):
    samples = [("a.mp4", 0)]
    train = VideoDataset(samples, None, ClipOptions(num_frames=8, size=16, train=True, augment=False,
                                                    sampling="stride", frame_stride=16))
    train[(0, 7)]
    assert fake_videos[-1] == stride_indices(200, 8, 16, train=True, rng=np.random.default_rng(7)).tolist()
    test = VideoDataset(samples, None, ClipOptions(num_frames=8, size=16, train=False, num_clips=3,
                                                   sampling="stride", frame_stride=16))
    test[2]  # video 0, view 2: clip 2 of 3
    assert fake_videos[-1] == stride_indices(200, 8, 16, train=False, clip=2, num_clips=3).tolist()
    default = VideoDataset(samples, None, ClipOptions(num_frames=8, size=16, train=False))
    default[0]
    assert fake_videos[-1] == segment_indices(200, 8, train=False).tolist()


def test_the_recipe_option_reaches_the_loader():
    cfg = build_config(None, overrides=["data.sampling=stride", "data.frame_stride=4", "data.loader=torch",
                                        "data.num_workers=0"])
    loader = train_loader([("a.mp4", 0)], None, cfg, DistInfo(), seed=0, batch_size=1)
    assert (loader.dataset.options.sampling, loader.dataset.options.frame_stride) == ("stride", 4)


def test_four_test_crops_along_the_long_side():
    # 256 x 340 frames: the 256-pixel square slides over a margin of 84 pixels
    assert [box[1] for box in eval_crops(256, 340, 224, 4)] == [0, 21, 42, 84]
    assert all(box[0] == 0 and box[2:] == (256, 256) for box in eval_crops(256, 340, 224, 4))
    assert [box[0] for box in eval_crops(340, 256, 224, 4)] == [0, 21, 42, 84]  # portrait: along the height
    with pytest.raises(ValueError, match="num_crops must be one of"):
        eval_crops(256, 340, 224, 2)

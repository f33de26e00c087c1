"""The DALI loader has the CPU loader's semantics: same items, frames, crops and augmentation (within the codec
rounding of DALI's YUV->RGB and resize). On the CPU DALI decodes VP9, so these clips are VP9."""

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from msta_fast.data import build_loader
from msta_fast.data.dali_loader import DaliVideoLoader
from msta_fast.data.encode import write_video
from msta_fast.data.items import ClipOptions, black_clip
from msta_fast.data.synthetic import render_clip

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None,
                                reason="nvidia-dali-cuda130 is not installed")
T, S = 4, 24


@pytest.fixture(scope="module")
def vp9_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("vp9")
    samples = []
    for i in range(10):
        frames = render_clip(i % 24, np.random.default_rng(i), size=32, num_frames=12)
        # landscape frames so that the three eval crops differ
        frames = np.concatenate([frames, frames[:, :, :16]], axis=2)
        write_video(root / f"v{i}.webm", frames, codec="vp9")
        samples.append((f"v{i}.webm", i % 3))
    return root, samples


def collect(loader):
    batches = list(loader)
    return {key: torch.cat([b[key].cpu() for b in batches]) for key in batches[0]}


def assert_close_clips(a, b):
    diff = (a - b).abs()
    # normalised units: 0.1 is about 6 levels of 255
    assert diff.mean() < 0.1, diff.mean()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_train_loader_matches_the_cpu_loader(vp9_list, device):
    root, samples = vp9_list
    kwargs = dict(train=True, batch_size=4, num_frames=T, size=S, seed=3)
    cpu = collect(build_loader(samples, root, loader="torch", backend="pyav", **kwargs))
    dali = collect(build_loader(samples, root, loader="dali", device=device, **kwargs))
    assert cpu.keys() == dali.keys()
    for key in ("label", "video_index", "view_index", "replaced", "failed_index", "item_seed"):
        assert torch.equal(cpu[key], dali[key]), key
    assert len(set(dali["item_seed"].tolist())) == 10  # one seed per item
    assert dali["video"].shape == (10, T, 3, S, S)
    assert_close_clips(cpu["video"], dali["video"])


def test_multi_view_eval_matches_the_cpu_loader(vp9_list):
    root, samples = vp9_list
    kwargs = dict(train=False, batch_size=7, num_frames=T, size=S, num_clips=2, num_crops=3)
    cpu = collect(build_loader(samples, root, loader="torch", backend="pyav", **kwargs))
    dali = collect(build_loader(samples, root, loader="dali", device="cpu", **kwargs))
    assert len(dali["video"]) == 60 and cpu.keys() == dali.keys()
    for key in ("label", "video_index", "view_index", "replaced", "failed_index", "item_seed"):
        assert torch.equal(cpu[key], dali[key]), key
    assert_close_clips(cpu["video"], dali["video"])
    assert not torch.allclose(dali["video"][0], dali["video"][2])  # left and right crops


def test_unreadable_videos_are_replaced(vp9_list, tmp_path):
    root, samples = vp9_list
    (tmp_path / "empty.webm").write_bytes(b"")
    data = (root / "v0.webm").read_bytes()
    (tmp_path / "truncated.webm").write_bytes(data[:200])
    listed = [(str(root / p), y) for p, y in samples[:4]]
    listed += [(str(tmp_path / "empty.webm"), 1), (str(tmp_path / "truncated.webm"), 2)]
    kwargs = dict(loader="dali", batch_size=3, num_frames=T, size=S, device="cpu")
    loader = build_loader(listed, None, train=False, **kwargs)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = collect(loader)
    assert out["replaced"].tolist() == [False] * 4 + [True, True]
    assert sorted(loader.last_epoch_failures) == [4, 5]
    assert out["label"].tolist() == [y for _, y in listed]
    train = build_loader(listed, None, train=True, **kwargs)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = collect(train)
    assert out["replaced"].sum() == 2 and out["video"].shape == (6, T, 3, S, S)
    assert not {4, 5} & set(out["video_index"].tolist())


def test_a_failed_batch_is_decoded_one_video_at_a_time(vp9_list, monkeypatch):
    root, samples = vp9_list
    kwargs = dict(train=True, loader="dali", batch_size=5, num_frames=T, size=S, seed=1, device="cpu")
    normal = collect(build_loader(samples, root, **kwargs))

    def broken(self, items):
        raise RuntimeError("Critical error in pipeline")

    monkeypatch.setattr(DaliVideoLoader, "_run_dali", broken)
    with pytest.warns(UserWarning, match="one by one"):
        fallback = collect(build_loader(samples, root, **kwargs))
    assert torch.equal(normal["video_index"], fallback["video_index"]) and not fallback["replaced"].any()
    assert_close_clips(normal["video"], fallback["video"])


def test_a_video_dali_cannot_decode_is_replaced_as_the_torch_loader_does(vp9_list, tmp_path):
    """DALI's CPU decoder has no H.264: the file probes fine, fails its batch, and is then replaced item by item
    as the torch loader (decoding with DALI too) replaces it: by another video in training, a black clip in
    evaluation."""
    root, samples = vp9_list
    frames = render_clip(0, np.random.default_rng(0), size=32, num_frames=12)
    write_video(tmp_path / "h264.mp4", frames, codec="h264")
    listed = [(str(root / p), y) for p, y in samples[:6]] + [(str(tmp_path / "h264.mp4"), 2)]
    for train in (True, False):
        kwargs = dict(train=train, batch_size=4, num_frames=T, size=S, seed=2, device="cpu")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            dali_loader = build_loader(listed, None, loader="dali", **kwargs)
            dali = collect(dali_loader)
            torch_loader = build_loader(listed, None, loader="torch", backend="dali", **kwargs)
            reference = collect(torch_loader)
        assert dali.keys() == reference.keys()
        for key in ("label", "video_index", "view_index", "replaced", "failed_index", "item_seed"):
            assert torch.equal(dali[key], reference[key]), (train, key)
        assert_close_clips(dali["video"], reference["video"])
        assert dali["failed_index"].tolist().count(6) == 1 and dali_loader.last_epoch_failures == [6]
        replaced = dali["replaced"].nonzero().item()
        if train:
            assert dali["video_index"][replaced] != 6
        else:
            assert torch.equal(dali["video"][replaced], black_clip(ClipOptions(train=False, num_frames=T, size=S)))

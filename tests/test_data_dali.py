"""The DALI loader has the CPU loader's semantics: same items, frames, crops and augmentation (within the codec
rounding of DALI's YUV->RGB and resize). On the CPU DALI decodes VP9, so these clips are VP9."""

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from msta_fast.data import DaliVideoLoader, build_eval_loader, build_train_loader
from msta_fast.data.encode import write_video
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
    cpu = collect(build_train_loader(samples, root, batch_size=4, num_frames=T, size=S, seed=3, backend="pyav"))
    dali = collect(DaliVideoLoader(samples, root, batch_size=4, num_frames=T, size=S, seed=3, device=device))
    for key in ("label", "video_index", "view_index", "replaced", "item_seed"):
        assert torch.equal(cpu[key], dali[key]), key
    assert len(set(dali["item_seed"].tolist())) == 10  # one seed per item
    assert dali["video"].shape == (10, T, 3, S, S)
    assert_close_clips(cpu["video"], dali["video"])


def test_multi_view_eval_matches_the_cpu_loader(vp9_list):
    root, samples = vp9_list
    kwargs = dict(batch_size=7, num_frames=T, size=S, num_clips=2, num_crops=3)
    cpu = collect(build_eval_loader(samples, root, backend="pyav", **kwargs))
    dali = collect(DaliVideoLoader(samples, root, train=False, device="cpu", **kwargs))
    assert len(dali["video"]) == 60
    for key in ("label", "video_index", "view_index"):
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
    loader = DaliVideoLoader(listed, None, batch_size=3, num_frames=T, size=S, train=False, device="cpu")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = collect(loader)
    assert out["replaced"].tolist() == [False] * 4 + [True, True]
    assert sorted(loader.last_epoch_failures) == [4, 5]
    assert out["label"].tolist() == [y for _, y in listed]
    train = DaliVideoLoader(listed, None, batch_size=3, num_frames=T, size=S, device="cpu")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        out = collect(train)
    assert out["replaced"].sum() == 2 and out["video"].shape == (6, T, 3, S, S)
    assert not {4, 5} & set(out["video_index"].tolist())


def test_a_failed_batch_is_decoded_one_video_at_a_time(vp9_list, monkeypatch):
    root, samples = vp9_list
    kwargs = dict(batch_size=5, num_frames=T, size=S, seed=1, device="cpu")
    normal = collect(DaliVideoLoader(samples, root, **kwargs))

    def broken(self, items):
        raise RuntimeError("Critical error in pipeline")

    monkeypatch.setattr(DaliVideoLoader, "_run_dali", broken)
    with pytest.warns(UserWarning, match="one by one"):
        fallback = collect(DaliVideoLoader(samples, root, **kwargs))
    assert torch.equal(normal["video_index"], fallback["video_index"]) and not fallback["replaced"].any()
    assert_close_clips(normal["video"], fallback["video"])

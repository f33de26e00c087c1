"""Every loader and backend sees a rotated video upright, and portrait and odd-sized videos are resized and cropped
as landscape ones are: the clips of a video stored with a display rotation are the turned clips of the same video
stored upright, and a portrait video's crops are its landscape twin's, transposed."""

import importlib.util

import numpy as np
import pytest
import torch
from decode_helpers import CPU_BACKENDS, stored_rotation, write_clip

from msta_fast.data import build_loader
from msta_fast.data.dali_loader import stored_box

HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
LOADERS = [dict(loader="torch", backend=b) for b in ("decord", "pyav")] + [
    pytest.param(dict(loader="torch", backend="torchcodec"), marks=CPU_BACKENDS[2].marks, id="torchcodec"),
    pytest.param(dict(loader="dali", device="cpu"), id="dali",
                 marks=pytest.mark.skipif(not HAS_DALI, reason="nvidia-dali-cuda130 is not installed")),
]
T, S = 4, 16


def scene(height: int, width: int, frames: int = 10) -> np.ndarray:
    """A smooth gradient with a square moving to the right: nothing in it is symmetric."""
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for t in range(frames):
        img = np.stack([x * 200 // width + 20, y * 200 // height + 30, np.full_like(x, 90 + 8 * t)], -1)
        img[4:12, 3 + 2 * t:11 + 2 * t] = (250, 250, 40)
        out.append(img)
    return np.stack(out).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """VP9 (every backend and DALI's CPU decoder read it): a landscape clip, the same stored frames with a display
    rotation (portrait when shown), and an odd-sized landscape clip with its transposed, portrait twin."""
    root = tmp_path_factory.mktemp("orientation")
    write_clip(root / "landscape.webm", scene(24, 40), "vp9")
    write_clip(root / "turned.webm", scene(24, 40), "vp9", rotation=90)
    odd = scene(33, 47)
    write_clip(root / "odd.webm", odd, "vp9")
    write_clip(root / "odd_portrait.webm", np.ascontiguousarray(odd.transpose(0, 2, 1, 3)), "vp9")
    assert stored_rotation(root / "turned.webm") == 90
    return root


def clips(root, names, **kwargs):
    loader = build_loader([(n, 0) for n in names], root, batch_size=8, num_frames=T, size=S, **kwargs)
    return torch.cat([b["video"].cpu() for b in loader])


@pytest.mark.parametrize("kind", LOADERS)
def test_a_rotated_video_gives_the_turned_clips_of_the_upright_one(videos, kind):
    out = clips(videos, ["landscape.webm", "turned.webm"], train=False, num_crops=3, **kind)
    landscape, turned = out[:3], out[3:]
    assert turned.shape == (3, T, 3, S, S)
    # turned 90 degrees counter-clockwise, the landscape's left crop is the portrait's bottom one
    for crop in range(3):
        assert torch.allclose(turned[crop], torch.rot90(landscape[2 - crop], 1, dims=(-2, -1)), atol=1e-4), crop
    assert not torch.allclose(turned[0], turned[2], atol=0.1)  # three different crops along the long side


@pytest.mark.parametrize("kind", LOADERS)
def test_every_loader_augments_a_rotated_video_alike(videos, kind):
    kwargs = dict(train=True, seed=4, flip_prob=0.5)
    names = ["turned.webm"] * 8  # 8 items, each its own crop, flip and jitter
    reference = clips(videos, names, loader="torch", backend="pyav", **kwargs)
    other = clips(videos, names, **kind, **kwargs)
    # DALI resizes and converts colours a little differently (0.1 normalised is about 6 levels of 255)
    assert (other - reference).abs().mean() < (0.1 if kind["loader"] == "dali" else 1e-4)


@pytest.mark.parametrize("kind", LOADERS)
def test_odd_and_portrait_sizes_crop_as_landscape(videos, kind):
    out = clips(videos, ["odd.webm", "odd_portrait.webm"], train=False, num_crops=3, **kind)
    landscape, portrait = out[:3], out[3:]
    for crop in range(3):  # left / centre / right of the landscape = top / centre / bottom of its transpose
        diff = (portrait[crop] - landscape[crop].transpose(-2, -1)).abs().mean()
        assert diff < 0.05, (crop, diff)  # the two were encoded apart: codec rounding only
    assert not torch.allclose(portrait[0], portrait[2], atol=0.1)
    train = clips(videos, ["odd.webm", "odd_portrait.webm"], train=True, seed=1, **kind)
    assert train.shape == (2, T, 3, S, S) and torch.isfinite(train).all()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_the_dali_crop_of_a_stored_frame_is_the_upright_crop(turns):
    stored = np.arange(6 * 10).reshape(6, 10)
    upright = np.rot90(stored, turns)
    box = (1, 2, 3, 2) if upright.shape == (6, 10) else (2, 1, 4, 3)
    top, left, h, w = box
    s_top, s_left, s_h, s_w = stored_box(box, turns, upright.shape)
    crop = stored[s_top:s_top + s_h, s_left:s_left + s_w]
    assert np.array_equal(np.rot90(crop, turns), upright[top:top + h, left:left + w])

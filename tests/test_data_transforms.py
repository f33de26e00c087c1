"""Clip augmentation: the paper's parameters, one set per clip, correct flips, crops and normalisation."""

import numpy as np
import pytest
import torch

from msta_fast import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from msta_fast.data.transforms import (
    SCALES,
    AugmentParams,
    apply_train,
    eval_crops,
    eval_transform,
    sample_train_params,
    train_transform,
)


def denormalize(clip, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return clip * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


def test_parameter_distribution():
    rng = np.random.default_rng(0)
    h, w, n = 120, 160, 3000
    draws = [sample_train_params(h, w, rng) for _ in range(n)]
    sizes = [int(min(h, w) * s) for s in SCALES]
    for p in draws:
        top, left, ch, cw = p.crop
        assert ch in sizes and cw in sizes and abs(sizes.index(ch) - sizes.index(cw)) <= 1
        assert 0 <= top <= h - ch and 0 <= left <= w - cw
    for name, rate in (("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2)):
        freq = np.mean([bool(getattr(p, name)) for p in draws])
        assert abs(freq - rate) < 4 * np.sqrt(rate * (1 - rate) / n), (name, freq)
    jittered = [dict(p.jitter) for p in draws if p.jitter]
    assert all(set(j) == {"brightness", "contrast", "saturation", "hue"} for j in jittered)
    assert max(abs(j["hue"]) for j in jittered) <= 0.1 and min(j["brightness"] for j in jittered) >= 0.6
    assert len({tuple(name for name, _ in p.jitter) for p in draws if p.jitter}) > 1  # random order


def test_one_set_of_parameters_per_clip():
    frame = torch.randint(0, 256, (1, 40, 56, 3), dtype=torch.uint8)
    rng = np.random.default_rng(1)
    for _ in range(10):
        clip = train_transform(frame.expand(6, -1, -1, -1), 24, rng)
        assert clip.shape == (6, 3, 24, 24)
        assert torch.allclose(clip, clip[:1].expand_as(clip))


def test_flip_and_grayscale_and_normalisation():
    frames = torch.randint(0, 256, (3, 32, 48, 3), dtype=torch.uint8)
    plain = AugmentParams((0, 8, 32, 32), flip=False, jitter=(), grayscale=False)
    flipped = AugmentParams((0, 8, 32, 32), flip=True, jitter=(), grayscale=False)
    a, b = apply_train(frames, 32, plain), apply_train(frames, 32, flipped)
    assert torch.allclose(a.flip(-1), b)
    expected = (frames[:, :, 8:40].permute(0, 3, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
    assert torch.allclose(a, expected / torch.tensor(IMAGENET_STD).view(3, 1, 1), atol=1e-5)
    gray = denormalize(apply_train(frames, 32, AugmentParams((0, 8, 32, 32), False, (), True)))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-5) and torch.allclose(gray[:, 1], gray[:, 2], atol=1e-5)
    jittered = apply_train(frames, 32, AugmentParams((0, 8, 32, 32), False, (("brightness", 1.3),), False))
    assert not torch.allclose(jittered, a)
    clip_norm = eval_transform(frames, 32, mean=CLIP_MEAN, std=CLIP_STD)
    assert torch.allclose(denormalize(clip_norm, CLIP_MEAN, CLIP_STD), denormalize(eval_transform(frames, 32)),
                          atol=1e-5)


@pytest.mark.parametrize("h, w", [(30, 50), (50, 30)])
def test_three_crops_along_the_long_side(h, w):
    boxes = eval_crops(h, w, 16, 3)
    side = min(h, w)
    assert all(b[2:] == (side, side) for b in boxes)
    long_axis = 1 if w > h else 0
    starts = [b[long_axis] for b in boxes]
    assert starts == [0, (max(h, w) - side + 1) // 2, max(h, w) - side]
    assert eval_crops(h, w, 16, 1)[0] == boxes[1]
    frames = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    frames[..., 0] = torch.arange(max(h, w))[: w].view(1, 1, w) if w > h else 0
    crops = [eval_transform(frames, 16, c, 3) for c in range(3)]
    assert all(c.shape == (2, 3, 16, 16) for c in crops)
    if w > h:  # left, centre, right: the red ramp increases
        means = [denormalize(c)[:, 0].mean().item() for c in crops]
        assert means[0] < means[1] < means[2]
    with pytest.raises(ValueError, match="num_crops"):
        eval_crops(h, w, 16, 2)

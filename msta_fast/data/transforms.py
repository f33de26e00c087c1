"""Clip augmentation and normalisation, one set of parameters per clip (every frame transformed alike).

Training (as ViFi-CLIP / X-CLIP, which MSTA follows): multi-scale crop (scales 1, .875, .75, .66 of the short
side, aspect distortion of at most one scale step) resized to ``size``, horizontal flip (p 0.5), colour jitter
(p 0.8; brightness .4, contrast .4, saturation .2, hue .1, random order), grayscale (p 0.2). Testing: short side
resized to ``size``, then a centre crop or three crops along the long side (left/centre/right). Then ImageNet
normalisation (``mean``/``std`` arguments: pass ``CLIP_MEAN``/``CLIP_STD`` for OpenAI CLIP weights). The
parameters are drawn in Python (``sample_train_params``) so that the DALI loader applies the very same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from msta_fast.constants import IMAGENET_MEAN, IMAGENET_STD

SCALES = (1.0, 0.875, 0.75, 0.66)
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
CROP_POSITIONS = {1: (0.5,), 3: (0.0, 0.5, 1.0), 4: (0.0, 0.25, 0.5, 1.0)}  # test crops, fractions of the margin


@dataclass
class AugmentParams:
    """Augmentation of one clip. Crop box in pixels of the decoded frame; jitter factors as torchvision's."""

    crop: tuple[int, int, int, int]  # (top, left, height, width)
    flip: bool
    jitter: tuple[tuple[str, float], ...]  # (op, factor) in the order applied; empty = no jitter
    grayscale: bool


def sample_train_params(height: int, width: int, rng: np.random.Generator, *, p_jitter: float = 0.8,
                        p_gray: float = 0.2, p_flip: float = 0.5, scales=SCALES, max_distort: int = 1) -> AugmentParams:
    """Draw the training augmentation of one clip whose frames are ``height x width``."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    # TSN's multi-scale crop: a width and a height from the scale list, at most max_distort steps apart
    pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[rng.integers(len(pairs))]
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    flip = bool(rng.random() < p_flip)
    jitter: tuple[tuple[str, float], ...] = ()
    if rng.random() < p_jitter:
        factors = {
            "brightness": rng.uniform(1 - JITTER["brightness"], 1 + JITTER["brightness"]),
            "contrast": rng.uniform(1 - JITTER["contrast"], 1 + JITTER["contrast"]),
            "saturation": rng.uniform(1 - JITTER["saturation"], 1 + JITTER["saturation"]),
            "hue": rng.uniform(-JITTER["hue"], JITTER["hue"]),
        }
        order = rng.permutation(len(factors))
        names = list(factors)
        jitter = tuple((names[i], float(factors[names[i]])) for i in order)
    gray = bool(rng.random() < p_gray)
    return AugmentParams((top, left, crop_h, crop_w), flip, jitter, gray)


def eval_crops(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int, int, int]]:
    """Crop boxes ``(top, left, h, w)`` in the decoded frame, after a short-side resize to ``size``, mapped back.

    ``num_crops`` 1: centre; 3: start, centre and end of the long side (left/centre/right for landscape); 4: at 0,
    1/4, 1/2 and all of the margin along the long side (M2-CLIP's 4 spatial views).
    """
    if num_crops not in CROP_POSITIONS:
        raise ValueError(f"num_crops must be one of {sorted(CROP_POSITIONS)}, got {num_crops}")
    side = min(height, width)  # the crop is a square of the short side, which resizes to size x size
    positions = CROP_POSITIONS[num_crops]
    boxes = []
    for p in positions:
        top = round((height - side) * p) if height > width else (height - side) // 2
        left = round((width - side) * p) if width >= height else (width - side) // 2
        boxes.append((top, left, side, side))
    return boxes


def normalize(clip: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Float clip ``(..., 3, H, W)`` in [0, 1] -> normalised with per-channel ``mean`` and ``std``."""
    mean = torch.tensor(mean, dtype=clip.dtype, device=clip.device).view(3, 1, 1)
    std = torch.tensor(std, dtype=clip.dtype, device=clip.device).view(3, 1, 1)
    return (clip - mean) / std


def crop_resize(frames: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float ``(T, 3, size, size)`` in [0, 1]: crop ``box``, bilinear resize."""
    top, left, h, w = box
    clip = frames[:, top:top + h, left:left + w].permute(0, 3, 1, 2).float().div_(255)
    if (h, w) != (size, size):
        clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return clip.clamp_(0, 1)


def apply_color(clip: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Colour jitter then grayscale of a float ``(T, 3, H, W)`` clip in [0, 1], the same for every frame."""
    adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
              "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}
    for name, factor in params.jitter:
        clip = adjust[name](clip, factor)
    if params.grayscale:
        clip = TF.rgb_to_grayscale(clip, num_output_channels=3)
    return clip


def train_transform(frames: torch.Tensor, size: int, rng: np.random.Generator, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, **probabilities) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> normalised float ``(T, 3, size, size)`` with random training augmentation."""
    params = sample_train_params(frames.shape[1], frames.shape[2], rng, **probabilities)
    return apply_train(frames, size, params, mean, std)


def apply_train(frames: torch.Tensor, size: int, params: AugmentParams, mean=IMAGENET_MEAN,
                std=IMAGENET_STD) -> torch.Tensor:
    """Training augmentation with given parameters: uint8 ``(T, H, W, 3)`` -> float ``(T, 3, size, size)``."""
    clip = crop_resize(frames, params.crop, size)
    if params.flip:
        clip = clip.flip(-1)
    return normalize(apply_color(clip, params), mean, std)


def eval_transform(frames: torch.Tensor, size: int, crop: int = 0, num_crops: int = 1, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> normalised float ``(T, 3, size, size)``: spatial crop ``crop`` of ``num_crops``."""
    box = eval_crops(frames.shape[1], frames.shape[2], size, num_crops)[crop]
    return normalize(crop_resize(frames, box, size), mean, std)

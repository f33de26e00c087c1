"""Contrastive video-caption pre-training of a small ViCLIP on the synthetic captions (``recipes/pretrain.py``).

It stands in for ViCLIP's own pre-training on InternVid so that the built-in default has a foundation model to
transfer: a symmetric InfoNCE loss between video and caption embeddings, where videos that share a caption
text count as positives of each other (soft targets), with a learnable temperature.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msta_fast.data import VideoDecodeError, decode_frames, segment_indices
from msta_fast.data import num_frames as num_frames_of
from msta_fast.data.synthetic import SHAPES, load_captions
from msta_fast.data.transforms import eval_transform
from msta_fast.models import build_viclip, tokenize
from msta_fast.progress import progress_bar
from msta_fast.training.schedule import build_optimizer, build_scheduler
from msta_fast.training.unreadable import record_unreadable

log = logging.getLogger(__name__)

MIN_TEMP = 0.01


def soft_targets(caption_ids: torch.Tensor) -> torch.Tensor:
    """(B,) caption ids -> (B, B) rows summing to 1 over the items with the same caption."""
    same = (caption_ids.unsqueeze(0) == caption_ids.unsqueeze(1)).float()
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, temp: torch.Tensor,
                     caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets: video, text (B, E) unnormalised, caption_ids (B,) -> scalar."""
    logits = F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t() / temp
    target = soft_targets(caption_ids)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def decode_all(data_root: Path, videos: list[str], backend: str, progress: bool,
               max_unreadable: float = 0.02) -> tuple[torch.Tensor, list[int]]:
    """Every frame of every readable video -> (uint8 (N', F, H, W, 3), the indices of those videos); the synthetic
    videos are tiny and equally long. Unreadable ones are left out, named, and stop the pre-training when more
    than ``max_unreadable`` of them (or all) are."""
    frames, kept, failed = [], [], []
    for i, video in enumerate(progress_bar(videos, desc="decoding captioned videos", disable=not progress)):
        path = data_root / video
        try:
            frames.append(decode_frames(path, np.arange(num_frames_of(path, backend)), backend=backend))
            kept.append(i)
        except VideoDecodeError as e:
            log.warning("pre-training: leaving out an unreadable video (%s)", e)
            failed.append(video)
    record_unreadable(None, "pre-training", failed, len(videos), max_unreadable)
    return torch.stack(frames), kept


def sample_clips(videos: torch.Tensor, num_frames: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> normalised float (B, T, 3, size, size): a random frame per segment, no flips
    (a flip would turn "moving left" into "moving right")."""
    clips = []
    for video in videos:
        index = torch.from_numpy(segment_indices(video.shape[0], num_frames, train=True, rng=rng))
        clips.append(eval_transform(video[index], size))
    return torch.stack(clips)


def mixed_batches(groups: list[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches: half drawn from a single group (hard negatives), half at random.

    With random batches of a few dozen clips, colour and shape alone tell the captions apart, and the model
    never needs the motion; batches of one shape (``groups``: a group id per item, here the shape named in
    the caption) make it learn the motion too, while the random half keeps the shapes apart.
    """
    groups = np.asarray(groups)
    order = rng.permutation(len(groups))
    half = len(order) // 2
    batches = [order[i:i + batch_size] for i in range(0, half, batch_size)]
    rest = order[half:]
    for g in np.unique(groups[rest]):
        members = rest[groups[rest] == g]
        batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pretrain_contrastive(data_root: str | os.PathLike, out_path: str | os.PathLike, *, model: str = "viclip-tiny",
                         overrides: dict | None = None, num_frames: int = 8, image_size: int = 32, epochs: int = 20,
                         lr: float = 2e-3, batch_size: int = 32, warmup_epochs: float = 1.0,
                         weight_decay: float = 0.05, seed: int = 0, backend: str = "decord",
                         device: str | torch.device = "cpu", progress: bool = True, log=None) -> Path:
    """Pre-train a ViCLIP from scratch on ``<data_root>/captions.json`` and save ``{"model": state_dict,
    "architecture": its ViCLIPConfig fields}`` to ``out_path``: ``msta_fast.load_viclip`` reads the head counts,
    which the shapes cannot tell, off ``architecture``. ``log(step, loss=, temp=, lr=)`` gets the curve. Returns
    ``out_path``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    data_root, out_path = Path(data_root), Path(out_path)
    pairs = load_captions(data_root)
    texts = sorted({caption for _, caption in pairs})
    caption_id = {t: i for i, t in enumerate(texts)}
    samples = [(video, caption_id[caption]) for video, caption in pairs]
    token_ids = tokenize(texts)

    net = build_viclip(model, num_frames=num_frames, image_size=image_size, **(overrides or {})).to(device)
    with torch.no_grad():
        net.temp.fill_(0.07)  # CLIP's initial temperature for training from scratch
    # The captions use a few dozen of the 49,408 tokens: random fixed token embeddings suffice, and freezing
    # them saves most of the optimizer's work on a CPU.
    net.text_encoder.token_embedding.weight.requires_grad_(False)
    clips, kept = decode_all(data_root, [video for video, _ in samples], backend, progress)  # (N, F, H, W, 3)
    samples, pairs = [samples[i] for i in kept], [pairs[i] for i in kept]
    labels = torch.tensor([label for _, label in samples])
    shapes = [next((i for i, shape in enumerate(SHAPES) if shape in caption), -1) for _, caption in pairs]
    steps_per_epoch = len(mixed_batches(shapes, batch_size, np.random.default_rng(0)))
    optimizer = build_optimizer(net, lr, weight_decay)
    scheduler = build_scheduler(optimizer, epochs * steps_per_epoch, math.ceil(warmup_epochs * steps_per_epoch))
    net.train()
    bar = progress_bar(total=epochs * steps_per_epoch, desc="pre-training", disable=not progress)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        for batch in mixed_batches(shapes, batch_size, rng):
            items = torch.from_numpy(batch)
            ids = labels[items]
            video = net.encode_video(sample_clips(clips[items], num_frames, image_size, rng).to(device))
            text = net.encode_text(token_ids[ids].to(device))
            loss = contrastive_loss(video, text, net.temp, ids.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                net.temp.clamp_(min=MIN_TEMP)
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", temp=f"{net.temp.item():.3f}")
            if log is not None:
                log(scheduler.last_epoch, loss=loss.item(), temp=net.temp.item(), lr=scheduler.get_last_lr()[0])
    bar.close()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    torch.save({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "architecture": dataclasses.asdict(net.config)}, tmp)
    os.replace(tmp, out_path)
    return out_path

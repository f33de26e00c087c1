"""Evaluation: multi-view score averaging, top-1/top-5, every video exactly once across ranks.

Each (video, view) item of an eval loader is scored as ``softmax(cos(video, class texts) / temp)``; the ranks'
scores are gathered in rank order (``EvalSampler`` pads the last rank's block), and ``aggregate_views`` averages
the views of each video, counting padding duplicates once. Softmax scores are averaged, not logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from msta_fast.data.sampling import aggregate_views
from msta_fast.training.distributed import DistInfo, gather_batch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """scores (N, C), labels (N,) -> {"top1": %, "top5": %} (k capped at C)."""
    out = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (scores.topk(kk, dim=1).indices == labels.unsqueeze(1)).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


@torch.no_grad()
def evaluate(score_fn: Callable[[torch.Tensor], torch.Tensor], loader, info: DistInfo, *, desc: str = "eval",
             autocast: torch.autocast | None = None) -> dict:
    """Score every video of ``loader`` (a multi-view eval ``VideoLoader`` or ``DaliVideoLoader``).

    Args:
        score_fn: video batch (B, T, 3, H, W) on the device -> class scores (B, C) (probabilities).
    Returns:
        ``{"top1", "top5", "num_videos", "replaced", "scores" (N, C), "labels" (N,)}``; identical on every rank.
    """
    dataset = getattr(loader, "dataset", loader)
    num_videos, num_views = len(dataset.samples), dataset.num_views
    local_scores, local_video, local_view, local_replaced = [], [], [], []
    for batch in tqdm(loader, desc=desc, disable=not info.is_main, leave=False):
        video = batch["video"].to(info.device, non_blocking=True)
        if autocast is not None:
            with autocast:
                scores = score_fn(video)
        else:
            scores = score_fn(video)
        local_scores.append(scores.float())
        local_video.append(batch["video_index"].to(info.device))
        local_view.append(batch["view_index"].to(info.device))
        local_replaced.append(batch["replaced"].to(info.device))
    gathered = gather_batch(torch.cat(local_scores), torch.cat(local_video).long(), torch.cat(local_view).long(),
                            torch.cat(local_replaced).bool())
    scores, video_index, view_index, replaced = (t.cpu() for t in gathered)
    per_video = aggregate_views(scores, video_index, view_index, num_videos, num_views)
    labels = torch.tensor([label for _, label in dataset.samples])
    bad = torch.zeros(num_videos, dtype=torch.bool)
    bad[video_index[replaced]] = True
    return {**topk_accuracy(per_video, labels), "num_videos": num_videos, "replaced": int(bad.sum()),
            "scores": per_video, "labels": labels}


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2BN / (B + N) (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0

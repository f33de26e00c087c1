"""Evaluation: multi-view score averaging, top-1/top-5, every video exactly once across ranks; and the scoring of a
job's evaluation lists that ``recipes/train.py`` and ``recipes/eval.py`` share.

Each (video, view) item of an eval loader is scored by the method's objective (``TrainStep.score``: class
probabilities per head, e.g. ``softmax(cos(video, class texts) / temp)``); the ranks' scores are gathered in rank
order (``EvalSampler`` pads the last rank's block), and ``aggregate_views`` averages the views of each video,
counting padding duplicates once. Probabilities are averaged, not logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

from msta_fast.collectives import gather_batch
from msta_fast.data.sampling import aggregate_views
from msta_fast.models import tokenize
from msta_fast.progress import progress_bar
from msta_fast.training.distributed import DistInfo, reshard, unwrap
from msta_fast.training.loaders import eval_loader
from msta_fast.training.results import write_evaluation
from msta_fast.training.unreadable import record_unreadable


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """scores (N, C), labels (N,) -> {"top1": %, "top5": %} (k capped at C)."""
    out = {}
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (scores.topk(kk, dim=1).indices == labels.unsqueeze(1)).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


@torch.no_grad()
def evaluate(score_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], loader, info: DistInfo, *,
             desc: str = "eval", autocast: torch.autocast | None = None) -> dict:
    """Score every video of ``loader`` (a multi-view eval loader, torch workers or DALI).

    Args:
        score_fn: video batch (B, T, 3, H, W) on the device -> ``{head: class probabilities (B, C)}``; the first
            head is the main one.
    Returns:
        ``{"top1", "top5", "num_videos", "replaced", "scores" (N, C), "labels" (N,), "videos" (their paths),
        "replaced_videos" (N,) bool, "heads": {other head: {"top1", "top5", "scores"}}}`` for the first head (and
        the others); identical on every rank.
    """
    dataset = getattr(loader, "dataset", loader)
    num_videos, num_views = len(dataset.samples), dataset.num_views
    local_scores: dict[str, list] = {}
    local_video, local_view, local_replaced = [], [], []
    for batch in progress_bar(loader, desc=desc, disable=not info.is_main, leave=False):
        video = batch["video"].to(info.device, non_blocking=True)
        with autocast if autocast is not None else contextlib.nullcontext():
            heads = score_fn(video)
        for head, scores in heads.items():
            local_scores.setdefault(head, []).append(scores.float())
        local_video.append(batch["video_index"].to(info.device))
        local_view.append(batch["view_index"].to(info.device))
        local_replaced.append(batch["replaced"].to(info.device))
    names = list(local_scores)
    gathered = gather_batch(torch.cat(local_video).long(), torch.cat(local_view).long(),
                            torch.cat(local_replaced).bool(), *(torch.cat(local_scores[n]) for n in names))
    video_index, view_index, replaced, *scores = (t.cpu() for t in gathered)
    labels = torch.tensor([label for _, label in dataset.samples])
    bad = torch.zeros(num_videos, dtype=torch.bool)
    bad[video_index[replaced]] = True
    per_head = {}
    for name, head_scores in zip(names, scores, strict=True):
        per_video = aggregate_views(head_scores, video_index, view_index, num_videos, num_views)
        per_head[name] = {**topk_accuracy(per_video, labels), "scores": per_video}
    main, *others = names
    return {**per_head[main], "num_videos": num_videos, "replaced": int(bad.sum()), "labels": labels,
            "replaced_videos": bad, "videos": [path for path, _ in dataset.samples],
            "heads": {name: per_head[name] for name in others}}


def class_tokens(template: str, classes: list[str]) -> torch.Tensor:
    """The tokenised class texts (C, L) of ``classes`` in ``template`` ("a video of {}.")."""
    return tokenize([template.format(c) for c in classes])


def autocast_for(cfg: dict, info: DistInfo):
    """bf16 autocast on GPUs (``precision: auto``), none on the CPU unless ``precision: bf16``."""
    bf16 = cfg["precision"] == "bf16" or (cfg["precision"] == "auto" and info.device.type == "cuda")
    return torch.autocast(info.device.type, dtype=torch.bfloat16) if bf16 else None


@torch.no_grad()
def evaluate_lists(wrapper, evals: dict, cfg: dict, info: DistInfo, *, label: str = "eval",
                   names: list[str] | None = None, out_dir: Path | None = None, run_dir: Path | None = None) -> dict:
    """top-1/top-5 of evaluation lists (``evals``: ``{name: (EvalSet, data root)}``; all, or ``names``) with the
    wrapped step as it is now: ``{name: {"top1", "top5", "num_videos", "replaced", <other head>: {"top1",
    "top5"}}}``. With ``out_dir``, each list's per-class accuracy, confusion matrix and per-video predictions go
    to ``out_dir/<name>/`` (see :func:`~msta_fast.training.results.write_evaluation`). Unreadable videos go to
    ``run_dir``'s list; more than ``data.max_unreadable`` of a list's, or all, stop the evaluation
    (:func:`~msta_fast.training.unreadable.record_unreadable`)."""
    step = unwrap(wrapper)
    wrapper.eval()
    amp = autocast_for(cfg, info)
    results = {}
    for name in names or list(evals):
        evalset, root = evals[name]
        with amp if amp is not None else contextlib.nullcontext():
            class_emb = step.encode_text(class_tokens(cfg["loss"]["template"], evalset.classes).to(info.device))
        metrics = evaluate(lambda video, e=class_emb, c=evalset.classes: step.score(video, e, c),
                           eval_loader(evalset, root, cfg, info), info, desc=f"{label}/{name}", autocast=amp)
        unreadable = [metrics["videos"][i] for i in metrics["replaced_videos"].nonzero().flatten().tolist()]
        record_unreadable(run_dir, f"{label}/{name}", unreadable, metrics["num_videos"],
                          cfg["data"]["max_unreadable"], write=info.is_main)
        results[name] = {k: metrics[k] for k in ("top1", "top5", "num_videos", "replaced")}
        results[name].update({head: {k: m[k] for k in ("top1", "top5")} for head, m in metrics["heads"].items()})
        if out_dir is not None and info.is_main:
            write_evaluation(out_dir / name, evalset.classes, metrics["videos"], metrics["scores"], metrics["labels"],
                             metrics["replaced_videos"])
    reshard(wrapper)  # FSDP2 keeps the root's parameters gathered after a forward without backward
    return results


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2BN / (B + N) (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0

"""Training losses: cross-entropy over ``cos(video, text) / temperature`` and MSTA's consistency constraint.

``L = L_CE + lambda * L_CC`` (method.md section 3), where ``L_CC = 2 - cos(w_c, D_c^s) - cos(w_c, D_c^t)``
averaged over the classes, ``w_c`` the trainable text tower's embedding of the class template and ``D_c^{s,t}``
the mean embeddings of the class's spatial and temporal descriptions by the frozen, adapter-free text tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.adapters import disable_adapters
from msta_fast.models import tokenize


def similarity_logits(video: torch.Tensor, text: torch.Tensor, temp: torch.Tensor | float) -> torch.Tensor:
    """video (B, E), text (C, E), both unnormalised -> logits (B, C) = cos / temp."""
    return F.normalize(video.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t() / temp


def consistency_loss(class_text: torch.Tensor, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
    """``L_CC`` averaged over classes: class_text (C, E) trainable; spatial, temporal (C, E) fixed -> scalar."""
    w = F.normalize(class_text.float(), dim=-1)
    cos_s = (w * F.normalize(spatial.float(), dim=-1)).sum(-1)
    cos_t = (w * F.normalize(temporal.float(), dim=-1)).sum(-1)
    return (2.0 - cos_s - cos_t).mean()


@torch.no_grad()
def encode_descriptions(model: nn.Module, descriptions: dict[int, list[str]], num_classes: int,
                        batch_size: int = 256) -> torch.Tensor:
    """Mean description embedding per class -> (num_classes, E), from the adapter-free text tower.

    Each sentence embedding is L2-normalised before the mean (prompt ensembling as in CLIP), so that no
    sentence weighs more for having a larger norm. Sentences longer than the context are cut by the tokenizer.
    """
    missing = [c for c in range(num_classes) if not descriptions.get(c)]
    if missing:
        raise ValueError(f"no descriptions for classes {missing[:10]} (of {num_classes})")
    sentences = [s for c in range(num_classes) for s in descriptions[c]]
    owner = torch.tensor([c for c in range(num_classes) for _ in descriptions[c]])
    was_training = model.training
    model.eval()
    chunks = []
    with disable_adapters(model):
        for i in range(0, len(sentences), batch_size):
            chunks.append(F.normalize(model.encode_text(tokenize(sentences[i:i + batch_size])).float(), dim=-1))
    model.train(was_training)
    emb = torch.cat(chunks).cpu()
    total = torch.zeros(num_classes, emb.shape[1]).index_add_(0, owner, emb)
    return total / torch.bincount(owner, minlength=num_classes).unsqueeze(1)


class VideoTextLoss(nn.Module):
    """``L_CE + weight * L_CC`` for a batch; ``descriptions`` None turns the constraint off.

    Args of ``forward``: video (B, E) and class_text (C, E) embeddings, labels (B,), the temperature.
    Returns the total loss and a dict of its parts (floats, for logging).
    """

    def __init__(self, spatial: torch.Tensor | None = None, temporal: torch.Tensor | None = None,
                 weight: float = 1.0):
        super().__init__()
        if (spatial is None) != (temporal is None):
            raise ValueError("pass both spatial and temporal description embeddings, or neither")
        self.weight = weight
        self.register_buffer("spatial", spatial, persistent=False)
        self.register_buffer("temporal", temporal, persistent=False)

    def forward(self, video, class_text, labels, temp) -> tuple[torch.Tensor, dict[str, float]]:
        ce = F.cross_entropy(similarity_logits(video, class_text, temp), labels)
        parts = {"ce": float(ce.detach())}
        if self.spatial is None or self.weight == 0:
            return ce, parts
        cc = consistency_loss(class_text, self.spatial.to(class_text.device), self.temporal.to(class_text.device))
        parts["cc"] = float(cc.detach())
        return ce + self.weight * cc, parts

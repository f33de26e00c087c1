"""One training step's computation as a module: the model's two towers, then the method's objective.

The recipe builds ``TrainStep(model, objective)`` and wraps it with FSDP2 or DDP (``distributed.wrap``): the loss
must be computed inside the wrapped module's forward, so that FSDP2 gathers the parameters of everything it uses
(the towers, the adapters, the temperature and any head that runs after the towers, M2-CLIP's) and DDP sees every
parameter that gets a gradient. Evaluation goes through the same module (:meth:`TrainStep.encode_text`,
:meth:`TrainStep.score`), so that it scores exactly what training optimised.
"""

from __future__ import annotations

import torch
from torch import nn

from msta_fast.methods import Encoded, Objective


class TrainStep(nn.Module):
    """``forward(video, class_ids, labels, item_seeds) -> (loss, parts)`` for a patched model and its objective.

    video (B, T, 3, H, W), class_ids (C, L) the tokenised class texts of the job, labels (B,), item_seeds (B,) the
    loader's per-item seeds. The objective runs outside autocast, on the embeddings as the towers returned them.
    """

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, video: torch.Tensor, class_ids: torch.Tensor, labels: torch.Tensor,
                item_seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        video_emb, features = self.objective.encode_video(self.model, video)
        class_emb = self.model.encode_text(class_ids)
        with torch.autocast(video.device.type, enabled=False):
            return self.objective(Encoded(video_emb, class_emb, self.model.temp, features), labels, item_seeds)

    def encode_text(self, class_ids: torch.Tensor) -> torch.Tensor:
        """Class-text embeddings (C, E) for evaluation."""
        return self.model.encode_text(class_ids)

    def score(self, video: torch.Tensor, class_emb: torch.Tensor, classes: list[str]) -> dict[str, torch.Tensor]:
        """Class probabilities (B, C) per head of the objective for a video batch, against ``class_emb``."""
        video_emb, features = self.objective.encode_video(self.model, video)
        encoded = Encoded(video_emb, class_emb, self.model.temp, features)
        with torch.autocast(video.device.type, enabled=False):
            return self.objective.scores(encoded, classes)


# What FSDP2 must treat as forwards of the root (it gathers the root's parameters for them).
FORWARD_METHODS = ("encode_text", "score")

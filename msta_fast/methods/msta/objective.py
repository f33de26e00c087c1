"""MSTA's training objective: ``L = L_CE + lambda * L_CC`` (method.md section 3).

``L_CC = 2 - cos(w_c, D_c^s) - cos(w_c, D_c^t)`` averaged over the classes, ``w_c`` the trainable text tower's
embedding of the class template and ``D_c^{s,t}`` the mean embeddings of the class's spatial and temporal
descriptions by the frozen, adapter-free text tower (computed once per job, before training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from msta_fast.methods.base import Encoded, Objective, OptionError, similarity_logits


@dataclass
class MSTALossOptions:
    """``consistency``: the description-guided constraint L_CC on or off; ``weight``: lambda; ``num_descriptions``:
    N sentences per class and kind; ``descriptions_dir``: the folder with the description files
    (``{N}_{s|t}_description_<name>[_base|_novel].json``; None: the data set's own, else template sentences)."""

    consistency: bool = True
    weight: float = 1.0
    num_descriptions: int = 2
    descriptions_dir: str | None = None

    def __post_init__(self):
        if not (isinstance(self.weight, (int, float)) and self.weight >= 0 and self.weight == self.weight):
            raise OptionError(f"weight must be a number >= 0, got {self.weight!r}")
        if not (isinstance(self.num_descriptions, int) and self.num_descriptions >= 1):
            raise OptionError(f"num_descriptions must be an integer >= 1, got {self.num_descriptions!r}")


def wants_descriptions(options: MSTALossOptions | None) -> bool:
    return options is not None and options.consistency and options.weight > 0


def consistency_loss(class_text: torch.Tensor, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
    """``L_CC`` averaged over classes: class_text (C, E) trainable; spatial, temporal (C, E) fixed -> scalar."""
    w = F.normalize(class_text.float(), dim=-1)
    cos_s = (w * F.normalize(spatial.float(), dim=-1)).sum(-1)
    cos_t = (w * F.normalize(temporal.float(), dim=-1)).sum(-1)
    return (2.0 - cos_s - cos_t).mean()


class MSTAObjective(Objective):
    """Cross-entropy of ``cos(video, class text) / temp``, plus ``weight * L_CC`` when description embeddings
    (spatial, temporal: (C, E) each) are given."""

    def __init__(self, classes: list[str], spatial: torch.Tensor | None = None, temporal: torch.Tensor | None = None,
                 weight: float = 1.0):
        super().__init__(classes)
        if (spatial is None) != (temporal is None):
            raise ValueError("pass both spatial and temporal description embeddings, or neither")
        self.weight = weight
        self.register_buffer("spatial", spatial, persistent=False)
        self.register_buffer("temporal", temporal, persistent=False)

    def forward(self, encoded: Encoded, labels: torch.Tensor, item_seeds: torch.Tensor | None = None):
        ce = F.cross_entropy(similarity_logits(encoded.video, encoded.text, encoded.temp), labels)
        parts = {"ce": float(ce.detach())}
        if self.spatial is None or self.weight == 0:
            return ce, parts
        cc = consistency_loss(encoded.text, self.spatial.to(encoded.text.device), self.temporal.to(encoded.text.device))
        parts["cc"] = float(cc.detach())
        return ce + self.weight * cc, parts


def build_objective(model, config, classes: list[str], options: MSTALossOptions | None, *, descriptions=None,
                    template: str = "") -> MSTAObjective:
    if wants_descriptions(options) and descriptions is not None:
        return MSTAObjective(classes, *descriptions, weight=options.weight)
    return MSTAObjective(classes)

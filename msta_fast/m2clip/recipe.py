"""``--methods m2clip`` in the recipes: M2-CLIP registered in ``msta_fast.training.methods``.

- patch: ``msta_fast.patch(model, "m2clip")`` with the published sizes, the visual head for the job's
  training classes and the MLM head over their word list;
- loss: the multi-task objective (:class:`msta_fast.m2clip.M2CLIPObjective`), with the class
  texts of the recipe's template (``loss.template``; M2-CLIP's own prompt is "A video of {}");
- under torchrun (FSDP2 or DDP) as in one process: the recipe computes the loss inside the wrapped
  model's forward, so the heads and the masked-language pass see gathered (FSDP2) and tracked (DDP)
  parameters, and the MLM masks and the visual head's dropout come from the loader's per-item seeds,
  so N processes train what one process trains on the same global batch;
- evaluation: the text head (cosine similarity to the class texts) for every list, zero-shot and
  novel classes included; the visual head's accuracy as well, where the list's classes are the
  training classes (it has no output for any other class).

Options, under ``method_overrides.m2clip.adapter.options``: any ``msta_fast.patch`` option of
M2-CLIP (``pre_attn``, ``text_layers``, ``dim``, ...), and the heads' switches ``contrastive``,
``text_ce``, ``visual_ce``, ``mlm`` (booleans) and ``mask_prob``.
"""

from __future__ import annotations

from torch import nn

from msta_fast.m2clip.losses import Heads, M2CLIPObjective, patch_m2clip, visual_head_logits
from msta_fast.training.methods import Method, register_method

HEAD_SWITCHES = ("contrastive", "text_ce", "visual_ce", "mlm")


class ObjectiveLoss(nn.Module):
    """The objective as the recipe's criterion: ``(video, class_text, labels, temp) -> (loss, parts)``."""

    def __init__(self, objective: M2CLIPObjective):
        super().__init__()
        self._objective = (objective,)  # not a submodule: .to() must not move the model it holds

    def forward(self, video, class_text, labels, temp, item_seeds=None):
        return self._objective[0](video, class_text, labels, temp, item_seeds=item_seeds)


class M2CLIP(Method):
    def __init__(self, name: str = "m2clip"):
        super().__init__(name, "m2clip", consistency=False)
        self._objective: M2CLIPObjective | None = None

    def split_options(self, cfg: dict) -> tuple[dict, Heads, float]:
        """(patch options, head switches, mask probability) from ``adapter.options``."""
        options = dict(cfg["adapter"]["options"])
        heads = Heads(**{k: bool(options.pop(k)) for k in HEAD_SWITCHES if k in options})
        mask_prob = float(options.pop("mask_prob", 0.15))
        options.setdefault("num_frames", cfg["model"]["num_frames"])
        return options, heads, mask_prob

    def prepare_job(self, model: nn.Module, cfg: dict, job) -> nn.Module:
        options, heads, mask_prob = self.split_options(cfg)
        patch_m2clip(model, list(job.classes), heads, **options)
        self._objective = M2CLIPObjective(model, list(job.classes), heads, cfg["loss"]["template"], mask_prob)
        return model

    def loss(self, ctx, video_emb, class_emb, labels, item_seeds=None):
        """The objective, its random parts drawn from the items' seeds (the same with any number of processes)."""
        return ctx.criterion(video_emb, class_emb, labels, ctx.temp, item_seeds=item_seeds)

    def criterion(self, cfg: dict, spatial, temporal) -> nn.Module:
        if self._objective is None:
            raise RuntimeError("m2clip: prepare_job must run before the criterion is built")
        return ObjectiveLoss(self._objective)

    def extra_scores(self, ctx, model: nn.Module, classes: list[str], train_classes: list[str]) -> dict:
        """The visual head, for lists of the training classes only. Each function takes the video embeddings
        of a forward that has just run and returns class probabilities (B, C)."""
        if model.m2clip_adapters.head is None or list(classes) != list(train_classes):
            return {}
        return {"visual_head": lambda video_emb: visual_head_logits(model).float().softmax(dim=-1)}


register_method(M2CLIP(), replace=True)

__all__ = ["HEAD_SWITCHES", "M2CLIP", "ObjectiveLoss"]

"""M2-CLIP's multi-task objective (method.md section 5), each head switchable:

    L = ((KL_v2t + KL_t2v) / 2 + CE_text) / 2 + CE_visual + MLM / 10

- contrastive head: logits ``cos(video_i, text_j) / temp`` between the videos of a batch and the
  captions of their labels; the target marks every same-label pair as positive (rows normalised),
  and the loss is the KL divergence from the target to the softmax, both ways. Under
  ``torch.distributed`` the batch is the global one (every rank's videos, gathered with their
  gradients), so that N processes train as one process on the same global batch;
- cross-modal classification head: cross-entropy of the video against all class texts;
- visual classification head: cross-entropy of the visual head on the frame-averaged class token;
- masked language modelling: cross-entropy over the masked class-name tokens of the captions.

With a text head off, the other one takes the place of the mean of the two (weight 1/2 kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.adapters import get_patch_state, patch
from msta_fast.adapters.m2clip import frame_embeddings
from msta_fast.m2clip.decoder import text_token_features
from msta_fast.m2clip.words import IGNORE_INDEX, WordList, class_name_positions, mask_tokens
from msta_fast.models.tokenizer import tokenize
from msta_fast.training.distributed import gather_batch

PROMPT = "A video of {}"  # method.md section 5; "{}" is the class name, as in the recipes' templates


@dataclass
class Heads:
    """Which heads of the decoder train."""

    contrastive: bool = True
    text_ce: bool = True
    visual_ce: bool = True
    mlm: bool = True

    def __post_init__(self):
        if not (self.contrastive or self.text_ce or self.visual_ce or self.mlm):
            raise ValueError("every head of the M2-CLIP decoder is switched off: nothing would train")


def cosine_logits(video: torch.Tensor, text: torch.Tensor, temp: torch.Tensor | float) -> torch.Tensor:
    """video (B, E), text (N, E), unnormalised -> (B, N) = cos / temp, in fp32."""
    return F.normalize(video.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t() / temp


def same_label_target(labels: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, B): 1 / n_i on the pairs that share a label (n_i pairs in row i), 0 elsewhere."""
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.sum(1, keepdim=True)


def contrastive_kl_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(KL_v2t + KL_t2v) / 2 for video-to-caption logits (B, B) and the labels (B,)."""
    target = same_label_target(labels)  # symmetric: the same target serves both directions

    def kl(lg: torch.Tensor) -> torch.Tensor:
        return (torch.xlogy(target, target) - target * lg.log_softmax(dim=1)).sum(1).mean()

    return (kl(logits) + kl(logits.t())) / 2


def patch_m2clip(model: nn.Module, class_names: list[str], heads: Heads | None = None, **options) -> nn.Module:
    """``msta_fast.patch(model, "m2clip")`` with the heads the objective needs: the visual head for
    ``len(class_names)`` classes and the MLM head over their word list, where switched on."""
    heads = heads or Heads()
    if heads.visual_ce:
        options.setdefault("num_classes", len(class_names))
    if heads.mlm:
        options.setdefault("mlm_vocab", len(WordList.from_class_names(class_names)))
    return patch(model, "m2clip", **options)


class M2CLIPObjective:
    """The loss of a batch for a model patched with :func:`patch_m2clip` on these ``class_names``.

    Call it after the model's video forward of the batch: it reads the visual features that forward
    left on the adapters (class token, per-frame embeddings).
    """

    def __init__(self, model: nn.Module, class_names: list[str], heads: Heads | None = None, prompt: str = PROMPT,
                 mask_prob: float = 0.15, mlm_weight: float = 0.1):
        state = get_patch_state(model)
        if state is None or state.config.method != "m2clip":
            raise ValueError("the model must be patched with method 'm2clip' (see msta_fast.m2clip.patch_m2clip)")
        self.model, self.heads, self.mask_prob, self.mlm_weight = model, heads or Heads(), mask_prob, mlm_weight
        self.adapters = model.m2clip_adapters
        C = len(class_names)
        if self.heads.visual_ce and (self.adapters.head is None or self.adapters.head.fc.out_features != C):
            have = None if self.adapters.head is None else self.adapters.head.fc.out_features
            raise ValueError(f"the visual head needs num_classes={C} in patch (the model has {have})")
        if self.heads.mlm:
            self.words = WordList.from_class_names(class_names)
            have = None if self.adapters.decoder is None else self.adapters.decoder.head.decoder.out_features
            if have != len(self.words):
                raise ValueError(f"the MLM head needs mlm_vocab={len(self.words)} in patch (the model has {have})")
            self.captions = tokenize([prompt.format(name) for name in class_names])
            self.targets = class_name_positions(self.captions, class_names)

    def mlm_loss(self, labels: torch.Tensor, generator: torch.Generator | None = None,
                 item_seeds: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.captions.to(labels.device)[labels]
        candidates = self.targets.to(labels.device)[labels]
        ids, replace, targets = mask_tokens(ids, self.words, self.mask_prob, generator, candidates, item_seeds)
        decoder = self.adapters.decoder
        tokens = text_token_features(self.model, ids, replace, decoder.mask_embedding)
        frames = frame_embeddings(self.model, self.adapters, get_patch_state(self.model).grid)
        logits = decoder(self.model, tokens, frames.to(tokens.dtype))
        if (targets == IGNORE_INDEX).all():
            return logits.sum() * 0.0  # no class-name token to predict in this batch
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)

    def __call__(self, video_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor,
                 temp: torch.Tensor | float, generator: torch.Generator | None = None,
                 item_seeds: torch.Tensor | None = None):
        """video_emb (B, E), class_emb (C, E) from the adapted towers, labels (B,) -> (loss, parts as floats).

        The MLM masks and the visual head's dropout come from ``item_seeds`` (B,), one per video (the
        recipes pass the loader's ``item_seed``), else from ``generator`` / torch's global generator."""
        parts: dict[str, torch.Tensor] = {}
        if self.heads.contrastive:
            videos, video_labels = gather_batch(video_emb, labels)
            parts["contrastive"] = contrastive_kl_loss(cosine_logits(videos, class_emb[video_labels], temp),
                                                       video_labels)
        if self.heads.text_ce:
            parts["text_ce"] = F.cross_entropy(cosine_logits(video_emb, class_emb, temp), labels)
        text_terms = [parts[k] for k in ("contrastive", "text_ce") if k in parts]
        total = torch.stack(text_terms).mean() if text_terms else video_emb.new_zeros(())
        if self.heads.visual_ce:
            parts["visual_ce"] = F.cross_entropy(visual_head_logits(self.model, item_seeds).float(), labels)
            total = total + parts["visual_ce"]
        if self.heads.mlm:
            parts["mlm"] = self.mlm_loss(labels, generator, item_seeds)
            total = total + self.mlm_weight * parts["mlm"]
        return total, {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()}}


def visual_head_logits(model: nn.Module, item_seeds: torch.Tensor | None = None) -> torch.Tensor:
    """The visual head's logits (B, num_classes) for the last video forward of the model (``item_seeds``: the
    dropout masks in training, one per video; see :class:`msta_fast.adapters.m2clip.VisualHead`)."""
    adapters = model.m2clip_adapters
    if adapters.head is None:
        raise ValueError("the model has no visual head (patch with num_classes=...)")
    if "cls" not in adapters.features:
        raise RuntimeError("no video forward of the patched model has run yet")
    # The loss may run outside the autocast region of the forward: features in bf16, the head in fp32.
    return adapters.head(adapters.features["cls"].to(adapters.head.fc.weight.dtype), item_seeds)

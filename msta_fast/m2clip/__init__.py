"""M2-CLIP (method.md section 5): the multi-task decoder and its losses, on top of the adapters of
``msta_fast.patch(model, "m2clip")`` (``msta_fast.adapters.m2clip``)."""

from msta_fast.m2clip.decoder import MLMDecoder, MLMHead, text_token_features
from msta_fast.m2clip.losses import (
    PROMPT,
    Heads,
    M2CLIPObjective,
    contrastive_kl_loss,
    cosine_logits,
    patch_m2clip,
    same_label_target,
    visual_head_logits,
)
from msta_fast.m2clip.words import IGNORE_INDEX, WordList, class_name_positions, mask_tokens

__all__ = [
    "IGNORE_INDEX",
    "PROMPT",
    "Heads",
    "M2CLIPObjective",
    "MLMDecoder",
    "MLMHead",
    "WordList",
    "class_name_positions",
    "contrastive_kl_loss",
    "cosine_logits",
    "mask_tokens",
    "patch_m2clip",
    "same_label_target",
    "text_token_features",
    "visual_head_logits",
]

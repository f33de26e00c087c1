"""M2-CLIP (AAAI 2024): TED-Adapters in the vision blocks, text adapters, a frame-level temporal adapter (frame-wise
CLIP), a visual classification head and a multi-task decoder with a masked-language-modelling head.

    msta_fast.patch(model, "m2clip", **head_options(class_names))    # adapters and heads sized for the classes
    objective = M2CLIPObjective(model, class_names)                   # the multi-task loss and the heads' scores
"""

from msta_fast.methods.base import Method
from msta_fast.methods.m2clip.adapters import FrameTemporalAdapter, M2CLIPAdapters, TEDAdapter, TextAdapter, VisualHead
from msta_fast.methods.m2clip.attach import attach, build_adapters
from msta_fast.methods.m2clip.config import M2CLIPConfig
from msta_fast.methods.m2clip.decoder import MLMDecoder, MLMHead, text_token_features
from msta_fast.methods.m2clip.objective import (
    PROMPT,
    M2CLIPLossOptions,
    M2CLIPObjective,
    build_objective,
    contrastive_kl_loss,
    for_classes,
    frame_embeddings,
    head_options,
    same_label_target,
)
from msta_fast.methods.m2clip.words import IGNORE_INDEX, WordList, class_name_positions, mask_tokens

METHOD = Method("m2clip", M2CLIPConfig, attach, loss_options=M2CLIPLossOptions, build_objective=build_objective,
                for_classes=for_classes)

__all__ = [
    "IGNORE_INDEX", "METHOD", "PROMPT", "FrameTemporalAdapter", "M2CLIPAdapters", "M2CLIPConfig", "M2CLIPLossOptions",
    "M2CLIPObjective", "MLMDecoder", "MLMHead", "TEDAdapter", "TextAdapter", "VisualHead", "WordList", "attach",
    "build_adapters", "class_name_positions", "contrastive_kl_loss", "frame_embeddings", "head_options", "mask_tokens",
    "same_label_target", "text_token_features",
]

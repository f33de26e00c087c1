"""CLIP's byte-pair tokenizer at ViCLIP's context length (32)."""

from __future__ import annotations

import torch
from open_clip.tokenizer import tokenize as _open_clip_tokenize

CONTEXT_LENGTH = 32


def tokenize(texts: str | list[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """texts -> LongTensor (N, context_length): [SOT] tokens [EOT] 0...; too long texts are cut and
    end with EOT, as in ViCLIP's and open_clip's tokenizers (which this one is)."""
    if isinstance(texts, str):
        texts = [texts]
    return _open_clip_tokenize(list(texts), context_length=context_length)

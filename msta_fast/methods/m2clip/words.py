"""The masked-language-modelling vocabulary of M2-CLIP: a word list built from the class names, and
BERT-style masking of the class-name tokens of the captions.

The "words" are the CLIP byte-pair tokens that occur in the class names (a word the tokenizer splits
into pieces gives its pieces), so every label is exactly one token position of the caption.
"""

from __future__ import annotations

import torch

from msta_fast.models.tokenizer import CONTEXT_LENGTH, tokenize

IGNORE_INDEX = -100  # cross_entropy's default: positions that carry no label
MASK_WORD = "mask"  # what the release's masking code writes in place of a masked word


def word_token_id(word: str) -> int:
    """The token id of a word that the tokenizer keeps whole (an error otherwise)."""
    ids = tokenize([word])[0]
    pieces = ids[1 : ids.argmax()]  # between start and end of text (the largest id)
    if len(pieces) != 1:
        raise ValueError(f"{word!r} is {len(pieces)} tokens, not one")
    return int(pieces[0])


class WordList:
    """Sorted token ids of the class names; ``index(ids)`` maps a token id to its word index or -1."""

    def __init__(self, token_ids: torch.Tensor, vocab_size: int = 49408):
        self.token_ids = torch.as_tensor(token_ids, dtype=torch.long).unique(sorted=True)
        if self.token_ids.numel() == 0:
            raise ValueError("the word list is empty: the class names gave no tokens")
        self._lookup = torch.full((vocab_size,), -1, dtype=torch.long)
        self._lookup[self.token_ids] = torch.arange(len(self.token_ids))

    @classmethod
    def from_class_names(cls, class_names: list[str], context_length: int = CONTEXT_LENGTH) -> WordList:
        ids = tokenize(list(class_names), context_length)
        specials = tokenize([""], context_length)[0, :2]  # start and end of text
        tokens = ids[(ids != 0) & ~torch.isin(ids, specials)]
        return cls(tokens)

    def __len__(self) -> int:
        return len(self.token_ids)

    def index(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (any shape) -> word index (same shape), -1 where the token is not in the list."""
        return self._lookup.to(ids.device)[ids]


def class_name_positions(captions: torch.Tensor, class_names: list[str]) -> torch.Tensor:
    """Where each caption (C, L) holds its class name's tokens -> bool (C, L). The prompt's own words
    ("a" of "A video of") are not targets even when a class name contains them. A name cut by the
    context length keeps the positions that are there."""
    out = torch.zeros_like(captions, dtype=torch.bool)
    for c, name in enumerate(class_names):
        name_ids = tokenize([name], captions.shape[1])[0]
        name_ids = name_ids[1 : name_ids.argmax()]  # between start and end of text (the largest id)
        row = captions[c]
        for n in range(len(name_ids), 0, -1):  # the longest prefix of the name found in the caption
            starts = [i for i in range(len(row) - n + 1) if torch.equal(row[i : i + n], name_ids[:n])]
            if starts:
                out[c, starts[-1] : starts[-1] + n] = True
                break
    return out


def mask_tokens(
    ids: torch.Tensor,
    words: WordList,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
    candidates: torch.Tensor | None = None,
    row_seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT-style masking of the class-name tokens of captions.

    Each candidate token (``candidates`` (N, L) bool, default: every token in the word list) is
    chosen with probability ``prob``, and every caption that has candidates gets at least one chosen
    (class names are a few tokens long, so 15% alone would often choose none). Chosen tokens: 80%
    replaced by the mask embedding, 10% by a random word, 10% kept.

    ids: (N, L) token ids. Returns ``(input_ids, use_mask_embedding, labels)``: the ids with the random
    replacements (N, L), a boolean (N, L) of positions to replace by the mask embedding, and the
    labels (N, L): the word index at chosen positions, ``IGNORE_INDEX`` elsewhere.

    Randomness: ``generator`` (or torch's global one) for the whole batch, or, with ``row_seeds`` (N,),
    one generator per caption, so that a caption's masks depend on its seed only (not on the batch it
    is in, nor on the number of processes).
    """
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"mask probability must be in (0, 1], got {prob}")
    word = words.index(ids)
    candidate = word >= 0
    if candidates is not None:
        candidate &= candidates.to(ids.device)

    draws = _mask_draws(ids.shape, len(words), generator, row_seeds)
    choose, pick_order, action, random_index = (d.to(ids.device) for d in draws)
    chosen = candidate & (choose < prob)
    # Captions with candidates but none chosen: choose one candidate at random.
    needs_one = candidate.any(1) & ~chosen.any(1)
    pick = torch.where(candidate, pick_order, torch.full_like(word, -1, dtype=torch.float)).argmax(1)
    chosen[needs_one, pick[needs_one]] = True
    labels = torch.where(chosen, word, torch.full_like(word, IGNORE_INDEX))
    use_mask = chosen & (action < 0.8)
    use_random = chosen & (action >= 0.8) & (action < 0.9)
    random_words = words.token_ids.to(ids.device)[random_index]
    return torch.where(use_random, random_words, ids), use_mask, labels


def _mask_draws(shape, vocab: int, generator: torch.Generator | None, row_seeds: torch.Tensor | None):
    """The four random (N, L) tensors of :func:`mask_tokens` (on the CPU): choice, pick order, action, word."""

    def draws(rows_shape, gen):
        return (torch.rand(*rows_shape, generator=gen), torch.rand(*rows_shape, generator=gen),
                torch.rand(*rows_shape, generator=gen), torch.randint(vocab, rows_shape, generator=gen))

    if row_seeds is None:
        return draws(shape, generator)
    if len(row_seeds) != shape[0]:
        raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {shape[0]} captions")
    per_row = [draws(shape[1:], torch.Generator().manual_seed(int(s))) for s in row_seeds.tolist()]
    return tuple(torch.stack(parts) for parts in zip(*per_row, strict=True))

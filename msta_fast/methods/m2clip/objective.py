"""M2-CLIP's multi-task objective (method.md section 5), each head switchable:

    L = ((KL_v2t + KL_t2v) / 2 + CE_text) / 2 + CE_visual + MLM / 10

- contrastive head: logits ``cos(video_i, text_j) / temp`` between the videos of a batch and the captions of their
  labels; the target marks every same-label pair as positive (rows normalised), and the loss is the KL divergence
  from the target to the softmax, both ways. Under ``torch.distributed`` the batch is the global one (every rank's
  videos, gathered with their gradients), so that N processes train as one process on the same global batch;
- cross-modal classification head: cross-entropy of the video against all class texts (of the logits; the
  release's double softmax with ``double_softmax``);
- visual classification head: cross-entropy of the visual head on the frame-averaged class token;
- masked language modelling: cross-entropy over the masked class-name tokens of the captions.

With a text head off, the other one takes the place of the mean of the two (weight 1/2 kept). The visual head
and the MLM head read more of the video forward than its embedding (the class token, per-frame embeddings):
:meth:`M2CLIPObjective.encode_video` captures them for the batch and hands them on as ``features``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.collectives import gather_batch
from msta_fast.methods.base import Encoded, Objective, OptionError, patch_state, similarity_logits
from msta_fast.methods.m2clip.adapters import M2CLIPAdapters
from msta_fast.methods.m2clip.config import M2CLIPConfig
from msta_fast.methods.m2clip.decoder import text_token_features
from msta_fast.methods.m2clip.words import (
    IGNORE_INDEX,
    MASK_WORD,
    WordList,
    class_name_positions,
    mask_tokens,
    word_token_id,
)
from msta_fast.methods.towers import find_towers, in_tower_order
from msta_fast.models.tokenizer import tokenize

PROMPT = "A video of {}"  # method.md section 5; "{}" is the class name, as in the recipes' templates


@dataclass
class M2CLIPLossOptions:
    """Which heads of the decoder train, the MLM mask probability and the MLM term's weight; ``double_softmax``:
    the cross-modal classification term takes the cross-entropy of ``softmax(cos / temp)`` instead of the logits,
    as the release does (a second softmax, which bounds the term and flattens its gradient)."""

    contrastive: bool = True
    text_ce: bool = True
    visual_ce: bool = True
    mlm: bool = True
    mask_prob: float = 0.15
    mlm_weight: float = 0.1
    double_softmax: bool = False

    def __post_init__(self):
        if not (self.contrastive or self.text_ce or self.visual_ce or self.mlm):
            raise OptionError("every head of the M2-CLIP decoder is switched off: nothing would train")
        if not (isinstance(self.mask_prob, (int, float)) and 0.0 < self.mask_prob <= 1.0):
            raise OptionError(f"mask_prob must be in (0, 1], got {self.mask_prob!r}")


def head_options(classes: list[str], options: M2CLIPLossOptions | None = None) -> dict:
    """The patch options that size M2-CLIP's heads for ``classes``: ``num_classes`` (the visual head) and
    ``mlm_vocab`` (the MLM head's word list), for the heads ``options`` switch on (default: all)."""
    options = options or M2CLIPLossOptions()
    out = {}
    if options.visual_ce:
        out["num_classes"] = len(classes)
    if options.mlm:
        out["mlm_vocab"] = len(WordList.from_class_names(list(classes)))
    return out


def for_classes(config: M2CLIPConfig, classes: list[str], options: M2CLIPLossOptions | None) -> M2CLIPConfig:
    """``config`` with the heads sized for the job's training classes where it leaves them unset."""
    sizes = {k: v for k, v in head_options(classes, options).items() if getattr(config, k) is None}
    return config.replace(**sizes)


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


def _layer_norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    # Called inside a hook of ``ln`` itself: the functional form does not re-enter the hook.
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


@contextlib.contextmanager
def captured_video_features(model: nn.Module, adapters: M2CLIPAdapters):
    """Within the block, each video forward of ``model`` fills the yielded dict: ``cls`` (B, width), the
    frame-averaged class token after ``ln_post``, and ``frames`` (B, T, E), the per-frame embeddings (frame-wise
    CLIP: the tower's, after the frame-level adapter; ViCLIP: ``tokens`` (B, 1 + N*T, width) of the last block,
    from which :func:`frame_embeddings` makes them)."""
    vision = find_towers(model).vision
    grid, features = adapters.grid, {}

    def class_token(ln_post, args, out):
        if vision.layout == "frames":
            x = args[0]
            cls = x[:, 0] if x.ndim == 3 else x
            out = _layer_norm(ln_post, cls.reshape(-1, grid.frames, cls.shape[-1]).mean(1))
        features["cls"] = out[:, 0] if out.ndim == 3 else out

    def frames(visual, args, out):
        pooled = out[0] if isinstance(out, tuple) else out
        features["frames"] = pooled.reshape(-1, grid.frames, pooled.shape[-1])

    def last_tokens(block, args, out):
        features["tokens"] = in_tower_order(vision, out)

    handles = [vision.grid_module.ln_post.register_forward_hook(class_token)]
    if vision.layout == "frames":
        handles.append(vision.grid_module.register_forward_hook(frames))  # after the frame-level adapter's hook
    else:
        handles.append(vision.blocks[-1].register_forward_hook(last_tokens))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()


def frame_embeddings(model: nn.Module, features: dict) -> torch.Tensor:
    """Per-frame visual embeddings (B, T, E) of a captured video forward.

    Frame-wise CLIP: its frame embeddings. ViCLIP has none: each frame's patch tokens of the last block are
    averaged, then ``ln_post`` and ``proj`` as for the class token.
    """
    if "frames" in features:
        return features["frames"]
    visual = model.vision_encoder
    T, H, W = features["grid"]
    tokens = features["tokens"][:, 1:]
    # In the weights' dtype: the heads may run outside the autocast region of the forward.
    per_frame = tokens.reshape(tokens.shape[0], H * W, T, -1).mean(1).to(visual.proj.dtype)
    return _layer_norm(visual.ln_post, per_frame) @ visual.proj


class M2CLIPObjective(Objective):
    """The loss of a batch for a model patched with M2-CLIP whose heads are sized for ``classes`` (see
    :func:`head_options`), and the scores of its text and visual heads."""

    def __init__(self, model: nn.Module, classes: list[str], options: M2CLIPLossOptions | None = None,
                 prompt: str = PROMPT):
        super().__init__(classes)
        state = patch_state(model)
        if state is None or state.method != "m2clip":
            raise ValueError("the model must be patched with method 'm2clip' (msta_fast.patch(model, 'm2clip', "
                             "**head_options(classes)))")
        self.options = options = options or M2CLIPLossOptions()
        self._model = (model,)  # not a submodule: the objective must not own (or move) the model
        adapters: M2CLIPAdapters = model.m2clip_adapters
        C = len(classes)
        if options.visual_ce and (adapters.head is None or adapters.head.fc.out_features != C):
            have = None if adapters.head is None else adapters.head.fc.out_features
            raise ValueError(f"the visual head needs num_classes={C} in patch (the model has {have})")
        if options.mlm:
            self.words = WordList.from_class_names(list(classes))
            have = None if adapters.decoder is None else adapters.decoder.head.decoder.out_features
            if have != len(self.words):
                raise ValueError(f"the MLM head needs mlm_vocab={len(self.words)} in patch (the model has {have})")
            self.captions = tokenize([prompt.format(name) for name in classes])
            self.targets = class_name_positions(self.captions, list(classes))

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    @property
    def adapters(self) -> M2CLIPAdapters:
        return self.model.m2clip_adapters

    def encode_video(self, model: nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with captured_video_features(model, self.adapters) as features:
            embedding = model.encode_video(video)
        features["grid"] = self.adapters.grid.shape
        return embedding, features

    def visual_head_logits(self, features: dict, item_seeds: torch.Tensor | None = None) -> torch.Tensor:
        """The visual head's logits (B, num_classes) (``item_seeds``: the dropout masks in training, one per video;
        see :class:`msta_fast.methods.m2clip.adapters.VisualHead`)."""
        head = self.adapters.head
        # The loss may run outside the autocast region of the forward: features in bf16, the head in fp32.
        return head(features["cls"].to(head.fc.weight.dtype), item_seeds)

    def mlm_loss(self, features: dict, labels: torch.Tensor, item_seeds: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.captions.to(labels.device)[labels]
        candidates = self.targets.to(labels.device)[labels]
        ids, replace, targets = mask_tokens(ids, self.words, self.options.mask_prob, None, candidates, item_seeds)
        decoder = self.adapters.decoder
        if decoder.mask_embedding is None:  # the word "mask" in place of the masked tokens, as the release
            ids, replace = torch.where(replace, word_token_id(MASK_WORD), ids), None
        tokens = text_token_features(self.model, ids, replace, decoder.mask_embedding)
        logits = decoder(self.model, tokens, frame_embeddings(self.model, features).to(tokens.dtype))
        if (targets == IGNORE_INDEX).all():
            return logits.sum() * 0.0  # no class-name token to predict in this batch
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)

    def forward(self, encoded: Encoded, labels: torch.Tensor, item_seeds: torch.Tensor | None = None):
        """The MLM masks and the visual head's dropout come from ``item_seeds`` (B,), one per video (the recipes
        pass the loader's ``item_seed``), else from torch's global generator."""
        o, parts = self.options, {}
        if o.contrastive:
            videos, video_labels = gather_batch(encoded.video, labels)
            logits = similarity_logits(videos, encoded.text[video_labels], encoded.temp)
            parts["contrastive"] = contrastive_kl_loss(logits, video_labels)
        if o.text_ce:
            logits = similarity_logits(encoded.video, encoded.text, encoded.temp)
            parts["text_ce"] = F.cross_entropy(logits.softmax(dim=-1) if o.double_softmax else logits, labels)
        text_terms = [parts[k] for k in ("contrastive", "text_ce") if k in parts]
        total = torch.stack(text_terms).mean() if text_terms else encoded.video.new_zeros(())
        if o.visual_ce:
            parts["visual_ce"] = F.cross_entropy(self.visual_head_logits(encoded.features, item_seeds).float(), labels)
            total = total + parts["visual_ce"]
        if o.mlm:
            parts["mlm"] = self.mlm_loss(encoded.features, labels, item_seeds)
            total = total + o.mlm_weight * parts["mlm"]
        return total, {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()}}

    def scores(self, encoded: Encoded, classes: list[str]) -> dict[str, torch.Tensor]:
        """The text head for any list of classes; the visual head too where the list's classes are the training
        classes (it has no output for any other class)."""
        out = super().scores(encoded, classes)
        if self.adapters.head is not None and list(classes) == self.classes:
            out["visual_head"] = self.visual_head_logits(encoded.features).float().softmax(dim=-1)
        return out


def build_objective(model, config, classes: list[str], options: M2CLIPLossOptions | None, *, descriptions=None,
                    template: str = PROMPT) -> M2CLIPObjective:
    return M2CLIPObjective(model, classes, options, template)

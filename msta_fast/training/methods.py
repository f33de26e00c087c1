"""Method registry: what each method compared by the recipes does to the model, which losses it trains with,
and how it scores videos. ``recipes/train.py --methods a,b`` looks names up here.

A method is a :class:`Method` (subclass it to change any part) registered with :func:`register_method`; another
module can add one without editing the recipes, e.g. in ``msta_fast/m2clip/recipe.py``::

    from msta_fast.training.methods import Method, register_method

    class M2CLIP(Method):
        def prepare(self, model, cfg):            # patch: add adapters and heads, freeze the rest
            ...
        def loss(self, ctx, video_emb, class_emb, labels, item_seeds=None):  # extra heads and losses
            ...

    register_method(M2CLIP("m2clip"))

and list the module in :data:`PLUGINS` (or import it before ``get_method``). The parts:

- ``prepare(model, cfg) -> model``: patch the backbone (``cfg`` is the method's resolved config);
- ``trains``: False for evaluation-only methods (zero-shot);
- ``uses_descriptions(cfg)``: whether the consistency constraint is on (description embeddings get computed);
- ``loss(ctx, video_emb, class_emb, labels, item_seeds) -> (loss, parts)``: the training loss of a batch, with
  ``ctx`` a :class:`LossContext` (temperature, the description embeddings, the config) and ``item_seeds`` the
  loader's per-item seeds (for randomness that must not depend on the batch or the number of processes);
- ``scores(ctx, video_emb, class_emb) -> (B, C)``: class probabilities for evaluation.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import nn

from msta_fast.adapters import patch
from msta_fast.training.losses import VideoTextLoss, similarity_logits

# Modules imported on first lookup so that their methods register themselves (missing ones are skipped).
PLUGINS: list[str] = ["msta_fast.m2clip.recipe"]


@dataclass
class LossContext:
    temp: torch.Tensor
    cfg: dict
    criterion: nn.Module
    extras: dict = field(default_factory=dict)


class Method:
    """A method that trains ``msta_fast.patch(model, patch_method, ...)`` with CE (+ L_CC when enabled)."""

    trains = True

    def __init__(self, name: str, patch_method: str | None = None, consistency: bool = False):
        self.name = name
        self.patch_method = patch_method or name
        self.consistency = consistency

    def patch_options(self, cfg: dict) -> dict:
        """Options for ``msta_fast.patch``: the adapter section applies to MSTA; other methods take their
        published defaults, plus anything under ``adapter.options``."""
        a = cfg["adapter"]
        if self.patch_method == "msta":
            return dict(dim=a["dim"], start_layer=a["start_layer"], scale=a["scale"], dropout=a["dropout"],
                        num_frames=cfg["model"]["num_frames"], **a["options"])
        if self.patch_method in ("lora", "adaptformer"):
            return dict(start_layer=a["start_layer"], dropout=a["dropout"], **a["options"])
        return {}

    def prepare(self, model: nn.Module, cfg: dict) -> nn.Module:
        return patch(model, self.patch_method, **self.patch_options(cfg))

    def prepare_job(self, model: nn.Module, cfg: dict, job) -> nn.Module:
        """``prepare`` for one job (``job.classes``: its training classes, for heads sized by them)."""
        return self.prepare(model, cfg)

    def extra_scores(self, ctx: LossContext, model: nn.Module, classes: list[str], train_classes: list[str]) -> dict:
        """Other heads to evaluate on a list of ``classes``: ``{name: fn(video_emb) -> (B, C) probabilities}``,
        called right after the forward of the batch (M2-CLIP's visual head)."""
        return {}

    def uses_descriptions(self, cfg: dict) -> bool:
        return self.consistency and cfg["loss"]["consistency"] and cfg["loss"]["weight"] > 0

    def criterion(self, cfg: dict, spatial: torch.Tensor | None, temporal: torch.Tensor | None) -> nn.Module:
        use = self.uses_descriptions(cfg)
        return VideoTextLoss(spatial if use else None, temporal if use else None, cfg["loss"]["weight"])

    def loss(self, ctx: LossContext, video_emb, class_emb, labels, item_seeds=None) -> tuple[torch.Tensor, dict]:
        """``item_seeds`` (B,): the loader's per-item seeds, for loss terms with randomness of their own."""
        return ctx.criterion(video_emb, class_emb, labels, ctx.temp)

    def scores(self, ctx: LossContext, video_emb, class_emb) -> torch.Tensor:
        return similarity_logits(video_emb, class_emb, ctx.temp).softmax(dim=-1)


class ZeroShot(Method):
    """The backbone as it is: nothing trains, evaluation only."""

    trains = False

    def __init__(self, name: str = "zero"):
        super().__init__(name, "zero")


_REGISTRY: dict[str, Method] = {}
_plugins_loaded = False


def register_method(method: Method, *, replace: bool = False) -> Method:
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise


def get_method(name: str) -> Method:
    _load_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


register_method(Method("msta", consistency=True))
register_method(Method("lora"))
register_method(Method("adaptformer"))
register_method(Method("full"))
register_method(ZeroShot())

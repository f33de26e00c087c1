"""What every method package provides, and the pieces they share.

A method package (``msta_fast/methods/<name>/``, PEFT's ``tuners/<method>/`` is the model) holds:

- ``config.py``: a :class:`MethodConfig` dataclass with only the options that method has (an unknown or
  inapplicable option is an error naming it and listing the known ones);
- ``attach(model, towers, config, enabled) -> Attachment``: the adapters, built and hooked into the model;
- an objective (an :class:`Objective`): the training loss of a batch and the class scores of evaluation;
- a :class:`Method` tying them together, listed in :mod:`msta_fast.methods.registry`.

``msta_fast.patch`` (in :mod:`msta_fast.patching`) calls ``attach`` for any registered method, freezes what is
not the method's, and records what it did; it has no per-method branch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.methods.towers import Towers


class OptionError(ValueError):
    """An option that a method does not have, or a value it does not accept; the message names it."""


@dataclass
class MethodConfig:
    """Base of the methods' option dataclasses: validation, and the dict saved beside the adapters."""

    method: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from JSON / YAML
                setattr(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`OptionError` for a value out of range (subclasses)."""

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, **options) -> MethodConfig:
        """The config with ``options`` set; ``None`` values mean the method's default."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise OptionError(f"{cls.method!r} has no option {', '.join(map(repr, unknown))}; "
                              f"its options: {', '.join(cls.option_names()) or 'none'}")
        return cls(**{k: v for k, v in options.items() if v is not None})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> MethodConfig:
        return dataclasses.replace(self, **changes)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise OptionError(message)


def check_towers(towers: tuple[str, ...]) -> None:
    check(not set(towers) - {"vision", "text"}, f"unknown towers {sorted(set(towers) - {'vision', 'text'})}; "
          "expected 'vision' and/or 'text'")


def check_dim(name: str, value) -> None:
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          f"{name} must be an integer >= 1, got {value!r}")


def check_probability(name: str, value) -> None:
    check(isinstance(value, (int, float)) and 0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value!r}")


def check_scale(value) -> None:
    check(isinstance(value, (int, float)) and math.isfinite(value), f"scale must be a finite number, got {value!r}")


@dataclass
class Attachment:
    """What ``attach`` added to a model: a container module registered on the model under ``name`` (or None),
    hook handles, weight parametrizations ``(module, tensor name)``, and whether every parameter of the model
    trains (full fine-tuning) rather than only the new ones."""

    name: str | None = None
    container: nn.Module | None = None
    handles: list = field(default_factory=list)
    parametrized: list = field(default_factory=list)
    trains_everything: bool = False


def similarity_logits(video: torch.Tensor, text: torch.Tensor, temp: torch.Tensor | float) -> torch.Tensor:
    """video (B, E), text (C, E), both unnormalised -> logits (B, C) = cos / temp, in fp32."""
    return F.normalize(video.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t() / temp


@dataclass
class Encoded:
    """A batch through the two towers: video embeddings (B, E), class-text embeddings (C, E), the temperature,
    and whatever else the method's objective asked the video forward for (``features``, e.g. M2-CLIP's class
    token and per-frame embeddings)."""

    video: torch.Tensor
    text: torch.Tensor
    temp: torch.Tensor
    features: dict = field(default_factory=dict)


class Objective(nn.Module):
    """The training loss of a batch and the class scores of evaluation, for one job's classes.

    The default is the cross-entropy of ``cos(video, class text) / temp`` (MSTA adds its consistency term,
    M2-CLIP its heads). ``encode_video`` runs the video tower; an objective that needs more of the forward than
    the embedding (M2-CLIP) captures it there and returns it as ``features``.
    """

    def __init__(self, classes: list[str]):
        super().__init__()
        self.classes = list(classes)

    def encode_video(self, model: nn.Module, video: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return model.encode_video(video), {}

    def forward(self, encoded: Encoded, labels: torch.Tensor, item_seeds: torch.Tensor | None = None):
        """-> (loss, parts as floats for logging). ``item_seeds`` (B,): the loader's per-item seeds, for loss
        terms with randomness of their own (so that it does not depend on the batch or the number of processes)."""
        loss = F.cross_entropy(similarity_logits(encoded.video, encoded.text, encoded.temp), labels)
        return loss, {"ce": float(loss.detach())}

    def scores(self, encoded: Encoded, classes: list[str]) -> dict[str, torch.Tensor]:
        """Class probabilities (B, C) per head for a list of ``classes`` (the job's or others); the first head
        is the one the tables report."""
        return {"text": similarity_logits(encoded.video, encoded.text, encoded.temp).softmax(dim=-1)}


@dataclass(frozen=True)
class Method:
    """A registered method: its name, option dataclass, ``attach`` and objective.

    ``build_objective(model, config, classes, loss_options, descriptions=, template=)`` -> :class:`Objective`;
    ``loss_options`` is an instance of the method's ``loss_options`` dataclass (or None); ``descriptions`` the
    (spatial, temporal) class description embeddings (C, E) when ``wants_descriptions(loss_options)``;
    ``template`` the prompt of the class texts ("a video of {}.").
    ``for_classes(config, classes, loss_options)`` completes the options that depend on the job's training
    classes (M2-CLIP's head sizes) before ``patch``.
    """

    name: str
    config: type[MethodConfig]
    attach: Callable[..., Attachment]
    trains: bool = True
    loss_options: type | None = None
    build_objective: Callable[..., Objective] | None = None
    wants_descriptions: Callable[[object], bool] = lambda options: False
    for_classes: Callable[..., MethodConfig] = lambda config, classes, options: config

    def objective(self, model: nn.Module, config: MethodConfig, classes: list[str], loss_options=None, *,
                  descriptions=None, template: str = "a video of {}.") -> Objective:
        if self.build_objective is None:
            return Objective(classes)
        return self.build_objective(model, config, classes, loss_options, descriptions=descriptions,
                                    template=template)


def no_attachment(model: nn.Module, towers: Towers, config: MethodConfig, enabled) -> Attachment:
    return Attachment()


# A module may list under this attribute the names of methods other than ``forward`` that use its weights
# (M2-CLIP's decoder pass on the text tower's last block); under FSDP2 they gather the weights as a forward does.
EXTRA_FORWARD_METHODS = "msta_fast_forward_methods"
STATE_ATTR = "msta_fast_patch"


@dataclass
class PatchState:
    """What ``msta_fast.patch`` did to a model (kept on it as ``model.msta_fast_patch``)."""

    method: str
    config: MethodConfig
    attachment: Attachment
    enabled: bool = True
    adapter_names: list[str] = field(default_factory=list)
    requires_grad: dict[str, bool] = field(default_factory=dict)


def patch_state(model: nn.Module) -> PatchState | None:
    """The record of ``msta_fast.patch`` on ``model``, or None if it is not patched."""
    return getattr(model, STATE_ATTR, None)

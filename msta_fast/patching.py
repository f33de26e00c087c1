"""``patch(model, method, **options)``: inject a method's adapters, freeze the rest, report; and the way back.

Adapters attach with forward hooks (MSTA, AdaptFormer, M2-CLIP) or weight parametrizations (LoRA), so the backbone
keeps its module tree and parameter names: its checkpoints still load, and the new parameters are the only ones
that differ. What was done is recorded on the model (``model.msta_fast_patch``, a
:class:`~msta_fast.methods.base.PatchState`) for ``unpatch``, ``save_adapters`` and ``disable_adapters``. The
method itself (its options, modules and hooks) comes from the registry: nothing here depends on which it is.

A tower that runs its blocks under reentrant activation checkpointing (the official InternVideo ViCLIP's vision
tower does, always) would give the adapters inside no gradient; ``patch`` switches it to non-reentrant
checkpointing of the same blocks, says so in a log warning, and ``unpatch`` switches it back
(:func:`msta_fast.methods.towers.nonreentrant_checkpointing`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from msta_fast.methods.base import STATE_ATTR, MethodConfig, PatchState, patch_state
from msta_fast.methods.registry import get_method
from msta_fast.methods.towers import find_towers, nonreentrant_checkpointing


def patch(model: nn.Module, method: str = "msta", config: MethodConfig | None = None, **options) -> nn.Module:
    """Patch ``model`` in place and return it with only the method's new parameters trainable.

    ``options`` are the method's (see its config dataclass, e.g. :class:`msta_fast.methods.msta.MSTAConfig`);
    ``None`` or a missing option means its published default; an option the method does not have is an error.
    Or pass a ready ``config``. Works on ViCLIP (ours or the official module), ``FrameCLIP`` and open_clip CLIP.
    """
    if patch_state(model) is not None:
        raise RuntimeError(f"the model is already patched with {patch_state(model).method!r}; unpatch it first")
    spec = get_method(method)
    if config is None:
        config = spec.config.from_options(**options)
    elif options:
        raise TypeError("pass either a config or options, not both")
    elif not isinstance(config, spec.config):
        raise TypeError(f"method {method!r} takes a {spec.config.__name__}, got {type(config).__name__}")
    towers = find_towers(model)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {id(p) for p in model.parameters()}
    state = PatchState(method, config, attachment=None, requires_grad=requires_grad)
    attachment = spec.attach(model, towers, config, lambda: state.enabled)  # the hooks read `enabled` per call
    state.attachment = attachment
    if attachment.container is not None:
        if hasattr(model, attachment.name):
            for handle in attachment.handles:
                handle.remove()
            raise RuntimeError(f"the model already has an attribute {attachment.name!r}")
        reference = next(model.parameters())
        container = attachment.container.to(device=reference.device, dtype=reference.dtype)
        model.add_module(attachment.name, container.train(model.training))  # new modules follow the model's mode
    if spec.trains:
        attachment.handles += nonreentrant_checkpointing(towers)
    names = [n for n, p in model.named_parameters() if attachment.trains_everything or id(p) not in before]
    state.adapter_names = names
    trainable = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    setattr(model, STATE_ATTR, state)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove what ``patch`` added and restore ``requires_grad``; returns the original model."""
    state = patch_state(model)
    if state is None:
        raise RuntimeError("the model is not patched")
    attachment = state.attachment
    for handle in attachment.handles:
        handle.remove()
    for module, name in attachment.parametrized:
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    if attachment.container is not None:
        delattr(model, attachment.name)
    for n, p in model.named_parameters():
        p.requires_grad_(state.requires_grad.get(n, p.requires_grad))
    delattr(model, STATE_ATTR)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Within the block, the model computes as if unpatched (e.g. the frozen text tower of the consistency
    constraint)."""
    state = patch_state(model)
    if state is None:
        yield model
        return
    previous, state.enabled = state.enabled, False
    try:
        yield model
    finally:
        state.enabled = previous


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters ``patch`` made trainable, by name."""
    state = patch_state(model)
    if state is None:
        return {}
    params = dict(model.named_parameters())
    return {n: params[n] for n in state.adapter_names}


@dataclass
class ParameterReport:
    method: str
    trainable: int
    total: int
    groups: dict[str, int]

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        lines = [f"method: {self.method}", f"{'group':<40}{'parameters':>14}"]
        lines += [f"{g:<40}{n:>14,}" for g, n in self.groups.items()]
        lines.append(f"trainable: {self.trainable:,} of {self.total:,} ({100 * self.fraction:.2f}%)")
        return "\n".join(lines)


def _group(name: str) -> str:
    parts = name.replace(".parametrizations", "").split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i] + ["*"] + parts[i + 1 : i + 2])
    return ".".join(parts[:2])


def trainable_parameters(model: nn.Module) -> ParameterReport:
    """Counts of trainable parameters (by group) and of all parameters; ``print()`` it for a table."""
    groups: dict[str, int] = {}
    trainable = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            groups[_group(name)] = groups.get(_group(name), 0) + p.numel()
    state = patch_state(model)
    return ParameterReport(state.method if state else "none", trainable, total, groups)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["ParameterReport", "adapter_parameters", "count_trainable", "disable_adapters", "patch", "patch_state",
           "trainable_parameters", "unpatch"]

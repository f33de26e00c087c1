"""``patch(model, method, ...)``: inject adapters, freeze the rest, report; and the way back.

Adapters attach with forward hooks (MSTA, AdaptFormer) or weight parametrizations (LoRA), so the
backbone keeps its module tree and parameter names: its checkpoints still load, and the new
parameters are the only ones that differ. The hooks are prepended, so that they run while a
wrapper's own post-forward hooks (FSDP2 resharding a block) have not yet run. What was done is recorded on the model
(``model.msta_fast_patch``) for ``unpatch``, ``save_adapters`` and ``disable_adapters``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize

from msta_fast.adapters.adaptformer import AdaptFormerAdapter, AdaptFormerAdapters, mlp_hook
from msta_fast.adapters.config import PatchConfig
from msta_fast.adapters.lora import lora_parametrizations
from msta_fast.adapters.m2clip import attach_m2clip, build_m2clip
from msta_fast.adapters.msta import adapted_blocks, build_msta, grid_pre_hook, msta_block_hook
from msta_fast.adapters.towers import VideoGrid, find_towers

STATE_ATTR = "msta_fast_patch"


@dataclass
class PatchState:
    config: PatchConfig
    enabled: bool = True
    container: str | None = None  # attribute name of the adapter container on the model
    handles: list = field(default_factory=list)
    parametrized: list = field(default_factory=list)  # (module, tensor name)
    adapter_names: list[str] = field(default_factory=list)
    requires_grad: dict[str, bool] = field(default_factory=dict)
    grid: VideoGrid = field(default_factory=VideoGrid)


def get_patch_state(model: nn.Module) -> PatchState | None:
    return getattr(model, STATE_ATTR, None)


def patch(
    model: nn.Module,
    method: str = "msta",
    dim: int | None = None,
    start_layer: int = 1,
    scale: float | None = None,
    **options,
) -> nn.Module:
    """Patch ``model`` in place and return it with only the new parameters trainable.

    ``dim`` and ``scale`` default to the method's published values (MSTA: 256 and 0.005). See
    :class:`PatchConfig` for the other options. Works on ViCLIP (ours or the official module),
    ``FrameCLIP`` and open_clip CLIP models.
    """
    if get_patch_state(model) is not None:
        raise RuntimeError(
            f"the model is already patched with {get_patch_state(model).config.method!r}; unpatch it first"
        )
    cfg = PatchConfig.from_options(method, dim=dim, start_layer=start_layer, scale=scale, **options)
    vision, text = find_towers(model)
    state = PatchState(cfg, requires_grad={n: p.requires_grad for n, p in model.named_parameters()})
    before = {id(p) for p in model.parameters()}
    enabled = lambda: state.enabled  # noqa: E731 - read by the hooks at call time
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype

    if cfg.method == "msta":
        adapters = build_msta(vision, text, cfg).to(device=device, dtype=dtype)
        _attach(model, "msta_adapters", adapters, state)
        for i, adapter in adapters.vision.items():
            hook = msta_block_hook(adapter, vision, state.grid, enabled)
            state.handles.append(vision.blocks[int(i)].register_forward_hook(hook, with_kwargs=True, prepend=True))
        for i, adapter in adapters.text.items():
            hook = msta_block_hook(adapter, text, None, enabled)
            state.handles.append(text.blocks[int(i)].register_forward_hook(hook, with_kwargs=True, prepend=True))
        if adapters.vision:
            frames = lambda: getattr(model, "frames_per_clip", None) or cfg.num_frames or 1  # noqa: E731
            state.handles.append(
                vision.grid_module.register_forward_pre_hook(
                    grid_pre_hook(state.grid, vision, frames), with_kwargs=True
                )
            )
    elif cfg.method == "adaptformer":
        adapters = AdaptFormerAdapters()
        for tower in (vision, text):
            if tower.name in cfg.towers:
                for i in adapted_blocks(tower, cfg.start_layer):
                    adapter = AdaptFormerAdapter(tower.width, cfg.dim, cfg.scale, cfg.dropout).to(device, dtype)
                    getattr(adapters, tower.name)[str(i)] = adapter
                    state.handles.append(
                        tower.blocks[i].mlp.register_forward_hook(mlp_hook(adapter, enabled), prepend=True)
                    )
        _attach(model, "adaptformer_adapters", adapters, state)
    elif cfg.method == "m2clip":
        adapters = build_m2clip(vision, text, cfg).to(device=device, dtype=dtype)
        _attach(model, "m2clip_adapters", adapters, state)
        state.handles += attach_m2clip(model, adapters, vision, text, cfg, state.grid, enabled)
    elif cfg.method == "lora":
        for tower in (vision, text):
            if tower.name in cfg.towers:
                for i in adapted_blocks(tower, cfg.start_layer):
                    for module, name, param in lora_parametrizations(
                        tower.blocks[i].attn, cfg.dim, cfg.lora_targets, cfg.scale, enabled
                    ):
                        parametrize.register_parametrization(module, name, param.to(device, dtype))
                        state.parametrized.append((module, name))
    else:
        for tower in (vision, text):
            if tower.name in cfg.towers:
                adapted_blocks(tower, cfg.start_layer)  # the same start_layer check for every method

    if cfg.method == "full":
        state.adapter_names = [n for n, _ in model.named_parameters()]
    else:
        state.adapter_names = [n for n, p in model.named_parameters() if id(p) not in before]
    trainable = set(state.adapter_names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    setattr(model, STATE_ATTR, state)
    return model


def _attach(model: nn.Module, name: str, container: nn.Module, state: PatchState) -> None:
    if hasattr(model, name):
        raise RuntimeError(f"the model already has an attribute {name!r}")
    model.add_module(name, container.train(model.training))  # new modules follow the model's mode
    state.container = name


def unpatch(model: nn.Module) -> nn.Module:
    """Remove what ``patch`` added and restore ``requires_grad``; returns the original model."""
    state = get_patch_state(model)
    if state is None:
        raise RuntimeError("the model is not patched")
    for handle in state.handles:
        handle.remove()
    for module, name in state.parametrized:
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    if state.container is not None:
        delattr(model, state.container)
    for n, p in model.named_parameters():
        p.requires_grad_(state.requires_grad.get(n, p.requires_grad))
    delattr(model, STATE_ATTR)
    return model


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Within the block, the model computes as if unpatched (e.g. the frozen text tower of the
    consistency constraint)."""
    state = get_patch_state(model)
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
    state = get_patch_state(model)
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
    state = get_patch_state(model)
    return ParameterReport(state.config.method if state else "none", trainable, total, groups)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "ParameterReport",
    "adapter_parameters",
    "count_trainable",
    "disable_adapters",
    "get_patch_state",
    "patch",
    "trainable_parameters",
    "unpatch",
]

"""Reading ViCLIP checkpoints as users have them.

Accepted: InternVideo's ``{"model": state_dict}`` .pth files, bare or ``state_dict`` / ``module``-wrapped
state dicts, ``module.`` / ``model.`` prefixes, and safetensors files such as the ``model.safetensors`` of
the ``OpenGVLab/ViCLIP-*-hf`` releases, whose tensors carry the same names. Everything is read with
``torch.load(weights_only=True)`` unless the caller trusts the file (``trust_pickle=True``). The
architecture is read off the tensor shapes, which are checked for consistency first: an inconsistent
file is refused, an ambiguous one (a depth or width that no preset has) loads with a warning.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import pickle
import re
import types
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from msta_fast.models.viclip import PRESETS, ViCLIP, ViCLIPConfig

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "state_dict", "module")
_PREFIXES = ("module.", "model.")
_TOWERS = ("vision", "text")
# The fields a preset fixes; frame count and image size are free (the embeddings are resized).
_ARCHITECTURE_FIELDS = (
    "patch_size", "vision_width", "vision_layers", "embed_dim", "text_width", "text_layers", "vocab_size",
    "context_length",
)
# Tensors that each give a tower's width (key, dimension); the blocks are checked against the model built.
_WIDTH_SOURCES = {
    "vision tower width": (
        ("vision_encoder.conv1.weight", 0),
        ("vision_encoder.class_embedding", 0),
        ("vision_encoder.positional_embedding", 1),
        ("vision_encoder.temporal_positional_embedding", 2),
        ("vision_encoder.ln_pre.weight", 0),
        ("vision_encoder.ln_post.weight", 0),
        ("vision_encoder.proj", 0),
    ),
    "text tower width": (
        ("text_encoder.token_embedding.weight", 1),
        ("text_encoder.positional_embedding", 1),
        ("text_encoder.ln_final.weight", 0),
        ("text_encoder.text_projection", 0),
    ),
    "joint embedding size": (("vision_encoder.proj", 1), ("text_encoder.text_projection", 1)),
}
TEMPORAL_RESIZE_RULES = ("official", "interpolate")


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model: lists the missing and unexpected keys, shape mismatches and
    inconsistencies between the checkpoint's own tensors (``problems``)."""

    def __init__(
        self,
        source: str,
        missing: Iterable[str],
        unexpected: Iterable[str],
        shapes: Iterable[str] = (),
        problems: Iterable[str] = (),
    ):
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.shapes, self.problems = list(shapes), list(problems)
        lines = [f"{source} does not fit the model:"] + [f"  {p}" for p in self.problems]
        for title, keys in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", self.shapes),
        ):
            if keys:
                lines.append(f"  {len(keys)} {title}: " + ", ".join(keys[:40]) + (" ..." if len(keys) > 40 else ""))
        super().__init__("\n".join(lines))


class UnsafeCheckpointError(ValueError):
    """A .pth file holds pickled Python objects, which ``torch.load(weights_only=True)`` refuses."""


class AmbiguousCheckpointWarning(UserWarning):
    """A checkpoint's shapes allow more than one reading: a depth or width that no preset has."""


# ---------------------------------------------------------------------------------------------- reading


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Flat state dict from any accepted checkpoint format (see :func:`read_checkpoint`)."""
    return read_checkpoint(path, trust_pickle)[0]


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(flat state dict, saved architecture or None) from any accepted checkpoint format. The architecture is the
    ``"architecture"`` entry (ViCLIPConfig fields) that msta_fast writes beside the weights of the models it
    trains, so that what the shapes cannot tell (head counts) comes back.

    ``.pth`` files load with ``weights_only=True``. ``trust_pickle=True`` unpickles everything (it runs
    whatever code the file names: only for a file you trust), for the checkpoints written by InternVideo's
    training code, which pickle its config object; classes that cannot be imported here (that code's
    ``utils.easydict.EasyDict``, say) are replaced by dict stand-ins (logged), since only the tensors are kept.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickled(path, trust_pickle)
    architecture = obj.get("architecture") if isinstance(obj, dict) else None
    return strip_prefixes(_unwrap(obj, path)), architecture if isinstance(architecture, dict) else None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors' own error types, re-raised with the file name
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def _read_pickled(path: Path, trust_pickle: bool) -> object:
    corrupt = f"{path}: cannot be read as a PyTorch checkpoint (truncated or corrupt?)"
    if trust_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_STAND_IN_PICKLE)
        except Exception as e:  # noqa: BLE001 - anything the unpickled code raises, re-raised with the file name
            raise ValueError(f"{corrupt}: {type(e).__name__}: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ValueError(f"{corrupt}: {e}") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise UnsafeCheckpointError(
            f"{path} holds pickled Python objects"
            + (f" (the first one: {found.group(1)})" if found else "")
            + ", which torch.load(weights_only=True) refuses to run. Checkpoints written by InternVideo's "
            "training code pickle their config this way. If you trust this file, load it with "
            "trust_pickle=True (e.g. load_viclip(path, trust_pickle=True)); that unpickles it fully, running "
            "any code it names."
        ) from None
    except Exception as e:  # noqa: BLE001 - zip / EOF errors from torch.load, re-raised with the file name
        raise ValueError(f"{corrupt}: {type(e).__name__}: {e}") from None


class _StandIn(dict):
    """Takes the place of a pickled object whose class cannot be imported; keeps what it was built from.
    A dict so that pickled dict subclasses (EasyDict) can be filled item by item."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _StandInUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            log.warning("unpickling: %s.%s cannot be imported; an empty stand-in takes its place", module, name)
            return type(name, (_StandIn,), {"__module__": module})


# torch.load takes a module-like object with ``Unpickler`` and ``load``.
_STAND_IN_PICKLE = types.SimpleNamespace(
    __name__="msta_fast_stand_in_pickle",
    Unpickler=_StandInUnpickler,
    load=lambda f, **kwargs: _StandInUnpickler(f, **kwargs).load(),
)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    sd = obj
    while isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        wrapper = next((k for k in _WRAPPER_KEYS if k in sd), None)
        if wrapper is None:
            raise ValueError(f"{path}: no state dict found (top-level keys: {sorted(map(str, sd))[:20]})")
        sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def drop_keys(sd: dict[str, torch.Tensor], patterns: Iterable[str], source: str) -> dict[str, torch.Tensor]:
    """``sd`` without the tensors whose names match one of ``patterns`` (``fnmatch``: ``*`` and ``?``);
    every pattern must match something, and the dropped names are logged."""
    dropped = set()
    for pattern in patterns:
        hits = {k for k in sd if fnmatch.fnmatchcase(k, pattern)}
        if not hits:
            raise ValueError(f"{source}: ignore_keys pattern {pattern!r} matches no tensor of the checkpoint")
        dropped |= hits
    if dropped:
        log.info("%s: dropping %d tensors (ignore_keys): %s", source, len(dropped), ", ".join(sorted(dropped)))
    return {k: v for k, v in sd.items() if k not in dropped}


# ------------------------------------------------------------------------------- reading the architecture


def _block_count(sd: dict[str, torch.Tensor], tower: str, source: str) -> int:
    """Number of blocks of ``tower`` (``vision_encoder`` / ``text_encoder``); their indices must be 0..n-1."""
    pattern = re.compile(rf"^{tower}\.transformer\.resblocks\.(\d+)\.")
    indices = sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})
    absent = sorted(set(range(indices[-1] + 1)) - set(indices)) if indices else []
    if absent:
        raise CheckpointMismatchError(
            source,
            [],
            [],
            problems=[
                f"{tower} holds blocks {_ranges(indices)} but not {_ranges(absent)}: the file is incomplete "
                "or its blocks were renumbered"
            ],
        )
    return len(indices)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _check_widths_agree(sd: dict[str, torch.Tensor], source: str) -> None:
    problems = []
    for what, sources in _WIDTH_SOURCES.items():
        sizes = {k: sd[k].shape[d] for k, d in sources if k in sd and sd[k].ndim > d}
        if len(set(sizes.values())) > 1:
            problems.append(f"the tensors disagree on the {what}: " + ", ".join(f"{k} {n}" for k, n in sizes.items()))
    if problems:
        raise CheckpointMismatchError(source, [], [], problems=problems)


def infer_config(sd: dict[str, torch.Tensor], source: str = "state dict", **overrides) -> ViCLIPConfig:
    """ViCLIPConfig from tensor shapes (heads default to width / 64), then ``overrides``.

    Raises ``CheckpointMismatchError`` where the shapes contradict each other (block indices with a gap,
    tensors of one tower with different widths, towers with different embedding sizes) and warns
    (``AmbiguousCheckpointWarning``) where they allow another reading, unless the override that settles it
    is given.
    """
    _check_widths_agree(sd, source)
    vision_layers = _block_count(sd, "vision_encoder", source)
    text_layers = _block_count(sd, "text_encoder", source)
    try:
        conv = sd["vision_encoder.conv1.weight"]
        shape_cfg = dict(
            patch_size=conv.shape[-1],
            image_size=math.isqrt(sd["vision_encoder.positional_embedding"].shape[0] - 1) * conv.shape[-1],
            num_frames=sd["vision_encoder.temporal_positional_embedding"].shape[1],
            vision_width=conv.shape[0],
            vision_layers=vision_layers,
            embed_dim=sd["vision_encoder.proj"].shape[1],
            text_width=sd["text_encoder.token_embedding.weight"].shape[1],
            text_layers=text_layers,
            vocab_size=sd["text_encoder.token_embedding.weight"].shape[0],
            context_length=sd["text_encoder.positional_embedding"].shape[0],
        )
    except KeyError as e:
        raise CheckpointMismatchError(source, [e.args[0]], []) from None
    cfg = ViCLIPConfig(**{**shape_cfg, **overrides})
    _warn_if_ambiguous(cfg, set(overrides), source)
    return cfg


def _nearest_preset(cfg: ViCLIPConfig) -> str:
    """The preset that differs from ``cfg`` in the fewest architecture fields."""

    def differences(name: str) -> int:
        return sum(getattr(PRESETS[name], f) != getattr(cfg, f) for f in _ARCHITECTURE_FIELDS)

    return min(sorted(PRESETS), key=differences)


def _warn_if_ambiguous(cfg: ViCLIPConfig, given: set[str], source: str) -> None:
    name = _nearest_preset(cfg)
    preset = PRESETS[name]
    notes = []
    for tower in _TOWERS:
        layers, width, heads = f"{tower}_layers", f"{tower}_width", f"{tower}_heads"
        depth = getattr(cfg, layers)
        if layers not in given and depth != getattr(preset, layers):
            notes.append(
                f"its {tower} tower has {depth} blocks where {name} has {getattr(preset, layers)}, so a block may be "
                f"missing from the file; if the model has {depth}, pass {layers}={depth}"
            )
        if heads not in given and getattr(cfg, width) not in {getattr(p, width) for p in PRESETS.values()}:
            notes.append(
                f"its {tower} width {getattr(cfg, width)} is no preset's and the head count cannot be read from "
                f"the weights: it is taken as width / 64 = {getattr(cfg, heads)}; pass {heads}= with the model's "
                "head count"
            )
    if notes:
        warnings.warn(
            f"{source}: the shapes resemble {name}, but " + "; ".join(notes), AmbiguousCheckpointWarning, stacklevel=3
        )


# ---------------------------------------------------------------------------------------------- resizing


def resize_temporal_embedding(emb: torch.Tensor, num_frames: int, rule: str = "official") -> torch.Tensor:
    """(1, T0, D) -> (1, num_frames, D).

    ``rule="official"`` is InternVideo's (``load_temp_embed_with_mismatch``): the first ``num_frames``
    positions when there are fewer frames, linear interpolation (half-pixel centres) when there are more.
    ``rule="interpolate"`` interpolates linearly in both directions.
    """
    if rule not in TEMPORAL_RESIZE_RULES:
        raise ValueError(f"unknown temporal_resize rule {rule!r}; known: {TEMPORAL_RESIZE_RULES}")
    if emb.shape[1] == num_frames:
        return emb
    if rule == "official" and num_frames < emb.shape[1]:
        return emb[:, :num_frames].clone()
    out = F.interpolate(emb.float().transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(emb.dtype)


def resize_positional_embedding(emb: torch.Tensor, grid: int) -> torch.Tensor:
    """(1 + g0*g0, D) -> (1 + grid*grid, D): bicubic over the patch grid, class position kept."""
    g0 = math.isqrt(emb.shape[0] - 1)
    if g0 == grid:
        return emb
    patches = emb[1:].float().reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([emb[:1].float(), patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)]).to(emb.dtype)


# ----------------------------------------------------------------------------------------------- loading


def check_keys(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, problems: Iterable[str] = ()) -> None:
    """Raise ``CheckpointMismatchError`` unless ``sd`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(source, missing, unexpected, shapes, problems)


def _unexpected_note(model: ViCLIP, sd: dict[str, torch.Tensor]) -> list[str]:
    unexpected = sorted(set(sd) - set(model.state_dict()))
    if not unexpected:
        return []
    values = sum(sd[k].numel() for k in unexpected)
    shown = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in unexpected[:10]) + (" ..." if len(unexpected) > 10 else "")
    return [
        f"{len(unexpected)} tensors ({values:,} values) that ViCLIP does not have: {shown}. They are refused rather "
        "than ignored, since they may be weights of a different model; if you know the model does not use them, "
        "pass ignore_keys=[...] (names or fnmatch patterns) to drop them"
    ]


# What a checkpoint's "architecture" entry settles (the rest is read off the shapes, or chosen by the caller).
SAVED_ARCHITECTURE = ("vision_heads", "text_heads", "vision_layers", "text_layers")


def load_viclip(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    *,
    temporal_resize: str = "official",
    trust_pickle: bool = False,
    ignore_keys: Iterable[str] = (),
    **overrides,
) -> ViCLIP:
    """ViCLIP from a published checkpoint; keys must match exactly.

    path: a .pth / .pt file or a .safetensors file (e.g. the ``model.safetensors`` of ViCLIP-B-16-hf).
    num_frames: another frame count than the checkpoint's resizes the temporal embedding (1, T, D)
        following ``temporal_resize``: ``"official"`` (default), InternVideo's rule, keeps the first
        ``num_frames`` positions for fewer frames and interpolates linearly for more, so the model computes
        what the official code computes with those weights; ``"interpolate"`` interpolates linearly both
        ways (smoother for fewer frames, but not the official model's function).
    image_size: another size interpolates the spatial positional embedding (bicubic, as the official code).
    trust_pickle: unpickle a .pth fully instead of with ``weights_only=True``: for checkpoints you trust,
        such as those written by InternVideo's training code (they pickle a config object). Never the
        default; a file that needs it is refused with an error that names it.
    ignore_keys: names or fnmatch patterns of checkpoint tensors to drop before the strict key check
        (logged); by default a tensor ViCLIP does not have is an error, not silently skipped.
    overrides: other config fields: ``vision_heads`` / ``text_heads`` (the head count cannot be read off
        the weights: width / 64 unless given) and ``vision_layers`` / ``text_layers`` to confirm a depth
        that no preset has (otherwise ``AmbiguousCheckpointWarning``).
    """
    source = str(path)
    sd, architecture = read_checkpoint(path, trust_pickle=trust_pickle)
    sd = drop_keys(sd, ignore_keys, source)
    for key in SAVED_ARCHITECTURE:  # a model msta_fast trained says what its shapes cannot
        if architecture and key in architecture:
            overrides.setdefault(key, architecture[key])
    cfg = infer_config(sd, source, **overrides)
    sd["vision_encoder.temporal_positional_embedding"] = resize_temporal_embedding(
        sd["vision_encoder.temporal_positional_embedding"], cfg.num_frames, temporal_resize
    )
    sd["vision_encoder.positional_embedding"] = resize_positional_embedding(
        sd["vision_encoder.positional_embedding"], cfg.grid_size
    )
    with torch.device("meta"):
        model = ViCLIP(cfg)
    check_keys(model, sd, source, _unexpected_note(model, sd))
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model

"""Options of ``msta_fast.patch``: one validated dataclass, saved beside the adapter weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

METHODS = ("msta", "lora", "adaptformer", "full", "zero", "m2clip")

# The published defaults of each method, used where an option is left as None:
# MSTA: r=256, s=0.005 (paper Table 1, base-to-novel). LoRA: rank 128 on q, k, v, o of the video
# tower = 9.4M parameters on ViCLIP-B/16 (the paper's LoRA budget). AdaptFormer: r=256 in both
# towers = 7.9M (the paper's AdaptFormer budget), s=0.1 (AdaptFormer's video setting).
METHOD_DEFAULTS = {
    "msta": dict(dim=256, scale=0.005, towers=("vision", "text")),
    "lora": dict(dim=128, scale=1.0, towers=("vision",)),
    "adaptformer": dict(dim=256, scale=0.1, towers=("vision", "text")),
    "full": dict(towers=("vision", "text")),
    "zero": dict(towers=()),
    # M2-CLIP (method.md section 5): bottleneck Ca = 384 in the TED and text adapters; no scale.
    "m2clip": dict(dim=384, scale=1.0, towers=("vision", "text"), text_layers=2),
}
LINEAR_INITS = ("kaiming", "xavier")
CONV_INITS = ("zeros", "kaiming", "normal")
LORA_TARGETS = ("q", "k", "v", "o")


@dataclass
class PatchConfig:
    """What to inject. ``start_layer`` is 1-based: blocks ``start_layer .. L`` of each tower.

    MSTA options: ``temporal_kernel`` (kT, kH, kW) of the depthwise temporal convolution
    ((3, 1, 1) reproduces the paper's parameter counts; (3, 3, 3) is the natural variant),
    ``dropout`` on the hidden activation after the shared layer, ``grad_scale`` (parameters see
    gradients as if the scale were 1), ``linear_init``, ``conv_init``, ``share`` (one shared layer
    per depth for both towers; False gives each tower its own, an ablation).
    LoRA: ``lora_targets`` among q, k, v, o. Raw open_clip models: ``num_frames`` per clip.
    M2-CLIP (see ``msta_fast.adapters.m2clip``): ``pre_attn`` (the SSv2 variant: adapters before
    attention too), ``text_layers`` (text adapters in the top ``text_layers`` blocks, default 2;
    "all" for the SSv2 variant), ``num_classes`` (the visual classification head; None: no head),
    ``head_dropout``, ``frame_adapter`` (the frame-level temporal adapter where per-frame
    embeddings exist), ``zero_init_text`` (text adapters start at zero so the patched model starts
    equal to the original; False: the released code's default initialisation), ``mlm_vocab`` (the
    size of the word list of the masked-language-modelling head; None: no MLM head).
    """

    method: str = "msta"
    dim: int | None = None
    start_layer: int = 1
    scale: float | None = None
    dropout: float = 0.1
    grad_scale: bool = True
    temporal_kernel: tuple[int, int, int] = (3, 1, 1)
    linear_init: str = "kaiming"
    conv_init: str = "zeros"
    share: bool = True
    towers: tuple[str, ...] | None = None
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o")
    num_frames: int | None = None
    pre_attn: bool = False
    text_layers: int | str | None = None
    num_classes: int | None = None
    head_dropout: float = 0.5
    frame_adapter: bool = True
    zero_init_text: bool = True
    mlm_vocab: int | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.temporal_kernel = tuple(int(k) for k in self.temporal_kernel)
        self.towers = tuple(self.towers)
        self.lora_targets = tuple(self.lora_targets)
        if self.method in ("msta", "lora", "adaptformer", "m2clip"):
            if not isinstance(self.dim, int) or self.dim < 1:
                raise ValueError(f"dim must be an integer >= 1, got {self.dim!r}")
        if not isinstance(self.start_layer, int) or self.start_layer < 1:
            raise ValueError(f"start_layer is 1-based and must be >= 1, got {self.start_layer!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.temporal_kernel) != 3 or any(k < 1 or k % 2 == 0 for k in self.temporal_kernel):
            raise ValueError(f"temporal_kernel must be three odd sizes (kT, kH, kW), got {self.temporal_kernel}")
        if self.linear_init not in LINEAR_INITS:
            raise ValueError(f"linear_init must be one of {LINEAR_INITS}, got {self.linear_init!r}")
        if self.conv_init not in CONV_INITS:
            raise ValueError(f"conv_init must be one of {CONV_INITS}, got {self.conv_init!r}")
        if unknown := set(self.towers) - {"vision", "text"}:
            raise ValueError(f"unknown towers {sorted(unknown)}; expected 'vision' and/or 'text'")
        if unknown := set(self.lora_targets) - set(LORA_TARGETS):
            raise ValueError(f"unknown lora_targets {sorted(unknown)}; expected some of {LORA_TARGETS}")
        if self.method == "m2clip":
            self._check_m2clip()
        if self.extra:
            raise ValueError(
                f"unknown options {sorted(self.extra)} for method {self.method!r}; "
                f"known: {sorted(f.name for f in dataclasses.fields(self) if f.name != 'extra')}"
            )

    def _check_m2clip(self) -> None:
        if not (self.text_layers == "all" or (isinstance(self.text_layers, int) and self.text_layers >= 0)):
            raise ValueError(f"text_layers must be an integer >= 0 or 'all', got {self.text_layers!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"num_classes must be an integer >= 1 or None, got {self.num_classes!r}")
        if self.mlm_vocab is not None and (not isinstance(self.mlm_vocab, int) or self.mlm_vocab < 1):
            raise ValueError(f"mlm_vocab must be an integer >= 1 or None, got {self.mlm_vocab!r}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {self.head_dropout}")

    @classmethod
    def from_options(cls, method: str = "msta", **options) -> PatchConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in options.items() if k in names}
        return cls(method=method, **known, extra={k: v for k, v in options.items() if k not in names})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> PatchConfig:
        return cls.from_options(**d)

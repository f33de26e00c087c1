"""Recipe configuration: built-in defaults <- YAML file <- command-line flags <- ``--set key=value``.

A config is a nested dict. ``DEFAULTS`` lists every key a recipe understands; a YAML file or an override may
only set keys that exist there (a typo is an error naming the key and the file), and a value must have the
default's type (ints are accepted for floats; ``null`` is accepted where the default is ``null``, and anywhere
under ``model.overrides`` and ``method_overrides``, which are free-form). ``--set`` values are parsed as YAML,
so ``--set optim.lr=2e-3 --set protocol.seeds=[1]`` work.

Each method's options live in ``adapter.<method>`` (what ``msta_fast.patch`` takes) and ``loss.<method>`` (its
objective's options); :func:`method_options` validates them against the method's own dataclasses, so an option
that a method does not have is an error naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from pathlib import Path

import yaml

from msta_fast.methods import OptionError, get_method
from msta_fast.training.files import atomic_write_text

SETTINGS = ("b2n", "fs", "zs", "full")

DEFAULTS: dict = {
    "setting": "b2n",
    "dataset": "synthetic",
    "methods": ["zero", "msta"],
    "out": None,  # run directory; default runs/<setting>_<dataset>
    "data_root": None,  # folder holding the videos (list paths are relative to it)
    "lists_dir": None,  # user lists in the ViFi-CLIP layout (the K-400 lists too large to ship)
    "checkpoint": None,  # ViCLIP weights; None = the small model recipes/pretrain.py caches (synthetic captions)
    "cache_dir": None,  # synthetic data and pre-trained model; default $MSTA_FAST_CACHE or ~/.cache/msta_fast
    "resume": False,
    "allow_changes": False,  # with resume: continue although this config differs from the run's (changes listed)
    "seed": 0,
    "precision": "auto",  # auto (bf16 autocast on GPUs, fp32 on the CPU) | fp32 | bf16
    "model": {
        "name": "viclip-b16",  # preset used when building from scratch (synthetic) or to check a checkpoint
        "num_frames": 8,
        "image_size": 224,
        "overrides": {},  # other ViCLIPConfig keys (head counts; sizes of a model pre-trained from scratch)
    },
    # Per method, the options of msta_fast.patch (e.g. adapter.msta.dim, adapter.lora.rank); a method not listed
    # takes its published defaults (msta_fast/methods/<method>/config.py).
    "adapter": {},
    "loss": {
        "template": "a video of {}.",  # the class text of every method
        # Per method, its objective's options, e.g. loss.msta: {consistency, weight, num_descriptions,
        # descriptions_dir} (the description-guided constraint L_CC, method.md section 3), loss.m2clip: {mlm, ...}.
    },
    "optim": {
        "lr": 1.0e-3,
        "weight_decay": 1.0e-3,
        "betas": [0.9, 0.98],
        "epochs": 11,
        "warmup_epochs": 2.0,
        "min_lr_ratio": 0.01,  # cosine ends at lr / 100 (the authors' logs)
        "batch_size": 32,  # global batch: gradient accumulation keeps it on any number of devices
        "micro_batch_size": 8,  # clips per device per forward pass
        "grad_clip": 0.0,  # 0 = off
        # Stop the run (before any checkpoint of that step) when a trainable weight's magnitude exceeds this: a
        # run whose loss is still finite but whose weights explode. 0 = off.
        "max_weight": 1.0e4,
        "lr_multipliers": {},  # parameter-name prefix -> lr factor (M2-CLIP's text adapters at half the lr)
    },
    "data": {
        "backend": "decord",  # decord | pyav | torchcodec (decoding in the torch loader's workers)
        "decode_timeout": 60.0,  # seconds a video may take to decode before it counts as unreadable (0: no limit)
        "loader": "auto",  # auto (DALI on GPUs when installed, else torch) | torch | dali
        "num_workers": 4,
        "strict": False,  # True: an unreadable video stops the run instead of being replaced
        # Stop when more than this fraction of a training epoch's or an evaluation's videos is unreadable (all
        # unreadable always stops); below it they are replaced, counted and listed in unreadable_videos.tsv
        "max_unreadable": 0.02,
        "augment": True,  # the paper's augmentation; the synthetic set turns it off (flips reverse directions)
        "flip_prob": 0.5,  # the paper's; 0 keeps the rest of the augmentation where a flip changes the class
        # dataset: folder (your own videos under data_root): the hold-out fraction when the folder has no val/,
        # or explicit lists instead of class folders (read_list format; labels: a labels CSV or a name per line)
        "val_fraction": 0.2,
        "train_list": None,
        "val_list": None,
        "labels": None,
        "sampling": "segments",  # segments (T equal segments, the paper's) | stride (T frames frame_stride apart)
        "frame_stride": 16,  # frames between two sampled frames with sampling=stride (M2-CLIP's K-400 recipe)
    },
    "eval": {
        "batch_size": 16,
        "num_clips": 0,  # 0 = the protocol's (full: 4 clips x 3 crops; others 1 x 1)
        "num_crops": 0,
        "select_best": "auto",  # auto (b2n: evaluate base-val every epoch, keep the best) | last | best
    },
    "protocol": {
        "seeds": [1, 2, 3],  # base-to-novel
        "shots": [2, 4, 8, 16],  # few-shot K
        "splits": [1, 2, 3],  # zero-shot splits (HMDB/UCF test splits, K-600 subsets)
        "zs_targets": ["hmdb", "ucf", "k600"],
        "target_roots": {},  # zero-shot: data root per target data set (default: data_root)
    },
    "checkpointing": {
        "every_steps": 0,  # also save every N optimizer steps (0: at epoch ends only)
    },
    "distributed": {"strategy": "fsdp"},  # fsdp (FSDP2 fully_shard) | ddp
    "synthetic": {  # the built-in data set (msta_fast.data.synthetic)
        "seed": 0,
        "size": 32,
        "frames": 16,
        "train_per_class": 20,
        "val_per_class": 8,
    },
    "pretrain": {  # recipes/pretrain.py: contrastive pre-training of model.name (+ overrides) on the synthetic captions
        "epochs": 20,
        "lr": 2.0e-3,
        "batch_size": 32,
        "warmup_epochs": 1.0,
        "weight_decay": 0.05,
    },
    "method_overrides": {},  # per method: a nested dict merged into the config for that method's runs
    # merged into the config when the run has no checkpoint and uses the built-in small backbone (your own folder
    # without ViCLIP weights): the sizes that backbone was pre-trained with, and adapters that fit it
    "builtin_backbone": {},
    "debug": {
        "max_videos": 0,  # use at most this many videos per list (quick runs)
    },
}

CHOICES = {
    "setting": SETTINGS,
    "precision": ("auto", "fp32", "bf16"),
    "data.backend": ("decord", "pyav", "torchcodec"),
    "data.loader": ("auto", "torch", "dali"),
    "data.sampling": ("segments", "stride"),
    "eval.select_best": ("auto", "last", "best"),
    "distributed.strategy": ("fsdp", "ddp"),
}
_FLOAT_1_1 = (r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
              r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
FREE_FORM = ("model.overrides", "adapter", "method_overrides", "protocol.target_roots", "builtin_backbone",
             "optim.lr_multipliers")
# loss.<method> sections are checked by the method's own loss options (method_options)
METHOD_SECTIONS = ("loss",)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; this loader reads it as a float, as everyone expects."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|" + _FLOAT_1_1),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A config value or key that is not allowed; the message names the key and where it came from."""


def merge(base: dict, update: dict) -> dict:
    """Deep merge: a copy of ``base`` with ``update``'s values, recursively for dicts."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, object]:
    """``"optim.lr=2e-3"`` -> ``("optim.lr", 0.002)``: the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} as YAML ({e})") from e
    return key.strip(), value


def set_dotted(cfg: dict, key: str, value) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
    node[parts[-1]] = value


def _is_free_form(path: str) -> bool:
    return any(path == f or path.startswith(f + ".") for f in FREE_FORM)


def validate(cfg: dict, source: str = "config", defaults: dict = DEFAULTS, prefix: str = "") -> dict:
    """Raise :class:`ConfigError` for unknown keys, wrong types or values outside their choices."""
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if _is_free_form(path):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {path} must be a mapping, got {type(value).__name__}")
            continue
        if prefix.rstrip(".") in METHOD_SECTIONS and key not in defaults and isinstance(value, dict):
            continue  # a method's section, validated by method_options
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"{source}: unknown key {path!r} (known here: {known})")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {path} must be a section (mapping), got {value!r}")
            validate(value, source, default, path + ".")
            continue
        if value is None or default is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(f"{source}: {path} must be {type(default).__name__}, got {value!r}")
        if path in CHOICES and value not in CHOICES[path]:
            raise ConfigError(f"{source}: {path} must be one of {CHOICES[path]}, got {value!r}")
    return cfg


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_values(cfg: dict, source: str = "config") -> None:
    """Checks across keys and of ranges, on a complete config: every problem before any work starts."""
    optim, p = cfg["optim"], cfg["protocol"]
    checks = [
        (optim["batch_size"] >= 1, "optim.batch_size must be >= 1"),
        (optim["micro_batch_size"] >= 1, "optim.micro_batch_size must be >= 1"),
        (_finite(optim["lr"]) and optim["lr"] > 0, f"optim.lr must be a finite number > 0, got {optim['lr']}"),
        (optim["epochs"] >= 1, "optim.epochs must be >= 1"),
        (_finite(optim["warmup_epochs"]) and optim["warmup_epochs"] >= 0, "optim.warmup_epochs must be >= 0"),
        (_finite(optim["weight_decay"]) and optim["weight_decay"] >= 0, "optim.weight_decay must be >= 0"),
        (_finite(optim["grad_clip"]) and optim["grad_clip"] >= 0, "optim.grad_clip must be >= 0 (0: off)"),
        (_finite(optim["max_weight"]) and optim["max_weight"] >= 0, "optim.max_weight must be >= 0 (0: off)"),
        (0 <= optim["min_lr_ratio"] <= 1, "optim.min_lr_ratio must be in [0, 1]"),
        (len(optim["betas"]) == 2 and all(_finite(b) and 0 <= b < 1 for b in optim["betas"]),
         f"optim.betas must be two numbers in [0, 1), got {optim['betas']}"),
        (cfg["eval"]["batch_size"] >= 1, f"eval.batch_size must be >= 1, got {cfg['eval']['batch_size']}"),
        (all(isinstance(k, str) and k and _finite(v) and not isinstance(v, bool) and v > 0
             for k, v in optim["lr_multipliers"].items()),
         f"optim.lr_multipliers must map parameter-name prefixes to numbers > 0, got {optim['lr_multipliers']}"),
        (cfg["eval"]["num_clips"] >= 0 and cfg["eval"]["num_crops"] in (0, 1, 3, 4),
         "eval.num_clips must be >= 0 and eval.num_crops 0 (the protocol's), 1, 3 or 4"),
        (cfg["data"]["num_workers"] >= 0, "data.num_workers must be >= 0"),
        (_finite(t := cfg["data"]["decode_timeout"]) and t >= 0, "data.decode_timeout must be >= 0 (0: no limit)"),
        (cfg["data"]["frame_stride"] >= 1, f"data.frame_stride must be >= 1, got {cfg['data']['frame_stride']}"),
        (0 <= cfg["data"]["flip_prob"] <= 1, "data.flip_prob must be in [0, 1]"),
        (0 < cfg["data"]["val_fraction"] < 1, "data.val_fraction must be in (0, 1)"),
        (_finite(cfg["data"]["max_unreadable"]) and 0 <= cfg["data"]["max_unreadable"] <= 1,
         f"data.max_unreadable must be a fraction in [0, 1], got {cfg['data']['max_unreadable']}"),
        (cfg["checkpointing"]["every_steps"] >= 0, "checkpointing.every_steps must be >= 0 (0: epoch ends only)"),
        (bool(cfg["methods"]) and all(isinstance(m, str) for m in cfg["methods"]),
         "methods must be a non-empty list of method names"),
        (len(set(cfg["methods"])) == len(cfg["methods"]), f"methods lists a method twice: {cfg['methods']}"),
        (bool(p["seeds"]) and all(s in (1, 2, 3) for s in p["seeds"]),
         f"protocol.seeds must be a non-empty list among 1, 2, 3, got {p['seeds']}"),
        (bool(p["shots"]) and all(isinstance(k, int) and k >= 1 for k in p["shots"]),
         f"protocol.shots must be a non-empty list of integers >= 1, got {p['shots']}"),
        (bool(p["splits"]) and all(s in (1, 2, 3) for s in p["splits"]),
         f"protocol.splits must be a non-empty list among 1, 2, 3, got {p['splits']}"),
        ("{}" in cfg["loss"]["template"], f"loss.template must contain {{}} for the class name, got "
                                          f"{cfg['loss']['template']!r}"),
    ]
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return validate(data, str(path))


def build_config(file: str | os.PathLike | None = None, flags: dict | None = None,
                 overrides: list[str] = ()) -> dict:
    """Defaults <- ``file`` <- its ``builtin_backbone`` section when the run uses the built-in small backbone (your
    own folder without a checkpoint) <- ``flags`` (dotted keys from dedicated command-line options) <-
    ``overrides``."""
    cfg = copy.deepcopy(DEFAULTS)
    if file is not None:
        cfg = merge(cfg, load_yaml(file))
    final = {**cfg, **{k: v for k, v in (flags or {}).items() if "." not in k}}
    for text in overrides:
        key, value = parse_override(text)
        if "." not in key:
            final[key] = value
    if final["dataset"] == "folder" and not final["checkpoint"] and cfg["builtin_backbone"]:
        cfg = merge(cfg, cfg["builtin_backbone"])
    for key, value in (flags or {}).items():
        set_dotted(cfg, key, value)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(cfg, key, value)
    source = f"{file or 'defaults'} + command line"
    validate(cfg, source)
    check_values(cfg, source)
    return cfg


def method_config(cfg: dict, method: str) -> dict:
    """The config for one method's runs: ``method_overrides[method]`` merged in and validated."""
    extra = cfg["method_overrides"].get(method, {})
    if not isinstance(extra, dict):
        raise ConfigError(f"method_overrides.{method} must be a mapping")
    out = merge(cfg, extra)
    validate(out, f"method_overrides.{method}")
    check_values(out, f"method_overrides.{method}")
    return out


def method_options(cfg: dict, method: str):
    """(the method's registered spec, its patch config from ``adapter.<method>``, its loss options from
    ``loss.<method>`` or None) for a config from :func:`method_config`; errors name the key."""
    try:
        spec = get_method(method)
    except KeyError as e:
        raise ConfigError(f"methods: {e.args[0]}") from None
    patch_section, loss_section = cfg["adapter"].get(method, {}), cfg["loss"].get(method, {})
    for key, section in ((f"adapter.{method}", patch_section), (f"loss.{method}", loss_section)):
        if not isinstance(section, dict):
            raise ConfigError(f"{key} must be a mapping of options, got {section!r}")
    try:
        config = spec.config.from_options(**patch_section)
    except (OptionError, TypeError) as e:
        raise ConfigError(f"adapter.{method}: {e}") from None
    if spec.loss_options is None:
        if loss_section:
            raise ConfigError(f"loss.{method}: method {method!r} has no loss options, got {sorted(loss_section)}")
        return spec, config, None
    known = {f.name for f in dataclasses.fields(spec.loss_options)}
    if unknown := sorted(set(loss_section) - known):
        raise ConfigError(f"loss.{method}: unknown option(s) {unknown}; known: {sorted(known)}")
    try:
        return spec, config, spec.loss_options(**loss_section)
    except (OptionError, TypeError) as e:
        raise ConfigError(f"loss.{method}: {e}") from None


def check_methods(cfg: dict) -> None:
    """Every method's options, validated before any work starts."""
    for method in cfg["methods"]:
        method_options(method_config(cfg, method), method)


def config_changes(saved: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(key, saved value, new value)`` for every dotted key whose value differs (how to resume aside)."""
    changes = []
    for key in sorted(set(saved) | set(new)):
        path = f"{prefix}{key}"
        if path in ("resume", "allow_changes"):
            continue
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, path + ".")
        elif a != b:
            changes.append((path, a, b))
    return changes


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(cfg, sort_keys=False))

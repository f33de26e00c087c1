"""What the built-in synthetic default needs, made once and cached: the data set, its class descriptions and a
small ViCLIP pre-trained on its captions.

Cache folder: ``cache_dir`` of the config, else ``$MSTA_FAST_CACHE``, else ``~/.cache/msta_fast``. Entries are
keyed by a hash of the options that produce them, so changing a size or an epoch count makes a new entry.
Under torchrun rank 0 builds and the others wait.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from msta_fast.data.descriptions import save_descriptions
from msta_fast.data.lists import read_labels
from msta_fast.data.synthetic import MOTIONS, SHAPES, generate
from msta_fast.methods.msta import MSTALossOptions
from msta_fast.training.distributed import DistInfo, barrier

# Sentences for the consistency constraint, written by hand for the synthetic classes.
SHAPE_LOOKS = {
    "square": ("a square with four equal straight sides", "a small solid square on a dark, noisy background"),
    "triangle": ("a triangle with a pointed top and a flat base", "a small solid triangle on a dark background"),
    "bar": ("a long, thin horizontal bar", "a flat rectangular bar on a dark, noisy background"),
}
MOTION_STEPS = {
    "moving left": ("first the {s} is on the right side", "then the {s} slides across to the left side"),
    "moving right": ("first the {s} is on the left side", "then the {s} slides across to the right side"),
    "growing": ("first the {s} is small", "then the {s} gets bigger and bigger"),
    "shrinking": ("first the {s} is big", "then the {s} gets smaller and smaller"),
    "rotating clockwise": ("first the {s} is tilted one way", "then the {s} turns clockwise"),
    "rotating counter-clockwise": ("first the {s} is tilted one way", "then the {s} turns counter-clockwise"),
    "appearing": ("first there is only the background", "then the {s} fades in until it is clearly visible"),
    "disappearing": ("first the {s} is clearly visible", "then the {s} fades out until only the background is left"),
}
DESCRIPTION_FILES = {"spatial": "s", "temporal": "t"}
_LABEL_PARTS = {"": "synthetic_labels.csv", "_base": "synthetic_base_labels.csv",
                "_novel": "synthetic_novel_labels.csv"}


def num_descriptions(cfg: dict) -> int:
    """N, the sentences per class and kind of the consistency constraint (``loss.msta.num_descriptions``)."""
    return cfg["loss"].get("msta", {}).get("num_descriptions", MSTALossOptions.num_descriptions)


def cache_root(cfg: dict) -> Path:
    root = cfg.get("cache_dir") or os.environ.get("MSTA_FAST_CACHE") or Path.home() / ".cache" / "msta_fast"
    return Path(root).expanduser()


def _key(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]


def synthetic_descriptions(class_name: str, kind: str, n: int) -> list[str]:
    """``n`` spatial or temporal sentences for a synthetic class ``"<shape> <motion>"``."""
    shape, motion = class_name.split(" ", 1)
    if shape not in SHAPES or motion not in MOTIONS:
        raise ValueError(f"{class_name!r} is not a synthetic class name")
    if kind == "spatial":
        pool = [f"A video of {look}." for look in SHAPE_LOOKS[shape]]
    else:
        pool = [f"{step.format(s=shape).capitalize()}." for step in MOTION_STEPS[motion]]
    return [pool[i % len(pool)] for i in range(n)]


def synthetic_descriptions_dir(cfg: dict, data_root: Path) -> Path:
    """Where the synthetic set's description files are: in its own folder when it is the cached one, in the cache
    otherwise (nothing is written into a data folder you passed)."""
    data_root = Path(data_root).resolve()
    cache = cache_root(cfg).resolve()
    if cache in data_root.parents:
        return data_root / "descriptions"
    return cache / "descriptions" / _key({"data_root": str(data_root)})


def write_synthetic_descriptions(data_root: Path, n: int, folder: Path) -> Path:
    """Description files in the authors' naming under ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, labels in _LABEL_PARTS.items():
        names = read_labels(data_root / "labels" / labels)
        for kind, letter in DESCRIPTION_FILES.items():
            path = folder / f"{n}_{letter}_description_synthetic{part}.json"
            if not path.is_file():
                save_descriptions(path, {i: synthetic_descriptions(c, kind, n) for i, c in enumerate(names)})
    return folder


def synthetic_data(cfg: dict, info: DistInfo) -> Path:
    """The synthetic data set (generated on first use) with its description files; returns its folder."""
    s = cfg["synthetic"]
    options = {"seed": s["seed"], "size": s["size"], "num_frames": s["frames"],
               "train_per_class": s["train_per_class"], "val_per_class": s["val_per_class"]}
    folder = cache_root(cfg) / "synthetic" / _key(options)
    if info.is_main:
        generate(folder, **options)
        write_synthetic_descriptions(folder, num_descriptions(cfg), synthetic_descriptions_dir(cfg, folder))
    barrier(info)
    return folder


def pretrained_model(cfg: dict, data_root: Path, info: DistInfo, logger=None) -> Path:
    """The ViCLIP pre-trained by ``recipes/pretrain.py`` on the synthetic captions (trained on first use)."""
    from msta_fast.training.pretraining import pretrain_contrastive

    p, m = cfg["pretrain"], cfg["model"]
    options = {**p, "model": m["name"], "overrides": m["overrides"], "num_frames": m["num_frames"],
               "image_size": m["image_size"], "data": data_root.name,
               "seed": cfg["seed"]}
    path = cache_root(cfg) / "pretrained" / _key(options) / "viclip.pth"
    if info.is_main and not path.is_file():
        print(f"pre-training a {m['name']} on the synthetic captions (once; cached in {path.parent})", flush=True)
        pretrain_contrastive(data_root, path, model=m["name"], overrides=m["overrides"],
                             num_frames=m["num_frames"], image_size=m["image_size"], epochs=p["epochs"],
                             lr=p["lr"], batch_size=p["batch_size"], warmup_epochs=p["warmup_epochs"],
                             weight_decay=p["weight_decay"], seed=cfg["seed"],
                             backend=cfg["data"]["backend"],
                             log=(lambda step, **v: logger.log("pretrain", step, **v)) if logger else None)
        (path.parent / "pretrain.json").write_text(json.dumps(options, indent=2))
    barrier(info)
    return path

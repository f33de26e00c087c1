"""Your own videos: a folder with one sub-folder per class, as a data set for every protocol.

    my_actions/                      my_actions/
      pouring_water/                   train/pouring_water/...
        clip1.mp4                      train/stirring/...
        day2/clip7.webm                val/pouring_water/...       (optionally test/ too)
      stirring/...                     val/stirring/...

The class name is the folder name with ``_`` read as a space (``pouring_water`` -> "pouring water"); a
``classes.txt`` in the folder (one class per line: the folder name, optionally followed by a tab or ``,`` and the
name to use) or a ``labels.csv`` (``id,name``, names matching the folders) gives other names or another order.
Videos may sit at any depth below their class folder, in any container the decoders read. With ``train/`` and
``val/`` (and ``test/``) sub-folders those are the splits; otherwise a seeded, stratified hold-out of
``val_fraction`` of each class's videos is the validation split.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .lists import ProtocolFileError, Sample, read_labels

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv",
                  ".ts", ".mts")
SPLIT_FOLDERS = ("train", "val", "test")


@dataclass
class FolderDataset:
    """The classes and splits of a folder of videos; sample paths are relative to ``root``."""

    name: str
    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    folders: list[str] = field(default_factory=list)  # class folder per class index


def display_name(folder: str) -> str:
    return folder.replace("_", " ").strip()


def _videos(folder: Path, root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_SUFFIXES:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return found


def _class_folders(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _named_classes(root: Path, folders: list[str]) -> tuple[list[str], list[str]]:
    """(class names, their folders) in the order classes.txt / labels.csv give, else sorted folder order."""
    classes_txt, labels_csv = root / "classes.txt", root / "labels.csv"
    if classes_txt.is_file():
        order, names = [], []
        for number, line in enumerate(classes_txt.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            folder, _, name = line.replace("\t", ",").partition(",")
            folder = folder.strip()
            if folder not in folders:
                raise ProtocolFileError(f"{classes_txt}:{number}: no class folder {folder!r} (the folders: "
                                        f"{', '.join(folders)})")
            order.append(folder)
            names.append(name.strip() or display_name(folder))
        return names, order
    if labels_csv.is_file():
        names = read_labels(labels_csv)
        by_name = {display_name(f).lower(): f for f in folders} | {f.lower(): f for f in folders}
        missing = [n for n in names if n.lower() not in by_name]
        if missing:
            raise ProtocolFileError(f"{labels_csv}: no class folder for {missing} (the folders: {', '.join(folders)})")
        return names, [by_name[n.lower()] for n in names]
    return [display_name(f) for f in folders], list(folders)


def _check_unique(names: list[str], where: Path) -> None:
    seen = {}
    for name in names:
        if name.lower() in seen:
            raise ProtocolFileError(f"{where}: two classes are both called {name!r} ({seen[name.lower()]!r} and "
                                    f"{name!r}); rename a folder or give names in classes.txt")
        seen[name.lower()] = name


def scan_folder(root: str | os.PathLike, *, val_fraction: float = 0.2, seed: int = 0) -> FolderDataset:
    """The data set of a folder of class folders (see the module docstring). Errors name the folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root}: no such folder")
    split_dirs = {s: root / s for s in SPLIT_FOLDERS if (root / s).is_dir()}
    presplit = "train" in split_dirs and "val" in split_dirs
    bases = split_dirs if presplit else {"all": root}
    folders = sorted({f for base in bases.values() for f in _class_folders(base)} - set(SPLIT_FOLDERS))
    if not folders:
        raise ProtocolFileError(f"{root}: no class folders (expected one sub-folder of videos per class"
                                + (", under train/ and val/)" if presplit else ")"))
    classes, order = _named_classes(root, folders)
    _check_unique(classes, root)
    index = {folder: i for i, folder in enumerate(order)}
    unlisted = sorted(set(folders) - set(order))
    if unlisted:
        raise ProtocolFileError(f"{root / 'classes.txt'}: class folders not listed: {unlisted}")
    splits: dict[str, list[Sample]] = {}
    for split, base in bases.items():
        samples = []
        for folder in folders:
            if (base / folder).is_dir():
                samples += [(path, index[folder]) for path in _videos(base / folder, root)]
        splits[split] = samples
    if not presplit:
        splits = holdout(splits["all"], len(classes), val_fraction, seed)
    empty = [classes[c] for c, n in enumerate(_counts(splits["train"], len(classes))) if n == 0]
    if empty:
        raise ProtocolFileError(f"{root}: no training videos for {empty} (video suffixes read: "
                                f"{' '.join(VIDEO_SUFFIXES)})")
    return FolderDataset(root.resolve().name, root, classes, splits, order)


def _counts(samples: list[Sample], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for _, label in samples:
        counts[label] += 1
    return counts


def holdout(samples: list[Sample], num_classes: int, val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """A seeded, stratified split: ``val_fraction`` of each class's videos (at least one where a class has two or
    more) for validation, the rest for training."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = random.Random(seed)
    train, val = [], []
    for c in range(num_classes):
        mine = [s for s in samples if s[1] == c]
        rng.shuffle(mine)
        n_val = 0 if len(mine) < 2 else max(1, round(val_fraction * len(mine)))
        val += mine[:n_val]
        train += mine[n_val:]
    return {"train": sorted(train, key=lambda s: (s[1], s[0])), "val": sorted(val, key=lambda s: (s[1], s[0]))}


def shots_per_class(samples: list[Sample], k: int, seed: int) -> list[Sample]:
    """K videos per class drawn with ``seed`` (all of a class's videos where it has fewer)."""
    rng = random.Random(seed)
    out = []
    for c in sorted({label for _, label in samples}):
        mine = sorted(s for s in samples if s[1] == c)
        out += sorted(rng.sample(mine, min(k, len(mine))))
    return out


def base_novel_classes(num_classes: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded half/half split of the class indices into base and novel (base gets the extra one)."""
    order = list(range(num_classes))
    random.Random(seed).shuffle(order)
    half = (num_classes + 1) // 2
    return sorted(order[:half]), sorted(order[half:])

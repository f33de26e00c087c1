"""Registry of the evaluation protocols: which list trains, which lists evaluate, with which class names.

Settings (protocols.md): ``"base2novel"`` (seed 1-3, 16 shots per base class; base and novel are two separate
classifiers), ``"fewshot"`` (all-way K-shot, K in 2/4/8/16), ``"zeroshot"`` (evaluation only; the model was
trained on K-400), ``"supervised"`` (K-400 and the synthetic set, 4 clips x 3 crops). The ViFi-CLIP split lists
and label files ship in ``protocols/vifi``; the two K-400 lists too large to ship come from the user, looked up
under ``<lists_dir>`` (default ``<data_root>/datasets_splits``) with the same relative path as in ViFi-CLIP.

The synthetic data set (``msta_fast.data.synthetic``) writes the same layout into its output folder; register
it with ``dataset="synthetic", data_root=<that folder>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .lists import Sample, read_labels, read_list

FEW_SHOTS = (2, 4, 8, 16)
SEEDS = (1, 2, 3)
SPLITS = (1, 2, 3)


@dataclass
class EvalSet:
    """One evaluation list scored among its own classes."""

    samples: list[Sample]
    classes: list[str]
    num_clips: int = 1  # temporal clips per video
    num_crops: int = 1  # spatial crops per clip (1 = centre, 3 = left/centre/right)


@dataclass
class Protocol:
    """What a recipe trains on and evaluates on. ``train`` is None for evaluation-only settings (zero-shot)."""

    dataset: str
    setting: str
    data_root: Path | None
    train: list[Sample] | None
    classes: list[str]  # class names of the training classifier, index = label of ``train``
    evals: dict[str, EvalSet] = field(default_factory=dict)


# Per data set: file names in the ViFi-CLIP layout. "b2n" is the folder under base2novel_splits/.
_VIFI = {
    "k400": dict(b2n="k400_splits", labels="kinetics_400_labels.csv", base="kinetics_400_base_labels.csv",
                 novel="kinetics_400_novel_labels.csv", full_train="k400_splits/train.txt",
                 full_val="k400_splits/val.txt"),
    "hmdb": dict(b2n="hmdb_splits", labels="hmdb_51_labels.csv", base="hmdb_51_base_labels.csv",
                 novel="hmdb_51_novel_labels.csv", few="hmdb_splits", tests=("val1", "val2", "val3")),
    "ucf": dict(b2n="ucf_splits", labels="ucf_101_labels.csv", base="ucf_101_base_labels.csv",
                novel="ucf_101_novel_labels.csv", few="ucf_splits", tests=("val1", "val2", "val3")),
    "ssv2": dict(b2n="ssv2_splits", labels="ssv2_labels.csv", base="ssv2_174_base_labels.csv",
                 novel="ssv2_174_novel_labels.csv", few="ssv2_splits", tests=("validation",)),
    "k600": dict(),
}
_SYNTHETIC = dict(b2n="synthetic_splits", labels="synthetic_labels.csv", base="synthetic_base_labels.csv",
                  novel="synthetic_novel_labels.csv", few="synthetic_splits", tests=("val1", "val2", "val3"),
                  full_train="synthetic_splits/train.txt", full_val="synthetic_splits/val.txt")
# Lists the project cannot ship (too large); the user supplies them.
_USER_LISTS = {"k400_splits/train.txt", "base2novel_splits/k400_splits/base_train.txt"}
_ALIASES = {"kinetics400": "k400", "k-400": "k400", "kinetics600": "k600", "k-600": "k600", "hmdb51": "hmdb",
            "ucf101": "ucf", "sthsthv2": "ssv2", "something-something-v2": "ssv2"}
SETTINGS = ("base2novel", "fewshot", "zeroshot", "supervised")


def vifi_root() -> Path:
    """Folder of the shipped ViFi-CLIP lists (``datasets_splits/``, ``labels/``)."""
    return Path(str(resources.files("msta_fast.data") / "protocols" / "vifi"))


def list_datasets() -> list[str]:
    """Names ``get_protocol`` accepts."""
    return [*_VIFI, "synthetic"]


def get_protocol(
    dataset: str,
    setting: str,
    *,
    seed: int | None = None,
    shots: int | str | None = None,
    split: int | None = None,
    data_root: str | os.PathLike | None = None,
    lists_dir: str | os.PathLike | None = None,
) -> Protocol:
    """Train list, evaluation lists and class names of one protocol.

    Args:
        dataset: ``k400``, ``k600``, ``hmdb``, ``ucf``, ``ssv2`` or ``synthetic``.
        setting: ``base2novel`` (``seed`` 1-3; ``shots`` 16, or ``"all"`` for the whole base train list),
            ``fewshot`` (``shots`` 2/4/8/16), ``zeroshot`` (``split`` 1-3, None = all three; no train list),
            ``supervised`` (K-400 or synthetic).
        data_root: folder holding the videos (list paths are relative to it); for ``synthetic`` the generated
            folder, which also holds the lists.
        lists_dir: folder with user lists in the ViFi-CLIP layout (default ``<data_root>/datasets_splits``).
    """
    dataset = _ALIASES.get(dataset.lower(), dataset.lower())
    if dataset not in list_datasets():
        raise KeyError(f"unknown dataset {dataset!r}; known: {list_datasets()}")
    if setting not in SETTINGS:
        raise KeyError(f"unknown setting {setting!r}; known: {SETTINGS}")
    root = Path(data_root) if data_root is not None else None
    if dataset == "synthetic":
        if root is None or not (root / "datasets_splits").is_dir():
            raise FileNotFoundError(
                f"synthetic data set not found under {root}: generate it with "
                "`python -m msta_fast.data.synthetic --out DIR` and pass data_root=DIR"
            )
        spec, list_root, user_root = _SYNTHETIC, root, None
    else:
        spec, list_root = _VIFI[dataset], vifi_root()
        user_root = Path(lists_dir) if lists_dir is not None else (root / "datasets_splits" if root else None)
    finder = _Finder(list_root, user_root, dataset)

    if setting == "base2novel":
        if "b2n" not in spec:
            raise KeyError(f"{dataset} has no base-to-novel protocol")
        seed = _check_choice("seed", seed, SEEDS)
        folder = f"base2novel_splits/{spec['b2n']}"
        base, novel = finder.classes(spec["base"]), finder.classes(spec["novel"])
        train_file = f"{folder}/base_train.txt" if shots == "all" else f"{folder}/fs_base_s{seed}_train.txt"
        if shots not in (None, 16, "all"):
            raise ValueError(f"base-to-novel trains on 16 shots per base class (or shots='all'), got shots={shots}")
        evals = {"base": EvalSet(finder.read(f"{folder}/base_val.txt", spec["base"]), base),
                 "novel": EvalSet(finder.read(f"{folder}/novel_val.txt", spec["novel"]), novel)}
        protocol = Protocol(dataset, setting, root, finder.read(train_file, spec["base"]), base, evals)
    elif setting == "fewshot":
        if "few" not in spec:
            raise KeyError(f"{dataset} has no few-shot protocol (hmdb, ucf, ssv2, synthetic have)")
        shots = _check_choice("shots", shots, FEW_SHOTS)
        classes = finder.classes(spec["labels"])
        evals = {name: EvalSet(finder.read(f"{spec['few']}/{name}.txt", spec["labels"]), classes)
                 for name in spec["tests"]}
        protocol = Protocol(dataset, setting, root,
                            finder.read(f"{spec['few']}/train1_few_shot_{shots}.txt", spec["labels"]), classes, evals)
    elif setting == "zeroshot":
        splits = SPLITS if split is None else (_check_choice("split", split, SPLITS),)
        if dataset == "k600":
            evals = {f"split{n}": EvalSet(finder.read(f"k600_splits/ZS_split{n}_K600_eval.txt",
                                                      f"ZS_split{n}_K600.csv"),
                                          finder.classes(f"ZS_split{n}_K600.csv")) for n in splits}
        elif dataset in ("hmdb", "ucf", "synthetic"):
            classes = finder.classes(spec["labels"])
            evals = {f"val{n}": EvalSet(finder.read(f"{spec['few']}/val{n}.txt", spec["labels"]), classes)
                     for n in splits}
        else:
            raise KeyError(f"{dataset} has no zero-shot protocol (hmdb, ucf, k600, synthetic have)")
        protocol = Protocol(dataset, setting, root, None, [], evals)
    else:
        if "full_train" not in spec:
            raise KeyError(f"{dataset} has no fully supervised protocol (k400 and synthetic have)")
        classes = finder.classes(spec["labels"])
        evals = {"val": EvalSet(finder.read(spec["full_val"], spec["labels"]), classes, num_clips=4, num_crops=3)}
        protocol = Protocol(dataset, setting, root, finder.read(spec["full_train"], spec["labels"]), classes, evals)
    return protocol


class _Finder:
    """Reads a list by its path under ``datasets_splits/`` (the user's copy first, then the shipped one), checking
    each label against the classes of its label csv under ``labels/``."""

    def __init__(self, list_root: Path, user_root: Path | None, dataset: str):
        self.list_root, self.user_root, self.dataset = list_root, user_root, dataset
        self._classes: dict[str, list[str]] = {}

    def classes(self, labels: str) -> list[str]:
        """Class names of the label csv ``labels/<labels>``."""
        if labels not in self._classes:
            self._classes[labels] = read_labels(self.list_root / "labels" / labels)
        return self._classes[labels]

    def read(self, relative: str, labels: str) -> list[Sample]:
        """The list ``relative``; a label that is no class id of ``labels/<labels>`` is an error naming its line."""
        num_classes, labels_file = len(self.classes(labels)), self.list_root / "labels" / labels
        if self.user_root is not None and (self.user_root / relative).is_file():
            return read_list(self.user_root / relative, num_classes, labels_file)
        shipped = self.list_root / "datasets_splits" / relative
        if shipped.is_file():
            return read_list(shipped, num_classes, labels_file)
        if relative in _USER_LISTS:
            where = self.user_root / relative if self.user_root else "<data_root>/datasets_splits/" + relative
            raise FileNotFoundError(
                f"{self.dataset}: the list {relative} is too large to ship with msta-fast. Put your copy at "
                f"{where} (or pass lists_dir=DIR holding {relative}); format: '<relative path> <label>' per line."
            )
        raise FileNotFoundError(f"{self.dataset}: list {relative} not found under {self.list_root}")


def _check_choice(name: str, value, choices: tuple[int, ...]) -> int:
    if value not in choices:
        raise ValueError(f"pass {name}= one of {choices}, got {value!r}")
    return int(value)

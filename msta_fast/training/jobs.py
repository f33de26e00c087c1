"""From a recipe config to the list of training jobs of a protocol, and from the jobs' results to the
protocol's summary (protocols.md).

- b2n: one job per seed (16 shots per base class); base-val selects the best epoch; base, novel and HM are
  averaged over the seeds (HM of the averages).
- fs: one job per K; scored on the first test list (HMDB/UCF ``val1``, SSv2 ``validation``), the mean over all
  test lists reported beside it.
- zs: one job trained on the data set's full train list (K-400; on the synthetic set, all videos of its base
  classes), evaluated on every split of every target; mean +- std over the splits.
- full: one job; multi-view evaluation (4 clips x 3 crops); top-1 and top-5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from msta_fast.data import EvalSet, get_protocol
from msta_fast.data.folder import FolderDataset, base_novel_classes, scan_folder, shots_per_class
from msta_fast.data.lists import Sample, read_labels, read_list
from msta_fast.training.config import ConfigError
from msta_fast.training.evaluation import harmonic_mean
from msta_fast.training.results import mean_std


@dataclass
class Job:
    """One training run (or, for zero-shot methods, one evaluation) of a protocol."""

    name: str  # "seed1", "k16", "train", "full"
    train: list[Sample] | None
    train_root: Path | None
    classes: list[str]
    dataset: str  # the training data set (for its descriptions)
    description_part: str  # "", "_base" (file name suffix of the training classes' descriptions)
    evals: dict[str, tuple[EvalSet, Path | None]] = field(default_factory=dict)
    select: str | None = None  # eval name that selects the best epoch (b2n: "base")
    seed: int = 0  # seeds the job's training (b2n: the split seed 1-3; fs: K)
    shots: int | None = None  # fs: K


def _root(cfg: dict, dataset: str, data_root: Path | None) -> Path | None:
    roots = cfg["protocol"]["target_roots"]
    return Path(roots[dataset]) if roots.get(dataset) else data_root


def plan_jobs(cfg: dict, data_root: Path | None, folder: FolderDataset | None = None) -> list[Job]:
    """The jobs of ``cfg["setting"]`` on ``cfg["dataset"]``; ``data_root`` is the resolved data folder, ``folder``
    the user's own data set (``dataset: folder``, see :func:`folder_data`)."""
    if cfg["dataset"] == "folder":
        return plan_folder_jobs(cfg, folder)
    dataset, setting, p = cfg["dataset"], cfg["setting"], cfg["protocol"]
    lists = cfg["lists_dir"]
    select = None if cfg["eval"]["select_best"] == "last" else "base"
    jobs = []
    if setting == "b2n":
        for seed in p["seeds"]:
            proto = get_protocol(dataset, "base2novel", seed=seed, data_root=data_root, lists_dir=lists)
            evals = {name: (ev, data_root) for name, ev in proto.evals.items()}
            jobs.append(Job(f"seed{seed}", proto.train, data_root, proto.classes, dataset, "_base", evals, select,
                            seed))
    elif setting == "fs":
        for k in p["shots"]:
            proto = get_protocol(dataset, "fewshot", shots=k, data_root=data_root, lists_dir=lists)
            evals = {name: (ev, data_root) for name, ev in proto.evals.items()}
            best = "best" if cfg["eval"]["select_best"] == "best" else None
            jobs.append(Job(f"k{k}", proto.train, data_root, proto.classes, dataset, "", evals,
                            next(iter(evals)) if best else None, seed=k, shots=k))
    elif setting == "zs":
        if dataset == "synthetic":
            source = get_protocol("synthetic", "base2novel", seed=1, shots="all", data_root=data_root)
            train_set, part, targets = "synthetic", "_base", ["synthetic"]
        else:
            train_set, part, targets = dataset, "", p["zs_targets"]
            source = get_protocol(train_set, "supervised", data_root=_root(cfg, train_set, data_root),
                                  lists_dir=lists)
        evals = {}
        for target in targets:
            root = _root(cfg, target, data_root)
            for split in p["splits"]:
                proto = get_protocol(target, "zeroshot", split=split, data_root=root, lists_dir=lists)
                for name, ev in proto.evals.items():
                    evals[f"{target}/{name}"] = (ev, root)
        jobs.append(Job("train", source.train, source.data_root, source.classes, train_set, part, evals))
    else:
        proto = get_protocol(dataset, "supervised", data_root=data_root, lists_dir=lists)
        evals = {name: (ev, data_root) for name, ev in proto.evals.items()}
        jobs.append(Job("full", proto.train, data_root, proto.classes, dataset, "", evals))
    return jobs


def folder_data(cfg: dict, data_root: Path) -> FolderDataset:
    """The user's own data set: the class folders under ``data_root`` (:func:`msta_fast.data.folder.scan_folder`),
    or the explicit lists ``data.train_list`` / ``data.val_list`` (``read_list`` format, paths relative to
    ``data_root``) with the class names of ``data.labels`` (a labels CSV, or one name per line)."""
    d = cfg["data"]
    if not d["train_list"] and not d["val_list"]:
        return scan_folder(data_root, val_fraction=d["val_fraction"], seed=cfg["seed"])
    missing = [f"data.{key} ({d[key]})" if d[key] else f"data.{key} (not set)" for key in ("train_list", "val_list",
               "labels") if not d[key] or not Path(d[key]).is_file()]
    if missing:
        raise ConfigError(f"explicit lists need all three files; missing: {', '.join(missing)}")
    labels = Path(d["labels"])
    if labels.suffix == ".csv":
        classes = read_labels(labels)
    else:
        classes = [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    splits = {split: read_list(d[f"{split}_list"], num_classes=len(classes), labels_file=labels)
              for split in ("train", "val")}
    return FolderDataset(Path(data_root).resolve().name, Path(data_root), classes, splits)


def plan_folder_jobs(cfg: dict, data: FolderDataset) -> list[Job]:
    """The protocol's jobs on the user's own data set.

    - full: train on ``train``; evaluate on ``val`` (and ``test``) with the configured views.
    - fs: per K of ``protocol.shots``, K videos per class drawn from ``train`` with the seed K; evaluate on ``val``.
    - b2n: per seed, a seeded half/half split of the classes into base and novel (or the user's
      ``base_classes.txt`` in the data folder); 16 shots per base class from ``train``, as the protocol; base-val
      selects the epoch; evaluate base and novel on ``val``.
    - zs: the backbone as it is on ``val`` (zero-shot).
    """
    setting, p, name = cfg["setting"], cfg["protocol"], data.name
    clips, crops = (4, 3) if setting == "full" else (1, 1)

    def evalset(samples, classes):
        return EvalSet(samples, classes, clips, crops), data.root

    evals = {split: evalset(data.splits[split], data.classes) for split in ("val", "test") if data.splits.get(split)}
    if not evals:
        raise ConfigError(f"{data.root}: no validation videos (add a val/ folder, or more videos per class for "
                          "the hold-out)")
    if setting == "full":
        return [Job("full", data.splits["train"], data.root, data.classes, name, "", evals)]
    if setting == "fs":
        best = next(iter(evals)) if cfg["eval"]["select_best"] == "best" else None
        return [Job(f"k{k}", shots_per_class(data.splits["train"], k, k), data.root, data.classes, name, "", evals,
                    best, seed=k, shots=k) for k in p["shots"]]
    if setting == "zs":
        return [Job("eval", None, data.root, data.classes, name, "", {f"{name}/{k}": v for k, v in evals.items()})]
    select = None if cfg["eval"]["select_best"] == "last" else "base"
    jobs = []
    for seed in p["seeds"]:
        base, novel = user_base_classes(data) or base_novel_classes(len(data.classes), seed)
        split_evals = {}
        for part, members in (("base", base), ("novel", novel)):
            index = {c: i for i, c in enumerate(members)}
            val = [(path, index[y]) for path, y in data.splits["val"] if y in index]
            split_evals[part] = evalset(val, [data.classes[c] for c in members])
        base_index = {c: i for i, c in enumerate(base)}
        train = shots_per_class([(path, base_index[y]) for path, y in data.splits["train"] if y in base_index], 16,
                                seed)
        jobs.append(Job(f"seed{seed}", train, data.root, [data.classes[c] for c in base], name, "_base", split_evals,
                        select, seed))
    return jobs


def user_base_classes(data: FolderDataset) -> tuple[list[int], list[int]] | None:
    """(base, novel) class indices from ``base_classes.txt`` in the data folder (a class name per line), if any."""
    path = data.root / "base_classes.txt"
    if not path.is_file():
        return None
    names = {c.lower(): i for i, c in enumerate(data.classes)}
    base = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            if line.strip().lower() not in names:
                raise ConfigError(f"{path}:{number}: no class {line.strip()!r} (the classes: {data.classes})")
            base.append(names[line.strip().lower()])
    novel = [c for c in range(len(data.classes)) if c not in base]
    if not base or not novel:
        raise ConfigError(f"{path}: base-to-novel needs base and novel classes; it lists {len(base)} of "
                          f"{len(data.classes)}")
    return sorted(base), novel


def summarize(setting: str, jobs: list[Job], outcomes: dict[str, dict]) -> dict:
    """One method's results.json entry from its jobs' outcomes (``{job name: {"evals": {name: metrics}}}``)."""
    if setting == "b2n":
        per_seed = []
        for job in jobs:
            ev = outcomes[job.name]["evals"]
            base, novel = ev["base"]["top1"], ev["novel"]["top1"]
            per_seed.append({"seed": job.seed, "base": base, "novel": novel, "hm": harmonic_mean(base, novel),
                             "best_epoch": outcomes[job.name].get("best_epoch")})
            if "visual_head" in ev["base"]:  # a classification head: base classes only, it cannot serve novel ones
                per_seed[-1]["base_visual_head"] = ev["base"]["visual_head"]["top1"]
        base = sum(s["base"] for s in per_seed) / len(per_seed)
        novel = sum(s["novel"] for s in per_seed) / len(per_seed)
        entry = {"base": base, "novel": novel, "hm": harmonic_mean(base, novel), "per_seed": per_seed}
        # spread over the seeds (sample std; 0 for one seed)
        for key in ("base", "novel", "hm"):
            entry[f"{key}_std"] = mean_std([s[key] for s in per_seed])[1]
        if all("base_visual_head" in s for s in per_seed):
            entry["base_visual_head"] = sum(s["base_visual_head"] for s in per_seed) / len(per_seed)
        return entry
    if setting == "fs":
        shots = {}
        for job in jobs:
            ev = outcomes[job.name]["evals"]
            tops = {name: m["top1"] for name, m in ev.items()}
            shots[str(job.shots)] = {"top1": next(iter(tops.values())), "mean_all": mean_std(list(tops.values()))[0],
                                     "per_test": tops}
            first = next(iter(ev.values()))
            if "visual_head" in first:
                shots[str(job.shots)]["visual_head"] = first["visual_head"]["top1"]
        return {"shots": shots}
    if setting == "zs":
        ev = outcomes[jobs[0].name]["evals"]
        targets: dict[str, dict] = {}
        for name, m in ev.items():
            target, split = name.split("/", 1)
            targets.setdefault(target, {"per_split": {}})["per_split"][split] = m["top1"]
        for entry in targets.values():
            entry["mean"], entry["std"] = mean_std(list(entry["per_split"].values()))
        return {"targets": targets}
    ev = outcomes[jobs[0].name]["evals"]
    name = next(iter(ev))
    entry = {"top1": ev[name]["top1"], "top5": ev[name]["top5"], "num_classes": len(jobs[0].evals[name][0].classes)}
    if "visual_head" in ev[name]:
        entry["visual_head_top1"] = ev[name]["visual_head"]["top1"]
    return entry

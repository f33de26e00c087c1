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
from msta_fast.data.lists import Sample
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


def plan_jobs(cfg: dict, data_root: Path | None) -> list[Job]:
    """The jobs of ``cfg["setting"]`` on ``cfg["dataset"]``; ``data_root`` is the resolved data folder."""
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

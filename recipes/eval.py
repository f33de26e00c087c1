"""Evaluate saved adapters on a protocol's evaluation lists, with the loaders and scoring of train.py (the same
library function, ``msta_fast.training.evaluation.evaluate_lists``).

    python recipes/eval.py --run runs/b2n_hmdb                 # every method and job of a finished run
    python recipes/eval.py --setting b2n --dataset hmdb --checkpoint ViClip-InternVid-10M-FLT.pth \\
        --data-root DIR --adapters best_adapters.safetensors --job seed1

``--run`` reads the run's saved config; otherwise the config is built as train.py builds it. Without
``--adapters`` (and without ``--run``) the backbone is evaluated as it is (zero-shot).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from msta_fast.adapter_io import load_adapters, read_adapter_metadata
from msta_fast.training.config import SETTINGS, ConfigError, build_config, load_yaml, method_config, method_options
from msta_fast.training.distributed import DistInfo, cleanup, init_distributed, wrap
from msta_fast.training.evaluation import evaluate_lists
from msta_fast.training.jobs import Job, folder_data, plan_jobs
from msta_fast.training.results import markdown_table
from msta_fast.training.sources import load_backbone, resolve_sources
from msta_fast.training.step import TrainStep
from msta_fast.training.unreadable import UnreadableVideosError

CONFIGS = Path(__file__).resolve().parent / "configs"


def evaluate_adapters(cfg: dict, job: Job, checkpoint: Path, adapters: Path | None, info: DistInfo) -> dict:
    """The job's evaluation lists scored with ``adapters`` on the backbone (None: the backbone as it is)."""
    model = load_backbone(cfg, checkpoint)
    method = read_adapter_metadata(adapters)["method"] if adapters is not None else "zero"
    if adapters is not None:
        load_adapters(model, adapters)  # patches with the method and options saved beside the weights
    mcfg = method_config(cfg, method)
    spec, config, loss_options = method_options(mcfg, method)
    objective = spec.objective(model, config, job.classes, loss_options, template=mcfg["loss"]["template"])
    wrapper = wrap(TrainStep(model, objective), info, mcfg["distributed"]["strategy"])
    return evaluate_lists(wrapper, job.evals, mcfg, info, label=f"eval {job.name}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a train.py run directory: evaluate all its adapters")
    parser.add_argument("--setting", choices=SETTINGS, default="b2n",
                        help="without --run: the protocol (b2n, fs, zs, full)")
    parser.add_argument("--dataset", default="synthetic",
                        help="without --run: the data set (k400, hmdb, ucf, ssv2, synthetic)")
    parser.add_argument("--config", default=None,
                        help="without --run: a YAML config (default: configs/<setting>/<dataset>.yaml)")
    parser.add_argument("--checkpoint", default=None, help="the ViCLIP weights (default: the run's)")
    parser.add_argument("--data-root", default=None, help="the folder of the videos (default: the run's)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache of the synthetic default (default: ~/.cache/msta_fast)")
    parser.add_argument("--adapters", default=None, help="adapters.safetensors to evaluate")
    parser.add_argument("--job", default=None, help="which job's lists: seed1..3, k2..k16, train, full")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set eval.num_clips=4 (repeatable)")
    args = parser.parse_args(argv)
    flags = {k: v for k, v in (("checkpoint", args.checkpoint), ("data_root", args.data_root),
                               ("cache_dir", args.cache_dir)) if v is not None}
    if args.run:
        cfg = build_config(None, {**load_yaml(Path(args.run) / "config.yaml"), **flags}, args.set)
    else:
        config = args.config or CONFIGS / args.setting / f"{args.dataset}.yaml"
        cfg = build_config(config, {"setting": args.setting, "dataset": args.dataset, **flags}, args.set)
    info = init_distributed()
    try:
        data_root, checkpoint = resolve_sources(cfg, info)
        folder = folder_data(cfg, data_root) if cfg["dataset"] == "folder" else None
        jobs = {job.name: job for job in plan_jobs(cfg, data_root, folder)}
        targets = []  # (label, job, adapters)
        if args.run:
            for path in sorted(Path(args.run).glob("*/*/adapters.safetensors")):
                best = path.parent / "best_adapters.safetensors"
                targets.append((f"{path.parent.parent.name}/{path.parent.name}", jobs[path.parent.name],
                                best if best.is_file() else path))
            for method in cfg["methods"]:
                if not any(label.startswith(method + "/") for label, _, _ in targets):
                    targets += [(f"{method}/{name}", job, None) for name, job in jobs.items()]
        else:
            name = args.job or next(iter(jobs))
            if name not in jobs:
                raise ConfigError(f"--job {name!r}: this protocol's jobs are {sorted(jobs)}")
            targets.append((name, jobs[name], Path(args.adapters) if args.adapters else None))
        results = {label: evaluate_adapters(cfg, job, checkpoint, adapters, info) for label, job, adapters in targets}
        if info.is_main:
            rows = [(label, {name: f"{m['top1']:.1f}" for name, m in evals.items()})
                    for label, evals in results.items()]
            print(markdown_table(rows))
            if args.run:
                (Path(args.run) / "eval.json").write_text(json.dumps(results, indent=2))
        return results
    finally:
        cleanup()


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, UnreadableVideosError) as e:
        sys.exit(f"error: {e}")

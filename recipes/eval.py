"""Evaluate saved adapters on a protocol's evaluation lists (the same loaders and scoring as train.py).

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

import torch

from msta_fast.adapters import load_adapters
from msta_fast.training.config import SETTINGS, ConfigError, build_config, load_yaml
from msta_fast.training.distributed import cleanup, init_distributed, unwrap, wrap_model
from msta_fast.training.evaluation import evaluate
from msta_fast.training.jobs import plan_jobs
from msta_fast.training.loaders import eval_loader
from msta_fast.training.losses import similarity_logits
from msta_fast.training.results import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import CONFIGS, class_tokens, load_backbone, resolve_sources  # noqa: E402


def evaluate_adapters(cfg: dict, job, checkpoint: Path, adapters: Path | None, info) -> dict:
    model = load_backbone(cfg, checkpoint)
    if adapters is not None:
        load_adapters(model, adapters)  # patches with the options saved beside the weights
    wrapper = wrap_model(model, info, cfg["distributed"]["strategy"]).eval()
    temp = unwrap(wrapper).temp
    out = {}
    with torch.no_grad():
        for name, (evalset, root) in job.evals.items():
            _, text = wrapper(None, class_tokens(cfg, evalset.classes).to(info.device))
            metrics = evaluate(lambda v, text=text: similarity_logits(wrapper(v, None)[0], text, temp).softmax(-1),
                               eval_loader(evalset, root, cfg, info), info, desc=f"eval {job.name}/{name}")
            out[name] = {k: metrics[k] for k in ("top1", "top5", "num_videos", "replaced")}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a train.py run directory: evaluate all its adapters")
    parser.add_argument("--setting", choices=SETTINGS, default="b2n")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--config", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--adapters", default=None, help="adapters.safetensors to evaluate")
    parser.add_argument("--job", default=None, help="which job's lists: seed1..3, k2..k16, train, full")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
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
        jobs = {job.name: job for job in plan_jobs(cfg, data_root)}
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
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")

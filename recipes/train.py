"""Train and evaluate video-language transfer methods on one protocol: base-to-novel, few-shot, zero-shot or
fully supervised.

    python recipes/train.py --setting b2n                      # the built-in synthetic default, any machine
    python recipes/train.py --setting b2n --dataset hmdb --checkpoint ViClip-InternVid-10M-FLT.pth \\
        --data-root /data/hmdb51 --methods zero,msta
    torchrun --nproc_per_node 8 recipes/train.py --setting full --dataset k400 ...   # FSDP2 by default

Order of the recipe: read and validate the config, set up the distributed run, make or find the data and the
backbone, then for every method and every job of the protocol (seeds, shots, ...): patch, train with an explicit
loop (gradient accumulation to the global batch, per-iteration warm-up + cosine, atomic checkpoints), evaluate,
and finally write ``results.json``, a table and a plot into the run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from msta_fast.adapters import count_trainable, load_adapters
from msta_fast.models import load_viclip, tokenize
from msta_fast.training import assets
from msta_fast.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    optimizer_names,
    save_checkpoint,
    write_adapters,
)
from msta_fast.training.config import SETTINGS, ConfigError, build_config, method_config, save_config
from msta_fast.training.distributed import (
    DistInfo,
    all_reduce_max,
    barrier,
    cleanup,
    dual_encoder,
    init_distributed,
    reshard,
    unwrap,
    wrap_model,
)
from msta_fast.training.evaluation import evaluate
from msta_fast.training.jobs import Job, job_descriptions, plan_jobs, summarize
from msta_fast.training.loaders import eval_loader, iterate_keeping_rng, train_loader
from msta_fast.training.losses import encode_descriptions
from msta_fast.training.methods import LossContext, Method, get_method
from msta_fast.training.results import MetricsLogger, plot_results, results_table, write_results
from msta_fast.training.schedule import build_optimizer, build_scheduler

CONFIGS = Path(__file__).resolve().parent / "configs"


def parse_args(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, default="b2n")
    parser.add_argument("--dataset", default=None, help="k400, hmdb, ucf, ssv2 or synthetic (default)")
    parser.add_argument("--methods", default=None, help="comma-separated, e.g. zero,msta,lora,adaptformer,full")
    parser.add_argument("--config", default=None, help="YAML file (default: configs/<setting>/<dataset>.yaml)")
    parser.add_argument("--checkpoint", default=None, help="ViCLIP weights (.pth or .safetensors)")
    parser.add_argument("--data-root", default=None, help="folder holding the videos of the lists")
    parser.add_argument("--lists-dir", default=None, help="user lists in the ViFi-CLIP layout (K-400 train)")
    parser.add_argument("--out", default=None, help="run directory (default runs/<setting>_<dataset>)")
    parser.add_argument("--cache-dir", default=None, help="cache of the synthetic default")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--no-consistency", action="store_true", help="train MSTA without L_CC (ablation)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set optim.lr=2e-3 (repeatable)")
    args = parser.parse_args(argv)
    dataset = args.dataset or "synthetic"
    config = Path(args.config) if args.config else CONFIGS / args.setting / f"{dataset}.yaml"
    if args.config is None and not config.is_file():
        raise ConfigError(f"no config for --setting {args.setting} --dataset {dataset} ({config}); pass --config")
    flags = {"setting": args.setting, "dataset": dataset}
    for key, value in (("checkpoint", args.checkpoint), ("data_root", args.data_root), ("out", args.out),
                       ("lists_dir", args.lists_dir), ("cache_dir", args.cache_dir)):
        if value is not None:
            flags[key] = value
    if args.methods:
        flags["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.resume:
        flags["resume"] = True
    if args.no_consistency:
        flags["loss.consistency"] = False
    return build_config(config, flags, args.set)


def autocast_for(cfg: dict, info: DistInfo):
    """bf16 autocast on GPUs (``precision: auto``), none on the CPU unless ``precision: bf16``."""
    bf16 = cfg["precision"] == "bf16" or (cfg["precision"] == "auto" and info.device.type == "cuda")
    return torch.autocast(info.device.type, dtype=torch.bfloat16) if bf16 else None


def load_backbone(cfg: dict, checkpoint: Path):
    """ViCLIP from ``checkpoint``; ``model.overrides`` may set what the shapes do not tell (head counts)."""
    m = cfg["model"]
    return load_viclip(checkpoint, num_frames=m["num_frames"], image_size=m["image_size"], **m["overrides"])


def class_tokens(cfg: dict, classes: list[str]) -> torch.Tensor:
    return tokenize([cfg["loss"]["template"].format(c) for c in classes])


@torch.no_grad()
def evaluate_job(method: Method, ctx: LossContext, wrapper, job: Job, cfg: dict, info: DistInfo,
                 names: list[str] | None = None) -> dict:
    """top-1/top-5 of the job's evaluation lists (all, or ``names``) with the model as it is now."""
    wrapper.eval()
    amp = autocast_for(cfg, info)
    results = {}
    for name in names or list(job.evals):
        evalset, root = job.evals[name]
        with amp if amp is not None else contextlib.nullcontext():
            _, class_emb = wrapper(None, class_tokens(cfg, evalset.classes).to(info.device))
        loader = eval_loader(evalset, root, cfg, info)

        def score(video, class_emb=class_emb):
            return method.scores(ctx, wrapper(video, None)[0], class_emb)

        metrics = evaluate(score, loader, info, desc=f"eval {job.name}/{name}", autocast=amp)
        results[name] = {k: metrics[k] for k in ("top1", "top5", "num_videos", "replaced")}
        for head, head_scores in method.extra_scores(ctx, unwrap(wrapper), evalset.classes, job.classes).items():
            metrics = evaluate(lambda v, f=head_scores: f(wrapper(v, None)[0]), loader, info,
                               desc=f"eval {job.name}/{name} ({head})", autocast=amp)
            results[name][head] = {k: metrics[k] for k in ("top1", "top5")}
    reshard(wrapper)  # FSDP2 keeps the root's parameters gathered after a forward without backward
    return results


def train_job(method: Method, cfg: dict, job: Job, model, info: DistInfo, job_dir: Path,
              logger: MetricsLogger) -> dict:
    """Train ``model`` (already patched) on the job; returns ``{"evals", "best_epoch"}``."""
    o = cfg["optim"]
    spatial = temporal = None
    if method.uses_descriptions(cfg):
        spatial_text, temporal_text = job_descriptions(cfg, job, job.train_root)
        # Computed once by the frozen, adapter-free text tower (before sharding).
        spatial = encode_descriptions(model, spatial_text, len(job.classes))
        temporal = encode_descriptions(model, temporal_text, len(job.classes))
    criterion = method.criterion(cfg, spatial, temporal).to(info.device)
    wrapper = wrap_model(model, info, cfg["distributed"]["strategy"])
    model = unwrap(wrapper)
    ctx = LossContext(temp=model.temp, cfg=cfg, criterion=criterion)
    dual_encoder(wrapper).objective = functools.partial(method.loss, ctx)  # the loss runs inside the forward
    ids = class_tokens(cfg, job.classes).to(info.device)

    micro = o["micro_batch_size"]
    accum = max(1, math.ceil(o["batch_size"] / (micro * info.world_size)))
    if accum * micro * info.world_size != o["batch_size"] and info.is_main:
        print(f"note: global batch {o['batch_size']} is not micro {micro} x {info.world_size} devices x "
              f"an integer; using {accum * micro * info.world_size}", flush=True)
    loader = train_loader(job.train, job.train_root, cfg, info, seed=cfg["seed"] * 1000 + job.seed, batch_size=micro)
    steps_per_epoch = math.ceil(math.ceil(len(loader.sampler) / micro) / accum)
    total_steps = o["epochs"] * steps_per_epoch
    optimizer = build_optimizer(model, o["lr"], o["weight_decay"], o["betas"])
    optimizer_names(model, optimizer)  # names of the sharded parameters, recorded now
    scheduler = build_scheduler(optimizer, total_steps, round(o["warmup_epochs"] * steps_per_epoch),
                                o["min_lr_ratio"])
    state = {"step": 0, "epoch": 0, "best": -1.0, "best_epoch": -1, "sampler": None}
    ckpt_dir = job_dir / "checkpoints"
    best_path = job_dir / "best_adapters.safetensors"
    latest = latest_checkpoint(ckpt_dir) if cfg["resume"] else None
    if latest is not None:
        state = load_checkpoint(latest, model=model, optimizer=optimizer, scheduler=scheduler,
                                info=info)
        loader.sampler.load_state_dict(state["sampler"])
        if info.is_main:
            print(f"resumed {job_dir} from {latest.name} (epoch {loader.sampler.epoch}, step {state['step']})",
                  flush=True)

    def checkpoint(consumed: int) -> None:
        reshard(wrapper)  # save the optimizer's (sharded) parameters, not stale gathered copies
        state["sampler"] = loader.sampler.state_dict(consumed=consumed)
        save_checkpoint(ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                        state=state, info=info)

    amp = autocast_for(cfg, info)
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {method.name}/{job.name}",
               disable=not info.is_main)
    start_epoch = loader.sampler.epoch if latest is not None else 0
    for epoch in range(start_epoch, o["epochs"]):
        state["epoch"] = epoch
        loader.set_epoch(epoch)
        consumed = len(loader.sampler.epoch_order()) - len(loader.sampler)  # items done before a mid-epoch resume
        batches_left = math.ceil(len(loader.sampler) / micro)
        wrapper.train()
        group: list = []
        for i, batch in enumerate(iterate_keeping_rng(loader)):
            video, labels = batch["video"].to(info.device), batch["label"].to(info.device)
            item_seeds = batch["item_seed"].to(info.device) if "item_seed" in batch else None
            # an accumulation group ends every `accum` batches and at the end of the epoch
            group_size = min(accum, batches_left - (i - i % accum)) if accum > 1 else 1
            with amp if amp is not None else contextlib.nullcontext():
                loss, parts = wrapper(video, ids, labels, item_seeds)
            if all_reduce_max(0.0 if torch.isfinite(loss).item() else 1.0, info) > 0:
                bar.close()
                where = latest_checkpoint(ckpt_dir)
                raise FloatingPointError(
                    f"non-finite loss ({loss.item()}) in {method.name}/{job.name}, epoch {epoch}, step "
                    f"{state['step']}; the last good checkpoint is {where or 'none (no step finished)'}: lower "
                    f"optim.lr and continue with --resume")
            (loss / group_size).backward()
            consumed += labels.shape[0]
            group.append(parts)
            if len(group) < group_size:
                continue
            if o["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_([p for p in wrapper.parameters() if p.requires_grad], o["grad_clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            logs = {k: sum(g[k] for g in group) / len(group) for k in group[0]}
            group = []
            logger.log(f"train/{method.name}/{job.name}", state["step"], lr=scheduler.get_last_lr()[0],
                       epoch=epoch, **logs)
            bar.update()
            bar.set_postfix(epoch=epoch, **{k: f"{v:.3f}" for k, v in logs.items()})
            every = cfg["checkpointing"]["every_steps"]
            if every and state["step"] % every == 0:
                checkpoint(consumed)
            if cfg["debug"]["kill_at_step"] == state["step"]:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard kill, for the tests of --resume
        if job.select is not None:
            acc = evaluate_job(method, ctx, wrapper, job, cfg, info, [job.select])[job.select]["top1"]
            logger.log(f"select/{method.name}/{job.name}", epoch, top1=acc)
            if acc > state["best"]:
                state["best"], state["best_epoch"] = acc, epoch
                write_adapters(model, best_path, info)
            barrier(info)
        checkpoint(consumed)
    bar.close()
    reshard(wrapper)
    if job.select is not None and best_path.is_file():
        load_adapters(model, best_path)  # the epoch with the best selection accuracy is the one evaluated
    evals = evaluate_job(method, ctx, wrapper, job, cfg, info)
    write_adapters(model, job_dir / "adapters.safetensors", info)
    return {"evals": evals, "best_epoch": state["best_epoch"] if job.select is not None else None}


def run_job(method: Method, cfg: dict, job: Job, checkpoint: Path, info: DistInfo, run_dir: Path,
            logger: MetricsLogger) -> dict:
    job_dir = run_dir / method.name / job.name
    done = job_dir / "done.json"
    if cfg["resume"] and done.is_file():
        return json.loads(done.read_text())
    job_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"] * 1000 + job.seed)
    model = load_backbone(cfg, checkpoint)
    model = method.prepare_job(model, cfg, job)
    trainable = count_trainable(model)
    if method.trains:
        outcome = train_job(method, cfg, job, model, info, job_dir, logger)
    else:
        wrapper = wrap_model(model, info, cfg["distributed"]["strategy"])
        ctx = LossContext(temp=unwrap(wrapper).temp, cfg=cfg, criterion=torch.nn.Identity())
        outcome = {"evals": evaluate_job(method, ctx, wrapper, job, cfg, info), "best_epoch": None}
    outcome["trainable_parameters"] = trainable
    for name, metrics in outcome["evals"].items():
        logger.log(f"eval/{method.name}/{job.name}", 0, name=name, **metrics)
    if info.is_main:
        done.write_text(json.dumps(outcome, indent=2))
    barrier(info)
    return outcome


def resolve_sources(cfg: dict, info: DistInfo) -> tuple[Path | None, Path]:
    """(data root, backbone checkpoint); on the synthetic data set both are made on first use."""
    if cfg["dataset"] == "synthetic":
        data_root = Path(cfg["data_root"]) if cfg["data_root"] else assets.synthetic_data(cfg, info)
        if cfg["data_root"] and info.is_main:
            assets.write_synthetic_descriptions(data_root, cfg["loss"]["num_descriptions"])
        barrier(info)
        checkpoint = cfg["checkpoint"] or assets.pretrained_model(cfg, data_root, info)
        return data_root, Path(checkpoint)
    if not cfg["checkpoint"]:
        raise ConfigError(f"--dataset {cfg['dataset']} needs --checkpoint VICLIP.pth (the ViCLIP weights)")
    return (Path(cfg["data_root"]) if cfg["data_root"] else None), Path(cfg["checkpoint"])


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    info = init_distributed()
    run_dir = Path(cfg["out"] or f"runs/{cfg['setting']}_{cfg['dataset']}")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, enabled=info.is_main)
    started = time.time()
    try:
        data_root, checkpoint = resolve_sources(cfg, info)
        jobs = plan_jobs(cfg, data_root)
        results = {"setting": cfg["setting"], "dataset": cfg["dataset"], "methods": {},
                   "trainable_parameters": {}, "views": _views(cfg, jobs), "config": cfg}
        for name in cfg["methods"]:
            method = get_method(name)
            mcfg = method_config(cfg, name)
            outcomes = {job.name: run_job(method, mcfg, job, checkpoint, info, run_dir, logger) for job in jobs}
            results["methods"][name] = summarize(cfg["setting"], jobs, outcomes)
            results["trainable_parameters"][name] = next(iter(outcomes.values()))["trainable_parameters"]
        results["seconds"] = time.time() - started
        if info.is_main:
            write_results(results, run_dir)
            plot_results([results], run_dir / "results.png")
            print("\n" + results_table(results) + f"\n\nrun directory: {run_dir} ({results['seconds']:.0f} s)")
        return results
    finally:
        logger.close()
        cleanup()


def _views(cfg: dict, jobs: list[Job]) -> str:
    ev = next(iter(jobs[0].evals.values()))[0]
    clips, crops = cfg["eval"]["num_clips"] or ev.num_clips, cfg["eval"]["num_crops"] or ev.num_crops
    return f"{clips} clip{'s' if clips > 1 else ''} x {crops} crop{'s' if crops > 1 else ''}"


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")

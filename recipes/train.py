"""Train and evaluate video-language transfer methods on one protocol: base-to-novel, few-shot, zero-shot or
fully supervised.

    python recipes/train.py --setting b2n                      # the built-in synthetic default, any machine
    python recipes/train.py --setting b2n --dataset hmdb --checkpoint ViClip-InternVid-10M-FLT.pth \\
        --data-root /data/hmdb51 --methods zero,msta
    torchrun --nproc_per_node 8 recipes/train.py --setting full --dataset k400 ...   # FSDP2 by default

The recipe, top to bottom: read and validate the config; set up the distributed run; find (or make) the data and
the backbone; plan the protocol's jobs (seeds, shots, ...); then for every method and job: load the backbone,
patch it with the method's adapters, build the method's objective, wrap model + objective in a ``TrainStep``
(FSDP2 / DDP), train with an explicit loop (gradient accumulation to the global batch, per-iteration warm-up +
cosine, atomic checkpoints, the epoch selected on a validation list), evaluate, save the adapters; finally write
``results.json``, a table and a plot into the run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
EXAMPLES = """examples:
  python recipes/train.py --setting b2n                     the built-in synthetic default (no weights, no data)
  python recipes/train.py --setting full --data-root my_videos/ --checkpoint ViClip-InternVid-10M-FLT.pth
                                                            your own folder of videos, one sub-folder per class
  python recipes/train.py --setting b2n --dataset hmdb --checkpoint ViClip-InternVid-10M-FLT.pth \\
      --data-root /data/hmdb51 --set loss.msta.descriptions_dir=/data/descriptions --methods zero,msta
  torchrun --nproc_per_node 8 recipes/train.py --setting full --dataset k400 --checkpoint ... --data-root ...
  python recipes/train.py --config my.yaml --set optim.lr=2e-3 --print-config
                                                            the resolved config, every key, then exit

precedence: built-in defaults < the YAML file < the flags you give < --set key=value"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default=None, help="b2n (base-to-novel), fs (few-shot), zs (zero-shot) or full "
                        "(fully supervised); default: the --config file's, else b2n")
    parser.add_argument("--dataset", default=None,
                        help="k400, hmdb, ucf, ssv2 or synthetic; default: the --config file's, else synthetic")
    parser.add_argument("--methods", default=None,
                        help="comma-separated: zero, msta, lora, adaptformer, full, m2clip (default: the config's)")
    parser.add_argument("--config", default=None, help="YAML file (default: configs/<setting>/<dataset>.yaml)")
    parser.add_argument("--checkpoint", default=None, help="ViCLIP weights (.pth or .safetensors)")
    parser.add_argument("--data-root", default=None,
                        help="folder of the videos: a data set's (the lists' paths are relative to it), or your own "
                             "with one sub-folder per class (then --dataset may be left out)")
    parser.add_argument("--train-list", default=None,
                        help="your own lists instead of class folders: 'path label' lines, paths relative to "
                             "--data-root (with --val-list and --labels)")
    parser.add_argument("--val-list", default=None, help="your validation list (see --train-list)")
    parser.add_argument("--labels", default=None, help="class names of your lists: a labels CSV (id,name) or a "
                        "name per line")
    parser.add_argument("--lists-dir", default=None, help="your lists in the ViFi-CLIP layout (the K-400 train list)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<setting>_<dataset>)")
    parser.add_argument("--cache-dir", default=None,
                        help="cache of the synthetic data and backbone ($MSTA_FAST_CACHE, else ~/.cache/msta_fast)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: continue with a config that differs from the run's (the changes are "
                             "listed and recorded in metrics.jsonl); without it such a resume is refused")
    parser.add_argument("--no-consistency", action="store_true", help="train MSTA without L_CC (an ablation)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set optim.lr=2e-3 (repeatable; parsed as YAML)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):
    build_parser().print_help()  # answered before the library (and torch) is imported
    sys.exit(0)

import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from msta_fast.adapter_io import load_adapters, save_adapters  # noqa: E402
from msta_fast.collectives import gather_batch  # noqa: E402
from msta_fast.data.lists import write_list  # noqa: E402
from msta_fast.methods import get_method  # noqa: E402
from msta_fast.patching import count_trainable, patch  # noqa: E402
from msta_fast.progress import progress_bar  # noqa: E402
from msta_fast.training import assets  # noqa: E402
from msta_fast.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from msta_fast.training.config import (  # noqa: E402
    ConfigError,
    build_config,
    check_methods,
    config_changes,
    load_yaml,
    method_config,
    method_options,
    save_config,
)
from msta_fast.training.descriptions import encode_descriptions, job_descriptions  # noqa: E402
from msta_fast.training.distributed import (  # noqa: E402
    DistInfo,
    all_reduce_max,
    barrier,
    cleanup,
    init_distributed,
    reshard,
    unwrap,
    wrap,
)
from msta_fast.training.evaluation import autocast_for, class_tokens, evaluate_lists  # noqa: E402
from msta_fast.training.files import atomic_write_text, read_json  # noqa: E402
from msta_fast.training.jobs import Job, folder_data, plan_jobs, summarize  # noqa: E402
from msta_fast.training.loaders import iterate_keeping_rng, train_loader  # noqa: E402
from msta_fast.training.results import MetricsLogger, plot_results, results_table, write_results  # noqa: E402
from msta_fast.training.schedule import build_optimizer, build_scheduler  # noqa: E402
from msta_fast.training.sources import load_backbone, resolve_sources  # noqa: E402
from msta_fast.training.step import TrainStep  # noqa: E402
from msta_fast.training.throughput import EpochTimer, stall_hint  # noqa: E402
from msta_fast.training.unreadable import (  # noqa: E402
    UnreadableVideosError,
    record_unreadable,
    unreadable_summary,
)


def parse_args(argv: list[str] | None = None) -> dict:
    """The resolved config. Values of the YAML file win over the built-in defaults; only the flags given on the
    command line override the file, and ``--set`` overrides everything."""
    args = build_parser().parse_args(argv)
    own_lists = args.train_list or args.val_list or args.labels
    if args.config:
        config = Path(args.config)
    else:
        # a --data-root without --dataset is your own folder of videos
        dataset = args.dataset or ("folder" if args.data_root or own_lists else "synthetic")
        config = CONFIGS / (args.setting or "b2n") / f"{dataset}.yaml"
        if not config.is_file():
            known = sorted(p.stem for p in (CONFIGS / (args.setting or "b2n")).glob("*.yaml"))
            raise ConfigError(f"no config for --setting {args.setting or 'b2n'} --dataset {dataset} ({config}; "
                              f"shipped: {', '.join(known)}); pass --config FILE")
        if args.dataset is None:
            args.dataset = dataset
    flags = {}
    for key, value in (("data.train_list", args.train_list), ("data.val_list", args.val_list),
                       ("data.labels", args.labels)):
        if value is not None:
            flags[key] = value
    for key, value in (("setting", args.setting), ("dataset", args.dataset), ("checkpoint", args.checkpoint),
                       ("data_root", args.data_root), ("out", args.out), ("lists_dir", args.lists_dir),
                       ("cache_dir", args.cache_dir)):
        if value is not None:
            flags[key] = value
    if args.methods:
        flags["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.resume:
        flags["resume"] = True
    if args.allow_changes:
        if not args.resume:
            raise ConfigError("--allow-changes applies to --resume only")
        flags["allow_changes"] = True
    if args.no_consistency:
        flags["loss.msta.consistency"] = False
    cfg = warn_builtin_backbone(build_config(config, flags, args.set))
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        sys.exit(0)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# One job: backbone -> patch -> objective -> TrainStep -> train -> evaluate -> adapters
# ---------------------------------------------------------------------------------------------------------------


def run_job(method: str, cfg: dict, job: Job, backbone: Path, info: DistInfo, run_dir: Path,
            logger: MetricsLogger) -> dict:
    """Train (or, for zero-shot, only evaluate) one method on one job; returns its outcome (``done.json``)."""
    job_dir = run_dir / method / job.name
    done = job_dir / "done.json"
    if cfg["resume"] and done.is_file():
        return read_json(done)
    job_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"] * 1000 + job.seed)

    spec, config, loss_options = method_options(cfg, method)
    model = load_backbone(cfg, backbone)
    patch(model, method, config=spec.for_classes(config, job.classes, loss_options))
    descriptions = None
    if spec.wants_descriptions(loss_options):  # embedded once by the frozen text tower, before sharding
        default = assets.synthetic_descriptions_dir(cfg, job.train_root) if job.dataset == "synthetic" else None
        spatial, temporal = job_descriptions(loss_options, job, default)
        descriptions = (encode_descriptions(model, spatial, len(job.classes)),
                        encode_descriptions(model, temporal, len(job.classes)))
    objective = spec.objective(model, config, job.classes, loss_options, descriptions=descriptions,
                               template=cfg["loss"]["template"])
    wrapper = wrap(TrainStep(model, objective), info, cfg["distributed"]["strategy"])

    if spec.trains:
        outcome = train(wrapper, cfg, job, info, job_dir, logger, label=f"{method}/{job.name}")
    else:
        outcome = {"evals": evaluate_lists(wrapper, job.evals, cfg, info, label=f"eval {method}/{job.name}",
                                           out_dir=job_dir / "evals", run_dir=run_dir), "best_epoch": None}
    outcome["trainable_parameters"] = count_trainable(model)
    for name, metrics in outcome["evals"].items():
        logger.log(f"eval/{method}/{job.name}", 0, name=name, **metrics)
    if info.is_main:
        atomic_write_text(done, json.dumps(outcome, indent=2))
    barrier(info)
    return outcome


@dataclass
class Progress:
    """What the loop has done, saved in every checkpoint: the optimizer steps taken, the epoch in progress (or
    just finished, ``epoch_done``), the best selection accuracy and its epoch, the sampler position, the listed
    videos this rank could not read so far in the epoch, and the count of unreadable videos of every epoch."""

    step: int = 0
    epoch: int = 0
    epoch_done: bool = False
    best: float = -1.0
    best_epoch: int = -1
    sampler: dict | None = None
    unreadable: list[int] = field(default_factory=list)
    unreadable_per_epoch: list[int] = field(default_factory=list)


def train(wrapper, cfg: dict, job: Job, info: DistInfo, job_dir: Path, logger: MetricsLogger, label: str) -> dict:
    """Train one job (resuming it with ``--resume``); returns ``{"evals", "best_epoch"}``."""
    return JobTraining(wrapper, cfg, job, info, job_dir, logger, label).run()


class JobTraining:
    """The training loop of one job, as torchtune's recipes: set up in ``__init__``, then ``run``: epochs of
    ``train_epoch``, each followed by ``select_epoch`` (b2n) and a checkpoint; then the final evaluation."""

    def __init__(self, wrapper, cfg: dict, job: Job, info: DistInfo, job_dir: Path, logger: MetricsLogger,
                 label: str):
        self.wrapper, self.cfg, self.job, self.info, self.logger, self.label = wrapper, cfg, job, info, logger, label
        self.model = unwrap(wrapper).model
        o = cfg["optim"]
        self.micro = o["micro_batch_size"]
        self.accum = accumulation_steps(o["batch_size"], self.micro, info)
        self.loader = train_loader(job.train, job.train_root, cfg, info, seed=cfg["seed"] * 1000 + job.seed,
                                   batch_size=self.micro)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.loader.sampler) / self.micro) / self.accum)
        self.optimizer = build_optimizer(self.model, o["lr"], o["weight_decay"], o["betas"], o["lr_multipliers"])
        self.scheduler = build_scheduler(self.optimizer, o["epochs"] * self.steps_per_epoch,
                                         round(o["warmup_epochs"] * self.steps_per_epoch), o["min_lr_ratio"])
        self.class_ids = class_tokens(cfg["loss"]["template"], job.classes).to(info.device)
        self.amp = autocast_for(cfg, info)
        self.checkpoints, self.best_path = job_dir / "checkpoints", job_dir / "best_adapters.safetensors"
        self.job_dir, self.run_dir = job_dir, job_dir.parent.parent
        self.progress = Progress()

    def run(self) -> dict:
        first_epoch = self.resume() if self.cfg["resume"] else 0
        epochs = self.cfg["optim"]["epochs"]
        self.bar = progress_bar(total=epochs * self.steps_per_epoch, initial=self.progress.step,
                                desc=f"train {self.label}", disable=not self.info.is_main, unit="step")
        for epoch in range(first_epoch, epochs):
            if self.progress.epoch != epoch or self.progress.epoch_done:  # not the epoch a resume continues
                self.progress.unreadable = []
            self.progress.epoch, self.progress.epoch_done = epoch, False
            consumed = self.train_epoch(epoch)
            if self.job.select is not None:
                self.select_epoch(epoch)
            self.progress.epoch_done = True
            self.save_checkpoint(consumed)
        self.bar.close()
        reshard(self.wrapper)
        if self.job.select is not None and self.best_path.is_file():
            load_adapters(self.model, self.best_path)  # the epoch with the best selection accuracy is evaluated
        evals = evaluate_lists(self.wrapper, self.job.evals, self.cfg, self.info, label=f"eval {self.label}",
                               out_dir=self.job_dir / "evals", run_dir=self.run_dir)
        save_adapters(self.model, self.job_dir / "adapters.safetensors", write=self.info.is_main,
                      extra=self.description())
        return {"evals": evals, "best_epoch": self.progress.best_epoch if self.job.select is not None else None,
                "unreadable_per_epoch": self.progress.unreadable_per_epoch}

    def resume(self) -> int:
        """Restore the last checkpoint, if any; returns the epoch to start with."""
        latest = latest_checkpoint(self.checkpoints)
        if latest is None:
            return 0
        fresh = [{k: g[k] for k in ("weight_decay", "betas")} for g in self.optimizer.param_groups]
        base_lrs = list(self.scheduler.base_lrs)
        saved = load_checkpoint(latest, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                info=self.info)
        self.progress = Progress(**saved)
        if self.cfg["allow_changes"]:  # the optimizer's hyper-parameters of this config, not the checkpoint's
            self.scheduler.base_lrs = base_lrs
            for group, values, base, factor in zip(self.optimizer.param_groups, fresh, base_lrs,
                                                   self.scheduler.lr_lambdas, strict=True):
                group.update(values, lr=base * factor(self.scheduler.last_epoch))
        self.loader.sampler.load_state_dict(self.progress.sampler)
        if self.info.is_main:
            print(f"resumed {self.job_dir} from {latest.name} (epoch {self.progress.epoch}, step "
                  f"{self.progress.step})", flush=True)
        return self.progress.epoch + 1 if self.progress.epoch_done else self.progress.epoch

    def train_epoch(self, epoch: int) -> int:
        """One epoch (or what is left of it after a resume): forward, backward, an optimizer step every
        ``accum`` micro-batches, a checkpoint every ``checkpointing.every_steps`` steps; returns the number of
        this rank's items consumed in the epoch."""
        loader, progress, info = self.loader, self.progress, self.info
        loader.set_epoch(epoch)
        consumed = len(loader.sampler.epoch_order()) - len(loader.sampler)  # items done before a mid-epoch resume
        num_batches = math.ceil(len(loader.sampler) / self.micro)
        every = self.cfg["checkpointing"]["every_steps"]
        self.wrapper.train()
        timer = EpochTimer(info.device)
        group: list[dict] = []
        for i, batch in enumerate(timer.batches(iterate_keeping_rng(loader))):
            video, labels = batch["video"].to(info.device), batch["label"].to(info.device)
            item_seeds = batch["item_seed"].to(info.device) if "item_seed" in batch else None
            # gradient accumulation: groups of `accum` micro-batches, the epoch's last group possibly smaller
            group_size = min(self.accum, num_batches - (i // self.accum) * self.accum)
            with self.amp if self.amp is not None else contextlib.nullcontext():
                loss, parts = self.wrapper(video, self.class_ids, labels, item_seeds)  # towers, then the objective
            self.check_finite(loss, epoch)
            (loss / group_size).backward()
            consumed += labels.shape[0]
            failed = batch["failed_index"]
            progress.unreadable += failed[failed >= 0].tolist()  # listed videos replaced by another one
            timer.add(labels.shape[0] * info.world_size)
            group.append({"loss": float(loss.detach()), **parts})
            if len(group) < group_size:
                continue
            self.optimizer_step(epoch)
            logs = {k: sum(g[k] for g in group) / len(group) for k in group[0]}
            group = []
            self.logger.log(f"train/{self.label}", progress.step, lr=self.scheduler.get_last_lr()[0], epoch=epoch,
                            **logs)
            self.bar.update()
            self.bar.set_postfix(epoch=epoch, **{k: f"{v:.3f}" for k, v in logs.items()}, **timer.postfix())
            last_of_epoch = i == num_batches - 1  # the epoch-end checkpoint follows, after the selection
            if every and progress.step % every == 0 and not last_of_epoch:
                self.save_checkpoint(consumed)
        self.report_epoch(epoch, timer.summary())
        return consumed

    def report_epoch(self, epoch: int, summary: dict[str, float]) -> None:
        """The epoch's throughput, data-stall figure and unreadable videos in metrics.jsonl / TensorBoard, a hint
        when data stalls; too many unreadable videos stop the run (``training.unreadable``)."""
        (failed,) = gather_batch(torch.tensor(self.progress.unreadable, dtype=torch.long, device=self.info.device))
        samples = getattr(self.loader, "dataset", self.loader).samples  # what the loader reads (debug: a subset)
        paths = sorted({samples[i][0] for i in failed.tolist()})
        self.progress.unreadable_per_epoch.append(len(paths))
        self.logger.log(f"epoch/{self.label}", epoch, unreadable_videos=len(paths), **summary)
        record_unreadable(self.run_dir, f"train {self.label} epoch {epoch}", paths, len(samples),
                          self.cfg["data"]["max_unreadable"], write=self.info.is_main)
        hint = stall_hint(summary, self.cfg["data"]["num_workers"])
        if hint and self.info.is_main:
            self.bar.write(f"{self.label}, epoch {epoch}: {hint}")

    def optimizer_step(self, epoch: int) -> None:
        """Clip (``optim.grad_clip``), step, and stop on a non-finite gradient or weight, or on a weight beyond
        ``optim.max_weight`` (an explosion with a finite loss): such a state is never checkpointed or selected."""
        o = self.cfg["optim"]
        params = [p for p in self.wrapper.parameters() if p.requires_grad]
        # max_norm inf leaves the gradients as they are (scaled by exactly 1) and gives their norm
        norm = torch.nn.utils.clip_grad_norm_(params, o["grad_clip"] if o["grad_clip"] > 0 else float("inf"))
        self.stop_if(not torch.isfinite(norm).item(), f"non-finite gradient norm ({norm.item()})", epoch)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        largest = max(p.detach().abs().max().item() for p in params)  # nan propagates through max
        self.stop_if(not math.isfinite(largest), "non-finite weights after the optimizer step", epoch)
        self.stop_if(0 < o["max_weight"] < largest, f"a weight of magnitude {largest:.3g} after the optimizer step "
                     f"(optim.max_weight {o['max_weight']:g}: the weights are exploding)", epoch)

    def check_finite(self, loss: torch.Tensor, epoch: int) -> None:
        self.stop_if(not torch.isfinite(loss).item(), f"non-finite loss ({loss.item()})", epoch)

    def stop_if(self, failed: bool, what: str, epoch: int) -> None:
        """Every rank stops when one does, naming the last good checkpoint and how to go on from it."""
        if all_reduce_max(1.0 if failed else 0.0, self.info) == 0:
            return
        self.bar.close()
        where = latest_checkpoint(self.checkpoints)
        hint = ("lower optim.lr and resume from it: --resume --allow-changes --set optim.lr=..." if where else
                "lower optim.lr and start again")
        raise FloatingPointError(f"{what} in {self.label}, epoch {epoch}, step {self.progress.step}; the last good "
                                 f"checkpoint is {where or 'none (no checkpoint yet)'}: {hint}")

    def select_epoch(self, epoch: int) -> None:
        """Score the selection list (b2n: base-val); keep the adapters of the best epoch so far."""
        name = self.job.select
        acc = evaluate_lists(self.wrapper, self.job.evals, self.cfg, self.info, label=f"select {self.label}",
                             names=[name], run_dir=self.run_dir)[name]["top1"]
        self.logger.log(f"select/{self.label}", epoch, top1=acc)
        if acc > self.progress.best:
            self.progress.best, self.progress.best_epoch = acc, epoch
            save_adapters(self.model, self.best_path, write=self.info.is_main, extra=self.description())
        barrier(self.info)

    def description(self) -> dict:
        """What the saved adapters were trained for, so that a classifier rebuilds the same pipeline: the classes
        (index = output), the prompt, the frames, the image size and the evaluation views."""
        m, e = self.cfg["model"], self.cfg["eval"]
        first, _ = next(iter(self.job.evals.values()))
        return {"classes": list(self.job.classes), "template": self.cfg["loss"]["template"],
                "num_frames": m["num_frames"], "image_size": m["image_size"],
                "views": [e["num_clips"] or first.num_clips, e["num_crops"] or first.num_crops]}

    def save_checkpoint(self, consumed: int) -> None:
        reshard(self.wrapper)  # save the optimizer's (sharded) parameters, not stale gathered copies
        self.progress.sampler = self.loader.sampler.state_dict(consumed=consumed)
        save_checkpoint(self.checkpoints, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        state=vars(self.progress).copy(), info=self.info)


def accumulation_steps(batch_size: int, micro: int, info: DistInfo) -> int:
    """Micro-batches per optimizer step that make the global batch on ``info.world_size`` processes."""
    accum = max(1, math.ceil(batch_size / (micro * info.world_size)))
    if accum * micro * info.world_size != batch_size and info.is_main:
        print(f"note: global batch {batch_size} is not micro {micro} x {info.world_size} devices x an integer; "
              f"using {accum * micro * info.world_size}", flush=True)
    return accum


# ---------------------------------------------------------------------------------------------------------------
# The run: every method on every job of the protocol, then the results
# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    check_methods(cfg)  # every method's options, before any work starts
    folder = folder_data(cfg, Path(cfg["data_root"])) if cfg["dataset"] == "folder" else None
    check_folder_setting(cfg, folder)
    info = init_distributed()
    name = folder.name if folder is not None else cfg["dataset"]
    run_dir = Path(cfg["out"] or f"runs/{cfg['setting']}_{name}")
    changes = check_run_dir(run_dir, cfg)
    new_run_dir = not run_dir.exists()
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, enabled=info.is_main)
    if changes:
        logger.log("resume/changes", 0, changes=[{"key": k, "saved": a, "now": b} for k, a, b in changes])
    started = time.time()
    try:
        data_root, backbone = resolve_sources(cfg, info, logger)
        if info.is_main:  # what the run used, for eval.py, predict.py and VideoClassifier.from_run
            atomic_write_text(run_dir / "run.json", json.dumps({"backbone": str(backbone.resolve()), "dataset": name,
                                                                "data_root": str(data_root) if data_root else None}))
        jobs = plan_jobs(cfg, data_root, folder)
        if folder is not None and info.is_main:
            record_folder(folder, run_dir)
        results = {"setting": cfg["setting"], "dataset": name, "methods": {},
                   "trainable_parameters": {}, "views": _views(cfg, jobs),
                   "unreadable": {"training": {}, "evaluations": {}}, "config": cfg}
        for method in cfg["methods"]:
            mcfg = method_config(cfg, method)
            outcomes = {job.name: run_job(method, mcfg, job, backbone, info, run_dir, logger) for job in jobs}
            results["methods"][method] = summarize(cfg["setting"], jobs, outcomes)
            results["trainable_parameters"][method] = next(iter(outcomes.values()))["trainable_parameters"]
            for kind, entries in unreadable_summary(method, outcomes).items():
                results["unreadable"][kind].update(entries)
        results["seconds"] = time.time() - started
        if info.is_main:
            write_results(results, run_dir)
            plot_results([results], run_dir / "results.png")
            print("\n" + results_table(results) + f"\n\nrun directory: {run_dir} ({results['seconds']:.0f} s)")
        return results
    except BaseException:
        logger.close()
        if info.is_main and new_run_dir and not _has_work(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # a run that failed before any job left anything to keep
        raise
    finally:
        logger.close()
        cleanup()


def _has_work(run_dir: Path) -> bool:
    """Whether a run directory holds something a --resume would use (a checkpoint or a finished job)."""
    return any(run_dir.rglob("done.json")) or any(run_dir.rglob("LATEST"))


def warn_builtin_backbone(cfg: dict) -> dict:
    """Your own folder without ``--checkpoint`` runs on the built-in small backbone (the config's
    ``builtin_backbone`` sizes, merged by ``build_config``): said once, since its accuracy is not ViCLIP's."""
    if cfg["dataset"] == "folder" and not cfg["checkpoint"]:
        print("warning: no --checkpoint: training on the built-in small backbone pre-trained on synthetic captions; "
              "for real accuracy pass ViCLIP weights (--checkpoint ViClip-InternVid-10M-FLT.pth)", file=sys.stderr)
    return cfg


def check_folder_setting(cfg: dict, folder) -> None:
    if folder is None:
        return
    training = [m for m in cfg["methods"] if get_method(m).trains]
    if cfg["setting"] == "zs" and training:
        raise ConfigError(f"--setting zs on your own videos evaluates the backbone as it is (--methods zero); "
                          f"{', '.join(training)} would train: use --setting full, fs or b2n for that")


def record_folder(folder, run_dir: Path) -> None:
    """What the run used, so that it can be reproduced and re-scored: ``classes.txt`` (a name per line, index =
    label) and ``splits/<split>.txt`` (paths relative to the data folder, label index)."""
    atomic_write_text(run_dir / "classes.txt", "".join(f"{name}\n" for name in folder.classes))
    (run_dir / "splits").mkdir(exist_ok=True)
    for split, samples in folder.splits.items():
        write_list(run_dir / "splits" / f"{split}.txt", samples)


def check_run_dir(run_dir: Path, cfg: dict) -> list[tuple[str, object, object]]:
    """Refuse a run directory that is a file, and a resume whose config differs from the run's saved one unless
    ``--allow-changes`` (then the changes are returned, printed and recorded)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory")
    saved = run_dir / "config.yaml"
    if not cfg["resume"] or not saved.is_file():
        return []
    changes = config_changes(load_yaml(saved), cfg)
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
    if changes and not cfg["allow_changes"]:
        raise ConfigError(f"--resume with a config that differs from the run's ({saved}): {listed}. Resume with the "
                          f"same options, or add --allow-changes to continue with these")
    if changes:
        print(f"resuming {run_dir} with changes: {listed}", flush=True)
    return changes


def _views(cfg: dict, jobs: list[Job]) -> str:
    ev = next(iter(jobs[0].evals.values()))[0]
    clips, crops = cfg["eval"]["num_clips"] or ev.num_clips, cfg["eval"]["num_crops"] or ev.num_crops
    return f"{clips} clip{'s' if clips > 1 else ''} x {crops} crop{'s' if crops > 1 else ''}"


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, FloatingPointError, UnreadableVideosError) as e:
        sys.exit(f"error: {e}")

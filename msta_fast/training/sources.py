"""Where a run's videos and backbone come from: the user's (``data_root``, ``checkpoint``) or, on the built-in
synthetic data set, the ones :mod:`msta_fast.training.assets` makes on first use. Shared by every recipe."""

from __future__ import annotations

from pathlib import Path

from msta_fast.models import load_viclip
from msta_fast.training import assets
from msta_fast.training.config import ConfigError
from msta_fast.training.distributed import DistInfo, barrier


def resolve_sources(cfg: dict, info: DistInfo, logger=None) -> tuple[Path | None, Path]:
    """(data root, backbone checkpoint); on the synthetic data set both are made on first use (the pre-training
    curve going to ``logger``, a :class:`~msta_fast.training.results.MetricsLogger`)."""
    if cfg["dataset"] == "folder":
        if not cfg["data_root"]:
            raise ConfigError("dataset: folder needs --data-root (your folder of videos, one sub-folder per class)")
        checkpoint = cfg["checkpoint"] or assets.pretrained_model(cfg, assets.synthetic_data(cfg, info), info, logger)
        return Path(cfg["data_root"]), Path(checkpoint)
    if cfg["dataset"] == "synthetic":
        data_root = Path(cfg["data_root"]) if cfg["data_root"] else assets.synthetic_data(cfg, info)
        if cfg["data_root"] and info.is_main:
            assets.write_synthetic_descriptions(data_root, assets.num_descriptions(cfg),
                                                assets.synthetic_descriptions_dir(cfg, data_root))
        barrier(info)
        checkpoint = cfg["checkpoint"] or assets.pretrained_model(cfg, data_root, info, logger)
        return data_root, Path(checkpoint)
    if not cfg["checkpoint"]:
        raise ConfigError(f"--dataset {cfg['dataset']} needs --checkpoint VICLIP.pth (the ViCLIP weights)")
    return (Path(cfg["data_root"]) if cfg["data_root"] else None), Path(cfg["checkpoint"])


def load_backbone(cfg: dict, checkpoint: Path):
    """ViCLIP from ``checkpoint``; ``model.overrides`` may set what the shapes do not tell (head counts)."""
    m = cfg["model"]
    return load_viclip(checkpoint, num_frames=m["num_frames"], image_size=m["image_size"], **m["overrides"])

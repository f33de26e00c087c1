"""Pre-train a small ViCLIP contrastively on the synthetic data set's captions: the foundation model of the
built-in default (``recipes/train.py`` calls the same code on first use and caches the result).

    python recipes/pretrain.py                        # cached: prints the checkpoint's path
    python recipes/pretrain.py --set pretrain.epochs=30 --set model.overrides='{vision_layers: 4}'

Options come from ``configs/b2n/synthetic.yaml`` (sections ``synthetic``, ``model``, ``pretrain``), so the
checkpoint is the one train.py finds for the same options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from msta_fast.training import assets
from msta_fast.training.config import ConfigError, build_config
from msta_fast.training.distributed import DistInfo

CONFIG = Path(__file__).resolve().parent / "configs" / "b2n" / "synthetic.yaml"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(CONFIG),
                        help="YAML with the synthetic, model and pretrain sections (default: "
                             "configs/b2n/synthetic.yaml)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the data set and the model are cached (default: $MSTA_FAST_CACHE or "
                             "~/.cache/msta_fast)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set pretrain.epochs=30 (repeatable)")
    args = parser.parse_args(argv)
    cfg = build_config(args.config, {"cache_dir": args.cache_dir} if args.cache_dir else {}, args.set)
    info = DistInfo()
    data_root = assets.synthetic_data(cfg, info)
    path = assets.pretrained_model(cfg, data_root, info)
    print(f"pre-trained ViCLIP: {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"error: {e}")

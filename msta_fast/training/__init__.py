"""What the recipes are made of: config, the training step, schedule, checkpoints, distributed setup, evaluation,
results, the protocol's jobs and the built-in synthetic default."""

from msta_fast.training.config import DEFAULTS, ConfigError, build_config, load_yaml, method_options, validate
from msta_fast.training.evaluation import evaluate, evaluate_lists, harmonic_mean, topk_accuracy
from msta_fast.training.schedule import build_optimizer, build_scheduler, warmup_cosine
from msta_fast.training.step import TrainStep

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "TrainStep",
    "build_config",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "evaluate_lists",
    "harmonic_mean",
    "load_yaml",
    "method_options",
    "topk_accuracy",
    "validate",
    "warmup_cosine",
]

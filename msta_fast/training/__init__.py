"""The pieces the recipes compose: config, losses, schedule, checkpoints, distributed setup, evaluation,
results, the method registry and the built-in synthetic default."""

from msta_fast.training.config import DEFAULTS, ConfigError, build_config, load_yaml, validate
from msta_fast.training.evaluation import evaluate, harmonic_mean, topk_accuracy
from msta_fast.training.losses import VideoTextLoss, consistency_loss, encode_descriptions, similarity_logits
from msta_fast.training.methods import LossContext, Method, get_method, list_methods, register_method
from msta_fast.training.schedule import build_optimizer, build_scheduler, warmup_cosine

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "LossContext",
    "Method",
    "VideoTextLoss",
    "build_config",
    "build_optimizer",
    "build_scheduler",
    "consistency_loss",
    "encode_descriptions",
    "evaluate",
    "get_method",
    "harmonic_mean",
    "list_methods",
    "load_yaml",
    "register_method",
    "similarity_logits",
    "topk_accuracy",
    "validate",
    "warmup_cosine",
]

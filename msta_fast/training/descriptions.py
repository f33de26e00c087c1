"""The class descriptions of a job, for MSTA's consistency constraint: read from the description files (or
template sentences) and embedded once by the frozen, adapter-free text tower."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.data.descriptions import load_descriptions, template_descriptions
from msta_fast.models import tokenize
from msta_fast.patching import disable_adapters
from msta_fast.training.config import ConfigError

log = logging.getLogger(__name__)

# data set -> the name used in the MSTA authors' description files
DESCRIPTION_NAMES = {"k400": "k400", "k600": "k600", "hmdb": "hmdb", "ucf": "ucf_101", "ssv2": "ssv2",
                     "synthetic": "synthetic"}


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def job_descriptions(options, job, default_folder: Path | None = None) -> tuple[dict, dict]:
    """(spatial, temporal) ``{class index: sentences}`` for the job's training classes.

    Read from ``options.descriptions_dir`` (MSTA's loss options; the authors' file names:
    ``{N}_{s|t}_description_<name>[_base].json``), else ``default_folder`` (the synthetic set's own); without a
    folder, template sentences built from the class names (weak: generate real ones with
    ``python -m msta_fast.data.descriptions``)."""
    n = options.num_descriptions
    folder = options.descriptions_dir or default_folder
    out = []
    for letter, kind in (("s", "spatial"), ("t", "temporal")):
        if folder is None:
            _warn_once("loss.msta.descriptions_dir is not set: the consistency constraint uses template sentences "
                       "built from the class names (write real ones with python -m msta_fast.data.descriptions)")
            out.append({i: template_descriptions(c, kind, n) for i, c in enumerate(job.classes)})
            continue
        name = DESCRIPTION_NAMES.get(job.dataset, job.dataset)  # your own folder: its name
        path = Path(folder) / f"{n}_{letter}_description_{name}{job.description_part}.json"
        if not path.is_file():
            raise ConfigError(f"loss.msta.descriptions_dir: {path} not found (write it with "
                              f"`python -m msta_fast.data.descriptions --kind {kind} --n {n} ...`)")
        out.append(load_descriptions(path, num_classes=len(job.classes)))
    return out[0], out[1]


@torch.no_grad()
def encode_descriptions(model: nn.Module, descriptions: dict[int, list[str]], num_classes: int,
                        batch_size: int = 256) -> torch.Tensor:
    """Mean description embedding per class -> (num_classes, E), from the adapter-free text tower.

    Each sentence embedding is L2-normalised before the mean (prompt ensembling as in CLIP), so that no sentence
    weighs more for having a larger norm. Sentences longer than the context are cut by the tokenizer.
    """
    missing = [c for c in range(num_classes) if not descriptions.get(c)]
    if missing:
        raise ValueError(f"no descriptions for classes {missing[:10]} (of {num_classes})")
    sentences = [s for c in range(num_classes) for s in descriptions[c]]
    owner = torch.tensor([c for c in range(num_classes) for _ in descriptions[c]])
    was_training = model.training
    model.eval()
    chunks = []
    with disable_adapters(model):
        for i in range(0, len(sentences), batch_size):
            chunks.append(F.normalize(model.encode_text(tokenize(sentences[i:i + batch_size])).float(), dim=-1))
    model.train(was_training)
    emb = torch.cat(chunks).cpu()
    total = torch.zeros(num_classes, emb.shape[1]).index_add_(0, owner, emb)
    return total / torch.bincount(owner, minlength=num_classes).unsqueeze(1)

"""Classifying videos with a trained run (or a backbone and class names): the evaluation pipeline of the recipes,
exactly, for files you name.

    from msta_fast.training.predict import VideoClassifier

    classifier = VideoClassifier.from_run("runs/full_my_actions")          # the run's adapters, classes, views
    for row in classifier.predict(["clip.mp4", "other.webm"], top_k=3):
        print(row["path"], row["top_k"])                                    # [(class, probability), ...]
    probabilities = classifier.predict_tensor(video)                        # (B, T, 3, S, S) or (B, V, T, 3, S, S)

A video goes through the same loader (``msta_fast.data.build_loader``: frame sampling, short-side resize, crops,
normalisation, every view), the same ``TrainStep.score`` and the same view averaging (``evaluate``) as a run's
evaluation lists, so that predicting a run's ``splits/val.txt`` gives the accuracy the run reported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from msta_fast.adapter_io import load_adapters, read_adapter_metadata
from msta_fast.data import build_loader
from msta_fast.data.folder import VIDEO_SUFFIXES
from msta_fast.methods import get_method
from msta_fast.models import load_viclip
from msta_fast.training.config import load_yaml, method_config, method_options
from msta_fast.training.distributed import DistInfo
from msta_fast.training.evaluation import class_tokens, evaluate
from msta_fast.training.step import TrainStep

RUN_FILE = "run.json"  # what a run used: the backbone checkpoint, the data root, the data set's name


class VideoClassifier:
    """A patched (or plain) backbone, its objective's scoring, class names and the evaluation views."""

    def __init__(self, model, classes: list[str], *, method: str = "zero", template: str = "a video of {}.",
                 num_frames: int = 8, image_size: int = 224, num_clips: int = 1, num_crops: int = 1,
                 backend: str = "decord", batch_size: int = 16, device: str | torch.device | None = None,
                 cfg: dict | None = None):
        if not classes:
            raise ValueError("a classifier needs at least one class name")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.classes, self.template = list(classes), template
        self.num_frames, self.image_size, self.num_clips, self.num_crops = num_frames, image_size, num_clips, num_crops
        self.backend, self.batch_size = backend, batch_size
        spec = get_method(method)
        if cfg is not None:
            _, config, loss_options = method_options(method_config(cfg, method), method)
        else:
            config, loss_options = spec.config(), spec.loss_options() if spec.loss_options else None
        objective = spec.objective(model, config, self.classes, loss_options, template=template)
        self.step = TrainStep(model, objective).to(self.device).eval()
        with torch.no_grad():
            self.class_emb = self.step.encode_text(class_tokens(template, self.classes).to(self.device))

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, method: str | None = None, job: str | None = None,
                 device=None) -> VideoClassifier:
        """The adapters of a ``recipes/train.py`` run (``method``/``job``: default the first trained ones; the
        best-selected adapters where the run kept them), with the classes, prompt and views they were saved with."""
        run_dir = Path(run_dir)
        cfg = load_yaml(run_dir / "config.yaml")
        run = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
        candidates = sorted(run_dir.glob(f"{method or '*'}/{job or '*'}/adapters.safetensors"))
        if not candidates:
            raise FileNotFoundError(f"{run_dir}: no adapters of method {method or 'any'} / job {job or 'any'} (a "
                                    "finished run has <method>/<job>/adapters.safetensors)")
        adapters = candidates[0].parent / "best_adapters.safetensors"
        adapters = adapters if adapters.is_file() else candidates[0]
        meta = read_adapter_metadata(adapters)
        backbone = Path(run.get("backbone") or cfg["checkpoint"] or "")
        if not backbone.is_file():
            raise FileNotFoundError(f"{run_dir}: the run's backbone checkpoint {backbone} is not there (pass "
                                    "--checkpoint)")
        m = cfg["model"]
        model = load_viclip(backbone, num_frames=m["num_frames"], image_size=m["image_size"], **m["overrides"])
        load_adapters(model, adapters)
        views = meta.get("views", [1, 1])
        return cls(model, meta["classes"], method=meta["method"],
                   template=meta.get("template", cfg["loss"]["template"]),
                   num_frames=m["num_frames"], image_size=m["image_size"], num_clips=views[0], num_crops=views[1],
                   backend=cfg["data"]["backend"], batch_size=cfg["eval"]["batch_size"], device=device, cfg=cfg)

    @classmethod
    def zero_shot(cls, checkpoint: str | os.PathLike, classes: list[str], **options) -> VideoClassifier:
        """The backbone as it is, scoring ``classes`` (zero-shot)."""
        sizes = {k: options[k] for k in ("num_frames", "image_size") if options.get(k) is not None}
        model = load_viclip(checkpoint, **sizes)
        options.update(num_frames=model.config.num_frames, image_size=model.config.image_size)
        return cls(model, classes, **options)

    @torch.no_grad()
    def predict_tensor(self, video: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C) of normalised clips (B, T, 3, S, S), or of views (B, V, T, 3, S, S) averaged
        as the evaluation averages them."""
        views = video.unsqueeze(1) if video.ndim == 5 else video
        B, V = views.shape[:2]
        scores = self.step.score(views.flatten(0, 1).to(self.device), self.class_emb, self.classes)
        return next(iter(scores.values())).float().view(B, V, -1).mean(1)

    def loader(self, paths: list[str | os.PathLike]):
        """The evaluation loader of these files (each video every view), as a run's evaluation builds it."""
        samples = [(str(p), 0) for p in paths]
        return build_loader(samples, None, train=False, batch_size=self.batch_size, num_frames=self.num_frames,
                            size=self.image_size, num_clips=self.num_clips, num_crops=self.num_crops, loader="torch",
                            backend=self.backend, device=self.device)

    @torch.no_grad()
    def predict(self, paths: list[str | os.PathLike], top_k: int = 5) -> list[dict]:
        """``[{"path", "top_k": [(class, probability), ...], "unreadable": bool}]`` for video files (folders are
        searched for videos)."""
        files = expand_paths(paths)
        if not files:
            return []
        out = evaluate(lambda video: self.step.score(video, self.class_emb, self.classes), self.loader(files),
                       DistInfo(device=self.device), desc="predict")
        k = min(top_k, len(self.classes))
        top = out["scores"].topk(k, dim=1)
        return [{"path": str(path), "unreadable": bool(out["replaced_videos"][i]),
                 "top_k": [(self.classes[j], float(p)) for j, p in zip(top.indices[i].tolist(),
                                                                        top.values[i].tolist(), strict=True)]}
                for i, path in enumerate(files)]


def expand_paths(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given; folders replaced by the videos below them (sorted); a missing path is an error."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such video or folder: {path}")
    return files

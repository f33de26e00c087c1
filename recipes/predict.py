"""Classify videos with a trained run, or zero-shot with a backbone and class names.

    python recipes/predict.py --run runs/full_my_actions clip.mp4 more_clips/ --top-k 3 --json predictions.json
    python recipes/predict.py --checkpoint ViClip-InternVid-10M-FLT.pth --classes "pouring water,stirring" clip.mp4

The videos go through the run's evaluation pipeline exactly (frames, resize, crops, views, scoring): see
``msta_fast.training.predict.VideoClassifier``. Prints a table (video, top-k classes with probabilities) and,
with ``--json``, writes a list of ``{"path", "top_k": [[class, probability], ...], "unreadable"}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", help="video files or folders (searched for videos)")
    parser.add_argument("--run", default=None, help="a recipes/train.py run directory: its adapters and classes")
    parser.add_argument("--method", default=None, help="with --run: which method's adapters (default: the first)")
    parser.add_argument("--job", default=None, help="with --run: which job's adapters (full, k16, seed1, ...)")
    parser.add_argument("--checkpoint", default=None, help="zero-shot: the ViCLIP weights")
    parser.add_argument("--classes", default=None,
                        help="zero-shot: comma-separated class names, or a file with one name per line")
    parser.add_argument("--template", default="a video of {}.", help="zero-shot: the prompt of the class texts")
    parser.add_argument("--num-clips", type=int, default=1, help="zero-shot: temporal clips per video")
    parser.add_argument("--num-crops", type=int, default=1, choices=(1, 3), help="zero-shot: spatial crops per clip")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per video (default 5)")
    parser.add_argument("--json", default=None, help="also write the predictions to this JSON file")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is a GPU)")
    return parser


def read_classes(text: str) -> list[str]:
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    import json

    from msta_fast.training.predict import VideoClassifier

    if args.run:
        classifier = VideoClassifier.from_run(args.run, args.method, args.job, device=args.device)
    elif args.checkpoint and args.classes:
        classifier = VideoClassifier.zero_shot(args.checkpoint, read_classes(args.classes), template=args.template,
                                               num_clips=args.num_clips, num_crops=args.num_crops, device=args.device)
    else:
        raise SystemExit("error: pass --run RUN_DIR, or --checkpoint CKPT with --classes for zero-shot")
    rows = classifier.predict(args.videos, top_k=args.top_k)
    width = max((len(r["path"]) for r in rows), default=5)
    print(f"{'video':<{width}}  top-{min(args.top_k, len(classifier.classes))}")
    for row in rows:
        shown = "unreadable" if row["unreadable"] else ", ".join(f"{c} {100 * p:.1f}%" for c, p in row["top_k"])
        print(f"{row['path']:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

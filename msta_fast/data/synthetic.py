"""A synthetic compositional action data set, written as real encoded videos in the protocols' formats.

Classes are ``"<shape> <motion>"``: 3 shapes (square, triangle, bar) x 8 motions in 4 temporally opposite pairs
(moving left / right, growing / shrinking, rotating clockwise / counter-clockwise, appearing / disappearing).
The second motion of a pair renders the time-reversed video of the first (same nuisance parameters), so the
average frame cannot tell the two apart: only temporal order can. Colour, background, position, size and noise
are nuisances (the colour appears in the captions, not in the class names).

Base classes are the (shape, motion) combinations with an even index sum, novel ones the rest: every word of a
novel class name is seen in base classes, the combination is not.

Output folder (the layout of ``protocols/vifi``, so ``get_protocol("synthetic", ..., data_root=DIR)`` reads it)::

    videos/{train,val}/<class_slug>_<i>.mp4         (or .webm with codec="vp9")
    labels/synthetic_labels.csv, synthetic_base_labels.csv, synthetic_novel_labels.csv
    datasets_splits/base2novel_splits/synthetic_splits/fs_base_s{1,2,3}_train.txt, base_train, base_val, novel_val
    datasets_splits/synthetic_splits/train1_few_shot_{2,4,8,16}.txt, val{1,2,3}.txt, train.txt, val.txt
    captions.json   [{"video": relative path, "caption": str}, ...] over the train videos, for pre-training
    meta.json       the generation options (written last: the folder is complete when it exists)

CLI: ``python -m msta_fast.data.synthetic --out DIR --seed S``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from msta_fast.progress import progress_bar

from .encode import EXTENSIONS, write_video
from .lists import write_labels, write_list

FORMAT_VERSION = 1
SHAPES = ("square", "triangle", "bar")
MOTION_PAIRS = (
    ("moving left", "moving right"),
    ("growing", "shrinking"),
    ("rotating clockwise", "rotating counter-clockwise"),
    ("appearing", "disappearing"),
)
MOTIONS = tuple(m for pair in MOTION_PAIRS for m in pair)
COLOURS = {"red": (230, 40, 40), "green": (40, 210, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40),
           "white": (240, 240, 240), "cyan": (40, 220, 230), "magenta": (220, 50, 220)}
# caption phrasings per motion (the first is the class-name wording)
PHRASES = {
    "moving left": ("moving left", "sliding to the left", "moving from right to left"),
    "moving right": ("moving right", "sliding to the right", "moving from left to right"),
    "growing": ("growing", "getting bigger", "expanding"),
    "shrinking": ("shrinking", "getting smaller", "contracting"),
    "rotating clockwise": ("rotating clockwise", "turning clockwise", "spinning clockwise"),
    "rotating counter-clockwise": ("rotating counter-clockwise", "turning counter-clockwise",
                                   "spinning anticlockwise"),
    "appearing": ("appearing", "fading in", "slowly becoming visible"),
    "disappearing": ("disappearing", "fading out", "slowly vanishing"),
}
CAPTION_TEMPLATES = ("a {colour} {shape} {phrase}", "a {colour} {shape} is {phrase}", "the {shape} is {phrase}",
                     "{phrase}: a {colour} {shape} on a dark background")
FEW_SHOTS = (2, 4, 8, 16)


def class_names() -> list[str]:
    """All class names, shape-major: index = shape * 8 + motion."""
    return [f"{shape} {motion}" for shape in SHAPES for motion in MOTIONS]


def is_base(class_index: int) -> bool:
    shape, motion = divmod(class_index, len(MOTIONS))
    return (shape + motion) % 2 == 0


def base_novel_classes() -> tuple[list[int], list[int]]:
    """Indices (into ``class_names()``) of the base and of the novel classes."""
    all_ids = range(len(class_names()))
    return [c for c in all_ids if is_base(c)], [c for c in all_ids if not is_base(c)]


def _shape_distance(shape: str, xr: np.ndarray, yr: np.ndarray, s: float) -> np.ndarray:
    """Approximate signed distance in pixels to the shape's edge (negative inside)."""
    if shape == "square":
        return np.maximum(np.abs(xr), np.abs(yr)) - s
    if shape == "bar":
        return np.maximum(np.abs(xr) - 1.6 * s, np.abs(yr) - 0.45 * s)
    # triangle with apex (0, -s) and base corners (+-s, 0.8 s); the slanted sides have slope 1.8
    side = (np.abs(xr) - (yr + s) / 1.8) * (1.8 / math.hypot(1.0, 1.8))
    return np.maximum(yr - 0.8 * s, side)


def render_clip(class_index: int, rng: np.random.Generator, *, size: int = 32, num_frames: int = 16) -> np.ndarray:
    """Render one video of a class -> uint8 ``(num_frames, size, size, 3)``.

    The nuisances are drawn from ``rng`` in the same way for every class, so that the two classes of a motion
    pair, rendered from equal generators, are exact time reversals of each other.
    """
    shape_id, motion_id = divmod(class_index, len(MOTIONS))
    pair, reverse = divmod(motion_id, 2)
    colour = np.array(list(COLOURS.values())[rng.integers(len(COLOURS))], dtype=np.float32)
    background = rng.uniform(0, 70, size=3).astype(np.float32)
    texture = rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)  # static, like a scene
    noise = rng.normal(0, 3, size=(num_frames, size, size, 3)).astype(np.float32)  # sensor noise
    cx, cy = rng.uniform(0.4, 0.6) * size, rng.uniform(0.4, 0.6) * size
    half = rng.uniform(0.13, 0.18) * size
    angle0 = rng.uniform(-20, 20)
    travel = rng.uniform(0.45, 0.55) * size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    frames = np.empty((num_frames, size, size, 3), dtype=np.float32)
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1)  # progress of the first motion of the pair
        px, py, s, angle, alpha = cx, cy, half, angle0, 1.0
        if pair == 0:  # moving left: from right to left
            px = cx + travel * (0.5 - u)
        elif pair == 1:  # growing
            s = half * (0.35 + 1.0 * u)
        elif pair == 2:  # rotating clockwise (image y points down, so a growing angle turns clockwise)
            angle = angle0 + 80 * (u - 0.5)
        else:  # appearing
            alpha = u
        theta = math.radians(angle)
        dx, dy = x - px, y - py
        xr = dx * math.cos(theta) + dy * math.sin(theta)
        yr = -dx * math.sin(theta) + dy * math.cos(theta)
        coverage = np.clip(0.5 - _shape_distance(SHAPES[shape_id], xr, yr, s), 0, 1)[..., None] * alpha
        frames[t] = background * (1 - coverage) + colour * coverage + texture + noise[t]
    if reverse:
        frames = frames[::-1]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("-", "_")


def _options(seed, size, num_frames, train_per_class, val_per_class, codec, fps) -> dict:
    return {"version": FORMAT_VERSION, "seed": seed, "size": size, "num_frames": num_frames,
            "train_per_class": train_per_class, "val_per_class": val_per_class, "codec": codec, "fps": fps}


def generate(out_dir: str | os.PathLike, seed: int = 0, *, size: int = 32, num_frames: int = 16,
             train_per_class: int = 20, val_per_class: int = 8, codec: str = "h264", fps: int = 8,
             overwrite: bool = False, progress: bool = True) -> Path:
    """Write the synthetic data set into ``out_dir`` and return it; does nothing if it is already there with the
    same options. ``size`` must be even and at least 16; ``train_per_class`` at least 16 (the 16-shot lists).

    Default: 24 classes x (20 train + 8 val) = 672 videos of 16 frames at 32x32, a few seconds on one core.
    """
    out = Path(out_dir)
    options = _options(seed, size, num_frames, train_per_class, val_per_class, codec, fps)
    meta = out / "meta.json"
    if meta.is_file():
        if json.loads(meta.read_text()) == options:
            return out
        if not overwrite:
            raise FileExistsError(f"{out} holds a synthetic data set generated with other options "
                                  f"({meta}); pass overwrite=True (--overwrite) or another folder")
    if size % 2 or size < 16:
        raise ValueError(f"size must be even and >= 16 (H.264 needs even sizes), got {size}")
    if train_per_class < max(FEW_SHOTS):
        raise ValueError(f"train_per_class must be >= {max(FEW_SHOTS)} for the 16-shot lists")
    if val_per_class < 2:
        raise ValueError("val_per_class must be >= 2 (the zero-shot splits subsample it)")
    if codec not in ("h264", "vp9"):
        raise ValueError(f"codec must be 'h264' or 'vp9', got {codec!r}")
    for name in ("videos", "labels", "datasets_splits"):
        shutil.rmtree(out / name, ignore_errors=True)
    meta.unlink(missing_ok=True)

    names = class_names()
    base_ids, novel_ids = base_novel_classes()
    ext = EXTENSIONS[codec]
    pools: dict[str, list[list[str]]] = {"train": [[] for _ in names], "val": [[] for _ in names]}
    captions = []
    jobs = [(pool, c, i) for pool, n in (("train", train_per_class), ("val", val_per_class))
            for c in range(len(names)) for i in range(n)]
    for pool in pools:
        (out / "videos" / pool).mkdir(parents=True, exist_ok=True)
    for pool, c, i in progress_bar(jobs, desc="synthetic videos", disable=not progress):
        # one generator per video, keyed by its motion pair (not its direction): see render_clip
        shape_id, motion_id = divmod(c, len(MOTIONS))
        key = [seed, 0 if pool == "train" else 1, shape_id, motion_id // 2, i]
        rng = np.random.default_rng(np.random.SeedSequence(key))
        frames = render_clip(c, rng, size=size, num_frames=num_frames)
        relative = f"videos/{pool}/{_slug(names[c])}_{i:03d}{ext}"
        write_video(out / relative, frames, fps=fps, codec=codec)
        pools[pool][c].append(relative)
        if pool == "train":
            captions.append({"video": relative, "caption": _caption(c, rng)})

    labels = out / "labels"
    labels.mkdir(parents=True)
    write_labels(labels / "synthetic_labels.csv", names)
    write_labels(labels / "synthetic_base_labels.csv", [names[c] for c in base_ids])
    write_labels(labels / "synthetic_novel_labels.csv", [names[c] for c in novel_ids])

    split_rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    b2n = out / "datasets_splits" / "base2novel_splits" / "synthetic_splits"
    full = out / "datasets_splits" / "synthetic_splits"
    b2n.mkdir(parents=True)
    full.mkdir(parents=True)

    def listed(pool: str, ids: list[int], pick=None) -> list[tuple[str, int]]:
        """Videos of classes ``ids`` relabelled 0..len(ids)-1; ``pick(videos)`` selects some of each class."""
        rows = []
        for new_id, c in enumerate(ids):
            videos = pools[pool][c] if pick is None else pick(pools[pool][c])
            rows += [(v, new_id) for v in videos]
        return rows

    def shots(k: int):
        return lambda videos: [videos[j] for j in sorted(split_rng.choice(len(videos), k, replace=False))]

    all_ids = list(range(len(names)))
    for s in (1, 2, 3):
        write_list(b2n / f"fs_base_s{s}_train.txt", listed("train", base_ids, shots(16)))
    write_list(b2n / "base_train.txt", listed("train", base_ids))
    write_list(b2n / "base_val.txt", listed("val", base_ids))
    write_list(b2n / "novel_val.txt", listed("val", novel_ids))
    for k in FEW_SHOTS:
        write_list(full / f"train1_few_shot_{k}.txt", listed("train", all_ids, shots(k)))
    zero_shot_size = max(1, math.ceil(val_per_class * 3 / 4))
    for n in (1, 2, 3):
        write_list(full / f"val{n}.txt", listed("val", all_ids, shots(zero_shot_size)))
    write_list(full / "train.txt", listed("train", all_ids))
    write_list(full / "val.txt", listed("val", all_ids))
    (out / "captions.json").write_text(json.dumps(captions, indent=0))
    meta.write_text(json.dumps(options, indent=2))
    return out


def _caption(class_index: int, rng: np.random.Generator) -> str:
    shape_id, motion_id = divmod(class_index, len(MOTIONS))
    phrases = PHRASES[MOTIONS[motion_id]]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(colour=colour, shape=SHAPES[shape_id], phrase=phrases[rng.integers(len(phrases))])


def load_captions(data_root: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(relative video path, caption), ...]`` of a generated folder (pre-training pairs)."""
    path = Path(data_root) / "captions.json"
    entries = json.loads(path.read_text())
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"video", "caption"} <= entry.keys():
            raise ValueError(f"{path}: entry {i} needs keys 'video' and 'caption'")
        pairs.append((entry["video"], entry["caption"]))
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m msta_fast.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of every video and of the splits")
    parser.add_argument("--size", type=int, default=32, help="frame height and width (even)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video")
    parser.add_argument("--train-per-class", type=int, default=20, help="training videos per class")
    parser.add_argument("--val-per-class", type=int, default=8, help="videos per class in each evaluation list")
    parser.add_argument("--codec", choices=("h264", "vp9"), default="h264", help="H.264 in .mp4 or VP9 in .webm")
    parser.add_argument("--fps", type=int, default=8, help="frame rate written into the files")
    parser.add_argument("--overwrite", action="store_true", help="replace a set generated with other options")
    args = parser.parse_args(argv)
    out = generate(args.out, args.seed, size=args.size, num_frames=args.frames,
                   train_per_class=args.train_per_class, val_per_class=args.val_per_class, codec=args.codec,
                   fps=args.fps, overwrite=args.overwrite)
    print(f"synthetic data set in {out}")


if __name__ == "__main__":
    main()

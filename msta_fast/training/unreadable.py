"""Unreadable videos: every training epoch's and every evaluation's, counted, listed and bounded.

The loaders replace an unreadable video (missing, corrupt, too slow to decode) and mark the item
(``msta_fast.data.items``); this module is what the run does with those marks:

- each epoch's and each evaluation's unreadable videos are appended to the run's ``unreadable_videos.tsv`` (what
  was read, where, and the file, one line per video), counted in ``metrics.jsonl`` and ``results.json``, and said
  in one line on the terminal;
- when more than ``data.max_unreadable`` of the videos (a fraction) could not be read, or all of them, the run
  stops with an error naming them: a list or a data folder that is mostly broken is not trained or scored
  silently on replacements and black clips.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

FILE_NAME = "unreadable_videos.tsv"
_SHOWN = 5  # files named in a message; the file lists them all


class UnreadableVideosError(RuntimeError):
    """Too many videos of a training epoch or an evaluation could not be read."""


def record_unreadable(run_dir: Path | None, stage: str, paths: Sequence[str], total: int, limit: float, *,
                      write: bool = True) -> None:
    """Record the unreadable videos of one epoch or evaluation (``stage``, e.g. ``"train msta/seed1 epoch 3"``)
    and stop when they are too many.

    Args:
        run_dir: the run directory whose ``unreadable_videos.tsv`` gets a line per video (None: not recorded).
        paths: the unreadable videos (each once) out of ``total`` listed.
        limit: ``data.max_unreadable``, the fraction above which the run stops.
        write: whether this process writes and prints (the main rank); every rank raises alike.
    """
    if not paths:
        return
    path_list = sorted(paths)
    where = f"{run_dir / FILE_NAME}" if run_dir is not None else "the log above"
    if write and run_dir is not None:
        with open(run_dir / FILE_NAME, "a", encoding="utf-8") as f:
            if f.tell() == 0:
                f.write("stage\tvideo\n")
            f.writelines(f"{stage}\t{p}\n" for p in path_list)
    shown = ", ".join(path_list[:_SHOWN]) + (f" and {len(path_list) - _SHOWN} more" if len(path_list) > _SHOWN else "")
    fraction = len(path_list) / max(total, 1)
    if len(path_list) >= total or fraction > limit:
        raise UnreadableVideosError(
            f"{stage}: {len(path_list)} of {total} videos ({100 * fraction:.1f}%) could not be read, more than "
            f"data.max_unreadable ({100 * limit:g}%): {shown} (all listed in {where}). Fix or remove them from the "
            f"list, or raise the limit (--set data.max_unreadable=...)")
    if write:
        print(f"{stage}: {len(path_list)} of {total} videos unreadable, replaced ({shown}; listed in {where})",
              file=sys.stderr, flush=True)


def unreadable_summary(method: str, outcomes: dict[str, dict]) -> dict:
    """results.json's ``unreadable`` entries of one method from its jobs' outcomes (``done.json``): the training
    epochs' counts per job and the evaluations that scored unreadable videos on black clips (only those)."""
    training = {f"{method}/{job}": o["unreadable_per_epoch"] for job, o in outcomes.items()
                if any(o.get("unreadable_per_epoch", ()))}
    evaluations = {f"{method}/{job}/{name}": {"unreadable": m["replaced"], "videos": m["num_videos"]}
                   for job, o in outcomes.items() for name, m in o["evals"].items() if m.get("replaced")}
    return {"training": training, "evaluations": evaluations}

"""Run outputs: ``results.json``, a table like the paper's, a plot, and JSON-lines + TensorBoard metrics.

``results.json`` per setting (accuracies in %)::

    b2n:  {"methods": {m: {"base", "novel", "hm", "per_seed": [{"seed", "base", "novel", "hm", "best_epoch"}]}}}
    fs:   {"methods": {m: {"shots": {"2": {"top1", "per_test": {...}}, ...}}}}
    zs:   {"methods": {m: {"targets": {"hmdb": {"mean", "std", "per_split": {...}}, ...}}}}
    full: {"methods": {m: {"top1", "top5", "views"}}}

plus ``setting``, ``dataset``, ``trainable_parameters`` per method, ``unreadable`` (``{"training": {"method/job":
[unreadable videos per epoch]}, "evaluations": {"method/job/list": {"unreadable", "videos"}}}``, only where there
were some; the files are in ``unreadable_videos.tsv``) and ``config`` (the resolved one).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _cell(mean: float, std: float | None = None) -> str:
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def columns(setting: str, entry: dict) -> dict[str, str]:
    """The table cells of one method's results (mean ± std over seeds or splits where there are several)."""
    # A method with a classification head (M2-CLIP) also shows the head's accuracy; the head only knows the
    # training classes, so it has no novel or zero-shot accuracy ("n/a").
    if setting == "b2n":
        spread = len(entry.get("per_seed", ())) > 1
        cells = {name: _cell(entry[key], entry.get(f"{key}_std") if spread else None)
                 for name, key in (("base", "base"), ("novel", "novel"), ("HM", "hm"))}
        if "base_visual_head" in entry:
            cells["base (visual head)"] = f"{entry['base_visual_head']:.1f}"
            cells["novel (visual head)"] = "n/a"
        return cells
    if setting == "fs":
        cells = {f"K={k}": f"{v['top1']:.1f}" for k, v in entry["shots"].items()}
        cells.update({f"K={k} (visual head)": f"{v['visual_head']:.1f}" for k, v in entry["shots"].items()
                      if "visual_head" in v})
        return cells
    if setting == "zs":
        return {t: _cell(v["mean"], v["std"] if len(v["per_split"]) > 1 else None) for t, v in entry["targets"].items()}
    cells = {"top-1": f"{entry['top1']:.1f}"}
    if entry.get("num_classes", 6) > 5:  # with 5 classes or fewer top-5 is 100% by construction
        cells["top-5"] = f"{entry['top5']:.1f}"
    if "visual_head_top1" in entry:
        cells["top-1 (visual head)"] = f"{entry['visual_head_top1']:.1f}"
    return cells


def markdown_table(rows: list[tuple[str, dict[str, str]]]) -> str:
    """rows of (label, {column: cell}) -> a markdown table with the union of the columns."""
    header: list[str] = []
    for _, cells in rows:
        header += [c for c in cells if c not in header]
    lines = ["| method | " + " | ".join(header) + " |", "| --- " * (len(header) + 1) + "|"]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cells.get(c, "") for c in header) + " |")
    return "\n".join(lines)


def results_table(results: dict) -> str:
    """The run's table; a method whose evaluations scored unreadable videos (on black clips) is marked ``*``, with
    a note naming those evaluations."""
    setting = results["setting"]
    replaced = results.get("unreadable", {}).get("evaluations", {})
    rows = []
    for name, entry in results["methods"].items():
        cells = columns(setting, entry)
        if name in results.get("trainable_parameters", {}):
            cells["trainable params"] = f"{results['trainable_parameters'][name]:,}"
        rows.append((name + (" *" if any(k.startswith(name + "/") for k in replaced) else ""), cells))
    title = f"{setting} on {results['dataset']} (top-1 %, {results.get('views', '1 view')})"
    table = title + "\n\n" + markdown_table(rows)
    if replaced:
        listed = ", ".join(f"{k} ({v['unreadable']} of {v['videos']})" for k, v in replaced.items())
        table += (f"\n\n* scored with unreadable videos counted as black clips: {listed}; "
                  "the files are listed in unreadable_videos.tsv")
    return table


def _numbers(cell: str) -> tuple[float, float]:
    """``"71.8 ± 1.6"`` -> (71.8, 1.6); ``"71.8"`` -> (71.8, 0.0)."""
    parts = cell.split("±")
    return float(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0


def plot_results(results_list: list[dict], path: str | os.PathLike, labels: list[str] | None = None) -> Path:
    """One bar group per (run, method) and one bar per table column, with the spread over seeds / splits as
    error bars and the value on each bar; the legend sits beside the axes, never on a bar."""
    path = Path(path)
    groups, series = [], {}
    for i, results in enumerate(results_list):
        if labels:
            prefix = labels[i]
        else:
            prefix = "" if len(results_list) == 1 else f"{results['setting']}/{results['dataset']} "
        for name, entry in results["methods"].items():
            groups.append(f"{prefix}{name}")
            for col, cell in columns(results["setting"], entry).items():
                if cell != "n/a":
                    series.setdefault(col, {})[groups[-1]] = _numbers(cell)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) * max(len(series), 1) ** 0.5 + 2.5), 4.2))
    width = 0.8 / max(len(series), 1)
    for j, (col, values) in enumerate(series.items()):
        xs = [g + j * width for g in range(len(groups))]
        means = [values.get(g, (0.0, 0.0))[0] for g in groups]
        stds = [values.get(g, (0.0, 0.0))[1] for g in groups]
        bars = ax.bar(xs, means, width, yerr=stds if any(stds) else None, capsize=3, label=col)
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], fontsize="x-small", padding=2)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, min(110, max((m + s for v in series.values() for m, s in v.values()), default=100) * 1.15))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(", ".join(sorted({f"{r['setting']} {r['dataset']}" for r in results_list})))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_evaluation(folder: str | os.PathLike, classes: list[str], videos: list[str], scores, labels,
                     replaced=None, top_k: int = 5) -> None:
    """Per-class accuracy, the confusion matrix (CSV and PNG) and per-video predictions (CSV) of one evaluated
    list: ``scores`` (N, C) class probabilities, ``labels`` (N,), ``videos`` their paths, ``replaced`` (N,) bool:
    unreadable videos, scored on a black clip."""
    import csv

    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scores, labels = torch.as_tensor(scores).float(), torch.as_tensor(labels).long()
    C = len(classes)
    predicted = scores.argmax(1)
    confusion = torch.zeros(C, C, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    with open(folder / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "videos", "top1"])
        for c, name in enumerate(classes):
            n = int(confusion[c].sum())
            writer.writerow([name, n, f"{100 * confusion[c, c].item() / n:.2f}" if n else ""])
    with open(folder / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true / predicted", *classes])
        for c, name in enumerate(classes):
            writer.writerow([name, *confusion[c].tolist()])
    k = min(top_k, C)
    top = scores.topk(k, dim=1)
    with open(folder / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "label", "correct", "replaced", *[f"top{i + 1}" for i in range(k)],
                         *[f"p{i + 1}" for i in range(k)]])
        for i, video in enumerate(videos):
            writer.writerow([video, classes[labels[i]], int(predicted[i] == labels[i]),
                             int(bool(replaced[i])) if replaced is not None else 0,
                             *[classes[j] for j in top.indices[i].tolist()],
                             *[f"{p:.4f}" for p in top.values[i].tolist()]])
    size = min(12.0, 2.5 + 0.25 * C)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion.float() / confusion.sum(1, keepdim=True).clamp_min(1)
    ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    if C <= 40:
        ax.set_xticks(range(C), classes, rotation=90, fontsize="x-small")
        ax.set_yticks(range(C), classes, fontsize="x-small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{folder.name}: confusion (rows normalised)")
    fig.tight_layout()
    fig.savefig(folder / "confusion.png", dpi=100)
    plt.close(fig)


def write_results(results: dict, run_dir: str | os.PathLike) -> Path:
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json at {path}")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    for key in ("setting", "dataset", "methods"):
        if key not in results:
            raise ValueError(f"{path}: missing key {key!r}")
    return results


class MetricsLogger:
    """JSON lines (``metrics.jsonl``) and TensorBoard (``tb/``) on the main rank; a no-op elsewhere."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if enabled:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.file = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def log(self, tag: str, step: int, **values) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"tag": tag, "step": step, "time": time.time(), **values}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{tag}/{key}", value, step)

    def close(self) -> None:
        if self.enabled and not self.file.closed:
            self.file.close()
            if self.writer is not None:
                self.writer.close()

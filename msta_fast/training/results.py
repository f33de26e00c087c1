"""Run outputs: ``results.json``, a table like the paper's, a plot, and JSON-lines + TensorBoard metrics.

``results.json`` per setting (accuracies in %)::

    b2n:  {"methods": {m: {"base", "novel", "hm", "per_seed": [{"seed", "base", "novel", "hm", "best_epoch"}]}}}
    fs:   {"methods": {m: {"shots": {"2": {"top1", "per_test": {...}}, ...}}}}
    zs:   {"methods": {m: {"targets": {"hmdb": {"mean", "std", "per_split": {...}}, ...}}}}
    full: {"methods": {m: {"top1", "top5", "views"}}}

plus ``setting``, ``dataset``, ``trainable_parameters`` per method and ``config`` (the resolved one).
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


def columns(setting: str, entry: dict) -> dict[str, str]:
    """The table cells of one method's results."""
    # A method with a classification head (M2-CLIP) also shows the head's accuracy; the head only knows the
    # training classes, so it has no novel or zero-shot accuracy ("n/a").
    if setting == "b2n":
        cells = {"base": f"{entry['base']:.1f}", "novel": f"{entry['novel']:.1f}", "HM": f"{entry['hm']:.1f}"}
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
        return {t: f"{v['mean']:.1f} ± {v['std']:.1f}" for t, v in entry["targets"].items()}
    cells = {"top-1": f"{entry['top1']:.1f}", "top-5": f"{entry['top5']:.1f}"}
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
    setting = results["setting"]
    rows = []
    for name, entry in results["methods"].items():
        cells = columns(setting, entry)
        if name in results.get("trainable_parameters", {}):
            cells["trainable params"] = f"{results['trainable_parameters'][name]:,}"
        rows.append((name, cells))
    title = f"{setting} on {results['dataset']} (top-1 %, {results.get('views', '1 view')})"
    return title + "\n\n" + markdown_table(rows)


def plot_results(results_list: list[dict], path: str | os.PathLike, labels: list[str] | None = None) -> Path:
    """One bar group per (run, method) and one bar per table column; numeric part of each cell."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4))
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
                    series.setdefault(col, {})[groups[-1]] = float(cell.split()[0])
    width = 0.8 / max(len(series), 1)
    for j, (col, values) in enumerate(series.items()):
        xs = [g + j * width for g in range(len(groups))]
        ax.bar(xs, [values.get(g, 0.0) for g in groups], width, label=col)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize="small")
    ax.set_title(", ".join(sorted({f"{r['setting']} {r['dataset']}" for r in results_list})))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()

"""Merge the results of several runs into one markdown table and one figure.

    python recipes/report.py runs/b2n_synthetic runs/b2n_synthetic_nocc --labels "MSTA,MSTA w/o L_CC" \\
        --out report.md --figure report.png

Runs of the same setting share a table; each setting gets its own table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from msta_fast.training.results import columns, markdown_table, plot_results, read_results


def merge(runs: list[dict], labels: list[str]) -> str:
    """Markdown: one section per setting, one row per (run, method)."""
    sections = []
    for setting in dict.fromkeys(r["setting"] for r in runs):
        rows = []
        for results, label in zip(runs, labels, strict=True):
            if results["setting"] != setting:
                continue
            for method, entry in results["methods"].items():
                cells = columns(setting, entry)
                params = results.get("trainable_parameters", {}).get(method)
                if params is not None:
                    cells["trainable params"] = f"{params:,}"
                rows.append((f"{label} {method}".strip(), cells))
        datasets = ", ".join(dict.fromkeys(r["dataset"] for r in runs if r["setting"] == setting))
        sections.append(f"### {setting} ({datasets}), top-1 %\n\n" + markdown_table(rows))
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (or results.json files)")
    parser.add_argument("--labels", default=None, help="comma-separated label per run (default: folder names)")
    parser.add_argument("--out", default=None, help="write the markdown here (default: print only)")
    parser.add_argument("--figure", default=None, help="write the figure here (.png, .pdf, .svg)")
    args = parser.parse_args(argv)
    runs = [read_results(r) for r in args.runs]
    labels = args.labels.split(",") if args.labels else [Path(r).name if Path(r).is_dir() else Path(r).parent.name
                                                         for r in args.runs]
    if len(labels) != len(runs):
        parser.error(f"--labels has {len(labels)} entries for {len(runs)} runs")
    text = merge(runs, labels)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.figure:
        plot_results(runs, args.figure, labels=[f"{label} " for label in labels])
    return text


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

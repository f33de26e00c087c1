"""The device check's one summary file: ``summary.md`` in the run's results folder, from ``steps.tsv`` (each step's
status, written by ``device_check.sh``) and the steps' ``*.jsonl`` rows. Reads what is there: a step that failed or
was cut short by its time limit shows what it recorded before."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

STATUS_MARK = {"ok": "ok", "failed": "FAILED", "timeout": "TIMEOUT", "skipped": "skipped"}


def read_rows(results: Path, step: str) -> list[dict]:
    path = results / f"{step}.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short when the step was killed
            continue
    return rows


def read_steps(results: Path) -> list[dict]:
    path = results / "steps.tsv"
    keys = ("step", "status", "seconds", "limit", "note")
    if not path.is_file():
        return []
    return [dict(zip(keys, line.split("\t"), strict=False)) for line in path.read_text().splitlines() if line.strip()]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return ""
    return str(value).replace("|", "/").replace("\n", " ")


def table(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in ("step", "kind") and k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
    return lines


def markdown(results: Path) -> str:
    steps = read_steps(results)
    rows = {s["step"]: read_rows(results, s["step"]) for s in steps}
    env = next((r for r in rows.get("probe", []) if r.get("kind") == "environment"), {})
    dry = (results / "DRY_RUN").exists()
    title = "Device check (dry run: tiny shapes on the CPU, no measurement)" if dry else "Device check"
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in env.items() if k not in ("step", "kind")] or ["- environment: not probed"]
    lines += ["", "| # | step | status | seconds | limit s | result |", "| --- | --- | --- | --- | --- | --- |"]
    for n, s in enumerate(steps):
        heads = [r["text"] for r in rows[s["step"]] if r.get("kind") == "headline"]
        skips = [r["reason"] for r in rows[s["step"]] if r.get("kind") == "skipped"]
        result = heads[-1] if heads else skips[-1] if skips else s.get("note", "")
        lines.append(f"| {n} | {s['step']} | {STATUS_MARK.get(s['status'], s['status'])} | {s.get('seconds', '')} | "
                     f"{s.get('limit', '')} | {_cell(result)} |")
    for s in steps:
        body = [r for r in rows[s["step"]] if r.get("kind") not in ("headline", "environment")]
        if not body:
            continue
        lines += ["", f"## {s['step']}", ""]
        for kind in dict.fromkeys(r.get("kind") for r in body):
            lines += table([r for r in body if r.get("kind") == kind]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    text = markdown(args.results)
    (args.results / "summary.md").write_text(text)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "device-check"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.results / "summary.md", out / "summary.md")
    print(text)


if __name__ == "__main__":
    main()

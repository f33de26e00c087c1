"""Step 7, if NVIDIA DALI was staged: the GPU loaders of ``benchmarks/bench_decoding.py`` (``test_gpu_loader``: DALI
on NVDEC against the PyTorch loader with 16 decord workers, and torchcodec on NVDEC where installed), run by pytest
with its results collected into this run's folder. Writing the benchmark's videos needs PyAV and the decord
provider decord (``benchmarks/stage_wheels.sh --dali`` stages all three). The dry run collects the same tests
(they skip without a GPU): the benchmark's imports and the hand-over of its results are checked. Pytest runs in
this process, so msta_fast imports as the other steps' does (open_clip stubbed when absent)."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile

from common import BENCHMARKS, REPO, Step, parse_args


class Outcomes:
    """A pytest plugin counting test outcomes."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome == "skipped":
            self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    step = Step("decoding", args)
    has = {name: importlib.util.find_spec(module) is not None
           for name, module in (("dali", "nvidia.dali"), ("decord", "decord"), ("pyav", "av"))}
    step.record(kind="installed", **has)
    if not step.dry and not has["dali"]:
        step.skip("NVIDIA DALI is not installed (stage it: benchmarks/stage_wheels.sh --dali)")
    out = args.results / "decoding-pytest"
    os.environ["MSTA_FAST_BENCH_RESULTS"] = str(out)
    os.environ.setdefault("MSTA_FAST_BENCH_VIDEOS", os.path.join(tempfile.gettempdir(), "msta_fast_bench_videos"))
    # In this process: msta_fast imports as this step set it up (without open_clip on the GPU machine).
    import pytest

    outcomes = Outcomes()
    code = pytest.main([str(BENCHMARKS / "bench_decoding.py"), "-k", "test_gpu_loader", "--benchmark-only", "-q",
                        "-rs", "-p", "no:cacheprovider", "--rootdir", str(REPO)], plugins=[outcomes])
    rates = {}
    for path in sorted(out.glob("decoding_gpu-*.json")):
        for row in json.loads(path.read_text())["results"]:
            step.record(kind="loader", **{k: v for k, v in row.items() if k != "kind"})
            rates[row["provider"]] = row["clips_per_s"]
    if code != 0:
        step.headline(f"pytest exit {int(code)}; outcomes {outcomes.counts}")
        return 1
    if step.dry:
        skipped = outcomes.counts.get("skipped", 0)
        step.headline(f"{skipped} GPU loader benchmarks collected and skipped (they need NVDEC)")
        return 0 if skipped else 1
    step.headline(", ".join(f"{k} {v:.0f} clips/s" for k, v in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Results tables: a classification head's accuracy is shown for training classes and marked n/a elsewhere."""

from msta_fast.training.jobs import Job, summarize
from msta_fast.training.results import plot_results, results_table


def _b2n_job(seed):
    return Job(f"seed{seed}", None, None, ["a", "b"], "synthetic", "_base", {}, seed=seed)


def test_b2n_table_shows_the_visual_head_on_base_only(tmp_path):
    jobs = [_b2n_job(1), _b2n_job(2)]
    outcomes = {
        "seed1": {"evals": {"base": {"top1": 60.0, "visual_head": {"top1": 70.0}}, "novel": {"top1": 40.0}}},
        "seed2": {"evals": {"base": {"top1": 80.0, "visual_head": {"top1": 90.0}}, "novel": {"top1": 60.0}}},
    }
    entry = summarize("b2n", jobs, outcomes)
    assert entry["base"] == 70.0 and entry["novel"] == 50.0 and entry["base_visual_head"] == 80.0
    plain = summarize("b2n", jobs, {k: {"evals": {n: {"top1": m["top1"]} for n, m in v["evals"].items()}}
                                    for k, v in outcomes.items()})
    assert "base_visual_head" not in plain
    results = {"setting": "b2n", "dataset": "synthetic", "methods": {"m2clip": entry, "zero": plain}}
    table = results_table(results)
    header, _, m2clip_row, zero_row = table.splitlines()[2:6]
    assert "base (visual head)" in header and "novel (visual head)" in header
    assert m2clip_row.split("|")[5:7] == [" 80.0 ", " n/a "]
    assert zero_row.split("|")[5:7] == ["  ", "  "]
    assert plot_results([results], tmp_path / "plot.png").stat().st_size > 0

"""Results a person reads: tables with mean ± std, a classification head's accuracy shown for training classes and
marked n/a elsewhere, a plot with error bars, per-class accuracy, confusion matrices and per-video predictions."""

import csv
import math

import torch

from msta_fast.training.jobs import Job, summarize
from msta_fast.training.results import plot_results, results_table, write_evaluation


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
    assert m2clip_row.split("|")[1:4] == [" m2clip ", " 70.0 ± 14.1 ", " 50.0 ± 14.1 "]  # mean ± std over seeds
    assert m2clip_row.split("|")[5:7] == [" 80.0 ", " n/a "]
    assert zero_row.split("|")[5:7] == ["  ", "  "]
    assert plot_results([results], tmp_path / "plot.png").stat().st_size > 0


def test_top5_is_left_out_with_five_classes_or_fewer():
    def job(classes):
        from msta_fast.data import EvalSet

        return Job("full", None, None, classes, "x", "", {"val": (EvalSet([("a.mp4", 0)], classes), None)})

    outcomes = {"full": {"evals": {"val": {"top1": 50.0, "top5": 100.0}}}}
    few = summarize("full", [job(["a", "b", "c"])], outcomes)
    many = summarize("full", [job([str(i) for i in range(8)])], outcomes)
    assert "top-5" not in results_table({"setting": "full", "dataset": "x", "methods": {"msta": few}})
    assert "top-5" in results_table({"setting": "full", "dataset": "x", "methods": {"msta": many}})


def test_per_class_accuracy_confusion_and_predictions(tmp_path):
    classes = ["run", "jump", "swim"]
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 1, 1, 2])
    write_evaluation(tmp_path / "val", classes, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], scores, labels,
                     torch.tensor([False, False, True, False]))
    per_class = list(csv.DictReader(open(tmp_path / "val" / "per_class.csv")))
    assert [(r["class"], r["videos"], r["top1"]) for r in per_class] == [
        ("run", "1", "100.00"), ("jump", "2", "50.00"), ("swim", "1", "100.00")]
    confusion = list(csv.reader(open(tmp_path / "val" / "confusion.csv")))
    assert confusion[0] == ["true / predicted", *classes] and confusion[2] == ["jump", "1", "1", "0"]
    predictions = list(csv.DictReader(open(tmp_path / "val" / "predictions.csv")))
    assert predictions[2]["video"] == "c.mp4" and predictions[2]["correct"] == "0" and predictions[2]["replaced"] == "1"
    assert predictions[2]["top1"] == "run" and math.isclose(float(predictions[2]["p1"]), 0.6)
    assert "top4" not in predictions[0]  # three classes: top-3 at most
    assert (tmp_path / "val" / "confusion.png").stat().st_size > 0

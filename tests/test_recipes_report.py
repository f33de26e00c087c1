"""recipes/eval.py re-scores a run's saved adapters exactly as train.py did; recipes/report.py merges runs."""

import json

from test_recipes_end_to_end import load_recipe, tiny_args


def test_eval_and_report_of_a_run(tmp_path_factory, tmp_path):
    cache = tmp_path_factory.getbasetemp() / "recipes_cache"
    run, nocc = tmp_path / "run", tmp_path / "nocc"
    train = load_recipe("train").main
    train(["--setting", "b2n", *tiny_args(cache, run)])
    train(["--setting", "b2n", *tiny_args(cache, nocc), "--methods", "msta", "--no-consistency"])
    assert json.loads((nocc / "results.json").read_text())["config"]["loss"]["msta"]["consistency"] is False

    rescored = load_recipe("eval").main(["--run", str(run), "--cache-dir", str(cache)])
    for method in ("zero", "msta"):
        done = json.loads((run / method / "seed1" / "done.json").read_text())["evals"]
        assert {k: v["top1"] for k, v in rescored[f"{method}/seed1"].items()} == {k: v["top1"] for k, v in done.items()}

    out, figure = tmp_path / "report.md", tmp_path / "report.png"
    text = load_recipe("report").main([str(run), str(nocc), "--labels", "MSTA,no L_CC", "--out", str(out),
                                       "--figure", str(figure)])
    assert out.read_text() == text and figure.stat().st_size > 0
    assert "| MSTA zero |" in text and "| MSTA msta |" in text and "| no L_CC msta |" in text
    assert "### b2n (synthetic)" in text and "HM" in text

"""recipes/train.py against what loses work or lies: a kill at every save point of an epoch resumes to the
uninterrupted result, exploding weights stop the run before they are checkpointed or selected, a resume with
another config is refused (or applied when asked), damaged resume files name themselves."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_recipes_end_to_end import REPO, kill_at, load_recipe, tiny_args

# 24 videos, micro-batch 4, global batch 8: 3 optimizer steps per epoch, 2 epochs, a checkpoint every step (but
# the last of an epoch, whose checkpoint comes after the selection evaluation). Calls, in order:
#   save_checkpoint: 1 step 1, 2 step 2, 3 end of epoch 0, 4 step 4, 5 step 5, 6 end of epoch 1
#   evaluate_lists:  1 selection of epoch 0, 2 selection of epoch 1, 3 the final evaluation
EXTRA = ["--methods", "msta", "--set", "optim.epochs=2", "--set", "optim.micro_batch_size=4",
         "--set", "checkpointing.every_steps=1"]
TRAIN = str(REPO / "recipes" / "train.py")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "recipes_cache"


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    load_recipe("train").main(["--setting", "b2n", *tiny_args(cache, out), *EXTRA])
    return out


def same_run(a, b):
    x = load_file(a / "msta" / "seed1" / "adapters.safetensors")
    y = load_file(b / "msta" / "seed1" / "adapters.safetensors")
    assert x.keys() == y.keys() and len(x) > 0
    for key in x:
        torch.testing.assert_close(y[key], x[key], rtol=1e-5, atol=1e-6, msg=key)
    done_a = json.loads((a / "msta" / "seed1" / "done.json").read_text())
    done_b = json.loads((b / "msta" / "seed1" / "done.json").read_text())
    assert done_b["best_epoch"] == done_a["best_epoch"]
    assert json.loads((b / "results.json").read_text())["methods"] == json.loads((a / "results.json").read_text())[
        "methods"]


@pytest.mark.parametrize("point", [
    "msta_fast.training.checkpoint:save_checkpoint:after:1",    # an interval checkpoint, mid epoch 0
    "msta_fast.training.evaluation:evaluate_lists:after:1",     # after the selection, before the epoch-end save
    "msta_fast.training.checkpoint:save_checkpoint:after:3",    # right after the epoch-end checkpoint
    "msta_fast.training.evaluation:evaluate_lists:before:2",    # the last step of epoch 1 done, not saved
    "msta_fast.training.evaluation:evaluate_lists:before:3",    # training done, before the final evaluation
    "msta_fast.training.jobs:summarize:before:1",               # the job's done.json written, no results yet
])
def test_a_kill_at_any_save_point_resumes_to_the_uninterrupted_result(cache, uninterrupted, tmp_path, point):
    killed = tmp_path / "killed"
    kill_at(point, [TRAIN, "--setting", "b2n", *tiny_args(cache, killed), *EXTRA])
    assert not (killed / "results.json").exists()
    load_recipe("train").main(["--setting", "b2n", *tiny_args(cache, killed), *EXTRA, "--resume"])
    same_run(uninterrupted, killed)
    checkpoints = killed / "msta" / "seed1" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if p.is_dir()] == [(checkpoints / "LATEST").read_text()]


def test_exploding_weights_stop_the_run_before_any_checkpoint_or_selection_of_them(cache, tmp_path):
    """A learning rate that blows the weights up while the loss stays finite: the run stops at that step, and
    neither the checkpoint nor the best adapters hold the exploded weights."""
    out = tmp_path / "run"
    args = ["--setting", "b2n", *tiny_args(cache, out), *EXTRA]
    kill_at("msta_fast.training.checkpoint:save_checkpoint:after:3", [TRAIN, *args])  # epoch 0 saved and selected
    with pytest.raises(FloatingPointError, match=r"a weight of magnitude .*optim.max_weight.* --resume "
                                                 r"--allow-changes --set optim.lr="):
        load_recipe("train").main([*args, "--resume", "--allow-changes", "--set", "optim.lr=1.0e6"])
    assert (out / "msta" / "seed1" / "checkpoints" / "LATEST").read_text() == "step000000003"
    checkpoints = out / "msta" / "seed1" / "checkpoints"
    for path in [checkpoints / (checkpoints / "LATEST").read_text() / "adapters.safetensors",
                 out / "msta" / "seed1" / "best_adapters.safetensors"]:
        assert all(t.abs().max() < 1e3 for t in load_file(path).values()), path


def test_resume_with_another_config_is_refused_or_applied(cache, tmp_path):
    out = tmp_path / "run"
    args = ["--setting", "b2n", *tiny_args(cache, out), *EXTRA]
    train = load_recipe("train").main
    kill_at("msta_fast.training.checkpoint:save_checkpoint:after:2", [TRAIN, *args])
    with pytest.raises(Exception, match=r"differs from the run's .*optim.lr: 0.005 -> 0.001.*--allow-changes"):
        train([*args, "--resume", "--set", "optim.lr=1.0e-3"])
    train([*args, "--resume", "--allow-changes", "--set", "optim.lr=1.0e-3"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    changes = [line for line in lines if line["tag"] == "resume/changes"]
    assert changes and changes[-1]["changes"] == [{"key": "optim.lr", "saved": 5e-3, "now": 1e-3}]
    # the new lr is the one used after the resume: the steps after it run at the lower rate
    steps = {line["step"]: line["lr"] for line in lines if line["tag"].startswith("train/")}
    assert steps[3] < 1e-3 * 1.0001
    assert "lr: 0.001" in (out / "config.yaml").read_text()


def test_damaged_resume_files_name_themselves(cache, tmp_path):
    out = tmp_path / "run"
    args = ["--setting", "b2n", *tiny_args(cache, out), *EXTRA]
    train = load_recipe("train").main
    train(args)
    done = out / "msta" / "seed1" / "done.json"
    done.write_text('{"evals": {"base": ')  # what a non-atomic write killed half-way would leave
    with pytest.raises(ValueError, match="done.json is unreadable .* delete it"):
        train([*args, "--resume"])
    (out / "results.json").unlink()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(Exception, match="is a file, not a run directory"):
        train(["--setting", "b2n", *tiny_args(cache, file), *EXTRA])

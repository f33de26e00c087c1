"""recipes/train.py end to end on a tiny synthetic run: every setting, a corrupt video, and --resume after a
hard kill mid-epoch giving the same adapters as an uninterrupted run."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msta_fast.training.unreadable import UnreadableVideosError

REPO = Path(__file__).resolve().parents[1]


def load_recipe(name: str):
    """recipes/<name>.py as a module (registered, as an import would, so that its dataclasses resolve)."""
    if f"recipe_{name}" in sys.modules:
        return sys.modules[f"recipe_{name}"]
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_args(cache: Path, out: Path, *extra: str) -> list[str]:
    """A run of seconds: small data set, one pre-training epoch, 4 frames, 1 epoch, 24 videos per list."""
    sets = ["synthetic.train_per_class=16", "synthetic.val_per_class=2", "synthetic.frames=8",
            "model.num_frames=4", "pretrain.epochs=1", "pretrain.batch_size=64", "optim.epochs=1",
            "debug.max_videos=24", "data.num_workers=0", "eval.batch_size=32", "protocol.seeds=[1]",
            "protocol.shots=[2]", "protocol.splits=[1]", "optim.micro_batch_size=8", "optim.batch_size=8"]
    args = ["--cache-dir", str(cache), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args + list(extra)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "recipes_cache"  # shared by the recipe test files of a session


@pytest.fixture(scope="module")
def train():
    return load_recipe("train").main


@pytest.mark.parametrize("setting", ["b2n", "fs", "zs", "full"])
def test_each_setting_end_to_end(setting, train, cache, tmp_path):
    out = tmp_path / setting
    results = train(["--setting", setting, *tiny_args(cache, out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["setting"] == setting and set(saved["methods"]) == {"zero", "msta"}
    assert (out / "results.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    assert saved["trainable_parameters"]["zero"] == 0 and saved["trainable_parameters"]["msta"] > 0
    entry = saved["methods"]["msta"]
    if setting == "b2n":
        assert 0 <= entry["base"] <= 100 and 0 <= entry["novel"] <= 100
        assert entry["per_seed"][0]["seed"] == 1 and entry["per_seed"][0]["best_epoch"] == 0
    elif setting == "fs":
        assert set(entry["shots"]) == {"2"}
    elif setting == "zs":
        assert set(entry["targets"]["synthetic"]["per_split"]) == {"val1"}
    else:
        assert 0 <= entry["top1"] <= entry["top5"] <= 100
        assert saved["views"] == "4 clips x 3 crops"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if line["tag"].startswith("train/msta")]
    assert steps and all("loss" in line for line in steps)
    epochs = [line for line in lines if line["tag"].startswith("epoch/msta")]  # the data-stall figure
    assert epochs and all(0 <= e["data_wait_fraction"] <= 1 and e["clips_per_s"] > 0 for e in epochs)
    job = "seed1" if setting == "b2n" else "k2" if setting == "fs" else "train" if setting == "zs" else "full"
    evals = out / "msta" / job / "evals"
    for name in ("per_class.csv", "confusion.csv", "confusion.png", "predictions.csv"):
        assert list(evals.rglob(name)), name
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    assert results["methods"]["msta"] == saved["methods"]["msta"]


def data_with_unreadable_videos(cache: Path, tmp_path: Path, lines: dict[str, int]) -> Path:
    """A copy (by symbolic links) of the cached synthetic data set in which the videos of the first ``n`` lines of
    each named list (``{list file: n}``) are replaced by files that are not videos."""
    data = next((cache / "synthetic").iterdir())
    copy = tmp_path / "data"
    copy.mkdir()
    for entry in data.iterdir():
        (copy / entry.name).symlink_to(entry)
    (copy / "videos").unlink()
    (copy / "videos").mkdir()
    for pool in ("train", "val"):
        (copy / "videos" / pool).mkdir()
        for video in (data / "videos" / pool).iterdir():
            (copy / "videos" / pool / video.name).symlink_to(video)
    splits = data / "datasets_splits/base2novel_splits/synthetic_splits"
    for name, n in lines.items():
        for line in (splits / name).read_text().splitlines()[:n]:
            target = copy / line.split()[0]
            target.unlink(missing_ok=True)
            target.write_bytes(b"this is not a video")
    return copy


def test_unreadable_videos_are_replaced_counted_and_listed(train, cache, tmp_path, caplog):
    train(["--setting", "b2n", *tiny_args(cache, tmp_path / "warmup"), "--methods", "zero"])  # the cache exists
    copy = data_with_unreadable_videos(cache, tmp_path, {"fs_base_s1_train.txt": 1, "base_val.txt": 1})
    checkpoint = next((cache / "pretrained").rglob("viclip.pth"))
    out = tmp_path / "run"
    results = train(["--setting", "b2n", "--dataset", "synthetic", *tiny_args(cache, out), "--data-root", str(copy),
                     "--checkpoint", str(checkpoint), "--set", "data.max_unreadable=0.2",
                     "--set", "optim.epochs=2"])
    done = json.loads((out / "msta" / "seed1" / "done.json").read_text())
    assert done["evals"]["base"]["replaced"] == 1 and done["evals"]["novel"]["replaced"] == 0
    assert done["unreadable_per_epoch"] == [1, 1]  # every epoch's, not only the first (warnings.warn shows once)
    assert 0 <= results["methods"]["msta"]["base"] <= 100
    # listed in full: both epochs of training, every selection and final evaluation of base, for both methods
    listed = [line.split("\t") for line in (out / "unreadable_videos.tsv").read_text().splitlines()[1:]]
    stages = [stage for stage, _ in listed]
    assert "train msta/seed1 epoch 0" in stages and "train msta/seed1 epoch 1" in stages
    assert "eval msta/seed1/base" in stages and "eval zero/seed1/base" in stages
    assert stages.count("select msta/seed1/base") == 2
    assert {Path(video).parent.name for _, video in listed} == {"train", "val"}
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["unreadable_videos"] for e in epochs if e["tag"] == "epoch/msta/seed1"] == [1, 1]
    saved = json.loads((out / "results.json").read_text())
    assert saved["unreadable"]["training"] == {"msta/seed1": [1, 1]}
    assert saved["unreadable"]["evaluations"]["msta/seed1/base"]["unreadable"] == 1
    assert "| msta * |" in load_recipe("train").results_table(saved)
    assert any("skipping unreadable video" in r.getMessage() for r in caplog.records)


def test_too_many_unreadable_videos_stop_the_run_naming_them(train, cache, tmp_path):
    train(["--setting", "b2n", *tiny_args(cache, tmp_path / "warmup"), "--methods", "zero"])
    checkpoint = next((cache / "pretrained").rglob("viclip.pth"))
    # 1 of the 24 training videos (debug.max_videos) is above the default limit (2%)
    copy = data_with_unreadable_videos(cache, tmp_path, {"fs_base_s1_train.txt": 1})
    with pytest.raises(UnreadableVideosError, match=r"train msta/seed1 epoch 0: 1 of 24 videos .*max_unreadable"):
        train(["--setting", "b2n", "--dataset", "synthetic", *tiny_args(cache, tmp_path / "run"), "--data-root",
               str(copy), "--checkpoint", str(checkpoint), "--methods", "msta"])
    # an evaluation whose every video is unreadable never gives an accuracy, whatever the limit
    other = tmp_path / "other"
    other.mkdir()
    copy = data_with_unreadable_videos(cache, other, {"base_val.txt": 1000, "novel_val.txt": 1000})
    with pytest.raises(UnreadableVideosError, match=r"eval zero/seed1/base: (\d+) of \1 videos"):
        train(["--setting", "b2n", "--dataset", "synthetic", *tiny_args(cache, tmp_path / "run2"), "--data-root",
               str(copy), "--checkpoint", str(checkpoint), "--methods", "zero", "--set", "data.max_unreadable=1"])


def kill_at(point: str, cmd: list[str]) -> None:
    """Run ``cmd`` under the kill harness, wait until it stops at ``point`` and kill it from outside (SIGKILL)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "kill_harness.py"), *cmd],
                            env={**os.environ, "KILL_AT": point}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the run ended before {point}: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    os.waitpid(proc.pid, 0)
    proc.stderr.close()


@pytest.mark.parametrize("method, options", [
    ("msta", []),
    # M2-CLIP: its heads, decoder and MLM masks (from the items' seeds) resume too; head dropout from the saved RNG
    ("m2clip", ["--set", "adapter.m2clip.dim=16"]),
])
def test_resume_after_kill_matches_uninterrupted_run(train, cache, tmp_path, method, options):
    # 24 videos, micro-batch 4, global batch 8: 3 optimizer steps per epoch, 2 epochs; saves at steps 1, 2, at the
    # end of epoch 0 (step 3, after the selection), 4, 5 and at the end of epoch 1. The kill is right after the
    # 4th save: step 4, in the middle of the second epoch.
    extra = ["--methods", method, "--set", "optim.epochs=2", "--set", "optim.micro_batch_size=4",
             "--set", "checkpointing.every_steps=1", *options]
    train(["--setting", "b2n", *tiny_args(cache, tmp_path / "warmup"), "--methods", "zero"])  # the cache exists
    reference = tmp_path / "uninterrupted"
    train(["--setting", "b2n", *tiny_args(cache, reference), *extra])
    killed = tmp_path / "killed"
    kill_at("msta_fast.training.checkpoint:save_checkpoint:after:4",
            [str(REPO / "recipes" / "train.py"), "--setting", "b2n", *tiny_args(cache, killed), *extra])
    checkpoints = killed / method / "seed1" / "checkpoints"
    assert (checkpoints / "LATEST").read_text() == "step000000004"
    assert not (killed / "results.json").exists()
    train(["--setting", "b2n", *tiny_args(cache, killed), *extra, "--resume"])
    a = load_file(reference / method / "seed1" / "adapters.safetensors")
    b = load_file(killed / method / "seed1" / "adapters.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    ref = json.loads((reference / "results.json").read_text())["methods"][method]
    res = json.loads((killed / "results.json").read_text())["methods"][method]
    assert res == ref


def test_yaml_values_win_over_the_flag_defaults_and_print_config(tmp_path, capsys):
    """A YAML's setting and dataset are the run's unless a flag is given; --print-config shows every key."""
    config = tmp_path / "my.yaml"
    config.write_text((REPO / "recipes/configs/full/synthetic.yaml").read_text())
    train = load_recipe("train")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(config), "--set", "optim.lr=2e-3", "--print-config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "setting: full" in printed and "lr: 0.002" in printed and "max_weight:" in printed
    assert train.parse_args(["--config", str(config)])["setting"] == "full"
    assert train.parse_args(["--config", str(config), "--setting", "b2n"])["setting"] == "b2n"


def test_help_answers_without_importing_the_library():
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "recipes" / "train.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--data-root" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "msta_fast")}  # -X importtime lists them all


def test_a_failed_run_leaves_no_empty_run_folder(cache, tmp_path, train):
    out = tmp_path / "failed"
    with pytest.raises(Exception, match="needs --checkpoint"):
        train(["--setting", "b2n", "--dataset", "hmdb", "--out", str(out)])
    assert not out.exists()

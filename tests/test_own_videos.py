"""Your own videos and classes, as a new user would bring them: a folder of class folders (mixed containers, any
depth), every setting for a short run, what the run records, prediction on files and folders with exactly the
evaluation pipeline, and the no-descriptions path."""

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_recipes_end_to_end import REPO, load_recipe

import msta_fast
from msta_fast.data import EvalSet
from msta_fast.data.encode import write_video
from msta_fast.data.folder import holdout, scan_folder
from msta_fast.data.lists import ProtocolFileError, read_list
from msta_fast.training.config import load_yaml
from msta_fast.training.distributed import DistInfo
from msta_fast.training.loaders import eval_loader
from msta_fast.training.predict import VideoClassifier

CLASSES = ("sliding_left", "sliding_right", "growing")
CONTAINERS = (("h264", ".mp4"), ("vp9", ".webm"), ("mjpeg", ".avi"))


def clip(kind: int, seed: int) -> np.ndarray:
    """16 frames of 48 x 64: a square sliding left or right, or growing, on noise."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, (16, 48, 64, 3)).astype(np.uint8)
    for t in range(16):
        if kind < 2:
            x = int(t / 15 * 50) if kind == 1 else int((1 - t / 15) * 50)
            frames[t, 18:30, x:x + 12] = 230
        else:
            s = 3 + t
            frames[t, 24 - s // 2:24 + (s + 1) // 2, 32 - s // 2:32 + (s + 1) // 2] = 230
    return frames


def make_folder(root, per_class=6, split_folders=False):
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            codec, suffix = CONTAINERS[i % 3]
            pool = ("train" if i < per_class - 2 else "val") if split_folders else ""
            folder = root / pool / name / ("day2" if i % 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / f"clip{i}{suffix}", clip(c, 100 * c + i), codec=codec)
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("my_actions"))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A small random ViCLIP saved with its architecture, as the user's --checkpoint."""
    torch.manual_seed(0)
    model = msta_fast.build_viclip("viclip-tiny", num_frames=4, vision_heads=2, text_heads=2)
    path = tmp_path_factory.mktemp("backbone") / "viclip.pth"
    torch.save({"model": model.state_dict(), "architecture": dataclasses.asdict(model.config)}, path)
    return path


def short(backbone, out, *extra):
    sets = ["model.num_frames=4", "model.image_size=32", "adapter.msta.dim=16", "adapter.msta.start_layer=1",
            "optim.epochs=1",
            "optim.batch_size=4", "optim.micro_batch_size=4", "data.num_workers=0", "eval.batch_size=16",
            "protocol.seeds=[1]", "protocol.shots=[2]"]
    args = ["--checkpoint", str(backbone), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    return args + list(extra)


def test_the_folder_is_read_as_a_data_set(tmp_path):
    root = make_folder(tmp_path / "one")
    data = scan_folder(root)
    assert data.name == "one" and data.classes == ["growing", "sliding left", "sliding right"]
    assert sorted(len([s for s in data.splits["train"] if s[1] == c]) for c in range(3)) == [5, 5, 5]
    assert all(path.split("/")[0] in CLASSES for path, _ in data.splits["train"] + data.splits["val"])
    assert {path.rsplit(".", 1)[1] for path, _ in data.splits["train"]} == {"mp4", "webm", "avi"}
    assert any("/day2/" in path for path, _ in data.splits["val"] + data.splits["train"])
    assert scan_folder(root).splits == data.splits and scan_folder(root, seed=5).splits != data.splits
    (root / "classes.txt").write_text("growing\tgetting bigger\nsliding_left\nsliding_right,to the right\n")
    named = scan_folder(root)
    assert named.classes == ["getting bigger", "sliding left", "to the right"]
    (root / "classes.txt").write_text("growing\nsliding\n")
    with pytest.raises(ProtocolFileError, match=r"classes.txt:2: no class folder 'sliding'"):
        scan_folder(root)
    presplit = scan_folder(make_folder(tmp_path / "two", split_folders=True))
    assert sorted(presplit.splits) == ["train", "val"] and len(presplit.splits["val"]) == 6


def test_holdout_is_stratified():
    samples = [(f"{c}/{i}.mp4", c) for c in range(3) for i in range(10)]
    split = holdout(samples, 3, 0.2, seed=1)
    assert [sum(1 for _, y in split["val"] if y == c) for c in range(3)] == [2, 2, 2]
    assert not set(split["val"]) & set(split["train"]) and len(split["train"]) == 24


@pytest.mark.parametrize("setting", ["full", "fs", "b2n", "zs"])
def test_every_setting_on_your_folder(videos, backbone, tmp_path, setting):
    out = tmp_path / setting
    methods = ["--methods", "zero"] if setting == "zs" else []
    results = load_recipe("train").main(["--setting", setting, "--data-root", str(videos),
                                         *short(backbone, out, *methods)])
    assert results["dataset"] == videos.name  # the tables say the folder's name
    assert (out / "classes.txt").read_text().splitlines() == sorted(c.replace("_", " ") for c in CLASSES)
    train, val = read_list(out / "splits" / "train.txt"), read_list(out / "splits" / "val.txt")
    assert len(train) + len(val) == 18 and not {p for p, _ in train} & {p for p, _ in val}
    assert all((videos / path).is_file() for path, _ in train + val)  # relative to the data folder
    assert not any(p.name == "descriptions" for p in videos.iterdir())  # nothing written into your folder
    assert json.loads((out / "run.json").read_text())["backbone"] == str(backbone.resolve())


def test_yaml_setting_is_kept_and_the_builtin_backbone_is_announced(videos, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "train.py"), "--data-root", str(videos),
                           "--setting", "full", "--print-config"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "dataset: folder" in proc.stdout and "name: viclip-tiny" in proc.stdout
    assert "no --checkpoint" in proc.stderr and "real accuracy" in proc.stderr


@pytest.fixture(scope="module")
def trained_run(videos, backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    load_recipe("train").main(["--setting", "full", "--data-root", str(videos), *short(backbone, out, "--set",
                                                                                       "optim.epochs=2")])
    return out


def test_predict_reproduces_the_run_and_uses_the_evaluation_tensors(trained_run, videos):
    classifier = VideoClassifier.from_run(trained_run)
    assert classifier.classes == sorted(c.replace("_", " ") for c in CLASSES)
    assert (classifier.num_clips, classifier.num_crops) == (4, 3)  # the full setting's views, from the adapters
    val = read_list(trained_run / "splits" / "val.txt")
    rows = classifier.predict([videos / path for path, _ in val], top_k=2)
    top1 = 100 * np.mean([row["top_k"][0][0] == classifier.classes[label] for row, (_, label) in
                         zip(rows, val, strict=True)])
    reported = json.loads((trained_run / "results.json").read_text())["methods"]["msta"]["top1"]
    assert top1 == pytest.approx(reported)
    with open(trained_run / "msta" / "full" / "evals" / "val" / "predictions.csv") as f:
        recorded = {r["video"]: r["top1"] for r in csv.DictReader(f)}
    assert {path: classifier.predict([videos / path])[0]["top_k"][0][0] for path, _ in val[:2]} == \
        {path: recorded[path] for path, _ in val[:2]}
    # the tensors a prediction scores are the evaluation loader's, bit for bit
    cfg = load_yaml(trained_run / "config.yaml")
    evaluation = next(iter(eval_loader(EvalSet(val[:1], classifier.classes, 4, 3), videos, cfg, DistInfo())))
    prediction = next(iter(classifier.loader([videos / val[0][0]])))
    assert torch.equal(prediction["video"], evaluation["video"])
    views = evaluation["video"].view(1, 12, *evaluation["video"].shape[1:])  # the 12 views of the one video
    predicted = dict(classifier.predict([videos / val[0][0]], top_k=3)[0]["top_k"])
    torch.testing.assert_close(classifier.predict_tensor(views)[0],
                               torch.tensor([predicted[c] for c in classifier.classes]))


def test_predict_command_on_files_and_folders(trained_run, videos, tmp_path):
    out = tmp_path / "predictions.json"
    rows = load_recipe("predict").main(["--run", str(trained_run), str(videos / "growing"),
                                        str(next((videos / "sliding_left").glob("*.mp4"))), "--top-k", "2",
                                        "--json", str(out)])
    assert len(rows) == 7 and json.loads(out.read_text())[0]["path"] == rows[0]["path"]
    assert all(len(r["top_k"]) == 2 and 0 <= r["top_k"][0][1] <= 1 for r in rows)
    backbone = json.loads((trained_run / "run.json").read_text())["backbone"]
    zero = load_recipe("predict").main(["--checkpoint", backbone, "--classes", "a square growing,a square sliding",
                                        str(videos / "growing")])
    assert {r["top_k"][0][0] for r in zero} <= {"a square growing", "a square sliding"}
    with pytest.raises(FileNotFoundError, match="no such video or folder"):
        load_recipe("predict").main(["--run", str(trained_run), str(tmp_path / "missing.mp4")])


def test_adapters_carry_what_the_run_was_trained_for(trained_run):
    meta = msta_fast.adapter_io.read_adapter_metadata(trained_run / "msta" / "full" / "adapters.safetensors")
    assert meta["classes"] == sorted(c.replace("_", " ") for c in CLASSES) and meta["views"] == [4, 3]
    assert meta["template"] == "a video of {}." and meta["num_frames"] == 4 and meta["image_size"] == 32
    assert meta["backbone"]["architecture"]["vision_heads"] == 2

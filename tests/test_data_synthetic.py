"""The synthetic action data set: temporal order is needed, novel classes are unseen combinations of seen
words, and the folder holds real videos and protocol files that the registry reads."""

import json
import os

import numpy as np
import pytest

from msta_fast.data import decode_frames, get_protocol, num_frames, read_labels, read_list
from msta_fast.data.synthetic import (
    MOTIONS,
    base_novel_classes,
    class_names,
    generate,
    load_captions,
    main,
    render_clip,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.getbasetemp() / "synthetic_small", seed=0, train_per_class=16,
                    val_per_class=4, progress=False)


def test_opposite_motions_are_time_reversals():
    for first in range(0, len(class_names()), 2):  # classes come in (motion, opposite motion) pairs
        a = render_clip(first, np.random.default_rng(11), size=32, num_frames=12)
        b = render_clip(first + 1, np.random.default_rng(11), size=32, num_frames=12)
        assert np.array_equal(a, b[::-1])
        assert np.array_equal(a.astype(np.float64).mean(0), b.astype(np.float64).mean(0))  # same average frame
        assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 2  # but the clip does change
        assert not np.array_equal(a, b)


def test_novel_classes_are_unseen_combinations_of_seen_words():
    names = class_names()
    base, novel = base_novel_classes()
    assert len(names) == 24 and len(base) == len(novel) == 12 and not set(base) & set(novel)
    base_words = {w for c in base for w in names[c].split()}
    for c in novel:
        assert set(names[c].split()) <= base_words, names[c]
    assert {m for c in base for m in MOTIONS if names[c].endswith(m)} == set(MOTIONS)


def test_generated_folder(root):
    names = read_labels(root / "labels" / "synthetic_labels.csv")
    assert names == class_names()
    full = get_protocol("synthetic", "supervised", data_root=root)
    path, label = full.train[0]
    assert num_frames(root / path) == 16
    frames = decode_frames(root / path, [0, 15])
    assert frames.shape == (2, 32, 32, 3)
    # the reversed twin (same nuisances) has the same average frame after encoding, within codec noise
    twin = path.replace("moving_left", "moving_right")
    assert twin != path and (root / twin).is_file()
    a = decode_frames(root / path, list(range(16))).double().mean(0)
    b = decode_frames(root / twin, list(range(16))).double().mean(0)
    assert (a - b).abs().mean() < 2.0
    assert (decode_frames(root / path, [0]).double() - decode_frames(root / twin, [0]).double()).abs().mean() > 2
    b2n = get_protocol("synthetic", "base2novel", seed=3, data_root=root)
    assert {p for p, _ in b2n.train} <= {p for p, _ in read_list(
        root / "datasets_splits" / "base2novel_splits" / "synthetic_splits" / "base_train.txt")}
    captions = load_captions(root)
    assert len(captions) == len(full.train)
    video, text = captions[0]
    assert video == full.train[0][0] and "square" in text


def test_generate_is_cached_and_guards_other_options(root):
    stamp = os.stat(root / "meta.json").st_mtime_ns
    assert generate(root, seed=0, train_per_class=16, val_per_class=4, progress=False) == root
    assert os.stat(root / "meta.json").st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other options"):
        generate(root, seed=1, train_per_class=16, val_per_class=4, progress=False)
    with pytest.raises(ValueError, match="train_per_class"):
        generate(root.parent / "bad", train_per_class=8)


def test_cli_vp9_and_overwrite(tmp_path, capsys):
    out = tmp_path / "vp9"
    main(["--out", str(out), "--seed", "2", "--size", "16", "--frames", "8", "--train-per-class", "16",
          "--val-per-class", "2", "--codec", "vp9"])
    assert str(out) in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["codec"] == "vp9" and meta["seed"] == 2
    p = get_protocol("synthetic", "fewshot", shots=2, data_root=out)
    assert all(path.endswith(".webm") for path, _ in p.train)
    assert decode_frames(out / p.train[0][0], [0, 7], backend="pyav").shape == (2, 16, 16, 3)
    generate(out, seed=3, size=16, num_frames=8, train_per_class=16, val_per_class=2, overwrite=True,
             progress=False)
    assert json.loads((out / "meta.json").read_text())["seed"] == 3
    assert not list((out / "videos").rglob("*.webm"))  # the old videos are gone

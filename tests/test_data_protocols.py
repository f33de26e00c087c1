"""The protocol registry returns the lists and classes of protocols.md for every dataset and setting."""

from collections import Counter

import pytest

from msta_fast.data import get_protocol
from msta_fast.data.lists import ProtocolFileError, write_list
from msta_fast.data.synthetic import generate

BASE_NOVEL = {"k400": (200, 200), "hmdb": (26, 25), "ucf": (51, 50), "ssv2": (87, 87)}


@pytest.mark.parametrize("dataset", list(BASE_NOVEL))
def test_base_to_novel(dataset):
    base, novel = BASE_NOVEL[dataset]
    trains = []
    for seed in (1, 2, 3):
        p = get_protocol(dataset, "base2novel", seed=seed)
        assert len(p.classes) == base
        assert len(p.evals["base"].classes) == base and len(p.evals["novel"].classes) == novel
        assert p.evals["base"].classes == p.classes
        assert not set(p.evals["base"].classes) & set(p.evals["novel"].classes)
        counts = Counter(y for _, y in p.train)
        assert set(counts) == set(range(base)) and set(counts.values()) == {16}
        trains.append({path for path, _ in p.train})
    assert trains[0] != trains[1] != trains[2]  # one sample set per seed


@pytest.mark.parametrize("dataset, classes, tests", [("hmdb", 51, ["val1", "val2", "val3"]),
                                                     ("ucf", 101, ["val1", "val2", "val3"]),
                                                     ("ssv2", 174, ["validation"])])
def test_few_shot(dataset, classes, tests):
    for shots in (2, 4, 8, 16):
        p = get_protocol(dataset, "fewshot", shots=shots)
        assert len(p.classes) == classes and list(p.evals) == tests
        assert len(p.train) == shots * classes
        assert all(ev.classes == p.classes for ev in p.evals.values())
    with pytest.raises(ValueError, match="shots"):
        get_protocol(dataset, "fewshot", shots=5)


def test_zero_shot():
    k600 = get_protocol("k600", "zeroshot")
    assert k600.train is None and list(k600.evals) == ["split1", "split2", "split3"]
    assert all(len(ev.classes) == 160 for ev in k600.evals.values())
    assert k600.evals["split1"].classes != k600.evals["split3"].classes
    hmdb = get_protocol("hmdb", "zeroshot", split=2)
    assert list(hmdb.evals) == ["val2"] and len(hmdb.evals["val2"].classes) == 51
    assert all(ev.num_clips == 1 and ev.num_crops == 1 for ev in k600.evals.values())  # single view
    with pytest.raises(KeyError, match="zero-shot"):
        get_protocol("ssv2", "zeroshot")


def test_k400_lists_from_the_user(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"k400_splits/train\.txt.*too large"):
        get_protocol("k400", "supervised", data_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="base_train.txt"):
        get_protocol("k400", "base2novel", seed=1, shots="all", data_root=tmp_path)
    user = tmp_path / "datasets_splits" / "k400_splits"
    user.mkdir(parents=True)
    write_list(user / "train.txt", [("train/a.mp4", 0), ("train/b.mp4", 399)])
    p = get_protocol("k400", "supervised", data_root=tmp_path)
    assert p.train == [("train/a.mp4", 0), ("train/b.mp4", 399)]
    assert len(p.classes) == 400 and p.evals["val"].num_clips == 4 and p.evals["val"].num_crops == 3
    assert p.data_root == tmp_path
    write_list(user / "train.txt", [("train/a.mp4", 0), ("train/b.mp4", 400)])
    with pytest.raises(ProtocolFileError, match=r"k400_splits/train\.txt:2: label 400 is out of range: "
                                                r".*kinetics_400_labels\.csv lists 400 classes"):
        get_protocol("k400", "supervised", data_root=tmp_path)
    (user / "train.txt").write_text("train/a.mp4 0\ntrain/b c.mp4 1\n")
    with pytest.raises(ProtocolFileError, match=r"k400_splits/train\.txt:2: .*quote a path"):
        get_protocol("k400", "supervised", data_root=tmp_path)


def test_out_of_range_eval_label_names_the_user_list(tmp_path):
    user = tmp_path / "lists" / "base2novel_splits" / "hmdb_splits"
    user.mkdir(parents=True)
    write_list(user / "novel_val.txt", [("a.avi", 24), ("b.avi", 25)])  # hmdb has 25 novel classes
    with pytest.raises(ProtocolFileError, match=r"novel_val\.txt:2: label 25 .*hmdb_51_novel_labels\.csv lists 25"):
        get_protocol("hmdb", "base2novel", seed=1, lists_dir=tmp_path / "lists")


def test_bad_arguments():
    with pytest.raises(KeyError, match="unknown dataset"):
        get_protocol("kinetics700", "fewshot", shots=2)
    with pytest.raises(KeyError, match="unknown setting"):
        get_protocol("hmdb", "linear-probe")
    with pytest.raises(ValueError, match="seed"):
        get_protocol("hmdb", "base2novel", seed=4)
    assert len(get_protocol("HMDB51", "fewshot", shots=2).train) == 102  # aliases


def test_synthetic_is_registered(tmp_path_factory):
    root = generate(tmp_path_factory.getbasetemp() / "synthetic_small", seed=0, train_per_class=16,
                    val_per_class=4, progress=False)
    p = get_protocol("synthetic", "base2novel", seed=2, data_root=root)
    assert len(p.classes) == 12 and len(p.evals["novel"].classes) == 12 and len(p.train) == 12 * 16
    assert all((root / path).is_file() for path, _ in p.train)
    assert len(get_protocol("synthetic", "fewshot", shots=4, data_root=root).train) == 24 * 4
    assert len(get_protocol("synthetic", "zeroshot", data_root=root).evals) == 3
    full = get_protocol("synthetic", "supervised", data_root=root)
    assert len(full.train) == 24 * 16 and len(full.evals["val"].samples) == 24 * 4
    with pytest.raises(FileNotFoundError, match="msta_fast.data.synthetic"):
        get_protocol("synthetic", "fewshot", shots=2, data_root=tmp_path_factory.mktemp("empty"))

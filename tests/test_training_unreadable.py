"""What a run does with unreadable videos outside the recipe's loop: the bound and the list
(``training.unreadable``), and pre-training, which leaves unreadable captioned videos out instead of crashing."""

import numpy as np
import pytest

from msta_fast.data.encode import write_video
from msta_fast.training.pretraining import decode_all
from msta_fast.training.unreadable import FILE_NAME, UnreadableVideosError, record_unreadable


def test_below_the_limit_videos_are_listed_and_above_it_the_run_stops(tmp_path, capsys):
    record_unreadable(tmp_path, "train msta/seed1 epoch 0", ["b.mp4", "a.mp4"], 100, 0.02)
    assert "2 of 100 videos unreadable" in capsys.readouterr().err
    record_unreadable(tmp_path, "eval msta/seed1/base", [], 10, 0.02)  # nothing to say
    with pytest.raises(UnreadableVideosError, match=r"3 of 100 videos \(3.0%\).*a.mp4, b.mp4, c.mp4"):
        record_unreadable(tmp_path, "train msta/seed1 epoch 1", ["c.mp4", "a.mp4", "b.mp4"], 100, 0.02)
    with pytest.raises(UnreadableVideosError, match="2 of 2 videos"):  # all of them: whatever the limit
        record_unreadable(tmp_path, "eval zero/seed1/novel", ["x.mp4", "y.mp4"], 2, 1.0)
    lines = (tmp_path / FILE_NAME).read_text().splitlines()
    assert lines[0] == "stage\tvideo" and lines[1:3] == ["train msta/seed1 epoch 0\ta.mp4",
                                                          "train msta/seed1 epoch 0\tb.mp4"]
    assert len(lines) == 1 + 2 + 3 + 2  # every video of every stage, the stopping ones included


def test_a_message_names_a_few_and_the_file_names_all(tmp_path):
    paths = [f"v{i:02d}.mp4" for i in range(12)]
    with pytest.raises(UnreadableVideosError, match=r"v00.mp4, .*v04.mp4 and 7 more \(all listed in .*tsv\)"):
        record_unreadable(tmp_path, "train", paths, 20, 0.02)
    assert len((tmp_path / FILE_NAME).read_text().splitlines()) == 13


def test_pretraining_leaves_unreadable_videos_out(tmp_path, caplog):
    rng = np.random.default_rng(0)
    names = []
    for i in range(4):
        write_video(tmp_path / f"v{i}.mp4", rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
        names.append(f"v{i}.mp4")
    (tmp_path / "v2.mp4").write_bytes(b"not a video")
    clips, kept = decode_all(tmp_path, names, "pyav", progress=False, max_unreadable=0.5)
    assert kept == [0, 1, 3] and clips.shape == (3, 6, 32, 32, 3)
    assert any("v2.mp4" in r.getMessage() for r in caplog.records)
    with pytest.raises(UnreadableVideosError, match="pre-training: 1 of 4 videos .*v2.mp4"):
        decode_all(tmp_path, names, "pyav", progress=False)  # 25% is above the default 2%

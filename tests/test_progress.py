"""Progress output: a bar on a terminal, plain periodic lines when stdout/stderr go to a file (no cursor codes)."""

import subprocess
import sys

from msta_fast.progress import Lines, progress_bar
from msta_fast.training.throughput import EpochTimer, stall_hint


def test_plain_lines_when_not_on_a_terminal():
    code = ("from msta_fast.progress import progress_bar\n"
            "bar = progress_bar(total=5, desc='train')\n"
            "for _ in range(5):\n    bar.update()\n    bar.set_postfix(loss='0.5')\n"
            "bar.close()\n"
            "for _ in progress_bar(range(3), desc='eval'):\n    pass\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"MSTA_FAST_PROGRESS_INTERVAL": "0", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("eval: 3/3 (100%)") and any(line.startswith("train: 5/5 (100%)") for line in lines)
    assert "loss=0.5" in lines[-2] or any("loss=0.5" in line for line in lines)


def test_lines_print_at_most_every_interval(capsys):
    bar = Lines(total=1000, desc="x", interval=3600)
    for _ in range(1000):
        bar.update()
    bar.close()
    assert capsys.readouterr().err.count("\n") == 1  # only the closing line
    assert isinstance(progress_bar(range(2), disable=True).__iter__(), object)


def test_the_stall_figure_says_when_the_loader_is_the_bottleneck():
    import time

    timer = EpochTimer()

    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    for _ in timer.batches(slow()):
        timer.add(4)
    summary = timer.summary()
    assert summary["data_wait_fraction"] > 0.8 and summary["clips_per_s"] > 0
    assert abs(summary["data_wait_s"] + summary["step_s"] - timer.elapsed) < 0.05
    assert "raise data.num_workers (now 2)" in stall_hint(summary, 2)
    assert stall_hint({**summary, "data_wait_fraction": 0.1}, 2) is None

"""Run a recipe and stop the process (SIGSTOP) at a chosen point of the library, so that a test can kill it there
from outside (SIGKILL), as a crash or a preempted job would:

    KILL_AT=msta_fast.training.checkpoint:save_checkpoint:after:4 python kill_harness.py recipes/train.py ARGS

stops right after the 4th call of ``save_checkpoint`` returns (``before``: right before the call). The recipe
itself contains nothing for the tests."""

import functools
import importlib
import os
import runpy
import signal
import sys

module_name, function, when, count = os.environ["KILL_AT"].split(":")
module = importlib.import_module(module_name)
original = getattr(module, function)
calls = 0


@functools.wraps(original)
def stopping(*args, **kwargs):
    global calls
    calls += 1
    if when == "before" and calls == int(count):
        os.kill(os.getpid(), signal.SIGSTOP)
    result = original(*args, **kwargs)
    if when == "after" and calls == int(count):
        os.kill(os.getpid(), signal.SIGSTOP)
    return result


setattr(module, function, stopping)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")

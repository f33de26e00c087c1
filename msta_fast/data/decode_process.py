"""A bounded time per video: decoding in a child process that is killed when a video takes too long.

Why a process: decord can hang inside FFmpeg in ``get_batch`` with the GIL held. A watchdog thread then never
runs, and a SIGALRM handler is Python code that waits for the same GIL, so neither can interrupt it; only killing
the process that hangs can. Each process that decodes (a DataLoader worker, or the main process with
``num_workers=0``) therefore starts one decoding child on first use and keeps it: ``os.fork``, because it costs
milliseconds and, unlike ``multiprocessing.Process``, is allowed inside a DataLoader worker (a daemonic process).
A video costs three small messages on a socket, and its frames come back through memory shared with the child
(one copy on each side: about 1 ms for 8 frames of 426x240, a third of pickling them through the socket), small
next to decoding them (``benchmarks/bench_decoding.py`` measures both). When a video takes longer than its limit,
the child is killed (SIGKILL), the next video gets a fresh one, and ``VideoDecodeTimeout`` names the file; a child
that dies (a decoder crash) is a ``VideoDecodeError`` too. Either way the loaders skip and replace the video.

The child runs the CPU decoders only, with one torch thread: torchcodec makes its frames with torch ops, and a
parallel region in the forked copy of a parent's OpenMP pool would deadlock.
"""

from __future__ import annotations

import itertools
import mmap
import multiprocessing.util
import os
import signal
import socket
import threading
import time
import warnings
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from .decode import VideoDecodeError, VideoDecodeTimeout, VideoSource, open_here

# Decoded frames up to this size come back through shared memory (only the pages used take memory: 64 MB holds 8
# frames of 1920x1080); larger ones are pickled through the socket.
SHARED_BYTES = 64 << 20


class _Child:
    """One decoding child process and the socket to it."""

    def __init__(self):
        ours, theirs = socket.socketpair()
        self.shared = mmap.mmap(-1, SHARED_BYTES)  # anonymous and MAP_SHARED: the same pages in the child
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork in a threaded process; the child only decodes (see the module doc)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; the child ends on EOF
                torch.set_num_threads(1)  # see the module doc
                _serve(Connection(theirs.detach()), self.shared)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self.owner = pid, os.getpid()
        self.conn = Connection(ours.detach())
        # killed when its process exits (a DataLoader worker too: multiprocessing runs these finalizers there, not
        # atexit), or when it is dropped; a Finalize runs once, so a reaped pid (perhaps reused) is never signalled
        self._finalizer = multiprocessing.util.Finalize(self, _kill, args=(pid, self.conn), exitpriority=10)

    def call(self, message, timeout: float):
        """The child's reply to ``message``; TimeoutError after ``timeout`` s, EOFError/OSError if it died."""
        self.conn.send(message)
        if not self.conn.poll(max(timeout, 0.0)):
            raise TimeoutError
        return self.conn.recv()

    def stop(self) -> str:
        """Kill the child and say how it ended."""
        return self._finalizer() or "ended"


def _kill(pid: int, conn: Connection) -> str:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    conn.close()
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "ended"
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL:
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return "ended"


def _serve(conn: Connection, shared: mmap.mmap) -> None:
    """The child's loop: ("open", key, path, backend) / ("read", key, indices) / ("close", key) until EOF."""
    videos: dict[int, VideoSource] = {}
    while True:
        try:
            op, key, *args = conn.recv()
        except EOFError:
            return
        try:
            if op == "close":
                video = videos.pop(key, None)
                if video is not None:
                    video.close()
                continue  # no reply: closing never waits
            if op == "open":
                videos[key] = open_here(*args)
                reply = ("ok", videos[key].num_frames)
            else:
                frames = videos[key].read(args[0]).numpy()
                if frames.nbytes <= len(shared):
                    np.ndarray(frames.shape, frames.dtype, buffer=shared)[...] = frames
                    reply = ("shared", (frames.shape, frames.dtype.str))
                else:
                    reply = ("ok", frames)
        except Exception as e:
            reply = ("error", e)
        try:
            conn.send(reply)
        except Exception as e:  # an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({e})")))


class _State:
    """This process's decoding child. A forked process (a DataLoader worker) starts with none of its own."""

    def __init__(self):
        self.lock = threading.Lock()
        self.child: _Child | None = None
        self.keys = itertools.count()


_STATE = _State()


def _forget_parents_child() -> None:
    global _STATE
    inherited = _STATE.child
    _STATE = _State()
    if inherited is not None:  # this process's copies of the socket and the memory; the child is the parent's
        inherited.conn.close()
        inherited.shared.close()


os.register_at_fork(after_in_child=_forget_parents_child)


def stop() -> None:
    """Stop this process's decoding child (the next bounded video starts a fresh one)."""
    with _STATE.lock:
        if _STATE.child is not None:
            _STATE.child.stop()
            _STATE.child = None


def _call(message, path: Path, deadline: float, limit: float, child: _Child | None = None):
    """Send ``message`` to this process's child (started if needed; ``child``: the one that must answer) and
    return its reply's value, raising what it raised."""
    state = _STATE
    with state.lock:
        if state.child is None and child is None:
            state.child = _Child()
        if child is not None and state.child is not child:
            raise VideoDecodeError(path, "its decoding process was stopped while it was open")
        child = state.child
        try:
            status, value = child.call(message, deadline - time.monotonic())
        except TimeoutError:
            state.child = None
            child.stop()
            raise VideoDecodeTimeout(path, f"decoding took longer than {limit:g} s, the time limit per video "
                                           "(data.decode_timeout); the decoder was stopped") from None
        except (EOFError, OSError) as e:
            state.child = None
            how = child.stop()
            raise VideoDecodeError(path, f"the decoding process died ({how}) while reading it") from e
        if status == "shared":  # copied out before the next video overwrites it
            shape, dtype = value
            value = np.ndarray(shape, np.dtype(dtype), buffer=child.shared).copy()
    if status == "error":
        raise value
    return child, value


class BoundedSource(VideoSource):
    """A video opened and read in this process's decoding child, ``timeout`` seconds at most in all."""

    def __init__(self, path: Path, backend: str, timeout: float):
        self.path, self.timeout = path, float(timeout)
        self._deadline = time.monotonic() + self.timeout
        self._key = next(_STATE.keys)
        self._child, self.num_frames = _call(("open", self._key, str(path), backend), path, self._deadline,
                                             self.timeout)

    def read(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        _, frames = _call(("read", self._key, indices), self.path, self._deadline, self.timeout, self._child)
        return torch.from_numpy(frames)

    def close(self) -> None:
        child, self._child = self._child, None
        with _STATE.lock:
            if child is not None and _STATE.child is child:
                try:
                    child.conn.send(("close", self._key))
                except OSError:
                    pass

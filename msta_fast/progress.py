"""Progress of long work: a tqdm bar on a terminal, plain periodic lines otherwise (a log file or CI gets a line
every ``MSTA_FAST_PROGRESS_INTERVAL`` seconds, 30 by default, and one at the end, never cursor codes).

``MSTA_FAST_PROGRESS=bar|lines|off`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm


class Lines:
    """tqdm's interface (``update``, ``set_postfix``, ``close``, iteration) printing plain lines to stderr."""

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", initial: int = 0,
                 unit: str = "it", interval: float | None = None):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.interval = interval if interval is not None else float(os.environ.get("MSTA_FAST_PROGRESS_INTERVAL", 30))
        self.started = self.last = time.monotonic()
        self.postfix: dict = {}
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def set_postfix_str(self, text: str) -> None:
        self.postfix = {"": text}

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print()

    def _print(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        extra = ", ".join(f"{k}={v}" if k else str(v) for k, v in self.postfix.items())
        print(f"{self.desc}: {done}, {rate:.2f} {self.unit}/s, {elapsed:.0f} s" + (f", {extra}" if extra else ""),
              file=sys.stderr, flush=True)


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", disable: bool = False, initial: int = 0,
             unit: str = "it", leave: bool = True):
    """A progress bar (tqdm) on a terminal, plain lines elsewhere; nothing when ``disable``."""
    mode = os.environ.get("MSTA_FAST_PROGRESS") or ("bar" if sys.stderr.isatty() else "lines")
    if disable or mode == "off":
        return tqdm(iterable, total=total, desc=desc, disable=True, initial=initial)
    if mode == "bar":
        return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=leave)
    return Lines(iterable, total=total, desc=desc, initial=initial, unit=unit)

"""Which backend the fast ops use in this process: ``MSTA_FAST_BACKEND`` or :func:`set_backend`.

``auto`` (default), ``triton``, ``ext`` or ``torch``; :mod:`msta_fast.ops.dispatch` says what each
means. Kept apart from the dispatch so that the Triton fallback rule (:mod:`msta_fast.ops.fallback`),
which the kernels' backward consults, can read it without importing the dispatch.
"""

from __future__ import annotations

import os

BACKENDS = ("auto", "triton", "ext", "torch")
_backend: str | None = None


def set_backend(name: str | None) -> None:
    """Choose the backend for this process; ``None`` goes back to ``MSTA_FAST_BACKEND`` (default ``auto``)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    global _backend
    _backend = name


def get_backend() -> str:
    name = _backend or os.environ.get("MSTA_FAST_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(f"MSTA_FAST_BACKEND={name!r} is not one of {BACKENDS}")
    return name

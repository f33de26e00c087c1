"""Backend selection for the MSTA adapter op.

``MSTA_FAST_BACKEND`` (or :func:`set_backend`) picks ``auto`` (default), ``triton``, ``ext`` or
``torch``. Only ``torch`` exists so far; the fused backends register here.
"""

from __future__ import annotations

import os

from msta_fast.adapters.functional import msta_adapter_ref

BACKENDS = ("auto", "triton", "ext", "torch")
_backend: str | None = None


def set_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    global _backend
    _backend = name


def get_backend() -> str:
    name = _backend or os.environ.get("MSTA_FAST_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(f"MSTA_FAST_BACKEND={name!r} is not one of {BACKENDS}")
    return name


def msta_adapter(x, *weights, **options):
    return msta_adapter_ref(x, *weights, **options)

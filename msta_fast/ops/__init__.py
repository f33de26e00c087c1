"""The one place where the adapter modules reach the fast ops.

``msta_adapter`` has the signature and semantics of
:func:`msta_fast.adapters.functional.msta_adapter_ref`; the backend decides who computes it.
"""

from msta_fast.ops.dispatch import get_backend, msta_adapter, set_backend

__all__ = ["get_backend", "msta_adapter", "set_backend"]

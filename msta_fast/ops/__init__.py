"""The one place where the adapter modules reach the fast ops.

``msta_adapter`` has the signature and semantics of
:func:`msta_fast.adapters.functional.msta_adapter_ref`; the backend decides who computes it.
``temporal_dwconv`` (M2-CLIP's depthwise convolution) has those of
:func:`msta_fast.adapters.functional.temporal_dwconv_ref`.
"""

from msta_fast.ops.dispatch import BACKENDS, get_backend, msta_adapter, resolve_backend, set_backend, temporal_dwconv

token_dwconv = temporal_dwconv  # TEMPORARY

__all__ = ["BACKENDS", "get_backend", "msta_adapter", "resolve_backend", "set_backend", "temporal_dwconv"]

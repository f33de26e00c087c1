"""The fast ops and the one place where the adapter modules reach them.

``msta_adapter`` has the signature and semantics of :func:`msta_fast.ops.reference.msta_adapter_ref`;
``token_dwconv`` (the depthwise convolution of tokens over their (T, H, W) grid, M2-CLIP's) those of
:func:`msta_fast.ops.reference.token_dwconv_ref`; the backend decides who computes them
(:mod:`msta_fast.ops.dispatch`).

Modules: ``reference`` (plain PyTorch, the ground truth), ``dispatch`` (backend choice),
``backend`` (the configured backend), ``fallback`` (what ``auto`` does when a Triton kernel fails),
``extension`` (building and loading the C++/CUDA extension), ``extension_ops`` (its ops as
differentiable functions), ``parity`` (inputs and comparisons for the parity tests and benchmarks).
The Triton kernels are in :mod:`msta_fast.kernels`.
"""

from msta_fast.ops.dispatch import BACKENDS, get_backend, msta_adapter, resolve_backend, set_backend, token_dwconv

__all__ = ["BACKENDS", "get_backend", "msta_adapter", "resolve_backend", "set_backend", "token_dwconv"]

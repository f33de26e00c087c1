"""Fused Triton kernels of the MSTA adapter (installed as ``msta_fast.kernels``).

Importable on a machine without a GPU: there the kernels run in Triton's interpreter on CPU
tensors (see :mod:`msta_fast.kernels.runtime`). The public entry point is
:func:`msta_fast.kernels.msta_chain.msta_adapter_triton`.
"""

from msta_fast.kernels.runtime import INTERPRET

__all__ = ["INTERPRET"]

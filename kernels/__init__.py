"""Fused Triton kernels of the MSTA adapter and of the depthwise token convolution (installed as
``msta_fast.kernels``).

One file per op, each with its kernels, launchers, ``torch.library`` ops and autograd formula; the
references they are checked against are in :mod:`msta_fast.ops.reference`:

- :mod:`~msta_fast.kernels.msta_chain`: one MSTA adapter application, entry point
  :func:`~msta_fast.kernels.msta_chain.msta_adapter_triton`, built from
  :mod:`~msta_fast.kernels.adapter_hidden` (the hidden chain) and :mod:`~msta_fast.kernels.up_tconv`
  (the up-projection with the temporal path fused);
- :mod:`~msta_fast.kernels.token_dwconv`: the token convolution alone, entry point
  :func:`~msta_fast.kernels.token_dwconv.token_dwconv_triton`.

Importable on a machine without a GPU; there the kernels run in Triton's interpreter on CPU
tensors if ``TRITON_INTERPRET=1`` was set before triton was imported (see
:mod:`msta_fast.kernels.runtime`).
"""

from msta_fast.kernels.runtime import INTERPRET

__all__ = ["INTERPRET"]

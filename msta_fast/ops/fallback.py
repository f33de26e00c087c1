"""What the ``auto`` backend does when a Triton kernel fails at run time: the rule and the record.

A kernel may fail on a machine where it was never run before: it does not compile for this GPU, it
needs more shared memory than the GPU has, the driver is too old. Under ``auto`` (and only there:
a backend asked for by name raises) such a failure is logged once, the failing call is computed by
the PyTorch reference instead, and from then on ``auto`` no longer chooses Triton in this process
(:mod:`msta_fast.ops.dispatch` reads :data:`failure`). Two callers apply the rule:

- the forward: :func:`msta_fast.ops.dispatch.msta_adapter` and :func:`~msta_fast.ops.dispatch.token_dwconv`
  run the reference on the call's inputs;
- the backward: the kernels' autograd formulas (:mod:`msta_fast.kernels.msta_chain`,
  :mod:`msta_fast.kernels.token_dwconv`) differentiate the reference, recomputed from the saved inputs
  (:func:`msta_fast.ops.reference.reference_grads`). They ask at backward time, so the backend chosen
  then decides. Eager mode only: under ``torch.compile`` the backward is a traced graph, and a kernel that
  fails in it raises.

What falls back: Triton's own errors (compile and resource errors, which are not RuntimeErrors), a
missing module and RuntimeErrors. Running out of memory never does: the reference needs more memory,
not less.
"""

from __future__ import annotations

import logging

import torch

from msta_fast.ops.backend import get_backend

# Why the Triton kernels failed in this process (the latest failure), or None.
failure: str | None = None
logger = logging.getLogger(__name__)


def _triton_errors() -> tuple[type[BaseException], ...]:
    try:
        import triton
    except ImportError:
        return ()
    return (triton.errors.TritonError,)


def is_kernel_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failure of the kernels that ``auto`` may fall back from (module docstring)."""
    if isinstance(err, torch.OutOfMemoryError):
        return False
    return isinstance(err, (RuntimeError, ImportError, *_triton_errors()))


def fall_back(err: BaseException, where: str) -> bool:
    """Whether the caller replaces the Triton call that raised ``err`` by the reference (``auto`` and a kernel
    failure); if so the failure is recorded, and logged the first time. ``where``: "forward" or "backward"."""
    if get_backend() != "auto" or not is_kernel_failure(err):
        return False
    global failure
    first = failure is None
    failure = f"{type(err).__name__} in the {where}: {str(err)[:300]}"
    if first:
        logger.warning("msta_fast: Triton kernels failed (%s); falling back for the rest of this process", failure)
    return True

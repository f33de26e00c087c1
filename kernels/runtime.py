"""Where the Triton kernels run: compiled on a CUDA GPU, or Triton's interpreter on the CPU.

Triton decides at decoration time (when a kernel module is imported) whether a ``@triton.jit``
function is compiled or interpreted, from ``TRITON_INTERPRET``. Without a CUDA device the kernels
can only run interpreted, so this module sets ``TRITON_INTERPRET=1`` in that case, before any
kernel module is imported; with a GPU it leaves the environment alone.

Block sizes: on a GPU the kernels are autotuned; in the interpreter they use fixed blocks (the
interpreter runs one Python loop per program and per K step, so large blocks are faster, and
every ``tl.dot`` dimension is at least 16 because the GPU compiler rejects smaller ones).
"""

from __future__ import annotations

import logging
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:  # the package imports this module first; it must import without Triton too (the kernels then cannot run)
    import triton
except ImportError:  # pragma: no cover - Triton ships with torch's CUDA wheels
    triton = None

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")

# Why the Triton kernels failed in this process, or None. Set by the ``auto`` backend's fallbacks
# (a forward in msta_fast.ops.dispatch, a backward in the kernels' autograd formulas); once set,
# ``auto`` stops choosing Triton.
failure: str | None = None
_logger = logging.getLogger("msta_fast.kernels")


def is_kernel_failure(err: BaseException) -> bool:
    """Whether ``auto`` may fall back from this error: Triton's compile / resource errors (which are not
    RuntimeErrors), a missing module, or a runtime error other than running out of memory (the
    reference would need more memory, not less)."""
    if isinstance(err, torch.OutOfMemoryError):
        return False
    triton_errors = (triton.errors.TritonError,) if triton is not None else ()
    return isinstance(err, (RuntimeError, ImportError, *triton_errors))


def record_failure(err: BaseException, where: str) -> None:
    """Remember (and log once) that a Triton kernel failed under ``auto``; ``where``: forward or backward."""
    global failure
    first = failure is None
    failure = f"{type(err).__name__} in the {where}: {str(err)[:300]}"
    if first:
        _logger.warning("msta_fast: Triton kernels failed (%s); falling back for the rest of this process", failure)


def maybe_autotune(configs: list, key: list[str], **options):
    """``triton.autotune`` on a GPU; the identity in the interpreter (blocks come from the launcher)."""
    if INTERPRET:
        return lambda fn: fn
    return triton.autotune(configs=configs, key=key, **options)


def small_tiles_when(predicate, small: dict):
    """An autotune ``early_config_prune`` keeping only the configs matching ``small`` when ``predicate(args)``.

    Why: compiling the large fp32 tiles (parity runs) or the 27-tap (3,3,3) kernels takes minutes
    per config with ptxas (measured: 336 s for one fp32 up-projection config, 45 s for one 27-tap
    backward config on sm_90), so those cases only try small tiles.
    """

    def prune(configs, named_args, **kwargs):
        if not predicate({**named_args, **kwargs}):
            return configs
        kept = [c for c in configs if all(c.kwargs.get(k) == v for k, v in small.items())]
        return kept or configs[:1]

    return prune


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs use exact fp32 products ("ieee", i.e. tf32 off) so that parity holds to 1e-5."""
    return "ieee" if dtype == torch.float32 else "tf32"


def next_pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(n))


def _stdlib_interpreted() -> bool:
    """Whether triton.language's own @jit helpers (tl.zeros, tl.sum, ...) were built for the interpreter."""
    import triton.language as tl

    return not isinstance(tl.zeros, triton.runtime.JITFunction) or type(tl.zeros).__name__ == "InterpretedFunction"


def check_device(t: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under the interpreter."""
    if INTERPRET and not _stdlib_interpreted():
        raise RuntimeError(
            "Triton was imported before TRITON_INTERPRET=1 was set, so its interpreter cannot run: import "
            "msta_fast before anything that imports triton, or set TRITON_INTERPRET=1 in the environment"
        )
    if t.is_cuda and INTERPRET:
        raise RuntimeError("TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it to run compiled kernels")
    if not t.is_cuda and not INTERPRET:
        raise RuntimeError("the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")

"""Backend selection for the MSTA adapter op and the depthwise token convolution: the one place where
the adapter modules reach the fast ops.

``MSTA_FAST_BACKEND`` (or :func:`set_backend`) picks:

- ``torch``: the plain PyTorch reference (:mod:`msta_fast.ops.reference`);
- ``triton``: the fused Triton kernels (CUDA tensors; CPU tensors in Triton's interpreter, which is
  opt-in: ``TRITON_INTERPRET=1`` in the environment before triton is imported);
- ``ext``: the C++/CUDA extension (built on first use, about 40 s on the CPU, then cached);
- ``auto`` (default): Triton for CUDA tensors; otherwise the extension **if it is already built or
  ``MSTA_FAST_BUILD_EXT=1``** (so that ``auto`` never starts a surprise compile); otherwise the
  reference. On CPU tensors ``auto`` picks per op from what was measured (``benchmarks/results/*_cpu-*.md``):
  the extension for the adapter with a temporal path (2-3x the reference) and for the token convolution
  (2.5-12x), the reference for an adapter without one (the text tower: the same three GEMMs either way; the
  extension measured 0.9-1.16x, within the noise of shared cores), so that ``auto`` is never slower than it.
  Each fallback is logged once with its reason. A Triton failure at run time, forward or backward (a
  kernel that does not compile on this GPU, say; not running out of memory), is handled by
  :mod:`msta_fast.ops.fallback`: that call runs the reference and ``auto`` skips Triton for the rest of
  the process.

Calls the fast paths do not cover go to the reference under every backend but ``triton``/``ext``
asked for explicitly, which raise instead: a caller-provided ``dropout_mask`` (a testing hook),
an adapter dim above 256 (Triton). Under autocast, the inputs are cast to the autocast dtype first,
as ``F.linear`` would do.
"""

from __future__ import annotations

import logging
import os

import torch

from msta_fast.ops import fallback
from msta_fast.ops.backend import BACKENDS, get_backend, set_backend
from msta_fast.ops.reference import msta_adapter_ref, token_dwconv_ref

__all__ = ["BACKENDS", "get_backend", "msta_adapter", "resolve_backend", "set_backend", "token_dwconv"]

_logged: set[str] = set()
logger = logging.getLogger(__name__)


def _log_once(key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.warning(message)


def _triton_problem(x: torch.Tensor, down_w: torch.Tensor | None) -> str | None:
    """Why the Triton kernels cannot run this call, or None (``down_w`` None: no adapter-dim limit)."""
    try:
        from msta_fast.kernels.runtime import ENABLE_INTERPRETER, INTERPRET, triton
    except Exception as err:  # noqa: BLE001 - any import failure (broken install) means "not available"
        return f"Triton is not importable ({type(err).__name__}: {err})"
    if fallback.failure is not None:
        return f"they failed earlier in this process ({fallback.failure})"
    if triton is None:
        return "Triton is not installed"
    if x.is_cuda and INTERPRET:
        return "TRITON_INTERPRET=1 is set but the tensors are on CUDA"
    if not x.is_cuda and not INTERPRET:
        return f"the tensors are on the CPU and Triton's interpreter is off (to run the kernels there, " \
               f"{ENABLE_INTERPRETER})"
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 0):
        return f"the GPU (compute capability {torch.cuda.get_device_capability(x.device)}) is older than sm_80"
    if down_w is not None and down_w.shape[0] > 256:
        return f"adapter dim {down_w.shape[0]} > 256"
    return None


def _ext_problem(x: torch.Tensor, explicit: bool) -> str | None:
    """Why the extension cannot run this call, or None. ``auto`` does not build it unless asked to."""
    from msta_fast.ops import extension

    if x.is_cuda and not extension.want_cuda():
        return "the extension would be built without CUDA (no CUDA toolkit found)"
    if not explicit and not extension.is_loaded() and not extension.is_built():
        if os.environ.get("MSTA_FAST_BUILD_EXT", "0") in ("0", "", "false"):
            return ("the extension is not built (set MSTA_FAST_BUILD_EXT=1 or run "
                    "`python -m msta_fast.ops.extension` to build it once)")
    return None


def resolve_backend(x: torch.Tensor, down_w: torch.Tensor | None, *, has_mask: bool = False,
                    temporal: bool = True) -> str:
    """The backend that :func:`msta_adapter` (``down_w`` given; ``temporal``: with a temporal path) or
    :func:`token_dwconv` (``down_w`` None) uses for these inputs: ``triton``, ``ext`` or ``torch``."""
    name = get_backend()
    if name == "torch":
        return "torch"
    if has_mask:
        if name != "auto":
            raise ValueError(f"dropout_mask is a hook of the reference; backend {name!r} draws its own mask")
        return "torch"
    if name == "triton":
        problem = _triton_problem(x, down_w)
        if problem:
            raise RuntimeError(f"MSTA_FAST_BACKEND=triton cannot run: {problem}")
        return "triton"
    if name == "ext":
        problem = _ext_problem(x, explicit=True)
        if problem:
            raise RuntimeError(f"MSTA_FAST_BACKEND=ext cannot run: {problem}")
        return "ext"
    if x.is_cuda:
        problem = _triton_problem(x, down_w)
        if problem is None:
            return "triton"
        _log_once("triton", f"msta_fast: Triton kernels not used ({problem}); trying the C++/CUDA extension")
    elif down_w is not None and not temporal:
        # Measured on the CPU: no faster than the reference there (module docstring).
        return "torch"
    problem = _ext_problem(x, explicit=False)
    if problem is None:
        return "ext"
    _log_once(f"ext-{x.device.type}", f"msta_fast: C++ extension not used ({problem}); using the PyTorch reference")
    return "torch"


def _autocast_cast(tensors: list, device_type: str) -> list:
    """Cast floating tensors to the autocast dtype (what F.linear would see), keeping None."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def _fast_op(backend: str):
    if backend == "triton":
        from msta_fast.kernels.msta_chain import msta_adapter_triton

        return msta_adapter_triton
    from msta_fast.ops.extension_ops import msta_adapter_ext

    return msta_adapter_ext


def _fast_adapter(backend, x, *weights, residual=None, dropout_mask=None, **options):
    """The adapter on ``backend`` (``triton`` or ``ext``), outside autocast, in the autocast dtype."""
    tensors = _autocast_cast([x, *weights], x.device.type)
    # The fused ops take every tensor in one dtype; a residual in another dtype (fp32 stream under
    # autocast) is added outside, as the reference's type promotion would.
    fuse_residual = residual is not None and residual.dtype == tensors[0].dtype
    with torch.autocast(x.device.type, enabled=False):
        out = _fast_op(backend)(*tensors, residual=residual if fuse_residual else None, **options)
    return out if residual is None or fuse_residual else residual + out


def msta_adapter(x, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w=None, conv_b=None, **options):
    """``residual + s * A(x)``: signature and semantics of :func:`msta_fast.ops.reference.msta_adapter_ref`."""
    weights = (down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b)
    backend = resolve_backend(x, down_w, has_mask=options.get("dropout_mask") is not None, temporal=conv_w is not None)
    if backend != "torch":
        try:
            return _fast_adapter(backend, x, *weights, **options)
        except Exception as err:  # noqa: BLE001 - fallback.fall_back decides; anything else is re-raised
            if backend != "triton" or not fallback.fall_back(err, "forward"):
                raise
    return msta_adapter_ref(x, *weights, **options)


def _fast_token_dwconv(backend, u_patch, weight, bias, grid, layout):
    """The token convolution on ``backend`` (``triton`` or ``ext``), outside autocast, in the autocast dtype."""
    u, w, b = _autocast_cast([u_patch, weight, bias], u_patch.device.type)
    with torch.autocast(u_patch.device.type, enabled=False):
        if backend == "ext":
            from msta_fast.ops.extension_ops import token_dwconv_ext

            return token_dwconv_ext(u, w, b, grid, layout)
        from msta_fast.kernels.token_dwconv import token_dwconv_triton

        return token_dwconv_triton(u, w, b, grid, layout)


def token_dwconv(u_patch, weight, bias, grid, layout="viclip"):
    """Depthwise 3-D convolution of patch tokens over their (T, H, W) grid: signature and semantics of
    :func:`msta_fast.ops.reference.token_dwconv_ref` (M2-CLIP's temporal and spatial convolutions).

    Backends as for :func:`msta_adapter`: ``triton`` runs :mod:`msta_fast.kernels.token_dwconv`,
    ``ext`` the extension's token convolution, ``auto`` picks between them and the reference (a
    Triton failure, forward or backward, falls back), ``torch`` is the reference. Under autocast the
    inputs are cast to the autocast dtype first, as ``conv3d`` would.
    """
    backend = resolve_backend(u_patch, None)
    if backend != "torch":
        try:
            return _fast_token_dwconv(backend, u_patch, weight, bias, grid, layout)
        except Exception as err:  # noqa: BLE001 - fallback.fall_back decides; anything else is re-raised
            if backend != "triton" or not fallback.fall_back(err, "forward"):
                raise
    return token_dwconv_ref(u_patch, weight, bias, grid, layout)

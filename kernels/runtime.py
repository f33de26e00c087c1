"""Where the Triton kernels run: compiled on a CUDA GPU, or in Triton's interpreter on CPU tensors.

Triton decides when it decorates a function (``triton.jit`` reads ``TRITON_INTERPRET`` through
``triton.knobs.runtime.interpret`` each time it wraps one) whether it is compiled or interpreted:
its own helpers (``tl.zeros``, ``tl.sum``, ...) when ``triton`` is first imported, these kernels
when their modules are imported. The interpreter is opt-in, so ``TRITON_INTERPRET=1`` must be in
the environment before anything imports triton, and ``import msta_fast`` already does (torchvision
imports ``torch._dynamo``, which imports triton): ``TRITON_INTERPRET=1 python ...``, or set it in
``os.environ`` before the first import (the test suite's conftest does so on a machine without a
GPU). This package never sets it: without it, CPU tensors are refused with an error that says how
to enable it, and the ``auto`` backend never chooses Triton for CPU tensors anyway.

Block sizes: on a GPU the kernels are autotuned; in the interpreter they use fixed blocks (the
interpreter runs one Python loop per program and per K step, so large blocks are faster, and
every ``tl.dot`` dimension is at least 16 because the GPU compiler rejects smaller ones).
"""

from __future__ import annotations

import os

import torch

try:  # importable without Triton too (the dispatch then reports that the kernels cannot run)
    import triton
except ImportError:  # pragma: no cover - Triton ships with torch's CUDA wheels
    triton = None

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")
# How to switch the interpreter on, for the errors that refuse CPU tensors.
ENABLE_INTERPRETER = ("set TRITON_INTERPRET=1 in the environment before triton is imported (importing msta_fast "
                      "imports it), e.g. `TRITON_INTERPRET=1 python ...`")


# MSTA_FAST_AUTOTUNE=first: launch the first config that the pruning keeps, without timing the others. For runs
# that need correct kernels, not the fastest (parity checks): every config compiles once per process otherwise.
AUTOTUNE = os.environ.get("MSTA_FAST_AUTOTUNE", "all")


def maybe_autotune(configs: list, key: list[str], **options):
    """``triton.autotune`` on a GPU; the identity in the interpreter (blocks come from the launcher)."""
    if INTERPRET:
        return lambda fn: fn
    if AUTOTUNE == "first":
        prune = (options.get("prune_configs_by") or {}).get("early_config_prune")

        def first(configs, named_args, **kwargs):
            return (prune(configs, named_args, **kwargs) if prune else configs)[:1]

        options = dict(options, prune_configs_by={**(options.get("prune_configs_by") or {}),
                                                  "early_config_prune": first})
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
        kept = [c for c in configs if all(_setting(c, k) == v for k, v in small.items())]
        return kept or configs[:1]

    return prune


def _setting(config, name: str):
    """A block size of a config, or its ``num_warps`` / ``num_stages``."""
    return getattr(config, name) if name in ("num_warps", "num_stages") else config.kwargs.get(name)


def tile(config) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of a config."""
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


def tile_configs(tiles, **fixed) -> list:
    """``triton.Config`` per (BLOCK_M, BLOCK_N, num_warps, num_stages), with the ``fixed`` block sizes, in order
    and without repeats."""
    return [triton.Config({"BLOCK_M": bm, **fixed, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in dict.fromkeys(tuple(t) for t in tiles)]


def tiles_for_dim(tiles_by_dim: dict[int, list[tuple]], then=None):
    """An ``early_config_prune`` keeping the tiles listed for the smallest listed adapter-dim tile >= the launch's
    ``BLOCK_R`` (the largest list above the largest key), none with BLOCK_N wider than BLOCK_R; then ``then``."""
    allowed = {dim: set(map(tuple, tiles)) for dim, tiles in tiles_by_dim.items()}

    def prune(configs, named_args, **kwargs):
        block_r = kwargs["BLOCK_R"]
        dim = min((d for d in allowed if d >= block_r), default=max(allowed))
        kept = [c for c in configs if tile(c) in allowed[dim] and c.kwargs["BLOCK_N"] <= block_r] or configs[:1]
        return then(kept, named_args, **kwargs) if then else kept

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
        raise RuntimeError(f"Triton was imported before TRITON_INTERPRET=1 was set, so its interpreter cannot run: "
                           f"{ENABLE_INTERPRETER}")
    if t.is_cuda and INTERPRET:
        raise RuntimeError("TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it to run compiled kernels")
    if not t.is_cuda and not INTERPRET:
        raise RuntimeError(f"the Triton kernels need CUDA tensors; to run them on CPU tensors in Triton's "
                           f"interpreter, {ENABLE_INTERPRETER}")

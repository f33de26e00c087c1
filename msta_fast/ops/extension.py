"""Just-in-time build and loading of the C++/CUDA extension (``csrc/``, ops ``torch.ops.msta_fast_ext``).

The first :func:`load` compiles the sources with ninja through ``torch.utils.cpp_extension.load``
(about 40 s for the CPU build on 2 cores, a few minutes with CUDA) into a cache directory keyed by
the sources' hash, the torch version and the build kind, so later processes only load the
library. Cache root: ``$MSTA_FAST_EXT_DIR``, else ``$XDG_CACHE_HOME/msta_fast/ext``, else
``~/.cache/msta_fast/ext``. The CUDA build is chosen when torch sees a GPU and a CUDA toolkit is
found; ``MSTA_FAST_EXT_CUDA=0/1`` overrides.

Build it ahead of time with ``python -m msta_fast.ops.extension``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import torch

from msta_fast.csrc import SOURCE_DIR

CPU_SOURCES = ("msta_adapter.cpp", "temporal_conv_cpu.cpp")
CUDA_SOURCES = ("temporal_conv_cuda.cpp", "temporal_conv_cuda.cu")
HEADERS = ("token_grid.h", "temporal_conv.h", "temporal_conv_cuda.h")

_lock = threading.Lock()
_loaded: str | None = None


def cache_root() -> Path:
    if os.environ.get("MSTA_FAST_EXT_DIR"):
        return Path(os.environ["MSTA_FAST_EXT_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "msta_fast" / "ext"


def want_cuda() -> bool:
    """Build the CUDA kernels too? Yes with a visible GPU and a toolkit, unless MSTA_FAST_EXT_CUDA says."""
    flag = os.environ.get("MSTA_FAST_EXT_CUDA")
    if flag is not None:
        return flag not in ("0", "", "false")
    if not torch.cuda.is_available():
        return False  # before importing cpp_extension, which warns "No CUDA runtime is found" on every CPU run
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def sources(with_cuda: bool) -> list[Path]:
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [SOURCE_DIR / n for n in names]


def build_name(with_cuda: bool) -> str:
    """Library name: changes with the sources, torch version and build kind, so a stale build is never loaded."""
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sources(with_cuda) + [SOURCE_DIR / h for h in HEADERS]:
        digest.update(path.read_bytes())
    return f"msta_fast_ext_{'cuda' if with_cuda else 'cpu'}_{digest.hexdigest()[:12]}"


def build_dir(with_cuda: bool) -> Path:
    return cache_root() / build_name(with_cuda)


def is_built(with_cuda: bool | None = None) -> bool:
    """True if the library for the current sources is already compiled (loading it is then instant)."""
    with_cuda = want_cuda() if with_cuda is None else with_cuda
    name = build_name(with_cuda)
    return (build_dir(with_cuda) / f"{name}.so").exists()


def is_loaded() -> bool:
    return _loaded is not None


def load(with_cuda: bool | None = None, verbose: bool = False) -> str:
    """Build (if needed) and load the extension into this process; returns the library's path.

    One build kind per process: the ops are registered when the library is loaded.
    """
    global _loaded
    with_cuda = want_cuda() if with_cuda is None else with_cuda
    with _lock:
        if _loaded is not None:
            return _loaded
        name = build_name(with_cuda)
        directory = build_dir(with_cuda)
        built = directory / f"{name}.so"
        if built.exists():  # the name hashes sources and torch: a build for them, loaded without a ninja check
            torch.ops.load_library(str(built))
            _loaded = str(built)
            return _loaded
        from torch.utils.cpp_extension import load as cpp_load

        directory.mkdir(parents=True, exist_ok=True)
        cflags = ["-O3"] + (["-DMSTA_WITH_CUDA"] if with_cuda else [])
        cpp_load(
            name=name,
            sources=[str(p) for p in sources(with_cuda)],
            extra_cflags=cflags,
            extra_cuda_cflags=["-O3", "-DMSTA_WITH_CUDA"],
            extra_include_paths=[str(SOURCE_DIR)],
            build_directory=str(directory),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=verbose,
        )
        _loaded = str(directory / f"{name}.so")
        return _loaded


if __name__ == "__main__":
    print(load(verbose=True))

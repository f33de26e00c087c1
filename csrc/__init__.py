"""C++/CUDA sources of the MSTA adapter extension (installed as ``msta_fast.csrc``).

Built just in time by :mod:`msta_fast.ops.extension`; this package only locates the sources.
"""

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent

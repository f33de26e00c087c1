"""msta_fast.data is the bottom layer with models and ops: it imports nothing of the layers above it."""

import ast
from pathlib import Path

import msta_fast.data

ABOVE = ("msta_fast.models", "msta_fast.adapters", "msta_fast.m2clip", "msta_fast.training", "msta_fast.ops")


def test_data_imports_no_layer_above_it():
    offending = []
    for path in sorted(Path(msta_fast.data.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offending += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith(ABOVE)]
    assert not offending, offending

"""The package's layering, read off its import statements (module level and inside functions alike).

The layers, written once (imports go down, or stay inside a unit):

    4  msta_fast.training                       what the recipes are made of
    3  msta_fast.methods, patching, adapter_io  one package per method; patch / save / load for any of them
    2  msta_fast.models, msta_fast.data         models know no adapter, data knows no model (side by side)
    1  msta_fast.ops (+ kernels, csrc)          the reference ops, their fast versions and the dispatch
    0  msta_fast.constants, collectives, progress  plain values, the one collective, progress output
    the package's __init__: the public API, above everything; recipes/ above the library, never imported by it
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject.toml's package-dir)
SOURCES = {REPO / "msta_fast": "msta_fast", REPO / "kernels": "msta_fast.kernels", REPO / "csrc": "msta_fast.csrc"}
UNITS = {  # unit -> layer
    "msta_fast.constants": 0,
    "msta_fast.collectives": 0,
    "msta_fast.progress": 0,
    "msta_fast.ops": 1,
    "msta_fast.models": 2,
    "msta_fast.data": 2,
    "msta_fast.methods": 3,
    "msta_fast.patching": 3,
    "msta_fast.adapter_io": 3,
    "msta_fast.training": 4,
    "msta_fast": 5,
}
ALIASES = {"msta_fast.kernels": "msta_fast.ops", "msta_fast.csrc": "msta_fast.ops"}  # installed beside ops, same layer
# Arrows between different units of one layer that the design has (anything else across a layer is an error).
SAME_LAYER = {("msta_fast.patching", "msta_fast.methods"), ("msta_fast.adapter_io", "msta_fast.methods"),
              ("msta_fast.adapter_io", "msta_fast.patching")}


def module_name(path: Path) -> str:
    for folder, package in SOURCES.items():
        if folder in path.parents:
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([package, *parts])
    raise ValueError(path)


def unit_of(module: str) -> str | None:
    """The unit a module belongs to (the longest unit prefix), None for modules outside the package."""
    for alias, target in ALIASES.items():
        if module == alias or module.startswith(alias + "."):
            module = target
    best = None
    for unit in UNITS:
        if module == unit or module.startswith(unit + "."):
            best = unit if best is None or len(unit) > len(best) else best
    return best


def imports(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` imports (absolute names; relative imports resolved)."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Forbidden arrows and unit cycles in ``{module: (source, is_package)}``."""
    problems, edges = [], {}
    for module, (source, is_package) in sorted(sources.items()):
        here = unit_of(module)
        for target in sorted(imports(source, module, is_package)):
            if target.split(".")[0] == "recipes":
                problems.append(f"{module} imports {target}: the library never imports the recipes")
                continue
            there = unit_of(target)
            if there is None or there == here:
                continue
            if target not in sources and not any(m.startswith(target + ".") for m in sources):
                continue  # a name imported from a package (`from msta_fast.ops import msta_adapter`) is its unit's
            edges.setdefault(here, set()).add(there)
            if UNITS[there] > UNITS[here] or (UNITS[there] == UNITS[here] and (here, there) not in SAME_LAYER):
                problems.append(f"{module} imports {target}: {here} (layer {UNITS[here]}) may not import {there} "
                                f"(layer {UNITS[there]})")
    problems += [f"import cycle between units: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def package_sources() -> dict[str, tuple[str, bool]]:
    out = {}
    for folder in SOURCES:
        for path in folder.rglob("*.py"):
            out[module_name(path)] = (path.read_text(), path.name == "__init__.py")
    return out


def test_the_package_keeps_its_layers():
    sources = package_sources()
    assert {"msta_fast.methods.msta.attach", "msta_fast.kernels.msta_chain", "msta_fast.ops.dispatch"} <= set(sources)
    assert violations(sources) == []


@pytest.mark.parametrize("module, source, problem", [
    ("msta_fast.kernels.up_tconv", "from msta_fast.methods.msta import MSTAConfig", "msta_fast.ops (layer 1) may not"),
    ("msta_fast.ops.dispatch", "import msta_fast.training.config", "may not import msta_fast.training"),
    ("msta_fast.models.viclip", "from msta_fast.methods import patch_state", "msta_fast.models (layer 2) may not"),
    ("msta_fast.data.transforms", "from msta_fast.models import IMAGENET_MEAN", "msta_fast.data (layer 2) may not"),
    ("msta_fast.data.loaders", "def f():\n    from msta_fast.training import step",
     "may not import msta_fast.training"),
    ("msta_fast.methods.msta.objective", "from msta_fast.patching import disable_adapters",
     "msta_fast.methods (layer 3) may not import msta_fast.patching"),
    ("msta_fast.training.step", "import recipes.train", "the library never imports the recipes"),
])
def test_a_forbidden_arrow_is_found(module, source, problem):
    sources = package_sources()
    is_package = sources.get(module, ("", False))[1]
    sources[module] = (sources.get(module, ("", False))[0] + "\n" + source + "\n", is_package)
    assert any(problem in p for p in violations(sources)), violations(sources)


def test_a_cycle_is_found():
    sources = {"msta_fast.constants": ("import msta_fast.collectives\n", False),
               "msta_fast.collectives": ("from msta_fast import constants\n", False)}
    assert any("cycle" in p for p in violations(sources))

"""The built-in default's numbers, pinned as torchtune pins its recipes' losses: the base-to-novel default run
(``python recipes/train.py --setting b2n``, with ``--methods zero,msta,m2clip``) with the PyTorch reference backend
gives, per seed, exactly the accuracies and selected epochs recorded in ``expected/b2n_synthetic_default.json``.

A change that moves them changes what users get from the default; re-record them only for a reason you state.
The run pre-trains the default's backbone from scratch (a few minutes on a 2-core CPU)."""

import json
from pathlib import Path

import pytest
from test_recipes_end_to_end import load_recipe

from msta_fast.ops import set_backend

EXPECTED = json.loads((Path(__file__).parent / "expected" / "b2n_synthetic_default.json").read_text())


@pytest.fixture
def reference_backend():
    set_backend("torch")  # the extension (if built) and Triton move the last digits
    yield
    set_backend(None)


@pytest.mark.slow
def test_default_base_to_novel_run_is_pinned_per_seed(tmp_path_factory, reference_backend):
    out = tmp_path_factory.mktemp("default")
    results = load_recipe("train").main(["--setting", "b2n", "--methods", "zero,msta,m2clip", "--out", str(out),
                                         "--cache-dir", str(tmp_path_factory.mktemp("default_cache"))])
    for method, expected in EXPECTED["methods"].items():
        got = [{k: s[k] for k in seed} for s, seed in zip(results["methods"][method]["per_seed"],
                                                          expected["per_seed"], strict=True)]
        assert got == expected["per_seed"], method

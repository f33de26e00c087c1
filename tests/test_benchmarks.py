"""The GPU benchmarks' building blocks, run on tiny CPU shapes (Triton in the interpreter), so that a GPU
session spends its time measuring, not fixing a benchmark that drifted from the library's API. (The whole device
check runs in tests/test_device_check.py.)"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import msta_fast
from msta_fast.ops import set_backend
from msta_fast.ops.parity import AdapterCase, make_inputs, relative_error

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """A module of benchmarks/ (``device/e2e`` for a device-check step), importing as it does when run there."""
    for path in (BENCHMARKS, BENCHMARKS / "device"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    spec = importlib.util.spec_from_file_location(name.replace("/", "_"), BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def triton_backend(exact_fp32_reference):
    """The providers call the kernels directly: under ``triton`` a failing kernel raises (under ``auto`` its
    backward would fall back to the reference); the end-to-end steps choose their own backend."""
    set_backend("triton")
    yield
    set_backend(None)


@pytest.mark.parametrize("backend", [None, "torch", "triton", "ext"])
def test_training_step_of_the_end_to_end_benchmark(backend):
    """Each backend's step trains the adapters (they change); the frozen step reaches the input video."""
    e2e = load_benchmark("device/e2e")
    step = e2e.build_step(backend, 16, name="viclip-tiny", device="cpu", batch=2, classes=4)
    if backend is None:
        step()
        assert step.video.grad is not None and step.video.grad.abs().sum() > 0
        return
    adapters = msta_fast.adapter_parameters(step.model)
    before = {n: p.detach().clone() for n, p in adapters.items()}
    step()
    changed = [n for n, p in adapters.items() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2, changed


@pytest.mark.parametrize("provider", ["eager", "triton", "ext"])
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
def test_layer_benchmark_providers_compute_the_reference(provider, phase):
    layer = load_benchmark("bench_msta_layer")
    case = AdapterCase(batch=1, width=64, dim=16, grid=(4, 2, 3), scale=0.5)
    x, weights, residual = make_inputs(case, torch.float32, "cpu")
    torch.manual_seed(1)  # the same output gradient for both
    want = layer.step_fn(layer.provider_op("eager"), case, x, weights, residual, phase)()
    torch.manual_seed(1)
    got = layer.step_fn(layer.provider_op(provider), case, x, weights, residual, phase)()
    for g, w in zip(got if phase == "fwd+bwd" else [got], want if phase == "fwd+bwd" else [want], strict=True):
        assert relative_error(g, w) < 1e-5
    flops, nbytes = layer.work(case, phase, 4)
    assert flops > 0 and nbytes > 0


@pytest.mark.parametrize("provider", ["eager", "triton", "ext"])
def test_token_convolution_benchmark_providers_compute_the_reference(provider):
    bench = load_benchmark("bench_token_dwconv")
    cases = {"tiny": (1, (4, 3, 2), 24, (3, 3, 1))}
    u, w, b, grid = bench.make_case("tiny", cases, torch.float32, "cpu")
    torch.manual_seed(1)  # the same output gradient for both
    got = bench.step_fn(bench.provider_op(provider), u, w, b, grid, "fwd+bwd")()
    torch.manual_seed(1)
    want = bench.step_fn(bench.provider_op("eager"), u, w, b, grid, "fwd+bwd")()
    for g, r in zip(got, want, strict=True):
        assert relative_error(g, r) < 1e-5

"""Parity of the fused Triton MSTA adapter kernels with the PyTorch reference, forward and all gradients.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (the conftest sets
TRITON_INTERPRET=1 before any kernel is defined); with one, the same tests run compiled. The tests
run under the ``triton`` backend, so that a failing kernel raises instead of falling back to the
reference (the ``auto`` backend's rule, msta_fast.ops.fallback).
Shapes are small and awkward (token counts that are no multiple of the blocks): the interpreter
is slow.
"""

import pytest
import torch

from msta_fast.kernels import INTERPRET
from msta_fast.kernels.msta_chain import dropout_keep, msta_adapter_triton
from msta_fast.ops import fallback, set_backend
from msta_fast.ops.parity import TOLERANCE, AdapterCase, assert_close, forward_and_grads, make_inputs
from msta_fast.ops.reference import msta_adapter_ref

DEVICE = "cpu" if INTERPRET else "cuda"

pytestmark = pytest.mark.usefixtures("exact_fp32_reference")


@pytest.fixture(autouse=True)
def triton_backend():
    """A kernel failure reaches the test (``triton``); the fallback test switches to ``auto`` itself."""
    set_backend("triton")
    yield
    set_backend(None)


CASES = {
    "viclip-cls-T8-C64-r16": AdapterCase(batch=2, width=64, dim=16, grid=(8, 2, 3)),
    "viclip-nocls-T2-C512-r64-k333-drop-nogs": AdapterCase(
        batch=2, width=512, dim=64, grid=(2, 3, 3), kernel=(3, 3, 3), has_cls=False, dropout_p=0.1, grad_scale=False
    ),
    "viclip-cls-T1-C768-r256": AdapterCase(batch=1, width=768, dim=256, grid=(1, 3, 2)),
    # a halo of 2 rows (kT = 5); tiles that straddle clips and class tokens
    "viclip-cls-T8-C64-r32-k511-drop": AdapterCase(batch=2, width=64, dim=32, grid=(8, 2, 3), kernel=(5, 1, 1),
                                                   dropout_p=0.1),
    "frames-cls-T2-C64-r128-k333-drop": AdapterCase(
        batch=2, width=64, dim=128, grid=(2, 2, 3), kernel=(3, 3, 3), layout="frames", dropout_p=0.2
    ),
    "frames-nocls-T8-C512-r16-nogs": AdapterCase(
        batch=1, width=512, dim=16, grid=(8, 2, 2), layout="frames", has_cls=False, grad_scale=False
    ),
    # T = 3 frames: no clip tiles, the convolution runs unfused
    "frames-cls-T3-C64-r16": AdapterCase(batch=2, width=64, dim=16, grid=(3, 2, 2), layout="frames"),
    # clip tiles (T = 4, a power of two) whose token blocks do not divide the 1 + 15 tokens of a frame
    "frames-cls-T4-C64-r32-k311-drop": AdapterCase(
        batch=3, width=64, dim=32, grid=(4, 3, 5), layout="frames", dropout_p=0.1
    ),
    "text-C512-r256-drop": AdapterCase(batch=3, width=512, dim=256, dropout_p=0.1),
    "text-C64-r64-nobias": AdapterCase(batch=2, width=64, dim=64, bias=False, text_tokens=33),
}
FP16_CASES = ["viclip-cls-T8-C64-r16", "viclip-nocls-T2-C512-r64-k333-drop-nogs", "frames-cls-T2-C64-r128-k333-drop",
              "text-C512-r256-drop"]
PARAMS = [pytest.param(name, torch.float32, id=f"{name}-fp32") for name in CASES] + [
    pytest.param(name, torch.float16, id=f"{name}-fp16") for name in FP16_CASES
]


def reference_with_kernel_mask(case: AdapterCase, seed: int):
    """The reference fed the dropout mask the kernels draw for ``seed``."""
    if case.dropout_p == 0:
        return msta_adapter_ref
    rows = case.rows * case.tokens
    mask = dropout_keep(seed, rows, case.dim, case.dropout_p, DEVICE).reshape(case.rows, case.tokens, case.dim)
    return lambda *a, **kw: msta_adapter_ref(*a, dropout_mask=mask, **kw)


@pytest.mark.parametrize("name, dtype", PARAMS)
def test_triton_matches_reference(name, dtype):
    case = CASES[name]
    seed = 1234
    x, weights, residual = make_inputs(case, dtype, DEVICE)
    out, grads, g = forward_and_grads(msta_adapter_triton, x, weights, residual, seed=seed, **case.options())
    ref_out, ref_grads, _ = forward_and_grads(reference_with_kernel_mask(case, seed), x, weights, residual, g,
                                              **case.options())
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    assert_close("out", out, ref_out, tol)
    for key, want in ref_grads.items():
        assert_close(f"grad {key}", grads[key], want, tol)


def test_dropout_mask_follows_the_seed():
    """The mask is a function of the seed, keeps about 1 - p, and the output changes with the seed."""
    a = dropout_keep(7, 300, 64, 0.25, DEVICE)
    assert torch.equal(a, dropout_keep(7, 300, 64, 0.25, DEVICE))
    assert not torch.equal(a, dropout_keep(8, 300, 64, 0.25, DEVICE))
    assert abs(a.float().mean().item() - 0.75) < 0.02
    case = CASES["text-C512-r256-drop"]
    x, weights, residual = make_inputs(case, torch.float32, DEVICE, requires_grad=False)
    out1 = msta_adapter_triton(x, *weights, residual=residual, seed=1, **case.options())
    out2 = msta_adapter_triton(x, *weights, residual=residual, seed=2, **case.options())
    assert not torch.allclose(out1, out2)


@pytest.mark.parametrize("failing", ["up_tconv_bwd", "hidden_bwd"])
def test_backward_falls_back_to_the_reference_when_a_kernel_fails(monkeypatch, failing):
    """Under the auto backend a backward kernel that fails (here: out of shared memory) is replaced by
    the reference with the kernels' dropout mask, and the failure is recorded; under ``triton`` the error
    reaches the caller."""
    import msta_fast.kernels.msta_chain as chain
    from msta_fast.kernels import runtime

    def broken(*args, **kwargs):
        raise runtime.triton.runtime.errors.OutOfResources(262144, 232448, "shared memory")

    monkeypatch.setattr(fallback, "failure", None)
    monkeypatch.setattr(chain, failing, broken)
    case = CASES["frames-cls-T2-C64-r128-k333-drop"]
    seed = 5
    x, weights, residual = make_inputs(case, torch.float32, DEVICE)
    set_backend("auto")
    out, grads, g = forward_and_grads(msta_adapter_triton, x, weights, residual, seed=seed, **case.options())
    ref_out, ref_grads, _ = forward_and_grads(reference_with_kernel_mask(case, seed), x, weights, residual, g,
                                              **case.options())
    assert "OutOfResources in the backward" in fallback.failure
    assert_close("out", out, ref_out, 1e-5)
    for key, want in ref_grads.items():
        assert_close(f"grad {key}", grads[key], want, 1e-5)
    set_backend("triton")
    with pytest.raises(runtime.triton.runtime.errors.OutOfResources):
        forward_and_grads(msta_adapter_triton, x, weights, residual, seed=seed, **case.options())


def test_batch_strided_input_and_no_residual():
    """x may be non-contiguous in the batch stride; without a residual the op returns s * A(x)."""
    case = AdapterCase(batch=3, width=64, dim=32, grid=(2, 2, 2))
    x, weights, _ = make_inputs(case, torch.float32, DEVICE, requires_grad=False)
    wide = torch.randn(case.rows, case.tokens * 2, case.width, device=DEVICE)
    wide[:, ::2] = x
    strided = wide[:, ::2]
    assert not strided.is_contiguous()
    opts = case.options()
    assert_close("out", msta_adapter_triton(strided, *weights, **opts), msta_adapter_ref(x, *weights, **opts), 1e-5)


def test_bad_arguments_are_refused():
    case = AdapterCase(batch=1, width=64, dim=16, grid=(2, 2, 2))
    x, weights, _ = make_inputs(case, torch.float32, DEVICE, requires_grad=False)
    with pytest.raises(ValueError, match="layout"):
        msta_adapter_triton(x, *weights, grid=case.grid, layout="nchw")
    with pytest.raises(ValueError, match="grid"):
        msta_adapter_triton(x, *weights)
    big = AdapterCase(batch=1, width=64, dim=512)
    xb, wb, _ = make_inputs(big, torch.float32, DEVICE, requires_grad=False)
    with pytest.raises(ValueError, match="256"):
        msta_adapter_triton(xb, *wb)


def test_compile_traces_through_the_custom_op():
    """torch.compile (aot_eager: graph capture and fake tensors, no codegen) gives the eager values."""
    case = CASES["viclip-cls-T8-C64-r16"]
    x, weights, residual = make_inputs(case, torch.float32, DEVICE)
    opts = case.options()

    def step(x, *w):
        return msta_adapter_triton(x, *w, residual=residual, **opts).square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(x, *weights)
    grads = torch.autograd.grad(loss, [x, weights[0], weights[6]])
    ref = msta_adapter_ref(x, *weights, residual=residual, **opts).square().sum()
    ref_grads = torch.autograd.grad(ref, [x, weights[0], weights[6]])
    assert_close("loss", loss, ref, 1e-5)
    for name, got, want in zip(("x", "down_w", "conv_w"), grads, ref_grads, strict=True):
        assert_close(name, got, want, 1e-5)


def test_custom_op_registration_passes_opcheck():
    case = AdapterCase(batch=1, width=32, dim=16, grid=(2, 2, 1))
    x, weights, residual = make_inputs(case, torch.float32, DEVICE)
    args = (x.reshape(-1, case.width), *weights, residual.reshape(-1, case.width), 0.5, [2, 2, 1], 0, True,
            case.tokens, 0.0, 0, True)
    torch.library.opcheck(torch.ops.msta_fast.triton_adapter_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="bf16 parity needs a GPU (the interpreter "
                    "gives garbage in bf16)")
@pytest.mark.parametrize("name", ["viclip-cls-T8-C64-r16", "frames-cls-T2-C64-r128-k333-drop", "text-C512-r256-drop"])
def test_triton_bf16_error_is_within_twice_pytorch_bf16_error(name):
    """bf16 judged against fp32: error(triton bf16) <= 2 x error(PyTorch bf16) + atol (style.md)."""
    case = CASES[name]
    seed = 99
    x, weights, residual = make_inputs(case, torch.float32, DEVICE)
    ref = reference_with_kernel_mask(case, seed)
    gold, gold_grads, g = forward_and_grads(ref, x, weights, residual, **case.options())

    def bf16(t):
        return t.detach().bfloat16().requires_grad_() if t is not None else None

    xb, wb, rb = bf16(x), [bf16(w) for w in weights], bf16(residual)
    fast, fast_grads, _ = forward_and_grads(msta_adapter_triton, xb, wb, rb, g.bfloat16(), seed=seed, **case.options())
    torch_bf16, torch_grads, _ = forward_and_grads(ref, xb, wb, rb, g.bfloat16(), **case.options())
    atol = 1e-2
    pairs = [("out", fast, torch_bf16, gold)] + [
        (k, fast_grads[k], torch_grads[k], gold_grads[k]) for k in gold_grads if gold_grads[k] is not None
    ]
    for key, f, t, want in pairs:
        err_fast = (f.float() - want).abs().max().item() / want.abs().max().item()
        err_torch = (t.float() - want).abs().max().item() / want.abs().max().item()
        assert err_fast <= 2 * err_torch + atol, f"{key}: bf16 error {err_fast:.3g} > 2 x {err_torch:.3g} + {atol}"

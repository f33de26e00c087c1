"""Parity of the standalone Triton depthwise token convolution (M2-CLIP's TConv) with the PyTorch
reference, forward and all gradients, in both token layouts; and of a patched M2-CLIP model under the
``torch`` and ``triton`` backends.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (the conftest sets
TRITON_INTERPRET=1); shapes are small and awkward (odd H*W, channel counts that are no multiple of the
blocks, T = 1). The tests run under the ``triton`` backend unless they choose another, so that a failing
kernel raises instead of falling back to the reference.
"""

import pytest
import torch
from conftest import relative_error

import msta_fast
from msta_fast.kernels import INTERPRET
from msta_fast.kernels.token_dwconv import token_dwconv_triton
from msta_fast.ops import fallback, set_backend, token_dwconv
from msta_fast.ops.reference import token_dwconv_ref

DEVICE = "cpu" if INTERPRET else "cuda"
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}
KERNELS = [(3, 1, 1), (1, 3, 3), (3, 3, 3)]
# (batch, grid (T, H, W), channels)
SHAPES = {
    "T8-HW9-C40": (2, (8, 3, 3), 40),
    "T1-HW15-C16": (3, (1, 3, 5), 16),
    "T2-HW7-C384": (1, (2, 7, 1), 384),
}


@pytest.fixture(autouse=True)
def restore_backend(exact_fp32_reference):
    """tf32 off for the fp32 reference (conftest); the ``triton`` backend, and the default one back after
    each test."""
    set_backend("triton")
    yield
    set_backend(None)


def token_shape(batch, grid, channels, layout):
    T, H, W = grid
    return (batch, H * W * T, channels) if layout == "viclip" else (batch * T, H * W, channels)


def make_inputs(batch, grid, channels, kernel, layout, dtype, bias=True):
    u = torch.randn(*token_shape(batch, grid, channels, layout), device=DEVICE, dtype=dtype)
    w = (torch.randn(channels, 1, *kernel, device=DEVICE) / kernel[0]).to(dtype)
    b = torch.randn(channels, device=DEVICE, dtype=dtype) if bias else None
    return u, w, b


def forward_and_grads(fn, u, w, b, grid, layout, grad, dtype=None):
    """Output and gradients of ``fn`` (inputs cast to ``dtype`` when given, leaves re-created)."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() if t is not None else None for t in (u, w, b)]
    y = fn(*leaves, grid, layout)
    inputs = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, inputs, grad.to(y.dtype))
    return [y, *grads]


def assert_parity(got, want, tol, names=("out", "du", "dw", "db")):
    assert len(got) == len(want) == len(names)
    assert all(g.shape == w.shape for g, w in zip(got, want, strict=True))
    errors = {n: relative_error(g, w) for n, g, w in zip(names, got, want, strict=True)}
    assert all(e < tol for e in errors.values()), errors


PARAMS = [
    pytest.param(shape, kernel, layout, torch.float32, id=f"{layout}-{shape}-k{''.join(map(str, kernel))}-fp32")
    for layout in ("viclip", "frames") for shape in SHAPES for kernel in KERNELS
] + [
    pytest.param(shape, kernel, layout, torch.float16, id=f"{layout}-{shape}-k{''.join(map(str, kernel))}-fp16")
    for layout in ("viclip", "frames") for shape in ("T8-HW9-C40", "T2-HW7-C384") for kernel in KERNELS
]


@pytest.mark.parametrize("shape, kernel, layout, dtype", PARAMS)
def test_triton_matches_reference(shape, kernel, layout, dtype):
    batch, grid, channels = SHAPES[shape]
    u, w, b = make_inputs(batch, grid, channels, kernel, layout, dtype)
    grad = torch.randn_like(u, dtype=torch.float32)
    got = forward_and_grads(token_dwconv_triton, u, w, b, grid, layout, grad)
    want = forward_and_grads(token_dwconv_ref, u, w, b, grid, layout, grad, dtype=torch.float64)
    assert all(g.dtype == dtype for g in got)
    assert_parity(got, want, TOLERANCE[dtype])


@pytest.mark.parametrize("layout", ["viclip", "frames"])
def test_dispatch_runs_the_kernel_on_a_strided_slice_without_bias(layout):
    """The TED-Adapter passes ``a[:, 1:]`` (a class token dropped): a strided view, read in place."""
    grid, channels, kernel = (2, 3, 3), 24, (3, 3, 3)
    full = torch.randn(*token_shape(2, grid, channels, layout), device=DEVICE)
    full = torch.cat([torch.randn_like(full[:, :1]), full], dim=1)
    u = full[:, 1:]
    assert not u.is_contiguous()
    _, w, _ = make_inputs(2, grid, channels, kernel, layout, torch.float32, bias=False)
    grad = torch.randn_like(u)
    set_backend("triton")
    got = forward_and_grads(token_dwconv, u, w, None, grid, layout, grad)
    want = forward_and_grads(token_dwconv_ref, u, w, None, grid, layout, grad, dtype=torch.float64)
    assert_parity(got, want, 1e-5, names=("out", "du", "dw"))


def test_auto_on_the_cpu_never_runs_the_triton_kernel(monkeypatch):
    """auto on CPU tensors: the extension where it is built, else the reference; never the interpreter."""
    import msta_fast.kernels.token_dwconv as kernel_module

    def refuse(*args, **kwargs):
        raise AssertionError("auto must not run the Triton kernel on CPU tensors")

    monkeypatch.setattr(kernel_module, "token_dwconv_triton", refuse)
    set_backend("auto")
    u, w, b = make_inputs(1, (2, 2, 2), 8, (3, 1, 1), "viclip", torch.float32)
    torch.testing.assert_close(token_dwconv(u.cpu(), w.cpu(), b.cpu(), (2, 2, 2), "viclip"),
                               token_dwconv_ref(u.cpu(), w.cpu(), b.cpu(), (2, 2, 2), "viclip"))


def test_bad_arguments_are_refused():
    u, w, b = make_inputs(1, (2, 2, 2), 8, (3, 1, 1), "viclip", torch.float32)
    with pytest.raises(ValueError, match="odd kernel sizes"):
        token_dwconv_triton(u, torch.randn(8, 1, 2, 1, 1, device=DEVICE), b, (2, 2, 2), "viclip")
    with pytest.raises(ValueError, match="do not fit"):
        token_dwconv_triton(u, w, b, (2, 2, 3), "viclip")
    with pytest.raises(ValueError, match="unknown token layout"):
        token_dwconv_triton(u, w, b, (2, 2, 2), "grid")
    with pytest.raises(ValueError, match="depthwise weight"):
        token_dwconv_triton(u, torch.randn(4, 1, 3, 1, 1, device=DEVICE), b, (2, 2, 2), "viclip")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="bf16 needs a CUDA GPU (bf16 is not exact in Triton's interpreter)")
@pytest.mark.parametrize("layout", ["viclip", "frames"])
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: "k" + "".join(map(str, k)))
def test_triton_bf16_error_is_within_twice_pytorch_bf16_error(layout, kernel):
    batch, grid, channels = 2, (8, 7, 7), 384
    u, w, b = make_inputs(batch, grid, channels, kernel, layout, torch.bfloat16)
    grad = torch.randn_like(u, dtype=torch.float32)
    got = forward_and_grads(token_dwconv_triton, u, w, b, grid, layout, grad)
    torch_bf16 = forward_and_grads(token_dwconv_ref, u, w, b, grid, layout, grad)
    want = forward_and_grads(token_dwconv_ref, u, w, b, grid, layout, grad, dtype=torch.float64)
    for name, g, t, r in zip(("out", "du", "dw", "db"), got, torch_bf16, want, strict=True):
        assert relative_error(g, r) <= 2 * relative_error(t, r) + 1e-3, name


@pytest.mark.parametrize("backend", ["triton", "ext"])
def test_patched_m2clip_model_matches_between_the_reference_and_a_fast_backend(monkeypatch, backend):
    """A patched M2-CLIP model gives the reference's output and adapter gradients with the Triton kernel
    and with the C++ extension's token convolution (each checked to be the one that ran)."""
    import msta_fast.kernels.token_dwconv as kernel_module
    import msta_fast.ops.extension_ops as ext_module

    calls = []
    fast_ops = {"triton": (kernel_module, "token_dwconv_triton"), "ext": (ext_module, "token_dwconv_ext")}
    module, name = fast_ops[backend]
    fast = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(a[3]) or fast(*a, **k))
    model = msta_fast.build_viclip("viclip-tiny", num_frames=2).to(DEVICE if backend == "triton" else "cpu")
    msta_fast.patch(model, "m2clip", dim=16, pre_attn=True, towers=("vision",))
    with torch.no_grad():
        for p in msta_fast.adapter_parameters(model).values():
            p.normal_(std=0.1)
    video = torch.randn(2, 2, 3, 32, 32, device=next(model.parameters()).device)
    results = {}
    for name in ("torch", backend):
        set_backend(name)
        model.zero_grad(set_to_none=True)
        out = model.encode_video(video)
        out.square().mean().backward()
        grads = {n: p.grad.detach().clone() for n, p in msta_fast.adapter_parameters(model).items()}
        results[name] = out.detach(), grads
        if name == "torch":
            assert not calls
    # Two blocks x two places x (TConv on the patch slice, SConv on the time differences).
    assert len(calls) == 8
    (out_t, grads_t), (out_k, grads_k) = results["torch"], results[backend]
    assert relative_error(out_k, out_t) < 1e-5
    assert grads_t.keys() == grads_k.keys() and any("conv" in n for n in grads_t)
    for name in grads_t:
        assert relative_error(grads_k[name], grads_t[name]) < 1e-5, name


def test_backward_falls_back_to_the_reference_when_the_kernel_fails(monkeypatch):
    """auto: a backward kernel that fails is replaced by the reference and recorded; ``triton``: it raises."""
    import msta_fast.kernels.token_dwconv as kernel_module
    from msta_fast.kernels import runtime

    def broken(*args, **kwargs):
        raise runtime.triton.runtime.errors.OutOfResources(262144, 232448, "shared memory")

    monkeypatch.setattr(fallback, "failure", None)
    monkeypatch.setattr(kernel_module, "token_dwconv_bwd", broken)
    batch, grid, channels = SHAPES["T8-HW9-C40"]
    u, w, b = make_inputs(batch, grid, channels, (3, 3, 3), "viclip", torch.float32)
    grad = torch.randn_like(u)
    set_backend("auto")
    got = forward_and_grads(token_dwconv_triton, u, w, b, grid, "viclip", grad)
    want = forward_and_grads(token_dwconv_ref, u, w, b, grid, "viclip", grad, dtype=torch.float64)
    assert "OutOfResources in the backward" in fallback.failure
    assert_parity(got, want, 1e-5)
    set_backend("triton")
    with pytest.raises(runtime.triton.runtime.errors.OutOfResources):
        forward_and_grads(token_dwconv_triton, u, w, b, grid, "viclip", grad)


def test_compile_traces_through_the_custom_op():
    """torch.compile (aot_eager: graph capture with fake tensors) gives the eager values and gradients."""
    batch, grid, channels = SHAPES["T2-HW7-C384"]
    u, w, b = make_inputs(batch, grid, channels, (3, 1, 1), "frames", torch.float32)
    grad = torch.randn_like(u)

    def step(u, w, b):
        return token_dwconv_triton(u, w, b, grid, "frames") * 2

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = forward_and_grads(lambda *a: compiled(*a[:3]), u, w, b, grid, "frames", grad)
    want = forward_and_grads(lambda *a: token_dwconv_ref(*a) * 2, u, w, b, grid, "frames", grad,
                             dtype=torch.float64)
    assert_parity(got, want, 1e-5)


def test_custom_op_registration_passes_opcheck():
    u, w, b = make_inputs(2, (2, 3, 1), 16, (3, 3, 1), "viclip", torch.float32)
    for t in (u, w, b):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.msta_fast.token_dwconv_fwd.default, (u, w, b, [2, 3, 1], 0),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))

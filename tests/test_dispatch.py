"""Backend selection of msta_fast.ops.msta_adapter, and a patched tiny ViCLIP under every backend."""

import logging
import os
import subprocess
import sys

import pytest
import torch

import msta_fast
from msta_fast.kernels import INTERPRET, runtime
from msta_fast.ops import dispatch, extension, fallback, get_backend, msta_adapter, set_backend
from msta_fast.ops.parity import AdapterCase, assert_close, make_inputs
from msta_fast.ops.reference import msta_adapter_ref

# Where every backend can run: CPU tensors under the Triton interpreter (no GPU), else the GPU.
DEVICE = "cpu" if INTERPRET else "cuda"


@pytest.fixture(autouse=True)
def fresh_backend_state(monkeypatch):
    monkeypatch.delenv("MSTA_FAST_BACKEND", raising=False)
    monkeypatch.delenv("MSTA_FAST_BUILD_EXT", raising=False)
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.setattr(fallback, "failure", None)
    # On a GPU the fp32 reference must not use tf32 (cuDNN's conv3d does by default).
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    set_backend(None)
    yield
    set_backend(None)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_backend_names_are_checked(monkeypatch):
    assert get_backend() == "auto"
    set_backend("torch")
    assert get_backend() == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        set_backend("cuda")
    set_backend(None)
    monkeypatch.setenv("MSTA_FAST_BACKEND", "fastest")
    with pytest.raises(ValueError, match="MSTA_FAST_BACKEND"):
        get_backend()
    monkeypatch.setenv("MSTA_FAST_BACKEND", "ext")
    assert get_backend() == "ext"


def test_auto_on_cpu_does_not_build_the_extension(monkeypatch, caplog):
    """Without a built extension and without MSTA_FAST_BUILD_EXT, auto falls back to the reference, logged once."""
    monkeypatch.setattr(extension, "is_loaded", lambda: False)
    monkeypatch.setattr(extension, "is_built", lambda with_cuda=None: False)
    monkeypatch.setattr(extension, "load", lambda *a, **k: pytest.fail("auto must not build the extension"))
    x, weights, residual = make_inputs(AdapterCase(batch=1, width=32, dim=16, grid=(2, 2, 2)), torch.float32)
    with caplog.at_level(logging.WARNING, logger=dispatch.__name__):
        assert dispatch.resolve_backend(x, weights[0]) == "torch"
        out = msta_adapter(x, *weights, residual=residual, grid=(2, 2, 2))
        msta_adapter(x, *weights, residual=residual, grid=(2, 2, 2))
    assert_close("out", out, msta_adapter_ref(x, *weights, residual=residual, grid=(2, 2, 2)), 1e-6)
    messages = [r.getMessage() for r in caplog.records if "extension not used" in r.getMessage()]
    assert len(messages) == 1 and "MSTA_FAST_BUILD_EXT" in messages[0]


def test_auto_on_cpu_uses_the_extension_when_allowed(monkeypatch):
    monkeypatch.setenv("MSTA_FAST_BUILD_EXT", "1")
    x = torch.randn(1, 9, 32)
    assert dispatch.resolve_backend(x, torch.randn(16, 32)) == "ext"


def test_auto_on_cpu_picks_per_op_from_what_was_measured(monkeypatch):
    """The extension for the adapter with a temporal path and the token convolution; the reference for the text
    tower's adapter (the extension is no faster there); an explicit ``ext`` is obeyed."""
    from msta_fast.ops import extension_ops

    monkeypatch.setenv("MSTA_FAST_BUILD_EXT", "1")
    calls = []
    monkeypatch.setattr(extension_ops, "msta_adapter_ext", lambda *a, **k: calls.append(k.get("grid")) or a[0])
    x, weights, residual = make_inputs(AdapterCase(batch=1, width=32, dim=16, grid=(2, 2, 2)), torch.float32)
    text = weights[:6] + [None, None]
    assert dispatch.resolve_backend(x, weights[0], temporal=False) == "torch"
    assert dispatch.resolve_backend(x, weights[0], temporal=True) == "ext"
    assert dispatch.resolve_backend(x, None) == "ext"
    out = msta_adapter(x, *text, residual=residual)
    assert calls == []
    assert_close("out", out, msta_adapter_ref(x, *text, residual=residual), 1e-6)
    msta_adapter(x, *weights, residual=residual, grid=(2, 2, 2))
    assert calls == [(2, 2, 2)]
    set_backend("ext")
    assert dispatch.resolve_backend(x, weights[0], temporal=False) == "ext"


def test_explicit_backends_refuse_what_they_cannot_do():
    x, weights, _ = make_inputs(AdapterCase(batch=1, width=32, dim=16, grid=(2, 2, 2)), torch.float32)
    mask = torch.ones(1, x.shape[1], 16, dtype=torch.bool)
    set_backend("triton")
    with pytest.raises(ValueError, match="dropout_mask"):
        msta_adapter(x, *weights, grid=(2, 2, 2), dropout_p=0.1, training=True, dropout_mask=mask)
    set_backend("auto")
    assert dispatch.resolve_backend(x, weights[0], has_mask=True) == "torch"


@pytest.mark.parametrize("backend", ["triton", "ext"])
def test_dispatch_matches_reference(backend):
    case = AdapterCase(batch=2, width=64, dim=32, grid=(2, 3, 2), kernel=(3, 3, 3))
    x, weights, residual = make_inputs(case, torch.float32, DEVICE)
    set_backend(backend)
    out = msta_adapter(x, *weights, residual=residual, **case.options())
    assert_close("out", out, msta_adapter_ref(x, *weights, residual=residual, **case.options()), 1e-5)


def test_autocast_runs_the_fast_op_in_the_autocast_dtype():
    """Under CPU bf16 autocast the extension sees bf16 inputs; an fp32 residual is added outside, in fp32."""
    case = AdapterCase(batch=1, width=64, dim=32, grid=(2, 2, 2))
    x, weights, residual = make_inputs(case, torch.float32, requires_grad=False)
    set_backend("ext")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = msta_adapter(x, *weights, residual=residual, **case.options())
    ref = msta_adapter_ref(x, *weights, residual=residual, **case.options())
    assert out.dtype == torch.float32
    assert_close("out", out, ref, 2e-2)



def _tiny_patched_viclip():
    torch.manual_seed(0)
    model = msta_fast.build_viclip("viclip-tiny").to(DEVICE)
    msta_fast.patch(model, "msta", dim=16, scale=0.5, dropout=0.0, temporal_kernel=(3, 3, 3))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.2)
    return model


def test_patched_tiny_viclip_is_the_same_under_every_backend():
    """Outputs and every adapter gradient of a patched tiny ViCLIP agree across torch, triton and ext."""
    model = _tiny_patched_viclip()
    cfg = model.config
    video = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size, device=DEVICE)
    ids = torch.randint(1, 400, (3, cfg.context_length), device=DEVICE)
    results = {}
    for backend in ("torch", "triton", "ext"):
        set_backend(backend)
        model.zero_grad(set_to_none=True)
        v, t = model.encode_video(video), model.encode_text(ids)
        (v.square().sum() + t.square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[backend] = (v.detach(), t.detach(), grads)
    v_ref, t_ref, g_ref = results["torch"]
    assert len(g_ref) > 0 and any(g.abs().sum() > 0 for g in g_ref.values())
    assert any("tconv" in n or "conv" in n for n in g_ref), "the temporal path was not patched"
    for backend in ("triton", "ext"):
        v, t, grads = results[backend]
        assert_close(f"{backend} video embedding", v, v_ref, 1e-4)
        assert_close(f"{backend} text embedding", t, t_ref, 1e-4)
        assert grads.keys() == g_ref.keys()
        for name, g in grads.items():
            assert_close(f"{backend} grad {name}", g, g_ref[name], 1e-4)


@pytest.mark.parametrize("error", [
    RuntimeError("PTX compile failed"),
    # Triton's compile and resource errors are not RuntimeErrors
    runtime.triton.runtime.errors.OutOfResources(262144, 232448, "shared memory"),
], ids=["runtime-error", "triton-out-of-resources"])
def test_auto_falls_back_when_the_triton_kernels_fail(monkeypatch, caplog, error):
    """A Triton failure at run time (e.g. a kernel that does not compile on this GPU) is logged once; auto goes on."""
    x, weights, residual = make_inputs(AdapterCase(batch=1, width=32, dim=16, grid=(2, 2, 2)), torch.float32)
    monkeypatch.setattr(dispatch, "resolve_backend", lambda *a, **k: "torch" if fallback.failure else "triton")

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(dispatch, "_fast_op", lambda backend: broken)
    with caplog.at_level(logging.WARNING, logger=fallback.__name__):
        out = msta_adapter(x, *weights, residual=residual, grid=(2, 2, 2))
    assert_close("out", out, msta_adapter_ref(x, *weights, residual=residual, grid=(2, 2, 2)), 1e-6)
    assert type(error).__name__ in fallback.failure and "forward" in fallback.failure
    assert sum("Triton kernels failed" in r.getMessage() for r in caplog.records) == 1
    set_backend("triton")  # asked for explicitly: the failure is the caller's to see
    monkeypatch.setattr(dispatch, "resolve_backend", lambda *a, **k: "triton")
    with pytest.raises(type(error)):
        msta_adapter(x, *weights, residual=residual, grid=(2, 2, 2))


def test_auto_does_not_fall_back_when_memory_runs_out(monkeypatch):
    """Out of memory is no kernel failure: the reference would need more memory, and Triton stays chosen."""
    x, weights, residual = make_inputs(AdapterCase(batch=1, width=32, dim=16, grid=(2, 2, 2)), torch.float32)
    monkeypatch.setattr(dispatch, "resolve_backend", lambda *a, **k: "triton")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(dispatch, "_fast_op", lambda backend: out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        msta_adapter(x, *weights, residual=residual, grid=(2, 2, 2))
    assert fallback.failure is None

def test_the_interpreter_is_opt_in():
    """Importing msta_fast leaves TRITON_INTERPRET alone; without it, triton on CPU tensors says how to enable it
    (in the dispatch and in the kernels) and auto uses another backend. A fresh process: this one interprets."""
    code = """
import os
import torch
import msta_fast
from msta_fast.kernels.token_dwconv import token_dwconv_triton
from msta_fast.ops import resolve_backend, set_backend
assert "TRITON_INTERPRET" not in os.environ
x = torch.randn(1, 8, 4)
assert resolve_backend(x, None) != "triton"
set_backend("triton")
for call in (lambda: resolve_backend(x, None),
             lambda: token_dwconv_triton(x, torch.randn(4, 1, 3, 1, 1), None, (2, 2, 2))):
    try:
        call()
    except RuntimeError as err:
        assert "TRITON_INTERPRET=1" in str(err), err
    else:
        raise AssertionError("Triton ran on CPU tensors without the interpreter")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MSTA_FAST_BACKEND")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

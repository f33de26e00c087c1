"""The C++/CUDA extension: CPU op parity with the reference, op registration, CUDA sources compile.

The first test builds the extension (about 20-40 s on 2 cores) into the cache
(``MSTA_FAST_EXT_DIR`` or ``~/.cache/msta_fast/ext``); later runs only load it.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from msta_fast.csrc import SOURCE_DIR
from msta_fast.ops import extension
from msta_fast.ops.extension_ops import ext_dropout_keep, msta_adapter_ext
from msta_fast.ops.parity import TOLERANCE, AdapterCase, assert_close, forward_and_grads, make_inputs
from msta_fast.ops.reference import msta_adapter_ref

pytestmark = pytest.mark.usefixtures("exact_fp32_reference")


CASES = {
    "viclip-cls-T8-C64-r16": AdapterCase(batch=2, width=64, dim=16, grid=(8, 2, 3)),
    "viclip-nocls-T2-C512-r64-k333-drop-nogs": AdapterCase(
        batch=2, width=512, dim=64, grid=(2, 3, 3), kernel=(3, 3, 3), has_cls=False, dropout_p=0.1, grad_scale=False
    ),
    "viclip-cls-T1-C768-r256": AdapterCase(batch=2, width=768, dim=256, grid=(1, 3, 2)),
    "viclip-cls-T8-C768-r128-k311-drop": AdapterCase(batch=2, width=768, dim=128, grid=(8, 3, 3), dropout_p=0.3),
    "frames-cls-T2-C64-r128-k333-drop": AdapterCase(
        batch=2, width=64, dim=128, grid=(2, 2, 3), kernel=(3, 3, 3), layout="frames", dropout_p=0.2
    ),
    "frames-nocls-T8-C512-r16-nogs": AdapterCase(
        batch=1, width=512, dim=16, grid=(8, 2, 2), layout="frames", has_cls=False, grad_scale=False
    ),
    "text-C512-r256-drop": AdapterCase(batch=3, width=512, dim=256, dropout_p=0.1),
    "text-C64-r64-nobias": AdapterCase(batch=2, width=64, dim=64, bias=False, text_tokens=33),
}
PARAMS = [pytest.param(name, dtype, id=f"{name}-{str(dtype)[6:]}") for name in CASES
          for dtype in (torch.float32, torch.float16)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", autouse=True)
def built_extension():
    """Build (or load from the cache) the extension once for this module."""
    return extension.load()


def reference_with_ext_mask(case: AdapterCase, seed: int, device: str):
    if case.dropout_p == 0:
        return msta_adapter_ref
    mask = ext_dropout_keep(seed, case.rows * case.tokens, case.dim, case.dropout_p, device)
    mask = mask.reshape(case.rows, case.tokens, case.dim)
    return lambda *a, **kw: msta_adapter_ref(*a, dropout_mask=mask, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, dtype", PARAMS)
def test_extension_matches_reference(name, dtype, device):
    case = CASES[name]
    seed = 4321
    x, weights, residual = make_inputs(case, dtype, device)
    out, grads, g = forward_and_grads(msta_adapter_ext, x, weights, residual, seed=seed, **case.options())
    ref = reference_with_ext_mask(case, seed, device)
    ref_out, ref_grads, _ = forward_and_grads(ref, x, weights, residual, g, **case.options())
    tol = TOLERANCE[dtype]
    assert_close("out", out, ref_out, tol)
    for key, want in ref_grads.items():
        assert_close(f"grad {key}", grads[key], want, tol)


@pytest.mark.parametrize("device", DEVICES)
def test_extension_bf16_error_is_within_twice_pytorch_bf16_error(device):
    """bf16 judged against fp32 (style.md): error(ext bf16) <= 2 x error(PyTorch bf16) + atol."""
    case = CASES["viclip-cls-T8-C64-r16"]
    x, weights, residual = make_inputs(case, torch.float32, device)
    gold, gold_grads, g = forward_and_grads(msta_adapter_ref, x, weights, residual, **case.options())

    def bf16(t):
        return t.detach().bfloat16().requires_grad_() if t is not None else None

    xb, wb, rb = bf16(x), [bf16(w) for w in weights], bf16(residual)
    fast, fast_grads, _ = forward_and_grads(msta_adapter_ext, xb, wb, rb, g.bfloat16(), **case.options())
    ref, ref_grads, _ = forward_and_grads(msta_adapter_ref, xb, wb, rb, g.bfloat16(), **case.options())
    pairs = [("out", fast, ref, gold)] + [(k, fast_grads[k], ref_grads[k], gold_grads[k]) for k in gold_grads
                                          if gold_grads[k] is not None]
    for key, f, t, want in pairs:
        scale = want.abs().max().item()
        err_fast = (f.float() - want).abs().max().item() / scale
        err_torch = (t.float() - want).abs().max().item() / scale
        assert err_fast <= 2 * err_torch + 1e-2, f"{key}: bf16 error {err_fast:.3g} > 2 x {err_torch:.3g} + 0.01"


def test_temporal_conv_op_alone_matches_conv3d():
    """tconv_fwd in the ViCLIP layout equals the permute + conv3d of the reference, cls token untouched."""
    from msta_fast.ops.reference import token_dwconv_ref

    T, H, W, C = 4, 3, 5, 24
    u = torch.randn(2, 1 + T * H * W, C)
    w, b = torch.randn(C, 1, 3, 3, 3), torch.randn(C)
    got = torch.ops.msta_fast_ext.tconv_fwd(u.reshape(-1, C), w, b, [T, H, W], 0, True, u.shape[1]).reshape(u.shape)
    want = u[:, 1:] + token_dwconv_ref(u[:, 1:], w, b, (T, H, W), "viclip")
    assert_close("patch tokens", got[:, 1:], want, 1e-5)
    assert torch.equal(got[:, 0], u[:, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["viclip", "frames"])
@pytest.mark.parametrize("kernel", [(3, 1, 1), (1, 3, 3), (3, 3, 3)], ids=lambda k: "k" + "".join(map(str, k)))
def test_token_convolution_alone_matches_the_reference(kernel, layout, dtype):
    """M2-CLIP's TConv on the extension (no identity term, no class token): output and every gradient,
    on a strided slice ``a[:, 1:]`` as the TED-Adapter passes it."""
    from msta_fast.ops.extension_ops import token_dwconv_ext
    from msta_fast.ops.reference import token_dwconv_ref

    T, H, W, C = 4, 3, 5, 40
    shape = (2, H * W * T, C) if layout == "viclip" else (2 * T, H * W, C)
    full = torch.randn(shape[0], shape[1] + 1, C, dtype=dtype)
    results = []
    for op, cast in ((token_dwconv_ext, dtype), (token_dwconv_ref, torch.float64)):
        u = full.to(cast)[:, 1:].detach().requires_grad_()
        w = (torch.randn(C, 1, *kernel, generator=torch.Generator().manual_seed(1)) / 3).to(cast).requires_grad_()
        b = torch.randn(C, generator=torch.Generator().manual_seed(2)).to(cast).requires_grad_()
        y = op(u, w, b, (T, H, W), layout)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(cast)
        results.append([y, *torch.autograd.grad(y, (u, w, b), g)])
    tol = TOLERANCE[dtype]
    for name, got, want in zip(("out", "du", "dw", "db"), *results, strict=True):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(name, got, want.to(dtype), tol)


def test_op_registration_passes_opcheck():
    from msta_fast.ops import extension_ops

    extension_ops._register()  # what the first call of msta_adapter_ext or token_dwconv_ext does
    case = AdapterCase(batch=1, width=32, dim=16, grid=(2, 2, 1))
    x, weights, residual = make_inputs(case, torch.float32, "cpu")
    args = (x.reshape(-1, case.width), *weights, residual.reshape(-1, case.width), None, 0.5, 0.0, [2, 2, 1], 0, True,
            case.tokens, True)
    torch.library.opcheck(torch.ops.msta_fast_ext.adapter_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    u = torch.randn(2 * 2 * 6, 16, requires_grad=True)  # 2 clips x T=2 frames x (2 x 3) tokens, "frames"
    w, b = torch.randn(16, 1, 3, 1, 3, requires_grad=True), torch.randn(16, requires_grad=True)
    for identity in (True, False):
        torch.library.opcheck(torch.ops.msta_fast_ext.tconv_fwd.default, (u, w, b, [2, 2, 3], 1, False, 6, identity),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_cached_build_is_found_by_a_fresh_process():
    """After one build, a new process sees the cached library (so `auto` can use it without compiling)."""
    code = "from msta_fast.ops import extension; print(extension.is_built())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def nvcc_include_dirs() -> list[str]:
    """The CUDA toolkit's include directories, as nvcc itself reports them (cuda_runtime_api.h lives there)."""
    dry = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True,
                         text=True)
    return re.findall(r'-I"?([^"\s]+)', "".join(line for line in dry.stderr.splitlines() if "INCLUDES=" in line))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: the CUDA sources cannot be compiled here")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    """The .cu file (plain CUDA, no torch headers) compiles for Hopper and Ampere; it cannot run without a GPU."""
    cmd = ["nvcc", "-c", "-O3", "-std=c++17", f"-I{SOURCE_DIR}", "-gencode=arch=compute_90,code=sm_90",
           "-gencode=arch=compute_80,code=sm_80", str(SOURCE_DIR / "temporal_conv_cuda.cu"), "-o",
           str(tmp_path / "temporal_conv_cuda.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "temporal_conv_cuda.o").stat().st_size > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: the CUDA build cannot be checked here")
def test_cuda_wrapper_compiles_against_torch_cuda_headers(tmp_path):
    """The ATen side of the CUDA build (temporal_conv_cuda.cpp) compiles with torch's CUDA include paths."""
    from torch.utils import cpp_extension

    includes = cpp_extension.include_paths(device_type="cuda") + [str(SOURCE_DIR)] + nvcc_include_dirs()
    cmd = ["c++", "-c", "-std=c++20", "-fPIC", "-O0", "-DMSTA_WITH_CUDA", *[f"-I{p}" for p in includes],
           str(SOURCE_DIR / "temporal_conv_cuda.cpp"), "-o", str(tmp_path / "wrapper.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

"""The Triton kernels compile for a Hopper GPU (sm_90, PTX and cubin through ptxas) on a machine without one.

The interpreter accepts code that the GPU compiler rejects (dot blocks under 16, mixed dtypes,
some control flow), so CI also compiles every kernel ahead of time for each dtype, with the tiles
the autotuner tries first. Runs in a subprocess: this test process uses the interpreter.
"""

import json
import os
import subprocess
import sys

import pytest

COMPILE_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from msta_fast.kernels import adapter_hidden as ah, token_dwconv as tk, up_tconv as td

SCALARS = ("scale", "gscale", "p_drop", "keep_scale", "xscale")
dt, prec, dim_tile = sys.argv[1], ("ieee" if sys.argv[1] == "fp32" else "tf32"), int(sys.argv[2])


def signature(fn, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("dcw_ptr", "dcb_ptr", "dw_ptr", "db_ptr"):
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dt
        else:
            sig[name] = "fp32" if name in SCALARS else "i32"
    return sig


flags = dict(PRECISION=prec, BLOCK_R=dim_tile)
kernels = [
    (ah._hidden_fwd_kernel, dict(HAS_BD=True, HAS_BS=True, DROPOUT=True, BLOCK_M=32, BLOCK_K=64, BLOCK_N=32)),
    (ah._hidden_bwd_kernel, dict(HAS_BD=True, HAS_BS=False, DROPOUT=True, BLOCK_M=32, BLOCK_K=64, BLOCK_N=32)),
]
# the fused up-projection + temporal convolution in both row tilings, forward and backward: halo tiles (ViCLIP
# layout), clip tiles (frame rows); the plain up-projection (no convolution); the token convolution (spatial taps)
tilings = {"halo": dict(LAYOUT=0, KT=3, KH=1, KW=1, HALO=1, FRAME_T=0, BLOCK_M=64),
           "clip": dict(LAYOUT=1, KT=3, KH=1, KW=1, HALO=0, FRAME_T=8, BLOCK_M=64)}
for name, tiling in tilings.items():
    kernels.append((td._up_tconv_fwd_kernel, dict(HAS_BU=True, HAS_CONV=True, HAS_CB=True, HAS_RES=True, HAS_CLS=1,
                                                  BLOCK_N=64, **tiling), name))
    kernels.append((td._up_tconv_bwd_kernel, dict(HAS_BU=True, HAS_CB=True, HAS_CLS=1, BLOCK_N=64, **tiling), name))
kernels.append((td._up_tconv_fwd_kernel, dict(HAS_BU=True, HAS_CONV=False, HAS_CB=False, HAS_RES=True, HAS_CLS=1,
                                              LAYOUT=0, KT=1, KH=1, KW=1, HALO=0, FRAME_T=0, BLOCK_M=64, BLOCK_N=64),
                "plain"))
spatial = dict(LAYOUT=0, KT=1, KH=3, KW=3, BLOCK_M=32, BLOCK_N=64)
kernels.append((tk._token_dwconv_fwd_kernel, dict(HAS_BIAS=True, **spatial)))
kernels.append((tk._token_dwconv_bwd_kernel, dict(NEED_DU=True, NEED_DW=True, HAS_BIAS=True, **spatial)))
done = []
for kernel, constexprs, *tag in kernels:
    fn = kernel.fn
    constexprs = {k: v for k, v in {**flags, **constexprs}.items() if k in fn.arg_names}
    src = triton.compiler.ASTSource(fn=fn, signature=signature(fn, constexprs), constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
    assert compiled.asm["cubin"], fn.__name__
    done.append("-".join([fn.__name__, *tag]))
    print(done[-1], "shared memory", compiled.metadata.shared, file=sys.stderr)
print(json.dumps(done))
"""


# fp32 (exact "ieee" dots, the parity path) at dim 64 because ptxas takes about 90 s for the fp32 kernels at 256.
# bf16 (and fp16, the same code) at every config the ops launch: tests/test_kernels_resources.py.
@pytest.mark.parametrize("dtype, dim", [("fp32", 64)])
def test_triton_kernels_compile_for_sm90(dtype, dim, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "triton-cache")}
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, dtype, str(dim)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = json.loads(result.stdout.strip().splitlines()[-1])
    fused = [f"_up_tconv_{way}_kernel-{tiling}" for tiling in ("halo", "clip") for way in ("fwd", "bwd")]
    assert compiled == ["_hidden_fwd_kernel", "_hidden_bwd_kernel", *fused, "_up_tconv_fwd_kernel-plain",
                        "_token_dwconv_fwd_kernel", "_token_dwconv_bwd_kernel"]

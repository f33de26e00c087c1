"""Step 1: the device, its versions and clocks, and its roofline as measured here: device-to-device copy
bandwidth and bf16 matmul rate on random data. Writes ``roofline.json``, which the later steps' "fraction of the
roofline" divides by."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess

from common import OPEN_CLIP, REPO, Step, parse_args


def versions() -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                            check=False).stdout.strip() or None
    return dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                triton=triton_version, commit=commit, open_clip=OPEN_CLIP)


def nvidia_smi() -> dict:
    """Clocks, power and temperature now (what the numbers were taken at)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    fields = ["driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.draw",
              "power.limit", "temperature.gpu", "pstate"]
    proc = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:  # a field this driver does not know: record why, measure on
        return {"nvidia_smi": (proc.stderr or proc.stdout).strip()[:200]}
    return dict(zip(fields, (v.strip() for v in lines[0].split(",")), strict=False))


def copy_bandwidth(step: Step, megabytes: int) -> float:
    """Bytes per second of a device-to-device copy (it reads and writes every byte once)."""
    import torch

    src = torch.randn(megabytes * 2**20 // 4, device=step.device)
    dst = torch.empty_like(src)
    ms = step.time_ms({"copy": lambda: dst.copy_(src)})["copy"]
    bandwidth = 2 * src.numel() * 4 / (ms * 1e-3)
    step.record(kind="bandwidth", what="device-to-device copy", megabytes=megabytes, ms=ms, gb_s=bandwidth / 1e9)
    return bandwidth


def matmul_rate(step: Step, n: int, dtype) -> float:
    """FLOP/s of an n x n x n matmul on random data (zeros would flatter the power-limited clocks)."""
    import torch

    a = torch.randn(n, n, device=step.device, dtype=dtype)
    b = torch.randn(n, n, device=step.device, dtype=dtype)
    ms = step.time_ms({"matmul": lambda: a @ b})["matmul"]
    flops = 2 * n**3 / (ms * 1e-3)
    step.record(kind="matmul", dtype=str(dtype).removeprefix("torch."), n=n, ms=ms, tflop_s=flops / 1e12)
    return flops


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    step = Step("probe", args)
    import torch

    env = versions()
    if step.dry:
        env.update(device=f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
        copy_mb, n = 8, 256
    else:
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(), capability=f"{props.major}.{props.minor}",
                   sms=props.multi_processor_count, memory_gb=round(props.total_memory / 2**30, 1), **nvidia_smi())
        copy_mb, n = 2048, 8192
    step.record(kind="environment", **env)

    bandwidth = copy_bandwidth(step, copy_mb)
    flops = matmul_rate(step, n, torch.float32 if step.dry else torch.bfloat16)

    roofline = dict(bf16_flops=flops, bytes_per_s=bandwidth, source=f"measured on {env['device']}")
    (args.results / "roofline.json").write_text(json.dumps(roofline, indent=1) + "\n")
    step.headline(f"{env['device']}: {bandwidth / 1e9:.0f} GB/s copy, {flops / 1e12:.1f} TFLOP/s "
                  f"{'fp32 (dry run)' if step.dry else 'bf16'} matmul")


if __name__ == "__main__":
    main()

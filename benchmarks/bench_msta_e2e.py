"""End-to-end: one training step of ViCLIP-B/16 + MSTA (batch 32, 8 frames, 224 px, bf16 autocast).

For each backend (``torch`` reference, ``triton``, ``ext``) and for the frozen backbone alone, on
a GPU: clips/s and peak memory of forward + backward + AdamW step over random (not zero) inputs
and 400 class prompts of 32 tokens. The frozen baseline runs the unpatched model's forward and
backward with respect to the input video (the activation gradients that the adapters' backward
must also traverse; no weight gradients): the issue's target is adapters <= 10% over it. The
model's weights are random (real weights do not change the cost).
"""

from __future__ import annotations

import pytest
import torch

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")

BATCH, FRAMES, CLASSES = 32, 8, 400


def build_step(backend: str | None, dim: int, name: str = "viclip-b16", device: str = "cuda", batch: int = BATCH,
               classes: int = CLASSES):
    """A closure running one training step (with ``.model`` and ``.video`` attached); ``backend`` None = the
    frozen backbone alone."""
    import msta_fast
    from msta_fast.ops import set_backend

    torch.manual_seed(0)
    model = msta_fast.build_viclip(name).to(device)
    cfg = model.config
    video = torch.randn(batch, FRAMES, 3, cfg.image_size, cfg.image_size, device=device)
    ids = torch.randint(1, 49000, (classes, cfg.context_length), device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    if backend is None:
        for p in model.parameters():
            p.requires_grad_(False)
        video.requires_grad_(True)

        def frozen_step():
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(video, ids), labels)
            loss.backward()

        frozen_step.model, frozen_step.video = model, video
        return frozen_step
    set_backend(backend)
    msta_fast.patch(model, "msta", dim=dim, start_layer=1, scale=0.005, dropout=0.1, num_frames=FRAMES)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.ndim == 5:  # the temporal conv starts at zero: make its path do work
                p.normal_(0, 0.02)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-3)
    model.train()

    def train_step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(video, ids), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step.model, train_step.video = model, video
    return train_step


@needs_gpu
@pytest.mark.parametrize("dim", [256, 128])
def test_gpu_training_step(benchmark, record_result, dim):
    import triton.testing

    from msta_fast.ops import set_backend

    rows = {}
    for backend in (None, "torch", "triton", "ext"):
        step = build_step(backend, dim)
        step()  # autotune / build outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
        ms = triton.testing.do_bench(step, warmup=2, rep=20, return_mode="median")
        label = backend or "frozen-backbone"
        rows[label] = ms
        record_result("msta_e2e_gpu", model="viclip-b16", dim=dim, backend=label, batch=BATCH, frames=FRAMES,
                      median_ms=ms, clips_per_s=BATCH / (ms * 1e-3), peak_gb=peak_gb,
                      overhead_vs_frozen=ms / rows["frozen-backbone"] - 1.0)
        del step
        torch.cuda.empty_cache()
    set_backend(None)
    benchmark.extra_info.update({f"{k}_ms": v for k, v in rows.items()})
    benchmark.pedantic(lambda: None, rounds=1)

"""Step 4: one training step of ViCLIP-B/16 + MSTA (batch 32, 8 frames, 224 px, bf16 autocast, adapter dim 256)
per backend (the ``torch`` reference, ``triton``) against the frozen backbone: clips/s, peak memory, overhead %.

A step is forward + backward + AdamW over random (not zero) video and 400 class prompts of 32 tokens. The frozen
baseline runs the unpatched model's forward and backward with respect to the input video (the activation gradients
that the adapters' backward must also traverse; no weight gradients): the target is adapters <= 10% over it and
peak memory no higher than the reference's. The weights are random (real weights do not change the cost).
"""

from __future__ import annotations

from common import Step, parse_args

BATCH, FRAMES, CLASSES, DIM = 32, 8, 400, 256


def build_step(backend: str | None, dim: int = DIM, name: str = "viclip-b16", device: str = "cuda",
               batch: int = BATCH, classes: int = CLASSES):
    """A closure running one training step (with ``.model`` and ``.video`` attached); ``backend`` None = the
    frozen backbone alone."""
    import torch

    import msta_fast
    from msta_fast.ops import set_backend

    torch.manual_seed(0)
    model = msta_fast.build_viclip(name).to(device)
    cfg = model.config
    video = torch.randn(batch, FRAMES, 3, cfg.image_size, cfg.image_size, device=device)
    ids = torch.randint(1, 49000, (classes, cfg.context_length), device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    autocast = dict(device_type=device, dtype=torch.bfloat16)
    if backend is None:
        for p in model.parameters():
            p.requires_grad_(False)
        video.requires_grad_(True)

        def frozen_step():
            with torch.autocast(**autocast):
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
        with torch.autocast(**autocast):
            loss = torch.nn.functional.cross_entropy(model(video, ids), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step.model, train_step.video = model, video
    return train_step


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    step = Step("e2e", args)
    import gc

    import torch

    from msta_fast.ops import set_backend

    size = dict(name="viclip-tiny", device="cpu", batch=2, classes=4, dim=16) if step.dry else {}
    batch = size.get("batch", BATCH)
    rows, failed = {}, []
    for backend in (None, "torch", "triton"):
        label = backend or "frozen-backbone"
        try:
            train = build_step(backend, **size)
            train()  # compile / autotune outside the timing
            peak_gb = None
            if step.dry:
                ms = step.time_ms({label: train})[label]
            else:
                from timing import gpu_ms

                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                train()
                peak_gb = torch.cuda.max_memory_allocated() / 2**30
                ms = gpu_ms(train, warmup=300, rep=2000)  # a step takes ~100s of ms: a handful of repeats
        except Exception as err:  # noqa: BLE001 - record, measure the other backends
            failed.append(label)
            step.record(kind="e2e", backend=label, error=f"{type(err).__name__}: {err}"[:500])
            continue
        finally:
            set_backend(None)
            train = None
            gc.collect()
            if not step.dry:
                torch.cuda.empty_cache()
        rows[label] = ms
        frozen = rows.get("frozen-backbone")
        step.record(kind="e2e", model=size.get("name", "viclip-b16"), dim=size.get("dim", DIM), backend=label,
                    batch=batch, frames=FRAMES, ms=ms, clips_per_s=batch / (ms * 1e-3), peak_gb=peak_gb,
                    overhead_vs_frozen=ms / frozen - 1 if frozen else None)
    parts = [f"{b} {100 * (rows[b] / rows['frozen-backbone'] - 1):+.0f}%" for b in ("torch", "triton")
             if b in rows and "frozen-backbone" in rows]
    step.headline("step time over the frozen backbone: " + ", ".join(parts)
                  + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Loaders: batch shapes, determinism across worker counts, resumption, multi-view sharding without losses,
and corrupt videos skipped, counted, reported and replaced (or raised with strict=True)."""

import logging

import numpy as np
import pytest
import torch

from msta_fast.data import VideoDecodeError, build_loader, get_protocol
from msta_fast.data.encode import write_video
from msta_fast.data.sampling import aggregate_views, drop_padding
from msta_fast.data.synthetic import generate

T, S = 4, 24


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = generate(tmp_path_factory.getbasetemp() / "synthetic_small", seed=0, train_per_class=16,
                    val_per_class=4, progress=False)
    return get_protocol("synthetic", "base2novel", seed=1, data_root=root)


def collect(loader):
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}, batches


def test_train_batches_are_deterministic_across_workers(synthetic):
    train = synthetic.train[:40]
    kwargs = dict(train=True, batch_size=16, num_frames=T, size=S, seed=5)
    single, batches = collect(build_loader(train, synthetic.data_root, **kwargs))
    assert [b["video"].shape for b in batches] == [(16, T, 3, S, S)] * 2 + [(8, T, 3, S, S)]
    assert single["video"].dtype == torch.float32 and abs(single["video"].mean().item()) < 3
    assert sorted(single["video_index"].tolist()) == list(range(40))  # every video once per epoch
    assert single["label"].tolist() == [train[i][1] for i in single["video_index"].tolist()]
    assert not single["replaced"].any()
    workers, _ = collect(build_loader(train, synthetic.data_root, **kwargs, num_workers=2))
    assert torch.equal(single["video_index"], workers["video_index"])
    assert torch.allclose(single["video"], workers["video"])
    other, _ = collect(build_loader(train, synthetic.data_root, **{**kwargs, "seed": 6}))
    assert not torch.equal(single["video_index"], other["video_index"])


def test_training_resumes_mid_epoch(synthetic):
    train = synthetic.train[:30]

    def loader():
        result = build_loader(train, synthetic.data_root, train=True, batch_size=8, num_frames=T, size=S, seed=2)
        result.set_epoch(1)
        return result

    full, _ = collect(loader())
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(2)]
    state = first.sampler.state_dict(consumed=16)
    resumed = loader()
    resumed.sampler.load_state_dict(state)
    tail, _ = collect(resumed)
    assert torch.equal(torch.cat([b["video_index"] for b in head] + [tail["video_index"]]), full["video_index"])
    assert torch.allclose(tail["video"], full["video"][16:])


def test_multi_view_eval_over_ranks_is_exact(synthetic):
    samples = synthetic.evals["novel"].samples[:10]
    kwargs = dict(train=False, batch_size=7, num_frames=T, size=S, num_clips=2, num_crops=3)
    single, _ = collect(build_loader(samples, synthetic.data_root, **kwargs))
    assert len(single["video"]) == 10 * 6  # no dropped last batch
    pairs = set(zip(single["video_index"].tolist(), single["view_index"].tolist(), strict=True))
    assert pairs == {(v, w) for v in range(10) for w in range(6)}
    per_rank = [collect(build_loader(samples, synthetic.data_root, rank=r, world_size=4, **kwargs))[0]
                for r in range(4)]
    assert len({len(r["video"]) for r in per_rank}) == 1
    for key in ("video", "video_index", "view_index", "label"):
        gathered = drop_padding(torch.cat([r[key] for r in per_rank]), 60)
        assert torch.equal(gathered, single[key])
    # temporal clips differ, and averaging them gives one row per video
    assert not torch.allclose(single["video"][0], single["video"][3])  # clip 0 vs clip 1 (square frames: crops agree)
    scores = single["video"].flatten(1)[:, :5]
    per_video = aggregate_views(scores, single["video_index"], single["view_index"], 10, 6)
    assert torch.allclose(per_video[3], scores[single["video_index"] == 3].mean(0))


@pytest.fixture()
def with_bad_videos(synthetic, tmp_path):
    root = tmp_path
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("hello\n" * 100)
    data = (synthetic.data_root / synthetic.train[0][0]).read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    short = np.full((3, S, S, 3), 100, np.uint8)
    short[:, :, :, 0] = np.array([0, 120, 240], np.uint8).reshape(3, 1, 1)
    write_video(root / "short.mp4", short)  # 3 frames, fewer than T
    good = [(str(synthetic.data_root / p), y) for p, y in synthetic.train[:6]]
    bad = [(str(root / name), 0) for name in ("missing.mp4", "empty.mp4", "text.mp4", "truncated.mp4")]
    return good[:3] + bad + [(str(root / "short.mp4"), 1)] + good[3:]


def test_corrupt_videos_are_replaced_and_reported(with_bad_videos, caplog):
    samples = with_bad_videos
    loader = build_loader(samples, None, train=True, batch_size=4, num_frames=T, size=S, seed=0)
    caplog.set_level(logging.INFO, logger="msta_fast.data")
    for _ in range(2):  # every pass reports its failures, not only the first (a warnings.warn would)
        caplog.clear()
        batches = list(loader)
        assert any("4 items were unreadable this pass" in r.getMessage() for r in caplog.records)
    assert all(b["video"].shape[1:] == (T, 3, S, S) for b in batches)
    assert sum(len(b["video"]) for b in batches) == len(samples)
    assert sorted(loader.last_epoch_failures) == [3, 4, 5, 6]
    replaced = torch.cat([b["replaced"] for b in batches])
    assert replaced.sum() == 4
    assert not {3, 4, 5, 6} & set(torch.cat([b["video_index"] for b in batches])[replaced].tolist())

    evaluated, _ = collect(build_loader(samples, None, train=False, batch_size=4, num_frames=T, size=S))
    bad = evaluated["replaced"]
    assert bad.tolist() == [i in (3, 4, 5, 6) for i in range(len(samples))]
    assert evaluated["label"].tolist() == [y for _, y in samples]
    assert torch.allclose(evaluated["video"][bad], evaluated["video"][3])  # one black clip for all
    red = evaluated["video"][7][:, 0].mean((1, 2))  # 3 frames (red 0, 120, 240) read as T=4: frames 0, 1, 1, 2
    assert torch.allclose(red[1], red[2], atol=1e-3) and red[0] < red[1] < red[3]

    with pytest.raises(VideoDecodeError, match="missing.mp4"):
        list(build_loader(samples, None, train=False, batch_size=4, num_frames=T, size=S, strict=True))


def _rank_worker(rank, world_size, init_file, samples, data_root, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # rank and world size come from the process group
        loader = build_loader(samples, data_root, train=False, batch_size=4, num_frames=T, size=S, num_crops=3)
        local, _ = collect(loader)
        rows = torch.stack([local["video_index"], local["view_index"], local["label"]], 1)
        gathered = [torch.empty_like(rows) for _ in range(world_size)]
        dist.all_gather(gathered, rows)
        if rank == 0:
            torch.save(drop_padding(torch.cat(gathered), len(loader.dataset)), out)
    finally:
        dist.destroy_process_group()


def test_two_processes_evaluate_every_view_once(synthetic, tmp_path):
    samples = synthetic.evals["base"].samples[:5]  # 15 views over 2 ranks: one padding item
    out = tmp_path / "gathered.pt"
    # fork: the children need not import torch again (spawn costs ~10 s on 2 cores)
    torch.multiprocessing.start_processes(_rank_worker, args=(2, tmp_path / "init", samples, synthetic.data_root, out),
                                          nprocs=2, start_method="fork")
    rows = torch.load(out, weights_only=True)
    assert rows[:, :2].tolist() == [[v, w] for v in range(5) for w in range(3)]
    assert rows[:, 2].tolist() == [samples[v][1] for v in range(5) for _ in range(3)]


def test_flip_probability_is_an_option(synthetic):
    """flip_prob 1 gives exactly the mirror image of flip_prob 0 with the same seed (nothing else changes)."""
    train = synthetic.train[:8]
    kwargs = dict(train=True, batch_size=8, num_frames=T, size=S, seed=3)
    runs = {p: collect(build_loader(train, synthetic.data_root, **kwargs, flip_prob=p))[0] for p in (0.0, 1.0)}
    assert torch.equal(runs[0.0]["video_index"], runs[1.0]["video_index"])
    torch.testing.assert_close(runs[1.0]["video"], runs[0.0]["video"].flip(-1))

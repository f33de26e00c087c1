"""Frame sampling, view bookkeeping and rank sharding: exact coverage, determinism, resumption."""

import numpy as np
import pytest
import torch

from msta_fast.data.sampling import (
    EvalSampler,
    TrainSampler,
    aggregate_views,
    drop_padding,
    item_seed,
    segment_indices,
    split_view,
)


@pytest.mark.parametrize("num_frames", [1, 5, 8, 9, 100, 301])
def test_one_frame_per_segment(num_frames):
    T = 8
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = segment_indices(num_frames, T, train=True, rng=rng)
        assert idx.shape == (T,) and idx.min() >= 0 and idx.max() < num_frames
        assert (np.diff(idx) >= 0).all()
        if num_frames >= T:  # each pick inside its own segment
            bounds = np.arange(T + 1) * num_frames / T
            assert ((idx >= np.floor(bounds[:-1])) & (idx < np.ceil(bounds[1:]))).all()
    test = segment_indices(num_frames, T, train=False)
    if num_frames >= T:
        centres = (np.arange(T) + 0.5) * num_frames / T
        assert np.abs(test - centres).max() <= 1
    else:  # too few frames: frames repeat, every frame used
        assert set(test.tolist()) <= set(range(num_frames)) and len(set(test.tolist())) == num_frames


def test_training_picks_vary_and_are_reproducible():
    a = [segment_indices(100, 8, train=True, rng=np.random.default_rng(s)) for s in range(5)]
    b = [segment_indices(100, 8, train=True, rng=np.random.default_rng(s)) for s in range(5)]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert len({tuple(x) for x in a}) > 1
    with pytest.raises(ValueError, match="rng"):
        segment_indices(100, 8, train=True)


def test_temporal_clips_shift_the_picks():
    clips = [segment_indices(80, 8, train=False, clip=c, num_clips=4) for c in range(4)]
    assert all((clips[i] < clips[i + 1]).all() for i in range(3))
    assert (segment_indices(80, 8, train=False, clip=0, num_clips=1) == segment_indices(80, 8, train=False)).all()
    assert split_view(7, 3) == (2, 1)


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (7, 4), (3, 4), (12, 4)])
def test_eval_sampler_covers_every_item_once(n, world):
    per_rank = [list(EvalSampler(n, rank=r, world_size=world)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # same number of batches on every rank
    gathered = torch.tensor([i for p in per_rank for i in p])
    assert drop_padding(gathered, n).tolist() == list(range(n))
    with pytest.raises(ValueError, match="missing"):
        drop_padding(gathered[: n - 1], n)


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (7, 4)])
def test_train_sampler_shards_and_shuffles(n, world):
    epochs = []
    for epoch in (0, 1):
        per_rank = []
        for r in range(world):
            s = TrainSampler(n, seed=3, rank=r, world_size=world)
            s.set_epoch(epoch)
            keys = list(s)
            assert len(keys) == len(s) == -(-n // world)
            assert all(seed == item_seed(3, epoch, i) for i, seed in keys)
            per_rank.append([i for i, _ in keys])
        flat = [i for p in per_rank for i in p]
        assert set(flat) == set(range(n))  # nothing lost; padding only repeats
        assert len(flat) - len(set(flat)) == len(flat) - n  # only the padding repeats
        epochs.append(flat)
    assert epochs[0] != epochs[1]
    again = TrainSampler(n, seed=3, rank=world - 1, world_size=world)
    again.set_epoch(1)
    assert [i for i, _ in again] == per_rank[-1]  # deterministic given (seed, epoch)


def test_train_sampler_resumes_mid_epoch():
    full = TrainSampler(50, seed=1, rank=1, world_size=2)
    full.set_epoch(2)
    expected = list(full)
    run = TrainSampler(50, seed=1, rank=1, world_size=2)
    run.set_epoch(2)
    it = iter(run)
    head = [next(it) for _ in range(9)]
    state = run.state_dict()
    assert state["consumed"] == 9 and state["epoch"] == 2
    resumed = TrainSampler(50, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert len(resumed) == len(expected) - 9
    assert head + list(resumed) == expected
    assert list(resumed) == expected  # the resume offset applies to one pass only
    done = TrainSampler(50, seed=1, rank=1, world_size=2)
    done.load_state_dict(full.state_dict(consumed=25))
    assert done.epoch == 3 and len(done) == 25
    with pytest.raises(ValueError, match="seed"):
        TrainSampler(50, seed=2, rank=1, world_size=2).load_state_dict(state)


def test_aggregate_views_ignores_padding_and_checks_completeness():
    num_videos, num_views, k = 3, 4, 5
    scores = torch.randn(num_videos * num_views, k)
    video = torch.arange(num_videos).repeat_interleave(num_views)
    view = torch.arange(num_views).repeat(num_videos)
    expected = scores.view(num_videos, num_views, k).mean(1)
    padded = (torch.cat([scores, scores[-1:] + 100]), torch.cat([video, video[-1:]]), torch.cat([view, view[-1:]]))
    assert torch.allclose(aggregate_views(*padded, num_videos, num_views), expected)
    perm = torch.randperm(len(video))
    assert torch.allclose(aggregate_views(scores[perm], video[perm], view[perm], num_videos, num_views), expected)
    with pytest.raises(ValueError, match="not evaluated, first video 1 view 2"):
        keep = ~((video == 1) & (view == 2))
        aggregate_views(scores[keep], video[keep], view[keep], num_videos, num_views)

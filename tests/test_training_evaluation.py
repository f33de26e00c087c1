"""Multi-view evaluation: view averaging, every video exactly once, top-k, HM."""

import pytest
import torch

from msta_fast.training.distributed import DistInfo
from msta_fast.training.evaluation import evaluate, harmonic_mean, topk_accuracy


class FakeDataset:
    def __init__(self, labels, num_views):
        self.samples = [(f"v{i}.mp4", y) for i, y in enumerate(labels)]
        self.num_views = num_views


class FakeLoader:
    """Batches of (video, view) items whose 'video' carries the scores directly; the last batch is short and
    the final item repeats as EvalSampler's padding does."""

    def __init__(self, scores, labels, num_views, batch_size):
        self.dataset = FakeDataset(labels, num_views)
        self.items = [(v, w) for v in range(len(labels)) for w in range(num_views)]
        self.items.append(self.items[-1])  # padding duplicate
        self.scores, self.batch_size = scores, batch_size

    def __iter__(self):
        for i in range(0, len(self.items), self.batch_size):
            chunk = self.items[i:i + self.batch_size]
            yield {"video": torch.stack([self.scores[v, w] for v, w in chunk]),
                   "video_index": torch.tensor([v for v, _ in chunk]),
                   "view_index": torch.tensor([w for _, w in chunk]),
                   "replaced": torch.tensor([v == 1 for v, _ in chunk]), "label": torch.zeros(len(chunk))}


def test_views_are_averaged_and_every_video_counted_once():
    # 3 videos x 2 views x 3 classes; video 0's views disagree, their mean picks class 2
    scores = torch.tensor([[[0.6, 0.0, 0.4], [0.0, 0.4, 0.6]],
                           [[0.1, 0.8, 0.1], [0.2, 0.7, 0.1]],
                           [[0.5, 0.3, 0.2], [0.5, 0.2, 0.3]]])
    loader = FakeLoader(scores, labels=[2, 1, 1], num_views=2, batch_size=4)
    out = evaluate(lambda s: {"text": s, "other": s.flip(-1)}, loader, DistInfo())
    torch.testing.assert_close(out["scores"], scores.mean(1))
    assert out["top1"] == pytest.approx(200 / 3) and out["top5"] == 100.0
    assert out["num_videos"] == 3 and out["replaced"] == 1
    # a second head (M2-CLIP's visual head) is scored on the same views, beside the first
    torch.testing.assert_close(out["heads"]["other"]["scores"], scores.mean(1).flip(-1))
    assert out["heads"]["other"]["top1"] == pytest.approx(100 / 3)


def test_missing_view_is_an_error():
    scores = torch.rand(2, 2, 3)
    loader = FakeLoader(scores, labels=[0, 1], num_views=2, batch_size=2)
    loader.items = loader.items[:2]  # video 1 never evaluated
    with pytest.raises(ValueError, match="not evaluated"):
        evaluate(lambda s: {"text": s}, loader, DistInfo())


def test_topk_and_harmonic_mean():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    acc = topk_accuracy(scores, torch.tensor([2, 0]), ks=(1, 2))
    assert acc == {"top1": 50.0, "top2": 100.0}
    assert topk_accuracy(scores, torch.tensor([2, 0]))["top5"] == 100.0  # k capped at the class count
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0

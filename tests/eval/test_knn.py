import pytest
import torch
import torch.nn.functional as F

from pairsmith.eval.knn import (
    extract_features,
    knn_accuracy,
    knn_predict,
    knn_scores,
    pixel_features,
)


def reference_knn(test, train, labels, k, t, c):
    """Slow per-query loop of InstDisc's weighted kNN."""
    train = F.normalize(train, dim=1)
    preds, all_scores = [], []
    for q in test:
        q = F.normalize(q, dim=0)
        sims = [(float(q @ train[j]), j) for j in range(train.shape[0])]
        sims.sort(key=lambda s: -s[0])
        scores = [0.0] * c
        for s, j in sims[:k]:
            scores[int(labels[j])] += float(torch.exp(torch.tensor(s / t)))
        all_scores.append(scores)
        preds.append(max(range(c), key=lambda i: scores[i]))
    return torch.tensor(preds), torch.tensor(all_scores)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("k", [1, 5, 200])
def test_matches_reference_loop(chunk, k):
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(17, 8, generator=g, dtype=torch.float64)
    ref_pred, ref_scores = reference_knn(test, train, labels, min(k, 60), 0.1, 4)
    scores = knn_scores(test, train, labels, k=k, temperature=0.1, num_classes=4, chunk_size=chunk)
    torch.testing.assert_close(scores.double(), ref_scores.double(), rtol=1e-4, atol=1e-6)
    assert torch.equal(knn_predict(test, train, labels, k, 0.1, 4, chunk), ref_pred)


def test_perfect_separation_gives_100():
    centres = torch.eye(5) * 10
    train = centres.repeat_interleave(20, 0) + 0.1 * torch.randn(100, 5)
    labels = torch.arange(5).repeat_interleave(20)
    test = centres.repeat_interleave(3, 0) + 0.1 * torch.randn(15, 5)
    assert knn_accuracy(test, torch.arange(5).repeat_interleave(3), train, labels, k=20) == 100.0


def test_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same D"):
        knn_scores(x, torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="train_labels"):
        knn_scores(x, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="positive"):
        knn_scores(x, x, torch.zeros(4, dtype=torch.long), k=0)
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(x, torch.zeros(3), x, torch.zeros(4, dtype=torch.long))


def test_extract_features_normalises_and_restores_mode():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(4))
    net.train()
    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    feats = extract_features(net, images, batch_size=3, mean=(0.5,), std=(0.25,))
    assert net.training
    expected = ((images.float() / 255 - 0.5) / 0.25).flatten(1)  # fresh BN in eval = identity
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pixel_features(images, (0.5,), (0.25,)), expected)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(net, images, batch_size=0)

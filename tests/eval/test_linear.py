import pytest
import torch

from pairsmith.eval.linear import linear_probe, train_linear


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_separable_data(optimizer):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 4
    y = torch.arange(4).repeat(50)
    x = centres[y] + torch.randn(200, 16, generator=g)
    yt = torch.arange(4).repeat(10)
    xt = centres[yt] + torch.randn(40, 16, generator=g)
    acc = linear_probe(x, y, xt, yt, epochs=50 if optimizer == "lbfgs" else 20, optimizer=optimizer)
    assert acc == 100.0


def test_random_labels_near_chance_on_test():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)
    xt, yt = torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)
    assert linear_probe(x, y, xt, yt, epochs=30) < 50


def test_layer_is_frozen_and_errors():
    layer, mean, std = train_linear(torch.randn(20, 3), torch.arange(20) % 2, epochs=5)
    assert not layer.weight.requires_grad and mean.shape == (3,) and std.shape == (3,)
    with pytest.raises(ValueError, match="optimizer"):
        train_linear(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), optimizer="sgd")
    with pytest.raises(ValueError, match="feature sizes"):
        linear_probe(
            torch.randn(4, 3),
            torch.zeros(4, dtype=torch.long),
            torch.randn(4, 2),
            torch.zeros(4, dtype=torch.long),
        )
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        linear_probe(
            torch.randn(4),
            torch.zeros(4, dtype=torch.long),
            torch.randn(4, 2),
            torch.zeros(4, dtype=torch.long),
        )

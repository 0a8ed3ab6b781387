"""Small models: shapes, parameter counts, determinism, and per-sample gradients under vmap."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ifkit.models import MLP, LogisticRegression, SmallCNN, count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 64), (5, 8, 8)])
def test_mlp_flattens_digits(shape):
    torch.manual_seed(0)
    assert MLP(64, (32,), n_classes=10)(torch.randn(shape)).shape == (5, 10)


def test_mlp_on_28x28_images():
    torch.manual_seed(0)
    assert MLP(784, (16, 16), n_classes=3, activation="relu")(torch.randn(4, 1, 28, 28)).shape == (4, 3)


def test_param_counts():
    assert count_params(MLP(64, (32,))) == 64 * 32 + 32 + 32 * 10 + 10  # 2,410
    assert count_params(MLP(64, (32, 16))) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert count_params(LogisticRegression(64, 10)) == 650
    assert count_params(LogisticRegression(64, 10, bias=False)) == 640
    # conv 1->16 (160) + conv 16->32 (4,640) + head 32*7*7 -> 10 (15,690)
    assert count_params(SmallCNN()) == 20_490
    assert 20_000 <= count_params(SmallCNN()) <= 50_000


def test_count_trainable_only():
    model = MLP(64, (32,))
    model.net[0].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 2410 - 64 * 32
    assert count_params(model) == 2410


@pytest.mark.parametrize("image_size", [28, 8, 10])
def test_cnn_shapes(image_size):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, n_classes=7, width=4, image_size=image_size)
    assert model(torch.randn(3, 1, image_size, image_size)).shape == (3, 7)
    assert model(torch.randn(3, image_size, image_size)).shape == (3, 7)  # channel axis added


def test_cnn_rejects_wrong_image_size():
    with pytest.raises(ValueError, match="image_size=8"):
        SmallCNN(image_size=28)(torch.randn(2, 1, 8, 8))


def test_unknown_activation():
    with pytest.raises(ValueError, match="tanh"):
        MLP(64, activation="swishy")


def test_logreg_is_mlp_without_hidden_layers():
    torch.manual_seed(0)
    lr = LogisticRegression(64, 10)
    mlp = MLP(64, hidden=(), n_classes=10)
    mlp.head.load_state_dict(lr.linear.state_dict())
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(mlp(x), lr(x))


@pytest.mark.parametrize(
    "build",
    [lambda: MLP(64, (16,)), lambda: SmallCNN(width=4, image_size=8), lambda: LogisticRegression(64, 10)],
)
def test_deterministic_given_seed(build):
    torch.manual_seed(123)
    a = build()
    torch.manual_seed(123)
    b = build()
    torch.manual_seed(124)
    c = build()
    for (_, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


@pytest.mark.parametrize("build", [lambda: MLP(64, (16,)), lambda: SmallCNN(width=4, image_size=8)])
def test_vmap_per_sample_grads_match_loop(build):
    """No BatchNorm/Dropout: vmap(grad) per-sample gradients equal a for-loop of single-example backward."""
    torch.manual_seed(0)
    model = build().double()
    X, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (5,))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, x, t):
        return F.cross_entropy(functional_call(model, p, (x[None],)), t[None])

    G = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, X, y)
    for i in range(len(X)):
        model.zero_grad()
        F.cross_entropy(model(X[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(G[k][i], p.grad)

"""Small models: shapes, parameter counts, determinism, and per-sample gradients under vmap."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ifkit.models import MLP, LogisticRegression, SmallCNN, count_params


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


# ---------------------------------------------------------------- LoRA
def test_lora_starts_as_the_base_model_and_trains_only_adapters():
    import copy

    from ifkit.models import LoRALinear, add_lora, count_params, lora_names

    torch.manual_seed(0)
    base = MLP(64, (32, 16), 10)
    model = copy.deepcopy(base)
    names = add_lora(model, targets=("net.0", "net.2"), rank=3)
    assert names == ["net.0.lora_A", "net.0.lora_B", "net.2.lora_A", "net.2.lora_B"] == lora_names(model)
    assert isinstance(model.net[0], LoRALinear) and not isinstance(model.net[4], LoRALinear)
    assert count_params(model, trainable_only=True) == 3 * (64 + 32) + 3 * (32 + 16)
    x = torch.randn(5, 64)
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)  # B = 0: unchanged outputs
    # one optimiser step moves only the adapters
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(x).pow(2).sum().backward()
    opt.step()
    model(x).pow(2).sum().backward()  # B != 0 now, so A gets a gradient too
    assert model.net[0].lora_A.grad.abs().sum() > 0
    torch.testing.assert_close(model.net[0].base.weight, base.net[0].weight, rtol=0, atol=0)


def test_lora_merged_weight_matches_the_forward():
    from ifkit.models import LoRALinear

    torch.manual_seed(1)
    layer = LoRALinear(torch.nn.Linear(6, 4), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    expected = x @ layer.merged_weight().T + layer.base.bias
    torch.testing.assert_close(layer(x), expected)


def test_lora_influence_is_over_the_adapters_only():
    from conftest import digits

    import ifkit
    from ifkit.models import add_lora

    Xtr, ytr, Xv, yv, _ = digits(40, 20, 5, dtype=torch.float32)
    torch.manual_seed(0)
    model = MLP(64, (16,), 10)
    names = add_lora(model, targets=("net.*",), rank=2)
    with torch.no_grad():
        for n in names:
            if n.endswith("lora_B"):
                model.get_parameter(n).normal_(0, 0.1)
    train, val = (Xtr, ytr), (Xv, yv)
    full = ifkit.score("graddot", model, train, val)
    explicit = ifkit.score("graddot", model, train, val, params=names)
    torch.testing.assert_close(full, explicit)  # the default is the trainable parameters = the adapters


def test_add_lora_with_no_match_names_the_linear_layers():
    from ifkit.models import add_lora

    with pytest.raises(ValueError, match="net.0"):
        add_lora(MLP(8, (4,), 2), targets=("attn.*",))

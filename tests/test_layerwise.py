"""Layer-wise factorisation of gradient inner products (ifkit/core/factors.py) against explicit gradients, and VM/FVM
through it against the generic low-rank path."""

import pytest
import torch
from tolerances import EXACT, SOLVE

import ifkit
from ifkit.core import factors as layerwise
from ifkit.core.func import make_problem, per_sample_grads
from ifkit.core.grads import stream_grads
from ifkit.curvature import val_inverse
from ifkit.models import MLP, SmallCNN


def _mlp():
    torch.manual_seed(0)
    return MLP(6, (5, 4), 3, activation="tanh").double()


def test_gram_and_norms_equal_explicit_per_sample_gradients():
    model = _mlp()
    X, y = torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 3, (7,))
    prob = make_problem(model)
    assert layerwise.supported(prob, X)
    t = layerwise.taps(prob, X, lambda out: prob.loss(out, y).unsqueeze(1))  # per-sample losses
    G = per_sample_grads(prob, X, y)  # (7, p)
    torch.testing.assert_close(t.gram(t)[:, 0, :, 0], G @ G.T, **EXACT)
    torch.testing.assert_close(t.sq_norms()[:, 0], (G * G).sum(1), **EXACT)
    # logits: the Jacobian Gram matrix J J^T
    J = torch.func.vmap(lambda x: torch.func.jacrev(lambda th: prob.forward(th, x[None])[0])(prob.theta))(X)
    tj = layerwise.taps(prob, X, lambda out: out)
    torch.testing.assert_close(tj.gram(tj).reshape(21, 21), J.reshape(21, -1) @ J.reshape(21, -1).T, **EXACT)


def test_a_parameter_subset_counts_only_its_layers():
    model = _mlp()
    X, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    prob = make_problem(model, params=["net.4.weight", "net.2.bias"])
    t = layerwise.taps(prob, X, lambda out: prob.loss(out, y).unsqueeze(1))
    G = per_sample_grads(prob, X, y)
    torch.testing.assert_close(t.gram(t)[:, 0, :, 0], G @ G.T, **EXACT)


def test_unsupported_models_fall_back():
    X = torch.rand(2, 1, 8, 8)
    assert layerwise.supported(make_problem(SmallCNN(image_size=8)), X)  # conv weights: core/conv.py
    head = make_problem(SmallCNN(image_size=8), params=["head.weight", "head.bias"])
    assert isinstance(layerwise.factored_grads(head, X, torch.tensor([0, 1])), layerwise.FactoredGrads)
    grouped = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(72, 3))
    assert not layerwise.supported(make_problem(grouped), torch.rand(2, 2, 8, 8))  # tests/test_conv_grads.py
    shared = torch.nn.Linear(4, 4)
    twice = torch.nn.Sequential(shared, torch.nn.Tanh(), shared)  # one layer applied twice
    assert not layerwise.supported(make_problem(twice), torch.randn(2, 4))


@pytest.mark.parametrize("method", ["vm", "fvm"])
def test_vm_fvm_structured_equal_the_generic_low_rank_path(method, monkeypatch):
    from conftest import digits

    Xtr, ytr, Xv, yv, _ = digits(80, 30, 20)
    torch.manual_seed(0)
    model = MLP(64, (12,), 10).double()
    opts = dict(flat_steps=10, damping=0.05)
    fast = ifkit.score(method, model, (Xtr, ytr), (Xv, yv), **opts)
    cand = ifkit.score(method, model, (Xtr, ytr), (Xv, yv), candidates=(Xtr[:5], (ytr[:5] + 1) % 10), **opts)
    monkeypatch.setattr(val_inverse.factors, "supported", lambda *a: False)
    slow = ifkit.score(method, model, (Xtr, ytr), (Xv, yv), **opts)
    slow_cand = ifkit.score(method, model, (Xtr, ytr), (Xv, yv), candidates=(Xtr[:5], (ytr[:5] + 1) % 10), **opts)
    torch.testing.assert_close(fast, slow, **SOLVE)
    torch.testing.assert_close(cand, slow_cand, **SOLVE)


@pytest.mark.parametrize("params", [None, ["net.2.bias", "net.0.weight"]])
def test_outer_product_per_sample_grads_equal_vmap(params):
    model = _mlp()
    X, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 3, (9,))
    prob = make_problem(model, params=params)
    torch.testing.assert_close(layerwise.outer_product_grads(prob, X, y), per_sample_grads(prob, X, y), **EXACT)
    chunks = list(stream_grads(prob, X, y, 4))
    assert [r for r, _ in chunks] == [slice(0, 4), slice(4, 8), slice(8, 9)]
    torch.testing.assert_close(torch.cat([G for _, G in chunks]), per_sample_grads(prob, X, y), **EXACT)


def test_a_bare_linear_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    X, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    prob = make_problem(model)
    torch.testing.assert_close(layerwise.outer_product_grads(prob, X, y), per_sample_grads(prob, X, y), **EXACT)


def test_in_place_activations_do_not_corrupt_the_factors():
    """ReLU(inplace=True) after a Linear layer overwrites its output; the taps must not see that."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(inplace=True), torch.nn.Linear(5, 3),
                                torch.nn.ReLU(inplace=True), torch.nn.Linear(3, 3)).double()
    X, y = torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 3, (7,))
    prob = make_problem(model)
    G = per_sample_grads(prob, X, y)
    torch.testing.assert_close(layerwise.outer_product_grads(prob, X, y), G, **EXACT)
    t = layerwise.taps(prob, X, lambda out: prob.loss(out, y).unsqueeze(1))
    torch.testing.assert_close(t.gram(t)[:, 0, :, 0], G @ G.T, **EXACT)


def test_a_layer_whose_output_does_not_reach_the_loss_is_an_error_not_zeros():
    """A computed-then-discarded Linear (or a torch.compile'd model, whose hooked outputs autograd cannot see)
    must not yield all-zero factors."""

    class Dead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

        def forward(self, x):
            self.b(x)  # computed, never used
            return self.a(x)

    model = Dead().double()
    X, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    prob = make_problem(model)
    assert not layerwise.supported(prob, X)  # so score() takes the vmap path, where b's gradients are zero
    with pytest.raises(RuntimeError, match="does not reach the loss"):
        layerwise.taps(prob, X, lambda out: prob.loss(out, y).unsqueeze(1))
    G = per_sample_grads(prob, X, y)
    assert (G[:, 15:] == 0).all()  # b.weight, b.bias
    torch.testing.assert_close(ifkit.score("graddot", model, (X, y), (X, y)), -(G @ G.mean(0)), **EXACT)

"""SAM, LPF-SGD and flat fine-tuning on S_val: hand computations, exact reductions to SGD, no side effects."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from tolerances import (
    NOISE_STD_ABS,
    NOISE_STD_FEW_ABS,
    ROUNDOFF,
    SCALAR_REL,
    SCALAR_ROUTE_REL,
    SCALAR_SAME_OPS_REL,
)
from torch.func import functional_call, grad

from ifkit.models import MLP
from ifkit.optim.flat_finetune import flat_finetune
from ifkit.optim.sam import LPFSGD, SAM, filter_norms, sam_sharpness
from ifkit.optim.train import train


# ------------------------------------------------------------------------------------------ tiny problems
def _tiny(seed=0):
    """A float64 tanh MLP 3 -> 4 -> 2 and 8 points: small enough to write SAM out by hand."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    return model, X, y


def _closure(model, opt, X, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        return loss

    return closure


def _two_groups(model):
    # Two parameter groups: SAM's perturbation norm must be global over both.
    return [{"params": model[0].parameters()}, {"params": model[2].parameters()}]


def _run(model, make_opt, X, y, steps=5):
    model = copy.deepcopy(model)
    opt = make_opt(model)
    for _ in range(steps):
        opt.step(_closure(model, opt, X, y))
    return model


def _sgd_run(model, X, y, steps=5, **kw):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), **kw)
    for _ in range(steps):
        _closure(model, opt, X, y)()
        opt.step()
    return model


def _equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ----------------------------------------------------------------------------------------------------- SAM
def test_sam_first_step_has_norm_rho_along_the_gradient():
    model, X, y = _tiny()
    rho = 0.07
    theta = [p.detach().clone() for p in model.parameters()]
    opt = SAM(_two_groups(model), rho=rho, lr=0.1)
    _closure(model, opt, X, y)()
    g = [p.grad.clone() for p in model.parameters()]
    g_norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
    opt.first_step()
    e = [p.detach() - t for p, t in zip(model.parameters(), theta)]
    assert torch.sqrt(sum((ei * ei).sum() for ei in e)).item() == pytest.approx(rho, rel=SCALAR_REL)
    for ei, gi in zip(e, g):
        torch.testing.assert_close(ei, rho * gi / g_norm, **ROUNDOFF)


def test_sam_step_equals_sgd_with_the_gradient_at_the_perturbed_point():
    """theta' = theta - lr * grad R(theta + rho g / ||g||), written out with torch.func."""
    model, X, y = _tiny()
    rho, lr = 0.05, 0.3
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}

    def R(params):
        return F.cross_entropy(functional_call(model, params, (X,)), y)

    g = grad(R)(theta)
    g_norm = torch.sqrt(sum((v * v).sum() for v in g.values()))
    g_up = grad(R)({k: theta[k] + rho * g[k] / g_norm for k in theta})
    expected = {k: theta[k] - lr * g_up[k] for k in theta}

    opt = SAM(_two_groups(model), rho=rho, lr=lr)
    loss = opt.step(_closure(model, opt, X, y))
    assert loss.item() == pytest.approx(R(theta).item(), rel=SCALAR_SAME_OPS_REL)  # step returns the loss at theta
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], **ROUNDOFF)


def test_sam_with_rho_zero_is_sgd_exactly():
    model, X, y = _tiny()
    kw = {"lr": 0.2, "momentum": 0.9, "weight_decay": 1e-3}
    sam = _run(model, lambda m: SAM(m.parameters(), rho=0.0, **kw), X, y)
    assert _equal(sam, _sgd_run(model, X, y, **kw))


def test_adaptive_sam_perturbation_has_scaled_norm_rho():
    """ASAM: e = rho T^2 g / ||T g|| with T = |theta|, so ||e / |theta| || = rho."""
    model, X, y = _tiny()
    theta = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), rho=0.5, adaptive=True, lr=0.1)
    _closure(model, opt, X, y)()
    opt.first_step()
    scaled = [(p.detach() - t) / t.abs() for p, t in zip(model.parameters(), theta)]
    assert torch.sqrt(sum((s * s).sum() for s in scaled)).item() == pytest.approx(0.5, rel=SCALAR_REL)
    opt.second_step()  # restores theta exactly before stepping
    assert not any(torch.equal(p, t) for p, t in zip(model.parameters(), theta))


def test_sam_needs_a_closure():
    model, _, _ = _tiny()
    with pytest.raises(ValueError, match="closure"):
        SAM(model.parameters(), lr=0.1).step()
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), rho=-1.0, lr=0.1)


# ------------------------------------------------------------------------------------------------- LPF-SGD
def test_lpf_with_sigma_zero_is_sgd_exactly():
    model, X, y = _tiny()
    kw = {"lr": 0.2, "momentum": 0.9, "weight_decay": 1e-3}
    lpf = _run(model, lambda m: LPFSGD(m.parameters(), sigma=0.0, **kw), X, y)
    assert _equal(lpf, _sgd_run(model, X, y, **kw))


def test_lpf_is_deterministic_given_seed_and_differs_from_sgd():
    model, X, y = _tiny()
    a = _run(model, lambda m: LPFSGD(m.parameters(), lr=0.2, sigma=0.05, seed=3), X, y)
    b = _run(model, lambda m: LPFSGD(m.parameters(), lr=0.2, sigma=0.05, seed=3), X, y)
    c = _run(model, lambda m: LPFSGD(m.parameters(), lr=0.2, sigma=0.05, seed=4), X, y)
    gen = torch.Generator().manual_seed(3)
    d = _run(model, lambda m: LPFSGD(m.parameters(), lr=0.2, sigma=0.05, generator=gen), X, y)
    assert _equal(a, b)
    assert _equal(a, d)
    assert not _equal(a, c)
    assert not _equal(a, _sgd_run(model, X, y, lr=0.2))


def test_lpf_step_averages_gradients_at_the_noisy_points():
    """R = ||W||^2 / 2 has grad W, so g = 1/M sum_m (W + eps_m) and W' = W - lr g, eps read in the closure."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(5, 7, dtype=torch.float64))
    W0 = W.detach().clone()
    opt = LPFSGD([W], lr=0.1, sigma=0.1, M=4, seed=0)
    eps = []

    def closure():
        eps.append(W.detach() - W0)
        loss = 0.5 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert len(eps) == 4 and all(e.abs().max() > 0 for e in eps)
    g = sum(W0 + e for e in eps) / 4
    torch.testing.assert_close(W.detach(), W0 - 0.1 * g, **ROUNDOFF)


class _Filters(torch.nn.Module):
    """A Linear-like weight with rows of very different norms, a conv weight, and a 1-D bias."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        rows = torch.randn(3, 4000, generator=g, dtype=torch.float64)
        self.W = torch.nn.Parameter(rows * torch.tensor([[1.0], [10.0], [100.0]], dtype=torch.float64))
        conv = torch.randn(4, 5, 10, 10, generator=g, dtype=torch.float64)
        self.C = torch.nn.Parameter(
            conv * torch.tensor([1.0, 3.0, 9.0, 27.0], dtype=torch.float64).view(4, 1, 1, 1)
        )
        self.b = torch.nn.Parameter(torch.randn(3000, generator=g, dtype=torch.float64))


def test_lpf_noise_std_is_sigma_times_filter_norm():
    model, sigma = _Filters(), 0.01
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = LPFSGD(model.parameters(), lr=0.1, sigma=sigma, seed=0)
    eps = {}

    def closure():
        eps.update({k: v.detach() - theta[k] for k, v in model.named_parameters()})
        loss = sum(v.sum() for v in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    # 4,000 / 500 / 3,000 draws per filter: relative standard error of a std estimate 1.1% / 3.2% / 1.3%.
    ratio_W = eps["W"].std(dim=1) / (sigma * theta["W"].norm(dim=1))  # (3,)
    ratio_C = eps["C"].flatten(1).std(dim=1) / (sigma * theta["C"].flatten(1).norm(dim=1))  # (4,)
    ratio_b = eps["b"].std() / (sigma * theta["b"].norm())
    torch.testing.assert_close(ratio_W, torch.ones_like(ratio_W), rtol=0, atol=NOISE_STD_ABS)
    torch.testing.assert_close(ratio_C, torch.ones_like(ratio_C), rtol=0, atol=NOISE_STD_FEW_ABS)
    assert abs(ratio_b.item() - 1) < NOISE_STD_ABS
    # filter_norms broadcasts one norm per output slice.
    assert torch.equal(filter_norms(theta["W"])[1], theta["W"][1].norm().expand(4000))


def test_lpf_arguments():
    model, _, _ = _tiny()
    with pytest.raises(ValueError, match="sigma"):
        LPFSGD(model.parameters(), lr=0.1, sigma=-0.1)
    with pytest.raises(ValueError, match="M="):
        LPFSGD(model.parameters(), lr=0.1, M=0)
    with pytest.raises(ValueError, match="closure"):
        LPFSGD(model.parameters(), lr=0.1).step()


# ------------------------------------------------------------------------------------------ sam_sharpness
def test_sam_sharpness_matches_hand_computation_and_leaves_the_model_alone():
    model, X, y = _tiny()
    before = copy.deepcopy(model)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}

    def R(params):
        return F.cross_entropy(functional_call(model, params, (X,)), y)

    g = grad(R)(theta)
    g_norm = torch.sqrt(sum((v * v).sum() for v in g.values()))
    expected = R({k: theta[k] + 0.1 * g[k] / g_norm for k in theta}) - R(theta)
    stats = sam_sharpness(model, (X, y), rho=0.1)
    assert stats["sharpness"] == pytest.approx(expected.item(), rel=SCALAR_ROUTE_REL)
    assert stats["grad_norm"] == pytest.approx(g_norm.item(), rel=SCALAR_REL)
    assert stats["loss"] == pytest.approx(R(theta).item(), rel=SCALAR_SAME_OPS_REL)
    assert _equal(model, before) and all(p.grad is None for p in model.parameters())
    # Restricting params= perturbs (and differentiates) only those.
    head = sam_sharpness(model, (X, y), rho=0.1, params=["2.weight", "2.bias"])
    assert head["grad_norm"] < stats["grad_norm"]


# ---------------------------------------------------------------------------------------- flat_finetune
@functools.cache
def _noisy_digits(seed=0):
    """A tanh MLP trained on 300 digits with 30% symmetric label noise, and 150 clean validation points."""
    d = load_digits()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(d.data), generator=gen)
    X = torch.tensor(d.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)[perm]
    y = torch.tensor(d.target)[perm]
    Xtr, ytr = X[:300], y[:300].clone()
    flip = torch.rand(300, generator=gen) < 0.3
    ytr[flip] = (ytr[flip] + torch.randint(1, 10, (int(flip.sum()),), generator=gen)) % 10
    torch.manual_seed(seed)
    model = train(MLP(64, (16,)), (Xtr, ytr), epochs=40, lr=1e-2, progress=False).model
    return model, (X[300:450], y[300:450])


COLUMNS = ["step", "val_loss", "val_acc", "sharpness", "grad_norm"]


@pytest.mark.parametrize("flat_optimizer", ["sgd", "sam", "lpf", "adam"])
def test_flat_finetune_decreases_validation_loss(flat_optimizer):
    model, val = _noisy_digits()
    lr = 1e-3 if flat_optimizer == "adam" else 0.01
    res = flat_finetune(model, val, flat_optimizer=flat_optimizer, flat_lr=lr, flat_steps=60, progress=False)
    traj = res.trajectory
    assert list(traj.columns) == COLUMNS
    assert traj["step"].tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert traj["val_loss"].iloc[-1] < 0.6 * traj["val_loss"].iloc[0]
    assert traj["val_loss"].is_monotonic_decreasing  # the default step size does not overshoot
    assert traj["val_acc"].iloc[-1] >= traj["val_acc"].iloc[0]


def test_flat_finetune_trajectory_rows_and_snapshots():
    model, val = _noisy_digits()
    res = flat_finetune(model, val, flat_steps=25, log_every=10, keep_snapshots=True, progress=False)
    assert res.trajectory["step"].tolist() == [0, 10, 20, 25]
    assert len(res.snapshots) == 4
    assert all(torch.equal(res.snapshots[0][k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(res.snapshots[-1][k], v) for k, v in res.model.state_dict().items())
    assert flat_finetune(model, val, flat_steps=5, progress=False).snapshots == []


@pytest.mark.parametrize("flat_optimizer", ["sgd", "sam", "lpf"])
@pytest.mark.parametrize("training", [True, False])
def test_flat_finetune_does_not_touch_the_input_model(flat_optimizer, training):
    model, val = _noisy_digits()
    model = copy.deepcopy(model)
    model.net[0].bias.requires_grad_(False)
    model.train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = flat_finetune(model, val, flat_optimizer=flat_optimizer, flat_steps=5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())
    assert res.model is not model
    assert [p.requires_grad for p in res.model.parameters()] == [True, False, True, True]
    assert torch.equal(res.model.net[0].bias, model.net[0].bias)  # frozen in the input: not tuned
    assert not torch.equal(res.model.net[0].weight, model.net[0].weight)


def test_flat_finetune_params_restricts_what_changes():
    model, val = _noisy_digits()
    res = flat_finetune(model, val, params=["net.2.weight", "net.2.bias"], flat_steps=20, progress=False)
    new, old = res.model.state_dict(), model.state_dict()
    assert torch.equal(new["net.0.weight"], old["net.0.weight"])
    assert torch.equal(new["net.0.bias"], old["net.0.bias"])
    assert not torch.equal(new["net.2.weight"], old["net.2.weight"])
    assert not torch.equal(new["net.2.bias"], old["net.2.bias"])
    assert res.trajectory["val_loss"].iloc[-1] < res.trajectory["val_loss"].iloc[0]
    assert all(p.requires_grad for p in res.model.parameters())  # flags as in the input


def test_flat_finetune_minibatches_are_deterministic():
    model, val = _noisy_digits()
    kw = {"flat_optimizer": "lpf", "batch_size": 32, "flat_steps": 12, "progress": False}
    a = flat_finetune(model, val, seed=1, **kw).model
    b = flat_finetune(model, val, seed=1, **kw).model
    c = flat_finetune(model, val, seed=2, **kw).model
    assert _equal(a, b)
    assert not _equal(a, c)


def test_flat_finetune_bad_arguments():
    model, val = _noisy_digits()
    with pytest.raises(ValueError, match="flat_optimizer"):
        flat_finetune(model, val, flat_optimizer="sharp", progress=False)
    with pytest.raises(ValueError, match="net.9.weight"):
        flat_finetune(model, val, params=["net.9.weight"], progress=False)
    with pytest.raises(ValueError, match="flat_lr"):
        flat_finetune(model, val, flat_lr=0.0, progress=False)
    with pytest.raises(TypeError, match="integer class ids"):
        flat_finetune(model, (val[0], val[1].double()), progress=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sam_finetuning_is_flatter_than_sgd(seed):
    """By the one-step measure at the same radius, after the same number of steps (8/8 seeds when measured).

    Caveat, for the notebook: the measure is ~ rho ||g|| + rho^2/2 (curvature along g), and SAM also ends at a
    lower validation loss (its gradient at theta + e is larger along sharp directions, a larger step), so
    "flatter" here is not separated from "further down".
    """
    model, val = _noisy_digits(seed)
    kw = {"rho": 0.2, "flat_steps": 60, "log_every": 60, "progress": False}
    sgd = flat_finetune(model, val, flat_optimizer="sgd", **kw).trajectory.iloc[-1]
    sam = flat_finetune(model, val, flat_optimizer="sam", **kw).trajectory.iloc[-1]
    assert sam["sharpness"] < sgd["sharpness"]

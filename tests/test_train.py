"""Training loops: accuracy on digits, bit-level determinism, checkpoints, no side effects, the L-BFGS oracle."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from tolerances import FLOAT32_BATCHED_REL, SKLEARN_ABS, WARM_START_ABS

from ifkit.models import MLP, LogisticRegression
from ifkit.optim.fullbatch import fit_full_batch, full_batch_grad_norm
from ifkit.optim.train import evaluate, train


@functools.cache
def _digits(dtype=torch.float32):
    """sklearn digits as (n, 1, 8, 8) images in [0, 1], in a fixed shuffled order."""
    d = load_digits()
    perm = torch.randperm(len(d.data), generator=torch.Generator().manual_seed(0))
    X = torch.tensor(d.data / 16.0, dtype=dtype).view(-1, 1, 8, 8)[perm]
    y = torch.tensor(d.target)[perm]
    return X, y


def _small_run(model, **kw):
    X, y = _digits()
    options = {"epochs": 4, "lr": 1e-2, "batch_size": 64, "seed": 0, "progress": False}
    return train(model, (X[:300], y[:300]), **{**options, **kw})


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_mlp_fits_digits():
    X, y = _digits()
    torch.manual_seed(0)
    res = train(
        MLP(64, (32,)), (X[:1000], y[:1000]), epochs=15, lr=1e-2, val=(X[1000:], y[1000:]), progress=False
    )
    assert res.history["train_acc"].iloc[-1] > 0.95
    assert res.history["val_acc"].iloc[-1] > 0.85
    loss, acc = evaluate(res.model, X[:1000], y[:1000])
    assert acc == res.history["train_acc"].iloc[-1]
    assert loss == pytest.approx(res.history["train_loss"].iloc[-1])


def test_history_columns():
    X, y = _digits()
    torch.manual_seed(0)
    res = _small_run(MLP(64, (8,)))
    assert list(res.history.columns) == ["epoch", "train_loss", "train_acc"]
    assert res.history["epoch"].tolist() == [1, 2, 3, 4]
    res = _small_run(MLP(64, (8,)), val=(X[300:400], y[300:400]))
    assert list(res.history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_bit_identical_given_seed(optimizer):
    torch.manual_seed(0)
    model = MLP(64, (16,))
    a = _small_run(model, optimizer=optimizer, momentum=0.9).model
    b = _small_run(model, optimizer=optimizer, momentum=0.9).model
    c = _small_run(model, optimizer=optimizer, momentum=0.9, seed=1).model
    assert _params_equal(a, b)
    assert not _params_equal(a, c)  # the seed drives the minibatch order


def test_does_not_modify_input_model():
    torch.manual_seed(0)
    model = MLP(64, (16,))
    model.net[0].bias.requires_grad_(False)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = _small_run(model, weight_decay=1e-3)
    assert res.model is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert not model.net[0].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(res.model.net[0].weight, model.net[0].weight)
    assert torch.equal(res.model.net[0].bias, model.net[0].bias)  # frozen stays frozen in the copy


def test_checkpoints_are_evenly_spaced_with_lrs():
    torch.manual_seed(0)
    model = MLP(64, (8,))
    res = _small_run(model, epochs=8, n_checkpoints=4, lr=3e-3)
    assert len(res.checkpoints) == 4
    assert [lr for _, lr in res.checkpoints] == [3e-3] * 4
    # Checkpoint j is the model after 2j epochs: training for 2j epochs from scratch reproduces it bit for bit.
    for j, (state, _) in enumerate(res.checkpoints, start=1):
        short = _small_run(model, epochs=2 * j, lr=3e-3).model
        assert all(torch.equal(state[k], v) for k, v in short.state_dict().items())
    assert all(torch.equal(res.checkpoints[-1][0][k], v) for k, v in res.model.state_dict().items())
    # Checkpoints are copies, not views of the live parameters.
    assert res.checkpoints[0][0]["net.0.weight"].data_ptr() != res.model.net[0].weight.data_ptr()
    assert _small_run(model).checkpoints == []


def test_bad_arguments():
    torch.manual_seed(0)
    model = MLP(64, (8,))
    with pytest.raises(ValueError, match="optimizer"):
        _small_run(model, optimizer="rmsprop")
    with pytest.raises(ValueError, match="n_checkpoints"):
        _small_run(model, epochs=2, n_checkpoints=3)
    with pytest.raises(ValueError, match="rows"):
        train(model, (torch.zeros(5, 64), torch.zeros(4, dtype=torch.long)), epochs=1, lr=0.1, progress=False)
    with pytest.raises(TypeError, match="train"):
        train(model, torch.zeros(5, 64), epochs=1, lr=0.1, progress=False)
    with pytest.raises(TypeError, match="integer class ids"):
        train(model, (torch.zeros(5, 64), torch.zeros(5)), epochs=1, lr=0.1, progress=False)


def test_accepts_a_dataset():
    X, y = _digits()
    torch.manual_seed(0)
    model = MLP(64, (8,))
    ds = torch.utils.data.TensorDataset(X[:300], y[:300])
    a = train(model, ds, epochs=2, lr=1e-2, batch_size=64, progress=False).model
    b = _small_run(model, epochs=2).model
    assert _params_equal(a, b)


def test_evaluate_matches_hand_computation():
    X, y = _digits()
    torch.manual_seed(0)
    model = MLP(64, (8,))
    out = model(X[:200])
    loss, acc = evaluate(model, X[:200], y[:200], batch_size=64)  # several batches
    assert loss == pytest.approx(F.cross_entropy(out, y[:200]).item(), rel=FLOAT32_BATCHED_REL)
    assert acc == pytest.approx((out.argmax(1) == y[:200]).float().mean().item())


# ------------------------------------------------------------------------------ L-BFGS (the convex oracle)
def _logreg_problem(n=300):
    X, y = _digits(torch.float64)
    return X[:n], y[:n]


@pytest.mark.parametrize("weight_decay", [1e-1, 1e-2, 1e-3])
def test_lbfgs_reaches_stationary_point(weight_decay):
    X, y = _logreg_problem()
    torch.manual_seed(0)
    model = LogisticRegression(64, 10).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fitted = fit_full_batch(model, (X, y), weight_decay)
    assert full_batch_grad_norm(fitted, (X, y), weight_decay) < 1e-8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched


def test_lbfgs_matches_sklearn_without_intercept():
    """sklearn minimises sum_i loss + 1/(2C) ||W||^2 = n * (mean loss + 1/(2Cn) ||W||^2): C = 1/(n wd)."""
    X, y = _logreg_problem()
    wd = 1e-2
    torch.manual_seed(0)
    fitted = fit_full_batch(LogisticRegression(64, 10, bias=False).double(), (X, y), wd)
    sk = SkLogisticRegression(C=1 / (len(X) * wd), fit_intercept=False, tol=1e-12, max_iter=10_000)
    sk.fit(X.flatten(1).numpy(), y.numpy())
    np.testing.assert_allclose(fitted.linear.weight.detach().numpy(), sk.coef_, atol=SKLEARN_ABS)


def test_lbfgs_warm_start_for_leave_one_out():
    X, y = _logreg_problem()
    wd = 1e-2
    torch.manual_seed(0)
    full = fit_full_batch(LogisticRegression(64, 10).double(), (X, y), wd)
    keep = torch.arange(len(X)) != 7
    cold = fit_full_batch(LogisticRegression(64, 10).double(), (X[keep], y[keep]), wd)
    warm = fit_full_batch(full, (X[keep], y[keep]), wd, init_state=full.state_dict(), max_iter=50)
    assert full_batch_grad_norm(warm, (X[keep], y[keep]), wd) < 1e-8
    for k, v in cold.state_dict().items():  # a strictly convex problem: one minimiser whatever the start
        torch.testing.assert_close(warm.state_dict()[k], v, rtol=0, atol=WARM_START_ABS)
    assert not torch.equal(warm.linear.weight, full.linear.weight)

import pytest
import torch
from tolerances import EXACT, FLOAT32

from ifkit.core import func


def _mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(dtype)


def _data(n=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def _loop_grads(model, X, y, names=None):
    rows = []
    for x, t in zip(X, y):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[None]), t[None]).backward()
        rows.append(
            torch.cat(
                [p.grad.reshape(-1) for n, p in model.named_parameters() if names is None or n in names]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_per_sample_grads_equal_autograd_loop(chunk_size):
    model, (X, y) = _mlp(), _data()
    prob = func.make_problem(model)
    G = func.per_sample_grads(prob, X, y, chunk_size=chunk_size)
    torch.testing.assert_close(G, _loop_grads(model, X, y), **EXACT)


def test_per_sample_grads_float32_and_param_subset():
    model, (X, y) = _mlp(torch.float32), _data(dtype=torch.float32)
    prob = func.make_problem(model, params=["2.weight", "2.bias"])
    assert prob.p == 4 * 3 + 3
    G = func.per_sample_grads(prob, X, y)
    torch.testing.assert_close(G, _loop_grads(model, X, y, {"2.weight", "2.bias"}), **FLOAT32)


def test_iter_grads_never_holds_more_than_chunk_size():
    model, (X, y) = _mlp(), _data(n=10)
    sizes = [G.shape[0] for _, G in func.iter_grads(func.make_problem(model), X, y, chunk_size=4)]
    assert sizes == [4, 4, 2]


def test_mean_grad_is_mean_of_per_sample():
    model, (X, y) = _mlp(), _data()
    prob = func.make_problem(model)
    torch.testing.assert_close(
        func.mean_grad(prob, X, y, chunk_size=3), func.per_sample_grads(prob, X, y).mean(0), **EXACT
    )


def _naive_hessian(model, X, y):
    prob = func.make_problem(model)
    return torch.autograd.functional.hessian(lambda th: prob.mean_loss(th, X, y), prob.theta)


def test_exact_hessian_matches_autograd_and_hvp():
    model, (X, y) = _mlp(), _data()
    prob = func.make_problem(model)
    H = func.hessian_exact(prob, X, y)
    torch.testing.assert_close(H, _naive_hessian(model, X, y), **EXACT)
    v = torch.randn(prob.p, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    hvp = func.hvp_fn(prob, X, y, chunk_size=2)
    torch.testing.assert_close(hvp(v), H @ v, **EXACT)
    V = torch.randn(prob.p, 3, dtype=torch.float64)
    torch.testing.assert_close(hvp(V), H @ V, **EXACT)


def test_ggn_matches_jacobian_formula():
    model, (X, y) = _mlp(), _data()
    prob = func.make_problem(model)
    G = torch.zeros(prob.p, prob.p, dtype=torch.float64)
    for x, t in zip(X, y):
        J = torch.autograd.functional.jacobian(lambda th: prob.forward(th, x[None])[0], prob.theta)  # (3, p)
        z = prob.forward(prob.theta, x[None])[0].detach()
        Hout = torch.autograd.functional.hessian(
            lambda o: torch.nn.functional.cross_entropy(o[None], t[None]), z
        )
        G += J.T @ Hout @ J
    G /= len(X)
    V = torch.randn(prob.p, 2, dtype=torch.float64)
    torch.testing.assert_close(func.ggn_vp_fn(prob, X, y, chunk_size=3)(V), G @ V, **EXACT)


def test_exact_hessian_refuses_over_budget_before_allocating():
    model, (X, y) = _mlp(), _data()
    with pytest.raises(MemoryError, match="if-cg"):
        func.hessian_exact(func.make_problem(model), X, y, budget_mb=1e-6)


def test_unknown_param_name_is_a_clear_error():
    with pytest.raises(ValueError, match="0.wieght.*0.weight"):
        func.make_problem(_mlp(), params=["0.wieght"])


def test_sequence_loss_is_mean_token_cross_entropy():
    logits = torch.randn(2, 4, 6)
    tokens = torch.randint(0, 6, (2, 4))
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[i], tokens[i]) for i in range(2)])
    torch.testing.assert_close(func.cross_entropy(logits, tokens), expected)


@pytest.mark.parametrize("k", [None, 3])
def test_grad_dots_equal_per_sample_grads_times_v(k):
    model, (X, y) = _mlp(), _data(n=9)
    prob = func.make_problem(model)
    V = torch.randn(prob.p, dtype=torch.float64) if k is None else torch.randn(prob.p, k, dtype=torch.float64)
    torch.testing.assert_close(func.grad_dots(prob, X, y, V, chunk_size=4), func.per_sample_grads(prob, X, y) @ V, **EXACT)


def test_sequence_cross_entropy_averages_over_the_tokens_that_count():
    from ifkit.core.func import cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)  # (n, T, V)
    targets = torch.randint(0, 7, (2, 5))
    targets[0, :3] = -100  # a prompt of 3 tokens carries no loss
    got = cross_entropy(logits, targets)
    tok = torch.nn.functional.cross_entropy(logits[0, 3:], targets[0, 3:])
    torch.testing.assert_close(got[0], tok)
    torch.testing.assert_close(got[1], torch.nn.functional.cross_entropy(logits[1], targets[1]))

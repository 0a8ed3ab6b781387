"""Per-sample gradients of Conv2d layers by unfolding (ifkit/core/conv.py, core/factors.py) and the products built
on them (core/jacobians.py), each against the naive path: a for-loop of autograd calls on tiny float64 CNNs, and
VM / ifkit.clean through the layer-wise kernel against the generic low-rank path."""

import pytest
import torch
from tolerances import CONV_GRADS, STRUCTURED_VS_GENERIC

import ifkit
from ifkit import sharpness
from ifkit.core import factors, jacobians
from ifkit.core.cache import DenseGrads, module_blocks
from ifkit.core.func import ggn_vp_fn, make_problem, per_sample_grads
from ifkit.core.grads import stream_grads
from ifkit.models import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")


class Odd(torch.nn.Module):
    """Every unfolding parameter at once: stride, dilation, rectangular kernel and padding, no bias, 2 channels
    in, an in-place ReLU after a conv, and a conv whose output feeds a Linear head through a flatten."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(2, 3, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), bias=False)
        self.b = torch.nn.Conv2d(3, 4, 2, padding=1)
        self.head = torch.nn.Linear(4 * 6 * 4, 3)

    def forward(self, x):
        h = torch.relu_(self.a(x))  # overwrites the conv's output: the taps must read a copy
        return self.head(torch.tanh(self.b(h)).flatten(1))


def _cnn():
    torch.manual_seed(0)
    return SmallCNN(width=3, image_size=8, n_classes=4).double()


def _odd():
    torch.manual_seed(1)
    return Odd().double()


CASES = {  # name -> (model, inputs, classes, params)
    "smallcnn": (_cnn, (1, 8, 8), 4, None),
    "odd": (_odd, (2, 9, 7), 3, None),
    "odd-subset": (_odd, (2, 9, 7), 3, ["b.bias", "a.weight", "head.bias"]),
    "conv-weight-only": (_cnn, (1, 8, 8), 4, ["features.3.weight"]),
}


def _case(name, n=6):
    build, shape, K, params = CASES[name]
    model = build()
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (n,), generator=gen)
    return model, X, y, make_problem(model, params=params)


def _loop_grads(prob, X, y):
    """The oracle: one autograd call per example, on the module itself."""
    named = dict(prob.model.named_parameters())
    rows = []
    for i in range(len(X)):
        loss = prob.loss(prob.model(X[i : i + 1]), y[i : i + 1]).sum()
        gs = torch.autograd.grad(loss, [named[n] for n in prob.names])
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)  # (n, p)


def _loop_jacobian(prob, X):
    """(n K, p) output Jacobian, one autograd call per example and output."""
    named = dict(prob.model.named_parameters())
    rows = []
    for i in range(len(X)):
        out = prob.model(X[i : i + 1])[0]
        for a in range(len(out)):
            gs = torch.autograd.grad(out[a], [named[n] for n in prob.names], retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_sample_conv_grads_equal_a_loop_of_autograd_calls(name):
    model, X, y, prob = _case(name)
    assert factors.supported(prob, X)
    G = _loop_grads(prob, X, y)
    F = factors.factored_grads(prob, X, y, chunk_size=4)  # two chunks, concatenated
    assert type(F) is factors.LayerGrads  # not FactoredGrads: conv blocks are not rank one
    torch.testing.assert_close(F.dense(), G, **CONV_GRADS)
    torch.testing.assert_close(per_sample_grads(prob, X, y), G, **CONV_GRADS)  # vmap agrees too
    torch.testing.assert_close(torch.cat([B for _, B in stream_grads(prob, X, y, 4)]), G, **CONV_GRADS)
    # every GradSet operation, against the same operation on the dense rows
    D = DenseGrads(G, module_blocks(prob))
    gen = torch.Generator().manual_seed(3)
    V = torch.randn(prob.p, 2, generator=gen, dtype=torch.float64)
    C = torch.randn(len(X), len(F.layers), 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(F.dots(V), G @ V, **CONV_GRADS)
    torch.testing.assert_close(F.block_dots(V), D.block_dots(V), **CONV_GRADS)
    torch.testing.assert_close(F.block_sq_norms(), D.block_sq_norms(), **CONV_GRADS)
    torch.testing.assert_close(F.sq_norms(), (G * G).sum(1), **CONV_GRADS)
    torch.testing.assert_close(F.tmatmul_blocks(C), D.tmatmul_blocks(C), **CONV_GRADS)
    torch.testing.assert_close(F.rows(slice(1, 4)).dense(), G[1:4], **CONV_GRADS)
    t = F.as_taps()
    torch.testing.assert_close(t.gram(t)[:, 0, :, 0], G @ G.T, **CONV_GRADS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_jacobian_products_and_gauss_newton_equal_the_explicit_matrices(name):
    model, X, y, prob = _case(name)
    J = _loop_jacobian(prob, X)  # (n K, p)
    n, K = len(X), J.shape[0] // len(X)
    t = factors.taps(prob, X, lambda out: out)
    torch.testing.assert_close(t.gram(t).reshape(n * K, n * K), J @ J.T, **CONV_GRADS)
    torch.testing.assert_close(t.sq_norms().reshape(-1), (J * J).sum(1), **CONV_GRADS)
    gen = torch.Generator().manual_seed(4)
    V = torch.randn(prob.p, 3, generator=gen, dtype=torch.float64)
    U = torch.randn(n, K, 3, generator=gen, dtype=torch.float64)
    where = prob.slices()
    torch.testing.assert_close(jacobians.jacobian_vp(t, where, V).reshape(n * K, 3), J @ V, **CONV_GRADS)
    torch.testing.assert_close(jacobians.jacobian_tvp(t, where, U, prob.p), J.T @ U.reshape(n * K, 3), **CONV_GRADS)
    # G v = 1/n J^T H_out J v, against the network-pass product of core/func.py, for (p,) and (p, k)
    assert jacobians.ggn_vp_fits(prob, X)
    mv = jacobians.ggn_vp(prob, X, y)
    torch.testing.assert_close(mv(V), ggn_vp_fn(prob, X, y)(V), **CONV_GRADS)
    torch.testing.assert_close(mv(V[:, 0]), ggn_vp_fn(prob, X, y)(V[:, 0]), **CONV_GRADS)


def test_unsupported_convolutions_fall_back_to_vmap():
    X = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    for conv in (torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.Conv2d(4, 4, 3, padding="same"),
                 torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")):
        model = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.LazyLinear(3)).double()
        model(X)  # materialise the lazy head
        prob = make_problem(model)
        assert not factors.supported(prob, X)
        assert not jacobians.ggn_vp_fits(prob, X)
        torch.testing.assert_close(torch.cat([B for _, B in stream_grads(prob, X, y, 2)]), _loop_grads(prob, X, y),
                                   **CONV_GRADS)


def test_wide_conv_layers_stream_in_smaller_chunks():
    model, X, y, prob = _case("smallcnn")
    per_row = factors.factor_bytes_per_row(prob)
    assert per_row == sum(L.width for L in factors._layers(prob)) * 8
    assert factors.chunk_rows(prob, budget_mb=1024) == factors.CONV_CHUNK < 4096  # conv activations: smaller
    assert factors.chunk_rows(prob, budget_mb=per_row * 4 * 10 / 2**20) == 10  # a quarter of the budget: 10 rows
    mlp = make_problem(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)).double())
    assert factors.chunk_rows(mlp, budget_mb=1024) == 4096


def _tiny_cleaning_problem():
    gen = torch.Generator().manual_seed(5)
    X = torch.rand(40, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=gen)
    Xv = torch.rand(12, 1, 8, 8, generator=gen, dtype=torch.float64)
    yv = torch.randint(0, 4, (12,), generator=gen)
    return _cnn(), (X, y), (Xv, yv)


def _generic_paths(monkeypatch):
    """What every call did before conv layers had factors: vmap gradients, the explicit low-rank GGN, GGN
    products through the network."""
    monkeypatch.setattr(factors, "supported", lambda *a: False)
    monkeypatch.setattr(sharpness, "ggn_vp_fits", lambda *a: False)


@pytest.mark.parametrize("method", ["vm", "fvm"])
def test_vm_scores_on_a_cnn_equal_the_generic_low_rank_path(method, monkeypatch):
    model, train, val = _tiny_cleaning_problem()
    opts = dict(flat_steps=5, damping=0.05)
    cand = (train[0][:5], (train[1][:5] + 1) % 4)
    fast = ifkit.score(method, model, train, val, **opts)
    fast_cand = ifkit.score(method, model, train, val, candidates=cand, **opts)
    _generic_paths(monkeypatch)
    torch.testing.assert_close(fast, ifkit.score(method, model, train, val, **opts), **STRUCTURED_VS_GENERIC)
    torch.testing.assert_close(fast_cand, ifkit.score(method, model, train, val, candidates=cand, **opts),
                               **STRUCTURED_VS_GENERIC)


def test_clean_on_a_cnn_is_unchanged_by_the_conv_factors(monkeypatch):
    model, train, val = _tiny_cleaning_problem()
    fast = ifkit.clean(model, train, val, k=8, flat_steps=5)
    _generic_paths(monkeypatch)
    slow = ifkit.clean(model, train, val, k=8, flat_steps=5)
    torch.testing.assert_close(fast.scores, slow.scores, **STRUCTURED_VS_GENERIC)
    assert torch.equal(fast.flagged, slow.flagged) and torch.equal(fast.new_labels, slow.new_labels)
    d, e = fast.diagnosis, slow.diagnosis
    for name in ("top_eig", "top_eig_tilde"):  # power iterations stop at tol=1e-4 on either product
        assert getattr(d, name) == pytest.approx(getattr(e, name), rel=1e-6)
    torch.testing.assert_close(d.grad_norm_tilde, e.grad_norm_tilde, **CONV_GRADS)
    assert d.verdict == e.verdict


@pytest.mark.parametrize("method", ["graddot", "datainf", "ekfac", "self-if"])
def test_other_methods_on_a_cnn_are_unchanged(method, monkeypatch):
    model, train, val = _tiny_cleaning_problem()
    opts = dict(curvature="ekfac") if method == "self-if" else {}
    fast = ifkit.score(method, model, train, val, **opts)
    _generic_paths(monkeypatch)
    torch.testing.assert_close(fast, ifkit.score(method, model, train, val, **opts), **STRUCTURED_VS_GENERIC)


@pytest.mark.parametrize("name", ["smallcnn", "odd-subset"])
@pytest.mark.parametrize("chunk", [40, 10])  # 10 rows: runs cut by the chunk's ends
def test_candidate_labels_of_one_input_share_its_forward_pass(name, chunk, monkeypatch):
    """Rows repeating one input with every label (what ifkit.clean scores) come from the output Jacobian of the
    distinct inputs: the same gradients as the loop, and taps sees each input once, not once per label."""
    model, X, _, prob = _case(name, n=8)
    K = CASES[name][2]
    Xc, yc = X.repeat_interleave(K, dim=0), torch.arange(K).repeat(len(X))  # (4 K, ...) each input K times
    rows = []
    real = factors.taps
    monkeypatch.setattr(factors, "taps", lambda prob, X, f: rows.append(len(X)) or real(prob, X, f))
    F = factors.factored_grads(prob, Xc, yc, chunk_size=chunk)
    torch.testing.assert_close(F.dense(), _loop_grads(prob, Xc, yc), **CONV_GRADS)
    assert len(rows) == -(-len(Xc) // chunk) and sum(rows) <= len(X) + len(rows)  # each input once (twice if cut)
    rows.clear()
    plain = factors.factored_grads(prob, Xc[::K], yc[::K])  # distinct inputs: the usual one pass of the losses
    assert rows == [len(X)]
    torch.testing.assert_close(plain.dense(), _loop_grads(prob, Xc[::K], yc[::K]), **CONV_GRADS)

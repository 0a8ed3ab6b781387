"""What users bring, through the public API: numpy arrays, Datasets and DataLoaders give the tensor call's
results; checkpoints in every accepted form give the same TracIn scores and the same choice in ifkit.clean; float
data of another dtype than the model's is cast once with one warning; BatchNorm in eval mode gives each example's
own gradient (against a for-loop of autograd calls) and in training mode is refused before any work; self-influence
runs by default on a CNN (against an oracle built from for-loops); Conv1d layers get unfolded per-sample gradients
and EK-FAC factors (against a for-loop and the exact Gauss-Newton matrix). Tiny float64 problems: seconds."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from tolerances import CONV_GRADS, EXACT, SOLVE
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SubsetRandomSampler, TensorDataset

import ifkit
from ifkit.core import factors, jacobians
from ifkit.core.func import ggn_vp_fn, make_problem, per_sample_grads
from ifkit.curvature import kfac
from ifkit.models import SmallCNN

pytestmark = pytest.mark.usefixtures("one_thread")
f64 = torch.float64
N, NV, D, K = 24, 8, 4, 3


def mlp(dtype=f64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, K)).to(dtype).eval()


def data(n: int, seed: int, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=dtype), torch.randint(0, K, (n,), generator=g)


MODEL = mlp()
X, Y = data(N, 1)
XV, YV = data(NV, 2)


def close(a, b):
    torch.testing.assert_close(a, b, **EXACT)


# -- data: numpy arrays, Datasets, DataLoaders -----------------------------------------------------------------


class PairsOfArrays(Dataset):
    """A map-style Dataset whose items are (numpy features, int label): what a hand-written Dataset returns."""

    def __init__(self, X, y):
        self.X, self.y = X.numpy(), y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


class Stream(IterableDataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __iter__(self):
        return iter(zip(self.X, self.y))


FORMS = {
    "numpy pair": lambda X, y: (X.numpy(), y.numpy()),
    "numpy inputs, tensor targets": lambda X, y: (X.numpy(), y),
    "read-only numpy": lambda X, y: (np.asarray(X.numpy()).copy().view(), y.numpy()),
    "TensorDataset": lambda X, y: TensorDataset(X, y),
    "Dataset of numpy items": PairsOfArrays,
    "DataLoader": lambda X, y: DataLoader(TensorDataset(X, y), batch_size=5),
    "shuffling DataLoader": lambda X, y: DataLoader(TensorDataset(X, y), batch_size=5, shuffle=True),
    "DataLoader dropping the last batch": lambda X, y: DataLoader(TensorDataset(X, y), batch_size=5, drop_last=True),
    "DataLoader of numpy items": lambda X, y: DataLoader(PairsOfArrays(X, y), batch_size=7, shuffle=True),
    "DataLoader of an IterableDataset": lambda X, y: DataLoader(Stream(X, y), batch_size=3),
    "DataLoader without batching": lambda X, y: DataLoader(PairsOfArrays(X, y), batch_size=None, shuffle=True),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_data_form_gives_the_tensor_result(form):
    make = FORMS[form]
    torch.manual_seed(5)  # a shuffling loader's order: any order gives the tensor call's rows
    close(ifkit.score("if-exact", MODEL, make(X, Y), make(XV, YV), damping=1.0),
          ifkit.score("if-exact", MODEL, (X, Y), (XV, YV), damping=1.0))
    close(ifkit.pairwise("graddot", MODEL, make(X, Y), make(XV, YV)), ifkit.pairwise("graddot", MODEL, (X, Y), (XV, YV)))


def test_a_dataloader_is_read_once():
    reads = []

    class Counted(TensorDataset):
        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    loader = DataLoader(Counted(X, Y), batch_size=5, shuffle=True)
    ifkit.score("graddot", MODEL, loader, (XV, YV))
    assert sorted(reads) == list(range(N))  # every example once, whatever the batch order


def test_clean_and_diagnose_take_loaders_and_arrays():
    want = ifkit.clean(MODEL, (X, Y), (XV, YV), k=4, flat_steps=5)
    got = ifkit.clean(MODEL, DataLoader(TensorDataset(X, Y), batch_size=5, shuffle=True),
                      DataLoader(TensorDataset(XV, YV), batch_size=3), k=4, flat_steps=5)
    close(got.scores, want.scores)
    assert torch.equal(got.flagged, want.flagged) and torch.equal(got.labels, want.labels)
    d = ifkit.diagnose(MODEL, (X.numpy(), Y.numpy()), (XV.numpy(), YV.numpy()), flat_steps=5)
    close(d.scores, ifkit.diagnose(MODEL, (X, Y), (XV, YV), flat_steps=5).scores)


REFUSED_DATA = [
    ("loader over a subset sampler", lambda: DataLoader(TensorDataset(X, Y), batch_size=4,
                                                        sampler=SubsetRandomSampler(range(10))), ValueError,
     "torch.utils.data.Subset(dataset, indices)"),
    ("loader sampling with replacement", lambda: DataLoader(TensorDataset(X, Y), batch_size=4,
                                                            sampler=torch.utils.data.RandomSampler(
                                                                TensorDataset(X, Y), replacement=True)),
     ValueError, "which example each row is would be unknown"),
    ("loader with a custom batch_sampler", lambda: DataLoader(TensorDataset(X, Y), batch_sampler=[[0, 1], [2, 3]]),
     ValueError, "a custom batch_sampler"),
    ("loader of dict batches", lambda: DataLoader([{"x": x, "y": t} for x, t in zip(X, Y)], batch_size=4),
     TypeError, "not an (inputs, targets) pair"),
    ("numpy strings", lambda: (np.array(["a"] * N), Y.numpy()), TypeError, "give numbers"),
    ("a bare array", lambda: X.numpy(), TypeError, "a pair (X, y) of tensors or numpy arrays"),
]


@pytest.mark.parametrize("make, kind, phrase", [c[1:] for c in REFUSED_DATA], ids=[c[0] for c in REFUSED_DATA])
def test_unusable_data_is_refused_before_any_work(make, kind, phrase, no_work):
    for call in (lambda: ifkit.score("graddot", MODEL, make(), (XV, YV)),
                 lambda: ifkit.clean(MODEL, make(), (XV, YV)),
                 lambda: ifkit.pairwise("graddot", MODEL, (X, Y), make())):
        with pytest.raises(kind, match=None) as err:
            call()
        assert phrase in str(err.value), err.value


# -- checkpoints in every form ----------------------------------------------------------------------------------


def _states(k=3):
    """k checkpoints of MODEL's architecture: modules with their own weights."""
    out = []
    for j in range(k):
        m = copy.deepcopy(MODEL)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + 0.3 * j).add_(0.05 * j)
        out.append(m)
    return out


def test_every_checkpoint_form_gives_the_same_tracin_scores():
    mods = _states()
    sds = [copy.deepcopy(m.state_dict()) for m in mods]
    lrs = [0.5, 0.2, 0.1]
    want = sum(lr * ifkit.score("graddot", m, (X, Y), (XV, YV)) for m, lr in zip(mods, lrs))
    forms = {
        "state_dicts + lrs": dict(checkpoints=sds, lrs=lrs),
        "pairs": dict(checkpoints=list(zip(sds, lrs))),
        "epoch dict (inserted out of order)": dict(checkpoints={30: (sds[2], lrs[2]), 10: (sds[0], lrs[0]),
                                                                 20: (sds[1], lrs[1])}),
        "epoch dict of state_dicts + lrs": dict(checkpoints={2: sds[1], 1: sds[0], 3: sds[2]}, lrs=lrs),
        "modules + lrs": dict(checkpoints=mods, lrs=lrs),
        "tuple of modules + lrs": dict(checkpoints=tuple(mods), lrs=lrs),
    }
    for name, opts in forms.items():
        torch.testing.assert_close(ifkit.score("tracin", MODEL, (X, Y), (XV, YV), **opts), want, **EXACT,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_clean_chooses_the_same_checkpoint_in_every_form():
    mods = _states()
    sds = [m.state_dict() for m in mods]
    kw = dict(k=3, relabel=False, flat_steps=3)
    want = ifkit.clean(MODEL, (X, Y), (XV, YV), checkpoints=sds, **kw)
    for cps in (mods, {3: sds[2], 1: sds[0], 2: sds[1]}, [(s, 0.1) for s in sds]):
        got = ifkit.clean(MODEL, (X, Y), (XV, YV), checkpoints=cps, **kw)
        assert got.checkpoint == want.checkpoint and got.checkpoint_val_loss == want.checkpoint_val_loss
        close(got.scores, want.scores)


# -- dtypes: cast once, one warning --------------------------------------------------------------------------


@pytest.mark.parametrize("model_dtype, data_dtype", [(torch.float32, f64), (f64, torch.float32)])
def test_float_data_of_another_dtype_is_cast_once_with_one_warning(model_dtype, data_dtype):
    model = mlp(model_dtype)
    tr, va = (X.to(data_dtype), Y), (XV.to(data_dtype), YV)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ifkit.score("if-exact", model, (tr[0].numpy(), tr[1].numpy()), va, damping=1.0)
    casts = [w for w in caught if "cast once to the model's" in str(w.message)]
    assert len(casts) == 1, [str(w.message) for w in caught]
    msg = str(casts[0].message)
    assert f"train inputs ({data_dtype})" in msg and f"val inputs ({data_dtype})" in msg and str(model_dtype) in msg
    assert casts[0].filename == __file__  # points at the caller's line
    want = ifkit.score("if-exact", model, (tr[0].to(model_dtype), Y), (va[0].to(model_dtype), YV), damping=1.0)
    assert got.dtype == model_dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same numbers: one cast, then the same arithmetic


def test_data_of_the_model_dtype_raises_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ifkit.score("graddot", MODEL, (X, Y), (XV, YV))


def test_soft_labels_are_cast_with_the_inputs():
    model = mlp(torch.float32)
    soft = torch.softmax(torch.randn(NV, K, dtype=f64), 1)
    with pytest.warns(UserWarning, match=r"val targets \(torch.float64\)"):
        got = ifkit.score("graddot", model, (X, Y), (XV, soft))
    want = ifkit.score("graddot", model, (X.float(), Y), (XV.float(), soft.float()))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# -- BatchNorm and Dropout -----------------------------------------------------------------------------------


def bn_cnn() -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> Linear, its running statistics moved off their initial values."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, K),
                      nn.BatchNorm1d(K)).double()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 6, 6, dtype=f64) * 2 + 1)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=f64), torch.randint(0, K, (n,), generator=g)


def _loop_grads(model, X, y):
    """The oracle: one autograd call per example on the module itself, in eval mode."""
    rows = []
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(len(X)):
        loss = nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)  # (n, p)


def test_batchnorm_in_eval_mode_gives_each_examples_own_gradient():
    model = bn_cnn()
    (Xi, yi), (Xq, yq) = _images(10, 0), _images(4, 1)
    G, Gq = _loop_grads(model, Xi, yi), _loop_grads(model, Xq, yq)
    torch.testing.assert_close(ifkit.pairwise("graddot", model, (Xi, yi), (Xq, yq)), -Gq @ G.T, **CONV_GRADS)
    torch.testing.assert_close(ifkit.score("graddot", model, (Xi, yi), (Xq, yq)), -Gq.mean(0) @ G.T, **CONV_GRADS)
    assert not model.training  # the user's model is left as it was


def _train_mode(make):
    def build():
        m = make()
        m.train()
        return m
    return build


REFUSED_MODELS = [
    ("BatchNorm in training mode", _train_mode(bn_cnn), "model.eval()"),
    ("Dropout in training mode", _train_mode(lambda: nn.Sequential(nn.Linear(D, 5), nn.Dropout(0.2),
                                                                   nn.Linear(5, K)).double()), "layer(s) [1]"),
    ("BatchNorm without running statistics", lambda: nn.Sequential(
        nn.Linear(D, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, K)).double().eval(),
     "track_running_stats=False"),
]


@pytest.mark.parametrize("make, phrase", [c[1:] for c in REFUSED_MODELS], ids=[c[0] for c in REFUSED_MODELS])
def test_models_whose_examples_interact_are_refused_before_any_work(make, phrase, no_work):
    model = make()
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    tr, va = (_images(10, 0), _images(4, 1)) if conv else ((X, Y), (XV, YV))
    for call in (lambda: ifkit.score("if-exact", model, tr, va), lambda: ifkit.pairwise("graddot", model, tr, va),
                 lambda: ifkit.diagnose(model, tr, va), lambda: ifkit.clean(model, tr, va, checkpoints=[
                     model.state_dict()])):
        with pytest.raises(ValueError) as err:
            call()
        assert phrase in str(err.value), err.value


def test_dropout_of_zero_rate_in_training_mode_is_fine():
    model = nn.Sequential(nn.Linear(D, 5), nn.Dropout(0.0), nn.Tanh(), nn.Linear(5, K)).double()
    assert model.training
    close(ifkit.score("graddot", model, (X, Y), (XV, YV)), ifkit.score("graddot", model.eval(), (X, Y), (XV, YV)))


# -- self-influence on a CNN by default ---------------------------------------------------------------------


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(width=2, image_size=8, n_classes=K).double().eval()


def _loop_ggn(model, X):
    """G = 1/n sum_i J_i^T H_out,i J_i, J_i by one autograd call per output, H_out = diag(p) - p p^T."""
    params = list(model.parameters())
    p = sum(t.numel() for t in params)
    G = torch.zeros(p, p, dtype=f64)
    for i in range(len(X)):
        out = model(X[i : i + 1])[0]
        J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[a], params, retain_graph=True)])
                         for a in range(len(out))])  # (K, p)
        q = torch.softmax(out.detach(), 0)
        G += J.T @ (torch.diag(q) - torch.outer(q, q)) @ J
    return G / len(X)


def test_self_influence_by_default_on_a_cnn_equals_the_gauss_newton_oracle():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(0)
    Xi, yi = torch.randn(30, 1, 8, 8, generator=g, dtype=f64), torch.randint(0, K, (30,), generator=g)
    Gi = _loop_grads(model, Xi, yi)  # (n, p)
    M = _loop_ggn(model, Xi) + 0.01 * torch.eye(Gi.shape[1], dtype=f64)
    want = (Gi * torch.linalg.solve(M, Gi.T).T).sum(1)
    torch.testing.assert_close(ifkit.score("self-if", model, (Xi, yi), (Xi[:5], yi[:5])), want, **SOLVE)
    # the Hessian here is indefinite: the former default ("exact") refuses, naming a fix
    with pytest.raises(ValueError, match="not positive definite"):
        ifkit.score("self-if", model, (Xi, yi), (Xi[:5], yi[:5]), curvature="exact")
    # too big for a dense matrix (a tiny budget stands in for 20,000 parameters): EK-FAC, the dense form's oracle
    prob = make_problem(model)
    F = kfac.fit(prob, Xi, yi, kind="ekfac").dense() + 0.01 * torch.eye(prob.p, dtype=f64)
    want = (Gi * torch.linalg.solve(F, Gi.T).T).sum(1)
    got = ifkit.score("self-if", model, (Xi, yi), (Xi[:5], yi[:5]), budget_mb=0.05, budget_s=60)
    torch.testing.assert_close(got, want, **SOLVE)


# -- Conv1d: per-sample gradients by unfolding, EK-FAC factors ------------------------------------------------


class Conv1dNet(nn.Module):
    """Stride, padding, dilation, no bias on one layer, an in-place activation, a Linear head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(2, 3, 3, stride=2, padding=1)
        self.b = nn.Conv1d(3, 4, 2, dilation=2, bias=False)
        self.head = nn.Linear(4 * 3, K)

    def forward(self, x):  # x: (n, 2, 9)
        return self.head(torch.tanh(self.b(torch.relu_(self.a(x)))).flatten(1))


def conv1d_case(n=7, params=None):
    torch.manual_seed(1)
    model = Conv1dNet().double().eval()
    g = torch.Generator().manual_seed(2)
    Xs, ys = torch.randn(n, 2, 9, generator=g, dtype=f64), torch.randint(0, K, (n,), generator=g)
    return model, Xs, ys, make_problem(model, params=params)


@pytest.mark.parametrize("params", [None, ["b.weight", "a.bias"]])
def test_conv1d_per_sample_grads_equal_a_loop_of_autograd_calls(params):
    model, Xs, ys, prob = conv1d_case(params=params)
    assert factors.supported(prob, Xs)  # the unfolding path, not vmap
    named = dict(model.named_parameters())
    G = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        nn.functional.cross_entropy(model(Xs[i : i + 1]), ys[i : i + 1]), [named[k] for k in prob.names])])
        for i in range(len(Xs))])
    torch.testing.assert_close(factors.factored_grads(prob, Xs, ys, chunk_size=3).dense(), G, **CONV_GRADS)
    torch.testing.assert_close(per_sample_grads(prob, Xs, ys), G, **CONV_GRADS)
    torch.testing.assert_close(jacobians.ggn_vp(prob, Xs, ys)(torch.eye(prob.p, dtype=f64)),
                               ggn_vp_fn(prob, Xs, ys)(torch.eye(prob.p, dtype=f64)), **CONV_GRADS)
    if params is None:  # and through the public API: graddot's pairwise table is -G_q G^T
        torch.testing.assert_close(ifkit.pairwise("graddot", model, (Xs, ys), (Xs[:2], ys[:2])), -G[:2] @ G.T,
                                   **CONV_GRADS)


def test_conv1d_kfac_is_exact_for_one_position_and_one_example():
    # one output position (the kernel spans the input) and one example: G_i = ds a^T, so F = S (x) A exactly
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 5), nn.Flatten()).double()
    Xs, ys = torch.randn(1, 2, 5, dtype=f64), torch.tensor([2])
    prob = make_problem(model)
    G = ggn_vp_fn(prob, Xs, ys)(torch.eye(prob.p, dtype=f64))
    for kind in ("kfac", "ekfac"):
        torch.testing.assert_close(kfac.fit(prob, Xs, ys, kind=kind).dense(), (G + G.T) / 2, **EXACT)


def test_conv1d_ekfac_against_the_exact_gauss_newton():
    model, Xs, ys, prob = conv1d_case(n=20)
    G = ggn_vp_fn(prob, Xs, ys)(torch.eye(prob.p, dtype=f64))
    G = (G + G.T) / 2
    Kf, E = kfac.fit(prob, Xs, ys, kind="kfac", chunk_size=6), kfac.fit(prob, Xs, ys, kind="ekfac", chunk_size=6)
    # EK-FAC's eigenvalues are the exact diagonal of each layer's block in the Kronecker eigenbasis: the block
    # traces are the GGN's, and it is never further from the GGN than K-FAC
    torch.testing.assert_close(torch.trace(E.dense()), torch.trace(G), **EXACT)
    assert (E.dense() - G).norm() <= (Kf.dense() - G).norm()
    # and the method: ekfac influence = -g_val^T (F + damping I)^-1 g_i with that dense F
    Gi = per_sample_grads(prob, Xs, ys)
    want = -(Gi @ torch.linalg.solve(E.dense() + 0.1 * torch.eye(prob.p, dtype=f64), Gi[:5].mean(0)))
    torch.testing.assert_close(ifkit.score("ekfac", model, (Xs, ys), (Xs[:5], ys[:5]), damping=0.1), want, **SOLVE)


def test_unsupported_convolutions_are_named():
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding="same"), nn.Flatten(), nn.Linear(27, K)).double()
    Xs, ys = torch.randn(6, 2, 9, dtype=f64), torch.randint(0, K, (6,))
    with pytest.raises(ValueError, match="zero padding given as numbers"):
        ifkit.score("ekfac", model, (Xs, ys), (Xs, ys))
    assert not factors.supported(make_problem(model), Xs)  # per-sample gradients fall back to vmap


@pytest.mark.parametrize("method", ["vm", "graddot", "datainf", "ekfac"])
def test_methods_on_a_conv1d_net_equal_the_generic_vmap_path(method, monkeypatch):
    """The unfolded Conv1d blocks feed every kernel built on per-layer factors (VM's structured curvature
    included): scores equal those of vmap gradients and network-pass products."""
    from tolerances import STRUCTURED_VS_GENERIC

    from ifkit import sharpness

    model, Xs, ys, _ = conv1d_case(n=30)
    train, val = (Xs[:22], ys[:22]), (Xs[22:], ys[22:])
    opts = dict(flat_steps=5, damping=0.05) if method == "vm" else {}
    fast = ifkit.score(method, model, train, val, **opts)
    monkeypatch.setattr(factors, "supported", lambda *a: False)
    monkeypatch.setattr(sharpness, "ggn_vp_fits", lambda *a: False)
    torch.testing.assert_close(fast, ifkit.score(method, model, train, val, **opts), **STRUCTURED_VS_GENERIC)


def test_data_given_as_options_takes_the_same_forms():
    """flat_val= / curvature_val= (VM/FVM pairwise) and candidates= accept arrays and loaders too."""
    Q = (XV[:3], YV[:3])
    kw = dict(flat_steps=3)
    want = ifkit.pairwise("vm", MODEL, (X, Y), Q, flat_val=(XV, YV), curvature_val=(XV, YV), **kw)
    got = ifkit.pairwise("vm", MODEL, (X, Y), Q, flat_val=(XV.numpy(), YV.numpy()),
                         curvature_val=DataLoader(TensorDataset(XV, YV), batch_size=3, shuffle=True), **kw)
    close(got, want)
    cand = (X[:4], (Y[:4] + 1) % K)
    close(ifkit.score("graddot", MODEL, (X, Y), (XV, YV), candidates=TensorDataset(*cand)),
          ifkit.score("graddot", MODEL, (X, Y), (XV, YV), candidates=cand))

"""Per-sample gradients as per-layer factors (layerwise.FactoredGrads) and the cross-call GradCache: every
operation against explicit gradients, every method with a cache against the same method without, and the key
(a changed weight, other data, a dead model) against stale hits."""

import gc

import pytest
import torch
from tolerances import EXACT, SOLVE

import ifkit
from ifkit.core import cache as gradcache
from ifkit.core import factors as layerwise
from ifkit.core.cache import DenseGrads, GradCache, module_blocks
from ifkit.core.func import make_problem, per_sample_grads
from ifkit.methods import REGISTRY
from ifkit.models import MLP, SmallCNN

pytestmark = pytest.mark.filterwarnings("ignore:conjugate gradient stopped")


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return MLP(6, (5, 4), 3, activation="tanh").double()


def _data(n: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("params", [None, ["net.2.bias", "net.0.weight"], ["net.4.weight", "net.4.bias"]])
@pytest.mark.parametrize("work", [None, 7])  # 7 entries: forces the row-chunked products
def test_factored_operations_equal_explicit_gradients(params, work, monkeypatch):
    if work:
        monkeypatch.setattr(layerwise, "_WORK_ENTRIES", work)
    model = _mlp()
    X, y = _data(11)
    prob = make_problem(model, params=params)
    G = per_sample_grads(prob, X, y)  # (n, p) by vmap(grad): the oracle
    F = layerwise.factored_grads(prob, X, y, chunk_size=4)
    D = DenseGrads(G, module_blocks(prob))
    V = torch.randn(prob.p, 3, dtype=torch.float64)
    C = torch.randn(len(X), len(D.blocks), 3, dtype=torch.float64)
    assert len(F.layers) == len(D.blocks)
    torch.testing.assert_close(F.dense(), G, **EXACT)
    for fn in (lambda s: s.dots(V), lambda s: s.dots(V[:, 0]), lambda s: s.block_dots(V), lambda s: s.sq_norms(),
               lambda s: s.block_sq_norms(), lambda s: s.tmatmul_blocks(C), lambda s: s.rows(slice(2, 7)).dense()):
        torch.testing.assert_close(fn(F), fn(D), **EXACT)
    torch.testing.assert_close(D.tmatmul_blocks(C), torch.cat([G[:, b].T @ C[:, j] for j, b in enumerate(D.blocks)]),
                               **EXACT)
    assert F.nbytes == len(X) * layerwise.factor_bytes_per_row(prob) or params is not None


def test_factors_are_a_small_fraction_of_dense_gradients():
    prob = make_problem(MLP(784, (128,), 10))
    assert layerwise.factor_bytes_per_row(prob) == (784 + 128 + 128 + 10) * 4  # vs 101,770 * 4 for G
    assert gradcache.estimated_bytes(prob, torch.zeros(32_000, 784)) / 2**20 < 130


def _naive_datainf(model, train, val, lam):
    """DataInf from explicit gradients, block = module, written out from Kwon et al.'s eq. (5)."""
    prob = make_problem(model)
    G = per_sample_grads(prob, *train)  # (n, p)
    g_val = per_sample_grads(prob, *val).mean(0)  # (p,)
    out = torch.empty_like(g_val)
    for b in module_blocks(prob):
        Gb, v = G[:, b], g_val[b]
        lam_b = lam if lam is not None else 0.1 * (Gb**2).sum(1).mean() / Gb.shape[1]
        coef = (Gb @ v) / (lam_b + (Gb * Gb).sum(1))
        out[b] = (v - (Gb * coef[:, None]).mean(0)) / lam_b
    return -(G @ out)


@pytest.mark.parametrize("damping", [None, 0.3])
def test_datainf_from_factors_equals_the_naive_formula_and_the_dense_path(tiny_mlp, damping, monkeypatch):
    model, train, val, _ = tiny_mlp
    opts = {} if damping is None else {"damping": damping}
    fast = ifkit.score("datainf", model, train, val, **opts)
    torch.testing.assert_close(fast, _naive_datainf(model, train, val, damping), **EXACT)
    pw = ifkit.pairwise("datainf", model, train, (val[0][:4], val[1][:4]), **opts)
    monkeypatch.setattr(layerwise, "supported", lambda *a: False)  # every path through dense (n, p) blocks
    torch.testing.assert_close(ifkit.score("datainf", model, train, val, **opts), fast, **EXACT)
    torch.testing.assert_close(ifkit.pairwise("datainf", model, train, (val[0][:4], val[1][:4]), **opts), pw,
                               **EXACT)


# The exact (p, p) curvatures (if-exact, self-if) over the output layer only: 170 of the 1,210 parameters, the same
# cache path (a params subset is part of the key) at 1/70 of the cubic solve's cost.
LAST_LAYER = ["2.weight", "2.bias"]
FAST_OPTS = {"if-cg": dict(iters=30), "if-lissa": dict(iters=30), "gex": dict(ensemble_size=2, gex_steps=5),
             "vm": dict(flat_steps=5), "fvm": dict(flat_steps=5), "self-if": dict(curvature="ggn", params=LAST_LAYER),
             "if-exact": dict(params=LAST_LAYER)}


@pytest.mark.parametrize("method", sorted(ifkit.METHODS))
def test_every_method_gives_the_same_numbers_with_a_shared_cache(tiny_mlp, method):
    model, train, val, _ = tiny_mlp
    opts = FAST_OPTS.get(method, {})
    cache = GradCache()
    plain = ifkit.score(method, model, train, val, **opts)
    first = ifkit.score(method, model, train, val, cache_grads=cache, **opts)
    again = ifkit.score(method, model, train, val, cache_grads=cache, **opts)
    torch.testing.assert_close(first, plain, **SOLVE)
    assert torch.equal(first, again)
    own = ifkit.score(method, model, train, val, cache_grads=True, **opts)  # this call only
    torch.testing.assert_close(own, plain, **SOLVE)
    if method in ("loss", "gex"):  # no gradients needed
        assert cache.hits == cache.misses == 0
    elif method not in ("ekfac",):  # ekfac's curvature pass does its own sweep; its final dots hit
        assert cache.misses >= 1 and cache.hits >= 1
    if REGISTRY[method][1] is not None:
        q = (val[0][:3], val[1][:3])
        torch.testing.assert_close(ifkit.pairwise(method, model, train, q, cache_grads=cache, **opts),
                                   ifkit.pairwise(method, model, train, q, **opts), **SOLVE)


def test_one_cache_serves_several_methods(tiny_mlp):
    model, train, val, _ = tiny_mlp
    cache = GradCache()
    for method in ("graddot", "gradcos", "tracin", "datainf", "if-cg"):
        ifkit.score(method, model, train, val, cache_grads=cache, iters=20)
    assert cache.misses == 1 and cache.hits >= 4 and len(cache) == 1, cache.stats
    assert "1 entries" in repr(cache)


def test_a_changed_weight_or_other_data_is_a_miss_never_a_stale_hit():
    model = _mlp()
    train, val = _data(30, 1), _data(8, 2)
    cache = GradCache()
    before = ifkit.score("graddot", model, train, val, cache_grads=cache)
    with torch.no_grad():
        model.net[0].weight[0, 0] += 0.5  # in place: same object, new theta
    after = ifkit.score("graddot", model, train, val, cache_grads=cache)
    assert cache.misses == 2 and cache.hits == 0
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ifkit.score("graddot", model, train, val), **EXACT)
    X, y = train
    X[0, 0] += 1.0  # the training data edited in place: its digest must change
    edited = ifkit.score("graddot", model, (X, y), val, cache_grads=cache)
    assert cache.misses == 3
    torch.testing.assert_close(edited, ifkit.score("graddot", model, (X, y), val), **EXACT)
    ifkit.score("graddot", model, (X, y), val, cache_grads=cache)
    assert cache.hits == 1


def test_a_different_model_with_equal_weights_is_a_different_key():
    a = _mlp()
    b = MLP(6, (5, 4), 3, activation="relu").double()
    b.load_state_dict(a.state_dict())  # same parameters, different function
    train, val = _data(20, 1), _data(6, 2)
    cache = GradCache()
    sa = ifkit.score("graddot", a, train, val, cache_grads=cache)
    sb = ifkit.score("graddot", b, train, val, cache_grads=cache)
    assert cache.misses == 2 and not torch.allclose(sa, sb)


def test_budget_eviction_and_sets_too_big_to_keep():
    train, val = _data(40, 1), _data(6, 2)
    per_set = gradcache.estimated_bytes(make_problem(_mlp()), train[0])
    cache = GradCache(budget_mb=1.5 * per_set / 2**20)  # room for one entry
    models = [_mlp(s) for s in range(2)]
    for m in models:
        ifkit.score("graddot", m, train, val, cache_grads=cache)
    assert len(cache) == 1 and cache.misses == 2 and cache.nbytes <= cache.budget_mb * 2**20  # LRU evicted
    tiny = GradCache(budget_mb=0.5 * per_set / 2**20)
    s = ifkit.score("graddot", models[0], train, val, cache_grads=tiny)
    assert tiny.skipped == 1 and len(tiny) == 0  # streamed instead
    torch.testing.assert_close(s, ifkit.score("graddot", models[0], train, val), **EXACT)


def test_entries_of_a_garbage_collected_model_are_dropped():
    train, val = _data(20, 1), _data(6, 2)
    cache = GradCache()
    model = _mlp()
    ifkit.score("graddot", model, train, val, cache_grads=cache)
    del model
    gc.collect()
    ifkit.score("graddot", _mlp(1), train, val, cache_grads=cache)
    assert len(cache) == 1


def test_models_without_linear_structure_cache_dense_gradients():
    torch.manual_seed(0)
    grouped = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(72, 10))
    X2, y = torch.rand(12, 2, 8, 8, dtype=torch.float64), torch.randint(0, 10, (12,))
    for model, X in ((grouped.double(), X2), (SmallCNN(image_size=8).double(), X2[:, :1])):
        val = (X[:4], y[:4])
        cache = GradCache()
        a = ifkit.score("datainf", model, (X, y), val, cache_grads=cache)
        entry = next(iter(cache._entries.values()))
        if model is grouped:  # a grouped convolution has no per-layer factors: the dense G
            assert isinstance(entry, DenseGrads) and entry.G.shape == (12, make_problem(model).p)
        else:  # Conv2d and Linear layers: per-layer blocks (core/conv.py)
            assert isinstance(entry, layerwise.LayerGrads) and entry.nbytes < 12 * make_problem(model).p * 8
        torch.testing.assert_close(a, ifkit.score("datainf", model, (X, y), val), **EXACT)


def test_bad_cache_argument_is_refused():
    model = _mlp()
    with pytest.raises(TypeError, match="GradCache"):
        ifkit.score("graddot", model, _data(), _data(), cache_grads="yes")
    with pytest.raises(ValueError, match="budget_mb"):
        GradCache(budget_mb=0)


def test_digest_follows_in_place_edits():
    t = torch.arange(6.0)
    d0 = gradcache.digest(t)
    assert gradcache.digest(t) == d0 == gradcache.digest(torch.arange(6.0))
    t[0] = 7.0
    assert gradcache.digest(t) != d0
    assert gradcache.digest(torch.arange(6.0).double()) != d0  # dtype is part of it

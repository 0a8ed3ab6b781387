"""VM/FVM: the low-rank curvature is exact, the score is its formula, the pairwise form predicts retraining."""

import copy

import pytest
import torch
from conftest import digits
from tolerances import CG, CG_DENSE_GGN, EXACT, LOO_PEARSON, LOO_SIGN_AGREEMENT, SOLVE

import ifkit
from ifkit import metrics
from ifkit.core import func
from ifkit.curvature.inverse import CurvatureOptions, dense_curvature, validation_curvature
from ifkit.curvature.val_inverse import LowRankGGN, StructuredGGN
from ifkit.optim import fullbatch


def _small_net():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 20), torch.nn.Tanh(), torch.nn.Linear(20, 4)).double()
    g = torch.Generator().manual_seed(1)
    return m, torch.randn(15, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (15,), generator=g)


def test_lowrank_ggn_inverse_equals_dense():
    m, Xv, yv = _small_net()
    prob = func.make_problem(m)
    inv = validation_curvature(prob, Xv, yv, CurvatureOptions(damping=0.05))
    assert isinstance(inv, LowRankGGN)  # 15 x 4 = 60 < p = 264
    M = dense_curvature(func.ggn_vp_fn(prob, Xv, yv), prob, 1e9)
    G = torch.randn(7, prob.p, dtype=torch.float64)
    ref = torch.linalg.solve(M + 0.05 * torch.eye(prob.p, dtype=torch.float64), G.T).T
    torch.testing.assert_close(inv.solve_rows(G), ref, **EXACT)
    torch.testing.assert_close(inv.solve(G.T), ref.T, **EXACT)
    torch.testing.assert_close(inv.quad(G), (G * ref).sum(1), **EXACT)
    structured = validation_curvature(prob, Xv, yv, CurvatureOptions(damping=0.05), structured=True)
    assert isinstance(structured, StructuredGGN) and structured.factored  # quadratic forms from layer factors
    from ifkit.core import factors

    X = torch.randn(7, 8, dtype=torch.float64)
    F = factors.factored_grads(prob, X, torch.randint(0, 4, (7,)))
    torch.testing.assert_close(structured.quad_sets(F), inv.quad(F.dense()), **EXACT)


@pytest.mark.parametrize("curvature", ["ggn", "exact", "ggn-cg"])
def test_vm_score_is_its_formula_at_theta_tilde(curvature):
    m, Xv, yv = _small_net()
    X, y = torch.randn(30, 8, dtype=torch.float64), torch.randint(0, 4, (30,))
    damping = 1.0 if curvature == "exact" else 0.1  # the Hessian of an untrained net is indefinite
    s = ifkit.score("vm", m, (X, y), (Xv, yv), flat_steps=0, damping=damping, curvature=curvature, tol=1e-12)
    prob = func.make_problem(m)
    M = func.hessian_exact(prob, Xv, yv) if curvature == "exact" else dense_curvature(func.ggn_vp_fn(prob, Xv, yv), prob, 1e9)
    G = func.per_sample_grads(prob, X, y)
    expected = (G * torch.linalg.solve(M + damping * torch.eye(prob.p, dtype=torch.float64), G.T).T).sum(1)
    torch.testing.assert_close(s, expected, **CG)


def test_vm_pairwise_predicts_retraining_at_the_validation_minimum():
    """Convex check: theta~ is the exact minimiser of R_val + wd/2 ||theta||^2; up-weighting training point z
    by eps in that objective and re-solving gives the true change of each query's loss. The first-order form
    must agree, and its error must shrink with eps (it is the derivative at eps = 0)."""
    Xtr, ytr, Xv, yv, _ = digits(40, 200, 8, seed=3)
    Xtr, ytr = Xtr[:16], ytr[:16]  # 16 training points x 2 eps refits (was 40): Pearson 0.9994, error ratio 3.7
    wd = 1e-2
    model = fullbatch.fit_full_batch(torch.nn.Linear(64, 10).double(), (Xv, yv), wd)  # theta~
    q = slice(0, 10)
    pred = ifkit.pairwise("vm", model, (Xtr, ytr), (Xv[q], yv[q]), flat_val=(Xv, yv), flat_steps=0, damping=wd,
                          curvature="exact")  # (10, 16)
    prob = func.make_problem(model)
    with torch.no_grad():
        base = prob.losses(prob.theta, Xv[q], yv[q])
    errors = []
    for eps in (1e-3, 4e-3):
        actual = torch.empty_like(pred)
        for i in range(len(Xtr)):
            X, y = torch.cat([Xv, Xtr[i : i + 1]]), torch.cat([yv, ytr[i : i + 1]])
            w = torch.cat([torch.full((len(Xv),), 1 / len(Xv), dtype=torch.float64), torch.tensor([eps]).double()])
            H = fullbatch.objective_hessian(prob, X, y, wd, weights=w)  # Newton from theta~ with the weighted Hessian
            theta = fullbatch.minimise(prob, X, y, wd, weights=w, hessian=H, tol=1e-10)
            with torch.no_grad():
                actual[:, i] = (prob.losses(theta, Xv[q], yv[q]) - base) / eps
        if eps == 1e-3:
            assert metrics.correlation(pred.ravel(), actual.ravel())["pearson"] >= LOO_PEARSON
            assert metrics.sign_agreement(pred.ravel(), actual.ravel()) >= LOO_SIGN_AGREEMENT
        errors.append((pred - actual).norm().item())
    assert errors[0] < errors[1] / 2  # O(eps) error: 4x eps gives ~4x error


def test_vm_never_modifies_the_model():
    m, Xv, yv = _small_net()
    X, y = torch.randn(30, 8, dtype=torch.float64), torch.randint(0, 4, (30,))
    before = copy.deepcopy(m.state_dict())
    ifkit.score("fvm", m, (X, y), (Xv, yv), flat_steps=5)
    ifkit.pairwise("vm", m, (X, y), (Xv, yv), flat_steps=5)
    assert all(torch.equal(before[k], m.state_dict()[k]) for k in before)


def test_fvm_is_deterministic_given_seed():
    m, Xv, yv = _small_net()
    X, y = torch.randn(30, 8, dtype=torch.float64), torch.randint(0, 4, (30,))
    a = ifkit.score("fvm", m, (X, y), (Xv, yv), flat_steps=10, seed=3)
    b = ifkit.score("fvm", m, (X, y), (Xv, yv), flat_steps=10, seed=3)
    c = ifkit.score("fvm", m, (X, y), (Xv, yv), flat_steps=10, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("method", ["vm", "fvm"])
def test_vm_with_a_custom_loss_and_non_class_targets(method):
    """Regression: VM/FVM crashed on a custom loss whose targets are not class ids (the fine-tuning log compared
    argmax(outputs) with the targets). Here: a regression net with (n, 3) float targets and a squared error."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    X, Y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    Xv, Yv = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    mse = lambda out, t: ((out - t) ** 2).sum(1)  # noqa: E731  (n,) per-sample losses
    P = ifkit.pairwise(method, m, (X, Y), (Xv[:3], Yv[:3]), loss=mse, flat_val=(Xv, Yv), flat_steps=5,
                       curvature="ggn")
    assert P.shape == (3, 20) and torch.isfinite(P).all()
    # the dense Gauss-Newton (built in column blocks) agrees with exact CG solves of the same curvature
    Q = ifkit.pairwise(method, m, (X, Y), (Xv[:3], Yv[:3]), loss=mse, flat_val=(Xv, Yv), flat_steps=5,
                       curvature="ggn-cg", iters=200, tol=1e-12)
    torch.testing.assert_close(P, Q, **CG_DENSE_GGN)


def test_vm_at_a_checkpoint_equals_vm_of_that_model(tiny_mlp):
    """checkpoint=state_dict starts the fine-tuning there; "best-val" picks the lowest-S_val-loss checkpoint
    among checkpoints=; the given model is untouched and the options are refused where they mean nothing."""
    model, train, val, flipped = tiny_mlp
    torch.manual_seed(3)
    early = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).double()
    opt = torch.optim.Adam(early.parameters(), lr=1e-2)
    for _ in range(40):  # an early-stopped stand-in: a few steps on the same noisy training set
        opt.zero_grad()
        torch.nn.functional.cross_entropy(early(train[0]), train[1]).backward()
        opt.step()
    before = copy.deepcopy(model.state_dict())
    kw = dict(flat_steps=20, seed=1)
    at_early = ifkit.score("vm", early, train, val, **kw)
    via_option = ifkit.score("vm", model, train, val, checkpoint=early.state_dict(), **kw)
    torch.testing.assert_close(via_option, at_early, **EXACT)
    assert not torch.allclose(via_option, ifkit.score("vm", model, train, val, **kw))  # it did start elsewhere
    # "best-val": the early state has the lower validation loss of the two (the memorising one overfits)
    loss = lambda m: torch.nn.functional.cross_entropy(m(val[0]), val[1]).item()  # noqa: E731
    best, other = (early, model) if loss(early) < loss(model) else (model, early)
    cps = [(other.state_dict(), 0.1), (best.state_dict(), 0.05)]  # one form: (state_dict, lr) pairs
    picked = ifkit.score("vm", model, train, val, checkpoints=cps, checkpoint="best-val", **kw)
    torch.testing.assert_close(picked, ifkit.score("vm", best, train, val, **kw), **EXACT)
    P = ifkit.pairwise("fvm", model, train, (val[0][:4], val[1][:4]), checkpoint=early.state_dict(),
                       flat_val=val, **kw)
    torch.testing.assert_close(P, ifkit.pairwise("fvm", early, train, (val[0][:4], val[1][:4]), flat_val=val, **kw),
                               **EXACT)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="checkpoints="):
        ifkit.score("vm", model, train, val, checkpoint="best-val")
    with pytest.raises(ValueError, match="'best-val'"):
        ifkit.score("vm", model, train, val, checkpoint="last")
    with pytest.raises(TypeError, match="VM/FVM"):
        ifkit.score("graddot", model, train, val, checkpoint=early.state_dict())


@pytest.mark.parametrize("method", ["vm", "fvm"])
def test_vm_summed_over_checkpoints_is_the_weighted_sum_of_vm_at_each(tiny_mlp, method):
    """checkpoint="sum": one theta~ per checkpoint, the scores summed with TracIn's weights. One bare checkpoint
    equal to the model's own state is plain VM; two are lr_1 * VM(from c_1) + lr_2 * VM(from c_2), with the
    weights from (state, lr) pairs or lrs=; bad combinations are refused with the fix."""
    model, train, val, _ = tiny_mlp
    early = copy.deepcopy(model)
    with torch.no_grad():
        for p in early.parameters():
            p.mul_(0.5)  # a second, different starting point
    queries = (val[0][:5], val[1][:5])
    kw = dict(flat_steps=15, seed=2, flat_val=val)
    plain = ifkit.pairwise(method, model, train, queries, **kw)
    one = ifkit.pairwise(method, model, train, queries, checkpoint="sum", checkpoints=[model.state_dict()], **kw)
    torch.testing.assert_close(one, plain, **EXACT)
    at_early = ifkit.pairwise(method, model, train, queries, checkpoint=early.state_dict(), **kw)
    cps = [(early.state_dict(), 0.3), (model.state_dict(), 0.7)]
    summed = ifkit.pairwise(method, model, train, queries, checkpoint="sum", checkpoints=cps, **kw)
    torch.testing.assert_close(summed, 0.3 * at_early + 0.7 * plain, **EXACT)
    via_lrs = ifkit.pairwise(method, model, train, queries, checkpoint="sum", lrs=[2.0, 1.0],
                             checkpoints=[early.state_dict(), model.state_dict()], **kw)
    torch.testing.assert_close(via_lrs, 2.0 * at_early + plain, **EXACT)
    s = ifkit.score(method, model, train, val, checkpoint="sum", checkpoints=cps, flat_steps=15, seed=2)
    by_parts = 0.3 * ifkit.score(method, early, train, val, flat_steps=15, seed=2) + 0.7 * ifkit.score(
        method, model, train, val, flat_steps=15, seed=2)
    torch.testing.assert_close(s, by_parts, **EXACT)
    with pytest.raises(ValueError, match="checkpoints="):
        ifkit.pairwise(method, model, train, queries, checkpoint="sum", **kw)
    with pytest.raises(ValueError, match="one learning rate per checkpoint"):
        ifkit.pairwise(method, model, train, queries, checkpoint="sum", checkpoints=cps, lrs=[1.0], **kw)
    with pytest.raises(ValueError, match="one theta~ per checkpoint"):
        ifkit.flat_point(method, model, train, val, checkpoint="sum", checkpoints=cps)


@pytest.mark.parametrize("method", ["vm", "fvm"])
def test_datainf_validation_curvature_is_datainf_at_theta_tilde(tiny_mlp, method):
    """curvature="datainf" inverts the VALIDATION curvature at theta~ with DataInf's closed form: the same numbers
    as fine-tuning a copy by hand and calling the "datainf" method with S_val as its training set (the formula is
    symmetric in the two gradients), for the default (Kwon et al.'s) damping and an explicit one."""
    from ifkit.methods.flat import FVM_DEFAULTS, VM_DEFAULTS
    from ifkit.optim.flat_finetune import flat_finetune

    model, train, val, _ = tiny_mlp
    queries = (val[0][:6], val[1][:6])
    defaults = {**(VM_DEFAULTS if method == "vm" else FVM_DEFAULTS), "flat_steps": 30}
    tuned = flat_finetune(model, val, seed=0, progress=False, **defaults).model.eval()
    for extra in ({}, {"damping": 0.05}):
        P = ifkit.pairwise(method, model, train, queries, flat_val=val, curvature="datainf", flat_steps=30, **extra)
        by_hand = ifkit.pairwise("datainf", tuned, val, train, **extra)[:, :6].T  # (6, n_train)
        torch.testing.assert_close(P, by_hand, **SOLVE)
    s = ifkit.score(method, model, train, val, curvature="datainf", flat_steps=30)
    assert s.shape == (len(train[0]),) and (s > 0).all()  # g^T M^-1 g with M positive definite
    # curvature_val: theta~ still from flat_val, the curvature (and here the queries) from other targets
    other = (val[0], (val[1] + 1) % int(val[1].max() + 1))
    P = ifkit.pairwise(method, model, train, (other[0][:6], other[1][:6]), flat_val=val, curvature_val=other,
                       curvature="datainf", flat_steps=30)
    by_hand = ifkit.pairwise("datainf", tuned, other, train)[:, :6].T
    torch.testing.assert_close(P, by_hand, **SOLVE)
    same = ifkit.pairwise(method, model, train, queries, flat_val=val, curvature_val=val, curvature="datainf",
                          flat_steps=30)
    torch.testing.assert_close(same, ifkit.pairwise(method, model, train, queries, flat_val=val,
                                                    curvature="datainf", flat_steps=30))


def test_theta_tilde_is_a_value_scored_at_without_fine_tuning_again(tiny_mlp):
    """ifkit.flat_point returns theta~; score / pairwise / diagnose at=point give the numbers of the calls that
    fine-tune themselves, and at= refuses what cannot apply."""
    model, train, val, _ = tiny_mlp
    queries = (val[0][:4], val[1][:4])
    point = ifkit.flat_point("fvm", model, train, val, flat_steps=10)
    assert isinstance(point, ifkit.FlatPoint) and point.start is not point.model
    assert torch.equal(ifkit.score("fvm", model, train, val, at=point),
                       ifkit.score("fvm", model, train, val, flat_steps=10))
    assert torch.equal(ifkit.pairwise("fvm", model, train, queries, at=point),
                       ifkit.pairwise("fvm", model, train, queries, flat_val=val, flat_steps=10))
    assert torch.equal(ifkit.score("fvm", model, train, val, at=point, damping=0.1),
                       ifkit.score("fvm", model, train, val, flat_steps=10, damping=0.1))  # its own curvature
    d = ifkit.diagnose(model, train, val, "fvm", at=point)
    assert d.point is point and torch.equal(d.scores, ifkit.diagnose(model, train, val, "fvm", flat_steps=10).scores)
    with pytest.raises(TypeError, match="'graddot' does not use it"):
        ifkit.score("graddot", model, train, val, at=point)
    with pytest.raises(ValueError, match="fine-tuned for 'fvm', not 'vm'"):
        ifkit.score("vm", model, train, val, at=point)
    with pytest.raises(TypeError, match="drop flat_steps="):
        ifkit.score("fvm", model, train, val, at=point, flat_steps=5)
    with pytest.raises(TypeError, match="FlatPoint"):
        ifkit.score("fvm", model, train, val, at=point.model)
    with pytest.raises(ValueError, match="params="):
        ifkit.score("fvm", model, train, val, at=point, params=["2.weight"])

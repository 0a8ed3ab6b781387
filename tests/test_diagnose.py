"""ifkit.diagnose: the verdict on a memorising model vs its early-stopped checkpoint, and that every number it
reports is the one the underlying function gives."""

import math

import pytest
import torch
from scipy.stats import spearmanr
from tolerances import DIAGNOSE_REL

import ifkit
from ifkit.diagnosis import LEVELS, Diagnosis
from ifkit.experiments import detection as D
from ifkit.optim.sam import sam_sharpness
from ifkit.optim.train import evaluate
from ifkit.sharpness import top_hessian_eigenvalue


@pytest.fixture(scope="module")
def setting():
    # digits 600 train (30% symmetric noise) / 200 val, a 64-64-10 tanh MLP trained 150 epochs: ~3 s
    return D.prepare(D.FAST, "symmetric", 0.3, seed=0)


@pytest.fixture(scope="module")
def memo(setting):
    return ifkit.diagnose(setting.run.model, setting.train, setting.val, "fvm")


@pytest.fixture(scope="module")
def early(setting):
    return ifkit.diagnose(setting.early, setting.train, setting.val, "fvm")


def test_early_stopped_model_is_trusted(early):
    assert early.verdict == "trust", str(early)
    assert early.acc_gap < 0 and early.sam_sharpness_tilde < early.sam_sharpness


def test_memorising_model_is_not_trusted(memo):
    assert memo.verdict in ("caution", "do not trust"), str(memo)
    assert memo.train_acc > 0.95 and memo.acc_gap > 0.2
    assert any("memorises" in r and "early-stopped" in r for r in memo.reasons)
    assert memo.levels[0] == memo.verdict  # worst reason first


def test_scores_are_ifkit_score_with_the_same_options(setting):
    opts = dict(damping=0.05, flat_steps=30, seed=1)
    d = ifkit.diagnose(setting.early, setting.train, setting.val, "vm", **opts)
    torch.testing.assert_close(d.scores, ifkit.score("vm", setting.early, setting.train, setting.val, **opts),
                               rtol=0, atol=0)


def test_numbers_are_what_the_underlying_functions_give(setting, early):
    m, tilde, val = setting.early, early.model_tilde, setting.val
    assert early.sam_sharpness == pytest.approx(sam_sharpness(m, val, 0.05)["sharpness"], rel=DIAGNOSE_REL)
    assert early.sam_sharpness_tilde == pytest.approx(sam_sharpness(tilde, val, 0.05)["sharpness"], rel=DIAGNOSE_REL)
    assert early.top_eig == pytest.approx(top_hessian_eigenvalue(m, val, curvature="ggn", tol=1e-4), rel=DIAGNOSE_REL)
    assert (early.val_loss, early.val_acc) == pytest.approx(evaluate(m, *val))
    assert (early.val_loss_tilde, early.val_acc_tilde) == pytest.approx(evaluate(tilde, *val))
    assert early.train_acc - early.val_acc == pytest.approx(early.acc_gap)
    assert early.val_loss_tilde < early.val_loss  # theta~ is lower on S_val
    loss_tilde = ifkit.score("loss", tilde, setting.train, val)
    torch.testing.assert_close(early.loss_tilde, loss_tilde)
    assert early.spearman_loss_tilde == pytest.approx(spearmanr(early.scores, loss_tilde)[0])
    th = torch.cat([p.detach().flatten() for p in m.parameters()])
    tt = torch.cat([p.detach().flatten() for p in tilde.parameters()])
    assert early.rel_move == pytest.approx(float((tt - th).norm() / th.norm()), rel=DIAGNOSE_REL)
    # the caller's model is untouched, theta~ is a different model
    assert evaluate(m, *val) == pytest.approx((early.val_loss, early.val_acc))


def test_report_prints_and_serialises(memo):
    text = str(memo)
    assert memo.verdict.upper() in text and "SAM sharpness" in text and "Spearman" in text
    assert memo.verdict in memo._repr_html_()
    row = memo.as_dict()
    assert row["verdict"] in LEVELS and row["reasons"] == memo.reasons
    assert not any(isinstance(v, (torch.Tensor, torch.nn.Module)) for v in row.values())
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    assert isinstance(memo, Diagnosis) and memo.seconds < 10


def test_bad_input_is_refused_before_any_work(setting):
    m, tr, va = setting.early, setting.train, setting.val
    with pytest.raises(ValueError, match="method must be 'vm' or 'fvm'"):
        ifkit.diagnose(m, tr, va, "if-cg")
    with pytest.raises(TypeError, match="did you mean 'damping'"):
        ifkit.diagnose(m, tr, va, damp=0.1)
    Xv = va[0].clone()
    Xv[3] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        ifkit.diagnose(m, tr, (Xv, va[1]))
    with pytest.raises(ValueError, match="candidates"):
        ifkit.diagnose(m, tr, va, candidates=tr)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ifkit.diagnose("model", tr, va)

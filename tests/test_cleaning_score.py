"""ifkit.clean(score=...): each score is the number its name says (read off the report's one fine-tuning), the
names are checked with a suggestion, earlier calls keep their meaning, and the relabelling's lower bound is a
true lower bound of every candidate's VM score, so skipping candidates never changes a label."""

import dataclasses

import pytest
import torch

import ifkit
from ifkit import api, cleaning
from ifkit.cleaning import DEFAULT_SCORE, SCORES
from ifkit.core.grads import GradEngine
from ifkit.data.splits import make_split
from ifkit.experiments import detection as D
from ifkit.models import SmallCNN
from ifkit.optim.train import train


@pytest.fixture(scope="module")
def cnn():
    # digits 300 train (30% symmetric noise) / 60 val, a width-4 SmallCNN on 8x8 images, 20 epochs: ~2 s
    sp = make_split("digits", n_train=300, n_val=60, n_test=10, noise="symmetric", rate=0.3, seed=0)
    torch.manual_seed(0)
    fit = train(SmallCNN(1, 10, width=4, image_size=8), sp.train, epochs=20, lr=3e-3, batch_size=64,
                n_checkpoints=4, progress=False)
    return sp, fit


def test_each_score_is_what_its_name_says(tiny_mlp):
    model, train_, val, _ = tiny_mlp
    out = {s: ifkit.clean(model, train_, val, score=s, k=8, flat_steps=10) for s in SCORES}
    d = out["vm"].diagnosis
    torch.testing.assert_close(out["vm"].scores, ifkit.score("vm", model, train_, val, flat_steps=10), rtol=0, atol=0)
    torch.testing.assert_close(out["fvm"].scores, ifkit.score("fvm", model, train_, val, flat_steps=10), rtol=0,
                               atol=0)
    torch.testing.assert_close(out["loss"].scores, ifkit.score("loss", d.model_tilde, train_, val))
    torch.testing.assert_close(out["loss-checkpoint"].scores, ifkit.score("loss", model, train_, val))
    torch.testing.assert_close(out["gradnorm"].scores, d.grad_norm_tilde, rtol=0, atol=0)
    X = train_[0]
    with torch.no_grad():  # loss scores relabel by the argmax: their candidate of lowest cross-entropy
        assert torch.equal(out["loss"].new_labels, d.model_tilde(X[out["loss"].flagged]).argmax(1))
        assert torch.equal(out["loss-checkpoint"].new_labels, model(X[out["loss-checkpoint"].flagged]).argmax(1))
    for s, c in out.items():
        assert c.score == s and SCORES[s] in str(c) and torch.equal(c.flagged, torch.topk(c.scores, 8).indices)
    assert out["loss"].relabel_path == "argmax" and out["vm"].relabel_path in ("bound", "candidates")


def test_default_and_earlier_calls(tiny_mlp):
    model, train_, val, _ = tiny_mlp
    assert ifkit.clean(model, train_, val, k=3, flat_steps=5, relabel=False).score == DEFAULT_SCORE
    old = ifkit.clean(model, train_, val, "fvm", k=3, flat_steps=5, relabel=False)  # as earlier releases
    assert (old.method, old.score) == ("fvm", "fvm")
    tuned = ifkit.clean(model, train_, val, "fvm", score="loss", k=3, flat_steps=5, relabel=False)
    torch.testing.assert_close(tuned.scores, old.diagnosis.loss_tilde)  # the loss at FVM's theta~


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(score="los"), ValueError, "did you mean 'loss'"),
    (dict(score="grad-norm"), ValueError, "did you mean 'gradnorm'"),
    (dict(method="vn"), ValueError, "did you mean 'vm'"),
    (dict(method="vm", score="fvm"), ValueError, "pass one of them"),
])
def test_bad_scores_name_the_fix(tiny_mlp, kwargs, err, match):
    model, train_, val, _ = tiny_mlp
    with pytest.raises(err, match=match):
        ifkit.clean(model, train_, val, **kwargs)


def _candidates(eng, point, X, method="vm"):
    k = len(X)
    Xc, yc = X.repeat_interleave(10, dim=0), torch.arange(10).repeat(k)
    opt = dataclasses.replace(eng.opt, candidates=(Xc, yc), at=point)
    return api.run(method, GradEngine(eng.model, eng.X, eng.y, eng.Xv, eng.yv, opt)).view(k, 10)


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_relabel_bound_is_a_lower_bound_and_changes_no_label(which, cnn, monkeypatch):
    if which == "mlp":  # the detection experiment's FAST digits setting: a 64-64-10 tanh MLP, 600 / 200 points
        s = D.prepare(D.FAST, "symmetric", 0.3, seed=0)
        model, train_, val, checkpoints = s.run.model, s.train, s.val, s.run.checkpoints
    else:
        sp, fit = cnn
        model, train_, val, checkpoints = fit.model, sp.train, sp.val, fit.checkpoints
    k = int(0.3 * len(train_[1]))  # the noise rate, flat_steps at its default (the bound is looser at fewer steps)
    fast = ifkit.clean(model, train_, val, k=k, score="vm", checkpoints=checkpoints)
    eng = api.prepare(fast.model, train_, val, api.resolve("vm", {}), "val")
    X = eng.X[fast.flagged]
    bounds = cleaning._lower_bounds(eng, fast.diagnosis.point, X)
    assert bounds is not None
    low, top = bounds
    exact = _candidates(eng, fast.diagnosis.point, X)  # (k, C) every candidate scored
    assert bool((low <= exact).all()), (low - exact).max()  # the bound holds for all k x C candidates
    ruled_out = (low > exact[torch.arange(len(X)), top][:, None]).double().mean().item()
    assert ruled_out > 0.1, ruled_out  # and rules candidates out: measured 0.23 (MLP) / 0.24 (CNN) of k x C
    assert torch.equal(fast.new_labels, exact.argmin(1))  # the labels of scoring every candidate
    assert fast.relabel_path == "bound"
    monkeypatch.setattr(cleaning, "_lower_bounds", lambda *a: None)  # off: every candidate scored
    slow = ifkit.clean(model, train_, val, k=k, score="vm", checkpoints=checkpoints)
    assert torch.equal(slow.new_labels, fast.new_labels) and slow.relabel_path == "candidates"


def test_no_bound_where_it_cannot_be_proved(tiny_mlp):
    model, train_, val, _ = tiny_mlp
    c = ifkit.clean(model, train_, val, k=5, score="vm", flat_steps=5, relabel=False)
    # CG curvature (no Woodbury kernel to bound): every candidate is scored
    eng = api.prepare(model, train_, val, api.resolve("vm", dict(flat_steps=5, curvature="ggn-cg")), "val")
    point = ifkit.flat_point("vm", model, train_, val, flat_steps=5, curvature="ggn-cg")
    assert cleaning._lower_bounds(eng, point, eng.X[c.flagged]) is None

"""Input validation (ifkit/api.py): every error names the problem and the fix; same seed -> same scores."""

import pytest
import torch
from tolerances import SUBSET

import ifkit


@pytest.fixture
def small():
    """A 4-3 linear classifier (float64) with 12 training and 5 validation points."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    X, Xv = torch.randn(12, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    y, yv = torch.arange(12) % 3, torch.arange(5) % 3
    return model, (X, y), (Xv, yv)


def test_nonfinite_train_inputs_report_rows(small):
    model, (X, y), val = small
    X = X.clone()
    X[2, 0], X[7, 3] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"train inputs contain NaN/inf in 2 row\(s\), indices \[2, 7\].*drop or impute"):
        ifkit.score("graddot", model, (X, y), val)


def test_nonfinite_query_inputs_report_at_most_ten_rows(small):
    model, train, (Xv, yv) = small
    Xq = torch.full((15, 4), float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"queries inputs .* 15 row\(s\), indices \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.\]"):
        ifkit.pairwise("graddot", model, train, (Xq, torch.zeros(15, dtype=torch.long)))


def test_nonfinite_val_inputs(small):
    model, train, (Xv, yv) = small
    Xv = Xv.clone()
    Xv[4] = float("-inf")
    with pytest.raises(ValueError, match=r"val inputs contain NaN/inf .* indices \[4\]"):
        ifkit.score("if-exact", model, train, (Xv, yv))


def test_nonfinite_parameters_are_named(small):
    model, train, val = small
    model.bias.data[1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite .*parameters.*\['bias'\].*retrain"):
        ifkit.score("loss", model, train, val)


class Sqrt(torch.nn.Module):
    def forward(self, x):
        return x.sqrt()


def test_nonfinite_training_losses_report_indices(small):
    model, (X, y), val = small
    model = torch.nn.Sequential(Sqrt(), model)
    X, Xv = X.abs(), val[0].abs()
    X[[0, 5, 10], 1] = -1.0  # finite inputs, NaN outputs: sqrt of a negative number
    with pytest.raises(ValueError, match=r"training losses at theta are NaN/inf for 3 training point\(s\), indices "
                                         r"\[0, 5, 10\]: .*check the input scale"):
        ifkit.score("loss", model, (X, y), (Xv, val[1]), chunk_size=4)  # indices are global across chunks


def test_labels_outside_model_outputs(small):
    model, (X, y), val = small
    y = y.clone()
    y[3], y[8] = 3, -1
    with pytest.raises(ValueError, match=r"train targets hold class indices \[-1, 3\] outside \[0, 3\) -- the model has 3 "
                                         r"outputs \(rows \[3, 8\]\): relabel to 0\.\.2"):
        ifkit.score("graddot", model, (X, y), val)


def test_val_labels_outside_model_outputs(small):
    model, train, (Xv, yv) = small
    with pytest.raises(ValueError, match=r"val targets hold class indices \[7\] outside \[0, 3\)"):
        ifkit.score("graddot", model, train, (Xv, torch.full_like(yv, 7)))


def test_float_targets_suggest_long_or_custom_loss(small):
    model, (X, y), val = small
    with pytest.raises(TypeError, match=r"train targets are torch\.float.*integer class indices.*y\.long\(\).*loss="):
        ifkit.score("graddot", model, (X, y.double()), val)


def test_soft_label_probabilities_are_accepted(small):
    model, (X, y), (Xv, yv) = small
    P = torch.nn.functional.one_hot(y, 3).double()
    assert ifkit.score("loss", model, (X, P), (Xv, yv)).shape == (12,)


def test_custom_loss_skips_class_checks(small):
    model, (X, _), val = small
    mse = lambda out, t: ((out - t) ** 2).sum(1)  # noqa: E731
    T = torch.randn(12, 3, dtype=torch.float64)
    Xv = val[0]
    assert ifkit.score("graddot", model, (X, T), (Xv, torch.randn(5, 3, dtype=torch.float64)), loss=mse).shape == (12,)


def test_device_mismatch_suggests_device_option(small):
    _, train, val = small
    model = torch.nn.Linear(4, 3, device="meta").double()
    with pytest.raises(ValueError, match=r"device mismatch: model parameters are on meta but train inputs are on cpu: "
                                         r"pass device='meta'.*\.to\('meta'\)"):
        ifkit.score("graddot", model, train, val)


def test_empty_params_list(small):
    model, train, val = small
    with pytest.raises(ValueError, match=r"params= is an empty list.*named_parameters.*params=None"):
        ifkit.score("graddot", model, train, val, params=[])


def test_params_string_instead_of_list(small):
    model, train, val = small
    with pytest.raises(TypeError, match=r"params= takes a list .* use params=\['weight'\]"):
        ifkit.score("graddot", model, train, val, params="weight")


def test_valid_inputs_pass_and_model_untouched(small):
    model, train, val = small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ifkit.score("if-exact", model, train, val)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# Small option values so that every method runs in well under a second on a tiny MLP.
FAST = dict(flat_steps=5, ensemble_size=2, gex_steps=5, iters=20, damping=1.0, seed=3)


@pytest.mark.filterwarnings("ignore:conjugate gradient stopped")
@pytest.mark.parametrize("method", ifkit.METHODS)
def test_same_seed_gives_bit_identical_scores(small, method):
    _, train, val = small
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    a = ifkit.score(method, model, train, val, **FAST)
    torch.manual_seed(123)  # the global RNG must not matter: only seed= does
    b = ifkit.score(method, model, train, val, **FAST)
    assert torch.equal(a, b), f"{method}: two runs with the same seed differ"


@pytest.mark.filterwarnings("ignore:conjugate gradient stopped")
@pytest.mark.parametrize("method", [m for m in ifkit.METHODS if m not in ("loss", "self-if")])
def test_same_seed_gives_bit_identical_pairwise(small, method):
    _, train, val = small
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    extra = {"flat_val": val} if method in ("vm", "fvm") else {}
    a = ifkit.pairwise(method, model, train, val, **FAST, **extra)
    torch.manual_seed(123)
    b = ifkit.pairwise(method, model, train, val, **FAST, **extra)
    assert a.shape == (5, 12) and torch.equal(a, b), f"{method}: two pairwise runs with the same seed differ"


PAIRWISE = [m for m in ifkit.METHODS if m not in ("loss", "self-if")]  # self-influence has no pairwise form


class _WithBuffer(torch.nn.Module):
    """A tiny MLP with a buffer and one frozen parameter: everything a method could accidentally change."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        self.register_buffer("shift", torch.full((4,), 0.1))
        self.net[0].bias.requires_grad_(False)

    def forward(self, x):
        return self.net(x - self.shift)


@pytest.mark.filterwarnings("ignore:conjugate gradient stopped")
@pytest.mark.parametrize("method", ifkit.METHODS)
def test_no_method_modifies_the_model(small, method):
    """Parameters, buffers, requires_grad flags, train/eval mode and .grad are exactly as before, for both entry
    points of every method."""
    _, train, val = small
    torch.manual_seed(2)
    model = _WithBuffer().double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    ifkit.score(method, model, train, val, **FAST)
    if method in PAIRWISE:
        ifkit.pairwise(method, model, train, val, **FAST, **({"flat_val": val} if method in ("vm", "fvm") else {}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), method
    assert flags == [p.requires_grad for p in model.parameters()] and model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:conjugate gradient stopped")
@pytest.mark.parametrize("method", ifkit.METHODS)
def test_candidates_score_other_points_with_the_training_curvature(small, method):
    """candidates= a subset of the training points gives exactly their entries of the full score (every
    training-set quantity still comes from train=); relabeled candidates get their own scores."""
    _, train, val = small
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    full = ifkit.score(method, model, train, val, **FAST)
    idx = torch.tensor([0, 5, 7])
    sub = ifkit.score(method, model, train, val, candidates=(train[0][idx], train[1][idx]), **FAST)
    torch.testing.assert_close(sub, full[idx], **SUBSET)
    other = ifkit.score(method, model, train, val, candidates=(train[0][idx], (train[1][idx] + 1) % 3), **FAST)
    assert other.shape == (3,) and not torch.equal(other, sub)


def test_candidates_are_validated(small):
    model, train, val = small
    with pytest.raises(ValueError, match="candidates"):
        ifkit.score("graddot", model, train, val, candidates=(train[0][:2], torch.tensor([0, 7])))


def test_options_are_parsed_into_the_method_family_type():
    """ifkit.score's keyword arguments become the method's frozen options type; explicit names are a field."""
    import dataclasses

    from ifkit import api
    from ifkit.methods import REGISTRY
    from ifkit.methods.flat import FVMOptions, VMOptions
    from ifkit.methods.influence import InfluenceOptions

    opt = api.resolve("datainf", {"damping": 0.1, "flat_steps": 5})
    assert type(opt) is InfluenceOptions and opt.damping == 0.1 and opt.gave("damping") and not opt.gave("seed")
    assert opt.given == frozenset({"damping", "flat_steps"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.damping = 1.0
    assert api.resolve("vm", {}).flat_optimizer == "sgd" and api.resolve("fvm", {}).flat_optimizer == "lpf"
    assert api.resolve("fvm", {"flat_steps": None, "rho": None}).flat_steps == FVMOptions().flat_steps == 100
    assert isinstance(api.resolve("vm", {}), VMOptions)
    assert all(set(api.DEFAULTS) >= {f.name for f in dataclasses.fields(m.Options)} - {"given"}
               for m in REGISTRY.values())

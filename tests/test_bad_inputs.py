"""The error contract, through the public API only: every bad input gets a ValueError / TypeError that names the
problem and the fix, BEFORE any work; inputs that are legitimately fine give the right answer.

Each refused case asserts the error type and a phrase of its message. "Before any work" is checked, not
assumed: while a refused call runs, every method of the registry (and ifkit.clean's diagnose / checkpoint
choice, diagnose's fine-tuning) is replaced by a function that fails the test, so a refusal that comes from inside a method, after
gradients were taken, fails here. The problems are tiny (a 4-5-3 float64 MLP, 20 training points): the file runs
in seconds.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import ifkit
from ifkit.cli import main
from ifkit.models import LogisticRegression

N, NV, D, K = 20, 8, 4, 3


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, K)).double().eval()


def tiny_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64), torch.randint(0, K, (n,), generator=g)


MODEL = tiny_model()
X, Y = tiny_data(N, 1)
XV, YV = tiny_data(NV, 2)
OTHER = nn.Linear(D, K).double()  # another architecture: its state_dict does not fit MODEL
WIDER = nn.Sequential(nn.Linear(D, 7), nn.Tanh(), nn.Linear(7, K)).double()  # same keys, other shapes


def score(method="graddot", train=None, val=None, model=None, **options):
    return ifkit.score(method, MODEL if model is None else model, (X, Y) if train is None else train,
                       (XV, YV) if val is None else val, **options)


def pairwise(method="graddot", train=None, queries=None, **options):
    return ifkit.pairwise(method, MODEL, (X, Y) if train is None else train, (XV, YV) if queries is None else queries,
                          **options)


def clean(**kw):
    return ifkit.clean(MODEL, (X, Y), (XV, YV), **kw)


def diagnose(**options):
    return ifkit.diagnose(MODEL, (X, Y), (XV, YV), "vm", **options)


def soft(rows: int, fill=None) -> torch.Tensor:
    p = torch.softmax(torch.randn(rows, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 1)
    return p if fill is None else fill(p)


def nan_at(t: torch.Tensor, i: int) -> torch.Tensor:
    t = t.clone()
    t[i] = float("nan")
    return t


def state(**change) -> OrderedDict:
    s = OrderedDict((k, v.clone()) for k, v in MODEL.state_dict().items())
    s.update(change)
    return s


# (id, call, error type, phrase of the message)
REFUSED = [
    # -- method and option names --
    ("unknown method", lambda: score("if-cgg"), ValueError, "did you mean 'if-cg'"),
    ("method not a string", lambda: score(3), ValueError, "unknown method 3"),
    ("unknown option", lambda: score(dampng=0.1), TypeError, "did you mean 'damping'"),
    ("pairwise of a self-influence method", lambda: pairwise("loss"), ValueError, "no pairwise form"),
    ("checkpoint= for graddot", lambda: score(checkpoint=MODEL.state_dict()), TypeError, "does not use it"),
    ("cache_grads a string", lambda: score(cache_grads="yes"), TypeError, "cache_grads must be"),
    ("unknown loss", lambda: score(loss="mse"), ValueError, "unknown loss 'mse'"),
    # -- iters: 0 and negatives used to run zero steps or the default --
    ("iters=-5 lissa", lambda: score("if-lissa", iters=-5), ValueError, "iters=-5 is below 1"),
    ("iters=0 lissa", lambda: score("if-lissa", iters=0), ValueError, "0 does not mean 'the default'"),
    ("iters=0 cg", lambda: score("if-cg", iters=0), ValueError, "or iters=None for the default"),
    ("iters float", lambda: score("if-cg", iters=1e3), TypeError, "iters= takes an integer"),
    ("iters bool", lambda: score("if-cg", iters=True), TypeError, "iters= takes an integer"),
    ("iters string", lambda: score("if-cg", iters="100"), TypeError, "iters= takes an integer"),
    ("iters=-1 pairwise", lambda: pairwise("if-cg", iters=-1), ValueError, "iters=-1 is below 1"),
    # -- chunk_size --
    ("chunk_size=0", lambda: score(chunk_size=0), ValueError, "chunk_size=0 is below 1"),
    ("chunk_size=-3", lambda: score(chunk_size=-3), ValueError, "chunk_size=-3 is below 1"),
    ("chunk_size float", lambda: score(chunk_size=2.5), TypeError, "chunk_size= takes an integer"),
    ("chunk_size=0 pairwise", lambda: pairwise(chunk_size=0), ValueError, "pass an integer >= 1"),
    # -- other counts --
    ("flat_steps=-1", lambda: score("vm", flat_steps=-1), ValueError, "flat_steps=-1 is below 0"),
    ("ensemble_size=0", lambda: score("gex", ensemble_size=0), ValueError, "ensemble_size=0 is below 1"),
    ("gex_steps=-2", lambda: score("gex", gex_steps=-2), ValueError, "gex_steps=-2 is below 1"),
    # -- damping --
    ("damping=inf", lambda: score("if-exact", damping=math.inf), ValueError, "finite number >= 0"),
    ("damping=-0.1", lambda: score("if-cg", damping=-0.1), ValueError, "damping"),
    ("damping=nan", lambda: score("if-cg", damping=math.nan), ValueError, "damping"),
    ("damping=inf vm", lambda: score("vm", damping=math.inf), ValueError, "finite number >= 0"),
    ("damping string", lambda: score("if-cg", damping="big"), ValueError, "damping"),
    # -- seed --
    ("seed string", lambda: score("if-lissa", seed="abc"), TypeError, "seed= takes an integer"),
    ("seed float", lambda: score("gex", seed=1.5), TypeError, "seed= takes an integer"),
    ("seed negative", lambda: score("gex", seed=-1), ValueError, "outside [0, 2**32)"),
    ("seed too big", lambda: score("vm", seed=2**40), ValueError, "outside [0, 2**32)"),
    ("seed None", lambda: score("if-lissa", seed=None), TypeError, "seed= takes an integer"),
    # -- device --
    ("device not a device", lambda: score(device="gpu"), ValueError, "is not a device name"),
    ("device of a wrong type", lambda: score(device=1.5), TypeError, "device= takes a torch.device"),
    ("device a bool", lambda: score(device=True), TypeError, "device= takes a torch.device"),
    # -- budgets --
    ("budget_s=0", lambda: score(budget_s=0), ValueError, "budget_s=0"),
    ("budget_s string", lambda: score(budget_s="1h"), ValueError, "number of seconds > 0"),
    ("over budget_s", lambda: score("if-exact", damping=1.0, budget_s=1e-9), ValueError, "pass budget_s="),
    ("over budget_s pairwise", lambda: pairwise("if-cg", budget_s=1e-9), ValueError, "would take about"),
    # -- checkpoints --
    ("tracin checkpoints=[]", lambda: score("tracin", checkpoints=[]), ValueError, "checkpoints=[] holds no"),
    ("tracin checkpoints=[] pairwise", lambda: pairwise("tracin", checkpoints=[]), ValueError, "checkpoints=None"),
    ("tracin one state_dict", lambda: score("tracin", checkpoints=MODEL.state_dict()), TypeError,
     "wrap a single one"),
    ("tracin other architecture", lambda: score("tracin", checkpoints=[OTHER.state_dict()]), ValueError,
     "does not fit the model: missing keys"),
    ("tracin other layer sizes", lambda: score("tracin", checkpoints=[WIDER.state_dict()]), ValueError,
     "different architecture"),
    ("tracin NaN checkpoint", lambda: score("tracin", checkpoints=[state(**{"0.bias": torch.full((5,), math.nan,
                                                                                   dtype=torch.float64)})]),
     ValueError, "holds NaN/inf"),
    ("tracin not a state_dict", lambda: score("tracin", checkpoints=["epoch3.pt"]), TypeError, "not a state_dict"),
    ("tracin mixed forms", lambda: score("tracin", checkpoints=[state(), (state(), 0.1)]), TypeError,
     "mixes state_dicts (checkpoints[0]), (state_dict, lr) pairs (checkpoints[1]): give one form"),
    ("tracin modules and state_dicts", lambda: score("tracin", checkpoints={1: MODEL, 2: state()}), TypeError,
     "a dict {epoch: state_dict}"),
    ("tracin dict of unsortable keys", lambda: score("tracin", checkpoints={1: state(), "b": state()}), TypeError,
     "keys cannot be sorted"),
    ("tracin a module", lambda: score("tracin", checkpoints=MODEL), TypeError, "wrap a single one"),
    ("tracin module of another architecture", lambda: score("tracin", checkpoints=[OTHER]), ValueError,
     "does not fit the model"),
    ("clean mixed checkpoints", lambda: clean(checkpoints=[MODEL, state()]), TypeError, "give one form"),
    ("tracin lrs length", lambda: score("tracin", checkpoints=[state(), state()], lrs=[1.0]), ValueError,
     "one learning rate per checkpoint"),
    ("tracin bad lr in pair", lambda: score("tracin", checkpoints=[(state(), "x")]), TypeError, "whose lr is"),
    ("vm checkpoint other architecture", lambda: score("vm", checkpoint=OTHER.state_dict()), ValueError,
     "checkpoint does not fit the model"),
    ("vm checkpoint a string", lambda: score("vm", checkpoint="best"), ValueError, "'best-val'"),
    ("vm best-val mismatched checkpoints", lambda: score("vm", checkpoint="best-val",
                                                         checkpoints=[OTHER.state_dict()]), ValueError,
     "checkpoints[0] does not fit"),
    # -- params --
    ("params a string", lambda: score(params="2.weight"), TypeError, "use params=['2.weight']"),
    ("params empty", lambda: score(params=[]), ValueError, "params= is an empty list"),
    # -- inputs --
    ("uint8 images", lambda: score(train=((X * 40).to(torch.uint8), Y), val=((XV * 40).to(torch.uint8), YV)),
     TypeError, "X.to(torch.float64) / 255"),
    ("int64 inputs", lambda: score(train=(X.long(), Y), val=(XV.long(), YV)), TypeError, "convert them"),
    ("uint8 train, float val", lambda: score(train=((X * 40).to(torch.uint8), Y)), TypeError,
     "convert both the same way"),
    ("wrong feature count", lambda: score(train=(torch.randn(N, 5, dtype=torch.float64), Y),
                                          val=(torch.randn(NV, 5, dtype=torch.float64), YV)),
     ValueError, "first Linear layer takes 4 features"),
    ("val feature count differs", lambda: score(val=(torch.randn(NV, 6, dtype=torch.float64), YV)), ValueError,
     "every set must have the same features"),
    ("queries feature count differs", lambda: pairwise(queries=(torch.randn(3, 2, dtype=torch.float64), YV[:3])),
     ValueError, "queries inputs are (2,) per example"),
    ("images for an MLP", lambda: score(train=(torch.randn(N, 1, 2, 2, dtype=torch.float64), Y),
                                        val=(torch.randn(NV, 1, 2, 2, dtype=torch.float64), YV)),
     ValueError, "cannot run on one train input of shape (1, 2, 2)"),
    ("NaN train input", lambda: score(train=(nan_at(X, 7), Y)), ValueError, "indices [7]"),
    ("inf val input", lambda: score(val=(XV.index_fill(0, torch.tensor([2]), math.inf), YV)), ValueError,
     "val inputs contain NaN/inf"),
    ("NaN query", lambda: pairwise(queries=(nan_at(XV, 1), YV)), ValueError, "queries inputs contain NaN/inf"),
    ("lengths differ", lambda: score(train=(X, Y[:-1])), ValueError, "inputs have 20 rows but targets have 19"),
    ("empty val", lambda: score(val=(XV[:0], YV[:0])), ValueError, "val is empty"),
    ("train not a pair", lambda: score(train=X), TypeError, "must be a pair (inputs, targets)"),
    ("model not a module", lambda: ifkit.score("graddot", lambda x: x, (X, Y), (XV, YV)), TypeError,
     "model must be a torch.nn.Module"),
    ("NaN parameters", lambda: score(model=nan_params()), ValueError, "non-finite (NaN/inf) parameters"),
    # -- targets --
    ("labels out of range", lambda: score(train=(X, Y + K)), ValueError, "outside [0, 3)"),
    ("negative labels", lambda: score(val=(XV, YV - 5)), ValueError, "relabel to 0..2"),
    ("float labels", lambda: score(train=(X, Y.double())), TypeError, "y.long()"),
    ("bool labels", lambda: score(train=(X, Y > 0)), TypeError, "integer class indices"),
    ("labels (n, 1)", lambda: score(train=(X, Y[:, None])), ValueError, "pass train=(X, y.view(-1))"),
    ("labels (n, 1, 1)", lambda: score(train=(X, Y[:, None, None])), ValueError, "cross-entropy wants (20,)"),
    ("val labels (n, 1)", lambda: score(val=(XV, YV[:, None])), ValueError, "pass val=(X, y.view(-1))"),
    ("query labels (n, 1) pairwise", lambda: pairwise(queries=(XV, YV[:, None])), ValueError,
     "pass queries=(X, y.view(-1))"),
    ("negative soft labels", lambda: score(val=(XV, soft(NV, lambda p: -p))), ValueError, "negative entries"),
    ("soft labels not summing to 1", lambda: score(val=(XV, soft(NV, lambda p: 2 * p))), ValueError,
     "do not sum to 1"),
    ("NaN soft labels", lambda: score(val=(XV, soft(NV, lambda p: nan_at(p, 0)))), ValueError, "NaN/inf"),
    ("custom loss without reduction", lambda: score(loss=lambda o, t: nn.functional.cross_entropy(o, t)),
     ValueError, "reduction='none'"),
    ("custom loss that fails", lambda: score(loss=lambda o, t: o @ t), ValueError, "loss= fails on one train example"),
    # -- candidates --
    ("candidates feature count", lambda: score(candidates=(torch.randn(2, 6, dtype=torch.float64), Y[:2])),
     ValueError, "candidates inputs are (6,) per example"),
    ("candidates labels out of range", lambda: score(candidates=(X[:2], Y[:2] + K)), ValueError,
     "candidates targets hold class indices"),
    # -- diagnose: the same checks --
    ("diagnose iters=0", lambda: diagnose(iters=0), ValueError, "iters=0 is below 1"),
    ("diagnose seed string", lambda: diagnose(seed="0"), TypeError, "seed= takes an integer"),
    ("diagnose other method", lambda: ifkit.diagnose(MODEL, (X, Y), (XV, YV), "graddot"), ValueError, "vm"),
    # -- ifkit.clean --
    ("clean k=True", lambda: clean(k=True), TypeError, "give a count (an int, e.g. k=10)"),
    ("clean k='10'", lambda: clean(k="10"), TypeError, "k='10' (str)"),
    ("clean k too big", lambda: clean(k=N + 1), ValueError, "flag between 0 and n_train=20"),
    ("clean k negative", lambda: clean(k=-1), ValueError, "flag between 0 and n_train=20"),
    ("clean k=1.5", lambda: clean(k=1.5), ValueError, "a fraction must lie in (0, 1)"),
    ("clean k=0.0", lambda: clean(k=0.0), ValueError, "a fraction must lie in (0, 1)"),
    ("clean checkpoints=[]", lambda: clean(checkpoints=[]), ValueError, "clean with the model as given"),
    ("clean mismatched checkpoints", lambda: clean(checkpoints=[OTHER.state_dict()]), ValueError,
     "checkpoints[0] does not fit the model"),
    ("clean other method", lambda: clean(method="if-cg"), ValueError, "method must be 'vm' or 'fvm'"),
    ("clean checkpoint=", lambda: clean(checkpoint=MODEL.state_dict()), ValueError, "drop checkpoint="),
    ("clean float labels", lambda: ifkit.clean(MODEL, (X, Y.double()), (XV, YV)), TypeError, "y.long()"),
    ("clean bad option", lambda: clean(iters=-1), ValueError, "iters=-1 is below 1"),
]


def nan_params() -> nn.Module:
    m = tiny_model()
    with torch.no_grad():
        m[0].weight[0, 0] = math.nan
    return m


@pytest.mark.parametrize("call, kind, phrase", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_before_any_work(call, kind, phrase, no_work):
    with pytest.raises(kind) as err:
        call()
    assert phrase in str(err.value), f"message does not say {phrase!r}: {err.value}"


def test_no_case_listed_twice():
    assert len({c[0] for c in REFUSED}) == len(REFUSED)


def test_device_without_cuda_names_the_fix():
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA devices visible"):
            score(device=f"cuda:{torch.cuda.device_count()}")  # one past the last visible GPU
    else:
        with pytest.raises(ValueError, match="no CUDA support.*device='cpu'"):
            score(device="cuda")


# -- inputs that are fine: the right answer, not an error --------------------------------------------------


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


REFERENCE = {}


def ref(method="graddot", **options):
    key = (method, tuple(sorted(options.items())))
    if key not in REFERENCE:
        REFERENCE[key] = score(method, **options)
    return REFERENCE[key]


ACCEPTED = [
    ("int32 labels are cast", lambda: close(score(train=(X, Y.int()), val=(XV, YV.int())), ref())),
    ("uint8 labels are cast", lambda: close(score(train=(X, Y.to(torch.uint8))), ref())),
    ("int16 query labels", lambda: close(pairwise(queries=(XV, YV.short())), pairwise())),
    ("float32 inputs follow the model's dtype",
     lambda: torch.testing.assert_close(score(train=(X.float(), Y)), ref(), rtol=1e-5, atol=1e-6)),
    ("numpy int seed", lambda: close(score("if-lissa", seed=np.int64(3)), score("if-lissa", seed=3))),
    ("numpy int iters", lambda: close(score("if-cg", iters=np.int32(5)), score("if-cg", iters=5))),
    ("iters=None is the default", lambda: close(score("if-cg", iters=None), score("if-cg", iters=100))),
    ("chunk_size=1 equals the default", lambda: close(score(chunk_size=1), ref())),
    ("tracin without checkpoints is graddot", lambda: close(score("tracin"), ref())),
    ("tracin with the model's own state", lambda: close(score("tracin", checkpoints=[MODEL.state_dict()]), ref())),
    ("tracin (state, lr) pair scales", lambda: close(score("tracin", checkpoints=[(MODEL.state_dict(), 2.0)]),
                                                     2 * ref())),
    ("device='cpu'", lambda: close(score(device="cpu"), ref())),
    ("device=torch.device('cpu')", lambda: close(score(device=torch.device("cpu")), ref())),
    ("damping an int", lambda: close(score("if-cg", damping=1), score("if-cg", damping=1.0))),
    ("damping='auto' for datainf", lambda: score("datainf", damping="auto").isfinite().all()),
    ("flat_steps=0 scores at the model", lambda: score("vm", flat_steps=0).isfinite().all()),
    ("budget_s=None skips the estimate", lambda: close(score(budget_s=None), ref())),
    ("one-hot soft labels equal class indices",
     lambda: close(score(val=(XV, nn.functional.one_hot(YV, K).double())), ref())),
    ("clean with k a fraction", lambda: len(clean(k=0.25, relabel=False).flagged) == 5),
    ("clean with numpy k", lambda: len(clean(k=np.int64(3), relabel=False).flagged) == 3),
    ("clean with checkpoints=None", lambda: clean(k=2, relabel=False).checkpoint is None),
]


@pytest.mark.parametrize("call", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_with_the_right_answer(call):
    out = call()
    assert out is None or bool(out), "the accepted input gave a wrong answer"


# -- long requests: refused in seconds, with the estimate --------------------------------------------------


def test_vm_on_a_million_parameters_is_refused_quickly():
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(784, 1024), nn.Tanh(), nn.Linear(1024, 200), nn.Tanh(), nn.Linear(200, 10)).eval()
    assert sum(p.numel() for p in big.parameters()) > 1_000_000
    g = torch.Generator().manual_seed(0)
    # 3,000 points: the run would take hours, so the estimate is over the budget however loaded the machine is
    tr = (torch.randn(3000, 784, generator=g), torch.randint(0, 10, (3000,), generator=g))
    va = (torch.randn(100, 784, generator=g), torch.randint(0, 10, (100,), generator=g))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"would take about .*budget_s=\d+ \(or budget_s=None\)"):
        ifkit.score("vm", big, tr, va)
    assert time.perf_counter() - t0 < 60  # the run itself takes well over 10 minutes on one core


def test_large_pairwise_table_is_refused_quickly():
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).eval()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(40_000, 64, generator=g), torch.randint(0, 10, (40_000,), generator=g))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"40,000 x 40,000 table \(6\.0 GB\)"):
        ifkit.pairwise("graddot", model, data, data)
    assert time.perf_counter() - t0 < 30


# -- the ifkit command -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    # score-shards reads models saved as plain data (class, arguments, state_dict), never a pickle
    ifkit.save_model(LogisticRegression(D, K).double(), d / "model.pt", args=(D, K))
    torch.save({"X_train": X, "y_train": Y, "X_val": XV, "y_val": YV}, d / "data.pt")
    (d / "a_file").write_text("not a folder")
    (d / "broken.pt").write_bytes(b"")
    (d / "x.csv").mkdir()
    return d


CLI = [
    ("missing --model file", "score-shards --model nope.pt --data {d}/data.pt --method graddot --out {d}/s.csv",
     "--model nope.pt does not exist"),
    ("missing --data file", "score-shards --model {d}/model.pt --data nope.pt --method graddot --out {d}/s.csv",
     "--data nope.pt does not exist"),
    ("--model a folder", "score-shards --model {d} --data {d}/data.pt --method graddot --out {d}/s.csv",
     "is a folder, not a file"),
    ("--data unreadable", "score-shards --model {d}/model.pt --data {d}/broken.pt --method graddot --out {d}/s.csv",
     "cannot be read by torch.load"),
    ("--out under a file", "score-shards --model {d}/model.pt --data {d}/data.pt --method graddot "
     "--out {d}/a_file/s.csv", "is a file, not a folder"),
    ("--out a folder", "score-shards --model {d}/model.pt --data {d}/data.pt --method graddot --out {d}/x.csv",
     "is a folder: give a file name"),
    ("--out suffix", "score-shards --model {d}/model.pt --data {d}/data.pt --method graddot --out {d}/s.txt",
     "--out must end in .pt or .csv"),
    ("--params empty", "score-shards --model {d}/model.pt --data {d}/data.pt --method graddot --out {d}/s.csv "
     "--params=", "holds an empty name"),
    ("--params with an empty name", "score-shards --model {d}/model.pt --data {d}/data.pt --method graddot "
     "--out {d}/s.csv --params 0.weight,,0.bias", "holds an empty name"),
    ("unknown method", "score-shards --model {d}/model.pt --data {d}/data.pt --method fvn --out {d}/s.csv",
     "unknown method 'fvn'"),
    ("--model not given", "score-shards --data {d}/data.pt --method graddot --out {d}/s.csv",
     "the following arguments are required: --model"),
    ("reproduce --out a file", "reproduce theory --fast --out {d}/a_file", "--out {d}/a_file is a file"),
    ("reproduce unknown experiment", "reproduce theroy --out {d}/r", "unknown experiment 'theroy'"),
    ("reproduce --seeds 0", "reproduce theory --seeds 0 --out {d}/r", "--seeds must be >= 1"),
    ("figures --out a file", "figures --results {d} --out {d}/a_file", "is a file, not a folder"),
    ("bench --out under a file", "bench --out {d}/a_file/bench.csv", "is a file, not a folder"),
]


@pytest.mark.parametrize("argv, phrase", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_usage_errors(argv, phrase, saved, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv.format(d=saved).split())
    assert stop.value.code == 2
    assert phrase.format(d=saved) in capsys.readouterr().err


def test_cli_bad_option_value_is_refused_with_the_fix(saved, capsys):
    argv = f"score-shards --model {saved}/model.pt --data {saved}/data.pt --method if-lissa --out {saved}/s.csv "
    with pytest.raises(ValueError, match="iters=0 is below 1"):
        main((argv + "--iters 0").split())


def test_cli_scores_with_params(saved):
    out = saved / "s.pt"
    assert main(f"score-shards --model {saved}/model.pt --data {saved}/data.pt --method graddot --out {out} "
                "--params linear.weight".split()) == 0
    close(torch.load(out), score(model=ifkit.load_model(saved / "model.pt"), params=["linear.weight"]))


# -- under torch.distributed: the join's timeout is configurable, and a bad value is named ---------------------


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "inf", ""])
def test_join_timeout_bad_values(raw, monkeypatch):
    from ifkit.core.distributed import join_timeout

    monkeypatch.setenv("IFKIT_JOIN_TIMEOUT_S", raw)
    with pytest.raises(ValueError, match="IFKIT_JOIN_TIMEOUT_S=600"):
        join_timeout()


def test_join_timeout_default_and_override(monkeypatch):
    from ifkit.core.distributed import JOIN_TIMEOUT_S, join_timeout

    monkeypatch.delenv("IFKIT_JOIN_TIMEOUT_S", raising=False)
    assert join_timeout() == JOIN_TIMEOUT_S == 300.0
    monkeypatch.setenv("IFKIT_JOIN_TIMEOUT_S", "42")
    assert join_timeout() == 42.0
    assert join_timeout(7) == 7.0  # an explicit value wins

"""Small float64 problems shared by the tests."""

import pytest
import torch
from sklearn.datasets import load_digits

from ifkit import metrics
from ifkit.optim import fullbatch


def digits(n_train: int, n_val: int, n_flip: int, seed: int = 0, dtype=torch.float64):
    """Digits (64 features in [0, 1]) with the first n_flip training labels shifted by 3 classes."""
    d = load_digits()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(d.data), generator=gen)
    X = torch.tensor(d.data / 16, dtype=dtype)[perm]
    y = torch.tensor(d.target)[perm]
    Xtr, ytr = X[:n_train], y[:n_train].clone()
    flipped = torch.zeros(n_train, dtype=torch.bool)
    flipped[:n_flip] = True
    ytr[:n_flip] = (ytr[:n_flip] + 3) % 10
    return Xtr, ytr, X[n_train : n_train + n_val], y[n_train : n_train + n_val], flipped


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny problems: one intra-op thread is as fast, and immune to a busy machine. Every test file gets it.

    (With 2 threads on 2 cores, any other busy process makes every parallel op wait for a descheduled thread;
    we measured the optimiser tests 5-10x slower that way.)
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def auc_floor(entry: tuple[str, float], scores_loss: torch.Tensor, flipped: torch.Tensor) -> float:
    """The AUC a detector must reach: its named baseline's AUC plus the margin (tests/tolerances.py, e.g. LOGREG_AUC).

    entry = (baseline, margin) with baseline "random" (AUC 0.5) or "loss" (the AUC of scores_loss, the training
    loss at the same parameters).
    """
    from tolerances import RANDOM_AUC

    baseline, margin = entry
    return (RANDOM_AUC if baseline == "random" else metrics.auc(scores_loss, flipped)) + margin


def pytest_collection_modifyitems(config, items):
    """Files that hold a slow test run first, each file's own order kept.

    `make test-unit` / `make test-slow` run the files on 2 workers (pytest -n 2 --dist loadfile
    --no-loadscope-reorder, -m "not slow" / -m slow), handing out one file at a time in this order (what matters
    when `pytest -n 2 tests/` runs both tiers at once): the long files start early and the many short ones fill in behind them, so
    both workers finish together instead of one waiting on a long file handed out last.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # a stable sort


WEIGHT_DECAY = 1e-2


@pytest.fixture(scope="session")
def logreg():
    """L2-regularised logistic regression at its exact optimum: (model, train, val, flipped, weight_decay)."""
    Xtr, ytr, Xv, yv, flipped = digits(300, 300, 60)
    torch.manual_seed(0)
    model = fullbatch.fit_full_batch(torch.nn.Linear(64, 10).double(), (Xtr, ytr), WEIGHT_DECAY)
    return model, (Xtr, ytr), (Xv, yv), flipped, WEIGHT_DECAY


@pytest.fixture(scope="session")
def tiny_mlp():
    """A tiny tanh MLP (float64) trained to near-memorisation of noisy digits: (model, train, val, flipped)."""
    Xtr, ytr, Xv, yv, flipped = digits(200, 100, 40, seed=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xtr), ytr).backward()
        opt.step()
    return model, (Xtr, ytr), (Xv, yv), flipped


def _work_started(*args, **kwargs):
    raise AssertionError("a refused input reached the work: the check must come before any method runs")


@pytest.fixture
def no_work(monkeypatch):
    """Every method and ifkit.clean's steps fail the test if called: a refusal must come first (the bad-input
    tests of test_bad_inputs.py and test_inputs.py)."""
    from ifkit import cleaning
    from ifkit.methods import REGISTRY
    from ifkit.methods import flat as flat_methods

    for name, entry in list(REGISTRY.items()):
        monkeypatch.setitem(REGISTRY, name, entry._replace(
            score=_work_started, pairwise=_work_started if entry.pairwise is not None else None))
    # the fine-tuning to theta~: diagnose's (and clean's) first step after the checks
    monkeypatch.setattr(flat_methods, "flat_finetune", _work_started)
    monkeypatch.setattr(cleaning, "best_val_checkpoint", _work_started)

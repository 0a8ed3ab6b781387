"""Every method's scores (score and pairwise, every curvature, the options that change a code path, diagnose and
clean) on two tiny float64 problems equal the committed snapshot: refactoring the library's internals moves no
score. ``python tests/score_snapshot.py check tests/data/score_snapshot.pt`` checks bit equality (torch.equal);
here a 1e-12 relative tolerance absorbs other CPUs' float rounding."""

from pathlib import Path

import pytest
import torch
from score_snapshot import snapshot
from tolerances import SNAPSHOT_TOL

SNAPSHOT = Path(__file__).parent / "data" / "score_snapshot.pt"


@pytest.fixture(scope="module")
def fresh():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return snapshot()
    finally:
        torch.set_num_threads(n)


@pytest.mark.slow  # every method and option on fixed data: the snapshot's inputs cannot shrink
def test_every_score_equals_the_snapshot(fresh):
    saved = torch.load(SNAPSHOT)
    assert sorted(fresh) == sorted(saved)
    for label, expected in saved.items():
        torch.testing.assert_close(fresh[label], expected, **SNAPSHOT_TOL, msg=lambda m, k=label: f"{k}: {m}")


def test_the_snapshot_covers_every_method():
    import ifkit

    saved = torch.load(SNAPSHOT)
    assert {f"score/{m}" for m in ifkit.METHODS} <= set(saved)

"""Every method's scores on two tiny float64 problems, as one dict of tensors (the regression snapshot).

``python tests/score_snapshot.py save PATH`` writes the snapshot; ``tests/test_score_snapshot.py`` recomputes it
and compares with the committed one, so a refactoring of the library's internals cannot move a single score.
Covers every method (score and pairwise), every curvature under each family that takes one, the options that
change a code path (given/auto damping, LiSSA's products and mini-batches, checkpoints, candidates, flat_val),
a network of Linear layers (factored gradients) and one whose parameters are not all Linear (dense gradients),
``ifkit.diagnose`` and ``ifkit.clean``.
"""

from __future__ import annotations

import sys

import torch
from sklearn.datasets import load_digits

import ifkit


class Scaled(torch.nn.Module):
    """An MLP with an elementwise input scale: not all parameters are Linear, so gradients stream dense."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(64, dtype=torch.float64))
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 6), torch.nn.Tanh(), torch.nn.Linear(6, 10)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale)


def problem(n_train: int = 48, n_val: int = 20, n_query: int = 4):
    d = load_digits()
    perm = torch.randperm(len(d.data), generator=torch.Generator().manual_seed(0))
    X = torch.tensor(d.data / 16, dtype=torch.float64)[perm]
    y = torch.tensor(d.target)[perm]
    y[:8] = (y[:8] + 3) % 10  # the first 8 training labels flipped
    train = (X[:n_train], y[:n_train])
    val = (X[n_train:n_train + n_val], y[n_train:n_train + n_val])
    queries = (X[-n_query:], y[-n_query:])
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10)).double()
    checkpoints = []
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for step in range(120):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mlp(train[0]), train[1]).backward()
        opt.step()
        if step % 40 == 39:
            checkpoints.append(({k: v.clone() for k, v in mlp.state_dict().items()}, 0.01))
    torch.manual_seed(1)
    scaled = Scaled()
    opt = torch.optim.Adam(scaled.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(scaled(train[0]), train[1]).backward()
        opt.step()
    return mlp.eval(), scaled.eval(), train, val, queries, checkpoints


FLAT = dict(flat_steps=10)  # VM/FVM: a short fine-tuning keeps the snapshot cheap
GEX = dict(ensemble_size=2, gex_steps=10)


def cases(checkpoints) -> list[tuple[str, str, str, dict]]:
    """(label, kind, method, options): kind is "score" or "pairwise"; model "mlp" unless the label says."""
    out = []
    for m in ifkit.METHODS:
        base = {**(FLAT if m in ("vm", "fvm") else {}), **(GEX if m == "gex" else {}), "damping": 0.1}
        out.append((f"score/{m}", "score", m, base))
        if m not in ("loss", "self-if"):
            out.append((f"pairwise/{m}", "pairwise", m, base))
    d = {"damping": 0.1}
    v = {**FLAT, **d}
    out += [
        ("score/if-exact/ggn", "score", "if-exact", {**d, "curvature": "ggn"}),
        ("score/if-cg/cg", "score", "if-cg", {**d, "curvature": "cg", "iters": 30}),
        ("score/if-cg/iters", "score", "if-cg", {**d, "iters": 7}),
        ("score/if-lissa/hessian", "score", "if-lissa", {**d, "curvature": "cg", "iters": 50}),
        ("score/if-lissa/batch", "score", "if-lissa", {**d, "lissa_batch": 16, "iters": 50}),
        ("score/if-lissa/scale", "score", "if-lissa", {**d, "scale": 20.0, "iters": 50}),
        ("score/datainf/auto", "score", "datainf", {}),
        ("score/ekfac/kfac", "score", "ekfac", {**d, "curvature": "kfac"}),
        ("pairwise/ekfac/kfac", "pairwise", "ekfac", {**d, "curvature": "kfac"}),
        ("score/self-if/ggn", "score", "self-if", {**d, "curvature": "ggn"}),
        ("score/self-if/cg", "score", "self-if", {**d, "curvature": "ggn-cg", "iters": 30}),
        ("score/self-if/ekfac", "score", "self-if", {**d, "curvature": "ekfac"}),
        ("score/self-if/kfac", "score", "self-if", {**d, "curvature": "kfac"}),
        ("score/self-if/lissa", "score", "self-if", {**d, "curvature": "lissa", "iters": 30}),
        ("score/self-if/datainf", "score", "self-if", {**d, "curvature": "datainf"}),
        ("score/tracin/checkpoints", "score", "tracin", {"checkpoints": checkpoints}),
        ("score/tracin/lrs", "score", "tracin", {"checkpoints": checkpoints, "lrs": [1.0, 2.0, 3.0]}),
        ("pairwise/tracin/checkpoints", "pairwise", "tracin", {"checkpoints": checkpoints}),
        ("score/vm/best-val", "score", "vm", {**v, "checkpoint": "best-val", "checkpoints": checkpoints}),
        ("score/vm/candidates", "score", "vm", {**v, "candidates": "first5"}),
        ("score/if-exact/candidates", "score", "if-exact", {**d, "candidates": "first5"}),
        ("score/fvm/sam", "score", "fvm", {**v, "flat_optimizer": "sam", "rho": 0.1}),
        ("score/fvm/sigma", "score", "fvm", {**v, "sigma": 0.01, "flat_lr": 0.02}),
        ("pairwise/vm/flat_val", "pairwise", "vm", {**v, "flat_val": "val"}),
        ("pairwise/vm/curvature_val", "pairwise", "vm", {**v, "flat_val": "val", "curvature_val": "val"}),
    ]
    for curv in ("exact", "ggn-cg", "cg", "ekfac", "kfac", "datainf"):
        o = {**v, "curvature": curv, "iters": 30, **({"damping": 1.0} if curv in ("exact", "cg") else {})}
        out.append((f"score/vm/{curv}", "score", "vm", o))
        out.append((f"pairwise/vm/{curv}", "pairwise", "vm", o))
    out.append(("score/vm/datainf-auto", "score", "vm", {**FLAT, "curvature": "datainf"}))
    out.append(("score/vm/chunk", "score", "vm", {**v, "chunk_size": 7}))
    out.append(("score/if-exact/params", "score", "if-exact", {**d, "params": ["2.weight", "2.bias"]}))
    # the dense-gradient model (not all parameters are Linear)
    for m in ("graddot", "if-exact", "if-cg", "if-lissa", "datainf", "self-if", "vm", "fvm"):
        base = {**(FLAT if m in ("vm", "fvm") else {}), "damping": 0.1, "iters": 30}
        out.append((f"scaled/score/{m}", "score", m, base))
        if m != "self-if":
            out.append((f"scaled/pairwise/{m}", "pairwise", m, base))
    out.append(("scaled/score/self-if/cg", "score", "self-if", {"damping": 0.1, "curvature": "cg", "iters": 30}))
    out.append(("scaled/score/vm/exact", "score", "vm", {**FLAT, "damping": 1.0, "curvature": "exact"}))
    return out


def snapshot(quick: bool = False) -> dict[str, torch.Tensor]:
    mlp, scaled, train, val, queries, checkpoints = problem()
    out = {}
    for label, kind, method, options in cases(checkpoints):
        model = scaled if label.startswith("scaled/") else mlp
        o = dict(options)
        if o.get("candidates") == "first5":
            o["candidates"] = (train[0][:5], (train[1][:5] + 1) % 10)
        for key in ("flat_val", "curvature_val"):
            if o.get(key) == "val":
                o[key] = val if key == "flat_val" else (val[0], (val[1] + 1) % 10)
        fn = ifkit.score if kind == "score" else ifkit.pairwise
        out[label] = fn(method, model, train, val if kind == "score" else queries, **o)
    if not quick:
        dg = ifkit.diagnose(mlp, train, val, "vm", **FLAT)
        out["diagnose/scores"] = dg.scores
        out["diagnose/numbers"] = torch.tensor([dg.top_eig, dg.top_eig_tilde, dg.sam_sharpness_tilde, dg.rel_move],
                                               dtype=torch.float64)
        cl = ifkit.clean(mlp, train, val, "fvm", checkpoints=checkpoints, k=6, **FLAT)
        out["clean/scores"] = cl.scores
        out["clean/flagged"] = cl.flagged
        out["clean/labels"] = cl.labels
    return out


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Labels whose tensors differ in any bit (or that only one side has)."""
    bad = [k for k in a.keys() & b.keys() if not torch.equal(a[k], b[k])]
    return sorted(bad + list(a.keys() ^ b.keys()))


if __name__ == "__main__":
    cmd, path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    snap = snapshot()
    if cmd == "save":
        torch.save(snap, path)
        print(f"saved {len(snap)} tensors to {path}")
    else:
        diff = compare(torch.load(path), snap)
        print("IDENTICAL" if not diff else f"DIFFERENT: {diff}")
        sys.exit(1 if diff else 0)

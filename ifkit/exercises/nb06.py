"""Notebook 06's exercises: relabeling the flagged training points (docs/PAPER.md, Eq. 13 and Eq. 17).

A flagged point (x, y) gets the label c whose hypothetical training point (x, c) scores lowest (Eq. 17); the
candidate scores come as an (n, n_classes) table, row i = flagged point i, column c = candidate label c. With
VM at theta~, the score of a candidate is the quadratic form of its gradient (Eq. 13).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ifkit.exercises.checking import Case, Exercise, labels, randn, register, seeded


# ------------------------------------------------------------------------------------------- relabel (Eq. 17)
def _relabel_cases() -> list[Case]:
    cases = []
    # the square case first: there an argmin over the wrong axis has the right shape, and can be named
    for seed, (n, C) in enumerate([(4, 4), (6, 10), (1, 3)]):
        S = randn(seeded(60 + seed), n, C)  # (n, C) candidate scores, continuous: no ties
        wrong = {"argmax instead of argmin (the sign: a HIGH score means harmful, the new label is the least "
                 "harmful candidate)": S.argmax(1)}
        if n == C:
            wrong["argmin over the flagged points (axis 0) instead of over the candidate labels (axis 1): "
                  "the table was read transposed"] = S.argmin(0)
        cases.append(Case(f"{n} flagged points x {C} candidate labels", (S,), S.argmin(1), wrong))
    return cases


register(Exercise(
    name="relabel",
    notebook="06",
    task="relabel(candidate_scores) -> (n,) new labels: candidate_scores is (n, n_classes), entry [i, c] the score "
         "of flagged point i with label c; the new label of point i is the c of lowest score (docs/PAPER.md, "
         "Eq. 17).",
    hint="scores follow 'higher = more harmful', so the new label is an argmin, taken over the candidate labels: "
         "candidate_scores.argmin(dim=1).",
    cases=_relabel_cases,
))


# ---------------------------------------------------------------------------------- relabel accuracy on the flips
def _accuracy_case(seed: int, n: int, k: int, n_flipped_flags: int, C: int = 10) -> Case:
    """n training points, k of them flagged, of which ``n_flipped_flags`` really flipped."""
    g = seeded(70 + seed)
    clean = labels(n, C, g)  # (n,)
    flags = torch.randperm(n, generator=g)[:k]  # (k,) indices of the flagged points
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=g)[: n // 4]] = True  # flips detection missed ...
    flipped[flags] = False  # ... while among the flags
    flipped[flags[:n_flipped_flags]] = True  # only the first ones are real flips, the rest false alarms
    given = torch.where(flipped, (clean + 1 + labels(n, C - 1, g)) % C, clean)  # (n,) a flipped label differs
    # new labels: right on some flips, wrong on others; on a clean flag keep or change its label
    new = torch.where(torch.rand(k, generator=g) < 0.6, clean[flags], labels(k, C, g))  # (k,)
    hit = flipped[flags]  # (k,) which flags were really flipped
    right = new == clean[flags]  # (k,)
    expected = right[hit].double().mean()
    y_new = given.clone()
    y_new[flags] = new
    wrong = {"the accuracy over every flagged point, the false alarms (clean points) included: count only the "
             "flags whose given label differs from the clean one": right.double().mean(),
             "the accuracy of the relabelled training set over ALL n training points, not over the flipped "
             "flags": (y_new == clean).double().mean(),
             "the right flips divided by the number of flags k, not by the number of flipped flags":
                 right[hit].double().sum() / k,
             "new labels compared with the GIVEN (noisy) labels instead of the clean ones":
                 (new == given[flags])[hit].double().mean()}
    wrong = {m: a for m, a in wrong.items() if not torch.isclose(a, expected)}
    return Case(f"{n} points, {k} flags, {int(hit.sum())} of them flipped", (new, flags, given, clean), expected,
                wrong)


def _relabel_accuracy_cases() -> list[Case]:
    return [_accuracy_case(0, 40, 12, 8), _accuracy_case(1, 100, 30, 21), _accuracy_case(2, 15, 5, 2)]


register(Exercise(
    name="flipped_relabel_accuracy",
    notebook="06",
    task="flipped_relabel_accuracy(new_labels, flags, given, clean) -> float: new_labels (k,) are the new labels "
         "of the flagged training points flags (k,) (indices into the n training points); given (n,) the labels "
         "trained on, clean (n,) the true ones. Return the share of the flagged, truly flipped points "
         "(given != clean) whose new label is the clean one.",
    hint="hit = given[flags] != clean[flags] picks the flags that really were flipped; average "
         "(new_labels == clean[flags]) over those only.",
    cases=_relabel_accuracy_cases,
    atol=1e-12,
))


# --------------------------------------------------------------------------- VM's candidate scores (Eq. 13)
def vm_quadratic(G: Tensor, H_val: Tensor, damping: float) -> Tensor:
    """(n, C) g~^T (H~_val + damping I)^-1 g~ for every row of G (n, C, p): the exact oracle, an explicit solve."""
    p = H_val.shape[0]
    V = torch.linalg.solve(H_val + damping * torch.eye(p, dtype=H_val.dtype), G.reshape(-1, p).T).T  # (n*C, p)
    return (G.reshape(-1, p) * V).sum(1).view(G.shape[0], G.shape[1])  # (n, C)


def _vm_candidate_cases() -> list[Case]:
    cases = []
    for seed, (n, C, p, damping) in enumerate([(3, 4, 5, 0.1), (5, 3, 8, 0.5), (1, 10, 6, 1e-2)]):
        g = seeded(80 + seed)
        A = randn(g, p, p)
        H = A @ A.T / p + 0.05 * torch.eye(p, dtype=torch.float64)  # (p, p) symmetric positive definite H~_val
        G = randn(g, n, C, p)  # (n, C, p) gradient of each candidate (x_i, c) at theta~
        expected = vm_quadratic(G, H, damping)
        wrong = {"the damping term is missing: invert H~_val + damping * I": vm_quadratic(G, H, 0.0),
                 "H~_val multiplies instead of being inverted (g^T H g, not g^T H^-1 g)":
                     torch.einsum("ncp,pq,ncq->nc", G, H + damping * torch.eye(p, dtype=torch.float64), G),
                 "the sign is flipped: VM's score is +g~^T (H~_val + damping I)^-1 g~ (Eq. 13), not classic "
                 "influence's minus sign": -expected,
                 "the plain squared gradient norm g^T g: the curvature is missing": (G * G).sum(-1)}
        cases.append(Case(f"{n} points x {C} candidates, p={p}, damping={damping}", (G, H, damping), expected,
                          wrong))
    return cases


register(Exercise(
    name="vm_candidate_scores",
    notebook="06",
    task="vm_candidate_scores(G, H_val, damping) -> (n, C): G is (n, C, p), G[i, c] the gradient at theta~ of the "
         "loss of candidate (x_i, c); H_val (p, p) is H~_val. Entry [i, c] = G[i, c]^T (H_val + damping I)^-1 "
         "G[i, c] (docs/PAPER.md, Eq. 13).",
    hint="solve once for every candidate: V = torch.linalg.solve(H_val + damping * I, G.reshape(-1, p).T).T, then "
         "the row-wise dot product (G.reshape(-1, p) * V).sum(1), reshaped to (n, C).",
    cases=_vm_candidate_cases,
    rtol=1e-6,
    atol=1e-9,
))

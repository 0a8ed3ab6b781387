"""Notebook 07's exercises: ranking training examples for one query of a generative model (docs/PAPER.md, Eq. 19).

A pairwise influence row ``pairwise_row`` (n_train,) holds I(z_i, z_q) for one query q (Eq. 6 / Eq. 14):
negative = up-weighting z_i lowers the query's loss = helpful. A good estimator ranks the query's own class first,
so every metric ranks the training examples by -I(z_i, z_q), most helpful first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ifkit.exercises.checking import Case, Exercise, randn, register, seeded


def _query(seed: int, n: int, n_same: int) -> tuple[Tensor, Tensor]:
    """A pairwise row whose same-class entries lean negative (helpful), plus a few strongly harmful other-class
    entries (large |I|, positive sign), so that ranking by |I| and by -I disagree."""
    g = seeded(seed)
    same = torch.zeros(n, dtype=torch.bool)
    same[torch.randperm(n, generator=g)[:n_same]] = True  # (n,)
    row = randn(g, n) - 1.2 * same  # (n,) I(z_i, z_q): same class more helpful on average
    harmful = torch.nonzero(~same).flatten()[: max(1, (n - n_same) // 4)]
    row[harmful] += 4.0  # harmful other-class examples: large |I|, wrong sign to be helpful
    return row, same


def _auc(row: Tensor, same: Tensor) -> float:
    # imported here, not at the top: importing ifkit.exercises loads every notebook's module
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(same.numpy(), (-row).numpy()))  # rank by -I: most helpful first (Eq. 19)


# ---------------------------------------------------------------------------------------------- query_auc
def _query_auc_cases() -> list[Case]:
    cases = []
    for seed, (n, n_same) in enumerate([(30, 6), (50, 5), (12, 4)]):
        row, same = _query(90 + seed, n, n_same)
        wrong = {"ranked by +I(z_i, z_q) (the sign: negative influence = helpful, so the most helpful example "
                 "has the LOWEST pairwise value); this is 1 - AUC": 1 - _auc(row, same),
                 "ranked by |I(z_i, z_q)|: a large positive value is harmful, not helpful": _auc(-row.abs(), same)}
        cases.append(Case(f"{n} training examples, {n_same} of the query's class", (row, same), _auc(row, same),
                          wrong))
    return cases


register(Exercise(
    name="query_auc",
    notebook="07",
    task="query_auc(pairwise_row, same_class) -> float: pairwise_row (n_train,) is I(z_i, z_q) for one query, "
         "same_class (n_train,) bool marks the training examples of the query's class. Return the ROC AUC of "
         "same_class when the training examples are ranked by -I(z_i, z_q) (docs/PAPER.md, Eq. 19).",
    hint="sklearn.metrics.roc_auc_score(y_true, y_score) wants HIGHER score = more likely positive; helpful means "
         "negative influence, so pass y_score = -pairwise_row.",
    cases=_query_auc_cases,
    rtol=1e-9,
    atol=1e-12,
))


# ---------------------------------------------------------------------------------------------- recall_at_k
def _recall(row: Tensor, same: Tensor, k: int) -> float:
    top = torch.argsort(row, stable=True)[:k]  # (k,) most negative = most helpful first
    return same[top].double().sum().item() / same.sum().item()


def _recall_cases() -> list[Case]:
    cases = []
    for seed, (n, n_same, k) in enumerate([(30, 6, 10), (50, 5, 5), (40, 8, 4)]):
        row, same = _query(95 + seed, n, n_same)
        top = torch.argsort(row, stable=True)[:k]
        wrong = {"the top k by +I(z_i, z_q) (the sign: the most helpful examples have the most NEGATIVE "
                 "pairwise values)": _recall(-row, same, k),
                 "divided by k, not by the number of same-class examples: that is precision@k (the kit's recall "
                 "takes k = that number, where the two coincide)": same[top].double().sum().item() / k,
                 "the top k by |I(z_i, z_q)|: a large positive value is harmful, not helpful":
                     _recall(-row.abs(), same, k)}
        label = f"{n} training examples, {n_same} of the query's class, k={k}" + (
            " (the kit's recall: k = the class size)" if k == n_same else "")
        cases.append(Case(label, (row, same, k), _recall(row, same, k), wrong))
    return cases


register(Exercise(
    name="recall_at_k",
    notebook="07",
    task="recall_at_k(pairwise_row, same_class, k) -> float: the share of the query's same-class training examples "
         "found among its k most helpful ones (the k most negative entries of pairwise_row) (docs/PAPER.md, "
         "Eq. 19; the kit's recall takes k = same_class.sum()).",
    hint="torch.argsort(pairwise_row)[:k] lists the k most helpful examples (most negative first); count how many "
         "are same_class and divide by same_class.sum().",
    cases=_recall_cases,
    rtol=1e-9,
    atol=1e-12,
))


# ------------------------------------------------------------------------------------------ cosine_pairwise
def _cosine(Gq: Tensor, Gt: Tensor) -> Tensor:
    return -(Gq / Gq.norm(dim=1, keepdim=True)) @ (Gt / Gt.norm(dim=1, keepdim=True)).T  # (Q, n)


def _cosine_cases() -> list[Case]:
    cases = []
    for seed, (Q, n, p) in enumerate([(3, 7, 5), (4, 4, 6), (1, 9, 3)]):
        g = seeded(100 + seed)
        Gq = randn(g, Q, p) * torch.rand(Q, 1, generator=g, dtype=torch.float64).mul(3).add(0.5)  # (Q, p)
        Gt = randn(g, n, p) * torch.rand(n, 1, generator=g, dtype=torch.float64).mul(3).add(0.5)  # (n, p)
        nq, nt = Gq.norm(dim=1, keepdim=True), Gt.norm(dim=1, keepdim=True)  # (Q, 1), (n, 1)
        wrong = {"the plain dot product -g_q^T g_i (graddot): the gradients are not normalised": -Gq @ Gt.T,
                 "the sign is missing: pairwise = -cos(g_q, g_i), negative = helpful": -_cosine(Gq, Gt),
                 "only the query gradients are normalised: each training example's norm |g_i| still scales its "
                 "column, which is what crowds the top k": -(Gq / nq) @ Gt.T,
                 "only the training gradients are normalised: the ranking is right, but the values are not "
                 "cosines (divide by |g_q| too)": -Gq @ (Gt / nt).T,
                 "normalised over the wrong axis (dim=0, across examples, instead of dim=1, across parameters)":
                     -(Gq / Gq.norm(dim=0, keepdim=True)) @ (Gt / Gt.norm(dim=0, keepdim=True)).T}
        cases.append(Case(f"{Q} queries, {n} training examples, p={p}", (Gq, Gt), _cosine(Gq, Gt), wrong))
    return cases


register(Exercise(
    name="cosine_pairwise",
    notebook="07",
    task="cosine_pairwise(G_query, G_train) -> (Q, n): G_query (Q, p) and G_train (n, p) are per-sample "
         "gradients; entry [q, i] = -cos(g_q, g_i) = -g_q^T g_i / (|g_q| |g_i|), the kit's gradcos "
         "(graddot's -g_q^T g_i with both gradients normalised).",
    hint="divide each row of both matrices by its norm (x.norm(dim=1, keepdim=True)), then -(Gq_unit @ Gt_unit.T).",
    cases=_cosine_cases,
    rtol=1e-7,
    atol=1e-10,
))

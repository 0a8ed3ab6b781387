"""Notebook 04's exercises: flat validation minima, VM and FVM (docs/PAPER.md, Eq. 11-13 and 16).

Every case is a small float64 problem with an exact answer: LPF-SGD's noise against ``ifkit.optim.sam``'s
per-filter scale, the second-order loss change against the exact refit of a quadratic validation risk, and the
VM score against a direct linear solve with the dense curvature.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ifkit.exercises.checking import Case, Exercise, randn, register, seeded
from ifkit.optim.sam import filter_norms


# ------------------------------------------------------------------------------------ 4.1 LPF-SGD's weight noise
def _lpf_noise_cases() -> list[Case]:
    cases = []
    for seed, (d_out, d_in, sigma) in enumerate([(4, 3, 0.005), (3, 5, 0.05), (2, 6, 0.1)]):
        g = seeded(40 + seed)
        W = randn(g, d_out, d_in) * torch.linspace(0.5, 3.0, d_out, dtype=torch.float64)[:, None]  # rows of different norms
        z = randn(g, d_out, d_in)  # (d_out, d_in) standard normal draws
        rows = W.norm(dim=1, keepdim=True)  # (d_out, 1)
        expected = z * sigma * filter_norms(W)  # (d_out, d_in): ifkit's LPF-SGD noise for this draw
        wrong = {"one norm per column (input axis); a filter is a ROW of the weight, W[r] (the output axis)":
                     z * sigma * W.norm(dim=0, keepdim=True),
                 "the norm of the whole matrix, not one norm per filter (row)": z * sigma * W.norm(),
                 "sigma squared: sigma * ||filter|| is the noise's standard deviation, not its variance":
                     z * sigma**2 * rows,
                 "no filter norm: the noise's scale is relative to each filter, sigma * ||W[r]||": sigma * z,
                 "the squared filter norm; the standard deviation is sigma * ||W[r]||, not sigma * ||W[r]||^2":
                     z * sigma * rows**2}
        cases.append(Case(f"W {d_out}x{d_in}, sigma={sigma}", (W, z, sigma), expected, wrong))
    return cases


register(Exercise(
    name="lpf_noise",
    notebook="04",
    task="lpf_noise(W, z, sigma) -> (d_out, d_in): LPF-SGD's weight noise for a Linear weight W, "
         "e[r, :] = sigma * ||W[r, :]|| * z[r, :] (one scale per filter = row; docs/PAPER.md, Eq. 16).",
    hint="W.norm(dim=1, keepdim=True) is the (d_out, 1) column of filter norms; it broadcasts over z.",
    cases=_lpf_noise_cases,
))


# --------------------------------------------------------------------- 4.2 the loss change at the validation minimum
def _spd(g: torch.Generator, p: int, ridge: float) -> Tensor:
    A = randn(g, p + 3, p)  # more rows than columns: full rank
    return A.T @ A / (p + 3) + ridge * torch.eye(p, dtype=torch.float64)  # (p, p) symmetric positive definite


def _refit_change(g_train: Tensor, H: Tensor, eps: float) -> Tensor:
    """Exact, for R_val(theta) = 1/2 (theta - theta~)^T H (theta - theta~) and a linear loss l(z, theta) = g_z^T theta:
    theta_eps = argmin R_val + eps l(z) = theta~ - eps H^-1 g_z exactly; return R_val(theta_eps) - R_val(theta~)."""
    d = torch.linalg.solve(H, -eps * g_train.T).T  # (n, p) theta_eps - theta~, from the optimality condition
    return 0.5 * ((d @ H) * d).sum(1)  # (n,) R_val at the refit minimum (R_val(theta~) = 0)


def _loss_change_cases() -> list[Case]:
    cases = []
    for seed, (n, p, eps) in enumerate([(5, 4, 0.1), (3, 6, 0.05), (6, 3, 0.2)]):
        g = seeded(50 + seed)
        H, G = _spd(g, p, 0.2), randn(g, n, p)
        expected = _refit_change(G, H, eps)  # (n,)
        Hinv_g = torch.linalg.solve(H, G.T).T  # (n, p)
        quad = (G * Hinv_g).sum(1)  # (n,) g^T H^-1 g
        HHHg = G @ H @ H @ H  # (n, p): H symmetric, so row i is (H^3 g_i)^T
        wrong = {"no 1/2: the second-order Taylor term is 1/2 dtheta^T H_val dtheta": 2 * expected,
                 "eps instead of eps^2: dtheta is already proportional to eps, so the change is second order": eps / 2 * quad,
                 "H_val instead of its inverse in the parameter change (dtheta = -eps H_val^-1 g, Eq. 11)":
                     0.5 * eps**2 * (G * HHHg).sum(1),
                 "the first-order term g^T dtheta; at the validation minimum it is g_val^T dtheta = 0, and the "
                 "change is the second-order term": -eps * quad,
                 "a minus sign: at a minimum any move raises R_val, so the change is >= 0": -expected}
        cases.append(Case(f"n={n} points, p={p}, eps={eps}", (G, H, eps), expected, wrong))
    return cases


register(Exercise(
    name="loss_change_at_minimum",
    notebook="04",
    task="loss_change_at_minimum(g_train, H_val, eps) -> (n,): for each row g_i, the parameter change "
         "dtheta_i = -eps H_val^-1 g_i (Eq. 11), then the second-order change 1/2 dtheta_i^T H_val dtheta_i (Eq. 12).",
    hint="torch.linalg.solve(H_val, g_train.T).T gives every H_val^-1 g_i as a row; a row-wise quadratic form is "
         "((D @ H_val) * D).sum(1).",
    cases=_loss_change_cases,
))


# ------------------------------------------------------------------------------------------ 4.3 the VM score
def _softmax_val_hessian(g: torch.Generator, n_val: int, D: int, K: int) -> Tensor:
    """The exact Hessian of a softmax regression's mean validation loss (nb01's theta = (vec(W), b)) at a random theta.

    The logits z = W x + b are linear in theta, z = J theta with J = [I_K (x) x^T, I_K] (K, p), so the Hessian is
    exactly mean_j J_j^T (diag(s_j) - s_j s_j^T) J_j, s_j = softmax(z_j): PSD, singular along class shifts.
    """
    theta, Xv = 0.5 * randn(g, K * D + K), randn(g, n_val, D)
    eye = torch.eye(K, dtype=torch.float64)
    J = torch.stack([torch.cat([torch.kron(eye, x[None, :]), eye], 1) for x in Xv])  # (n_val, K, p)
    s = (J @ theta).softmax(-1)  # (n_val, K)
    S = torch.diag_embed(s) - s[:, :, None] * s[:, None, :]  # (n_val, K, K) Hessian of the loss in the logits
    return (J.transpose(1, 2) @ S @ J).mean(0)  # (p, p)


def _vm_cases() -> list[Case]:
    g = seeded(60)
    problems = [("full-rank H_val", _spd(g, 5, 0.0), 0.5, 6),
                ("softmax regression's exact validation Hessian, 3 features x 3 classes",
                 _softmax_val_hessian(g, 8, 3, 3), 0.01, 5),
                ("low-rank H_val (fewer validation directions than parameters, as in ifkit)", None, 0.1, 4)]
    cases = []
    for label, H, damping, n in problems:
        if H is None:
            A = randn(g, 3, 7)  # (r, p), r < p
            H = A.T @ A / 3  # (p, p) rank 3
        p = H.shape[0]
        G = randn(g, n, p)  # (n, p) training gradients at theta~
        Hd = H + damping * torch.eye(p, dtype=torch.float64)
        expected = (G * torch.linalg.solve(Hd, G.T).T).sum(1)  # (n,) the direct solve
        wrong = {"a minus sign: that is classic influence's convention (Eq. 4); VM's score is a quadratic form, >= 0":
                     -expected,
                 "no inverse: g^T (H_val + damping I) g instead of g^T (H_val + damping I)^-1 g":
                     (G * (G @ Hd)).sum(1),
                 "the squared norm ||g_i||^2: the curvature is missing": (G * G).sum(1),
                 "||g_i||^2 / damping: H_val is dropped and only the damping inverted": (G * G).sum(1) / damping,
                 "one number for all points (a mean over the rows), not one score per training point": expected.mean(),
                 "the whole n x n matrix G (H_val + damping I)^-1 G^T; the score is its diagonal":
                     G @ torch.linalg.solve(Hd, G.T)}
        if torch.linalg.matrix_rank(H) == p:  # without damping only an invertible H_val has an answer
            wrong["no damping: (H_val + damping I)^-1, not H_val^-1"] = (G * torch.linalg.solve(H, G.T).T).sum(1)
        cases.append(Case(f"{label}, damping={damping}", (G, H, damping), expected, wrong))
    return cases


register(Exercise(
    name="vm_score",
    notebook="04",
    task="vm_score(g_train, H_val, damping) -> (n,): row i is g_i^T (H_val + damping I)^-1 g_i, the VM score "
         "(docs/PAPER.md, Eq. 13), with g_train (n, p) the gradients and H_val (p, p) the validation curvature at theta~.",
    hint="Solve, do not invert: U = torch.linalg.solve(H_val + damping * torch.eye(p, dtype=H_val.dtype), "
         "g_train.T).T, then (g_train * U).sum(1).",
    cases=_vm_cases,
))

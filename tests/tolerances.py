"""Every numeric tolerance the tests use, in one place, with the reason for its size."""

# float64 identities (same math, different evaluation order): round-off only.
EXACT = dict(rtol=1e-9, atol=1e-11)
# CG to tol=1e-12 on a well-conditioned problem (damping 0.1).
CG = dict(rtol=1e-6, atol=1e-9)
# LiSSA's Neumann series after enough terms: geometric convergence, stopped at a step-size tolerance.
LISSA = dict(rtol=1e-4, atol=1e-7)
# float32 per-sample gradients vs a loop of autograd calls (different reduction order).
FLOAT32 = dict(rtol=1e-4, atol=1e-6)
# Influence vs leave-one-out retraining on convex logistic regression (the acceptance bar).
LOO_PEARSON = 0.99
LOO_SIGN_AGREEMENT = 0.95
# Hutchinson trace with 2,000 Rademacher probes: relative standard error ~ sqrt(2 ||H||_F^2 / s) / tr(H).
HUTCHINSON_REL = 0.05

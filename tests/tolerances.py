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
# float64 per-sample gradients of conv layers by unfolding (one batched backward, then sum_t e_it x_it^T) vs a loop
# of autograd calls, and Jacobian / Gauss-Newton products from those factors vs torch.func's: the same sums in
# another order, round-off only.
CONV_GRADS = dict(rtol=1e-10, atol=1e-12)
# float64 VM/FVM scores (and ifkit.clean's flags and labels) from the layer-wise Woodbury kernel vs the generic
# low-rank path: (||g||^2 - ||L^-1 A g||^2) / damping subtracts nearly equal numbers, so round-off grows.
STRUCTURED_VS_GENERIC = dict(rtol=1e-8, atol=1e-10)

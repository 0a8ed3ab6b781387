"""Every numeric tolerance the tests use, in one place, with the reason for its size.

A test imports the name (``from tolerances import SOLVE``) and never writes a tolerance inline: to loosen one,
change it here and say why. rtol=0, atol=0 (bit-for-bit equality) is not a tolerance and stays inline.
"""

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

# ------------------------------------------------------------------------------------------ float64 round-off
# The same float64 tensors through one formula, evaluated in a different order, on O(1) values of a few hundred
# entries (test_flat: SAM's perturbation and step): a few ulps, far below EXACT.
ROUNDOFF = dict(rtol=1e-12, atol=1e-14)
# A float64 scalar recomputed by the same formula (a loss, a norm, a Spearman from its closed form): a few ulps.
SCALAR_REL = 1e-12
# A scalar recomputed by the identical sequence of operations (the loss a step returns vs the loss at theta).
SCALAR_SAME_OPS_REL = 1e-14
# A float64 scalar through a different but exact route (a one-step ascent vs SAM's formula, a sharpness that
# sums a few hundred terms in another order): round-off, with room for the summation order of the two routes.
SCALAR_ROUTE_REL = 1e-10
SCALAR_ROUTE_LOOSE_REL = 1e-9
# A float64 result reached by a different exact linear-algebra route: Cholesky vs eigendecomposition vs
# Kronecker factors, cached vs recomputed gradients, factored vs dense layers. The damped matrix's condition
# number multiplies the 1e-16 round-off; 1e-8 leaves room for condition numbers up to ~1e6 at the dampings used.
SOLVE = dict(rtol=1e-8, atol=1e-10)
# A subset of the candidates vs the same entries of the full score: the same arithmetic on fewer rows.
SUBSET = dict(rtol=1e-10, atol=1e-12)
# The regression snapshot (tests/score_snapshot.py): bit-equal on the machine that wrote it; 1e-12 absorbs other
# CPUs' float rounding, and anything larger is a change of the numbers, which the snapshot exists to catch.
SNAPSHOT_TOL = dict(rtol=1e-12, atol=1e-15)
# torchrun ranks vs one process in float64: only the summation order inside the final chunks differs (~1e-15 seen).
DISTRIBUTED = dict(rtol=1e-10, atol=1e-12)

# ------------------------------------------------------------------------------------------ iterative solvers
# Dense GGN vs its CG solve to tol=1e-12 on a 7-point regression net (test_flat_influence): CG's relative
# residual times the condition number, with a floor for entries near zero.
CG_DENSE_GGN = dict(rtol=1e-6, atol=1e-8)
# Power iteration run to tol=1e-12 on a 12 x 12 SPD matrix with a well separated top eigenvalue.
POWER_ITERATION_REL = 1e-6
# Power iteration to tol=1e-13 (3,000 steps) on a tiny net's Hessian / GGN vs its dense eigvalsh: the stopping
# rule bounds the change between steps, which bounds the error only through the eigengap; 1e-5 allows a small gap.
POWER_ITERATION_NET_REL = 1e-5
# ifkit.diagnose's numbers recomputed by hand with the same functions (SAM sharpness, power iteration to
# tol=1e-4 started the same way, theta~'s relative move): round-off, far inside 1e-6.
DIAGNOSE_REL = 1e-6
# Projected ascent for the sharpness of a quadratic (300 steps) vs the trust-region solution by bisection:
# sharpness 1e-8 relative when the ball's radius is the only scale (gamma * e_1 on a diagonal A), 1e-7 with a
# general A; the perturbation lands on the sphere to round-off (1e-9).
ASCENT_DIAGONAL_REL = 1e-8
ASCENT_GENERAL_REL = 1e-7
ASCENT_RADIUS_REL = 1e-9
# The maximum on the sphere by a 200,000-point Fibonacci grid (spacing ~sqrt(4 pi / k) ~ 8e-3): around a smooth
# maximum the grid undershoots by O(spacing^2); the ascent must match it to 1e-6 and may not fall below it.
SPHERE_GRID_ABS = 1e-6
# The extreme eigenvalues of a 200 x 200 diagonal operator after 60 iterations (test_compare_libraries).
EXTREME_EIG_ABS = 1e-3
# L-BFGS to a gradient norm of 1e-10 vs scikit-learn's lbfgs (tol 1e-12): two solvers' stopping points.
SKLEARN_ABS = 1e-6
# A warm-started L-BFGS vs a cold one on the same strictly convex objective: both stop at a gradient norm of
# ~1e-10 near the unique optimum, so their weights differ by about that over the smallest curvature.
WARM_START_ABS = 1e-8

# ------------------------------------------------------------------------------------------------- float32
# float32 evaluation in batches of 64 vs one batch: reduction order in float32 (~1e-7 relative per op).
FLOAT32_BATCHED_REL = 1e-6
# float32 gradients of the same loss cut to a shorter sequence, or of two formulas of the same loss.
FLOAT32_SAME = dict(rtol=1e-5, atol=1e-6)
FLOAT32_SAME_SMALL = dict(rtol=1e-5, atol=1e-7)  # gradients of size ~1e-3: a smaller floor
# float32 per-sample gradients by vmap vs a loop (generation models, LoRA: FLOAT32 above), and per-checkpoint
# TracIn vs the library's: different kernels and reduction order (1e-4 relative), floors at the entries' scale.
FLOAT32_LOOP_SMALL = dict(rtol=1e-4, atol=1e-7)
FLOAT32_TRACIN_ATOL_SCALE = 1e-6  # times the largest |entry|
# graddot through the generation pipeline vs per-sample gradients by hand: float32 dot products over ~10^4
# parameters with cancellation (the two gradients point in unrelated directions): 1e-3 relative.
FLOAT32_DOT = dict(rtol=1e-3, atol=1e-7)
# Library comparisons (test_compare_libraries): relative Frobenius error of a whole score table.
LIBRARY_SAME = 1e-4  # the same float64 computation in another library
LIBRARY_SOLVE = 1e-3  # the same solve, another library's iterative method / float32 steps
LIBRARY_FLOAT32_EIG = 1e-2  # captum: float32 eigendecomposition of the summed-loss Hessian

# ------------------------------------------------------------------------------------------ reported numbers
# An AUC quoted in the docs to 3 decimals vs the CSV: half a unit in the last printed digit.
QUOTED_3DP_ABS = 5e-4
# A mean of float rankings against scikit-learn's roc_auc_score: the same fractions of integer counts.
AUC_SKLEARN_ABS = 1e-12
# Plotted values read back from a matplotlib artist: float64 offsets survive to ~1e-16, bar heights pass through
# float32 scores (1e-7), plus the axis transform's round-off.
PLOTTED = dict(rtol=1e-8)
PLOTTED_FLOAT32 = dict(rtol=1e-6)
# LPF-SGD's per-filter noise: the std of 4,000 / 3,000 / 500 draws has relative standard error 1.1% / 1.3% /
# 3.2%; the bars are 4-5 standard errors (so a wrong scale, not chance, is what fails them).
NOISE_STD_ABS = 0.05  # the 4,000-draw filters and the 3,000-draw bias
NOISE_STD_FEW_ABS = 0.15  # the 500-draw convolution filters

# ------------------------------------------------------------------ detection AUC: a margin over a named baseline
# A "this method sees the label noise" test asserts  AUC(method) >= AUC(baseline) + margin, the baseline being
#   "random": AUC 0.5, a score unrelated to which labels were flipped;
#   "loss":   the training loss at the same parameters, the one-line detector an influence method should beat.
# Each margin is the gap measured on the test's fixed seed (the comment: method AUC, gap) minus a slack, rounded
# down to 0.01. Slack 0.02 on the convex logistic regression (unique optimum: only float round-off moves it);
# 0.03 on networks trained by SGD/Adam, whose training path can move with float reordering across BLAS builds.
# The loss is named as the baseline only where the margin over it stays >= 0.02 after the slack.
RANDOM_AUC = 0.5
AUC_SLACK_CONVEX = 0.02
AUC_SLACK_NETWORK = 0.03

# conftest.logreg (digits, 300 training points, 60 flipped, at the exact optimum): loss AUC 0.9517.
LOGREG_AUC = {
    "loss": ("random", 0.43),  # 0.9517, +0.452
    "graddot": ("random", 0.16),  # 0.6835, +0.184
    "gradcos": ("random", 0.16),  # 0.6881, +0.188
    "tracin": ("random", 0.16),  # 0.6835, +0.184 (one checkpoint: graddot)
    "datainf": ("random", 0.17),  # 0.6994, +0.199
    "gex": ("random", 0.40),  # 0.9284, +0.428
    "self-if": ("random", 0.42),  # 0.9427, +0.443
    "if-exact": ("loss", 0.02),  # 0.9953, +0.044 over the loss
    "if-cg": ("loss", 0.02),  # 0.9953, +0.044
    "if-lissa": ("loss", 0.02),  # 0.9955, +0.044
    "ekfac": ("loss", 0.02),  # 0.9961, +0.044
}

# conftest.tiny_mlp (a tanh MLP memorising 200 digits, 40 flipped): loss AUC 0.8292.
TINY_MLP_AUC = {
    "if-exact last layer": ("random", 0.31),  # 0.8434, +0.343 (only +0.014 over the loss)
    "ekfac": ("loss", 0.05),  # 0.9095, +0.080 over the loss
    "vm ekfac": ("loss", 0.05),  # 0.9112, +0.082 over the loss (20 flat steps)
}

# test_detection.TINY (SmallCNN on 200 digits images, 30% symmetric noise, seed 0): loss at theta* AUC 0.8777.
DETECTION_AUC = {
    "loss": ("random", 0.34),  # 0.8777, +0.378
    "graddot": ("random", 0.12),  # 0.6569, +0.157
    "tracin": ("random", 0.19),  # 0.7217, +0.222
    "if-lissa": ("random", 0.30),  # 0.8301, +0.330
    "if-cg": ("random", 0.29),  # 0.8220, +0.322
    "ekfac": ("random", 0.37),  # 0.9062, +0.406 (+0.029 over the loss)
    "datainf": ("random", 0.13),  # 0.6602, +0.160
    "self-if": ("random", 0.36),  # 0.8944, +0.394 (+0.017 over the loss)
    "gex": ("random", 0.27),  # 0.8035, +0.304
    "vm": ("loss", 0.06),  # 0.9723, +0.095 over the loss
    "fvm": ("loss", 0.06),  # 0.9725, +0.095
    "fvm-sam": ("loss", 0.06),  # 0.9724, +0.095
    "loss-early": ("loss", 0.04),  # 0.9540, +0.076: early stopping alone beats the loss at theta*
    "vm-early": ("loss", 0.07),  # 0.9817, +0.104
    "vm-best-val": ("loss", 0.07),  # 0.9817, +0.104
    "fvm-best-val": ("loss", 0.07),  # 0.9813, +0.104
    "cleanlab": ("loss", 0.07),  # 0.9787, +0.101
    "loss@theta~": ("loss", 0.06),  # 0.9692, +0.092
    "gradnorm@theta~": ("loss", 0.06),  # 0.9690, +0.091
    "cleanlab-sval": ("loss", 0.07),  # 0.9865, +0.109: S_val folded into every fold
    "loss-sval": ("loss", 0.07),  # 0.9811, +0.103: a model trained on S_val alone
    "loss-best-val": ("loss", 0.05),  # 0.9540, +0.076: the checkpoint ifkit.clean picks
    "gradnorm-best-val": ("loss", 0.05),  # 0.9512, +0.073
    "loss-best-val@theta~": ("loss", 0.07),  # 0.9820, +0.104: and its theta~
    "gradnorm-best-val@theta~": ("loss", 0.07),  # 0.9817, +0.104
    "ifkit-clean-vm": ("loss", 0.07),  # 0.9817, +0.104: ifkit.clean(score="vm")
}
# float64 per-sample gradients of conv layers by unfolding (one batched backward, then sum_t e_it x_it^T) vs a loop
# of autograd calls, and Jacobian / Gauss-Newton products from those factors vs torch.func's: the same sums in
# another order, round-off only.
CONV_GRADS = dict(rtol=1e-10, atol=1e-12)
# float64 VM/FVM scores (and ifkit.clean's flags and labels) from the layer-wise Woodbury kernel vs the generic
# low-rank path: (||g||^2 - ||L^-1 A g||^2) / damping subtracts nearly equal numbers, so round-off grows.
STRUCTURED_VS_GENERIC = dict(rtol=1e-8, atol=1e-10)

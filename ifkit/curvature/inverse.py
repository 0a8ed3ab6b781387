"""One entry point for (H_tr + damping I)^-1 V over the training set: ``inverse(eng, V, kind)``.

Every inverse-Hessian method (if-exact, if-cg, if-lissa, datainf, ekfac, self-if) asks the same question of a
different solver; the choice is a string, so a user can swap solvers under any of them with ``curvature=``:

    kind        curvature                     solver                          cost
    "exact"     Hessian H                     Cholesky                        O(p^3) + p HVPs
    "ggn"       Gauss-Newton G (PSD)          Cholesky                        O(p^3) + p GVPs
    "cg"        Hessian H                     conjugate gradient              iters HVPs per batch of columns
    "ggn-cg"    Gauss-Newton G                conjugate gradient              iters GVPs
    "lissa"     G (H: lissa_products="hessian")  LiSSA (Agarwal et al. 2017) iters products
    "datainf"   per-layer G^T G / n           DataInf closed form (Kwon 2024) two gradient passes, no HVP
    "ekfac"     block-diagonal EK-FAC of G    eigenbasis solve                two factor passes, O(p) a solve
    "kfac"      block-diagonal K-FAC of G     eigenbasis solve                two factor passes, O(p) a solve
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.cache import module_blocks
from ..core.func import Problem, ggn_vp_fn, hessian_exact
from ..core.grads import GradEngine
from ..core.options import Options
from ..core.products import curvature_vp_fn
from . import kfac
from .solvers import check_damping, conjugate_gradient, lissa, solve_cholesky, top_eigenvalue

KINDS = ("exact", "ggn", "cg", "ggn-cg", "lissa", "datainf", "ekfac", "kfac")

# Above this many training points LiSSA switches to mini-batch products (Agarwal et al.'s stochastic form) and
# estimates its scale on a sample: measured at n_train = 8,000 (784-128-10 MLP), batches of 512 gave scores with
# Spearman 0.9997 to the full-batch ones, 9x faster. Below it, full batch is cheap and exactly deterministic.
LISSA_FULL_MAX = 4096
LISSA_AUTO_BATCH = 512
CG_ITERS = 100  # conjugate-gradient iterations unless iters= is given
LISSA_ITERS = 500  # LiSSA recursion depth unless iters= is given
# if-lissa's old spelling of lissa_products: curvature="cg" or "exact" meant Hessian products, anything else G
LEGACY_LISSA_PRODUCTS = {"cg": "hessian", "exact": "hessian"}


@dataclass(frozen=True)
class CurvatureOptions(Options):
    """The options of every method that inverts a curvature (classic influence, self-influence, VM/FVM).

    Attributes:
        curvature: which curvature and solver (module table); None: the method's own default.
        iters: CG iterations (None: CG_ITERS) or LiSSA depth (None: LISSA_ITERS).
        tol: relative residual at which CG and LiSSA stop early.
        scale: LiSSA scale; None: 1.5 x (top eigenvalue of H + damping), measured by power iteration.
        lissa_batch: None: full-batch LiSSA products up to LISSA_FULL_MAX training points, mini-batches of
            LISSA_AUTO_BATCH above; an int: stochastic mini-batch products of that size; "full": always full
            batch. Seeded either way.
        lissa_products: the products LiSSA iterates with: "ggn" (Gauss-Newton, PSD: converges for any
            damping >= 0; the default) or "hessian" (as in Koh & Liang 2017).
    """

    curvature: str | None = None
    iters: int | None = None
    tol: float = 1e-8
    scale: float | None = None
    lissa_batch: int | str | None = None
    lissa_products: str = "ggn"

    @property
    def cg_iters(self) -> int:
        return self.iters if self.iters is not None else CG_ITERS

    @property
    def lissa_iters(self) -> int:
        return self.iters if self.iters is not None else LISSA_ITERS




def inverse(eng: GradEngine, V: Tensor, kind: str) -> Tensor:
    """(H_tr + damping I)^-1 V for the curvature ``kind`` (module table) of the mean training loss at theta.

    V is (p,) or (p, k); the result has its shape.
    """
    opt = eng.opt
    if kind == "lissa":
        return lissa_inverse(eng, V)
    if kind == "datainf":
        return datainf_apply(eng, V if V.dim() == 2 else V.unsqueeze(1)).reshape(V.shape)
    damping = check_damping(opt.damping)
    prob, X, y = eng.prob, eng.X, eng.y
    if kind == "exact":
        return solve_cholesky(hessian_exact(prob, X, y, opt.budget_mb), V, damping)
    if kind == "ggn":
        return solve_cholesky(dense_curvature(ggn_vp_fn(prob, X, y), prob, opt.budget_mb), V, damping)
    if kind in ("cg", "ggn-cg"):
        # the graph is built once and every CG step is a backward pass through it (core/products.py)
        mv = curvature_vp_fn(prob, X, y, "hessian" if kind == "cg" else "ggn", keep_mb=opt.budget_mb / 4)
        return conjugate_gradient(mv, V, damping, iters=opt.cg_iters, tol=opt.tol)
    if kind in kfac.KINDS:  # block-diagonal Kronecker Gauss-Newton: approximate, O(p) per solve
        return kronecker(eng, kind).solve(V, damping)
    raise ValueError(f"unknown curvature {kind!r}: use one of {', '.join(KINDS)}")


def kronecker(eng: GradEngine, kind: str = "ekfac") -> kfac.KroneckerCurvature:
    """(E)K-FAC factors of the training set's Gauss-Newton matrix at theta (curvature/kfac.py)."""
    if kind not in kfac.KINDS:
        raise ValueError(f"Kronecker curvature is 'ekfac' or 'kfac', got {kind!r}")
    return kfac.fit(eng.prob, eng.X, eng.y, kind=kind, chunk_size=eng.opt.chunk_size, seed=eng.opt.seed,
                    progress=eng.opt.progress)


def dense_curvature(mv: Callable[[Tensor], Tensor], prob: Problem, budget_mb: float) -> Tensor:
    """The (p, p) matrix of the symmetric operator ``mv``, built column block by block, symmetrised."""
    need_mb = prob.p**2 * prob.theta.element_size() / 2**20
    if need_mb > budget_mb:
        raise MemoryError(
            f"a dense {prob.p:,} x {prob.p:,} curvature matrix needs {need_mb:,.0f} MB (> budget_mb={budget_mb:,.0f}):"
            " use curvature='cg' or 'ggn-cg', restrict params=, or raise budget_mb"
        )
    eye = torch.eye(prob.p, dtype=prob.theta.dtype, device=prob.theta.device)
    # Blocks of 256 columns: the vmapped product holds a copy of the activations per column, so all p columns
    # at once took 4 GB for a 1.6k-parameter LoRA generator with 272 outputs on 200 examples (blocks: < 1 GB).
    M = torch.cat([mv(eye[:, s : s + 256]) for s in range(0, prob.p, 256)], dim=1)  # (p, p)
    return (M + M.T) / 2


def fits_dense(prob: Problem, budget_mb: float) -> bool:
    """Whether a dense (p, p) curvature matrix takes at most a quarter of ``budget_mb``."""
    return prob.p**2 * prob.theta.element_size() / 2**20 <= budget_mb / 4


def lissa_inverse(eng: GradEngine, V: Tensor) -> Tensor:
    """(H_tr + damping I)^-1 V by LiSSA; scale defaults to 1.5 x the measured top eigenvalue of H + damping.

    Curvature: the Gauss-Newton matrix by default (PSD, so the series converges for any damping >= 0);
    ``lissa_products="hessian"`` uses Hessian-vector products, as in Koh & Liang 2017. Products are
    full-batch up to LISSA_FULL_MAX training points and mini-batches of LISSA_AUTO_BATCH above (``lissa_batch``).
    """
    prob, opt = eng.prob, eng.opt
    damping = check_damping(opt.damping)
    what = opt.lissa_products
    if what not in ("ggn", "hessian"):
        raise ValueError(f"lissa_products must be 'ggn' or 'hessian', got {what!r}")
    mv_fn = lambda p_, X_, y_: curvature_vp_fn(p_, X_, y_, what, keep_mb=opt.budget_mb / 4)  # noqa: E731
    batch = opt.lissa_batch
    if batch is None:
        batch = LISSA_AUTO_BATCH if eng.n > LISSA_FULL_MAX else "full"
    if batch != "full" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"lissa_batch must be a positive int, 'full' or None (auto), got {batch!r}")
    # full-batch products only when they are used (graphs are built, and kept, on creation)
    full = mv_fn(prob, eng.X, eng.y) if batch == "full" else None
    scale = opt.scale
    if scale is None:
        # the top eigenvalue on a fixed sample of 4 x LISSA_AUTO_BATCH points when mini-batching (the sample's
        # curvature is an unbiased estimate; the 1.5 margin covers its spread), else on all of them
        sample = full
        if batch != "full":
            gen = torch.Generator().manual_seed(opt.seed + 7919)
            idx = torch.randperm(eng.n, generator=gen)[: 4 * LISSA_AUTO_BATCH]
            sample = mv_fn(prob, eng.X[idx], eng.y[idx])
        lam_max = top_eigenvalue(sample, prob.p, iters=30, seed=opt.seed, dtype=prob.theta.dtype,
                                 device=prob.theta.device)
        scale = 1.5 * (abs(lam_max) + damping)
    batch_mv = None
    if batch != "full":
        gen = torch.Generator().manual_seed(opt.seed)
        b = int(batch)
        # Same seed -> same mini-batches -> identical result; each iteration resamples (Agarwal et al. 2017).
        # sorted: the same batch (its product is a sum over its points), gathered in memory order
        order = [torch.randint(0, eng.n, (b,), generator=gen).sort().values for _ in range(opt.lissa_iters)]
        batch_mv = lambda t: mv_fn(prob, eng.X[order[t]], eng.y[order[t]])  # noqa: E731
    return lissa(full, V, damping, scale=scale, iters=opt.lissa_iters, tol=opt.tol, batch_matvecs=batch_mv)


def datainf_apply(eng: GradEngine, V: Tensor) -> Tensor:
    """DataInf's closed-form inverse applied to V (p, k), block by block (one block per layer).

    Per block l:  (G_l^T G_l / n + lam_l I)^-1 v_l ~= (v_l - 1/n sum_i g_il (g_il^T v_l) / (lam_l + ||g_il||^2)) / lam_l
    with lam_l = damping if passed explicitly, else Kwon et al.'s 0.1 x mean_i ||g_il||^2 / p_l. Two gradient
    passes; for Linear-layer networks they read per-layer factors and never form G (core/factors.py).
    """
    blocks = module_blocks(eng.prob)
    if not eng.opt.gave("damping") or eng.opt.damping in (None, "auto"):
        sq = sum(gs.block_sq_norms().sum(0) for gs in eng.sets())  # (L,) sum_i ||g_il||^2
        sizes = torch.tensor([b.stop - b.start for b in blocks], dtype=V.dtype, device=V.device)
        lams = 0.1 * sq / eng.n / sizes  # (L,)
    else:
        lams = torch.full((len(blocks),), check_damping(eng.opt.damping), dtype=V.dtype, device=V.device)
    acc = torch.zeros_like(V)  # (p, k): sum_i g_il coef_il, per block
    for gs in eng.sets():
        coef = gs.block_dots(V) / (lams + gs.block_sq_norms())[:, :, None]  # (c, L, k)
        acc += gs.tmatmul_blocks(coef)
    out = torch.empty_like(V)
    for j, b in enumerate(blocks):
        out[b] = (V[b] - acc[b] / eng.n) / lams[j]
    return out


__all__ = ["CG_ITERS", "KINDS", "LEGACY_LISSA_PRODUCTS", "LISSA_ITERS", "CurvatureOptions", "LISSA_AUTO_BATCH", "LISSA_FULL_MAX", "datainf_apply", "dense_curvature", "fits_dense",
           "inverse", "kronecker", "lissa_inverse"]

"""The curvature factory: the ONE place where a curvature name becomes an inverse (curvature/forms.py).

Every method that inverts a curvature asks the same question of a different solver, and the choice is a string,
so a user can swap solvers under any method with ``curvature=``. Over the training set (classic influence,
self-influence: ``training_curvature``) and over S_val at theta~ (VM/FVM: ``validation_curvature``):

    kind        curvature                     solver                          cost
    "exact"     Hessian H                     Cholesky (quadratic forms and   O(p^3) + p HVPs
                                              S_val: eigendecomposition)
    "ggn"       Gauss-Newton G (PSD)          as "exact"; over S_val the      O(p^3) + p GVPs; low rank:
                                              low-rank Woodbury form          O(r^2 p + r^3), r = n_val K
    "cg"        Hessian H                     conjugate gradient              iters HVPs per batch of columns
    "ggn-cg"    Gauss-Newton G                conjugate gradient              iters GVPs
    "lissa"     G (H: lissa_products=         LiSSA (Agarwal et al. 2017)     iters products
                "hessian"), training set only
    "datainf"   per-layer G^T G / n           DataInf closed form (Kwon 2024) two gradient passes, no HVP
    "ekfac"     block-diagonal EK-FAC of G    eigenbasis solve                two factor passes, O(p) a solve
    "kfac"      block-diagonal K-FAC of G     eigenbasis solve                two factor passes, O(p) a solve

Each form answers solve / quad / quad_sets (forms.py). Two sides differ where measured or where it is cheaper:
products over the training set keep their autograd graph (core/products.py: many products, many points), over
S_val they are plain functional products; dense curvatures over S_val are solved through the eigendecomposition
(one factorisation serves both solves and scores), over the training set by Cholesky.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import factors
from ..core.cache import DenseGrads, module_blocks
from ..core.func import Problem, ggn_vp_fn, hessian_exact, hvp_fn
from ..core.grads import GradEngine, stream_grads
from ..core.options import Options
from ..core.products import curvature_vp_fn
from . import kfac
from .forms import CG, Curvature, DataInf, Dense, Kronecker, LiSSA, dense_curvature, fits_dense
from .solvers import check_damping, top_eigenvalue
from .val_inverse import LowRankGGN, StructuredGGN, lowrank_fits

KINDS = ("exact", "ggn", "cg", "ggn-cg", "lissa", "datainf", "ekfac", "kfac")
KRONECKER = kfac.KINDS  # the kinds of method "ekfac"

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


def training_curvature(eng: GradEngine, kind: str) -> Curvature:
    """(H_tr + damping I)^-1 for the curvature ``kind`` (module table) of the mean training loss at theta."""
    return _build(kind, eng.prob, eng.X, eng.y, eng.opt, validation=False, grad_sets=eng.sets)


def validation_curvature(prob: Problem, Xv: Tensor, yv: Tensor, opt: CurvatureOptions,
                         structured: bool = False) -> Curvature:
    """(H~_val + damping I)^-1 for the curvature of the mean loss over (Xv, yv) at ``prob``'s theta (theta~).

    ``curvature=None``: "ggn" when its low-rank form fits the budget or a dense p x p matrix does, else "ggn-cg".
    ``structured``: only quadratic forms will be asked for, so Linear-layer networks may get StructuredGGN.
    """
    damping = check_damping(opt.damping)
    lowrank = lowrank_fits(prob, Xv, yv, damping, opt.budget_mb, structured and factors.supported(prob, Xv))
    kind = opt.curvature or ("ggn" if lowrank or fits_dense(prob, opt.budget_mb) else "ggn-cg")
    return _build(kind, prob, Xv, yv, opt, validation=True, lowrank=lowrank, structured=structured)


def inverse(eng: GradEngine, V: Tensor, kind: str) -> Tensor:
    """(H_tr + damping I)^-1 V over the training set; V is (p,) or (p, k), the result has its shape."""
    return training_curvature(eng, kind).solve(V)


def _build(kind: str, prob: Problem, X: Tensor, y: Tensor, opt: CurvatureOptions, *, validation: bool,
           grad_sets=None, lowrank: bool = False, structured: bool = False) -> Curvature:
    """The one dispatch from a curvature name to its form (module table)."""
    auto_damping = kind == "datainf" and (not opt.gave("damping") or opt.damping in (None, "auto"))
    damping = None if auto_damping and not validation else check_damping(opt.damping)
    name = "H~_val" if validation else "H"
    if kind == "ggn" and validation and lowrank:
        if structured and factors.supported(prob, X):  # Linear-layer networks: the kernel from per-layer factors
            return StructuredGGN(prob, X, y, damping)
        return LowRankGGN(prob, X, y, damping)
    if kind in ("exact", "ggn"):
        M = hessian_exact(prob, X, y, opt.budget_mb) if kind == "exact" else dense_curvature(
            ggn_vp_fn(prob, X, y), prob, opt.budget_mb)
        return Dense(M, damping, name, by_eigh=validation)
    if kind in ("cg", "ggn-cg"):
        what = "hessian" if kind == "cg" else "ggn"
        if validation:  # few products on few points: the plain functional ones
            mv = hvp_fn(prob, X, y) if what == "hessian" else ggn_vp_fn(prob, X, y)
        else:  # the graph is built once and every CG step is a backward pass through it (core/products.py)
            mv = curvature_vp_fn(prob, X, y, what, keep_mb=opt.budget_mb / 4)
        return CG(mv, damping, opt.cg_iters, opt.tol)
    if kind == "lissa" and not validation:
        return _lissa(prob, X, y, opt, damping)
    if kind == "datainf":
        blocks = module_blocks(prob)
        if validation:  # S_val is small: its per-sample gradients at theta~, once, as one dense chunk
            Gv = torch.cat([G for _, G in stream_grads(prob, X, y, opt.chunk_size)])  # (n_val, p)
            grad_sets = lambda: [DenseGrads(Gv, blocks)]  # noqa: E731
        lam = None if auto_damping else damping
        return DataInf(grad_sets, len(X), blocks, lam, prob.theta.dtype, prob.theta.device)
    if kind in KRONECKER:  # block-diagonal Kronecker Gauss-Newton: approximate, O(p) per solve
        fit = dict(seed=opt.seed) if validation else dict(chunk_size=opt.chunk_size, seed=opt.seed,
                                                           progress=opt.progress)
        return Kronecker(kfac.fit(prob, X, y, kind=kind, **fit), damping, factored=not validation)
    if validation:
        raise ValueError(f"unknown curvature {kind!r} for VM/FVM: use 'ggn', 'exact', 'ggn-cg', 'cg', "
                         "'ekfac', 'kfac' or 'datainf'")
    raise ValueError(f"unknown curvature {kind!r}: use one of {', '.join(KINDS)}")


def _lissa(prob: Problem, X: Tensor, y: Tensor, opt: CurvatureOptions, damping: float) -> LiSSA:
    """LiSSA over (X, y); scale defaults to 1.5 x the measured top eigenvalue of M + damping.

    Products: the Gauss-Newton matrix by default (PSD, so the series converges for any damping >= 0);
    ``lissa_products="hessian"`` uses Hessian-vector products, as in Koh & Liang 2017. Full-batch up to
    LISSA_FULL_MAX points and mini-batches of LISSA_AUTO_BATCH above (``lissa_batch``).
    """
    what, n = opt.lissa_products, len(X)
    if what not in ("ggn", "hessian"):
        raise ValueError(f"lissa_products must be 'ggn' or 'hessian', got {what!r}")
    mv_fn = lambda p_, X_, y_: curvature_vp_fn(p_, X_, y_, what, keep_mb=opt.budget_mb / 4)  # noqa: E731
    batch = opt.lissa_batch
    if batch is None:
        batch = LISSA_AUTO_BATCH if n > LISSA_FULL_MAX else "full"
    if batch != "full" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"lissa_batch must be a positive int, 'full' or None (auto), got {batch!r}")
    # full-batch products only when they are used (graphs are built, and kept, on creation)
    full = mv_fn(prob, X, y) if batch == "full" else None
    scale = opt.scale
    if scale is None:
        # the top eigenvalue on a fixed sample of 4 x LISSA_AUTO_BATCH points when mini-batching (the sample's
        # curvature is an unbiased estimate; the 1.5 margin covers its spread), else on all of them
        sample = full
        if batch != "full":
            gen = torch.Generator().manual_seed(opt.seed + 7919)
            idx = torch.randperm(n, generator=gen)[: 4 * LISSA_AUTO_BATCH]
            sample = mv_fn(prob, X[idx], y[idx])
        lam_max = top_eigenvalue(sample, prob.p, iters=30, seed=opt.seed, dtype=prob.theta.dtype,
                                 device=prob.theta.device)
        scale = 1.5 * (abs(lam_max) + damping)
    batch_mv = None
    if batch != "full":
        gen = torch.Generator().manual_seed(opt.seed)
        b = int(batch)
        # Same seed -> same mini-batches -> identical result; each iteration resamples (Agarwal et al. 2017).
        # sorted: the same batch (its product is a sum over its points), gathered in memory order
        order = [torch.randint(0, n, (b,), generator=gen).sort().values for _ in range(opt.lissa_iters)]
        batch_mv = lambda t: mv_fn(prob, X[order[t]], y[order[t]])  # noqa: E731
    return LiSSA(full, damping, scale, opt.lissa_iters, opt.tol, batch_mv)


__all__ = ["CG_ITERS", "KINDS", "KRONECKER", "LEGACY_LISSA_PRODUCTS", "LISSA_AUTO_BATCH", "LISSA_FULL_MAX",
           "LISSA_ITERS", "CurvatureOptions", "dense_curvature", "fits_dense", "inverse", "training_curvature",
           "validation_curvature"]

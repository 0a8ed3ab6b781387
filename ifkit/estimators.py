"""One short function per influence method, a registry, and the public ``score`` / ``pairwise`` entry points.

Sign convention (the same for every method):

* ``score(...)[i]``  = predicted INCREASE of the mean validation loss when training point i is up-weighted, or
  for self-influence methods ("loss", "self-if", "gex", "vm", "fvm") the method's own harmfulness measure.
  HIGHER = MORE HARMFUL = more likely mislabelled.
* ``pairwise(...)[q, i]`` = predicted change of query q's loss when training point i is up-weighted:
  negative = helpful ("proponent"), positive = harmful ("opponent").

Up-weighting z_i by eps moves the optimum by d theta / d eps = -H^-1 g_i (Koh & Liang 2017), so the first-order
change of a loss with gradient g is  d L / d eps = -g^T H^-1 g_i.  Removing the point is eps = -1/n_train.
"""

from __future__ import annotations

import copy
import difflib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import curvature as C
from . import distributed as D
from . import layerwise
from .func import (
    DEFAULT_CHUNK_SIZE,
    Problem,
    as_tensors,
    chunks,
    ggn_vp_fn,
    grad_dots,
    hessian_exact,
    hvp_fn,
    iter_grads,
    make_problem,
    mean_grad,
    param_names,
)
from .gradcache import DenseGrads, GradCache, GradSet, module_blocks
from .validate import validate

# Every option any method understands, with its default. Unknown names are refused with a suggestion.
DEFAULTS: dict[str, Any] = dict(
    damping=0.01,  # lam in (H + lam I)^-1; the L2 strength the model was trained with is the principled choice
    iters=None,  # CG iterations (100) / LiSSA depth (500)
    tol=1e-8,
    scale=None,  # LiSSA scale; None: 1.5 x (top eigenvalue of H + damping), measured by power iteration
    # None: full-batch HVPs up to LISSA_FULL_MAX training points, mini-batches of LISSA_AUTO_BATCH above;
    # an int: stochastic mini-batch HVPs of that size; "full": always full batch. Seeded either way.
    lissa_batch=None,
    checkpoints=None,  # TracIn: list of state_dicts or (state_dict, lr) pairs
    lrs=None,  # TracIn: learning rate of each checkpoint (default 1.0)
    curvature=None,  # "exact" | "ggn" | "cg" | "ggn-cg"; None picks per method and size
    ensemble_size=8,  # GEX
    gex_steps=100,
    gex_lr=0.05,
    gex_batch=64,
    budget_mb=1024.0,  # memory budget for the exact Hessian
    # False: stream training gradients, recomputed per pass; True: keep them for this call; a GradCache: keep
    # them across every call given that cache (ifkit/gradcache.py; keyed by model, parameters and data)
    cache_grads=False,
    params=None,
    loss="cross_entropy",
    chunk_size=DEFAULT_CHUNK_SIZE,  # unless given: fewer rows when (rows, p) would exceed budget_mb / 4
    seed=0,
    device=None,
    progress=False,
    # flat validation minima (VM / FVM)
    flat_optimizer=None,
    flat_steps=None,
    flat_lr=None,
    rho=None,
    sigma=None,
    flat_val=None,  # pairwise VM/FVM: the validation set to fine-tune on, when the queries are not S_val
    # None: under an initialised torch.distributed process group, each rank does the per-training-point pass
    # on its shard and the results are gathered (ifkit/distributed.py); False: always the whole set here
    distributed=None,
    # (X, y) points to score INSTEAD of the training points, with every training-set quantity (curvature,
    # TracIn checkpoints, GEX ensemble, DataInf's damping) still from train=: e.g. each flagged point under
    # every candidate label, for relabeling. None: score the training points.
    candidates=None,
)


@dataclass
class Ctx:
    """Everything a method needs: the problem at theta, training data, the other side (val or queries)."""

    model: torch.nn.Module
    X: Tensor
    y: Tensor
    Xv: Tensor
    yv: Tensor
    opt: dict[str, Any]
    prob: Problem = field(init=False)
    world: D.World | None = field(default=None, init=False)
    Xs: Tensor = field(init=False)  # the points scored: the training set, or the candidates= option
    ys: Tensor = field(init=False)
    cache: GradCache | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.prob = make_problem(self.model, self.opt["params"], self.opt["loss"])
        self.Xs, self.ys = self.opt["candidates"] if self.opt["candidates"] is not None else (self.X, self.y)
        c = self.opt["cache_grads"]
        self.cache = c if isinstance(c, GradCache) else (GradCache(budget_mb=math.inf) if c else None)
        # The one distributed hook: dots/apply (every method's final per-training-point pass) run on this
        # rank's shard and gather; everything else, curvature over the training set included, stays whole.
        self.world = D.world(self.opt["distributed"], self.X, self.y)

    @property
    def n(self) -> int:
        """Number of training points (the curvature's n)."""
        return len(self.X)

    @property
    def n_scored(self) -> int:
        """Number of points scored: n, or the number of candidates."""
        return len(self.Xs)

    def sets(self, prob: Problem | None = None, scored: bool = False, rows: slice = slice(None),
             dense: bool = False, desc: str = "gradients") -> Iterator[GradSet]:
        """Stream the per-sample gradients of the training set (``scored``: of the points scored) at ``prob``
        (default theta) over ``rows``, in chunks: per-layer factors for Linear-layer networks
        (``layerwise.FactoredGrads``, 4,096 rows a chunk), else dense blocks of ``chunk_size`` rows
        (``dense=True``: always chunk_size rows, e.g. for methods that will form G). From the cache when given."""
        prob = prob or self.prob
        X, y = (self.Xs, self.ys) if scored else (self.X, self.y)
        full = None
        if self.cache is not None and prob.model is self.model:  # not TracIn's checkpoint copies
            full = self.cache.get(prob, X, y, self.opt["chunk_size"])
        factored = isinstance(full, layerwise.FactoredGrads) if full is not None else layerwise.supported(prob, X)
        step = self.opt["chunk_size"] if dense or not factored else FACTOR_CHUNK
        if full is not None:
            full = full.rows(rows)
            yield from (full.rows(r) for r in chunks(full.n, step))
            return
        X, y = X[rows], y[rows]
        if factored:
            it = (layerwise.factored_grads(prob, X[r], y[r], chunk_size=step) for r in chunks(len(X), step))
        else:
            blocks = module_blocks(prob)
            it = (DenseGrads(G, blocks) for _, G in iter_grads(prob, X, y, step))
        yield from tqdm(it, total=math.ceil(len(X) / step), desc=desc, disable=not self.opt["progress"], leave=False)

    def grads(self, prob: Problem | None = None, rows: slice = slice(None), scored: bool = False) -> Iterator[Tensor]:
        """Stream dense (chunk_size, p) blocks of per-sample gradients (``sets`` with ``dense=True``)."""
        for gs in self.sets(prob, scored=scored, rows=rows, dense=True):
            yield gs.dense()

    def dots(self, V: Tensor, prob: Problem | None = None) -> Tensor:
        """G @ V over the points scored, (n,) or (n, k), never forming G: from cached gradients when there are,
        from per-layer factors for Linear-layer networks, else by forward-mode JVPs."""
        if (self.cache is not None and (prob is None or prob.model is self.model)
                or layerwise.supported(prob or self.prob, self.Xs)):
            # 10k examples, 784-128-10 MLP, time / batched backward: factors + G v 1.43x, JVPs 1.29x on a quiet
            # machine (0.74x vs 1.22x on a busy one); factors also serve k columns and the cache in one pass
            return self.apply_sets(lambda gs: gs.dots(V), prob)
        if self._has_conv:
            # Forward-mode through conv layers is slow on CPU: measured on SmallCNN (2k examples), JVP dots
            # took 3.2x a batched backward vs 1.6x for streaming per-sample gradients (MLP: 1.3x vs 76x).
            return self.apply(lambda G: G @ V, prob)
        return D.map_rows(lambda r: grad_dots(prob or self.prob, self.Xs[r], self.ys[r], V), self.n_scored,
                          self.world)

    @property
    def _has_conv(self) -> bool:
        return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.model.modules())

    def apply(self, fn: Callable[[Tensor], Tensor], prob: Problem | None = None) -> Tensor:
        """Concatenate fn(G_chunk) over the points scored (the training set unless candidates=): (n, ...)."""
        return D.map_rows(lambda r: torch.cat([fn(G) for G in self.grads(prob, rows=r, scored=True)]),
                          self.n_scored, self.world)

    def apply_sets(self, fn: Callable[[GradSet], Tensor], prob: Problem | None = None) -> Tensor:
        """Concatenate fn(GradSet chunk) over the points scored: (n, ...), gradients formed only if fn does."""
        return D.map_rows(lambda r: torch.cat([fn(gs) for gs in self.sets(prob, scored=True, rows=r)]),
                          self.n_scored, self.world)

    def damping(self) -> float:
        return C.check_damping(self.opt["damping"])


# ----------------------------------------------------------------------------------------------------------------
# Curvature choice shared by the inverse-Hessian methods
# ----------------------------------------------------------------------------------------------------------------


def inverse_hvp(prob: Problem, X: Tensor, y: Tensor, V: Tensor, opt: dict[str, Any], default: str) -> Tensor:
    """(H + damping I)^-1 V for the Hessian (or Gauss-Newton) of the mean loss over (X, y) at ``prob.theta``.

    ``curvature``: "exact" (full Hessian + Cholesky), "ggn" (exact Gauss-Newton + Cholesky), "cg" (Hessian CG),
    "ggn-cg" (Gauss-Newton CG), "ekfac"/"kfac" (Kronecker-factored Gauss-Newton, Linear/Conv2d layers only).
    V is (p,) or (p, k).
    """
    curv = opt["curvature"] or default
    damping = C.check_damping(opt["damping"])
    if curv == "exact":
        return C.solve_cholesky(hessian_exact(prob, X, y, opt["budget_mb"]), V, damping)
    if curv == "ggn":
        mv = ggn_vp_fn(prob, X, y)
        return C.solve_cholesky(_dense(mv, prob, opt["budget_mb"]), V, damping)
    if curv in ("cg", "ggn-cg"):
        mv = hvp_fn(prob, X, y) if curv == "cg" else ggn_vp_fn(prob, X, y)
        return C.conjugate_gradient(mv, V, damping, iters=opt["iters"] or 100, tol=opt["tol"])
    if curv in ("ekfac", "kfac"):  # block-diagonal Kronecker Gauss-Newton: approximate, O(p) per solve
        from . import kfac  # imported here: only this branch needs it

        F = kfac.fit(prob, X, y, kind=curv, chunk_size=opt["chunk_size"], seed=opt["seed"], progress=opt["progress"])
        return F.solve(V, damping)
    raise ValueError(f"unknown curvature {curv!r}: use 'exact', 'ggn', 'cg', 'ggn-cg', 'ekfac' or 'kfac'")


def _dense(mv: Callable[[Tensor], Tensor], prob: Problem, budget_mb: float) -> Tensor:
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


def _auto_exact(prob: Problem, opt: dict[str, Any], exact: str = "exact", cg: str = "cg") -> str:
    """Exact curvature when the dense matrix fits comfortably in the budget, CG otherwise."""
    return exact if prob.p**2 * prob.theta.element_size() / 2**20 <= opt["budget_mb"] / 4 else cg


# ----------------------------------------------------------------------------------------------------------------
# Methods. Each has a score form (n_train,) and, where it makes sense, a pairwise form (n_queries, n_train).
# In pairwise forms ctx.Xv / ctx.yv hold the queries.
# ----------------------------------------------------------------------------------------------------------------


def loss_score(ctx: Ctx) -> Tensor:
    """Training loss of each point at theta: the simplest self-influence baseline. Cost: one forward pass."""
    with torch.no_grad():
        return torch.cat([ctx.prob.losses(ctx.prob.theta, ctx.Xs[r], ctx.ys[r]) for r in _rows(ctx)])  # (n,)


def graddot_score(ctx: Ctx) -> Tensor:
    """Gradient dot product: score_i = -g_val^T g_i  (H replaced by I). Cost: one gradient pass."""
    g_val = mean_grad(ctx.prob, ctx.Xv, ctx.yv)  # (p,)
    return -ctx.dots(g_val)


def graddot_pairwise(ctx: Ctx) -> Tensor:
    """pairwise[q, i] = -g_q^T g_i."""
    Gq = _query_grads(ctx)  # (Q, p)
    return -ctx.dots(Gq.T).T  # (Q, n)


def gradcos_score(ctx: Ctx) -> Tensor:
    """Gradient cosine: score_i = -cos(g_val, g_i); insensitive to gradient scale. Cost: one gradient pass."""
    g_val = mean_grad(ctx.prob, ctx.Xv, ctx.yv)
    g_val = g_val / g_val.norm().clamp_min(1e-30)
    return ctx.apply_sets(lambda gs: -gs.dots(g_val) / gs.sq_norms().sqrt().clamp_min(1e-30))


def gradcos_pairwise(ctx: Ctx) -> Tensor:
    """pairwise[q, i] = -cos(g_q, g_i)."""
    Gq = _query_grads(ctx)
    Gq = Gq / Gq.norm(dim=1, keepdim=True).clamp_min(1e-30)  # (Q, p)
    return ctx.apply_sets(lambda gs: -gs.dots(Gq.T) / gs.sq_norms().sqrt().clamp_min(1e-30)[:, None]).T


def tracin_score(ctx: Ctx) -> Tensor:
    """TracIn-CP (Pruthi et al. 2020): score_i = -sum_c lr_c g_val(theta_c)^T g_i(theta_c).

    Cost: one gradient pass per checkpoint. Without ``checkpoints=`` only the final model is used (= graddot).
    """
    total = torch.zeros(ctx.n_scored, dtype=ctx.prob.theta.dtype, device=ctx.prob.theta.device)
    for prob, lr in _checkpoint_problems(ctx):
        g_val = mean_grad(prob, ctx.Xv, ctx.yv)
        total -= lr * ctx.dots(g_val, prob)
    return total


def tracin_pairwise(ctx: Ctx) -> Tensor:
    """pairwise[q, i] = -sum_c lr_c g_q(theta_c)^T g_i(theta_c)."""
    total = torch.zeros(len(ctx.Xv), ctx.n_scored, dtype=ctx.prob.theta.dtype, device=ctx.prob.theta.device)
    for prob, lr in _checkpoint_problems(ctx):
        Gq = _query_grads(ctx, prob)
        total -= lr * ctx.dots(Gq.T, prob).T
    return total


def _influence_score(ctx: Ctx, default_curvature: str) -> Tensor:
    """Classic influence: score_i = -g_val^T (H_tr + damping I)^-1 g_i (Koh & Liang 2017; paper Sec. 3).

    One inverse-Hessian product for the single right-hand side g_val (H symmetric), then one gradient pass.
    """
    g_val = mean_grad(ctx.prob, ctx.Xv, ctx.yv)  # (p,)
    v = inverse_hvp(ctx.prob, ctx.X, ctx.y, g_val, ctx.opt, default_curvature)  # (p,) = (H + lam I)^-1 g_val
    return -ctx.dots(v)


def _influence_pairwise(ctx: Ctx, default_curvature: str) -> Tensor:
    """pairwise[q, i] = -g_q^T (H_tr + damping I)^-1 g_i; one batched solve for all queries."""
    Gq = _query_grads(ctx)  # (Q, p)
    V = inverse_hvp(ctx.prob, ctx.X, ctx.y, Gq.T, ctx.opt, default_curvature)  # (p, Q)
    return -ctx.dots(V).T  # (Q, n)


def if_exact_score(ctx: Ctx) -> Tensor:
    """Classic influence with the exact Hessian (Cholesky): the oracle. Cost O(p^3) + one gradient pass."""
    return _influence_score(ctx, "exact")


def if_exact_pairwise(ctx: Ctx) -> Tensor:
    return _influence_pairwise(ctx, "exact")


def if_cg_score(ctx: Ctx) -> Tensor:
    """Classic influence with conjugate gradient: ``iters`` curvature products + one gradient pass.

    CG needs a positive-definite operator, so the default curvature is the Gauss-Newton matrix (PSD; equal to
    the Hessian for linear models such as logistic regression). ``curvature="cg"`` uses the true Hessian, which
    is indefinite away from a minimum of a network's loss.
    """
    return _influence_score(ctx, "ggn-cg")


def if_cg_pairwise(ctx: Ctx) -> Tensor:
    return _influence_pairwise(ctx, "ggn-cg")


# Above this many training points LiSSA switches to mini-batch products (Agarwal et al.'s stochastic form) and
# estimates its scale on a sample: measured at n_train = 8,000 (784-128-10 MLP), batches of 512 gave scores with
# Spearman 0.9997 to the full-batch ones, 9x faster. Below it, full batch is cheap and exactly deterministic.
LISSA_FULL_MAX = 4096
LISSA_AUTO_BATCH = 512


def _lissa_solve(ctx: Ctx, V: Tensor) -> Tensor:
    """(H_tr + damping I)^-1 V by LiSSA; scale defaults to 1.5 x the measured top eigenvalue of H + damping.

    Curvature: the Gauss-Newton matrix by default (PSD, so the series converges for any damping >= 0);
    ``curvature="cg"`` or ``"exact"`` uses Hessian-vector products, as in Koh & Liang 2017. Products are
    full-batch up to LISSA_FULL_MAX training points and mini-batches of LISSA_AUTO_BATCH above (``lissa_batch``).
    """
    prob, opt = ctx.prob, ctx.opt
    damping = ctx.damping()
    mv_fn = hvp_fn if opt["curvature"] in ("cg", "exact") else ggn_vp_fn
    batch = opt["lissa_batch"]
    if batch is None:
        batch = LISSA_AUTO_BATCH if ctx.n > LISSA_FULL_MAX else "full"
    if batch != "full" and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"lissa_batch must be a positive int, 'full' or None (auto), got {batch!r}")
    full = mv_fn(prob, ctx.X, ctx.y)
    scale = opt["scale"]
    if scale is None:
        # the top eigenvalue on a fixed sample of 4 x LISSA_AUTO_BATCH points when mini-batching (the sample's
        # curvature is an unbiased estimate; the 1.5 margin covers its spread), else on all of them
        sample = full
        if batch != "full":
            gen = torch.Generator().manual_seed(opt["seed"] + 7919)
            idx = torch.randperm(ctx.n, generator=gen)[: 4 * LISSA_AUTO_BATCH]
            sample = mv_fn(prob, ctx.X[idx], ctx.y[idx])
        lam_max = C.top_eigenvalue(sample, prob.p, iters=30, seed=opt["seed"], dtype=prob.theta.dtype,
                                   device=prob.theta.device)
        scale = 1.5 * (abs(lam_max) + damping)
    batch_mv = None
    if batch != "full":
        gen = torch.Generator().manual_seed(opt["seed"])
        b = int(batch)
        # Same seed -> same mini-batches -> identical result; each iteration resamples (Agarwal et al. 2017).
        order = [torch.randint(0, ctx.n, (b,), generator=gen) for _ in range(opt["iters"] or 500)]
        batch_mv = lambda t: mv_fn(prob, ctx.X[order[t]], ctx.y[order[t]])  # noqa: E731
    return C.lissa(full, V, damping, scale=scale, iters=opt["iters"] or 500, tol=opt["tol"], batch_matvecs=batch_mv)


def if_lissa_score(ctx: Ctx) -> Tensor:
    """Classic influence with LiSSA (Agarwal et al. 2017): ``iters`` HVPs + one gradient pass.

    score_i = -g_val^T h,  h = LiSSA estimate of (H_tr + damping I)^-1 g_val.
    """
    g_val = mean_grad(ctx.prob, ctx.Xv, ctx.yv)
    v = _lissa_solve(ctx, g_val)  # (p,)
    return -ctx.dots(v)


def if_lissa_pairwise(ctx: Ctx) -> Tensor:
    Gq = _query_grads(ctx)
    V = _lissa_solve(ctx, Gq.T)  # (p, Q)
    return -ctx.dots(V).T


def _datainf_apply(ctx: Ctx, V: Tensor) -> Tensor:
    """DataInf's closed-form inverse applied to V (p, k), block by block (one block per layer).

    Per block l:  (G_l^T G_l / n + lam_l I)^-1 v_l ~= (v_l - 1/n sum_i g_il (g_il^T v_l) / (lam_l + ||g_il||^2)) / lam_l
    with lam_l = damping if passed explicitly, else Kwon et al.'s 0.1 x mean_i ||g_il||^2 / p_l. Two gradient
    passes; for Linear-layer networks they read per-layer factors and never form G (ifkit/layerwise.py).
    """
    blocks = module_blocks(ctx.prob)
    if "damping" not in ctx.opt["_given"] or ctx.opt["damping"] in (None, "auto"):
        sq = sum(gs.block_sq_norms().sum(0) for gs in ctx.sets())  # (L,) sum_i ||g_il||^2
        sizes = torch.tensor([b.stop - b.start for b in blocks], dtype=V.dtype, device=V.device)
        lams = 0.1 * sq / ctx.n / sizes  # (L,)
    else:
        lams = torch.full((len(blocks),), ctx.damping(), dtype=V.dtype, device=V.device)
    acc = torch.zeros_like(V)  # (p, k): sum_i g_il coef_il, per block
    for gs in ctx.sets():
        coef = gs.block_dots(V) / (lams + gs.block_sq_norms())[:, :, None]  # (c, L, k)
        acc += gs.tmatmul_blocks(coef)
    out = torch.empty_like(V)
    for j, b in enumerate(blocks):
        out[b] = (V[b] - acc[b] / ctx.n) / lams[j]
    return out


def datainf_score(ctx: Ctx) -> Tensor:
    """DataInf (Kwon et al. 2024): score_i = -g_i^T (DataInf inverse) g_val. Cost: three gradient passes, no HVP."""
    g_val = mean_grad(ctx.prob, ctx.Xv, ctx.yv)
    v = _datainf_apply(ctx, g_val.unsqueeze(1)).squeeze(1)  # (p,)
    return -ctx.dots(v)


def datainf_pairwise(ctx: Ctx) -> Tensor:
    Gq = _query_grads(ctx)
    V = _datainf_apply(ctx, Gq.T.contiguous())  # (p, Q)
    return -ctx.dots(V).T


def self_if_score(ctx: Ctx) -> Tensor:
    """Self-influence: score_i = g_i^T (H_tr + damping I)^-1 g_i (Koh & Liang 2017, Sec. 5.4).

    How much point i's own loss would drop if it were up-weighted: large for points the model can only fit by
    bending around them. Exact curvature: one eigendecomposition, then per chunk ||diag(1/sqrt(lam+d)) Q^T g||^2;
    with CG, one batched solve per chunk of training points (cost ~ n/chunk * iters HVPs); with
    curvature="ekfac" (or "kfac"), one Kronecker factorisation and O(p) per point -- the choice for models whose
    dense curvature is too big and whose Hessian is indefinite (memorising networks).
    """
    curv = ctx.opt["curvature"] or _auto_exact(ctx.prob, ctx.opt, "exact", "cg")
    if curv in ("exact", "ggn"):
        M = hessian_exact(ctx.prob, ctx.X, ctx.y, ctx.opt["budget_mb"]) if curv == "exact" else _dense(
            ggn_vp_fn(ctx.prob, ctx.X, ctx.y), ctx.prob, ctx.opt["budget_mb"])
        evals, Q = torch.linalg.eigh(M)  # (p,), (p, p)
        w = evals + ctx.damping()
        if bool((w <= 0).any()):
            raise ValueError(
                f"H + damping I is not positive definite (smallest eigenvalue {evals[0].item():.3g}): "
                f"use damping > {-evals[0].item():.3g} or curvature='ggn'"
            )
        return ctx.apply(lambda G: ((G @ Q) ** 2 / w).sum(1))
    if curv in ("ekfac", "kfac"):  # factor once, then O(p) per training point
        from . import kfac

        F = kfac.fit(ctx.prob, ctx.X, ctx.y, kind=curv, chunk_size=ctx.opt["chunk_size"], seed=ctx.opt["seed"],
                     progress=ctx.opt["progress"])
        lam = ctx.damping()
        return ctx.apply_sets(lambda gs: F.quad_factored(gs, lam) if isinstance(gs, layerwise.FactoredGrads)
                              else (gs.dense() * F.solve(gs.dense().T, lam).T).sum(1))
    return ctx.apply(lambda G: (G * inverse_hvp(ctx.prob, ctx.X, ctx.y, G.T, ctx.opt, curv).T).sum(1))


def _gex_ensemble(ctx: Ctx) -> list[Tensor]:
    """GEX's geometric ensemble: members fine-tuned from theta* on the training set.

    Each member runs ``gex_steps`` mini-batch SGD steps with a cosine learning-rate schedule from ``gex_lr``
    (as in Kim et al. 2023's released configuration: 8 members, cosine schedule), from its own seed.
    """
    prob, opt = ctx.prob, ctx.opt
    members = []
    for k in range(opt["ensemble_size"]):
        gen = torch.Generator().manual_seed(opt["seed"] * 1000 + k)
        theta = prob.theta.clone()
        for t in range(opt["gex_steps"]):
            idx = torch.randint(0, ctx.n, (min(opt["gex_batch"], ctx.n),), generator=gen)
            lr = opt["gex_lr"] * 0.5 * (1 + math.cos(math.pi * t / opt["gex_steps"]))
            g = torch.func.grad(lambda th: prob.mean_loss(th, ctx.X[idx], ctx.y[idx]))(theta)
            theta = theta - lr * g
        members.append(theta.detach())
    return members


def _loss_deviations(ctx: Ctx, members: list[Tensor], X: Tensor, y: Tensor) -> Tensor:
    """(K, n) loss deviations l(z, theta_k) - l(z, theta*) over the ensemble."""
    with torch.no_grad():
        base = ctx.prob.losses(ctx.prob.theta, X, y)  # (n,)
        return torch.stack([ctx.prob.losses(th, X, y) - base for th in members])  # (K, n)


def gex_score(ctx: Ctx) -> Tensor:
    """GEX self-influence (Kim et al. 2023): E_k[(l(z_i, theta_k) - l(z_i, theta*))^2] over the ensemble.

    GEX reads influence as the covariance of loss deviations under parameters sampled around theta* (the Laplace
    view of -g^T H^-1 g', without linearising the loss), and samples with a geometric ensemble.
    Cost: ensemble_size x gex_steps mini-batch steps + ensemble_size forward passes.
    """
    D = _loss_deviations(ctx, _gex_ensemble(ctx), ctx.Xs, ctx.ys)  # (K, n)
    return (D**2).mean(0)


def gex_pairwise(ctx: Ctx) -> Tensor:
    """pairwise[q, i] = -E_k[dl(z_q) dl(z_i)]: co-moving losses mean i helps q (negative = helpful)."""
    members = _gex_ensemble(ctx)
    Dq = _loss_deviations(ctx, members, ctx.Xv, ctx.yv)  # (K, Q)
    D = _loss_deviations(ctx, members, ctx.Xs, ctx.ys)  # (K, n)
    return -(Dq.T @ D) / len(members)  # (Q, n)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _rows(ctx: Ctx):
    return [slice(s, min(s + 4096, ctx.n_scored)) for s in range(0, ctx.n_scored, 4096)]


def _query_grads(ctx: Ctx, prob: Problem | None = None) -> Tensor:
    """(Q, p) gradients of each query's loss."""
    prob = prob or ctx.prob
    return torch.cat([G for _, G in layerwise.iter_grads(prob, ctx.Xv, ctx.yv, ctx.opt["chunk_size"])])


def _checkpoint_problems(ctx: Ctx) -> Iterator[tuple[Problem, float]]:
    """(Problem at checkpoint c, lr_c) for TracIn; the final model with lr 1 when no checkpoints are given."""
    cps = ctx.opt["checkpoints"]
    if not cps:
        yield ctx.prob, 1.0
        return
    lrs = ctx.opt["lrs"]
    if lrs is not None and len(lrs) != len(cps):
        raise ValueError(f"lrs has {len(lrs)} entries but checkpoints has {len(cps)}; give one learning rate each")
    model = copy.deepcopy(ctx.model)
    for j, cp in enumerate(cps):
        state, lr = (cp if isinstance(cp, tuple) else (cp, None))
        lr = lrs[j] if lrs is not None else (1.0 if lr is None else lr)
        model.load_state_dict(state)
        yield make_problem(model, ctx.opt["params"], ctx.opt["loss"]), float(lr)


# name -> (score function, pairwise function or None)
REGISTRY: dict[str, tuple[Callable[[Ctx], Tensor], Callable[[Ctx], Tensor] | None]] = {
    "loss": (loss_score, None),
    "graddot": (graddot_score, graddot_pairwise),
    "gradcos": (gradcos_score, gradcos_pairwise),
    "tracin": (tracin_score, tracin_pairwise),
    "if-exact": (if_exact_score, if_exact_pairwise),
    "if-cg": (if_cg_score, if_cg_pairwise),
    "if-lissa": (if_lissa_score, if_lissa_pairwise),
    "datainf": (datainf_score, datainf_pairwise),
    "self-if": (self_if_score, None),
    "gex": (gex_score, gex_pairwise),
}


def register(name: str, score_fn: Callable[[Ctx], Tensor], pairwise_fn: Callable[[Ctx], Tensor] | None = None):
    """Add a method to the registry (used by higher layers, e.g. ``ifkit.flat`` for "vm"/"fvm")."""
    REGISTRY[name] = (score_fn, pairwise_fn)


def methods() -> tuple[str, ...]:
    return tuple(REGISTRY)


# ----------------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------------


def _resolve(method: str, options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(method, str) or method not in REGISTRY:
        close = difflib.get_close_matches(str(method), REGISTRY, n=3)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown method {method!r}{hint}; available: {', '.join(REGISTRY)}")
    unknown = [k for k in options if k not in DEFAULTS]
    if "cache_grads" in options and not isinstance(options["cache_grads"], (bool, GradCache)):
        raise TypeError(f"cache_grads must be True, False or an ifkit.GradCache, got {options['cache_grads']!r}")
    if unknown:
        hints = {k: difflib.get_close_matches(k, DEFAULTS, n=1) for k in unknown}
        fix = "; ".join(f"{k!r} -> did you mean {v[0]!r}?" if v else f"{k!r} is not an option" for k, v in hints.items())
        raise TypeError(f"unknown option(s) for ifkit.{method}: {fix}. Options: {', '.join(DEFAULTS)}")
    opt = {**DEFAULTS, **options, "_given": frozenset(options)}
    if opt["damping"] is not None and opt["damping"] != "auto":
        C.check_damping(opt["damping"])
    return opt


# Rows per chunk of per-layer factors: they are small (n * sum(d_in + d_out)), so chunks can be large
FACTOR_CHUNK = 4096


def grad_chunk_rows(p: int, dtype: torch.dtype, budget_mb: float) -> int:
    """Rows per streamed chunk of per-sample gradients: DEFAULT_CHUNK_SIZE (256; larger chunks measured no
    faster on CPU), fewer when a (rows, p) block would exceed budget_mb / 4 -- so a 10M-parameter model streams
    6 rows at a time within the default 1 GB instead of allocating 10 GB."""
    per_row = p * torch.finfo(dtype).bits // 8 if dtype.is_floating_point else p * 4
    return max(1, min(DEFAULT_CHUNK_SIZE, int(budget_mb * 2**20 / 4 // max(per_row, 1))))


def _prepare(model: torch.nn.Module, train, other, opt: dict[str, Any], other_name: str) -> Ctx:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X, y = as_tensors(train, "train")
    Xv, yv = as_tensors(other, other_name)
    if opt["device"] is not None:
        model = copy.deepcopy(model).to(opt["device"])
        X, y, Xv, yv = (t.to(opt["device"]) for t in (X, y, Xv, yv))
    if model.training and any(isinstance(m, (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm))
                              for m in model.modules()):
        warnings.warn("model is in training mode with Dropout/BatchNorm: scoring an eval() copy (your model is "
                      "left as it is). Call model.eval() to silence this.", stacklevel=3)
        model = copy.deepcopy(model).eval()
    p0 = next(model.parameters(), None)
    dtype = p0.dtype if p0 is not None else X.dtype
    X = X.to(dtype) if X.is_floating_point() else X
    Xv = Xv.to(dtype) if Xv.is_floating_point() else Xv
    validate(model, (X, y), (Xv, yv), opt, other_name)  # ifkit/validate.py: raises early, naming the fix
    if "chunk_size" not in opt["_given"]:  # a (chunk, p) gradient block takes at most a quarter of budget_mb
        p = sum(model.get_parameter(n).numel() for n in param_names(model, opt["params"]))
        opt["chunk_size"] = grad_chunk_rows(p, dtype, opt["budget_mb"])
    if opt["candidates"] is not None:
        Xc, yc = as_tensors(opt["candidates"], "candidates")
        Xc = Xc.to(device=X.device, dtype=dtype) if Xc.is_floating_point() else Xc.to(X.device)
        validate(model, (X, y), (Xc, yc.to(X.device)), {**opt, "candidates": None}, "candidates")
        opt = {**opt, "candidates": (Xc, yc.to(X.device))}
    return Ctx(model, X, y, Xv, yv, opt)


def score(method: str, model: torch.nn.Module, train, val, **options: Any) -> Tensor:
    """Score every training point: (n_train,) predicted increase of the mean validation loss when the point is
    up-weighted (self-influence methods: their harmfulness measure). HIGHER = MORE HARMFUL.

    Args:
        method: one of ``ifkit.METHODS``.
        model: a torch.nn.Module at the trained parameters theta*; never modified.
        train: (X, y) tensors or a Dataset of pairs.
        val: (X_val, y_val), the clean validation set S_val.
        **options: see ``ifkit.estimators.DEFAULTS`` (damping, iters, scale, checkpoints, params, ...).

    Under an initialised torch.distributed process group (e.g. torchrun), call it on every rank with the same
    arguments: each rank scores a shard of the training set and every rank returns the full, identical result
    (``distributed=False`` opts out; ``ifkit/distributed.py`` has the details).
    """
    opt = _resolve(method, options)
    ctx = _prepare(model, train, val, opt, "val")
    out = REGISTRY[method][0](ctx)
    return _check_finite(out, method)


def pairwise(method: str, model: torch.nn.Module, train, queries, **options: Any) -> Tensor:
    """(n_queries, n_train) predicted change of each query's loss when each training point is up-weighted.

    Negative = helpful (proponent), positive = harmful (opponent).
    """
    opt = _resolve(method, options)
    fn = REGISTRY[method][1]
    if fn is None:
        has = [m for m, (_, p) in REGISTRY.items() if p is not None]
        raise ValueError(f"method {method!r} is a self-influence score and has no pairwise form; use one of {has}")
    ctx = _prepare(model, train, queries, opt, "queries")
    return _check_finite(fn(ctx), method)


def _check_finite(out: Tensor, method: str) -> Tensor:
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        idx = bad.nonzero()[:, -1].unique()[:10].tolist()
        raise ValueError(f"{method} produced non-finite scores for training indices {idx}...: check the inputs and "
                         "loss for NaN/inf, or increase damping")
    return out.detach()

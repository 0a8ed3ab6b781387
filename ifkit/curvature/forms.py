"""Each inverse curvature once: (M + damping I)^-1 as an object with the three operations the methods need.

    solve(V)       (p,) or (p, k) -> (M + damping I)^-1 V                classic influence, VM/FVM pairwise
    quad(G)        (c, p) rows -> (c,) g^T (M + damping I)^-1 g          self-influence, VM/FVM scores
    quad_sets(gs)  the same from a GradSet chunk; ``factored``: the form reads per-layer factors without forming
                   the gradients (K-FAC over the training set; VM's structured low-rank form, val_inverse.py)

Built once per call by curvature/inverse.py's factory, the one place that maps a curvature name to its form;
the forms know nothing of names or options. Forms over S_val only (low rank, Woodbury) are in val_inverse.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from ..core import factors
from ..core.cache import GradSet
from ..core.func import Problem
from . import kfac
from .solvers import MatVec, check_damping, conjugate_gradient, lissa, solve_cholesky


class Curvature:
    """(M + damping I)^-1 for a symmetric curvature M (p x p) that is never inverted explicitly."""

    damping: float
    factored: bool = False  # quad_sets reads per-layer factors (no (c, p) gradients formed)

    def solve(self, V: Tensor) -> Tensor:
        """(M + damping I)^-1 V for V of shape (p,) or (p, k)."""
        return self.solve_rows(V.T).T

    def solve_rows(self, G: Tensor) -> Tensor:
        """Rows of G (c, p) -> rows of (M + damping I)^-1 G^T, shape (c, p)."""
        return self.solve(G.T).T

    def quad(self, G: Tensor) -> Tensor:
        """(c,) quadratic forms g^T (M + damping I)^-1 g of the rows of G (c, p)."""
        return (G * self.solve_rows(G)).sum(1)

    def quad_sets(self, gs: GradSet) -> Tensor:
        """(c,) quadratic forms of a chunk of streamed gradients."""
        return self.quad(gs.dense())


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


class Dense(Curvature):
    """A dense (p, p) curvature M: solves by Cholesky, or through its eigendecomposition M = Q diag(d) Q^T,
    which the quadratic forms always use:  g^T (M + damping I)^-1 g = ||diag(1/sqrt(d + damping)) Q^T g||^2.

    Cost: O(p^3) once (the factorisation), then O(p^2) per right-hand side. The eigendecomposition is made on
    first use and checks that M + damping I is positive definite (a Hessian away from a minimum may not be).

    Args:
        M: (p, p) symmetric curvature.
        damping: lam > 0 (or >= 0 when M is positive definite).
        name: how error messages call M ("H", "H~_val").
        by_eigh: solve through the eigendecomposition too (one factorisation serves solves and quadratic forms).
    """

    def __init__(self, M: Tensor, damping: float, name: str = "H", by_eigh: bool = False):
        self.M, self.damping, self.name, self.by_eigh = M, damping, name, by_eigh
        self._eig: tuple[Tensor, Tensor] | None = None
        if by_eigh:
            self.eigen()

    def eigen(self) -> tuple[Tensor, Tensor]:
        """(d, Q): eigenvalues (p,) ascending and eigenvectors (p, p) of M, once; raises if M + damping I <= 0."""
        if self._eig is None:
            evals, Q = torch.linalg.eigh(self.M)  # (p,), (p, p)
            if bool((evals + self.damping <= 0).any()):
                raise ValueError(f"{self.name} + damping I is not positive definite (smallest eigenvalue "
                                 f"{evals[0].item():.3g}): use damping > {-evals[0].item():.3g} or curvature='ggn'")
            self._eig = evals, Q
        return self._eig

    def solve(self, V: Tensor) -> Tensor:
        if not self.by_eigh:
            return solve_cholesky(self.M, V, self.damping)
        return super().solve(V)

    def solve_rows(self, G: Tensor) -> Tensor:
        if not self.by_eigh:
            return super().solve_rows(G)
        evals, Q = self.eigen()
        return ((G @ Q) / (evals + self.damping)) @ Q.T  # (c, p)

    def quad(self, G: Tensor) -> Tensor:
        evals, Q = self.eigen()
        return ((G @ Q) ** 2 / (evals + self.damping)).sum(1)  # (c,)


class CG(Curvature):
    """Conjugate gradient on the product ``mv`` (Hessian or Gauss-Newton): ``iters`` products per batch of
    right-hand sides, all columns at once. Needs M + damping I positive definite (the Gauss-Newton is PSD)."""

    def __init__(self, mv: MatVec, damping: float, iters: int, tol: float):
        self.mv, self.damping, self.iters, self.tol = mv, damping, iters, tol

    def solve(self, V: Tensor) -> Tensor:
        return conjugate_gradient(self.mv, V, self.damping, iters=self.iters, tol=self.tol)


class LiSSA(Curvature):
    """LiSSA (Agarwal et al. 2017): the truncated Neumann series of (M + damping I)^-1, ``iters`` products.

    Args:
        full: the full-batch product, or None when every iteration uses its own mini-batch product.
        scale: larger than the top eigenvalue of M + damping I (the series diverges otherwise).
        batch_mv: t -> the product of the t-th mini-batch (None: full batch).
    """

    def __init__(self, full: MatVec | None, damping: float, scale: float, iters: int, tol: float,
                 batch_mv: Callable[[int], MatVec] | None = None):
        self.full, self.damping, self.scale, self.iters, self.tol, self.batch_mv = (
            full, damping, scale, iters, tol, batch_mv)

    def solve(self, V: Tensor) -> Tensor:
        return lissa(self.full, V, self.damping, scale=self.scale, iters=self.iters, tol=self.tol,
                     batch_matvecs=self.batch_mv)


class DataInf(Curvature):
    """DataInf's closed-form inverse (Kwon et al. 2024) of M = G^T G / n, one block per layer l:

        (G_l^T G_l / n + lam_l I)^-1 v_l ~= (v_l - 1/n sum_i g_il (g_il^T v_l) / (lam_l + ||g_il||^2)) / lam_l

    (swap inversion and averaging, then Sherman-Morrison on each rank-one term), with lam_l = damping when
    given, else Kwon et al.'s 0.1 x mean_i ||g_il||^2 / p_l. Cost: one pass over the n per-sample gradients for
    the norms, then one per solve (all columns at once); no curvature product. For Linear-layer networks the
    passes read per-layer factors and never form G (core/factors.py).

    Args:
        grad_sets: () -> the per-sample gradients of the n points as GradSet chunks (streamed, or from a cache).
        n: number of points.
        blocks: the per-layer slices of theta (core/cache.py ``module_blocks``).
        damping: lam for every block, or None for Kwon et al.'s per-layer choice.
    """

    def __init__(self, grad_sets: Callable[[], Iterable[GradSet]], n: int, blocks: list[slice],
                 damping: float | None, dtype: torch.dtype, device: torch.device):
        self.grad_sets, self.n, self.blocks = grad_sets, n, blocks
        if damping is None:
            sq = sum(gs.block_sq_norms().sum(0) for gs in grad_sets())  # (L,) sum_i ||g_il||^2
            sizes = torch.tensor([b.stop - b.start for b in blocks], dtype=dtype, device=device)
            self.lams = 0.1 * sq / n / sizes  # (L,)
        else:
            self.lams = torch.full((len(blocks),), check_damping(damping), dtype=dtype, device=device)

    def solve(self, V: Tensor) -> Tensor:
        V2 = V if V.dim() == 2 else V.unsqueeze(1)  # (p, k)
        acc = torch.zeros_like(V2)  # (p, k): sum_i g_il coef_il, per block
        for gs in self.grad_sets():
            coef = gs.block_dots(V2) / (self.lams + gs.block_sq_norms())[:, :, None]  # (c, L, k)
            acc += gs.tmatmul_blocks(coef)
        out = torch.empty_like(V2)
        for j, b in enumerate(self.blocks):
            out[b] = (V2[b] - acc[b] / self.n) / self.lams[j]
        return out.reshape(V.shape)


class Kronecker(Curvature):
    """Block-diagonal (E)K-FAC Gauss-Newton F (curvature/kfac.py): O(p) per solve in the factors' eigenbasis.

    ``factored``: quadratic forms of per-layer factor chunks read the factors directly (``quad_factored``),
    without forming the gradients -- the self-influence path over the training set.
    """

    def __init__(self, F: kfac.KroneckerCurvature, damping: float, factored: bool):
        self.F, self.damping, self.factored = F, damping, factored

    def solve(self, V: Tensor) -> Tensor:
        return self.F.solve(V, self.damping)

    def quad_sets(self, gs: GradSet) -> Tensor:
        if self.factored and isinstance(gs, factors.FactoredGrads):
            return self.F.quad_factored(gs, self.damping)
        return super().quad_sets(gs)


__all__ = ["CG", "Curvature", "DataInf", "Dense", "Kronecker", "LiSSA", "dense_curvature", "fits_dense"]

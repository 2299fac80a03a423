"""optax's linear-algebra and sampling utilities: the dominant eigenpair by power iteration, a
matrix's inverse p-th root by coupled Newton iterations (Shampoo's preconditioner), non-negative
least squares by fast projected gradient, and a diagonal Gaussian parametrized by its log scale.

The iterations with a convergence test (:func:`power_iteration`,
:func:`matrix_inverse_pth_root`) run as fixed-length masked loops, as the line searches do:
every iteration is computed and a converged one leaves the result unchanged
(``torch.where``), so nothing is read on the host (they vmap, compile and capture) and the
numbers are optax's ``while`` loop's; ``early_exit=True`` stops at convergence (one host read
per iteration), with the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import tree as _tree
from . import tree_math as _tm

__all__ = ["power_iteration", "matrix_inverse_pth_root", "nnls", "multi_normal",
           "MultiNormalDiagFromLogScale"]


def _normalized(tree: Any) -> Any:
    return _tree.scale(tree, 1.0 / _tree.global_norm(tree))


def _stop(early_exit: bool, running: torch.Tensor) -> bool:
    return early_exit and not bool(running)


def power_iteration(matrix: torch.Tensor | Callable[[Any], Any], *, v0: Any = None,
                    num_iters: int = 100, error_tolerance: float | torch.Tensor = 1e-6,
                    generator: torch.Generator | None = None, early_exit: bool = False
                    ) -> tuple[torch.Tensor, Any]:
    r"""The dominant eigenvalue (largest in magnitude) of a diagonalizable matrix and its unit
    eigenvector, by power iteration (optax's ``power_iteration``): :math:`v \leftarrow Mv /
    \lVert Mv\rVert`, :math:`\lambda = \langle v, Mv\rangle`, until the residual
    :math:`\lVert Mv - \lambda v\rVert / |\lambda|` falls below ``error_tolerance`` or after
    ``num_iters`` iterations.

    Args:
        matrix: a square matrix, or a function computing the product with a tree ``v``.
        v0: the initial vector (a tree for a function; required then); default: uniform in
            ``[-1, 1]`` from ``generator`` (default: seeded 0; optax's ``key``).
        num_iters: the iterations (static: the masked loop's length).
        error_tolerance: the relative residual that ends the iteration.
        generator: the ``torch.Generator`` of the default ``v0``.
        early_exit: stop at convergence, reading it on the host (static).

    Returns:
        ``(eigenvalue, eigenvector)``.
    """
    if callable(matrix):
        mvp = matrix
        if v0 is None:
            raise ValueError("power_iteration: v0 must be given when matrix is a function")
    else:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"power_iteration: matrix must be square, got shape "
                             f"{tuple(matrix.shape)}")
        mvp = lambda v: matrix @ v  # noqa: E731
        if v0 is None:
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            v0 = (torch.rand(matrix.shape[-1:], generator=gen, dtype=matrix.dtype) * 2 - 1
                  ).to(matrix.device)
    vec = _normalized(v0)
    z = mvp(vec)
    eig = torch.zeros_like(_tm.vdot(vec, z))
    for _ in range(num_iters):
        residual = _tree.global_norm(_tree.sub(z, _tree.scale(vec, eig)))
        running = torch.logical_not((residual / eig).abs() < error_tolerance)
        if _stop(early_exit, running):
            break
        new_vec = _normalized(z)
        new_z = mvp(new_vec)
        vec = _tm.where(running, new_vec, vec)
        z = _tm.where(running, new_z, z)
        eig = torch.where(running, _tm.vdot(new_vec, new_z), eig)
    return eig, _normalized(z)


def matrix_inverse_pth_root(matrix: torch.Tensor, p: int, num_iters: int = 100,
                            ridge_epsilon: float | torch.Tensor = 1e-6,
                            error_tolerance: float | torch.Tensor = 1e-6, *,
                            early_exit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`(M + \epsilon\lambda_{max} I)^{-1/p}` of a symmetric positive semi-definite
    matrix by coupled Newton iterations (Higham, 2008, "Functions of Matrices", eq. 7.18; as
    optax's ``matrix_inverse_pth_root``, Shampoo's):

    .. math::
        M_0 = zA,\ H_0 = z^{1/p} I,\ z = \frac{1 + p}{2\lVert A\rVert_F};\quad
        X_k = (1 - \alpha) I + \alpha M_k,\ M_{k+1} = X_k^p M_k,\ H_{k+1} = H_k X_k,
        \quad \alpha = -1/p,

    while :math:`\max|M_k - I|` exceeds ``error_tolerance`` and decreases (an iteration that
    grows it by 20% ends the loop and is undone), at most ``num_iters`` times.
    :math:`\lambda_{max}` is :func:`power_iteration`'s (100 iterations). As optax, ``alpha``
    is rounded to float32 (its numbers); unlike optax (which rounds ``p`` to 1, 2, 4 or 8),
    :math:`X^p` is the true integer power.

    Args:
        matrix: the symmetric PSD matrix (``(n, n)``).
        p: the root (a positive int; static).
        num_iters: the maximal iterations (static: the masked loop's length).
        ridge_epsilon: :math:`\epsilon`, relative to the largest eigenvalue.
        error_tolerance: the error that ends the iteration.
        early_exit: stop at convergence, reading it on the host (static).

    Returns:
        ``(the root, the error max|M - I| at the end)``.
    """
    if not isinstance(p, int) or isinstance(p, bool) or p < 1:
        raise ValueError(f"matrix_inverse_pth_root: p must be a positive int, got {p!r}")
    n = matrix.shape[0]
    alpha = float(torch.tensor(-1.0 / p, dtype=torch.float32))
    max_ev, _ = power_iteration(matrix, num_iters=100, error_tolerance=1e-6)
    ridge = ridge_epsilon * torch.clamp(max_ev, min=1e-16)
    if n == 1:
        return (matrix + ridge) ** alpha, torch.zeros((), dtype=matrix.dtype,
                                                      device=matrix.device)
    identity = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    damped = matrix + ridge * identity
    z = (1 + p) / (2 * torch.linalg.matrix_norm(damped))
    mat_m = damped * z
    mat_h = old_h = identity * z ** (1.0 / p)
    error = (mat_m - identity).abs().max()
    run = torch.ones((), dtype=torch.bool, device=matrix.device)
    for _ in range(num_iters):
        running = run & (error > error_tolerance)
        if _stop(early_exit, running):
            break
        step = (1 - alpha) * identity + alpha * mat_m
        new_m = torch.linalg.matrix_power(step, p) @ mat_m
        new_h = mat_h @ step
        new_error = (new_m - identity).abs().max()
        old_h = torch.where(running, mat_h, old_h)
        run = torch.where(running, new_error < error * 1.2, run)
        mat_m = torch.where(running, new_m, mat_m)
        mat_h = torch.where(running, new_h, mat_h)
        error = torch.where(running, new_error, error)
    error = (mat_m - identity).abs().max()
    return torch.where(run, mat_h, old_h).to(matrix.dtype), error


def nnls(A: torch.Tensor, b: torch.Tensor, iters: int, unroll: int | bool = 1,  # noqa: N803
         L: float | torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803 - optax's names
    r"""Non-negative least squares :math:`\min_{x \ge 0}\lVert Ax - b\rVert_2` by the fast
    projected gradient method (Polyak, 2015; optax's ``nnls``): ``iters`` steps of
    :math:`x' = \max(0, y - (Qy - q)/L)`, :math:`y' = x' + \frac{c - 1}{c'}(x' - x)`,
    :math:`c' = (1 + \sqrt{1 + 4c^2})/2` from :math:`x = y = 0, c = 0`, with
    :math:`Q = A^\top A`, :math:`q = A^\top b` and ``L`` an upper bound on :math:`Q`'s spectral
    radius (default :math:`\min(\lVert Q\rVert_F, \lVert Q\rVert_1)`).

    Args:
        A: ``(M, N)``.
        b: ``(M,)`` or ``(M, K)``.
        iters: steps (static).
        unroll: optax's ``lax.scan`` unrolling (accepted; a Python loop here).
        L: the spectral bound (a number or 0-d tensor; 0 counts as 1).

    Returns:
        ``x``, ``(N,)`` or ``(N, K)``.
    """
    if A.ndim != 2 or b.ndim not in (1, 2) or b.shape[0] != A.shape[0]:
        raise ValueError(f"nnls: A must be (M, N) and b (M,) or (M, K); got {tuple(A.shape)} "
                         f"and {tuple(b.shape)}")
    del unroll
    Q = A.mT @ A  # noqa: N806 - the method's names
    q = A.mT @ b
    if L is None:
        L = torch.minimum(torch.linalg.matrix_norm(Q),  # noqa: N806
                          torch.linalg.matrix_norm(Q, ord=1))
    L = torch.as_tensor(L, dtype=Q.dtype, device=Q.device)  # noqa: N806
    L = torch.where(L == 0, torch.ones_like(L), L)  # noqa: N806
    x = b.new_zeros((A.shape[-1], *b.shape[1:]))
    y, c = x, 0.0
    for _ in range(iters):
        c_next = (1 + math.sqrt(1 + 4 * c ** 2)) / 2
        x_next = torch.clamp(y - (Q @ y - q) / L, min=0)
        y = x_next + (c - 1) / c_next * (x_next - x)
        x, c = x_next, c_next
    return x


class MultiNormalDiagFromLogScale:
    """A Gaussian with independent coordinates, parametrized by its mean and log scale
    (optax's): :meth:`sample` draws ``loc + exp(log_scale) * N(0, 1)`` and :meth:`log_prob`
    sums the coordinates' log densities."""

    def __init__(self, loc: Any, log_scale: Any):
        self._log_scale = torch.as_tensor(log_scale)
        self._scale = torch.exp(self._log_scale)
        self._mean = torch.as_tensor(loc)
        self._param_shape = torch.broadcast_shapes(self._mean.shape, self._scale.shape)

    def sample(self, shape: Sequence[int], generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Samples of shape ``(*shape, *param_shape)`` (``generator``: optax's ``key``)."""
        noise = torch.randn((*shape, *self._param_shape), generator=generator,
                            dtype=self._scale.dtype).to(self._scale.device)
        return noise * self._scale + self._mean

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The log density of ``x``, summed over the parameters' axes."""
        per = (-0.5 * ((x - self._mean) / self._scale) ** 2 - self._log_scale
               - 0.5 * math.log(2 * math.pi))
        return per.sum(dim=tuple(range(-len(self._param_shape), 0)))

    @property
    def log_scale(self) -> torch.Tensor:
        return self._log_scale

    @property
    def params(self) -> list:
        return [self._mean, self._log_scale]


def multi_normal(loc: Any, log_scale: Any) -> MultiNormalDiagFromLogScale:
    """The diagonal Gaussian of mean ``loc`` and scale ``exp(log_scale)``."""
    return MultiNormalDiagFromLogScale(loc, log_scale)

r"""Implicit differentiation: gradients of the solution of an inner problem, without unrolling.

If :math:`x^\star(\theta)` solves :math:`F(x, \theta) = 0` (for an inner minimisation, ``F`` is the
gradient of the inner loss in ``x``), the implicit function theorem gives

.. math::
    \partial_\theta x^\star = -A^{-1} B, \qquad A = \partial_x F(x^\star, \theta), \quad
    B = \partial_\theta F(x^\star, \theta),

so a cotangent :math:`v` on :math:`x^\star` pulls back to :math:`-B^\top w` with
:math:`A^\top w = v`. :func:`custom_root` wraps any solver (an unrolled ``functional_optim`` loop,
a closed form, a call into another library) so that its output carries exactly that gradient; the
linear system is solved matrix-free (:func:`cg`, :func:`normal_cg`, :func:`neumann`) with
Jacobian-vector products from :mod:`torch.func`. Memory does not depend on how many steps the
solver took, and everything composes with ``torch.func.grad``/``vmap`` (a ``vmap`` over outer
problems) as well as with ``torch.autograd``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optree
import torch

from . import tree as _tree

__all__ = ["cg", "normal_cg", "neumann", "custom_root", "stationary"]


# ---------------------------------------------------------------- pytree linear algebra


def _vdot(a: Any, b: Any) -> torch.Tensor:
    pairs = zip(_tree.leaves(a), _tree.leaves(b), strict=True)
    xs = [(x * y).sum() for x, y in pairs if x is not None]
    return torch.stack(xs).sum() if xs else torch.zeros(())


def _axpy(alpha: torch.Tensor, x: Any, y: Any) -> Any:
    """``alpha * x + y`` leaf-wise."""
    return _tree.map(lambda xi, yi: alpha.to(xi.dtype) * xi + yi, x, y)


def _where(cond: torch.Tensor, a: Any, b: Any) -> Any:
    return _tree.map(lambda ai, bi: torch.where(cond, ai, bi), a, b)


def _safe_div(num: torch.Tensor, den: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    ok = active & (den != 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)),
                       torch.zeros_like(num))


def _settled(done: torch.Tensor) -> bool:
    """Whether every system has converged, when that can be read without breaking a transform.

    Under ``vmap`` (or ``torch.compile``) the flag cannot be read on the host; the loop then runs
    all ``maxiter`` iterations, converged systems frozen by ``torch.where``.
    """
    try:
        return bool(done)
    except RuntimeError:
        return False


def _default_maxiter(b: Any) -> int:
    return max(1, min(_tree.num_elements(b), 1000))


def cg(matvec: Callable[[Any], Any], b: Any, x0: Any = None, *, rmatvec: Callable | None = None,
       maxiter: int | None = None, tol: float = 1e-10, atol: float = 0.0) -> Any:
    r"""Conjugate gradient: solve :math:`A x = b` for a symmetric positive-definite ``A``.

    Matrix-free: ``matvec(x)`` applies ``A`` to a pytree shaped like ``b``. Stops when
    :math:`\|r\| \le \max(\text{tol}\,\|b\|, \text{atol})` or after ``maxiter`` iterations
    (default: the number of unknowns, at most 1000). No host sync is forced under ``vmap``:
    converged systems are frozen with ``torch.where`` and the loop runs to ``maxiter``.

    Args:
        matvec: ``x -> A x`` (pytree to pytree).
        b: right-hand side (a pytree of real tensors).
        x0: initial guess (default zeros).
        rmatvec: ignored (``A`` is symmetric); accepted so that all solvers share a signature.
        maxiter: the most iterations.
        tol: relative tolerance on the residual norm.
        atol: absolute tolerance on the residual norm.
    """
    del rmatvec
    maxiter = _default_maxiter(b) if maxiter is None else maxiter
    x = _tree.zeros_like(b) if x0 is None else x0
    r = _tree.sub(b, matvec(x)) if x0 is not None else b
    p = r
    rs = _vdot(r, r)
    threshold = torch.clamp(tol**2 * _vdot(b, b), min=atol**2)
    done = rs <= threshold
    for _ in range(maxiter):
        if _settled(done):
            break
        active = ~done
        ap = matvec(p)
        alpha = _safe_div(rs, _vdot(p, ap), active)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rs_new = _vdot(r, r)
        beta = _safe_div(rs_new, rs, active)
        p = _where(active, _axpy(beta, p, r), p)
        rs = torch.where(active, rs_new, rs)
        done = done | (rs <= threshold)
    return x


def normal_cg(matvec: Callable[[Any], Any], b: Any, x0: Any = None, *,
              rmatvec: Callable[[Any], Any] | None = None, maxiter: int | None = None,
              tol: float = 1e-10, atol: float = 0.0) -> Any:
    r"""Solve :math:`A x = b` for a general (square, non-singular) ``A`` by CG on the normal
    equations :math:`A^\top A x = A^\top b`.

    Needs ``rmatvec(y) = A^T y``; :func:`custom_root` provides it. Converges like CG on
    :math:`A^\top A`, whose condition number is the square of ``A``'s.
    """
    if rmatvec is None:
        raise TypeError("normal_cg needs rmatvec (x -> A^T x)")
    return cg(lambda v: rmatvec(matvec(v)), rmatvec(b), x0, maxiter=maxiter, tol=tol,
              atol=atol)


def neumann(matvec: Callable[[Any], Any], b: Any, x0: Any = None, *,
            rmatvec: Callable | None = None, maxiter: int = 100, alpha: float = 1.0) -> Any:
    r"""Truncated Neumann series: :math:`x \approx \alpha \sum_{k=0}^{K} (I - \alpha A)^k b`.

    Converges to :math:`A^{-1} b` when the spectral radius of :math:`I - \alpha A` is below 1
    (e.g. ``A`` positive definite and ``alpha < 2 / λ_max``); a few terms give the cheap, biased
    approximation common in hyperparameter optimisation (Lorraine et al., 2020). Runs exactly
    ``maxiter`` terms, no stopping test. ``x0`` and ``rmatvec`` are ignored.
    """
    del x0, rmatvec
    term = _tree.scale(b, alpha)
    total = term
    for _ in range(maxiter):
        term = _tree.sub(term, _tree.scale(matvec(term), alpha))
        total = _tree.add(total, term)
    return total


# ---------------------------------------------------------------- custom_root


def stationary(inner_loss: Callable[..., torch.Tensor]) -> Callable[..., Any]:
    """The optimality condition of a minimisation: ``F(x, *theta) = ∇_x inner_loss(x, *theta)``.

    Its Jacobian in ``x`` is the (symmetric) Hessian, so :func:`cg` applies.
    """

    def optimality(x, *theta):
        return torch.func.grad(inner_loss)(x, *theta)

    return optimality


def _is_diff(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


class _Implicit(torch.autograd.Function):
    """Identity on the solution, whose backward is the implicit-function-theorem pullback."""

    generate_vmap_rule = True

    @staticmethod
    def forward(info, *tensors):
        n_x = info["n_x"]
        return tuple(t.clone() for t in tensors[:n_x])

    @staticmethod
    def setup_context(ctx, inputs, output):
        info, *tensors = inputs
        ctx.info = info
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx, *cotangents):
        info = ctx.info
        saved = ctx.saved_tensors
        n_x = info["n_x"]
        xs, thetas = list(saved[:n_x]), list(saved[n_x:])
        x_spec, rebuild_theta = info["x_spec"], info["rebuild_theta"]
        fn = info["optimality_fn"]
        x = optree.tree_unflatten(x_spec, xs)
        theta = rebuild_theta(thetas)
        v = optree.tree_unflatten(x_spec, [torch.zeros_like(xi) if c is None else c
                                           for c, xi in zip(cotangents, xs, strict=False)])

        def f_x(x_):
            return fn(x_, *theta)

        _, vjp_x = torch.func.vjp(f_x, x)

        def a_transpose(w):  # w -> A^T w
            return vjp_x(w)[0]

        def a(u):  # u -> A u, as the transpose of the linear map w -> A^T w (a vjp of a vjp;
            # torch.func.jvp would need forward-mode formulas for every op in F)
            return torch.func.vjp(a_transpose, v)[1](u)[0]

        w = info["solve"](a_transpose, v, rmatvec=a)
        if not thetas:
            return (None,) * (1 + n_x)
        # only the differentiable leaves of theta are inputs (numbers, int tensors are constants)
        _, vjp_theta = torch.func.vjp(lambda *th: fn(x, *rebuild_theta(list(th))), *thetas)
        grads = vjp_theta(_tree.scale(w, -1.0))
        return (None,) * (1 + n_x) + tuple(grads)


def custom_root(optimality_fn: Callable[..., Any], solve: Callable[..., Any] = cg,
                **solve_kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorate ``solver(init, *theta) -> x*`` so that ``x*`` is differentiable in ``theta``
    by the implicit function theorem, given the optimality condition ``F(x*, *theta) = 0``.

    The solver itself is run on detached ``theta`` and never differentiated (use anything: an
    unrolled ``functional_optim`` loop, ``torch.linalg.solve``…). The backward pass solves
    :math:`A^\top w = v` with ``solve`` (default :func:`cg`; use :func:`normal_cg` when ``A`` is
    not symmetric, :func:`neumann` for a cheap approximation) and returns :math:`-B^\top w`.

    ``init`` gets no gradient; every floating-point tensor leaf of ``theta`` (any pytrees) does.
    Works with ``torch.autograd`` and with ``torch.func.grad``/``vjp``/``vmap`` (one vmap over many
    outer problems).

    Args:
        optimality_fn: ``F(x, *theta)``, a pytree shaped like ``x`` (e.g. :func:`stationary`).
        solve: linear solver ``solve(matvec, b, rmatvec=...)``.
        **solve_kwargs: passed to ``solve`` (``maxiter``, ``tol``…).

    Example::

        inner = lambda x, lam: ((A @ x - b) ** 2).sum() / 2 + lam * (x ** 2).sum() / 2

        @custom_root(stationary(inner))
        def ridge(x0, lam):
            return fo.meta.unroll(inner, fo.sgd(lr=0.1), x0, batches=[(lam,)] * 500).params
    """
    solver_fn = functools.partial(solve, **solve_kwargs) if solve_kwargs else solve

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(solver)
        def solution(init: Any, *theta: Any) -> Any:
            theta_flat, theta_spec = optree.tree_flatten(theta, none_is_leaf=True)
            detached = optree.tree_unflatten(
                theta_spec, [t.detach() if isinstance(t, torch.Tensor) else t
                             for t in theta_flat])
            x_star = solver(init, *detached)
            x_flat, x_spec = optree.tree_flatten(x_star, none_is_leaf=True)
            if not all(isinstance(t, torch.Tensor) for t in x_flat):
                raise TypeError("custom_root: the solver must return a pytree of tensors")
            where = [i for i, t in enumerate(theta_flat) if _is_diff(t)]

            def rebuild_theta(tensors):
                out = list(theta_flat)
                for i, t in zip(where, tensors, strict=False):
                    out[i] = t
                return optree.tree_unflatten(theta_spec, out)

            info = {"n_x": len(x_flat), "x_spec": x_spec, "rebuild_theta": rebuild_theta,
                    "optimality_fn": optimality_fn, "solve": solver_fn}
            out = _Implicit.apply(info, *(t.detach() for t in x_flat),
                                  *(theta_flat[i] for i in where))
            return optree.tree_unflatten(x_spec, list(out))

        return solution

    return decorator

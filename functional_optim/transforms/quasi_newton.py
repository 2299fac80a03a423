r"""optax's pure L-BFGS direction: the two-loop recursion over a fixed ring of past differences.

:func:`scale_by_lbfgs_direction` is optax's ``scale_by_lbfgs``: one update is one
preconditioning :math:`u \mapsto P_k u` of the incoming update, with the memory in fixed-size
tensors and every choice a ``torch.where``, so it is pure and runs under ``vmap``, ``grad``,
``compile`` and capture. (torch.optim.LBFGS's algorithm, a whole quasi-Newton solve per step,
is :func:`~functional_optim.transforms.scale_by_lbfgs`; both use :func:`two_loop`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .. import tree_math as _tm
from .._execute import first_device
from ..base import HParamError, Transform, check_state, missing_params, resolve_hparams
from ..numerics import safe_increment
from .linesearch import _value_dtype, real_dot

__all__ = ["ScaleByLbfgsDirectionState", "scale_by_lbfgs_direction", "two_loop"]


def two_loop(vec: Any, steps: Sequence, diffs: Sequence, rhos: Sequence, gamma: Any,
             dot: Callable[[Any, Any], Any], axpy: Callable[[Any, Any, Any], Any]
             ) -> tuple[Any, list]:
    r""":math:`H v` by the L-BFGS two-loop recursion (Nocedal, 1980; Nocedal & Wright,
    Algorithm 7.4), over the pairs :math:`(s_i, y_i, \rho_i)` given oldest first:

    .. math::
        \alpha_i = \rho_i\,s_i^\top q,\ q \leftarrow q - \alpha_i y_i \ (\text{newest first});
        \quad r = \gamma q;\quad
        \beta_i = \rho_i\,y_i^\top r,\ r \leftarrow r + (\alpha_i - \beta_i) s_i
        \ (\text{oldest first}).

    ``dot(a, b)`` is the (real) inner product and ``axpy(x, a, y) = x + a y`` of the vectors'
    kind (flat tensors, trees). Returns ``(H v, [alpha_i])``.
    """
    alphas: list = [None] * len(rhos)
    for i in range(len(rhos) - 1, -1, -1):
        alphas[i] = rhos[i] * dot(steps[i], vec)
        vec = axpy(vec, -alphas[i], diffs[i])
    vec = _tree.scale(vec, gamma)
    for i in range(len(rhos)):
        beta = rhos[i] * dot(diffs[i], vec)
        vec = axpy(vec, alphas[i] - beta, steps[i])
    return vec, alphas


class ScaleByLbfgsDirectionState(NamedTuple):
    """State of :func:`scale_by_lbfgs_direction` (optax's ``ScaleByLBFGSState``).

    Attributes:
        count: updates so far (0-d int64, saturating).
        params: the parameters of the last update.
        updates: the incoming updates of the last update.
        diff_params_memory: per leaf, ``(memory_size, *shape)``: the differences
            :math:`\\delta w` in a ring (slot ``(count - 1) % memory_size`` is the newest).
        diff_updates_memory: per leaf, the differences :math:`\\delta u`, likewise.
        weights_memory: ``(memory_size,)``: :math:`\\rho = 1/\\mathrm{Re}\\langle\\delta u,
            \\delta w\\rangle` (0 for an empty slot or a zero product).
    """

    count: torch.Tensor
    params: Any
    updates: Any
    diff_params_memory: Any
    diff_updates_memory: Any
    weights_memory: torch.Tensor


def scale_by_lbfgs_direction(memory_size: int = 10, scale_init_precond: bool = True
                             ) -> Transform:
    r"""The L-BFGS direction :math:`P_k u_k` (Nocedal, 1980; Liu & Nocedal, 1989), as optax's
    ``scale_by_lbfgs``: the incoming update :math:`u_k` (a gradient) times the L-BFGS inverse
    Hessian approximation built from the last ``memory_size`` pairs
    :math:`\delta w_j = w_{j+1} - w_j`, :math:`\delta u_j = u_{j+1} - u_j`:

    .. math::
        P_{k, j+1} = V_j^\top P_{k, j} V_j + \rho_j\,\delta w_j \delta w_j^\top,\quad
        V_j = I - \rho_j\,\delta u_j \delta w_j^\top,\quad
        \rho_j = 1/\mathrm{Re}\langle\delta u_j, \delta w_j\rangle\ (0 \text{ if that is } 0),

    from :math:`P_{k, k-m} = \gamma_k I`, computed by :func:`two_loop`. With
    ``scale_init_precond``, :math:`\gamma_k = \mathrm{Re}\langle\delta u_{k-1},
    \delta w_{k-1}\rangle / \lVert\delta u_{k-1}\rVert^2` (1 if that norm is 0) and, at the
    first update, :math:`\min(1, 1/\lVert u_0\rVert)` (no gradient through it); else
    :math:`\gamma_k = 1`. Every pair is kept (no curvature test), as optax does.

    It outputs the direction itself (not negated): chain it with ``scale(-1.0)`` or a
    learning rate, and a line search (:func:`~functional_optim.optax_lbfgs` does).
    ``update`` needs ``params``.

    Args:
        memory_size: pairs kept (static; ``>= 1``).
        scale_init_precond: the scaled initial preconditioner above (static).
    """
    owner = "scale_by_lbfgs_direction"
    if not isinstance(memory_size, int) or isinstance(memory_size, bool) or memory_size < 1:
        raise HParamError(f"{owner}: memory_size must be a positive int, got {memory_size!r}")
    defaults: dict = {}
    structural = dict(memory_size=memory_size, scale_init_precond=scale_init_precond)

    def init(params):
        device, dtype = first_device(params), _value_dtype(params)
        stacked = _tree.map(
            lambda p: torch.zeros((memory_size, *p.shape), dtype=p.dtype, device=p.device),
            params)
        return ScaleByLbfgsDirectionState(
            torch.zeros((), dtype=torch.int64, device=device), _tree.zeros_like(params),
            _tree.zeros_like(params), stacked, _tree.map(torch.clone, stacked),
            torch.zeros(memory_size, dtype=dtype, device=device))

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams(defaults, hparams, f"{owner} hparams", structural)
        check_state(owner, state, ScaleByLbfgsDirectionState)
        if missing_params(owner, updates, params, "the differences of the parameters"):
            return updates, state
        _tree.check_leaves(owner, updates, params, f"{owner} params", "parameter")
        count, weights = state.count, state.weights_memory
        started = count > 0
        # a leaf without an update (frozen) takes no part: its memory and records stay
        present = _tree.map(lambda u, p: p, updates, params)
        diff_params = _tree.map(lambda p, q: torch.where(started, p - q, torch.zeros_like(p)),
                                present, _tree.map(lambda u, q: q, updates, state.params))
        diff_updates = _tree.map(lambda u, v: torch.where(started, u - v, torch.zeros_like(u)),
                                 updates, state.updates)
        product = real_dot(diff_updates, diff_params).to(weights.dtype)
        nonzero = product != 0
        weight = torch.where(nonzero & started, 1.0 / torch.where(nonzero, product, 1.0), 0.0)
        slots = torch.arange(memory_size, device=weights.device)
        newest = slots == torch.remainder(count - 1, memory_size)

        def write(memory, new):
            if new is None:
                return memory
            return torch.where(newest.view(-1, *([1] * new.ndim)), new.unsqueeze(0), memory)

        dp_memory = _tree.map(write, state.diff_params_memory, diff_params)
        du_memory = _tree.map(write, state.diff_updates_memory, diff_updates)
        weights = torch.where(newest, weight, weights)

        if scale_init_precond:
            squared = _tm.norm(diff_updates, squared=True).to(weights.dtype)
            positive = squared > 0
            gamma = torch.where(positive, product / torch.where(positive, squared, 1.0), 1.0)
            capped = torch.clamp(1.0 / _tree.global_norm(_tree.map(torch.detach, updates)),
                                 max=1.0).to(weights.dtype)
            gamma = torch.where(started, gamma, capped)
        else:
            gamma = 1.0
        order = torch.remainder(torch.remainder(count, memory_size) + slots, memory_size)

        def rows(memory):
            ordered = _tree.map(lambda u, m: m.index_select(0, order), updates, memory)
            return [_tree.map(lambda m, i=i: m.select(0, i), ordered) for i in range(memory_size)]

        direction, _ = two_loop(updates, rows(dp_memory), rows(du_memory),
                                list(weights.index_select(0, order).unbind(0)), gamma,
                                real_dot, lambda x, a, y: _tree.add(x, y, a))
        direction = _tm.cast_like(direction, updates)
        # copies: a stateful runner may update the parameters (and gradients) in place
        kept = _tree.map(lambda old, u, new: old if u is None else new.clone(), state.params,
                         updates, params)
        last = _tree.map(lambda old, u: old if u is None else u.clone(), state.updates, updates)
        return direction, ScaleByLbfgsDirectionState(
            safe_increment(count), kept, last, dp_memory, du_memory, weights)

    return Transform(init, update, defaults)

"""Weight averaging: :func:`lookahead`, :func:`ema`, :func:`average_params`."""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .. import tree as _tree
from .._execute import LIKE, SHAPED, elementwise, init_count, scalar_dtype
from ..base import (
    HParamError,
    Transform,
    _check_transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from ._common import _NONE, _count, _pick

__all__ = [
    "LookaheadState",
    "lookahead",
    "EmaState",
    "ema",
    "AverageParamsState",
    "average_params",
    "incremental_update",
    "periodic_update",
]


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`.

    Attributes:
        count: fast steps taken (0-d int64).
        slow: the slow weights (a tree like the parameters).
        inner_state: the fast optimizer's state.
    """

    count: torch.Tensor
    slow: Any
    inner_state: Any


def lookahead(inner: Transform, sync_period: int = 6, alpha: float = 0.5, *,
              reset_state: bool = False) -> Transform:
    r"""Lookahead (Zhang et al., 2019): ``k`` fast steps of ``inner``, then the slow weights
    move ``alpha`` of the way to the fast ones and the fast weights restart from them.

    With fast weights :math:`\theta` and slow weights :math:`\phi` (initially the parameters),
    after every ``k``-th fast step :math:`\phi \leftarrow \phi + \alpha(\theta - \phi)`,
    :math:`\theta \leftarrow \phi`. The returned update moves the parameters to :math:`\theta`,
    so ``apply_updates`` keeps them the fast weights. Needs ``params``. The hparams are
    ``{"alpha": alpha, "inner": inner.hparams}``.

    Args:
        inner: the fast optimizer.
        sync_period: ``k`` (static int >= 1; default 6).
        alpha: slow step size in [0, 1] (default 0.5).
        reset_state: restart the fast optimizer's state (its ``init``) at every
            synchronization (static; default False).
    """
    _check_transform(inner, "lookahead")
    if not isinstance(sync_period, int) or sync_period < 1:
        raise HParamError(f"lookahead: sync_period must be an int >= 1, got {sync_period!r}")
    check_hparam("lookahead", "alpha", alpha, ge=0, le=1)
    defaults = {"alpha": alpha, "inner": inner.hparams}

    def init(params):
        return LookaheadState(_count(params), _tree.map(torch.clone, params), inner.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "lookahead hparams")
        check_state("lookahead", state, LookaheadState)
        if missing_params("lookahead", updates, params):
            return updates, state
        fast_u, inner_state = inner.update(updates, state.inner_state, params, h["inner"],
                                           **extra)
        sync = torch.remainder(state.count + 1, sync_period) == 0

        def rule(hh, u, slow, p):
            fast = p + u
            new_slow = torch.where(sync, slow + hh["alpha"] * (fast - slow), slow)
            return torch.where(sync, new_slow - p, u), new_slow

        out, slow = elementwise(rule, {"alpha": h["alpha"]}, fast_u, (state.slow,), (params,),
                                name="lookahead", input_names=("params",), state_like=(LIKE,))
        if reset_state:
            inner_state = _pick(sync, inner.init(params), inner_state)
        return out, LookaheadState(state.count + 1, slow, inner_state)

    return Transform(init, _execute.owning(update, [inner]), defaults)


class EmaState(NamedTuple):
    """State of :func:`ema`: per-leaf step count (0-d int64) and the moving average."""

    count: Any
    ema: Any


def _ema_rule(h, g, t, m, *, debias):
    decay = h["decay"]
    t = t + 1
    m = decay * m + (1 - decay) * g.to(m.dtype)
    if not debias:
        return m.to(g.dtype), t, m
    return (m / (1 - decay ** t.to(scalar_dtype(g)))).to(g.dtype), t, m


def ema(decay: float, debias: bool = True,
        accumulator_dtype: torch.dtype | None = None) -> Transform:
    r"""Exponential moving average of the updates (optax's ``ema``).

    .. math:: m_t = \beta m_{t-1} + (1-\beta) u_t, \qquad u_t \mapsto m_t/(1-\beta^t)
              \text{ (debias) or } m_t

    Args:
        decay: ``β`` in [0, 1].
        debias: divide by :math:`1-\beta^t` (static; default True).
        accumulator_dtype: dtype of ``m`` (default: the parameter's).
    """
    check_hparam("ema", "decay", decay, ge=0, le=1)
    defaults = {"decay": decay}

    def rule(h, g, t, m):
        return _ema_rule(h, g, t, m, debias=debias)

    def init(params):
        return EmaState(init_count(params), _tree.map(
            lambda p: torch.zeros_like(p, dtype=accumulator_dtype if p.is_floating_point()
                                       else None), params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "ema hparams")
        check_state("ema", state, EmaState)
        out, count, m = elementwise(rule, h, updates, (state.count, state.ema), name="ema",
                                    state_like=(None, LIKE if accumulator_dtype is None
                                                else SHAPED))
        return out, EmaState(count, m)

    return Transform(init, update, defaults)


class AverageParamsState(NamedTuple):
    """State of :func:`average_params`.

    Attributes:
        n_averaged: how many parameter values were averaged, per leaf (0-d int64).
        average: the averaged parameters (``AveragedModel``'s weights).
    """

    n_averaged: Any
    average: Any


def average_params(decay: float | None = None) -> Transform:
    r"""Averages the parameters after each update, as ``torch.optim.swa_utils.AveragedModel``.

    Put it last in a chain (after the learning rate): it passes the updates through unchanged
    and averages the new parameters :math:`\theta_t = p + u`. The first average is a copy;
    then SWA (Izmailov et al., 2018; ``decay=None``) keeps the running mean
    :math:`\bar\theta \leftarrow \bar\theta + (\theta_t - \bar\theta)/(n+1)`, EMA
    (``get_ema_multi_avg_fn(decay)``) :math:`\bar\theta \leftarrow \beta\bar\theta +
    (1-\beta)\theta_t`. Read it from ``state.average``. Needs ``params``.

    Args:
        decay: ``β`` for an EMA (hparam ``"decay"``), or None for the SWA mean.
    """
    swa = decay is None
    defaults = {} if swa else {"decay": decay}
    if not swa:
        check_hparam("average_params", "decay", decay, ge=0, le=1)

    def rule(h, u, n, avg, p):
        new = p + u
        if swa:
            step = avg + (new - avg) / (n + 1).to(scalar_dtype(u))
        else:
            step = h["decay"] * avg + (1 - h["decay"]) * new
        return u, n + 1, torch.where(n == 0, new, step)

    def init(params):
        return AverageParamsState(init_count(params), _tree.map(torch.clone, params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "average_params hparams")
        check_state("average_params", state, AverageParamsState)
        if missing_params("average_params", updates, params):
            return updates, state
        out, n, avg = elementwise(rule, h, updates, (state.n_averaged, state.average),
                                  (params,), name="average_params", input_names=("params",),
                                  state_like=(None, LIKE))
        return out, AverageParamsState(n, avg)

    return Transform(init, update, defaults)


def incremental_update(new: Any, old: Any, step_size: float | torch.Tensor) -> Any:
    r"""Polyak averaging of a copy of the parameters (a target network):
    :math:`\tau\,\theta_{new} + (1 - \tau)\,\theta_{old}` leaf-wise (``step_size``
    :math:`\tau`; a ``None`` new leaf gives ``None``)."""
    return optree.tree_map(lambda n, o: None if n is None else step_size * n + (1 - step_size) * o,
                           new, old, **_NONE)


def periodic_update(new: Any, old: Any, steps: int | torch.Tensor,
                    update_period: int | torch.Tensor) -> Any:
    """A slow copy of the parameters refreshed every ``update_period`` steps: ``new`` when
    ``steps`` is a multiple of ``update_period``, else ``old`` (selected with
    :func:`torch.where`: no host sync for tensor ``steps``)."""
    if not isinstance(steps, torch.Tensor) and not isinstance(update_period, torch.Tensor):
        return new if steps % update_period == 0 else old
    refresh = torch.remainder(torch.as_tensor(steps), update_period) == 0
    return optree.tree_map(lambda n, o: None if n is None else torch.where(
        refresh.to(n.device), n, o), new, old, **_NONE)

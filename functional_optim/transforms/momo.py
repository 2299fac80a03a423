r"""MoMo: momentum with a Polyak step size from the loss value (Schaipp, Ohana, Eickenberg,
Defazio & Gower, 2023, *MoMo: Momentum Models for Adaptive Learning Rates*), as optax's
``contrib.momo`` and ``contrib.momo_adam`` compute it.

Both read the loss of the current batch: ``update(grads, state, params, value=loss)``::

    tx = fo.momo(lr=1.0)
    state = tx.init(params)
    for batch in data:
        loss, grads = torch.func.grad_and_value(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params, value=loss)
        params = fo.apply_updates(params, updates)

(the drop-in classes ``functional_optim.optim.Momo`` and ``MomoAdam`` take it from the closure:
``opt.step(lambda: loss)``). The model's scalars (the averaged loss :math:`\bar f`, the
averaged :math:`\langle g, x\rangle` written :math:`\gamma`, the lower bound :math:`f_*`) are
global 0-d tensors of the scalar dtype, as in :mod:`functional_optim.transforms.parameter_free`;
the inner products run over the leaves that have an update, complex leaves as pairs of reals.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import LIKE, cast_hparams, elementwise, is_off, safe_sqrt
from ..base import (
    Transform,
    check_betas,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from .parameter_free import (
    at_least,
    global_scalar,
    global_sum,
    initial,
    learning_rate,
    safe_divide,
)
from .plateau import _measured

__all__ = ["ScaleByMomoState", "scale_by_momo", "ScaleByMomoAdamState", "scale_by_momo_adam"]

# optax's threshold (``jnp.finfo(float).eps``) under which the model's slope is zero: no step
_FLAT = torch.finfo(torch.float64).eps


class ScaleByMomoState(NamedTuple):
    """State of :func:`scale_by_momo`.

    Attributes:
        step: updates so far (0-d int64, global).
        barf: :math:`\\bar f`, the averaged loss (global scalar).
        gamma: :math:`\\gamma`, the averaged :math:`\\langle g, x\\rangle` (global scalar).
        lower_bound: :math:`f_*`, the lower bound of the loss in use (global scalar).
        exp_avg: :math:`m`, the averaged gradient.
    """

    step: Any
    barf: Any
    gamma: Any
    lower_bound: Any
    exp_avg: Any


class ScaleByMomoAdamState(NamedTuple):
    """State of :func:`scale_by_momo_adam`: :class:`ScaleByMomoState`'s fields and
    ``exp_avg_sq``, Adam's second moment :math:`v`."""

    step: Any
    barf: Any
    gamma: Any
    lower_bound: Any
    exp_avg: Any
    exp_avg_sq: Any


def _polyak(h: dict, alpha, barf, gamma, iprod, norm, lower_bound, bc1, adapt: bool) -> tuple:
    r"""MoMo's step size :math:`\tau` and the next lower bound, from the model's scalars
    (``bc1`` is 1 for MoMo, Adam's :math:`1 - \beta_1^t` for MoMo-Adam)."""
    floor = h["lower_bound"]
    decay = 1 + alpha * h["weight_decay"]
    if adapt:
        cap = decay * (barf - gamma) + iprod
        lower_bound = torch.where(cap < decay * bc1 * lower_bound,
                                  at_least(cap / (2 * bc1 * decay), floor), lower_bound)
    gap = torch.clamp(decay * (barf - bc1 * lower_bound - gamma) + iprod, min=0.0)
    t1 = safe_divide(gap, norm, norm > _FLAT)  # no slope: no step
    tau = torch.minimum(torch.zeros_like(t1) + alpha / bc1, t1)
    if adapt:
        lower_bound = at_least(((barf + iprod - gamma) - 0.5 * tau * norm) / bc1, floor)
    return tau, lower_bound


def _start(owner: str, defaults: dict, hparams: Any, state: Any, cls: type, updates: Any,
           params: Any, value: Any, lr_value) -> tuple | None:
    """What both blocks read first: the resolved hparams (tensors cast for the scalars,
    numbers as given), the learning rate :math:`\\alpha`, the loss value and
    :math:`\\langle g, x\\rangle` (``None``: no parameters and nothing to do)."""
    h = resolve_hparams(defaults, hparams, f"{owner} hparams")
    check_state(owner, state, cls)
    if missing_params(owner, updates, params, "the model's inner products read them"):
        return None
    if value is None:
        raise ValueError(f"{owner} needs the loss of the batch: call update(grads, state, "
                         "params, value=loss)")
    like = state.barf
    h = cast_hparams(h, like)
    return (h, lr_value(h["lr"], state.step), _measured(owner, value, like),
            global_sum(owner, like, _dot, updates, updates, params))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b


def _bound(h: dict, state: Any, adapt: bool) -> torch.Tensor:
    """The lower bound in use before the update: the running estimate (from
    ``lower_bound`` at the first update) or, without adaptation, ``lower_bound``."""
    floor = torch.zeros_like(state.lower_bound) + h["lower_bound"]
    return torch.where(state.step == 0, floor, state.lower_bound) if adapt else floor


def _precondition(v, eps, bc2):
    return eps + safe_sqrt(v / bc2, nonnegative=True)


def _momo_step(h, g, m, p, *v):
    step = h["tau"] * m
    if v:
        step = step / _precondition(v[0], h["eps"], h["bc2"])
    return (-step if h["decay"] is None else h["decay"] * p - step,)


def _step(owner: str, h: dict, alpha, tau, updates: Any, inputs: tuple, **adam) -> Any:
    """The update :math:`-\\frac{\\alpha\\lambda}{1+\\alpha\\lambda} x - \\tau m`
    (:math:`m` preconditioned for MoMo-Adam); the decay is skipped where ``weight_decay`` is
    the number 0."""
    decay = None if is_off(h["weight_decay"]) else \
        -(alpha * h["weight_decay"]) / (1 + alpha * h["weight_decay"])
    (out,) = elementwise(_momo_step, {"tau": tau, "decay": decay, **adam}, updates, (), inputs,
                         name=owner, complex_as_real=True,
                         input_names=("exp_avg", "params", "exp_avg_sq"))
    return out


def _momo_moment(h, g, m):
    bt = h["bt"]
    return g, bt * m + (1 - bt) * g


def scale_by_momo(lr: Any = 1.0, beta: float = 0.9, lower_bound: float = 0.0,
                  weight_decay: float = 0.0, *, adapt_lower_bound: bool = False) -> Transform:
    r"""MoMo: SGD with momentum and a Polyak step size (Schaipp et al., 2023, Algorithm 1), as
    optax's ``contrib.momo`` computes it. Reads ``update(..., value=loss)`` (see the module).

    With :math:`\beta_t = 0` at the first update (the averages start at their first values)
    and :math:`\beta` after, :math:`\alpha` the learning rate and :math:`\lambda` the decay:

    .. math::
        \bar f_t = \beta_t \bar f_{t-1} + (1-\beta_t) f(x_t), \qquad
        m_t = \beta_t m_{t-1} + (1-\beta_t) g_t, \qquad
        \gamma_t = \beta_t \gamma_{t-1} + (1-\beta_t)\langle g_t, x_t\rangle, \\
        \tau_t = \min\Big(\alpha, \frac{\big[(1+\alpha\lambda)(\bar f_t - f_* - \gamma_t)
        + \langle m_t, x_t\rangle\big]_+}{\|m_t\|^2}\Big), \qquad
        u_t = -\frac{\alpha\lambda}{1+\alpha\lambda} x_t - \tau_t m_t

    (:math:`\tau_t = 0` where :math:`\|m_t\|^2` is at most float64's epsilon). With
    ``adapt_lower_bound`` the bound :math:`f_*` (at least ``lower_bound``) is estimated on the
    fly (the paper's MoMo*). The output is the whole step. Needs ``params``.

    Args:
        lr: :math:`\alpha`, a number, 0-d tensor or schedule (default 1; hparam ``lr``).
        beta: :math:`\beta`, the averaging coefficient (default 0.9).
        lower_bound: :math:`f_*`, a lower bound of the loss (default 0).
        weight_decay: :math:`\lambda` (default 0).
        adapt_lower_bound: estimate :math:`f_*` on the fly (structural; default False).
    """
    owner = "scale_by_momo"
    lr_default, lr_value = learning_rate(owner, lr)
    check_hparam(owner, "beta", beta, ge=0, lt=1)
    check_hparam(owner, "lower_bound", lower_bound)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    defaults = {"lr": lr_default, "beta": beta, "lower_bound": lower_bound,
                "weight_decay": weight_decay}

    def init(params):
        return ScaleByMomoState(global_scalar(params, 0).long(), global_scalar(params),
                                global_scalar(params), global_scalar(params, initial(lower_bound)),
                                _tree.zeros_like(params))

    def update(updates, state, params=None, hparams=None, *, value=None, **extra):
        start = _start(owner, defaults, hparams, state, ScaleByMomoState, updates, params,
                       value, lr_value)
        if start is None:
            return updates, state
        h, alpha, value, grad_dot_params = start
        like = state.barf
        bt = torch.where(state.step == 0, 0.0, torch.zeros_like(like) + h["beta"])
        barf = bt * state.barf + (1 - bt) * value
        gamma = bt * state.gamma + (1 - bt) * grad_dot_params
        _, m = elementwise(_momo_moment, {"bt": bt}, updates, (state.exp_avg,), name=owner,
                           complex_as_real=True, state_like=(LIKE,))
        norm = global_sum(owner, like, _dot, updates, m, m)
        iprod = global_sum(owner, like, _dot, updates, m, params)
        tau, bound = _polyak(h, alpha, barf, gamma, iprod, norm,
                             _bound(h, state, adapt_lower_bound), 1.0, adapt_lower_bound)
        out = _step(owner, h, alpha, tau, updates, (m, params))
        return out, ScaleByMomoState(state.step + 1, barf, gamma, bound, m)

    return Transform(init, update, defaults)


def _momo_adam_moments(h, g, m, v):
    b1, b2 = h["b1"], h["b2"]
    return g, b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g


def scale_by_momo_adam(lr: Any = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
                       eps: float = 1e-8, lower_bound: float = 0.0, weight_decay: float = 0.0,
                       *, adapt_lower_bound: bool = False) -> Transform:
    r"""MoMo-Adam: Adam(W) with a Polyak step size (Schaipp et al., 2023, Algorithm 4), as
    optax's ``contrib.momo_adam`` computes it. Reads ``update(..., value=loss)`` (see the
    module).

    With Adam's moments :math:`m_t, v_t`, :math:`t` counting from 1,
    :math:`b_1 = 1-\beta_1^t`, :math:`D_t = \epsilon + \sqrt{v_t / (1-\beta_2^t)}`:

    .. math::
        \bar f_t = \beta_1 \bar f_{t-1} + (1-\beta_1) f(x_t), \qquad
        \gamma_t = \beta_1 \gamma_{t-1} + (1-\beta_1)\langle g_t, x_t\rangle, \\
        \tau_t = \min\Big(\frac{\alpha}{b_1}, \frac{\big[(1+\alpha\lambda)(\bar f_t
        - b_1 f_* - \gamma_t) + \langle m_t, x_t\rangle\big]_+}
        {\langle m_t, m_t / D_t\rangle}\Big), \qquad
        u_t = -\frac{\alpha\lambda}{1+\alpha\lambda} x_t - \tau_t \frac{m_t}{D_t}

    (:math:`\tau_t = 0` where the denominator is at most float64's epsilon). With
    ``adapt_lower_bound`` the bound :math:`f_*` is estimated on the fly. The output is the
    whole step. Needs ``params``.

    Args:
        lr: :math:`\alpha`, a number, 0-d tensor or schedule (default 1e-2; hparam ``lr``).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        lower_bound: :math:`f_*`, a lower bound of the loss (default 0).
        weight_decay: :math:`\lambda`, decoupled as in AdamW (default 0).
        adapt_lower_bound: estimate :math:`f_*` on the fly (structural; default False).
    """
    owner = "scale_by_momo_adam"
    lr_default, lr_value = learning_rate(owner, lr)
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "lower_bound", lower_bound)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    defaults = {"lr": lr_default, "betas": tuple(betas), "eps": eps, "lower_bound": lower_bound,
                "weight_decay": weight_decay}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByMomoAdamState(global_scalar(params, 0).long(), global_scalar(params),
                                    global_scalar(params),
                                    global_scalar(params, initial(lower_bound)), zeros(params),
                                    zeros(params))

    def update(updates, state, params=None, hparams=None, *, value=None, **extra):
        start = _start(owner, defaults, hparams, state, ScaleByMomoAdamState, updates, params,
                       value, lr_value)
        if start is None:
            return updates, state
        h, alpha, value, grad_dot_params = start
        like = state.barf
        b1, b2 = h["betas"]
        tf = (state.step + 1).to(like.dtype)
        barf = b1 * state.barf + (1 - b1) * value
        _, m, v = elementwise(_momo_adam_moments, {"b1": b1, "b2": b2}, updates,
                              (state.exp_avg, state.exp_avg_sq), name=owner,
                              complex_as_real=True, state_like=(LIKE, LIKE))
        bc2 = 1 - b2 ** tf
        eps = h["eps"]
        norm = global_sum(owner, like, lambda m, v: m * (m / _precondition(v, eps, bc2)),
                          updates, m, v)
        gamma = b1 * state.gamma + (1 - b1) * grad_dot_params
        iprod = global_sum(owner, like, _dot, updates, m, params)
        tau, bound = _polyak(h, alpha, barf, gamma, iprod, norm,
                             _bound(h, state, adapt_lower_bound), 1 - b1 ** tf,
                             adapt_lower_bound)
        out = _step(owner, h, alpha, tau, updates, (m, params, v), eps=eps, bc2=bc2)
        return out, ScaleByMomoAdamState(state.step + 1, barf, gamma, bound, m, v)

    return Transform(init, update, defaults)

r"""Schedule-free learning (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, 2024, *The Road
Less Scheduled*): any base optimizer without momentum, made schedule-free, as optax's
``contrib.schedule_free`` computes it.

Three sequences: :math:`y` (where gradients are taken: the parameters the training loop holds),
:math:`z` (the base optimizer's iterates, in the state) and :math:`x` (their weighted average,
where the model is evaluated). :math:`x = (y - (1-\beta_1) z)/\beta_1` is derived from the two
others (storing it would cost a parameter's memory, as in optax and the reference
implementation): :func:`schedule_free_eval_params` gives it, a pure function of the state and
the parameters, and :func:`schedule_free_train_params` goes back. The drop-in classes
(``functional_optim.optim.ScheduleFreeSGD``, ``ScheduleFreeAdamW``) swap them in place with
``eval()`` and ``train()``, as the reference implementation's classes do.

The scalars (the weights' sum, the largest learning rate, the :math:`\beta_1` of the last update)
are 0-d tensors of the scalar dtype (float64; float32 on MPS) on the parameters' device
(optax keeps them in the parameters' lowest dtype: the same numbers for float64 parameters).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import _execute
from .. import tree as _tree
from .._execute import LIKE, cast_hparams, elementwise
from ..base import (
    HParamError,
    Transform,
    _check_transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from .parameter_free import at_least, global_scalar, initial, learning_rate

__all__ = ["ScheduleFreeState", "schedule_free", "schedule_free_eval_params",
           "schedule_free_train_params"]


class ScheduleFreeState(NamedTuple):
    """State of :func:`schedule_free`.

    Attributes:
        step: updates so far (0-d int64, global; optax's ``step_count`` is ``step + 1``).
        b1: the :math:`\\beta_1` of the last update, with which the parameters :math:`y` were
            formed (read by :func:`schedule_free_eval_params`; global scalar).
        weight_sum: the sum of the averaging weights (global scalar).
        max_lr: the largest learning rate so far (global scalar).
        base: the base optimizer's state.
        z: the base optimizer's iterates :math:`z` (in ``state_dtype``).
    """

    step: Any
    b1: Any
    weight_sum: Any
    max_lr: Any
    base: Any
    z: Any


def _schedule_free_rule(h, u, z, y):
    b1, ck = h["b1"], h["ck"]
    z_next = (z + u).to(z.dtype)
    x = (y - (1 - b1) * z) / b1
    x = (1 - ck) * x + ck * z_next
    return (b1 * x + (1 - b1) * z_next) - y, z_next


def schedule_free(base: Transform, lr: Any, b1: float = 0.9, weight_lr_power: float = 2.0, *,
                  state_dtype: torch.dtype | None = None) -> Transform:
    r"""``base`` made schedule-free (Defazio et al., 2024), as optax's ``contrib.schedule_free``.

    With :math:`u_t` the base optimizer's update at :math:`y_t` (the parameters), :math:`\gamma_t`
    the learning rate and :math:`p` the ``weight_lr_power``:

    .. math::
        z_{t+1} = z_t + u_t, \qquad
        c_{t+1} = \frac{\bar\gamma_t^{\,p}}{\sum_{k \le t} \bar\gamma_k^{\,p}}, \quad
        \bar\gamma_t = \max_{k \le t}\gamma_k, \\
        x_t = \frac{y_t - (1-\beta_1) z_t}{\beta_1}, \qquad
        x_{t+1} = (1 - c_{t+1})\,x_t + c_{t+1} z_{t+1}, \qquad
        y_{t+1} = \beta_1 x_{t+1} + (1-\beta_1) z_{t+1}

    and the output is :math:`y_{t+1} - y_t`; :math:`z_1 = x_1 = y_1` are the parameters at
    ``init``. ``base`` must have no momentum (its learning rate is its own: give it the same
    ``lr``, as :func:`functional_optim.schedule_free_sgd` and
    :func:`functional_optim.schedule_free_adamw` do). A schedule ``lr`` is read at
    ``step + 1``, as optax's wrapper counts (its base optimizer reads its own from 0); a
    weight of NaN gives NaN, an undefined one (0/0, all learning rates 0) gives 0, as optax.
    Evaluate the model at :func:`schedule_free_eval_params`. Needs ``params``; ``base`` gets
    the update's keyword arguments. The hparams are ``{"lr", "b1", "weight_lr_power",
    "base": base.hparams}``.

    Args:
        base: the optimizer without momentum (its update is a descent step).
        lr: :math:`\gamma`, a number, 0-d tensor or schedule (hparam ``lr``).
        b1: :math:`\beta_1` in (0, 1] (default 0.9).
        weight_lr_power: :math:`p` (default 2).
        state_dtype: dtype of :math:`z` (structural; default ``None``: the parameters').
    """
    owner = "schedule_free"
    _check_transform(base, owner)
    lr_default, lr_value = learning_rate(owner, lr)
    check_hparam(owner, "b1", b1, gt=0, le=1)
    check_hparam(owner, "weight_lr_power", weight_lr_power)
    if state_dtype is not None and not (isinstance(state_dtype, torch.dtype)
                                        and state_dtype.is_floating_point):
        raise HParamError(f"{owner}: state_dtype must be None or a floating dtype, got "
                          f"{state_dtype!r}")
    defaults = {"lr": lr_default, "b1": b1, "weight_lr_power": weight_lr_power,
                "base": base.hparams}

    def init(params):
        z = _tree.map(lambda p: p.clone() if state_dtype is None or p.is_complex()
                      else p.to(state_dtype, copy=True), params)
        return ScheduleFreeState(global_scalar(params, 0).long(),
                                 global_scalar(params, initial(b1)), global_scalar(params),
                                 global_scalar(params), base.init(params), z)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScheduleFreeState)
        if missing_params(owner, updates, params, "they are y, from which x is recovered"):
            return updates, state
        like = state.max_lr
        hs = cast_hparams({k: h[k] for k in ("lr", "b1", "weight_lr_power")}, like)
        max_lr = at_least(state.max_lr, lr_value(hs["lr"], state.step + 1))
        weight = max_lr ** hs["weight_lr_power"]
        total = state.weight_sum + weight
        undefined = torch.isnan(weight) | torch.isnan(total)
        ck = torch.where(undefined, torch.nan, torch.nan_to_num(weight / total, nan=0.0,
                                                                 posinf=torch.inf))
        base_u, base_state = base.update(updates, state.base, params, h["base"], **extra)
        out, z = elementwise(_schedule_free_rule, {"b1": hs["b1"], "ck": ck}, base_u,
                             (state.z,), (params,), name=owner, input_names=("params",),
                             state_like=(LIKE,))
        return out, ScheduleFreeState(state.step + 1, torch.zeros_like(like) + hs["b1"],
                                      total, max_lr, base_state, z)

    return Transform(init, _execute.owning(update, [base]), defaults)


def _eval_rule(h, y, z):
    b1 = h["b1"]
    return ((y - (1 - b1) * z) / b1,)


def _train_rule(h, x, z):
    b1 = h["b1"]
    return (b1 * x + (1 - b1) * z,)


def _swap(owner: str, rule, state: Any, params: Any) -> Any:
    if not isinstance(state, ScheduleFreeState):
        raise TypeError(f"{owner}: expected the state of schedule_free (a ScheduleFreeState), "
                        f"got {type(state).__name__}")
    (out,) = elementwise(rule, {"b1": state.b1}, params, (), (state.z,), name=owner,
                         input_names=("z",))
    return out


def schedule_free_eval_params(state: ScheduleFreeState, params: Any) -> Any:
    r"""The evaluation parameters :math:`x = (y - (1-\beta_1) z) / \beta_1` of
    :func:`schedule_free` (optax's ``contrib.schedule_free_eval_params``): pure, from its state
    (:math:`z` and the last update's :math:`\beta_1`) and the parameters :math:`y`.

    A training loop evaluates (or saves) the model at these parameters and keeps stepping from
    ``params``::

        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
        eval_loss = loss_fn(fo.schedule_free_eval_params(state, params), batch)
    """
    return _swap("schedule_free_eval_params", _eval_rule, state, params)


def schedule_free_train_params(state: ScheduleFreeState, eval_params: Any) -> Any:
    r"""The inverse of :func:`schedule_free_eval_params`: the parameters
    :math:`y = \beta_1 x + (1-\beta_1) z` from the evaluation parameters :math:`x` (equal to the
    parameters before the round trip up to rounding)."""
    return _swap("schedule_free_train_params", _train_rule, state, eval_params)

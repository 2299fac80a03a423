"""Stateless and scaling building blocks: identity, set_to_zero, scale, sign, learning rate."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import Pointwise, PointwiseCall, elementwise, first_device
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    check_hparam,
    check_state,
    pointwise_transform,
    resolve_hparams,
)
from ..schedules import Schedule, as_schedule

__all__ = [
    "identity",
    "set_to_zero",
    "scale",
    "sign",
    "scale_by_learning_rate",
    "ScaleByScheduleState",
]


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def _identity_rule(h, g):
    return (g,)


def identity() -> Transform:
    """Leaves updates unchanged: :math:`u \\mapsto u`. No hyperparameters."""

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "identity hparams")
        return updates, state

    def prepare(updates, state, params, hparams):
        resolve_hparams({}, hparams, "identity hparams")
        return PointwiseCall(_identity_rule, {}, finish=lambda new: state, sparse=True,
                             reads_update_once=True)

    return Transform(_empty_init, update, {},
                     pointwise=Pointwise(prepare, "identity", kernel=("identity",)))


def set_to_zero() -> Transform:
    """Replaces every update by zeros of its shape and dtype: :math:`u \\mapsto 0`."""

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "set_to_zero hparams")
        return _tree.zeros_like(updates), state

    return Transform(_empty_init, update, {})


def _scale_rule(h, g):
    return (g * h["step_size"],)


def scale(step_size: float) -> Transform:
    """Multiplies updates by a constant: :math:`u \\mapsto s\\,u` (sparse updates stay sparse).

    Args:
        step_size: ``s`` (a number or 0-d tensor; hparam ``"step_size"``).
    """
    check_hparam("scale", "step_size", step_size)
    defaults = {"step_size": step_size}

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "scale hparams")
        return PointwiseCall(_scale_rule, h, finish=lambda new: state, sparse=True,
                             reads_update_once=True)

    return pointwise_transform(_empty_init, defaults, Pointwise(prepare, "scale"))


def _sign_rule(h, g):
    return (torch.sgn(g) if g.is_complex() else torch.sign(g),)


def sign() -> Transform:
    """Keeps only the sign of each update: :math:`u \\mapsto \\mathrm{sign}(u)`.

    For complex updates this is :func:`torch.sgn` (:math:`u/|u|`). signSGD (Bernstein et al., 2018).
    """

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "sign hparams")
        (out,) = elementwise(_sign_rule, {}, updates, name="sign")
        return out, state

    return Transform(_empty_init, update, {})


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_learning_rate` with a schedule: the ``step`` count (0-d int64)."""

    step: torch.Tensor


def _lr_rule(h, g):
    return (g * h["lr"],)


def scale_by_learning_rate(lr: float | torch.Tensor | Schedule, *,
                           flip_sign: bool = True) -> Transform:
    r"""Scales updates by the learning rate: :math:`u \mapsto -\eta\,u` (``flip_sign=True``);
    sparse updates stay sparse.

    Args:
        lr: ``η``: a number, a 0-d tensor, a :class:`~functional_optim.schedules.Schedule` or a
            callable ``step -> value``. A number/tensor is the hparam ``"lr"``; for a schedule the
            hparam ``"lr"`` is the schedule's own hparams dict, and the state counts steps
            (the first update uses ``schedule(0)``).
        flip_sign: negate, so that ``apply_updates`` descends (default True; static).
    """
    sign_ = -1.0 if flip_sign else 1.0
    kind = ("lr",) if flip_sign else ()
    if isinstance(lr, (torch.Tensor, int, float)) and not isinstance(lr, bool):
        check_hparam("scale_by_learning_rate", "lr", lr, ge=0)
        defaults = {"lr": lr}

        def prepare(updates, state, params, hparams):
            h = resolve_hparams(defaults, hparams, "scale_by_learning_rate hparams")
            return PointwiseCall(_lr_rule, {"lr": sign_ * h["lr"]}, finish=lambda new: state,
                                 sparse=True, reads_update_once=True)

        return pointwise_transform(_empty_init, defaults,
                                   Pointwise(prepare, "scale_by_learning_rate", kernel=kind))

    if not callable(lr):
        raise HParamError(
            "scale_by_learning_rate: lr must be a Python number, a 0-d tensor or a schedule, "
            f"got {type(lr).__name__} {lr!r}"
        )
    schedule = as_schedule(lr, "scale_by_learning_rate")
    defaults = {"lr": schedule.hparams}

    def init_schedule(params):
        return ScaleByScheduleState(torch.zeros((), dtype=torch.int64,
                                                device=first_device(params)))

    def prepare_schedule(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "scale_by_learning_rate hparams")
        check_state("scale_by_learning_rate", state, ScaleByScheduleState)
        value = sign_ * schedule(state.step, h["lr"])
        after = ScaleByScheduleState(state.step + 1)
        return PointwiseCall(_lr_rule, {"lr": value}, finish=lambda new: after, sparse=True,
                             reads_update_once=True)

    return pointwise_transform(init_schedule, defaults,
                               Pointwise(prepare_schedule, "scale_by_learning_rate",
                                         kernel=kind))

"""Lion's interpolated sign (Chen et al., 2023; the plain sign is
:func:`~functional_optim.transforms.sign`)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .._execute import LIKE, SHAPED, Pointwise, PointwiseCall, decayed, lerp, zeros_in
from ..base import (
    HParamError,
    Transform,
    check_betas,
    check_dtype_option,
    check_hparam,
    check_state,
    pointwise_transform,
    resolve_hparams,
)

__all__ = ["ScaleByLionState", "scale_by_lion"]

_LION_MODES = ("hard", "smooth", "refined")


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`.

    Attributes:
        mu: the momentum :math:`m_t`, shaped like the parameters (of ``mu_dtype`` if given).
    """

    mu: Any


def _sign(x):
    return torch.sgn(x) if x.is_complex() else torch.sign(x)


def _lion_rule(h, g, m, *, mode):
    b1, b2 = h["betas"]
    if m.dtype == g.dtype:
        new_m = lerp(m, g, 1 - b2)
        x = m * b1 + g * (1 - b1)  # (g read last: on the fused path it may be overwritten)
    else:  # a momentum kept in mu_dtype
        new_m = decayed(m, b2, g) + g * (1 - b2)
        x = decayed(m, b1, g) + g * (1 - b1)
    if mode == "hard":
        u = _sign(x)
    elif mode == "smooth":
        u = torch.tanh(x * h["smooth_beta"])
    else:  # refined: linear below 1 in magnitude, the sign beyond
        u = torch.where(torch.abs(x) < 1, x, _sign(x))
    return u, new_m


def scale_by_lion(betas: tuple[float, float] = (0.9, 0.99), *, mode: str = "hard",
                  smooth_beta: float = 1.0, mu_dtype: torch.dtype | None = None) -> Transform:
    r"""Lion's update: the sign of an interpolation of the momentum and the gradient (Chen et
    al., 2023, *Symbolic Discovery of Optimization Algorithms*, Program 1).

    .. math::
        u_t = \operatorname{sign}\big(\beta_1 m_{t-1} + (1-\beta_1) g_t\big), \qquad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    as optax's ``scale_by_lion`` computes it; ``mode`` (structural) replaces the sign by
    :math:`\tanh(\beta_s x)` (``"smooth"``, with the hyperparameter ``smooth_beta``
    :math:`\beta_s`) or by :math:`x` where :math:`|x| < 1` and :math:`\operatorname{sign}(x)`
    elsewhere (``"refined"``). Complex updates take :math:`x/|x|` for the sign (as optax's).
    With ``mu_dtype`` the momentum is kept in that dtype (a low-precision memory policy), as
    optax's ``mu_dtype``: each product with the stored momentum is taken in ``mu_dtype``, the
    rest in the update's dtype, and the new momentum is rounded to ``mu_dtype`` (a complex
    parameter keeps it in the complex dtype of that precision).

    Args:
        betas: ``(β1, β2)``: the interpolation and the momentum's decay (default
            ``(0.9, 0.99)``, the paper's and optax's).
        mode: ``"hard"``, ``"smooth"`` or ``"refined"`` (structural; default ``"hard"``).
        smooth_beta: ``β_s`` of ``mode="smooth"`` (a hyperparameter only in that mode;
            default 1).
        mu_dtype: dtype of the momentum (structural; default: the parameter's).
    """
    owner = "scale_by_lion"
    if mode not in _LION_MODES:
        raise HParamError(f"{owner}: mode must be one of {_LION_MODES}, got {mode!r}")
    check_dtype_option(owner, "mu_dtype", mu_dtype)
    check_betas(owner, betas)
    defaults: dict = {"betas": tuple(betas)}
    if mode == "smooth":
        check_hparam(owner, "smooth_beta", smooth_beta)
        defaults["smooth_beta"] = smooth_beta
    rule = functools.partial(_lion_rule, mode=mode)

    def init(params):
        return ScaleByLionState(zeros_in(params, mu_dtype))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByLionState)
        # (the old momentum is read twice: not donated)
        return PointwiseCall(rule, h, (state.mu,), finish=lambda new: ScaleByLionState(*new),
                             state_like=(LIKE if mu_dtype is None else SHAPED,))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "native"))

r"""Parameter-free building blocks (optax.contrib's): Prodigy, D-Adaptation AdamW and COCOB
(DoG, DoWG and layer-wise DoG are in :mod:`~functional_optim.transforms.distance_over_gradients`),
and what the family shares. Each estimates its own step size (a distance to the solution, a
betting wealth) from the gradients, and gives optax's numbers.

*Global scalars.* Prodigy's and D-Adaptation's :math:`d`, DoG's and DoWG's distances and
gradient sums are one value for the whole tree: each is a 0-d tensor in the state, of the
*scalar dtype* (float64, float32 on MPS, as :func:`functional_optim._execute.scalar_dtype`),
on the parameters' device, whatever the parameters' dtype (optax keeps them in the parameters'
lowest dtype: the same numbers for float64 parameters, more exact ones for low-precision
parameters). A global sum (an inner product, a norm) runs over the leaves that have an update
(a ``None`` update leaf is left out and keeps its state), complex leaves as pairs of reals,
each leaf reduced in the scalar dtype; DTensor leaves are reduced across their shards (one
all-reduce per mesh). In the stateful adapter the tree is one param group, so each group
estimates its own step size. Every decision is a :func:`torch.where`: no host sync, capturable.

*Initial values are live.* A hyperparameter that sets a starting value (Prodigy's ``d0``,
DoG's ``init_step``, COCOB's ``eps``) is read at the first update (where the step count is 0),
not frozen by ``init``; so it stays a live value like every other hyperparameter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from numbers import Number
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    MissingParamsError,
    Pointwise,
    PointwiseCall,
    cast_hparams,
    elementwise,
    first_device,
    is_off,
    safe_sqrt,
    scalar_dtype,
)
from ..base import (
    HParamError,
    Transform,
    check_betas,
    check_hparam,
    check_state,
    missing_params,
    pointwise_transform,
    resolve_hparams,
)
from ..schedules import as_schedule
from .basic import _identity_rule

__all__ = [
    "ScaleByProdigyState",
    "scale_by_prodigy",
    "ScaleByDadaptAdamwState",
    "scale_by_dadapt_adamw",
    "ScaleByCocobState",
    "scale_by_cocob",
]


# --------------------------------------------------------------------------------------------
# What the blocks share: global scalars, global sums, learning rates that may be schedules


def global_scalar(params: Any, value: float = 0.0) -> torch.Tensor:
    """A 0-d tensor of the scalar dtype on the parameters' device, holding ``value``: a global
    scalar of a state (see the module's policy)."""
    device = first_device(params)
    return torch.full((), value, dtype=scalar_dtype(torch.empty(0, device=device)),
                      device=device)


def initial(value: Any) -> float:
    """The value ``init`` stores for a starting value that the first update reads again
    (a number as it is; a tensor, which may be batched or fake, as 0)."""
    return float(value) if isinstance(value, Number) else 0.0


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def global_sum(owner: str, like: torch.Tensor, fn: Callable[..., torch.Tensor], updates: Any,
               *trees: Any) -> torch.Tensor:
    """:math:`\\sum_i \\mathrm{sum}(fn(a_i, b_i, \\dots))` over the leaves ``a_i, b_i, ...`` of
    ``trees``, for the leaves ``i`` where ``updates`` has a tensor, as a 0-d tensor of
    ``like``'s dtype and device.

    ``fn`` is applied to real views of complex leaves; each leaf's sum is computed in
    ``like``'s dtype; DTensor leaves are reduced across their shards
    (:func:`functional_optim.tree.reduce_by_mesh`). The same code runs per leaf, under
    ``torch.func``, compiled and in the adapter's multi-tensor steps (the same digits).
    A leaf with an update but ``None`` in one of ``trees`` (a parameter that was ``None`` at
    ``init``) is a :class:`~functional_optim.MissingParamsError` naming it and ``owner``.
    """
    spec = _tree.structure(updates)
    columns = [_tree.flatten_like(t, spec, f"{owner}: state or params", "updates")
               for t in trees]
    terms = []
    for i, (u, *row) in enumerate(zip(_tree.leaves(updates), *columns)):
        if u is None:
            continue
        if any(x is None for x in row):
            raise MissingParamsError(f"{owner}: leaf {_tree.leaf_label(updates, i)} has an "
                                     "update but its parameter (or its state) is None")
        terms.append(fn(*map(_real, row)))
    if not terms:
        return torch.zeros_like(like)
    dtype = like.dtype
    total = _tree.reduce_by_mesh(terms, lambda x: torch.sum(x, dtype=dtype), torch.sum)
    return total.to(device=like.device, dtype=dtype)


def _square(a: torch.Tensor) -> torch.Tensor:
    return a * a


def at_least(x: torch.Tensor, floor: Any) -> torch.Tensor:
    """``max(x, floor)`` for a number or tensor ``floor``."""
    return torch.maximum(x, torch.zeros_like(x) + floor)


def safe_divide(num: torch.Tensor, den: torch.Tensor, where: torch.Tensor,
                otherwise: float = 0.0) -> torch.Tensor:
    """``num / den`` where ``where`` holds, else ``otherwise``, with finite gradients on both
    sides (the division never sees the excluded denominators)."""
    return torch.where(where, num / torch.where(where, den, 1.0), otherwise)


def learning_rate(owner: str, lr: Any) -> tuple[Any, Callable[[Any, torch.Tensor], Any]]:
    """``(default hparam, value(h, step))`` of a learning rate inside a block: a number or 0-d
    tensor (the hparam ``lr``), or a schedule (the hparam ``lr`` is its hparams dict; the
    value is ``schedule(step)``)."""
    if isinstance(lr, (Number, torch.Tensor)) and not isinstance(lr, bool):
        check_hparam(owner, "lr", lr, ge=0)
        return lr, lambda h, step: h
    if not callable(lr):
        raise HParamError(f"{owner}: lr must be a Python number, a 0-d tensor or a schedule, "
                          f"got {type(lr).__name__} {lr!r}")
    schedule = as_schedule(lr, owner)
    return schedule.hparams, lambda h, step: schedule(step, h)


def _clone(params: Any) -> Any:
    return _tree.map(torch.clone, params)


def _decayed(u: Any, p: torch.Tensor, coef: Any) -> Any:
    """``u + coef p``, skipped where ``coef`` is the number 0 (a weight decay that is off)."""
    return u if is_off(coef) else u + coef * p


# --------------------------------------------------------------------------------------------
# Prodigy


class ScaleByProdigyState(NamedTuple):
    """State of :func:`scale_by_prodigy`.

    Attributes:
        step: updates so far (0-d int64, global).
        d: the estimate :math:`d` of the distance to the solution (optax's ``estim_lr``;
            global scalar).
        numerator: the weighted numerator :math:`r` of the estimate (global scalar).
        exp_avg: first moment of :math:`d g`.
        exp_avg_sq: second moment of :math:`d g`.
        grad_sum: the weighted sum :math:`s` of the steps.
        params0: the initial parameters :math:`x_0`.
    """

    step: Any
    d: Any
    numerator: Any
    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    params0: Any


def _prodigy_moments(h, g, m, v, s):
    b1, b2, b3 = h["b1"], h["b2"], h["b3"]
    dg = h["d"] * g
    m = b1 * m + (1 - b1) * dg
    v = b2 * v + (1 - b2) * dg * dg
    s = b3 * s + h["s_scale"] * dg / h["d0"]
    return g, m, v, s


def _prodigy_step(h, g, m, v, p):
    dlr = h["dlr"]
    u = -(dlr * m) / (safe_sqrt(v, nonnegative=True) + h["d_eps"])
    return (_decayed(u, p, h["decay"]),)


def scale_by_prodigy(lr: Any = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                     beta3: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
                     d0: float = 1e-6, d_coef: float = 1.0, *,
                     safeguard_warmup: bool = False) -> Transform:
    r"""Prodigy (Mishchenko & Defazio, 2023, *Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner*): AdamW whose step size :math:`d` is estimated on the fly, as optax's ``prodigy``
    computes it (its bias correction always on, decoupled weight decay).

    With :math:`\eta_t` the learning rate (a schedule around 1), :math:`t` counting from 1:

    .. math::
        \hat\eta_t = d_t\,\eta_t\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}, \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) d_t g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) d_t^2 g_t^2, \\
        s_t = \beta_3 s_{t-1} + \frac{\hat\eta_t}{d_0} d_t g_t \ (\text{safeguard: }
        \frac{d_t}{d_0} d_t g_t), \qquad
        r_t = \beta_3 r_{t-1} + \frac{d_t}{d_0}\hat\eta_t \langle g_t, x_0 - x_t\rangle, \\
        d_{t+1} = \max\Big(d_t,\ c\,\frac{r_t}{\|s_t\|_1}\Big), \qquad
        u_t = -\hat\eta_t\,\lambda x_t - \hat\eta_t\,\frac{m_t}{\sqrt{v_t} + d_{t+1}\epsilon}

    with :math:`d_1 = d_0`, :math:`\beta_3 = \sqrt{\beta_2}` by default and :math:`c` the
    ``d_coef``. The output is the whole step (it includes the learning rate and the decay).
    Where :math:`\|s_t\|_1 = 0` (no gradient yet) :math:`d` keeps its value (optax divides by
    zero there; the reference implementation skips the step). Needs ``params``; the global
    scalars follow the module's policy.

    Args:
        lr: :math:`\eta`, a number, 0-d tensor or schedule (default 1; hparam ``lr``).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        beta3: :math:`\beta_3` (default ``None``: :math:`\sqrt{\beta_2}`).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled decay :math:`\lambda` (default 0).
        d0: the initial estimate :math:`d_0` (default 1e-6; optax's ``estim_lr0``).
        d_coef: :math:`c`, a factor on every estimate (default 1; optax's ``estim_lr_coef``).
        safeguard_warmup: leave the learning rate out of :math:`s` (structural; default False).
    """
    owner = "scale_by_prodigy"
    lr_default, lr_value = learning_rate(owner, lr)
    check_betas(owner, betas)
    if beta3 is not None:
        check_hparam(owner, "beta3", beta3, ge=0, lt=1)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    check_hparam(owner, "d0", d0, gt=0)
    check_hparam(owner, "d_coef", d_coef, ge=0)
    defaults = {"lr": lr_default, "betas": tuple(betas), "beta3": beta3, "eps": eps,
                "weight_decay": weight_decay, "d0": d0, "d_coef": d_coef}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByProdigyState(global_scalar(params, 0).long(),
                                   global_scalar(params, initial(d0)), global_scalar(params),
                                   zeros(params), zeros(params), zeros(params), _clone(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByProdigyState)
        if missing_params(owner, updates, params, "it measures the distance to x_0"):
            return updates, state
        hs = cast_hparams(h, state.d)
        b1, b2 = hs["betas"]
        b3 = b2 ** 0.5 if hs["beta3"] is None else hs["beta3"]
        first = state.step == 0
        d = torch.where(first, hs["d0"], state.d)
        tf = (state.step + 1).to(d.dtype)
        dlr = d * lr_value(hs["lr"], state.step) * (torch.sqrt(1 - b2 ** tf) / (1 - b1 ** tf))
        acc = global_sum(owner, d, lambda g, p0, p: g * (p0 - p), updates, updates,
                         state.params0, params)
        rule_h = {"b1": b1, "b2": b2, "b3": b3, "d": d, "d0": hs["d0"],
                  "s_scale": d if safeguard_warmup else dlr}
        _, m, v, s = elementwise(_prodigy_moments, rule_h, updates,
                                 (state.exp_avg, state.exp_avg_sq, state.grad_sum),
                                 name=owner, complex_as_real=True, state_like=(LIKE,) * 3)
        numerator = b3 * state.numerator + (d / hs["d0"]) * dlr * acc
        denominator = global_sum(owner, d, torch.abs, updates, s)
        estimate = safe_divide(hs["d_coef"] * numerator, denominator, denominator > 0)
        d_next = torch.maximum(d, estimate)
        decay = h["weight_decay"]
        step_h = {"dlr": dlr, "d_eps": d_next * hs["eps"],
                  "decay": decay if is_off(decay) else -hs["weight_decay"] * dlr}
        (out,) = elementwise(_prodigy_step, step_h, updates, inputs=(m, v, params),
                             name=owner, complex_as_real=True,
                             input_names=("exp_avg", "exp_avg_sq", "params"))
        return out, ScaleByProdigyState(state.step + 1, d_next, numerator, m, v, s,
                                        state.params0)

    return Transform(init, update, defaults)


# --------------------------------------------------------------------------------------------
# D-Adaptation AdamW


class ScaleByDadaptAdamwState(NamedTuple):
    """State of :func:`scale_by_dadapt_adamw`.

    Attributes:
        step: updates so far (0-d int64, global).
        d: the estimate :math:`d` (optax's ``estim_lr``; global scalar).
        numerator: the weighted numerator :math:`r` (global scalar).
        exp_avg: first moment of :math:`\\hat\\eta g`.
        exp_avg_sq: second moment of :math:`g`.
        grad_sum: the weighted sum :math:`s` of the steps.
    """

    step: Any
    d: Any
    numerator: Any
    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any


def _dadapt_weighted(s, v, eps):
    return s / (safe_sqrt(v, nonnegative=True) + eps)


def _dadapt_rule(h, g, m, v, s, p):
    b1, b2, sb2, dlr = h["b1"], h["b2"], h["sb2"], h["dlr"]
    m = b1 * m + (1 - b1) * dlr * g
    v = b2 * v + (1 - b2) * g * g
    s = sb2 * s + (1 - sb2) * dlr * g
    u = -m / (safe_sqrt(v, nonnegative=True) + h["eps"])
    return _decayed(u, p, h["decay"]), m, v, s


def scale_by_dadapt_adamw(lr: Any = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                          eps: float = 1e-8, weight_decay: float = 0.0,
                          d0: float = 1e-6) -> Transform:
    r"""D-Adaptation AdamW (Defazio & Mishchenko, 2023, *Learning-Rate-Free Learning by
    D-Adaptation*): AdamW whose step size :math:`d` estimates the distance to the solution, as
    optax's ``dadapt_adamw`` computes it.

    With :math:`\eta_t` the learning rate (a schedule around 1), :math:`t` counting from 1 and
    :math:`\sqrt{\beta_2}` written :math:`\rho`:

    .. math::
        \hat\eta_t = d_t\,\eta_t\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}, \qquad
        a_t = \Big\langle g_t, \frac{s_{t-1}}{\sqrt{v_{t-1}} + \epsilon}\Big\rangle, \\
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat\eta_t g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        s_t = \rho s_{t-1} + (1-\rho)\hat\eta_t g_t, \\
        r_t = \rho r_{t-1} + (1-\rho)\hat\eta_t a_t, \qquad
        d_{t+1} = \max\Big(d_t, \frac{r_t}{(1-\rho)\|s_t\|_1}\Big), \qquad
        u_t = -\hat\eta_t \lambda x_t - \frac{m_t}{\sqrt{v_t} + \epsilon}

    with :math:`d_1 = d_0`. The output is the whole step. Where :math:`\|s_t\|_1 = 0`
    :math:`d` keeps its value. Needs ``params`` (for the decay; none needed while
    ``weight_decay`` is the number 0); global scalars as in the module's policy.

    Args:
        lr: :math:`\eta`, a number, 0-d tensor or schedule (default 1; hparam ``lr``).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled decay :math:`\lambda` (default 0).
        d0: the initial estimate :math:`d_0` (default 1e-6; optax's ``estim_lr0``).
    """
    owner = "scale_by_dadapt_adamw"
    lr_default, lr_value = learning_rate(owner, lr)
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    check_hparam(owner, "d0", d0, gt=0)
    defaults = {"lr": lr_default, "betas": tuple(betas), "eps": eps,
                "weight_decay": weight_decay, "d0": d0}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByDadaptAdamwState(global_scalar(params, 0).long(),
                                       global_scalar(params, initial(d0)),
                                       global_scalar(params), zeros(params), zeros(params),
                                       zeros(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByDadaptAdamwState)
        decay = h["weight_decay"]
        if not is_off(decay) and missing_params(owner, updates, params, "weight decay"):
            return updates, state
        hs = cast_hparams(h, state.d)
        b1, b2 = hs["betas"]
        sb2 = b2 ** 0.5
        d = torch.where(state.step == 0, hs["d0"], state.d)
        tf = (state.step + 1).to(d.dtype)
        dlr = d * lr_value(hs["lr"], state.step) * (torch.sqrt(1 - b2 ** tf) / (1 - b1 ** tf))
        eps = hs["eps"]
        acc = global_sum(owner, d, lambda g, s, v: g * _dadapt_weighted(s, v, eps), updates,
                         updates, state.grad_sum, state.exp_avg_sq)
        rule_h = {"b1": b1, "b2": b2, "sb2": sb2, "dlr": dlr, "eps": eps,
                  "decay": decay if is_off(decay) else -hs["weight_decay"] * dlr}
        inputs = () if is_off(decay) else (params,)
        rule = _dadapt_rule if inputs else functools.partial(_dadapt_rule, p=None)
        out, m, v, s = elementwise(rule, rule_h, updates,
                                   (state.exp_avg, state.exp_avg_sq, state.grad_sum), inputs,
                                   name=owner, complex_as_real=True, input_names=("params",),
                                   state_like=(LIKE,) * 3)
        numerator = sb2 * state.numerator + (1 - sb2) * dlr * acc
        l1 = global_sum(owner, d, torch.abs, updates, s)
        estimate = safe_divide(numerator, (1 - sb2) * l1, l1 > 0)
        return out, ScaleByDadaptAdamwState(state.step + 1, torch.maximum(d, estimate),
                                            numerator, m, v, s)

    return Transform(init, update, defaults)


# --------------------------------------------------------------------------------------------
# COCOB


class ScaleByCocobState(NamedTuple):
    """State of :func:`scale_by_cocob`; every field is a tree shaped like the parameters.

    Attributes:
        init_particles: the initial parameters :math:`x_0`.
        cumulative_gradients: :math:`C = -\\sum g`.
        scale: the running maximum :math:`M` of :math:`|g|` (the scale :math:`L` is
            :math:`\\max(M, \\epsilon)`).
        subgradients: :math:`G = \\sum |g|`.
        reward: :math:`R`, the wealth won.
    """

    init_particles: Any
    cumulative_gradients: Any
    scale: Any
    subgradients: Any
    reward: Any


def _cocob_rule(h, g, c, big_m, big_g, r, x0, p):
    c = c - g
    r = torch.clamp(r - (p - x0) * g, min=0.0)
    abs_g = torch.abs(g)  # (the last read of g, which a fused chain may hand over to reuse)
    big_m = torch.maximum(big_m, abs_g)
    big_g = big_g + abs_g
    scale = torch.clamp(big_m, min=h["eps"]) if isinstance(h["eps"], Number) else \
        at_least(big_m, h["eps"])
    bet = c / (scale * torch.maximum(big_g + scale, h["alpha"] * scale))
    return (x0 - p) + bet * (scale + r), c, big_m, big_g, r


def scale_by_cocob(alpha: float = 100.0, eps: float = 1e-8) -> Transform:
    r"""COCOB-Backprop (Orabona & Tommasi, 2017, *Training Deep Networks without Learning Rates
    Through Coin Betting*, Algorithm 2), per element, as optax's ``scale_by_cocob`` computes it:

    .. math::
        L_t = \max(\epsilon, |g_1|, \dots, |g_t|), \qquad G_t = G_{t-1} + |g_t|, \qquad
        R_t = \max(R_{t-1} - g_t (x_t - x_0), 0), \qquad C_t = C_{t-1} - g_t, \\
        u_t = (x_0 - x_t) + \frac{C_t}{L_t \max(G_t + L_t, \alpha L_t)}\,(L_t + R_t)

    The output moves the parameters to the new bet (a whole step: no learning-rate block after
    it; :func:`functional_optim.cocob` scales the gradients by ``lr`` before it). Needs
    ``params``; complex parameters as pairs of reals.

    Args:
        alpha: :math:`\alpha`, the fraction to bet (default 100).
        eps: :math:`\epsilon`, the least scale (default 1e-8).
    """
    owner = "scale_by_cocob"
    check_hparam(owner, "alpha", alpha, gt=0)
    check_hparam(owner, "eps", eps, gt=0)
    defaults = {"alpha": alpha, "eps": eps}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByCocobState(_clone(params), zeros(params), zeros(params), zeros(params),
                                 zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByCocobState)
        if missing_params(owner, updates, params, "it bets from x_0"):
            return PointwiseCall(_identity_rule, h, finish=lambda new: state)
        states = (state.cumulative_gradients, state.scale, state.subgradients, state.reward)
        return PointwiseCall(_cocob_rule, h, states, (state.init_particles, params),
                             finish=lambda new: ScaleByCocobState(state.init_particles,
                                                                  *new),
                             donate_state=(True,) * 4, state_like=(LIKE,) * 4,
                             input_names=("init_particles", "params"))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))

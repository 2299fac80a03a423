"""optax's schedules (``optax/schedules/_schedule.py``, ``_join.py``), as pure
:class:`~functional_optim.schedules.Schedule` objects."""

from __future__ import annotations

import math

import torch

from ..base import HParamError, check_hparam
from .base import (
    Schedule,
    _linear,
    _positive_steps,
    as_schedule,
    exponential_decay,
    linear,
    warmup_cosine_decay,
)


def polynomial(init_value: float, end_value: float, power: float, transition_steps: int,
               transition_begin: int = 0) -> Schedule:
    r"""Polynomial transition from ``init_value`` to ``end_value`` (optax's polynomial schedule).

    .. math:: v(t) = (v_0 - v_1)\left(1 - \frac{\mathrm{clip}(t - t_b, 0, T)}{T}\right)^p + v_1

    Args:
        init_value: ``v_0``, held until ``transition_begin``.
        end_value: ``v_1``, reached at ``transition_begin + transition_steps``.
        power: ``p``.
        transition_steps: ``T`` (> 0).
        transition_begin: ``t_b`` (default 0).
    """
    _positive_steps("polynomial", transition_steps=transition_steps)
    check_hparam("polynomial", "transition_begin", transition_begin, ge=0)
    check_hparam("polynomial", "power", power)

    def fn(step, init_value, end_value, power, transition_steps, transition_begin):
        count = torch.minimum(torch.clamp(step - transition_begin, min=0.0),
                              torch.zeros_like(step) + transition_steps)
        frac = 1.0 - count / transition_steps
        return (init_value - end_value) * frac**power + end_value

    return Schedule(fn, dict(init_value=init_value, end_value=end_value, power=power,
                             transition_steps=transition_steps,
                             transition_begin=transition_begin), "polynomial")


def warmup_constant(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    r"""Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then constant.

    .. math:: v(t) = v_0 + (v_p - v_0)\min(t, W)/W
    """
    _positive_steps("warmup_constant", warmup_steps=warmup_steps)

    def fn(step, init_value, peak_value, warmup_steps):
        return _linear(step, init_value, peak_value, warmup_steps, 0.0)

    return Schedule(fn, dict(init_value=init_value, peak_value=peak_value,
                             warmup_steps=warmup_steps), "warmup_constant")


def join(schedules: list, boundaries: list) -> Schedule:
    r"""One schedule after another: ``schedules[i]`` from ``boundaries[i-1]`` on, restarted there.

    .. math:: v(t) = s_i(t - b_{i-1}) \quad\text{for } b_{i-1} \le t < b_i \quad (b_{-1} = 0)

    optax's ``join_schedules``. The hyperparameters are
    ``{"schedules": (h_0, h_1, ...), "boundaries": (b_0, ...)}``, so every piece stays addressable.

    Args:
        schedules: ``n`` schedules (:class:`Schedule` or callables ``step -> value``).
        boundaries: ``n - 1`` increasing steps where the next schedule takes over.
    """
    pieces = [as_schedule(s, f"join: schedule {i}") for i, s in enumerate(schedules)]
    if not pieces:
        raise ValueError("join: needs at least one schedule")
    if len(boundaries) != len(pieces) - 1:
        raise ValueError(f"join: {len(pieces)} schedules need {len(pieces) - 1} boundaries, "
                         f"got {len(boundaries)}")
    for i, b in enumerate(boundaries):
        check_hparam("join", f"boundaries[{i}]", b, ge=0)

    def fn(step, schedules, boundaries):
        value = pieces[0](step, schedules[0])
        for piece, h, boundary in zip(pieces[1:], schedules[1:], boundaries):
            value = torch.where(step < boundary, value, piece(step - boundary, h))
        return value

    return Schedule(fn, dict(schedules=tuple(p.hparams for p in pieces),
                             boundaries=tuple(boundaries)), "join")


def warmup_exponential_decay(init_value: float, peak_value: float, warmup_steps: int,
                             transition_steps: int, decay_rate: float,
                             transition_begin: int = 0, staircase: bool = False,
                             end_value: float | None = None) -> Schedule:
    r"""Linear warmup to ``peak_value``, then :func:`exponential_decay` from it.

    :func:`join` of ``linear(init_value, peak_value, warmup_steps)`` and
    ``exponential_decay(peak_value, transition_steps, decay_rate, transition_begin, staircase,
    end_value)`` at ``warmup_steps`` (optax's ``warmup_exponential_decay_schedule``).
    """
    _positive_steps("warmup_exponential_decay", warmup_steps=warmup_steps)
    return join([linear(init_value, peak_value, warmup_steps),
                 exponential_decay(peak_value, transition_steps, decay_rate, transition_begin,
                                   staircase, end_value)], [warmup_steps])


def _sorted_boundaries(owner: str, boundaries_and_scales: dict | None) -> tuple[tuple, tuple]:
    if not boundaries_and_scales:
        return (), ()
    bounds, scales = zip(*sorted(boundaries_and_scales.items()))
    for b in bounds:
        if not isinstance(b, int) or isinstance(b, bool) or b < 0:
            raise HParamError(f"{owner}: boundaries must be non-negative ints, got {b!r}")
    for i, scale_ in enumerate(scales):
        check_hparam(owner, f"scales[{i}]", scale_)
    return bounds, scales


def piecewise_constant(init_value: float,
                       boundaries_and_scales: dict[int, float] | None = None) -> Schedule:
    r"""``init_value`` times the product of every scale whose boundary is ``<= t``.

    .. math:: v(t) = v_0 \prod_{b_i \le t} f_i

    Boundaries are static; the scales are the hparam ``"scales"`` (a tuple, in boundary order).
    """
    bounds, scales = _sorted_boundaries("piecewise_constant", boundaries_and_scales)
    check_hparam("piecewise_constant", "init_value", init_value)

    def fn(step, init_value, scales):
        value = torch.zeros_like(step) + init_value
        for b, f in zip(bounds, scales):
            value = torch.where(step >= b, value * f, value)
        return value

    return Schedule(fn, dict(init_value=init_value, scales=tuple(scales)), "piecewise_constant")


def _interpolate(kind, start, end, pct):
    if kind == "linear":
        return (end - start) * pct + start
    return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1.0)


def piecewise_interpolate(interpolate_type: str, init_value: float,
                          boundaries_and_scales: dict[int, float] | None = None) -> Schedule:
    r"""Interpolates (``"linear"`` or ``"cosine"``) between the values at the boundaries.

    The value at boundary :math:`b_i` is :math:`v_0 \prod_{j \le i} f_j`; between two boundaries
    it is interpolated, before the first it goes from ``init_value`` at step 0, after the last it
    stays constant (optax's ``piecewise_interpolate_schedule``).
    """
    if interpolate_type not in ("linear", "cosine"):
        raise ValueError("piecewise_interpolate: interpolate_type must be 'linear' or 'cosine', "
                         f"got {interpolate_type!r}")
    bounds, scales = _sorted_boundaries("piecewise_interpolate", boundaries_and_scales)
    for i, f in enumerate(scales):
        check_hparam("piecewise_interpolate", f"scales[{i}]", f, ge=0)
    edges = (0,) + tuple(bounds)

    def fn(step, init_value, scales):
        values = [torch.zeros_like(step) + init_value]
        for f in scales:
            values.append(values[-1] * f)
        out = values[-1] * (step >= edges[-1])
        for i in range(len(edges) - 1):
            lo, hi = edges[i], edges[i + 1]
            inside = (step >= lo) & (step < hi)
            pct = (step - lo) / max(hi - lo, 1)
            out = torch.where(inside, _interpolate(interpolate_type, values[i], values[i + 1],
                                                   pct), out)
        return out

    return Schedule(fn, dict(init_value=init_value, scales=tuple(scales)),
                    f"piecewise_interpolate[{interpolate_type}]")


def sgdr(cosine_kwargs: list[dict]) -> Schedule:
    r"""SGDR (Loshchilov & Hutter, 2017): :func:`warmup_cosine_decay` cycles, joined.

    Each dict holds :func:`warmup_cosine_decay`'s arguments; a cycle lasts its ``decay_steps``.
    """
    cycles, boundaries, step = [], [], 0
    for kwargs in cosine_kwargs:
        cycles.append(warmup_cosine_decay(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    return join(cycles, boundaries[:-1])


def cosine_onecycle(transition_steps: int, peak_value: float, pct_start: float = 0.3,
                    div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    r"""One-cycle with cosine phases (Smith & Topin, 2017), optax's ``cosine_onecycle_schedule``.

    From ``peak_value / div_factor`` up to ``peak_value`` at ``int(pct_start * T)``, then down
    to ``peak_value / (div_factor * final_div_factor)`` at ``T``.
    """
    _positive_steps("cosine_onecycle", transition_steps=transition_steps)
    return piecewise_interpolate("cosine", peak_value / div_factor, {
        int(pct_start * transition_steps): div_factor,
        int(transition_steps): 1.0 / (div_factor * final_div_factor)})


def linear_onecycle(transition_steps: int, peak_value: float, pct_start: float = 0.3,
                    pct_final: float = 0.85, div_factor: float = 25.0,
                    final_div_factor: float = 1e4) -> Schedule:
    r"""Three linear phases (Smith & Topin, 2017), optax's ``linear_onecycle_schedule``.

    ``peak_value / div_factor`` → ``peak_value`` at ``int(pct_start * T)`` → back to
    ``peak_value / div_factor`` at ``int(pct_final * T)`` → ``peak_value / final_div_factor``
    at ``T``.
    """
    _positive_steps("linear_onecycle", transition_steps=transition_steps)
    return piecewise_interpolate("linear", peak_value / div_factor, {
        int(pct_start * transition_steps): div_factor,
        int(pct_final * transition_steps): 1.0 / div_factor,
        transition_steps: 1.0 / final_div_factor})

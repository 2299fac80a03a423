"""Pure schedules: ``value = schedule(step)`` for a 0-d tensor ``step``, with no host sync.

A :class:`Schedule` keeps its numbers in ``schedule.hparams`` (a dict), so they are values like
every other hyperparameter: they can be tensors, be differentiated, be batched under ``vmap`` and
be changed between CUDA-graph replays. ``schedule(step, hparams=None)`` evaluates it. Values are
0-d float64 tensors on the step's device (transforms cast them to each parameter's dtype).

Step counts start at 0: the first update uses ``schedule(0)``, as optax does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optree
import torch

from .base import HParamError, check_hparam, resolve_hparams

__all__ = [
    "Schedule",
    "as_schedule",
    "constant",
    "linear",
    "cosine_decay",
    "warmup_cosine_decay",
    "exponential_decay",
    # optax's set
    "polynomial",
    "warmup_constant",
    "warmup_exponential_decay",
    "piecewise_constant",
    "piecewise_interpolate",
    "join",
    "sgdr",
    "cosine_onecycle",
    "linear_onecycle",
    # torch.optim.lr_scheduler's formulas
    "step_lr",
    "multistep_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "sequential_lr",
    # HuggingFace transformers' schedules
    "constant_with_warmup",
    "linear_with_warmup",
    "cosine_with_warmup",
    "cosine_with_hard_restarts_with_warmup",
    "polynomial_decay_with_warmup",
    "inverse_sqrt",
    "warmup_stable_decay",
    "get_schedule",
]


class Schedule:
    """A pure schedule: ``fn(step, **hparams)`` with its default ``hparams``.

    Args:
        fn: ``fn(step, **hparams) -> value``; ``step`` is a float64 0-d tensor.
        hparams: the default hyperparameters (numbers or 0-d tensors).
        name: used in error messages and ``repr``.
    """

    __slots__ = ("fn", "hparams", "name")

    def __init__(self, fn: Callable[..., torch.Tensor], hparams: dict, name: str):
        self.fn = fn
        self.hparams = dict(hparams)
        self.name = name

    def __call__(self, step: Any, hparams: dict | None = None) -> torch.Tensor:
        h = resolve_hparams(self.hparams, hparams, f"{self.name} hparams")
        # tensor hparams in float64 too: a float32 one would round the intermediate results
        # (nested: a joined schedule's hparams hold its pieces' dicts)
        h = optree.tree_map(
            lambda v: v.to(torch.float64) if isinstance(v, torch.Tensor) else v, h)
        if isinstance(step, torch.Tensor):
            step = step.to(torch.float64)
        else:
            step = torch.tensor(float(step), dtype=torch.float64)
        value = self.fn(step, **h)
        if isinstance(value, torch.Tensor):
            return value.to(torch.float64)
        return torch.zeros_like(step) + value

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{self.name}({args})"


def as_schedule(value: Any, name: str = "schedule") -> Schedule:
    """A :class:`Schedule` from a Schedule (returned as is) or a callable ``step -> value``."""
    if isinstance(value, Schedule):
        return value
    if callable(value):
        return Schedule(lambda step: value(step), {}, name)
    raise TypeError(f"{name}: expected a Schedule or a callable step -> value, got {value!r}")


def _at_least_one(steps: Any) -> Any:
    if isinstance(steps, torch.Tensor):
        return torch.clamp(steps, min=1.0)
    return max(steps, 1)


def _positive_steps(owner: str, **steps: Any) -> None:
    for key, value in steps.items():
        check_hparam(owner, key, value, gt=0)


def constant(value: float) -> Schedule:
    """``value`` at every step."""
    check_hparam("constant", "value", value)
    return Schedule(lambda step, value: torch.zeros_like(step) + value, {"value": value},
                    "constant")


def _linear(step, init_value, end_value, transition_steps, transition_begin):
    frac = torch.clamp((step - transition_begin) / transition_steps, 0.0, 1.0)
    return init_value + (end_value - init_value) * frac


def linear(init_value: float, end_value: float, transition_steps: int,
           transition_begin: int = 0) -> Schedule:
    r"""Linear interpolation from ``init_value`` to ``end_value``.

    .. math:: v(t) = v_0 + (v_1 - v_0)\,\mathrm{clip}\big((t - t_b)/T,\ 0,\ 1\big)

    Args:
        init_value: value up to ``transition_begin``.
        end_value: value from ``transition_begin + transition_steps`` on.
        transition_steps: length ``T`` of the ramp (> 0).
        transition_begin: step ``t_b`` where the ramp starts (default 0).
    """
    _positive_steps("linear", transition_steps=transition_steps)
    check_hparam("linear", "transition_begin", transition_begin, ge=0)
    return Schedule(_linear, dict(init_value=init_value, end_value=end_value,
                                  transition_steps=transition_steps,
                                  transition_begin=transition_begin), "linear")


def _cosine_factor(step, decay_steps, exponent):
    progress = torch.clamp(step / decay_steps, 0.0, 1.0)
    return (0.5 * (1.0 + torch.cos(math.pi * progress))) ** exponent


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0,
                 exponent: float = 1.0) -> Schedule:
    r"""Cosine decay (Loshchilov & Hutter, 2017, SGDR) from ``init_value`` to ``alpha*init_value``.

    .. math:: v(t) = v_0\left[(1-\alpha)\left(\tfrac12\big(1+\cos(\pi \min(t,T)/T)\big)\right)^p
              + \alpha\right]

    Args:
        init_value: value at step 0.
        decay_steps: ``T`` (> 0); constant after it.
        alpha: final value as a fraction of ``init_value`` (default 0).
        exponent: ``p`` (default 1).
    """
    _positive_steps("cosine_decay", decay_steps=decay_steps)

    def fn(step, init_value, decay_steps, alpha, exponent):
        return init_value * ((1.0 - alpha) * _cosine_factor(step, decay_steps, exponent) + alpha)

    return Schedule(fn, dict(init_value=init_value, decay_steps=decay_steps, alpha=alpha,
                             exponent=exponent), "cosine_decay")


def _readable(value: Any) -> float | None:
    """A number, or a 0-d tensor's value where it can be read here (not batched or fake)."""
    if isinstance(value, torch.Tensor):
        try:
            return float(value.detach())
        except (RuntimeError, NotImplementedError):
            return None
    return value


def warmup_cosine_decay(init_value: float, peak_value: float, warmup_steps: int,
                        decay_steps: int, end_value: float = 0.0,
                        exponent: float = 1.0) -> Schedule:
    r"""Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` is the total length, warmup included (optax's convention). With
    :math:`W` = ``warmup_steps`` and :math:`D` = ``decay_steps - warmup_steps``:

    .. math:: v(t) = \begin{cases} v_0 + (v_p - v_0)\,t/W & t < W \\
              v_e + (v_p - v_e)\left(\tfrac12\big(1+\cos(\pi\min(t-W,D)/D)\big)\right)^p
              & t \ge W \end{cases}

    Args:
        init_value: value at step 0.
        peak_value: value at the end of warmup.
        warmup_steps: ``W`` (>= 0).
        decay_steps: total steps (> ``warmup_steps``).
        end_value: final value (default 0).
        exponent: ``p`` (default 1).
    """
    check_hparam("warmup_cosine_decay", "warmup_steps", warmup_steps, ge=0)
    check_hparam("warmup_cosine_decay", "decay_steps", decay_steps, gt=0)
    warmup_n, decay_n = _readable(warmup_steps), _readable(decay_steps)
    if warmup_n is not None and decay_n is not None and decay_n <= warmup_n:
        raise ValueError(
            f"warmup_cosine_decay: decay_steps ({decay_steps}) must exceed warmup_steps "
            f"({warmup_steps}); decay_steps counts the warmup too"
        )

    def fn(step, init_value, peak_value, warmup_steps, decay_steps, end_value, exponent):
        warm = init_value + (peak_value - init_value) * step / _at_least_one(warmup_steps)
        factor = _cosine_factor(step - warmup_steps, decay_steps - warmup_steps, exponent)
        decay = end_value + (peak_value - end_value) * factor
        return torch.where(step < warmup_steps, warm, decay)

    return Schedule(fn, dict(init_value=init_value, peak_value=peak_value,
                             warmup_steps=warmup_steps, decay_steps=decay_steps,
                             end_value=end_value, exponent=exponent), "warmup_cosine_decay")


def exponential_decay(init_value: float, transition_steps: int, decay_rate: float,
                      transition_begin: int = 0, staircase: bool = False,
                      end_value: float | None = None) -> Schedule:
    r"""Exponential decay: :math:`v(t) = v_0\, r^{(t - t_b)/T}` (floored exponent if staircase).

    Before ``transition_begin`` the value is ``init_value``. ``end_value`` bounds the result
    (a floor when ``decay_rate < 1``, a ceiling when it is > 1).

    Args:
        init_value: ``v_0``.
        transition_steps: ``T`` (> 0).
        decay_rate: ``r`` (> 0).
        transition_begin: ``t_b`` (default 0).
        staircase: decay in discrete steps of ``T`` (static; default False).
        end_value: optional bound (default None: unbounded).
    """
    _positive_steps("exponential_decay", transition_steps=transition_steps)
    check_hparam("exponential_decay", "decay_rate", decay_rate, gt=0)
    check_hparam("exponential_decay", "transition_begin", transition_begin, ge=0)
    hparams = dict(init_value=init_value, transition_steps=transition_steps,
                   decay_rate=decay_rate, transition_begin=transition_begin)
    if end_value is not None:
        hparams["end_value"] = end_value

    def fn(step, init_value, transition_steps, decay_rate, transition_begin, end_value=None):
        exponent = torch.clamp(step - transition_begin, min=0.0) / transition_steps
        if staircase:
            exponent = torch.floor(exponent)
        value = init_value * decay_rate**exponent
        if end_value is None:
            return value
        floor, ceiling = torch.clamp(value, min=end_value), torch.clamp(value, max=end_value)
        if isinstance(decay_rate, torch.Tensor):
            return torch.where(decay_rate < 1, floor, ceiling)
        return floor if decay_rate < 1 else ceiling

    return Schedule(fn, hparams, "exponential_decay")


# --------------------------------------------------------------------------------------------
# optax's schedules


def _where(cond, a, b):
    """``torch.where`` that accepts Python numbers for both branches."""
    return torch.where(cond, torch.as_tensor(a, dtype=torch.float64, device=cond.device)
                       if not isinstance(a, torch.Tensor) else a, b)


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


# --------------------------------------------------------------------------------------------
# torch.optim.lr_scheduler's formulas, in closed form. ``lr`` is the optimizer's initial
# learning rate (the scheduler's ``base_lr``); the value at step ``t`` is the learning rate after
# ``t`` calls of ``scheduler.step()``, i.e. the one the ``t``-th optimizer step uses.


def step_lr(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""``torch.optim.lr_scheduler.StepLR``: :math:`\eta_t = \eta\,\gamma^{\lfloor t/s \rfloor}`."""
    _positive_steps("step_lr", step_size=step_size)

    def fn(step, lr, step_size, gamma):
        return lr * gamma ** torch.floor(step / step_size)

    return Schedule(fn, dict(lr=lr, step_size=step_size, gamma=gamma), "step_lr")


def multistep_lr(lr: float, milestones: list[int], gamma: float = 0.1) -> Schedule:
    r"""``MultiStepLR``: :math:`\eta_t = \eta\,\gamma^{|\{m \in M : m \le t\}|}`.

    A milestone given twice counts twice (as torch's ``Counter`` of milestones does).
    """
    for i, m in enumerate(milestones):
        check_hparam("multistep_lr", f"milestones[{i}]", m, ge=0)

    def fn(step, lr, milestones, gamma):
        passed = torch.zeros_like(step)
        for m in milestones:
            passed = passed + (step >= m).to(step.dtype)
        return lr * gamma**passed

    return Schedule(fn, dict(lr=lr, milestones=tuple(sorted(milestones)), gamma=gamma),
                    "multistep_lr")


def constant_lr(lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    r"""``ConstantLR``: :math:`\eta\,f` for :math:`t < T`, then :math:`\eta`."""
    check_hparam("constant_lr", "factor", factor, ge=0, le=1)
    check_hparam("constant_lr", "total_iters", total_iters, ge=0)

    def fn(step, lr, factor, total_iters):
        return lr * torch.where(step < total_iters, factor + 0.0 * step, 1.0 + 0.0 * step)

    return Schedule(fn, dict(lr=lr, factor=factor, total_iters=total_iters), "constant_lr")


def linear_lr(lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
              total_iters: int = 5) -> Schedule:
    r"""``LinearLR``: :math:`\eta\,(f_0 + (f_1 - f_0)\min(t, T)/T)`."""
    check_hparam("linear_lr", "start_factor", start_factor, gt=0, le=1)
    check_hparam("linear_lr", "end_factor", end_factor, ge=0, le=1)
    _positive_steps("linear_lr", total_iters=total_iters)

    def fn(step, lr, start_factor, end_factor, total_iters):
        t = torch.minimum(step, torch.zeros_like(step) + total_iters)
        return lr * (start_factor + (end_factor - start_factor) * t / total_iters)

    return Schedule(fn, dict(lr=lr, start_factor=start_factor, end_factor=end_factor,
                             total_iters=total_iters), "linear_lr")


def exponential_lr(lr: float, gamma: float) -> Schedule:
    r"""``ExponentialLR``: :math:`\eta\,\gamma^t`."""
    check_hparam("exponential_lr", "gamma", gamma, ge=0)
    return Schedule(lambda step, lr, gamma: lr * gamma**step, dict(lr=lr, gamma=gamma),
                    "exponential_lr")


def polynomial_lr(lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    r"""``PolynomialLR``: :math:`\eta\,(1 - \min(t, T)/T)^p`."""
    _positive_steps("polynomial_lr", total_iters=total_iters)

    def fn(step, lr, total_iters, power):
        t = torch.minimum(step, torch.zeros_like(step) + total_iters)
        return lr * (1.0 - t / total_iters) ** power

    return Schedule(fn, dict(lr=lr, total_iters=total_iters, power=power), "polynomial_lr")


def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:  # noqa: N803
    r"""``CosineAnnealingLR`` in closed form (SGDR without restarts; Loshchilov & Hutter, 2017).

    .. math:: \eta_t = \eta_{min} + \tfrac12(\eta - \eta_{min})\big(1 + \cos(\pi t / T_{max})\big)

    Past ``T_max`` the cosine goes on (up again), as torch's does.
    """
    _positive_steps("cosine_annealing_lr", T_max=T_max)

    def fn(step, lr, T_max, eta_min):  # noqa: N803
        return eta_min + (lr - eta_min) * (1.0 + torch.cos(math.pi * step / T_max)) / 2.0

    return Schedule(fn, dict(lr=lr, T_max=T_max, eta_min=eta_min), "cosine_annealing_lr")


def cosine_annealing_warm_restarts(lr: float, T_0: int, T_mult: int = 1,  # noqa: N803
                                   eta_min: float = 0.0) -> Schedule:
    r"""``CosineAnnealingWarmRestarts`` (SGDR; Loshchilov & Hutter, 2017).

    Cycle :math:`i` lasts :math:`T_i = T_0 T_{mult}^i` steps; with :math:`T_{cur}` the steps
    into the current cycle,
    :math:`\eta_t = \eta_{min} + \tfrac12(\eta - \eta_{min})(1 + \cos(\pi T_{cur}/T_i))`.

    Args:
        T_0: first cycle length (hparam).
        T_mult: cycle growth factor, an int >= 1 (static, as torch requires an int).
    """
    _positive_steps("cosine_annealing_warm_restarts", T_0=T_0)
    if not isinstance(T_mult, int) or isinstance(T_mult, bool) or T_mult < 1:
        raise HParamError(f"cosine_annealing_warm_restarts: T_mult must be an int >= 1, "
                          f"got {T_mult!r}")

    def fn(step, lr, T_0, eta_min):  # noqa: N803
        if T_mult == 1:
            t_cur = torch.remainder(step, T_0)
            t_i = torch.zeros_like(step) + T_0
        else:
            n = torch.floor(torch.log(step / T_0 * (T_mult - 1) + 1.0) / math.log(T_mult))
            start = lambda k: T_0 * (T_mult**k - 1.0) / (T_mult - 1)  # noqa: E731
            n = torch.where(step < start(n), n - 1, n)  # correct a log rounded across a restart
            n = torch.where(step >= start(n + 1), n + 1, n)
            t_cur = step - start(n)
            t_i = T_0 * T_mult**n
        return eta_min + (lr - eta_min) * (1.0 + torch.cos(math.pi * t_cur / t_i)) / 2.0

    return Schedule(fn, dict(lr=lr, T_0=T_0, eta_min=eta_min), "cosine_annealing_warm_restarts")


_CYCLIC_MODES = {"triangular": "cycle", "triangular2": "cycle", "exp_range": "iterations"}


def cyclic_lr(base_lr: float, max_lr: float, step_size_up: int = 2000,
              step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
              scale_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
              scale_mode: str = "cycle") -> Schedule:
    r"""``CyclicLR`` (Smith, 2017): triangular cycles between ``base_lr`` and ``max_lr``.

    With cycle length :math:`C = s_{up} + s_{down}`, :math:`c = \lfloor 1 + t/C \rfloor`,
    :math:`x = 1 + t/C - c` and :math:`r = s_{up}/C`:

    .. math:: \eta_t = \eta_b + (\eta_m - \eta_b)\,\mathrm{tri}(x)\,\sigma(\cdot),\quad
              \mathrm{tri}(x) = x/r \text{ if } x \le r \text{ else } (x-1)/(r-1)

    :math:`\sigma` is 1 (``"triangular"``), :math:`2^{1-c}` (``"triangular2"``),
    :math:`\gamma^t` (``"exp_range"``), or ``scale_fn`` of :math:`c` or :math:`t`
    (``scale_mode``). torch's momentum cycle is the same formula from ``max_momentum`` to
    ``base_momentum``: ``cyclic_lr(max_momentum, base_momentum, ...)``.
    """
    if scale_fn is None:
        if mode not in _CYCLIC_MODES:
            raise ValueError(f"cyclic_lr: mode must be one of {sorted(_CYCLIC_MODES)}, "
                             f"got {mode!r}")
        scale_mode = _CYCLIC_MODES[mode]
    elif scale_mode not in ("cycle", "iterations"):
        raise ValueError(f"cyclic_lr: scale_mode must be 'cycle' or 'iterations', "
                         f"got {scale_mode!r}")
    _positive_steps("cyclic_lr", step_size_up=step_size_up)
    if step_size_down is None:
        step_size_down = step_size_up
    _positive_steps("cyclic_lr", step_size_down=step_size_down)

    def fn(step, base_lr, max_lr, step_size_up, step_size_down, gamma):
        total = step_size_up + step_size_down
        ratio = step_size_up / total
        cycle = torch.floor(1.0 + step / total)
        x = 1.0 + step / total - cycle
        factor = torch.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        arg = cycle if scale_mode == "cycle" else step
        if scale_fn is not None:
            scale_ = scale_fn(arg)
        elif mode == "triangular":
            scale_ = 1.0
        elif mode == "triangular2":
            scale_ = 1.0 / 2.0 ** (arg - 1.0)
        else:
            scale_ = gamma**arg
        return base_lr + (max_lr - base_lr) * factor * scale_

    return Schedule(fn, dict(base_lr=base_lr, max_lr=max_lr, step_size_up=step_size_up,
                             step_size_down=step_size_down, gamma=gamma), f"cyclic_lr[{mode}]")


def _phases(step, anneal, ends, values):
    """torch's OneCycleLR phase walk: phase ``i`` runs from ``ends[i-1]`` (0) to ``ends[i]``."""
    out = None
    for i in reversed(range(len(ends))):
        start = 0.0 if i == 0 else ends[i - 1]
        pct = (step - start) / (ends[i] - start)
        if anneal == "cos":
            v = values[i + 1] + (values[i] - values[i + 1]) / 2.0 * (torch.cos(math.pi * pct) + 1)
        else:
            v = (values[i + 1] - values[i]) * pct + values[i]
        out = v if out is None else torch.where(step <= ends[i], v, out)
    return out


def _one_cycle_ends(total_steps, pct_start, three_phase):
    if three_phase:
        return (pct_start * total_steps - 1.0, 2.0 * pct_start * total_steps - 2.0,
                total_steps - 1.0)
    return (pct_start * total_steps - 1.0, total_steps - 1.0)


def _check_one_cycle(owner, total_steps, pct_start, anneal_strategy):
    _positive_steps(owner, total_steps=total_steps)
    check_hparam(owner, "pct_start", pct_start, ge=0, le=1)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"{owner}: anneal_strategy must be 'cos' or 'linear', "
                         f"got {anneal_strategy!r}")


def one_cycle_lr(max_lr: float, total_steps: int, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    r"""``OneCycleLR``'s learning rate (Smith & Topin, 2017, super-convergence).

    From :math:`\eta_0 = \eta_{max}/d` up to :math:`\eta_{max}` at step
    ``pct_start * total_steps - 1``, then (``three_phase``: back to :math:`\eta_0` at
    ``2 * pct_start * total_steps - 2``, then) down to :math:`\eta_0/d_f` at ``total_steps - 1``,
    annealing by ``"cos"`` or ``"linear"``. Beyond ``total_steps`` (where torch raises) the last
    phase's formula continues.
    """
    _check_one_cycle("one_cycle_lr", total_steps, pct_start, anneal_strategy)

    def fn(step, max_lr, total_steps, pct_start, div_factor, final_div_factor):
        initial = max_lr / div_factor
        low = initial / final_div_factor
        values = (initial, max_lr, initial, low) if three_phase else (initial, max_lr, low)
        return _phases(step, anneal_strategy, _one_cycle_ends(total_steps, pct_start,
                                                              three_phase), values)

    return Schedule(fn, dict(max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                             div_factor=div_factor, final_div_factor=final_div_factor),
                    "one_cycle_lr")


def one_cycle_momentum(total_steps: int, base_momentum: float = 0.85,
                       max_momentum: float = 0.95, pct_start: float = 0.3,
                       anneal_strategy: str = "cos", three_phase: bool = False) -> Schedule:
    r"""``OneCycleLR``'s momentum cycle (or Adam's ``beta1``): ``max_momentum`` down to
    ``base_momentum`` while the learning rate rises, and back up, in the same phases as
    :func:`one_cycle_lr`."""
    _check_one_cycle("one_cycle_momentum", total_steps, pct_start, anneal_strategy)

    def fn(step, total_steps, base_momentum, max_momentum, pct_start):
        values = ((max_momentum, base_momentum, max_momentum, max_momentum) if three_phase
                  else (max_momentum, base_momentum, max_momentum))
        return _phases(step, anneal_strategy, _one_cycle_ends(total_steps, pct_start,
                                                              three_phase), values)

    return Schedule(fn, dict(total_steps=total_steps, base_momentum=base_momentum,
                             max_momentum=max_momentum, pct_start=pct_start),
                    "one_cycle_momentum")


def sequential_lr(schedules: list, milestones: list[int]) -> Schedule:
    """``SequentialLR``: ``schedules[i]`` from ``milestones[i-1]`` on, restarted from its step 0.

    The same as :func:`join` (each piece of a torch ``SequentialLR`` is built from the same
    initial ``lr``).
    """
    return join(schedules, milestones)


# --------------------------------------------------------------------------------------------
# HuggingFace transformers' schedules (``get_*_schedule_with_warmup``): ``lr`` times a factor.


def _hf_warmup(step, num_warmup_steps):
    return step / _at_least_one(num_warmup_steps)


def constant_with_warmup(lr: float, num_warmup_steps: int) -> Schedule:
    r"""``get_constant_schedule_with_warmup``: :math:`\eta\,\min(1, t/\max(1, W))`."""
    check_hparam("constant_with_warmup", "num_warmup_steps", num_warmup_steps, ge=0)

    def fn(step, lr, num_warmup_steps):
        return lr * torch.where(step < num_warmup_steps, _hf_warmup(step, num_warmup_steps),
                                1.0 + 0.0 * step)

    return Schedule(fn, dict(lr=lr, num_warmup_steps=num_warmup_steps), "constant_with_warmup")


def linear_with_warmup(lr: float, num_warmup_steps: int, num_training_steps: int) -> Schedule:
    r"""``get_linear_schedule_with_warmup``: warmup to ``lr`` then linear decay to 0 at
    ``num_training_steps``: :math:`\eta\max\big(0, (T - t)/\max(1, T - W)\big)`."""
    check_hparam("linear_with_warmup", "num_warmup_steps", num_warmup_steps, ge=0)
    _positive_steps("linear_with_warmup", num_training_steps=num_training_steps)

    def fn(step, lr, num_warmup_steps, num_training_steps):
        decay = torch.clamp((num_training_steps - step)
                            / _at_least_one(num_training_steps - num_warmup_steps), min=0.0)
        return lr * torch.where(step < num_warmup_steps, _hf_warmup(step, num_warmup_steps),
                                decay)

    return Schedule(fn, dict(lr=lr, num_warmup_steps=num_warmup_steps,
                             num_training_steps=num_training_steps), "linear_with_warmup")


def _hf_progress(step, num_warmup_steps, num_training_steps):
    return (step - num_warmup_steps) / _at_least_one(num_training_steps - num_warmup_steps)


def cosine_with_warmup(lr: float, num_warmup_steps: int, num_training_steps: int,
                       num_cycles: float = 0.5, min_lr_rate: float = 0.0) -> Schedule:
    r"""``get_cosine_schedule_with_warmup`` (``min_lr_rate``: ``..._with_min_lr``).

    After warmup, with progress :math:`p = (t - W)/\max(1, T - W)`:
    :math:`\eta\,[(1-m)\max(0, \tfrac12(1 + \cos(2\pi c\,p))) + m]`.
    """
    check_hparam("cosine_with_warmup", "num_warmup_steps", num_warmup_steps, ge=0)
    _positive_steps("cosine_with_warmup", num_training_steps=num_training_steps)
    check_hparam("cosine_with_warmup", "min_lr_rate", min_lr_rate, ge=0, le=1)

    def fn(step, lr, num_warmup_steps, num_training_steps, num_cycles, min_lr_rate):
        p = _hf_progress(step, num_warmup_steps, num_training_steps)
        factor = torch.clamp(0.5 * (1.0 + torch.cos(math.pi * num_cycles * 2.0 * p)), min=0.0)
        factor = factor * (1.0 - min_lr_rate) + min_lr_rate
        return lr * torch.where(step < num_warmup_steps, _hf_warmup(step, num_warmup_steps),
                                factor)

    return Schedule(fn, dict(lr=lr, num_warmup_steps=num_warmup_steps,
                             num_training_steps=num_training_steps, num_cycles=num_cycles,
                             min_lr_rate=min_lr_rate), "cosine_with_warmup")


def cosine_with_hard_restarts_with_warmup(lr: float, num_warmup_steps: int,
                                          num_training_steps: int,
                                          num_cycles: int = 1) -> Schedule:
    r"""``get_cosine_with_hard_restarts_schedule_with_warmup``: ``num_cycles`` cosine decays to 0,
    each restarting at ``lr``; 0 from ``num_training_steps`` on."""
    check_hparam("cosine_with_hard_restarts_with_warmup", "num_warmup_steps", num_warmup_steps,
                 ge=0)
    _positive_steps("cosine_with_hard_restarts_with_warmup",
                    num_training_steps=num_training_steps)

    def fn(step, lr, num_warmup_steps, num_training_steps, num_cycles):
        p = _hf_progress(step, num_warmup_steps, num_training_steps)
        factor = torch.clamp(
            0.5 * (1.0 + torch.cos(math.pi * torch.remainder(num_cycles * p, 1.0))), min=0.0)
        factor = torch.where(p >= 1.0, 0.0 * step, factor)
        return lr * torch.where(step < num_warmup_steps, _hf_warmup(step, num_warmup_steps),
                                factor)

    return Schedule(fn, dict(lr=lr, num_warmup_steps=num_warmup_steps,
                             num_training_steps=num_training_steps, num_cycles=num_cycles),
                    "cosine_with_hard_restarts_with_warmup")


def polynomial_decay_with_warmup(lr: float, num_warmup_steps: int, num_training_steps: int,
                                 lr_end: float = 1e-7, power: float = 1.0) -> Schedule:
    r"""``get_polynomial_decay_schedule_with_warmup``: after warmup,
    :math:`(\eta - \eta_{end})(1 - (t-W)/(T-W))^p + \eta_{end}`; :math:`\eta_{end}` after ``T``."""
    check_hparam("polynomial_decay_with_warmup", "num_warmup_steps", num_warmup_steps, ge=0)
    _positive_steps("polynomial_decay_with_warmup", num_training_steps=num_training_steps)
    lr_n, end_n = _readable(lr), _readable(lr_end)
    if lr_n is not None and end_n is not None and not lr_n > end_n:
        raise HParamError(f"polynomial_decay_with_warmup: lr_end ({lr_end}) must be smaller "
                          f"than lr ({lr})")

    def fn(step, lr, num_warmup_steps, num_training_steps, lr_end, power):
        remaining = 1.0 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
        decay = (lr - lr_end) * torch.clamp(remaining, min=0.0) ** power + lr_end
        decay = torch.where(step > num_training_steps, lr_end + 0.0 * step, decay)
        return torch.where(step < num_warmup_steps, lr * _hf_warmup(step, num_warmup_steps),
                           decay)

    return Schedule(fn, dict(lr=lr, num_warmup_steps=num_warmup_steps,
                             num_training_steps=num_training_steps, lr_end=lr_end, power=power),
                    "polynomial_decay_with_warmup")


def inverse_sqrt(lr: float, num_warmup_steps: int = 0, timescale: int | None = None) -> Schedule:
    r"""``get_inverse_sqrt_schedule`` (Vaswani et al., 2017): after warmup,
    :math:`\eta / \sqrt{(t + \tau - W)/\tau}`; ``timescale`` :math:`\tau` defaults to
    ``num_warmup_steps`` (or 10000 without warmup)."""
    check_hparam("inverse_sqrt", "num_warmup_steps", num_warmup_steps, ge=0)
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    _positive_steps("inverse_sqrt", timescale=timescale)

    def fn(step, lr, num_warmup_steps, timescale):
        shifted = torch.clamp((step + timescale - num_warmup_steps) / timescale, min=1e-300)
        return lr * torch.where(step < num_warmup_steps, _hf_warmup(step, num_warmup_steps),
                                torch.rsqrt(shifted))

    return Schedule(fn, dict(lr=lr, num_warmup_steps=num_warmup_steps, timescale=timescale),
                    "inverse_sqrt")


_WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def warmup_stable_decay(lr: float, num_warmup_steps: int, num_decay_steps: int,
                        num_stable_steps: int | None = None,
                        num_training_steps: int | None = None, min_lr_ratio: float = 0.0,
                        num_cycles: float = 0.5, warmup_type: str = "linear",
                        decay_type: str = "cosine") -> Schedule:
    r"""Warmup-stable-decay (``get_wsd_schedule``; Hu et al., 2024, MiniCPM).

    Warmup (``warmup_type``) from ``min_lr_ratio * lr`` to ``lr``, hold ``lr`` for
    ``num_stable_steps`` (default: ``num_training_steps - num_warmup_steps - num_decay_steps``),
    decay (``decay_type``: ``"cosine"``, ``"linear"`` or ``"1-sqrt"``) to ``min_lr_ratio * lr``
    over ``num_decay_steps``, then stay there.
    """
    owner = "warmup_stable_decay"
    if warmup_type not in _WSD_SHAPES or decay_type not in _WSD_SHAPES:
        raise ValueError(f"{owner}: warmup_type and decay_type must be in {_WSD_SHAPES}, got "
                         f"{warmup_type!r}, {decay_type!r}")
    if num_stable_steps is None:
        if num_training_steps is None:
            raise ValueError(f"{owner}: give num_stable_steps or num_training_steps")
        num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps
    check_hparam(owner, "num_warmup_steps", num_warmup_steps, ge=0)
    check_hparam(owner, "num_decay_steps", num_decay_steps, ge=0)
    check_hparam(owner, "num_stable_steps", num_stable_steps, ge=0)
    check_hparam(owner, "min_lr_ratio", min_lr_ratio, ge=0, le=1)

    def fn(step, lr, num_warmup_steps, num_stable_steps, num_decay_steps, min_lr_ratio,
           num_cycles):
        p = torch.clamp(_hf_warmup(step, num_warmup_steps), 0.0, 1.0)
        if warmup_type == "linear":
            warm = p
        elif warmup_type == "cosine":
            warm = 0.5 * (1.0 - torch.cos(math.pi * p))
        else:
            warm = 1.0 - torch.sqrt(1.0 - p)
        q = torch.clamp((step - num_warmup_steps - num_stable_steps)
                        / _at_least_one(num_decay_steps), 0.0, 1.0)
        if decay_type == "linear":
            decay = 1.0 - q
        elif decay_type == "cosine":
            decay = 0.5 * (1.0 + torch.cos(math.pi * num_cycles * 2.0 * q))
        else:
            decay = 1.0 - torch.sqrt(q)
        warm = torch.clamp(warm * (1.0 - min_lr_ratio) + min_lr_ratio, min=0.0)
        decay = torch.clamp(decay * (1.0 - min_lr_ratio) + min_lr_ratio, min=0.0)
        stable_end = num_warmup_steps + num_stable_steps
        factor = torch.where(step < stable_end + num_decay_steps, decay,
                             min_lr_ratio + 0.0 * step)
        factor = torch.where(step < stable_end, 1.0 + 0.0 * step, factor)
        factor = torch.where(step < num_warmup_steps, warm, factor)
        return lr * factor

    return Schedule(fn, dict(lr=lr, num_warmup_steps=num_warmup_steps,
                             num_stable_steps=num_stable_steps, num_decay_steps=num_decay_steps,
                             min_lr_ratio=min_lr_ratio, num_cycles=num_cycles),
                    f"warmup_stable_decay[{warmup_type},{decay_type}]")


def get_schedule(name: str, lr: float, num_warmup_steps: int | None = None,
                 num_training_steps: int | None = None, **kwargs: Any) -> Schedule:
    """A schedule by HuggingFace's ``SchedulerType`` name (``transformers.get_scheduler``).

    Names: ``"constant"``, ``"constant_with_warmup"``, ``"linear"``, ``"cosine"``,
    ``"cosine_with_restarts"``, ``"polynomial"``, ``"inverse_sqrt"``, ``"cosine_with_min_lr"``,
    ``"warmup_stable_decay"``. ``kwargs`` are the schedule's own options (HF's
    ``scheduler_specific_kwargs``). ``"reduce_lr_on_plateau"`` is a transform here:
    :func:`functional_optim.reduce_on_plateau`.
    """

    def need(*names):
        values = {"num_warmup_steps": num_warmup_steps, "num_training_steps": num_training_steps}
        missing = [n for n in names if values[n] is None]
        if missing:
            raise ValueError(f"get_schedule({name!r}) requires {missing}")
        return [values[n] for n in names]

    if name == "constant":
        return constant(lr)
    if name == "constant_with_warmup":
        return constant_with_warmup(lr, *need("num_warmup_steps"))
    if name == "linear":
        return linear_with_warmup(lr, *need("num_warmup_steps", "num_training_steps"))
    if name == "cosine":
        return cosine_with_warmup(lr, *need("num_warmup_steps", "num_training_steps"), **kwargs)
    if name == "cosine_with_min_lr":
        if "min_lr" in kwargs:
            kwargs["min_lr_rate"] = kwargs.pop("min_lr") / lr
        return cosine_with_warmup(lr, *need("num_warmup_steps", "num_training_steps"), **kwargs)
    if name == "cosine_with_restarts":
        return cosine_with_hard_restarts_with_warmup(
            lr, *need("num_warmup_steps", "num_training_steps"), **kwargs)
    if name == "polynomial":
        return polynomial_decay_with_warmup(
            lr, *need("num_warmup_steps", "num_training_steps"), **kwargs)
    if name == "inverse_sqrt":
        return inverse_sqrt(lr, *need("num_warmup_steps"), **kwargs)
    if name == "warmup_stable_decay":
        return warmup_stable_decay(lr, *need("num_warmup_steps"),
                                   num_training_steps=num_training_steps, **kwargs)
    if name == "reduce_lr_on_plateau":
        raise ValueError("get_schedule: reduce-on-plateau depends on the loss, so it is a "
                         "transform: use functional_optim.reduce_on_plateau(...)")
    raise ValueError(f"get_schedule: unknown schedule {name!r}; known: constant, "
                     "constant_with_warmup, linear, cosine, cosine_with_min_lr, "
                     "cosine_with_restarts, polynomial, inverse_sqrt, warmup_stable_decay")

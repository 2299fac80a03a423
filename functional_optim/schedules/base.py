"""The :class:`Schedule` type and the basic schedules (constant, linear, cosine, exponential).

A :class:`Schedule` keeps its numbers in ``schedule.hparams`` (a dict), so they are values like
every other hyperparameter: they can be tensors, be differentiated, be batched under ``vmap`` and
be changed between CUDA-graph replays. ``schedule(step, hparams=None)`` evaluates it. Values are
0-d float64 tensors on the step's device (transforms cast them to each parameter's dtype).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optree
import torch

from ..base import check_hparam, resolve_hparams


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


def decay_rate_schedule(exponent: float = 0.8) -> Schedule:
    r"""A moment's decay that tends to 1 as the step grows: :math:`\beta(t) = 1 - (t+1)^{-c}`
    (:math:`t` from 0, so the first step averages nothing: :math:`\beta = 0`).

    PaLM's :math:`\beta_2` (Chowdhery et al., 2022, Section 5: :math:`1 - k^{-0.8}` at step
    :math:`k \ge 1`), Adafactor's :math:`\hat\beta_{2t}` (Shazeer & Stern, 2018), as a live
    schedule of any hyperparameter: ``fo.inject_hparams(fo.adamw(...), {"betas.1":
    fo.schedules.decay_rate_schedule()})``. PaLM's optimizer has no bias correction of the second
    moment (this :math:`\beta_2` needs none): inject it into ``scale_by_adam(bias_correction=
    "first_moment")``; Adam's correction of the second moment is the constant ``β2``'s.

    Args:
        exponent: ``c`` (> 0; default 0.8).
    """
    check_hparam("decay_rate_schedule", "exponent", exponent, gt=0)
    return Schedule(lambda step, exponent: 1 - (step + 1) ** -exponent, {"exponent": exponent},
                    "decay_rate_schedule")

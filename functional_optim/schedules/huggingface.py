"""HuggingFace transformers' schedules (``transformers.optimization``'s
``get_*_schedule*``): the learning rate ``lr`` times HF's ``lr_lambda`` factor."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..base import HParamError, check_hparam
from .base import Schedule, _at_least_one, _positive_steps, _readable, constant


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

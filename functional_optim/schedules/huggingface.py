"""HuggingFace transformers' schedules (``transformers.optimization``'s
``get_*_schedule*``): the learning rate ``lr`` times HF's ``lr_lambda`` factor."""

from __future__ import annotations

import math
import warnings
from enum import Enum
from typing import Any

import torch

from ..base import HParamError, check_hparam
from .base import Schedule, _at_least_one, _positive_steps, _readable, as_schedule, constant


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
        raise HParamError(f"lr_end ({lr_end}) must be smaller than initial lr ({lr})")

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
        shifted = torch.clamp((step + (timescale - num_warmup_steps)) / timescale, min=1e-300)
        return lr * torch.where(step < num_warmup_steps, _hf_warmup(step, num_warmup_steps),
                                1.0 / torch.sqrt(shifted))

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
    if num_training_steps is None and num_stable_steps is None:
        raise ValueError("Either num_training_steps or num_stable_steps must be specified.")
    if num_training_steps is not None and num_stable_steps is not None:
        warnings.warn("Both num_training_steps and num_stable_steps are specified. "
                      "num_stable_steps will be used.", stacklevel=2)
    for kind, shape in (("warmup", warmup_type), ("decay", decay_type)):
        if shape not in _WSD_SHAPES:
            raise ValueError(f"Unknown {kind} type: {shape}, expected 'linear', 'cosine' or "
                             "'1-sqrt'")
    if num_stable_steps is None:
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


def cosine_warmup_with_min_lr(lr: float, num_warmup_steps: int, num_training_steps: int,
                              num_cycles: float = 0.5, min_lr_rate: float = 0.0,
                              warmup_lr_rate: float | None = None) -> Schedule:
    r"""``get_cosine_with_min_lr_schedule_with_warmup_lr_rate`` (``"cosine_warmup_with_min_lr"``).

    Warmup :math:`(t + 1)/\max(1, W)`, or with a ``warmup_lr_rate`` :math:`r`:
    :math:`r + (1 - r)\,t/\max(1, W - 1)`; then, with :math:`p = (t - W + 1)/\max(1, T - W)`,
    :math:`\eta\max(0, (1 - m)\tfrac12(1 + \cos(2\pi c\,p)) + m)`. ``warmup_lr_rate=None`` is
    structural (the first warmup formula).
    """
    owner = "cosine_warmup_with_min_lr"
    check_hparam(owner, "num_warmup_steps", num_warmup_steps, ge=0)
    check_hparam(owner, "num_training_steps", num_training_steps)
    check_hparam(owner, "min_lr_rate", min_lr_rate)
    hparams = dict(lr=lr, num_warmup_steps=num_warmup_steps,
                   num_training_steps=num_training_steps, num_cycles=num_cycles,
                   min_lr_rate=min_lr_rate)
    if warmup_lr_rate is not None:
        check_hparam(owner, "warmup_lr_rate", warmup_lr_rate)
        hparams["warmup_lr_rate"] = warmup_lr_rate

    def fn(step, lr, num_warmup_steps, num_training_steps, num_cycles, min_lr_rate,
           warmup_lr_rate=None):
        if warmup_lr_rate is None:
            warm = (step + 1.0) / _at_least_one(num_warmup_steps)
        else:
            warm = warmup_lr_rate + (1.0 - warmup_lr_rate) * step / _at_least_one(
                num_warmup_steps - 1)
        p = (step - num_warmup_steps + 1.0) / _at_least_one(num_training_steps
                                                           - num_warmup_steps)
        factor = 0.5 * (1.0 + torch.cos(math.pi * num_cycles * 2.0 * p))
        factor = torch.clamp(factor * (1 - min_lr_rate) + min_lr_rate, min=0.0)
        return lr * torch.where(step < num_warmup_steps, warm, factor)

    return Schedule(fn, hparams, owner)


def min_lr_rate(lr: float, min_lr: float | None, min_lr_rate: float | None) -> float:
    """The ``min_lr_rate`` of HF's ``cosine_with_min_lr`` schedules from exactly one of
    ``min_lr`` (a learning rate: divided by ``lr``) and ``min_lr_rate``, with HF's errors."""
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError("Only one of min_lr or min_lr_rate should be set")
    if min_lr is not None:
        return min_lr / lr
    if min_lr_rate is None:
        raise ValueError("One of min_lr or min_lr_rate should be set through the "
                         "`lr_scheduler_kwargs`")
    return min_lr_rate


def warmup(initial_learning_rate: float, decay_schedule_fn: Any, warmup_steps: int,
           power: float = 1.0) -> Schedule:
    r"""``WarmUp`` of ``transformers.optimization_tf`` (its Keras schedule), pure.

    .. math:: v(t) = \begin{cases} v_0\,(t/W)^p & t < W \\ d(t - W) & t \ge W \end{cases}

    with :math:`d` the ``decay_schedule_fn`` (a :class:`Schedule`, whose hparams nest under
    ``"decay"``, or a callable ``step -> value``). Computed in float64 (Keras: float32).
    """
    check_hparam("warmup", "warmup_steps", warmup_steps, ge=0)
    check_hparam("warmup", "power", power)
    decay = as_schedule(decay_schedule_fn, "warmup: decay_schedule_fn")

    def fn(step, initial_learning_rate, warmup_steps, power, decay_hparams):
        warm = initial_learning_rate * (step / _at_least_one(warmup_steps)) ** power
        return torch.where(step < warmup_steps, warm, decay(step - warmup_steps, decay_hparams))

    return Schedule(fn, dict(initial_learning_rate=initial_learning_rate,
                             warmup_steps=warmup_steps, power=power,
                             decay_hparams=decay.hparams), "warmup")


class SchedulerType(str, Enum):
    """HuggingFace's scheduler names (``transformers.SchedulerType``); an unknown name is HF's
    ``ValueError`` listing the known ones."""

    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"
    REDUCE_ON_PLATEAU = "reduce_lr_on_plateau"
    COSINE_WITH_MIN_LR = "cosine_with_min_lr"
    COSINE_WARMUP_WITH_MIN_LR = "cosine_warmup_with_min_lr"
    WARMUP_STABLE_DECAY = "warmup_stable_decay"
    GREEDY = "greedy"

    @classmethod
    def _missing_(cls, value):
        raise ValueError(f"{value} is not a valid {cls.__name__}, please select one of "
                         f"{list(cls._value2member_map_.keys())}")


_ST = SchedulerType
_WARMUP_ONLY = (_ST.CONSTANT_WITH_WARMUP, _ST.INVERSE_SQRT, _ST.WARMUP_STABLE_DECAY)
_METRIC_DRIVEN = (_ST.REDUCE_ON_PLATEAU, _ST.GREEDY)


def check_required(name: SchedulerType, num_warmup_steps: int | None,
                   num_training_steps: int | None) -> None:
    """HF's ``get_scheduler`` rule: which schedules need ``num_warmup_steps`` and
    ``num_training_steps``, with its errors."""
    if name == _ST.CONSTANT or name in _METRIC_DRIVEN:
        return
    for arg, value in (("num_warmup_steps", num_warmup_steps),
                       ("num_training_steps", num_training_steps)):
        if value is None:
            raise ValueError(f"{name} requires `{arg}`, please provide that argument.")
        if name in _WARMUP_ONLY:
            return


def get_schedule(name: str, lr: float, num_warmup_steps: int | None = None,
                 num_training_steps: int | None = None, **kwargs: Any) -> Schedule:
    """A schedule by HuggingFace's ``SchedulerType`` name (``transformers.get_scheduler``), with
    HF's errors for unknown names and missing arguments.

    Names: ``"constant"``, ``"constant_with_warmup"``, ``"linear"``, ``"cosine"``,
    ``"cosine_with_restarts"``, ``"polynomial"``, ``"inverse_sqrt"``, ``"cosine_with_min_lr"``,
    ``"cosine_warmup_with_min_lr"``, ``"warmup_stable_decay"``. ``kwargs`` are the schedule's
    own options (HF's ``scheduler_specific_kwargs``; ``min_lr`` is divided by ``lr``). The
    metric-driven ``"reduce_lr_on_plateau"`` and ``"greedy"`` are transforms here:
    :func:`functional_optim.reduce_on_plateau`,
    :func:`functional_optim.transforms.scale_by_greedy_lr`.
    """
    name = SchedulerType(name)
    if name in _METRIC_DRIVEN:
        raise ValueError(f"get_schedule: {name.value!r} depends on a measured metric, so it is "
                         "a transform here, not a schedule: use functional_optim."
                         "reduce_on_plateau(...) or functional_optim.transforms."
                         "scale_by_greedy_lr(...)")
    check_required(name, num_warmup_steps, num_training_steps)
    if name in (_ST.COSINE_WITH_MIN_LR, _ST.COSINE_WARMUP_WITH_MIN_LR):
        kwargs["min_lr_rate"] = min_lr_rate(lr, kwargs.pop("min_lr", None),
                                            kwargs.pop("min_lr_rate", None))
    if name == _ST.CONSTANT:
        return constant(lr)
    if name == _ST.CONSTANT_WITH_WARMUP:
        return constant_with_warmup(lr, num_warmup_steps)
    if name == _ST.INVERSE_SQRT:
        return inverse_sqrt(lr, num_warmup_steps, **kwargs)
    if name == _ST.WARMUP_STABLE_DECAY:
        return warmup_stable_decay(lr, num_warmup_steps, num_training_steps=num_training_steps,
                                   **kwargs)
    make = {_ST.LINEAR: linear_with_warmup, _ST.COSINE: cosine_with_warmup,
            _ST.COSINE_WITH_MIN_LR: cosine_with_warmup,
            _ST.COSINE_WARMUP_WITH_MIN_LR: cosine_warmup_with_min_lr,
            _ST.COSINE_WITH_RESTARTS: cosine_with_hard_restarts_with_warmup,
            _ST.POLYNOMIAL: polynomial_decay_with_warmup}[name]
    return make(lr, num_warmup_steps, num_training_steps, **kwargs)

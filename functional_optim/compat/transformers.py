"""``transformers.optimization``, by this library: replace the import and nothing else changes.

::

    # from transformers.optimization import Adafactor, AdafactorSchedule, get_scheduler
    from functional_optim.compat.transformers import Adafactor, AdafactorSchedule, get_scheduler

The same names, signatures, defaults, validation errors and numbers as HuggingFace
transformers' (its current schedules; ``AdamW`` as in transformers 4.x, which later removed
it). The optimizers are drop-in ``torch.optim.Optimizer`` classes
(:class:`~functional_optim.optim.HuggingFaceAdamW`,
:class:`~functional_optim.optim.HuggingFaceAdafactor`) backed by the functional aliases; each
schedule function returns the torch scheduler HF returns (a ``LambdaLR`` whose factor is the
pure schedule of :mod:`functional_optim.schedules`, evaluated at the step), so it drives this
library's optimizers and torch's alike. The pure schedule of each is given in its docstring.

``create_optimizer``, ``AdamWeightDecay``, ``WarmUp`` and ``GradientAccumulator`` are the
PyTorch side of ``transformers.optimization_tf`` (Keras): the same arguments and numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from .. import schedules as _sch
from ..aliases.huggingface import adam_weight_decay
from ..combinators import accumulate
from ..optim.adapter import FunctionalOptimizer
from ..optim.huggingface import (
    HuggingFaceAdafactor,
    HuggingFaceAdafactorSchedule,
    HuggingFaceAdamW,
)
from ..schedules.huggingface import SchedulerType, check_required
from ..schedules.huggingface import min_lr_rate as _min_lr_rate
from ..transforms.plateau import greedy_lr_init, greedy_lr_step, is_better

__all__ = [
    "AdamW",
    "Adafactor",
    "AdafactorSchedule",
    "get_adafactor_schedule",
    "SchedulerType",
    "get_constant_schedule",
    "get_reduce_on_plateau_schedule",
    "get_constant_schedule_with_warmup",
    "get_linear_schedule_with_warmup",
    "get_cosine_schedule_with_warmup",
    "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup",
    "get_inverse_sqrt_schedule",
    "get_cosine_with_min_lr_schedule_with_warmup",
    "get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
    "get_wsd_schedule",
    "GreedyLR",
    "get_greedy_schedule",
    "TYPE_TO_SCHEDULER_FUNCTION",
    "get_scheduler",
    "create_optimizer",
    "AdamWeightDecay",
    "WarmUp",
    "GradientAccumulator",
]

AdamW = HuggingFaceAdamW
Adafactor = HuggingFaceAdafactor
AdafactorSchedule = HuggingFaceAdafactorSchedule


def get_adafactor_schedule(optimizer: Optimizer, initial_lr: float = 0.0) -> LambdaLR:
    """``get_adafactor_schedule``: ``AdafactorSchedule``
    (:class:`~functional_optim.optim.HuggingFaceAdafactorSchedule`: the step sizes Adafactor
    used)."""
    return AdafactorSchedule(optimizer, initial_lr)


def _factor(schedule: _sch.Schedule, scale: float, step: int) -> float:
    """The ``lr_lambda`` of a ``LambdaLR``: the pure schedule at ``step``, over ``scale``."""
    return float(schedule(step)) / scale


def _lambda_lr(optimizer: Optimizer, schedule: _sch.Schedule, last_epoch: int,
               scale: float = 1.0) -> LambdaLR:
    """``LambdaLR(optimizer, step -> schedule(step) / scale)``: a partial of a module function,
    so that ``state_dict`` pickles, as HF's."""
    return LambdaLR(optimizer, functools.partial(_factor, schedule, scale), last_epoch)


def get_constant_schedule(optimizer: Optimizer, last_epoch: int = -1) -> LambdaLR:
    """A constant learning rate (the optimizer's); pure:
    :func:`~functional_optim.schedules.constant`."""
    return _lambda_lr(optimizer, _sch.constant(1.0), last_epoch)


def get_reduce_on_plateau_schedule(optimizer: Optimizer, **kwargs: Any) -> ReduceLROnPlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)``, as HF; functional:
    :func:`~functional_optim.reduce_on_plateau` (a transform: it depends on the loss)."""
    return ReduceLROnPlateau(optimizer, **kwargs)


def get_constant_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                      last_epoch: int = -1) -> LambdaLR:
    """Linear warmup from 0, then the optimizer's lr; pure:
    :func:`~functional_optim.schedules.constant_with_warmup`."""
    return _lambda_lr(optimizer, _sch.constant_with_warmup(1.0, num_warmup_steps), last_epoch)


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps,
                                    last_epoch=-1) -> LambdaLR:
    """Linear warmup, then linear decay to 0; pure:
    :func:`~functional_optim.schedules.linear_with_warmup`."""
    return _lambda_lr(optimizer, _sch.linear_with_warmup(1.0, num_warmup_steps,
                                                         num_training_steps), last_epoch)


def get_cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                    num_training_steps: int, num_cycles: float = 0.5,
                                    last_epoch: int = -1) -> LambdaLR:
    """Linear warmup, then a cosine decay; pure:
    :func:`~functional_optim.schedules.cosine_with_warmup`."""
    return _lambda_lr(optimizer, _sch.cosine_with_warmup(1.0, num_warmup_steps,
                                                         num_training_steps, num_cycles),
                      last_epoch)


def get_cosine_with_hard_restarts_schedule_with_warmup(
        optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
        num_cycles: int = 1, last_epoch: int = -1) -> LambdaLR:
    """Linear warmup, then cosine decays with hard restarts; pure:
    :func:`~functional_optim.schedules.cosine_with_hard_restarts_with_warmup`."""
    return _lambda_lr(optimizer, _sch.cosine_with_hard_restarts_with_warmup(
        1.0, num_warmup_steps, num_training_steps, num_cycles), last_epoch)


def get_polynomial_decay_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps,
                                              lr_end=1e-7, power=1.0,
                                              last_epoch=-1) -> LambdaLR:
    """Linear warmup, then a polynomial decay from the optimizer's default lr to ``lr_end``;
    pure: :func:`~functional_optim.schedules.polynomial_decay_with_warmup`."""
    lr_init = optimizer.defaults["lr"]
    schedule = _sch.polynomial_decay_with_warmup(lr_init, num_warmup_steps, num_training_steps,
                                                 lr_end, power)
    return _lambda_lr(optimizer, schedule, last_epoch, scale=lr_init)


def get_inverse_sqrt_schedule(optimizer: Optimizer, num_warmup_steps: int,
                              timescale: int | None = None, last_epoch: int = -1) -> LambdaLR:
    """Linear warmup, then an inverse square root decay; pure:
    :func:`~functional_optim.schedules.inverse_sqrt`."""
    return _lambda_lr(optimizer, _sch.inverse_sqrt(1.0, num_warmup_steps, timescale),
                      last_epoch)


def get_cosine_with_min_lr_schedule_with_warmup(
        optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
        num_cycles: float = 0.5, last_epoch: int = -1, min_lr: float | None = None,
        min_lr_rate: float | None = None) -> LambdaLR:
    """Linear warmup, then a cosine decay to ``min_lr`` (or ``min_lr_rate`` times the lr);
    pure: :func:`~functional_optim.schedules.cosine_with_warmup`."""
    rate = _min_lr_rate(optimizer.defaults["lr"], min_lr, min_lr_rate)
    return _lambda_lr(optimizer, _sch.cosine_with_warmup(
        1.0, num_warmup_steps, num_training_steps, num_cycles, rate), last_epoch)



def get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
        num_cycles: float = 0.5, last_epoch: int = -1, min_lr: float | None = None,
        min_lr_rate: float | None = None, warmup_lr_rate: float | None = None) -> LambdaLR:
    """The ``"cosine_warmup_with_min_lr"`` schedule; pure:
    :func:`~functional_optim.schedules.cosine_warmup_with_min_lr`."""
    rate = _min_lr_rate(optimizer.defaults["lr"], min_lr, min_lr_rate)
    return _lambda_lr(optimizer, _sch.cosine_warmup_with_min_lr(
        1.0, num_warmup_steps, num_training_steps, num_cycles, rate, warmup_lr_rate),
        last_epoch)


def get_wsd_schedule(optimizer: Optimizer, num_warmup_steps: int, num_decay_steps: int,
                     num_training_steps: int | None = None, num_stable_steps: int | None = None,
                     warmup_type: str = "linear", decay_type: str = "cosine",
                     min_lr_ratio: float = 0, num_cycles: float = 0.5,
                     last_epoch: int = -1) -> LambdaLR:
    """Warmup, stable, decay; pure: :func:`~functional_optim.schedules.warmup_stable_decay`."""
    return _lambda_lr(optimizer, _sch.warmup_stable_decay(
        1.0, num_warmup_steps, num_decay_steps, num_stable_steps, num_training_steps,
        min_lr_ratio, num_cycles, warmup_type, decay_type), last_epoch)


class GreedyLR:
    """HF's ``GreedyLR``: a learning rate that grows while the metric improves and shrinks on
    plateaus, per ``step(metrics)``. The decisions are
    :func:`~functional_optim.transforms.greedy_lr_step`'s (functional:
    :func:`~functional_optim.transforms.scale_by_greedy_lr`); this class holds its state and
    writes the groups' ``lr``, with HF's arguments, errors, attributes and ``state_dict``."""

    _COUNTERS = ("num_bad_epochs", "num_good_epochs", "cooldown_counter", "warmup_counter")

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.95,
                 patience: int = 10, threshold: float = 1e-6, threshold_mode: str = "abs",
                 cooldown: int = 0, warmup: int = 0, min_lr: float | list[float] = 1e-3,
                 max_lr: float | list[float] = 1.0, eps: float = 1e-8, verbose: bool = False,
                 smooth: bool = False, window_size: int = 50, reset_start: int = 500) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.factor, self.patience, self.verbose = factor, patience, verbose
        self.cooldown, self.warmup, self.mode = cooldown, warmup, mode
        self.threshold, self.threshold_mode, self.eps = threshold, threshold_mode, eps
        self.smooth, self.window_size = smooth, window_size
        self.reset_start_original = reset_start
        self.last_epoch = 0
        self.min_lrs = self._per_group("min_lr", min_lr)
        self.max_lrs = self._per_group("max_lr", max_lr)
        self._init_lrs = [group["lr"] for group in optimizer.param_groups]
        self._last_lr = self._init_lrs.copy()
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode} is unknown!")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode} is unknown!")
        self._state = greedy_lr_init(self._lrs(self._init_lrs), reset_start, window_size, mode)

    def _per_group(self, name: str, value) -> list:
        n = len(self.optimizer.param_groups)
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"expected {n} {name}s, got {len(value)}")
            return list(value)
        return [value] * n

    @staticmethod
    def _lrs(values: list) -> torch.Tensor:
        return torch.tensor([float(v) for v in values], dtype=torch.float64)

    def step(self, metrics: float, epoch: int | None = None) -> None:
        """One measurement: ``metrics`` (smoothed if ``smooth``) decides the groups' lr."""
        if epoch is None:
            epoch = self.last_epoch + 1
        self.last_epoch = epoch
        groups = self.optimizer.param_groups
        old = [float(group["lr"]) for group in groups]
        h = dict(factor=self.factor, patience=self.patience, threshold=self.threshold,
                 cooldown=self.cooldown, warmup=self.warmup, min_lr=self._lrs(self.min_lrs),
                 max_lr=self._lrs(self.max_lrs), eps=self.eps,
                 reset_start=self.reset_start_original)
        before = self._state._replace(lr=self._lrs(old))
        self._state = greedy_lr_step(before, torch.tensor(float(metrics), dtype=torch.float64),
                                     h, self._lrs(self._init_lrs), mode=self.mode,
                                     threshold_mode=self.threshold_mode, smooth=self.smooth)
        reset = bool(torch.isinf(self._state.best)) and not bool(torch.isinf(before.best))
        for i, (group, new) in enumerate(zip(groups, self._state.lr.tolist())):
            if new != old[i]:
                group["lr"] = new
                if self.verbose and not reset:
                    what = "reducing" if new < old[i] else "increasing"
                    print(f"Epoch {epoch}: {what} learning rate of group {i} to {new:.4e}.")
        if self.verbose and reset:
            print("Scheduler reset to initial state.")
        self._last_lr = [group["lr"] for group in groups]

    def is_better(self, current: float, best: float) -> bool:
        """HF's rule (:func:`~functional_optim.transforms.is_better`)."""
        return bool(is_better(torch.tensor(float(current), dtype=torch.float64),
                              torch.tensor(float(best), dtype=torch.float64), self.threshold,
                              self.mode, self.threshold_mode))

    def get_last_lr(self) -> list[float]:
        """The learning rates of the last step."""
        return self._last_lr

    @property
    def best(self) -> float:
        return float(self._state.best)

    @property
    def reset_start(self) -> int:
        return int(self._state.reset_left)

    def __getattr__(self, name: str):
        if name in GreedyLR._COUNTERS:
            return int(getattr(self.__dict__["_state"], name))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def state_dict(self) -> dict[str, Any]:
        """HF's ``GreedyLR.state_dict()`` keys and values."""
        state = {k: getattr(self, k) for k in (
            "factor", "min_lrs", "max_lrs", "patience", "verbose", "cooldown", "warmup",
            "cooldown_counter", "warmup_counter", "mode", "threshold", "threshold_mode", "best",
            "num_bad_epochs", "num_good_epochs", "eps", "last_epoch", "smooth", "window_size",
            "reset_start", "reset_start_original", "_last_lr", "_init_lrs")}
        if self.smooth:
            seen, size = int(self._state.seen), self.window_size
            start = (int(self._state.epoch) - seen) % size  # the oldest value's slot
            window = [float(w) for w in self._state.window]
            state["_streaming_avg"] = {
                "window_size": size, "values": [window[(start + k) % size] for k in range(seen)],
                "sum": float(self._state.window_sum)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads HF's ``state_dict`` (and writes its last learning rates to the groups)."""
        for key in ("factor", "min_lrs", "max_lrs", "patience", "verbose", "cooldown", "warmup",
                    "mode", "threshold", "threshold_mode", "eps", "last_epoch", "smooth",
                    "window_size", "reset_start_original", "_last_lr", "_init_lrs"):
            setattr(self, key, state_dict.get(key, getattr(self, key)))
        s = self._state
        values = state_dict.get("_streaming_avg", {}).get("values", [])
        window = tuple(torch.tensor(float(v), dtype=torch.float64)
                       for v in [*values, *[0.0] * (self.window_size - len(values))])
        self._state = s._replace(
            best=torch.tensor(float(state_dict.get("best", self.best)), dtype=torch.float64),
            reset_left=s.reset_left * 0 + state_dict.get("reset_start", self.reset_start),
            window=window, seen=s.seen * 0 + len(values), epoch=s.epoch * 0 + len(values),
            window_sum=torch.tensor(float(state_dict.get("_streaming_avg", {}).get("sum", 0.0)),
                                    dtype=torch.float64),
            **{k: getattr(s, k) * 0 + state_dict.get(k, getattr(self, k))
               for k in self._COUNTERS})
        if "_last_lr" in state_dict:
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr


def get_greedy_schedule(optimizer: Optimizer, **kwargs: Any) -> GreedyLR:
    """:class:`GreedyLR` ``(optimizer, **kwargs)``; functional:
    :func:`~functional_optim.transforms.scale_by_greedy_lr`."""
    return GreedyLR(optimizer, **kwargs)


TYPE_TO_SCHEDULER_FUNCTION = {
    SchedulerType.LINEAR: get_linear_schedule_with_warmup,
    SchedulerType.COSINE: get_cosine_schedule_with_warmup,
    SchedulerType.COSINE_WITH_RESTARTS: get_cosine_with_hard_restarts_schedule_with_warmup,
    SchedulerType.POLYNOMIAL: get_polynomial_decay_schedule_with_warmup,
    SchedulerType.CONSTANT: get_constant_schedule,
    SchedulerType.CONSTANT_WITH_WARMUP: get_constant_schedule_with_warmup,
    SchedulerType.INVERSE_SQRT: get_inverse_sqrt_schedule,
    SchedulerType.REDUCE_ON_PLATEAU: get_reduce_on_plateau_schedule,
    SchedulerType.COSINE_WITH_MIN_LR: get_cosine_with_min_lr_schedule_with_warmup,
    SchedulerType.COSINE_WARMUP_WITH_MIN_LR: get_cosine_with_min_lr_schedule_with_warmup_lr_rate,
    SchedulerType.WARMUP_STABLE_DECAY: get_wsd_schedule,
    SchedulerType.GREEDY: get_greedy_schedule,
}


def get_scheduler(name: str | SchedulerType, optimizer: Optimizer,
                  num_warmup_steps: int | None = None, num_training_steps: int | None = None,
                  scheduler_specific_kwargs: dict | None = None):
    """Any scheduler by its name, with HF's errors for an unknown name and missing
    arguments; the pure schedule by the same name: :func:`~functional_optim.schedules.get_schedule`.
    """
    name = SchedulerType(name)
    schedule_func = TYPE_TO_SCHEDULER_FUNCTION[name]
    kwargs = dict(scheduler_specific_kwargs or {})
    check_required(name, num_warmup_steps, num_training_steps)
    if name == SchedulerType.CONSTANT:
        return schedule_func(optimizer)
    if name in (SchedulerType.REDUCE_ON_PLATEAU, SchedulerType.GREEDY):
        return schedule_func(optimizer, **kwargs)
    if name == SchedulerType.CONSTANT_WITH_WARMUP:
        return schedule_func(optimizer, num_warmup_steps=num_warmup_steps)
    if name == SchedulerType.INVERSE_SQRT:
        return schedule_func(optimizer, num_warmup_steps=num_warmup_steps, **kwargs)
    return schedule_func(optimizer, num_warmup_steps=num_warmup_steps,
                         num_training_steps=num_training_steps, **kwargs)


# --------------------------------------------------------------------------------------------
# transformers.optimization_tf (Keras), in PyTorch


def WarmUp(initial_learning_rate: float, decay_schedule_fn: Callable, warmup_steps: int,  # noqa: N802
           power: float = 1.0, name: str | None = None) -> _sch.Schedule:
    """HF's Keras ``WarmUp`` schedule as a pure schedule
    (:func:`~functional_optim.schedules.warmup`; ``name`` is Keras's op name, unused)."""
    return _sch.warmup(initial_learning_rate, decay_schedule_fn, warmup_steps, power)


def AdamWeightDecay(learning_rate: float | Callable = 0.001, beta_1: float = 0.9,  # noqa: N802
                    beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                    weight_decay_rate: float = 0.0,
                    include_in_weight_decay: list[str] | None = None,
                    exclude_from_weight_decay: list[str] | None = None,
                    name: str = "AdamWeightDecay", **kwargs: Any):
    """HF's Keras ``AdamWeightDecay`` with its arguments, as the functional chain
    :func:`~functional_optim.adam_weight_decay` (a :class:`~functional_optim.Transform`; drive
    it with :class:`~functional_optim.optim.FunctionalOptimizer` over named parameters, whose
    names the regexes match). ``kwargs``: Keras's ``clipnorm``, ``clipvalue``,
    ``global_clipnorm`` and ``lr`` (``learning_rate``'s old name); ``name`` is unused."""
    unknown = sorted(set(kwargs) - {"clipnorm", "clipvalue", "global_clipnorm", "lr"})
    if unknown:
        raise TypeError(f"AdamWeightDecay: unsupported keyword argument(s) {unknown}; known: "
                        "clipnorm, clipvalue, global_clipnorm, lr")
    lr = kwargs.pop("lr", learning_rate)
    return adam_weight_decay(lr, (beta_1, beta_2), epsilon, weight_decay_rate, amsgrad,
                             include_in_weight_decay, exclude_from_weight_decay, **kwargs)


def _named(params: Any) -> list:
    """``(name, parameter)`` pairs of a module, a dict or an iterable of pairs."""
    if isinstance(params, torch.nn.Module):
        return list(params.named_parameters())
    if isinstance(params, Mapping):
        return list(params.items())
    pairs = list(params)
    if not all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in pairs):
        raise TypeError("create_optimizer: params must be a module, a dict of named parameters "
                        "or (name, parameter) pairs (the decay regexes match the names)")
    return pairs


def create_optimizer(init_lr: float, num_train_steps: int, num_warmup_steps: int,
                     min_lr_ratio: float = 0.0, adam_beta1: float = 0.9,
                     adam_beta2: float = 0.999, adam_epsilon: float = 1e-8,
                     adam_clipnorm: float | None = None,
                     adam_global_clipnorm: float | None = None, weight_decay_rate: float = 0.0,
                     power: float = 1.0, include_in_weight_decay: list[str] | None = None, *,
                     params: Any) -> tuple[FunctionalOptimizer, LambdaLR]:
    """HF's ``create_optimizer`` (Keras) in PyTorch: the same arguments, plus the parameters
    (``params=``: a module, a dict or ``(name, parameter)`` pairs); returns
    ``(optimizer, lr_scheduler)``.

    The schedule is HF's: a polynomial decay (``power``) from ``init_lr`` to
    ``init_lr * min_lr_ratio`` over ``num_train_steps - num_warmup_steps`` steps, after a linear
    :func:`WarmUp` when ``num_warmup_steps`` (the pure schedule; the ``LambdaLR`` follows it,
    one ``scheduler.step()`` per optimizer step). The optimizer runs
    :func:`~functional_optim.adam_weight_decay` (Keras's Adam, clipping inside the step) with
    ``weight_decay_rate`` on every parameter but the biases and LayerNorms (unless an
    ``include_in_weight_decay`` regex matches), or without decay when the rate is 0.
    """
    schedule = _sch.polynomial(init_lr, init_lr * min_lr_ratio, power,
                               num_train_steps - num_warmup_steps)
    if num_warmup_steps:
        schedule = _sch.warmup(init_lr, schedule, num_warmup_steps)
    decay = weight_decay_rate > 0.0
    transform = functools.partial(
        adam_weight_decay, init_lr, (adam_beta1, adam_beta2), adam_epsilon,
        weight_decay_rate if decay else 0.0,
        include_in_weight_decay=include_in_weight_decay if decay else None,
        exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"] if decay else None,
        clipnorm=adam_clipnorm, global_clipnorm=adam_global_clipnorm)
    transform()  # its errors (Keras's), now
    optimizer = FunctionalOptimizer(_named(params), transform)
    return optimizer, _lambda_lr(optimizer, schedule, -1, scale=init_lr)


class GradientAccumulator:
    """HF's ``GradientAccumulator``: sums the gradients of several batches.

    ``accumulator(gradients)`` adds a list of gradients (``None`` entries stay ``None``),
    ``accumulator.gradients`` is the sum so far, ``accumulator.step`` the number of calls (a 0-d
    int64 tensor), ``reset()`` zeroes both. The sum is
    :func:`~functional_optim.combinators.accumulate`'s; inside a chain,
    :func:`~functional_optim.multi_steps` with ``reduction="sum"`` applies it.
    """

    def __init__(self):
        self._gradients: list = []
        self._accum_steps: torch.Tensor | None = None

    @property
    def step(self) -> torch.Tensor:
        """Number of accumulated steps."""
        if self._accum_steps is None:
            self._accum_steps = torch.zeros((), dtype=torch.int64)
        return self._accum_steps

    @property
    def gradients(self) -> list:
        """The accumulated gradients."""
        if not self._gradients:
            raise ValueError("The accumulator should be called first to initialize the "
                             "gradients")
        return list(self._gradients)

    def __call__(self, gradients: Iterable) -> None:
        """Accumulates ``gradients``."""
        gradients = list(gradients)
        if not self._gradients:
            self.step  # noqa: B018 - creates the count, as HF's
            self._gradients = [None if g is None else torch.zeros_like(g) for g in gradients]
        if len(gradients) != len(self._gradients):
            raise ValueError(f"Expected {len(self._gradients)} gradients, but got "
                             f"{len(gradients)}")
        both = [None if a is None else g for a, g in zip(self._gradients, gradients)]
        self._gradients = accumulate(self._gradients, both)
        self._accum_steps = self._accum_steps + 1

    def reset(self) -> None:
        """Resets the accumulated gradients."""
        if not self._gradients:
            return
        self._accum_steps = torch.zeros((), dtype=torch.int64)
        self._gradients = [None if g is None else torch.zeros_like(g) for g in self._gradients]

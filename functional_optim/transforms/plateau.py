"""Reduce-on-plateau: a learning rate that drops when a monitored value stops improving."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import tree as _tree
from .._execute import cast_hparams, first_device, is_off, scalar_dtype
from ..base import HParamError, Transform, check_hparam, check_state, resolve_hparams

__all__ = ["ReduceOnPlateauState", "ReduceOnPlateauAveragedState", "reduce_on_plateau",
           "is_better", "GreedyLrState", "greedy_lr_step", "scale_by_greedy_lr"]


def _check_modes(owner: str, mode: str, threshold_mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")


def is_better(value: torch.Tensor, best: torch.Tensor, threshold, mode: str,
              threshold_mode: str, atol=0.0) -> torch.Tensor:
    r"""Whether ``value`` improves on ``best`` (``ReduceLROnPlateau``'s and ``GreedyLR``'s rule):
    ``"min"``: :math:`v < b(1 - \tau) - a` (``"rel"``) or :math:`v < b - \tau - a` (``"abs"``);
    ``"max"``: :math:`v > b(1 + \tau) + a` or :math:`v > b + \tau + a`. The absolute margin
    :math:`a` (``atol``) is 0 for torch's rule; optax's uses a relative and an absolute one
    together."""
    if mode == "min":
        bound = best * (1.0 - threshold) if threshold_mode == "rel" else best - threshold
        return value < (bound if is_off(atol) else bound - atol)
    bound = best * (threshold + 1.0) if threshold_mode == "rel" else best + threshold
    return value > (bound if is_off(atol) else bound + atol)


def _measured(owner: str, value, like: torch.Tensor) -> torch.Tensor:
    """A measured ``value`` as a 0-d tensor of ``like``'s dtype and device."""
    value = torch.as_tensor(value, device=like.device)
    if value.ndim != 0 or value.is_complex():
        raise HParamError(f"{owner}: value must be a real 0-d tensor or a number, got "
                          f"shape {tuple(value.shape)} and dtype {value.dtype}")
    return value.to(like.dtype)


class ReduceOnPlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau` (0-d tensors on the parameters' device).

    Attributes:
        best: best value seen (``+inf``/``-inf`` at first), float64.
        num_bad_epochs: measurements since the last improvement (int64).
        cooldown_counter: measurements left in the cooldown (int64).
        scale: the current learning rate as a fraction of ``lr`` (float64, 1 at first).
    """

    best: torch.Tensor
    num_bad_epochs: torch.Tensor
    cooldown_counter: torch.Tensor
    scale: torch.Tensor


class ReduceOnPlateauAveragedState(NamedTuple):
    """State of :func:`reduce_on_plateau` with ``rule="optax"``: :class:`ReduceOnPlateauState`'s
    fields, and the values of the measurement being accumulated.

    Attributes:
        best, num_bad_epochs, cooldown_counter, scale: as in :class:`ReduceOnPlateauState`.
        count: values accumulated since the last measurement (int64).
        avg_value: their mean (float64, 0 at first).
    """

    best: torch.Tensor
    num_bad_epochs: torch.Tensor
    cooldown_counter: torch.Tensor
    scale: torch.Tensor
    count: torch.Tensor
    avg_value: torch.Tensor


_RULES = ("torch", "optax")


def reduce_on_plateau(lr: float = 1.0, factor: float = 0.1, patience: int = 10,
                      threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                      min_lr: float = 0.0, eps: float = 1e-8, mode: str = "min",
                      flip_sign: bool = False, *, rule: str = "torch", atol: float = 0.0,
                      accumulation_size: int = 1) -> Transform:
    r"""Scales updates by a learning rate that ``torch.optim.lr_scheduler.ReduceLROnPlateau``
    (``rule="torch"``) or optax's ``contrib.reduce_on_plateau`` (``rule="optax"``) would set,
    from the values passed as ``update(..., value=loss)``.

    ``rule="torch"``: each call with a ``value`` is one measurement (a scheduler
    ``step(metrics)``): the value improves on the best one if (``mode="min"``)
    :math:`v < b(1 - 	au)` (``"rel"``) or :math:`v < b - 	au` (``"abs"``), mirrored for
    ``"max"`` (:func:`is_better`). After more than ``patience`` measurements without improvement
    (not counting ``cooldown`` measurements after a reduction) the learning rate :math:`\eta`
    becomes :math:`\max(\eta f, \eta_{min})`, if that lowers it by more than ``eps``.

    ``rule="optax"``: the mean of ``accumulation_size`` values is one measurement; it improves
    if :math:`ar v < b(1 - 	au) - a` (``"rel"``; ``atol`` :math:`a`). An improvement resets
    the count of bad measurements, any other measurement increments it. Outside a cooldown,
    once the count reaches ``patience`` (``patience`` bad measurements, not more than it) the
    learning rate becomes :math:`\eta f`, the count restarts and ``cooldown`` measurements
    follow, in which the count stays 0 and the learning rate is kept (the best value is still
    updated); and outside a cooldown the learning rate is floored at :math:`\eta_{min}` at
    every measurement (optax's ``min_scale``; no ``eps``).

    Every decision is a :func:`torch.where` on state tensors: no ``.item()``, capturable. A call
    without ``value`` (``value=None``) makes no measurement (and accumulates nothing), so a value
    can be given once per epoch while updates run every step. Updates are scaled by the learning
    rate after the measurement.

    Args:
        lr: the initial learning rate :math:`\eta_0` (hparam; default 1: a pure scale, to put
            after another learning rate). The state holds the current ``lr`` as a scale of it.
        factor: :math:`f` in [0, 1).
        patience: measurements without improvement tolerated (hparam int).
        threshold: :math:`	au` (optax's ``rtol``).
        threshold_mode: ``"rel"`` or ``"abs"`` (static).
        cooldown: measurements to wait after a reduction (hparam int).
        min_lr: :math:`\eta_{min}`.
        eps: smallest change applied (``rule="torch"`` only).
        mode: ``"min"`` or ``"max"`` (static).
        flip_sign: negate (for use as the last block of a descent chain; static).
        rule: ``"torch"`` or ``"optax"`` (static); the state is a :class:`ReduceOnPlateauState`
            or a :class:`ReduceOnPlateauAveragedState`.
        atol: :math:`a`, the absolute margin of an improvement (hparam; ``rule="optax"``).
        accumulation_size: values averaged into one measurement (hparam int;
            ``rule="optax"``).
    """
    owner = "reduce_on_plateau"
    _check_modes(owner, mode, threshold_mode)
    if rule not in _RULES:
        raise ValueError(f"{owner}: rule must be one of {_RULES}, got {rule!r}")
    optax_rule = rule == "optax"
    if not optax_rule and (atol != 0.0 or accumulation_size != 1):
        raise ValueError(f"{owner}: atol and accumulation_size belong to rule='optax'; got "
                         f"atol={atol!r}, accumulation_size={accumulation_size!r} with "
                         "rule='torch'")
    if optax_rule and eps != 1e-8:
        raise ValueError(f"{owner}: eps belongs to rule='torch' (optax's rule applies every "
                         f"change); got eps={eps!r} with rule='optax'")
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "factor", factor, ge=0, lt=1)
    check_hparam(owner, "patience", patience, ge=0)
    check_hparam(owner, "threshold", threshold, ge=0)
    check_hparam(owner, "cooldown", cooldown, ge=0)
    check_hparam(owner, "min_lr", min_lr, ge=0)
    defaults = dict(lr=lr, factor=factor, patience=patience, threshold=threshold,
                    cooldown=cooldown, min_lr=min_lr)
    if optax_rule:
        check_hparam(owner, "atol", atol, ge=0)
        check_hparam(owner, "accumulation_size", accumulation_size, ge=1)
        defaults.update(atol=atol, accumulation_size=accumulation_size)
    else:
        check_hparam(owner, "eps", eps, ge=0)
        defaults.update(eps=eps)
    state_cls = ReduceOnPlateauAveragedState if optax_rule else ReduceOnPlateauState
    sign_ = -1.0 if flip_sign else 1.0

    def init(params):
        device = first_device(params)
        dtype = scalar_dtype(torch.empty(0, device=device))
        zero = torch.zeros((), dtype=torch.int64, device=device)
        best = torch.full((), float("inf") if mode == "min" else float("-inf"), dtype=dtype,
                          device=device)
        state = ReduceOnPlateauState(best, zero, zero,
                                     torch.ones((), dtype=dtype, device=device))
        if optax_rule:
            return ReduceOnPlateauAveragedState(*state, zero,
                                                torch.zeros((), dtype=dtype, device=device))
        return state

    def scale_of(h, new):
        """The absolute learning rate ``new`` as a scale of ``lr`` (1 where ``lr`` is 0)."""
        safe_lr = torch.where(torch.as_tensor(h["lr"], dtype=new.dtype, device=new.device) > 0,
                              h["lr"] + 0.0 * new, torch.ones_like(new))
        return new / safe_lr

    def measure(h, state, value):
        """torch's rule: one measurement of ``value``."""
        best = state.best
        better = is_better(value, best, h["threshold"], mode, threshold_mode)
        best = torch.where(better, value, best)
        bad = torch.where(better, torch.zeros_like(state.num_bad_epochs),
                          state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown_counter = torch.where(in_cooldown, state.cooldown_counter - 1,
                                       state.cooldown_counter)
        bad = torch.where(in_cooldown, torch.zeros_like(bad), bad)
        reduce = bad > h["patience"]
        old = h["lr"] * state.scale
        new = torch.clamp(old * h["factor"], min=h["min_lr"])
        lowered = reduce & (old - new > h["eps"])
        scale = torch.where(lowered, scale_of(h, new), state.scale)
        cooldown_counter = torch.where(
            reduce, torch.zeros_like(cooldown_counter) + h["cooldown"], cooldown_counter)
        bad = torch.where(reduce, torch.zeros_like(bad), bad)
        return ReduceOnPlateauState(best, bad, cooldown_counter, scale)

    def measure_averaged(h, state, value):
        """optax's rule: ``value`` joins the running mean; a measurement once it holds
        ``accumulation_size`` values."""
        count = state.count + 1
        avg = (state.count * state.avg_value + value) / count
        better = is_better(avg, state.best, h["threshold"], mode, threshold_mode, h["atol"])
        best = torch.where(better, avg, state.best)
        zero = torch.zeros_like(state.num_bad_epochs)
        bad = torch.where(better, zero, state.num_bad_epochs + 1)
        cooling = state.cooldown_counter > 0
        reduce = torch.logical_not(cooling) & (bad >= h["patience"])
        old = h["lr"] * state.scale
        new = torch.clamp(torch.where(reduce, old * h["factor"], old), min=h["min_lr"])
        decided = ReduceOnPlateauAveragedState(
            best, torch.where(cooling | reduce, zero, bad),
            torch.where(cooling, state.cooldown_counter - 1,
                        torch.where(reduce, (zero + h["cooldown"]).to(zero.dtype), zero)),
            torch.where(cooling, state.scale, scale_of(h, new)), zero, torch.zeros_like(avg))
        due = count >= h["accumulation_size"]
        waiting = state._replace(count=count, avg_value=avg)
        return ReduceOnPlateauAveragedState(*(torch.where(due, d, w)
                                              for d, w in zip(decided, waiting)))

    step = measure_averaged if optax_rule else measure

    def update(updates, state, params=None, hparams=None, *, value=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, state_cls)
        hd = cast_hparams(h, state.best)
        if value is not None:
            state = step(hd, state, _measured(owner, value, state.best))
        current = sign_ * hd["lr"] * state.scale
        out = _tree.map(lambda g: g * current.to(g.device if current.device.type == "cpu"
                                                 and g.device.type != "cpu" else
                                                 current.device).to(
            g.real.dtype if g.is_complex() else g.dtype), updates)
        return out, state

    return Transform(init, update, defaults)


class GreedyLrState(NamedTuple):
    """State of :func:`greedy_lr_step` and :func:`scale_by_greedy_lr` (tensors on one device;
    float64 values, int64 counts).

    Attributes:
        best: best (smoothed) value seen (``±inf`` at first and after a reset).
        num_bad_epochs: measurements since the last improvement.
        num_good_epochs: consecutive improvements.
        cooldown_counter: measurements left in the cooldown after a reduction.
        warmup_counter: measurements left in the warmup after an increase.
        reset_left: reductions at the floor left before the reset (``reset_start`` at first).
        window: the last ``window_size`` values (a ring of 0-d tensors; smoothing only).
        seen: values in the window so far (capped at ``window_size``).
        window_sum: their running sum, updated as HuggingFace's ``StreamingAverage`` (add the
            new value, subtract the dropped one).
        lr: the current learning rate(s) (for :func:`scale_by_greedy_lr`: a scale of ``lr``).
        epoch: measurements so far (``last_epoch``).
    """

    best: torch.Tensor
    num_bad_epochs: torch.Tensor
    num_good_epochs: torch.Tensor
    cooldown_counter: torch.Tensor
    warmup_counter: torch.Tensor
    reset_left: torch.Tensor
    window: torch.Tensor
    seen: torch.Tensor
    window_sum: torch.Tensor
    lr: torch.Tensor
    epoch: torch.Tensor


def greedy_lr_init(lr: torch.Tensor, reset_start, window_size: int, mode: str) -> GreedyLrState:
    """The state of :func:`greedy_lr_step` before any measurement, at learning rate(s) ``lr``."""
    zero = torch.zeros((), dtype=torch.int64, device=lr.device)
    float_ = torch.float64 if lr.device.type != "mps" else torch.float32
    best = torch.full((), float("inf") if mode == "min" else float("-inf"), dtype=float_,
                      device=lr.device)
    nothing = torch.zeros((), dtype=float_, device=lr.device)
    return GreedyLrState(best, zero, zero, zero, zero, zero + reset_start,
                         (nothing,) * window_size, zero, nothing, lr, zero)


def greedy_lr_step(state: GreedyLrState, value: torch.Tensor, h: dict, initial_lr,
                   *, mode: str = "min", threshold_mode: str = "abs",
                   smooth: bool = False) -> GreedyLrState:
    r"""One measurement of GreedyLR (Subramanian et al., 2025; HuggingFace's ``GreedyLR``).

    ``value`` (0-d, the state's dtype) is smoothed over the last ``window_size`` values if
    ``smooth``. Outside a cooldown or warmup, an improvement (:func:`is_better`) counts as a good
    measurement, anything else as a bad one. After more than ``patience`` good ones in a row the
    learning rate grows, :math:`\eta \leftarrow \min(\eta / f, \eta_{max})`, and a ``warmup``
    follows; after more than ``patience`` bad ones it shrinks,
    :math:`\eta \leftarrow \max(\eta f, \eta_{min})`, and a ``cooldown`` follows (a change only
    where it exceeds ``eps``). Once every learning rate sits at its floor, ``reset_start``
    further reductions bring back ``initial_lr`` and a fresh state. ``state.lr`` may hold one
    learning rate per group (``min_lr``/``max_lr`` broadcast with it); every decision is a
    :func:`torch.where` (no host sync).

    Hparams ``h``: ``factor``, ``patience``, ``threshold``, ``cooldown``, ``warmup``,
    ``min_lr``, ``max_lr``, ``eps``, ``reset_start``.
    """
    zero = torch.zeros_like(state.num_bad_epochs)
    window, seen, total = state.window, state.seen, state.window_sum
    if smooth:  # a ring of 0-d values; the slot of the oldest is the count modulo its size
        size = len(window)
        slot = torch.remainder(state.epoch, size)
        full = seen >= size
        dropped = sum(torch.where(full & (slot == i), w, 0.0 * w) for i, w in enumerate(window))
        total = total + value
        total = torch.where(full, total - dropped, total)
        window = tuple(torch.where(slot == i, value, w) for i, w in enumerate(window))
        seen = torch.clamp(seen + 1, max=size)
        value = total / seen
    cooling, warming = state.cooldown_counter > 0, state.warmup_counter > 0
    active = torch.logical_not(cooling | warming)
    better = active & is_better(value, state.best, h["threshold"], mode, threshold_mode)
    best = torch.where(better, value, state.best)
    bad = torch.where(active & torch.logical_not(better), state.num_bad_epochs + 1, zero)
    good = torch.where(better, state.num_good_epochs + 1, zero)
    cooldown_counter = torch.where(cooling, state.cooldown_counter - 1, state.cooldown_counter)
    warmup_counter = torch.where(torch.logical_not(cooling) & warming, state.warmup_counter - 1,
                                 state.warmup_counter)
    increase = good > h["patience"]
    reduce = torch.logical_not(increase) & (bad > h["patience"])
    lr = state.lr
    raised = torch.clamp(lr / h["factor"], max=h["max_lr"])
    lowered = torch.clamp(lr * h["factor"], min=h["min_lr"])
    lr = torch.where(increase & (raised - lr > h["eps"]), raised, lr)
    lr = torch.where(reduce & (state.lr - lowered > h["eps"]), lowered, lr)
    reset_left = torch.where(increase, zero + h["reset_start"], state.reset_left)
    at_floor = reduce & (lr <= h["min_lr"]).all()
    reset_left = torch.where(at_floor, reset_left - 1, reset_left)
    reset = at_floor & (reset_left <= 0)
    warmup_counter = torch.where(increase, zero + h["warmup"], warmup_counter)
    cooldown_counter = torch.where(reduce, zero + h["cooldown"], cooldown_counter)
    good = torch.where(increase | reset, zero, good)
    bad = torch.where(reduce, zero, bad)
    # a reset: the initial learning rates and a fresh state (but the cooldown of the reduction
    # that reset, and the count of measurements), from *_like tensors (no new device tensor)
    fresh = GreedyLrState(torch.full_like(best, math.inf if mode == "min" else -math.inf),
                          zero, zero, cooldown_counter, zero, zero + h["reset_start"],
                          tuple(torch.zeros_like(w) for w in window), zero,
                          torch.zeros_like(total), torch.zeros_like(lr) + initial_lr,
                          state.epoch + 1)
    kept = GreedyLrState(best, bad, good, cooldown_counter, warmup_counter, reset_left, window,
                         seen, total, lr, state.epoch + 1)
    return GreedyLrState(*(tuple(torch.where(reset, n, o) for n, o in zip(new, old))
                           if isinstance(new, tuple) else torch.where(reset, new, old)
                           for new, old in zip(fresh, kept)))


def scale_by_greedy_lr(lr: float = 1.0, factor: float = 0.95, patience: int = 10,
                       threshold: float = 1e-6, threshold_mode: str = "abs", cooldown: int = 0,
                       warmup: int = 0, min_lr: float = 1e-3, max_lr: float = 1.0,
                       eps: float = 1e-8, smooth: bool = False, window_size: int = 50,
                       reset_start: int = 500, mode: str = "min",
                       flip_sign: bool = False) -> Transform:
    r"""Scales updates by the learning rate GreedyLR (HuggingFace's ``GreedyLR``) would set,
    from the values passed as ``update(..., value=loss)``: :func:`greedy_lr_step` per call with
    a ``value`` (none without), then updates times the current learning rate. ``lr`` is the
    initial (and reset) learning rate; the state holds the current one as a scale of ``lr``.

    Args:
        lr: initial learning rate (hparam; default 1: a pure scale).
        factor: :math:`f` in (0, 1).
        patience: measurements tolerated before a change (hparam int).
        threshold: :math:`\tau` of :func:`is_better`.
        threshold_mode: ``"rel"`` or ``"abs"`` (static).
        cooldown: measurements to wait after a reduction (hparam int).
        warmup: measurements to wait after an increase (hparam int).
        min_lr: :math:`\eta_{min}`.
        max_lr: :math:`\eta_{max}`.
        eps: smallest change applied.
        smooth: average the values over a window (static).
        window_size: that window (static int).
        reset_start: reductions at the floor before a reset (hparam int).
        mode: ``"min"`` or ``"max"`` (static).
        flip_sign: negate (as the last block of a descent chain; static).
    """
    owner = "scale_by_greedy_lr"
    _check_modes(owner, mode, threshold_mode)
    if not isinstance(window_size, int) or window_size < 1:
        raise HParamError(f"{owner}: window_size must be an int >= 1, got {window_size!r}")
    check_hparam(owner, "factor", factor, gt=0, lt=1)
    for name, value in (("lr", lr), ("patience", patience), ("threshold", threshold),
                        ("cooldown", cooldown), ("warmup", warmup), ("min_lr", min_lr),
                        ("max_lr", max_lr), ("eps", eps), ("reset_start", reset_start)):
        check_hparam(owner, name, value, ge=0)
    defaults = dict(lr=lr, factor=factor, patience=patience, threshold=threshold,
                    cooldown=cooldown, warmup=warmup, min_lr=min_lr, max_lr=max_lr, eps=eps,
                    reset_start=reset_start)
    sign_ = -1.0 if flip_sign else 1.0

    def init(params):
        device = first_device(params)
        one = torch.ones((), dtype=scalar_dtype(torch.empty(0, device=device)), device=device)
        return greedy_lr_init(one, reset_start, window_size, mode)

    def update(updates, state, params=None, hparams=None, *, value=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, GreedyLrState)
        hd = cast_hparams(h, state.best)
        base = hd["lr"] + 0.0 * state.lr
        safe = torch.where(base > 0, base, torch.ones_like(base))
        if value is not None:  # in absolute learning rates, then back to a scale of lr
            absolute = state._replace(lr=base * state.lr)
            stepped = greedy_lr_step(absolute, _measured(owner, value, state.best), hd, base,
                                     mode=mode, threshold_mode=threshold_mode, smooth=smooth)
            state = stepped._replace(lr=stepped.lr / safe)
        current = sign_ * base * state.lr
        out = _tree.map(lambda g: g * current.to(g.device if current.device.type == "cpu"
                                                 and g.device.type != "cpu" else
                                                 current.device).to(
            g.real.dtype if g.is_complex() else g.dtype), updates)
        return out, state

    return Transform(init, update, defaults)

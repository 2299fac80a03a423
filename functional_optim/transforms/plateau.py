"""Reduce-on-plateau: a learning rate that drops when a monitored value stops improving."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import tree as _tree
from .._execute import cast_hparams, first_device, scalar_dtype
from ..base import HParamError, Transform, check_hparam, check_state, resolve_hparams

__all__ = ["ReduceOnPlateauState", "reduce_on_plateau"]


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


def reduce_on_plateau(lr: float = 1.0, factor: float = 0.1, patience: int = 10,
                      threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                      min_lr: float = 0.0, eps: float = 1e-8, mode: str = "min",
                      flip_sign: bool = False) -> Transform:
    r"""Scales updates by a learning rate that ``torch.optim.lr_scheduler.ReduceLROnPlateau``
    would set, from the values passed as ``update(..., value=loss)``.

    Each call with a ``value`` is one measurement (a scheduler ``step(metrics)``): the value
    improves on the best one if (``mode="min"``) :math:`v < b(1 - \tau)` (``"rel"``) or
    :math:`v < b - \tau` (``"abs"``), mirrored for ``"max"``. After more than ``patience``
    measurements without improvement (not counting ``cooldown`` measurements after a reduction)
    the learning rate :math:`\eta` becomes :math:`\max(\eta f, \eta_{min})`, if that lowers it
    by more than ``eps``. Every decision is a :func:`torch.where` on state tensors: no
    ``.item()``, capturable. A call without ``value`` (``value=None``) makes no measurement, so
    a value can be given once per epoch while updates run every step. Updates are scaled by
    the learning rate after the measurement.

    Args:
        lr: the initial learning rate :math:`\eta_0` (hparam; default 1: a pure scale, to put
            after another learning rate). The state holds the current ``lr`` as a scale of it.
        factor: :math:`f` in [0, 1).
        patience: measurements without improvement tolerated (hparam int).
        threshold: :math:`\tau`.
        threshold_mode: ``"rel"`` or ``"abs"`` (static).
        cooldown: measurements to wait after a reduction (hparam int).
        min_lr: :math:`\eta_{min}`.
        eps: smallest change applied.
        mode: ``"min"`` or ``"max"`` (static).
        flip_sign: negate (for use as the last block of a descent chain; static).
    """
    owner = "reduce_on_plateau"
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "factor", factor, ge=0, lt=1)
    check_hparam(owner, "patience", patience, ge=0)
    check_hparam(owner, "threshold", threshold, ge=0)
    check_hparam(owner, "cooldown", cooldown, ge=0)
    check_hparam(owner, "min_lr", min_lr, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = dict(lr=lr, factor=factor, patience=patience, threshold=threshold,
                    cooldown=cooldown, min_lr=min_lr, eps=eps)
    sign_ = -1.0 if flip_sign else 1.0

    def init(params):
        device = first_device(params)
        dtype = scalar_dtype(torch.empty(0, device=device))
        zero = torch.zeros((), dtype=torch.int64, device=device)
        best = torch.full((), float("inf") if mode == "min" else float("-inf"), dtype=dtype,
                          device=device)
        return ReduceOnPlateauState(best, zero, zero, torch.ones((), dtype=dtype, device=device))

    def measure(h, state, value):
        value = torch.as_tensor(value, device=state.best.device)
        if value.ndim != 0 or value.is_complex():
            raise HParamError(f"{owner}: value must be a real 0-d tensor or a number, got "
                              f"shape {tuple(value.shape)} and dtype {value.dtype}")
        value = value.to(state.best.dtype)
        best = state.best
        if mode == "min":
            better = value < (best * (1.0 - h["threshold"]) if threshold_mode == "rel"
                              else best - h["threshold"])
        else:
            better = value > (best * (h["threshold"] + 1.0) if threshold_mode == "rel"
                              else best + h["threshold"])
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
        safe_lr = torch.where(torch.as_tensor(h["lr"], dtype=old.dtype, device=old.device) > 0,
                              h["lr"] + 0.0 * old, torch.ones_like(old))
        scale = torch.where(lowered, new / safe_lr, state.scale)
        cooldown_counter = torch.where(
            reduce, torch.zeros_like(cooldown_counter) + h["cooldown"], cooldown_counter)
        bad = torch.where(reduce, torch.zeros_like(bad), bad)
        return ReduceOnPlateauState(best, bad, cooldown_counter, scale)

    def update(updates, state, params=None, hparams=None, *, value=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ReduceOnPlateauState)
        hd = cast_hparams(h, state.best)
        if value is not None:
            state = measure(hd, state, value)
        current = sign_ * hd["lr"] * state.scale
        out = _tree.map(lambda g: g * current.to(g.device if current.device.type == "cpu"
                                                 and g.device.type != "cpu" else
                                                 current.device).to(
            g.real.dtype if g.is_complex() else g.dtype), updates)
        return out, state

    return Transform(init, update, defaults)

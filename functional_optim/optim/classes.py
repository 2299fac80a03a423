"""Drop-in replacements for torch.optim's classes: same constructor, defaults, numbers and
``state_dict`` format, backed by the functional aliases.

Options with no separate meaning here are accepted and honoured as follows:

- ``foreach``: ``False`` runs the per-leaf path, ``None``/``True`` the multi-tensor path when no
  autograd is involved; both give the same numbers.
- ``capturable``: the functional update never syncs with the host, so it is always capturable;
  ``capturable=True`` keeps ``state["step"]`` on the parameter's device, as torch does.
- ``differentiable``: the step runs with autograd enabled (the pure path), as torch's does.
- ``fused``: accepted; runs the fastest path available (torch keeps ``step`` on the device then).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import aliases
from ..base import Transform
from .adapter import FunctionalOptimizer

__all__ = ["SGD", "Adam", "AdamW"]


def _present(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or value != 0


class _TorchCompatible(FunctionalOptimizer):
    """Shared machinery: one alias per combination of static options, torch's state names."""

    _HPARAMS: tuple[str, ...] = ()
    _STATE_NAMES: dict[tuple, str] = {}

    def __init__(self, params, defaults: dict):
        self._source = None
        self._cache = {}
        torch.optim.Optimizer.__init__(self, params, defaults)

    def _static_key(self, group: dict) -> tuple:
        raise NotImplementedError

    def _build(self, group: dict) -> Transform:
        raise NotImplementedError

    def _transform_for(self, group: dict) -> Transform:
        key = ("tx",) + self._static_key(group)
        tx = self._cache.get(key)
        if tx is None:
            tx = self._cache[key] = self._build(group)
        return tx

    def _hparams_for(self, tx: Transform, group: dict) -> dict:
        return {k: tuple(group[k]) if k == "betas" else group[k] for k in self._HPARAMS}

    def _load_leaf(self, store, path, p, group):
        name = self._STATE_NAMES.get(path)
        return store.get(name) if name is not None else super()._load_leaf(store, path, p, group)

    def _store_leaf(self, store, path, value, group):
        name = self._STATE_NAMES.get(path)
        if name is None:
            super()._store_leaf(store, path, value, group)
        else:
            store[name] = value


class SGD(_TorchCompatible):
    """torch.optim.SGD, backed by :func:`functional_optim.sgd`. State: ``momentum_buffer``."""

    _HPARAMS = ("lr", "momentum", "dampening", "weight_decay")
    _STATE_NAMES = {("momentum", "momentum_buffer"): "momentum_buffer"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float | torch.Tensor = 0,
                 nesterov: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None):
        aliases.sgd(lr, momentum, dampening, weight_decay, nesterov, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
            fused=fused))

    def _static_key(self, group):
        return (group["nesterov"], group["maximize"], _present(group["momentum"]),
                _present(group["weight_decay"]))

    def _build(self, group):
        return aliases.sgd(group["lr"], group["momentum"], group["dampening"],
                           group["weight_decay"], group["nesterov"], maximize=group["maximize"])

    def _load_leaf(self, store, path, p, group):
        if path == ("momentum", "step"):  # torch keeps no step: a buffer means "started"
            started = store.get("momentum_buffer") is not None
            return torch.full((), int(started), dtype=torch.int64, device=p.device)
        return super()._load_leaf(store, path, p, group)

    def _store_leaf(self, store, path, value, group):
        if path != ("momentum", "step"):
            super()._store_leaf(store, path, value, group)


class Adam(_TorchCompatible):
    """torch.optim.Adam, backed by :func:`functional_optim.adam`.

    State: ``step``, ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad).
    """

    _HPARAMS = ("lr", "betas", "eps", "weight_decay")
    _STATE_NAMES = {("adam", "step"): "step", ("adam", "mu"): "exp_avg",
                    ("adam", "nu"): "exp_avg_sq", ("adam", "nu_max"): "max_exp_avg_sq"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False):
        aliases.adam(lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                     decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay))

    def _static_key(self, group):
        return (group["amsgrad"], group["maximize"], group["decoupled_weight_decay"],
                _present(group["weight_decay"]))

    def _build(self, group):
        return aliases.adam(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                            group["amsgrad"], maximize=group["maximize"],
                            decoupled_weight_decay=group["decoupled_weight_decay"])

    def _fresh_leaf(self, p, path, value, group):
        if path == ("adam", "step"):  # torch's format: float step, on the device if capturable
            on_device = group.get("capturable") or group.get("fused")
            return torch.zeros((), dtype=_get_scalar_dtype(is_fused=group.get("fused")),
                               device=p.device if on_device else "cpu")
        return value


class AdamW(Adam):
    """torch.optim.AdamW, backed by :func:`functional_optim.adamw` (Adam, decoupled decay)."""

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True)

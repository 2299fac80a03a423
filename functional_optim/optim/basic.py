"""torch.optim's SGD, Adam and AdamW as drop-in classes (see :mod:`functional_optim.optim._compat`
for the options)."""

from __future__ import annotations

from typing import Any

import torch

from .. import _fused, aliases
from ._compat import _momentum, _TorchCompatible

__all__ = ["SGD", "Adam", "AdamW"]


class SGD(_TorchCompatible):
    """torch.optim.SGD, backed by :func:`functional_optim.sgd`. State: ``momentum_buffer``.

    Sparse gradients (``nn.Embedding(sparse=True)``) are taken as torch takes them, with
    torch's errors for ``weight_decay`` and ``fused=True``. Without momentum the update stays
    sparse; with momentum the buffer is dense here (torch keeps a sparse one holding the same
    values, whose entries pile up every step; one loaded from a torch checkpoint is made dense).
    """

    _HPARAMS = ("lr", "momentum", "dampening", "weight_decay")
    _STATE_NAMES = {("momentum", "momentum_buffer"): "momentum_buffer"}
    _SPARSE_ERROR = ""

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float | torch.Tensor = 0,
                 nesterov: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None):
        aliases.sgd(lr, momentum, dampening, weight_decay, nesterov, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
            fused=fused))

    def _check_checkpoint(self, state_dict: dict) -> dict | None:
        state = {i: _dense_buffer(entry) for i, entry in state_dict["state"].items()}
        return super()._check_checkpoint({**state_dict, "state": state})

    def _check_sparse(self, group):
        if group.get("fused"):
            raise RuntimeError("`_fused_sgd` does not support sparse gradients")
        if group["weight_decay"] != 0:  # torch fails adding the parameter to the sparse grad
            raise RuntimeError(
                "SGD: weight_decay is not supported with sparse gradients (torch.optim.SGD: "
                "add(sparse, dense) is not supported. Use add(dense, sparse) instead.)")

    def _static_key(self, group):
        return (group["nesterov"], group["maximize"], _momentum(group) is None)

    def _build(self, group):
        momentum = _momentum(group)
        nesterov = group["nesterov"] and momentum is not None  # (torch ignores it without)
        tx = aliases.sgd(group["lr"], momentum, group["dampening"], group["weight_decay"],
                         nesterov, maximize=group["maximize"], detach_first=True)
        # the step counts are derived from the buffers (_load_leaf), so the fused step skips them
        return tx._replace(fused=_fused.sgd_step(
            nesterov=nesterov, maximize=group["maximize"], has_momentum=momentum is not None,
            count=False))

    def _load_leaf(self, store, path, p, group):
        if path == ("momentum", "step"):
            return self._count(store.get("momentum_buffer") is not None, p.device)
        return super()._load_leaf(store, path, p, group)

    def _load_column(self, stores, path, params, group):
        if path != ("momentum", "step"):
            return super()._load_column(stores, path, params, group)
        devices = [p.device for p in params]
        if devices.count(devices[0]) != len(devices):
            return [self._count(store.get("momentum_buffer") is not None, device)
                    for store, device in zip(stores, devices)]
        no, yes = self._count(False, devices[0]), self._count(True, devices[0])
        return [no if store.get("momentum_buffer") is None else yes for store in stores]

    def _count(self, started: bool, device: torch.device) -> torch.Tensor:
        """The momentum block's count: torch keeps no step, a buffer means "started"."""
        key = ("step", started, device)
        step = self._cache.get(key)  # read-only constants: rules never write their inputs
        if step is None:
            step = self._cache[key] = torch.full((), int(started), dtype=torch.int64,
                                                 device=device)
        return step

    def _store_leaf(self, store, path, value, group):
        if path != ("momentum", "step"):
            super()._store_leaf(store, path, value, group)


def _dense_buffer(entry: Any) -> Any:
    """A torch.optim.SGD state entry with its ``momentum_buffer`` dense: torch's is a sparse
    tensor after sparse gradients (the same values)."""
    buf = entry.get("momentum_buffer") if isinstance(entry, dict) else None
    if isinstance(buf, torch.Tensor) and buf.is_sparse:
        return {**entry, "momentum_buffer": buf.to_dense()}
    return entry


class Adam(_TorchCompatible):
    """torch.optim.Adam, backed by :func:`functional_optim.adam`.

    State: ``step``, ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad).
    """

    _CAPTURABLE = ("params and state_steps", True)

    _SPARSE_ERROR = "Adam does not support sparse gradients, please consider SparseAdam instead"
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
        return (group["amsgrad"], group["maximize"], group["decoupled_weight_decay"])

    def _build(self, group):
        return aliases.adam(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                            group["amsgrad"], maximize=group["maximize"],
                            decoupled_weight_decay=group["decoupled_weight_decay"])


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

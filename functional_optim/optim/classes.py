"""Drop-in replacements for torch.optim's classes: same constructor, defaults, numbers and
``state_dict`` format, backed by the functional aliases.

Options with no separate meaning here are accepted and honoured as follows:

- ``foreach``: ``None`` (default) runs torch's fused kernel where the alias has one
  (:mod:`functional_optim._fused`: SGD, Adam, AdamW, Adagrad) and the step allows it, else the
  multi-tensor path; ``True`` the multi-tensor path; ``False`` the per-leaf path. All give the
  same numbers (the fused kernel up to rounding order).
- ``capturable``: the functional update never syncs with the host, so it is always capturable;
  ``capturable=True`` keeps ``state["step"]`` on the parameter's device, as torch does, and, as
  torch does, a step raises torch's ``AssertionError`` for parameters on a device CUDA graphs
  cannot capture (the CPU), before anything changes.
- ``differentiable``: the step runs with autograd enabled (the pure path), as torch's does.
- ``fused``: ``True``/``None`` run the fused kernel when the step allows it (torch keeps ``step``
  on the device then).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch.optim.optimizer import _get_capturable_supported_devices, _get_scalar_dtype

from .. import _fused, aliases
from .._execute import is_off
from ..base import Transform
from . import _checkpoint
from .adapter import FunctionalOptimizer

__all__ = ["SGD", "Adam", "AdamW"]


def _momentum(group: dict) -> float | torch.Tensor | None:
    """The alias's ``momentum`` for a group: ``None`` (no momentum block, so no buffer) where
    the group's is the number 0, as torch.optim keeps no ``momentum_buffer`` then."""
    return None if is_off(group["momentum"]) else group["momentum"]


class _TorchCompatible(FunctionalOptimizer):
    """Shared machinery: one alias per combination of static options, torch's state names.

    ``load_state_dict`` follows torch's: every state tensor is cast to the parameter's dtype
    and device (``step`` stays as it is, or goes to the device as float32 with ``capturable`` or
    ``fused``), so a checkpoint continues on the trajectory torch resumed from it takes (NAdam's
    ``mu_product`` and ASGD's ``eta``/``mu`` become float64 for float64 parameters, in torch as
    here). Before that, the checkpoint is checked (see :meth:`FunctionalOptimizer.load_state_dict`):
    state keys are torch's names; a Python-number ``step`` (or ``mu_product``, ``eta``, ``mu``),
    as older torch versions saved it, becomes a tensor as torch's ``__setstate__`` makes it; a
    group option that older versions did not save takes the class's default.
    """

    # torch.optim's check of capturable=True (an AssertionError at step time): the state its
    # message names, and whether XLA counts as a capturable device; None: no such option
    _CAPTURABLE: tuple[str, bool] | None = None

    _HPARAMS: tuple[str, ...] = ()
    # hyperparameters that torch fills in when an old checkpoint lacks them (others must be there)
    _DEFAULTED: tuple[str, ...] = ()
    _STATE_NAMES: dict[tuple, str] = {}
    # paths of _STATE_NAMES that a subclass's _load_leaf/_store_leaf convert (not a plain
    # read or write of the dict entry)
    _LEAF_PATHS: frozenset = frozenset()
    # torch's 0-d scalar state: made as torch makes it (a tensor of its scalar dtype, on the CPU
    # unless capturable or fused, or always on the device where _ON_DEVICE), also from a Python
    # number in an old checkpoint
    _SCALARS: tuple[str, ...] = ("step",)
    _ON_DEVICE = False
    # torch's error for a sparse gradient: None for "<Name> does not support sparse gradients",
    # "" where the class takes them
    _SPARSE_ERROR: str | None = None

    def __init__(self, params, defaults: dict):
        if defaults.get("fused"):  # torch's checks, with torch's messages
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._source = None
        self._cache = {}
        torch.optim.Optimizer.__init__(self, params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch's __setstate__: numbers become tensors
            for p in group["params"]:
                store = self.state.get(p, {})
                for key in self._SCALARS:
                    if key in store and not torch.is_tensor(store[key]):
                        store[key] = self._scalar(p, store[key], group)

    def _fill_group(self, group: dict) -> None:
        # as torch's __setstate__: the class's default (the signature's, not this optimizer's)
        signature = inspect.signature(type(self).__init__).parameters
        for k, v in self.defaults.items():
            if k not in group:
                default = signature[k].default if k in signature else v
                group[k] = v if default is inspect.Parameter.empty else default

    def _required_group_keys(self) -> list:
        return [k for k in self._HPARAMS if k not in self._DEFAULTED]

    def _scalar(self, p: torch.Tensor, value: float | torch.Tensor,
                group: dict) -> torch.Tensor:
        """A 0-d state of ``_SCALARS`` holding ``value`` (a number, or a 0-d tensor: ``init``'s
        value, a tensor lr), as torch makes it."""
        on_device = self._ON_DEVICE or group.get("capturable") or group.get("fused")
        dtype = _get_scalar_dtype(is_fused=group.get("fused"))
        device = p.device if on_device else "cpu"
        if isinstance(value, torch.Tensor):  # no host read: a compiled step makes it in-graph
            return value.detach().to(dtype=dtype, device=device, copy=True)
        return torch.tensor(float(value), dtype=dtype, device=device)

    def _fresh_leaf(self, p, path, value, group):
        name = self._STATE_NAMES.get(path)
        if name in self._SCALARS:
            return self._scalar(p, 0.0 if name == "step" else value, group)
        return value

    def _state_key(self, path, p):
        # every stored leaf has a torch name; a path without one is derived from the others
        name = self._STATE_NAMES.get(path)
        return None if name is None else (name,)

    def _known_state(self, expected):
        return {(name,) for name in self._STATE_NAMES.values()}

    def _number_keys(self):
        return frozenset((k,) for k in self._SCALARS)

    def _loaded_entry(self, p, entry, present, expected):
        return entry  # torch's cast

    def _check_sparse(self, group: dict) -> None:
        """torch's error for a sparse gradient, before any parameter changes."""
        message = self._SPARSE_ERROR
        if message is None:
            message = f"{type(self).__name__} does not support sparse gradients"
        if message:
            raise RuntimeError(message)

    def _check_step(self) -> None:
        if self._CAPTURABLE is None or torch.compiler.is_compiling():
            return
        what, xla = self._CAPTURABLE
        devices = _get_capturable_supported_devices(supports_xla=xla)
        for group in self.param_groups:
            if group.get("capturable") and any(p.grad is not None and p.device.type not in devices
                                               for p in group["params"]):
                raise AssertionError(
                    f"If capturable=True, {what} must be on supported devices: {devices}.")

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

    def _load_column(self, stores, path, params, group):
        name = self._STATE_NAMES.get(path)
        if name is None or path in self._LEAF_PATHS:
            return super()._load_column(stores, path, params, group)
        return [store.get(name) for store in stores]

    def _store_leaf(self, store, path, value, group):
        name = self._STATE_NAMES.get(path)
        if name is None:
            super()._store_leaf(store, path, value, group)
        else:
            store[name] = value

    def _store_column(self, stores, path, values, group):
        name = self._STATE_NAMES.get(path)
        if name is None or path in self._LEAF_PATHS:
            super()._store_column(stores, path, values, group)
            return
        for store, value in zip(stores, values):
            store[name] = value


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


# --------------------------------------------------------------------------------------------
# Adagrad, Adadelta, Adamax, NAdam, RAdam, RMSprop, Rprop, ASGD


__all__ += ["Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD"]


class _Classic(_TorchCompatible):
    """The classic algorithms: a param group's list values (``betas``, ``etas``) as tuples."""

    def _hparams_for(self, tx, group):
        return {k: tuple(group[k]) if isinstance(group[k], list) else group[k]
                for k in self._HPARAMS}


class Adagrad(_Classic):
    """torch.optim.Adagrad, backed by :func:`functional_optim.adagrad`.

    State: ``step``, ``sum`` (made at construction, as torch does). Sparse gradients
    (``nn.Embedding(sparse=True)``) are taken as torch takes them: ``sum`` and the parameter
    change at the gradient's entries only; torch's errors for ``weight_decay`` and
    ``fused=True``.
    """

    _HPARAMS = ("lr", "lr_decay", "weight_decay", "eps")
    _SPARSE_ERROR = ""
    _STATE_NAMES = {("rss", "step"): "step", ("rss", "sum"): "sum"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None):
        aliases.adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps,
                        maximize=maximize)
        super().__init__(params, dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused))
        value = float(initial_accumulator_value)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = self._fresh_leaf(p, ("rss", "step"), None, group)
                state["sum"] = torch.full_like(
                    p, complex(value, value) if p.is_complex() else value,
                    memory_format=torch.preserve_format)

    def _check_sparse(self, group):
        if group.get("fused"):
            raise RuntimeError("`fused` does not support sparse grad or complex param")
        if group["weight_decay"] != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adagrad(group["lr"], group["lr_decay"], group["weight_decay"],
                               self.defaults["initial_accumulator_value"], group["eps"],
                               maximize=group["maximize"])


class Adadelta(_Classic):
    """torch.optim.Adadelta, backed by :func:`functional_optim.adadelta`.

    State: ``step``, ``square_avg``, ``acc_delta``.
    """

    _CAPTURABLE = ("params and state_steps", False)

    _HPARAMS = ("lr", "rho", "eps", "weight_decay")
    _STATE_NAMES = {("adadelta", "step"): "step", ("adadelta", "square_avg"): "square_avg",
                    ("adadelta", "acc_delta"): "acc_delta"}

    def __init__(self, params, lr: float | torch.Tensor = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False, differentiable: bool = False):
        aliases.adadelta(lr, rho, eps, weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
            capturable=capturable, foreach=foreach, differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adadelta(group["lr"], group["rho"], group["eps"], group["weight_decay"],
                                maximize=group["maximize"])


class Adamax(_Classic):
    """torch.optim.Adamax, backed by :func:`functional_optim.adamax`.

    State: ``step``, ``exp_avg``, ``exp_inf``.
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "betas", "eps", "weight_decay")
    _STATE_NAMES = {("adamax", "step"): "step", ("adamax", "exp_avg"): "exp_avg",
                    ("adamax", "exp_inf"): "exp_inf"}

    def __init__(self, params, lr: float | torch.Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False):
        aliases.adamax(lr, betas, eps, weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adamax(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                              maximize=group["maximize"])


class NAdam(_Classic):
    """torch.optim.NAdam, backed by :func:`functional_optim.nadam`.

    State: ``step``, ``mu_product`` (0-d, torch's scalar dtype), ``exp_avg``, ``exp_avg_sq``.
    """

    _CAPTURABLE = ("params, mu_products and state_steps", True)

    _HPARAMS = ("lr", "betas", "eps", "weight_decay", "momentum_decay")
    _SCALARS = ("step", "mu_product")
    _STATE_NAMES = {("nadam", "step"): "step", ("nadam", "mu_product"): "mu_product",
                    ("nadam", "exp_avg"): "exp_avg", ("nadam", "exp_avg_sq"): "exp_avg_sq"}

    def __init__(self, params, lr: float | torch.Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False):
        aliases.nadam(lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
                      maximize=maximize)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"], group["decoupled_weight_decay"])

    def _build(self, group):
        return aliases.nadam(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                             group["momentum_decay"], group["decoupled_weight_decay"],
                             maximize=group["maximize"])


class RAdam(_Classic):
    """torch.optim.RAdam, backed by :func:`functional_optim.radam`.

    State: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "betas", "eps", "weight_decay")
    _STATE_NAMES = {("radam", "step"): "step", ("radam", "exp_avg"): "exp_avg",
                    ("radam", "exp_avg_sq"): "exp_avg_sq"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False):
        aliases.radam(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
            foreach=foreach, capturable=capturable,
            decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"], group["decoupled_weight_decay"])

    def _build(self, group):
        return aliases.radam(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                             group["decoupled_weight_decay"], maximize=group["maximize"])


class RMSprop(_Classic):
    """torch.optim.RMSprop, backed by :func:`functional_optim.rmsprop`.

    State: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg``
    (centered).
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "alpha", "eps", "weight_decay", "momentum")
    _DEFAULTED = ("momentum",)
    _STATE_NAMES = {("rms", "step"): "step", ("rms", "nu"): "square_avg",
                    ("rms", "mu"): "grad_avg",
                    ("momentum", "momentum_buffer"): "momentum_buffer"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False):
        aliases.rmsprop(lr, alpha, eps, weight_decay, momentum, centered, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"], group["centered"], _momentum(group) is None)

    def _build(self, group):
        return aliases.rmsprop(group["lr"], group["alpha"], group["eps"], group["weight_decay"],
                               _momentum(group), group["centered"], maximize=group["maximize"])

    def _load_leaf(self, store, path, p, group):
        if path == ("momentum", "step"):  # torch keeps one step (its buffer starts at zero)
            return store.get("step")
        return super()._load_leaf(store, path, p, group)

    def _store_leaf(self, store, path, value, group):
        if path != ("momentum", "step"):
            super()._store_leaf(store, path, value, group)


class Rprop(_Classic):
    """torch.optim.Rprop, backed by :func:`functional_optim.rprop`.

    State: ``step``, ``prev``, ``step_size``.
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "etas", "step_sizes")
    _STATE_NAMES = {("rprop", "step"): "step", ("rprop", "prev"): "prev",
                    ("rprop", "step_size"): "step_size"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2,
                 etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False):
        aliases.rprop(lr, etas, step_sizes, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.rprop(group["lr"], group["etas"], group["step_sizes"],
                             maximize=group["maximize"])

    def _fresh_leaf(self, p, path, value, group):
        if path == ("rprop", "step_size"):  # torch's: the lr (ours reads it at the first step)
            lr = float(group["lr"])
            return torch.full_like(p, complex(lr, lr) if p.is_complex() else lr,
                                   memory_format=torch.preserve_format)
        return super()._fresh_leaf(p, path, value, group)


class ASGD(_Classic):
    """torch.optim.ASGD, backed by :func:`functional_optim.asgd`.

    State: ``step``, ``eta``, ``mu`` (0-d, torch's scalar dtype, on the parameter's device),
    ``ax`` (the averaged parameter).
    """

    _CAPTURABLE = ("params, mus, etas, and state_steps", True)

    _HPARAMS = ("lr", "lambd", "alpha", "t0", "weight_decay")
    _SCALARS = ("step", "eta", "mu")
    _ON_DEVICE = True
    _STATE_NAMES = {("asgd", "step"): "step", ("asgd", "eta"): "eta", ("asgd", "mu"): "mu",
                    ("asgd", "ax"): "ax"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False):
        aliases.asgd(lr, lambd, alpha, t0, weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.asgd(group["lr"], group["lambd"], group["alpha"], group["t0"],
                            group["weight_decay"], maximize=group["maximize"])

    def _fresh_leaf(self, p, path, value, group):
        if path == ("asgd", "eta"):  # torch's: the lr (ours reads it at the first step)
            return self._scalar(p, group["lr"], group)
        return super()._fresh_leaf(p, path, value, group)


# --------------------------------------------------------------------------------------------
# Adafactor, Muon, SparseAdam, LBFGS


__all__ += ["Adafactor", "Muon", "SparseAdam", "LBFGS"]

from ..transforms import lbfgs as _lbfgs  # noqa: E402
from ..transforms.orthogonal import MUON_NS_COEFFICIENTS as _NS  # noqa: E402


def _check_params(owner: str, group: dict) -> None:
    """torch's error for complex parameters, before any update (sparse gradients:
    :meth:`_TorchCompatible._check_sparse`)."""
    for p in group["params"]:
        if p.grad is not None and torch.is_complex(p):
            raise RuntimeError(f"{owner} does not support complex parameters")


class _Factored(_TorchCompatible):
    """The state of an Adafactor block in a torch-style format: the factors a parameter does
    not keep (row/column factors of a vector, the full variance of a matrix) are absent, not
    empty tensors. ``_STATE_NAMES`` names the block's fields."""

    _FACTORS = frozenset([("row_var",), ("col_var",), ("variance",)])
    _LEAF_PATHS = _FACTORS

    @staticmethod
    def _kept(p, path) -> bool:
        return (path == ("variance",)) == (p.ndim < 2)

    @staticmethod
    def _empty_for(p) -> torch.Tensor:
        return _empty(p.dtype, p.device)

    def _load_leaf(self, store, path, p, group):
        if path in self._FACTORS and not self._kept(p, path):
            return self._empty_for(p)
        return super()._load_leaf(store, path, p, group)

    def _load_column(self, stores, path, params, group):
        if path not in self._FACTORS:
            return super()._load_column(stores, path, params, group)
        name = self._STATE_NAMES[path]
        return [store.get(name) if self._kept(p, path) else self._empty_for(p)
                for store, p in zip(stores, params)]

    def _store_leaf(self, store, path, value, group):
        # a factor the parameter does not keep (an empty placeholder) is not stored, as torch
        if value.shape == (0,) and (path in (("row_var",), ("col_var",)) or (
                path == ("variance",) and self._STATE_NAMES[("row_var",)] in store)):
            return
        super()._store_leaf(store, path, value, group)

    def _state_key(self, path, p):
        return None if path in self._FACTORS and not self._kept(p, path) else \
            super()._state_key(path, p)


class Adafactor(_Factored):
    """torch.optim.Adafactor, backed by :func:`functional_optim.adafactor`.

    State: ``step`` and, for parameters of >= 2 dimensions, ``row_var`` and ``col_var``, else
    ``variance`` (torch's format: the factors a parameter does not keep are absent).
    """

    _HPARAMS = ("lr", "beta2_decay", "eps", "d", "weight_decay")
    _STATE_NAMES = {("step",): "step", ("row_var",): "row_var", ("col_var",): "col_var",
                    ("variance",): "variance"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, foreach: bool | None = None,
                 maximize: bool = False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        aliases.adafactor(lr, beta2_decay, eps, d, weight_decay, maximize=maximize)
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adafactor(group["lr"], group["beta2_decay"], tuple(group["eps"]),
                                 group["d"], group["weight_decay"], maximize=group["maximize"])

    def _hparams_for(self, tx, group):
        return {k: tuple(group[k]) if k == "eps" else group[k] for k in self._HPARAMS}

    def _step_group(self, group):
        _check_params("Adafactor", group)
        super()._step_group(group)


@functools.cache
def _empty(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The placeholder of a factor a parameter does not keep (shared: it has no elements)."""
    return torch.zeros(0, dtype=dtype, device=device)


class Muon(_TorchCompatible):
    """torch.optim.Muon, backed by :func:`functional_optim.muon`. State: ``momentum_buffer``.

    2-D parameters only (torch's ``ValueError`` otherwise, at construction).
    """

    _HPARAMS = ("lr", "weight_decay", "momentum", "ns_coefficients", "eps")
    _STATE_NAMES = {("muon", "momentum_buffer"): "momentum_buffer"}

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = _NS, eps: float = 1e-7,
                 ns_steps: int = 5, adjust_lr_fn: str | None = None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        aliases.muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
                     adjust_lr_fn)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=ns_coefficients,
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        "Muon only supports 2D parameters whereas we found a parameter with "
                        f"size: {p.size()}")

    def _static_key(self, group):
        return (group["nesterov"], group["ns_steps"], group["adjust_lr_fn"])

    def _build(self, group):
        return aliases.muon(group["lr"], group["weight_decay"], group["momentum"],
                            group["nesterov"], tuple(group["ns_coefficients"]), group["eps"],
                            group["ns_steps"], group["adjust_lr_fn"])

    def _hparams_for(self, tx, group):
        return {k: tuple(group[k]) if k == "ns_coefficients" else group[k]
                for k in self._HPARAMS}

    def _step_group(self, group):
        _check_params("Muon", group)
        super()._step_group(group)


class SparseAdam(_TorchCompatible):
    """torch.optim.SparseAdam, backed by :func:`functional_optim.sparse_adam`.

    State: ``step`` (a Python int, as torch), ``exp_avg``, ``exp_avg_sq``. Gradients must be
    sparse (``nn.Embedding(sparse=True)``); a dense one raises torch's ``RuntimeError``.
    """

    _HPARAMS = ("lr", "betas", "eps")
    _STATE_NAMES = {("step",): "step", ("exp_avg",): "exp_avg", ("exp_avg_sq",): "exp_avg_sq"}
    _SPARSE_ERROR = ""
    _LEAF_PATHS = frozenset([("step",)])
    _SCALARS = ()  # torch keeps "step" a Python int

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 maximize: bool = False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))
        for kind, test, what in (("Sparse", lambda p: p.is_sparse,
                                  "SparseAdam requires dense parameter tensors"),
                                 ("Complex", lambda p: p.is_complex(),
                                  "SparseAdam does not support complex parameters")):
            found = [[i, j] for i, g in enumerate(self.param_groups)
                     for j, p in enumerate(g["params"]) if test(p)]
            if found:
                raise ValueError(f"{kind} params at indices {found}: {what}")

    def _static_key(self, group):
        return (group.get("maximize", False),)

    def _build(self, group):
        return aliases.sparse_adam(group["lr"], tuple(group["betas"]), group["eps"],
                                   group.get("maximize", False))

    def _load_leaf(self, store, path, p, group):
        if path == ("step",):
            step = store.get("step")
            if step is None:
                return None
            return torch.as_tensor(step, dtype=torch.int64, device=p.device)
        return super()._load_leaf(store, path, p, group)

    def _store_leaf(self, store, path, value, group):
        if path == ("step",):  # torch keeps a Python int
            store["step"] = int(value)
        else:
            super()._store_leaf(store, path, value, group)

    def _number_keys(self):
        return frozenset([("step",)])


class LBFGS(_TorchCompatible):
    """torch.optim.LBFGS, backed by :mod:`functional_optim.transforms.lbfgs`.

    ``step(closure)`` drives the closure as torch does (the same evaluations, in the same order,
    on the same parameter values) and returns the first loss. One param group only. State (on
    the first parameter, torch's layout): ``func_evals``, ``n_iter``, ``d``, ``t``,
    ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``.
    """

    _HPARAMS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
                "history_size", "line_search_fn")
    _SCALARS = ()

    def __init__(self, params, lr: float | torch.Tensor = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(params, dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, history_size=history_size,
            line_search_fn=line_search_fn))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    def _static_key(self, group):
        return (group["max_iter"], group["max_eval"], group["history_size"],
                group["line_search_fn"])

    def _build(self, group):
        return aliases.lbfgs(group["lr"], group["max_iter"], group["max_eval"],
                             group["tolerance_grad"], group["tolerance_change"],
                             group["history_size"], group["line_search_fn"])

    def _check_group_state(self, owner, index, group, ids, entries):
        # torch's layout: the state of the whole group on its first parameter, nothing on the
        # others
        size = sum(torch.view_as_real(p).numel() if p.is_complex() else p.numel()
                   for p in group["params"])
        for k, entry in entries.items():
            where = _checkpoint.Where.of(owner, index, group, ids, k)
            if k == 0:
                _checkpoint.check_lbfgs(where, entry, size, group["history_size"])
            elif entry:
                where.fail(None, "no state (LBFGS keeps its state on the first parameter)",
                           _checkpoint.describe(entry))
        return {}

    def step(self, closure):  # type: ignore[override]
        """One L-BFGS step (up to ``max_iter`` iterations); returns the closure's first loss."""
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        group = self.param_groups[0]
        if group["line_search_fn"] not in (None, "strong_wolfe"):
            raise RuntimeError("only 'strong_wolfe' is supported")
        params = group["params"]
        closure = torch.enable_grad()(closure)
        cfg = _lbfgs.Config(float(group["lr"]), group["max_iter"], group["max_eval"],
                            group["tolerance_grad"], group["tolerance_change"],
                            group["history_size"], group["line_search_fn"])
        store = self.state[params[0]]
        store.setdefault("func_evals", 0)
        store.setdefault("n_iter", 0)
        work = _lbfgs.Work(
            func_evals=store["func_evals"], n_iter=store["n_iter"], d=store.get("d"),
            t=store.get("t"), old_dirs=list(store.get("old_dirs") or []),
            old_stps=list(store.get("old_stps") or []), ro=list(store.get("ro") or []),
            H_diag=store.get("H_diag"), prev_flat_grad=store.get("prev_flat_grad"),
            prev_loss=store.get("prev_loss"), al=store.get("al"))

        def gather():
            return _lbfgs.flatten([p.grad for p in params], params)

        def evaluate(values):
            with torch.no_grad():
                for p, x in zip(params, values):
                    p.copy_(x)
            loss = float(closure())
            return loss, gather()

        orig_loss = closure()
        with torch.no_grad():
            start = [p.detach().clone(memory_format=torch.contiguous_format) for p in params]
            final = _lbfgs.run(work, start, float(orig_loss), gather(), evaluate, cfg)
            for p, x in zip(params, final):
                p.copy_(x)
        store["func_evals"], store["n_iter"] = work.func_evals, work.n_iter
        if work.n_iter:  # torch writes these once an iteration has run
            for key in ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad",
                        "prev_loss"):
                store[key] = getattr(work, key)
        if work.al is not None:
            store["al"] = work.al
        return orig_loss

"""What the drop-in replacements for torch.optim's classes share: one alias per combination of
structural options, torch's state names and checkpoint format, torch's checks. The classes
(same constructor, defaults, numbers and ``state_dict`` format as torch's, backed by the
functional aliases) are in :mod:`~functional_optim.optim.basic`,
:mod:`~functional_optim.optim.classic` and :mod:`~functional_optim.optim.special`.

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

import inspect

import torch
from torch.optim.optimizer import _get_capturable_supported_devices, _get_scalar_dtype

from .._execute import is_off
from ..base import Transform
from ..transforms.quantized import Quantized
from . import _layout
from ._precision import POLICY_PATHS
from .adapter import FunctionalOptimizer


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
        key = self._key_path(path)
        if key is None:  # the precision policy's own leaves keep their names
            return path if path in POLICY_PATHS else None
        return key

    def _key_path(self, path: tuple) -> tuple | None:
        """The torch key path of the state leaf at ``path``: ``(name,)``, or ``(name, part)``
        for the codes and scales of a quantized state (``exp_avg.codes``); ``None``: none."""
        name = self._STATE_NAMES.get(path)
        if name is not None:
            return (name,)
        if path and path[-1] in Quantized._fields and path[:-1] in self._STATE_NAMES:
            return (self._STATE_NAMES[path[:-1]], path[-1])
        return None

    def _known_state(self, expected):
        parts = {k for k in expected if len(k) == 2 and k[-1] in Quantized._fields}
        return {(name,) for name in self._STATE_NAMES.values() if (name, "codes") not in parts} \
            | parts | (set(expected) & POLICY_PATHS)

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
        key = self._key_path(path)
        return super()._load_leaf(store, path if key is None else key, p, group)

    def _load_column(self, stores, path, params, group):
        key = self._key_path(path)
        if key is None or path in self._LEAF_PATHS:
            return super()._load_column(stores, path, params, group)
        return _layout.nested_column(stores, key)

    def _store_leaf(self, store, path, value, group):
        key = self._key_path(path)
        super()._store_leaf(store, path if key is None else key, value, group)

    def _store_column(self, stores, path, values, group):
        key = self._key_path(path)
        if key is None or path in self._LEAF_PATHS:
            super()._store_column(stores, path, values, group)
            return
        _layout.nested_set_column(stores, key, values)


class _Classic(_TorchCompatible):
    """The classic algorithms: a param group's list values (``betas``, ``etas``) as tuples."""

    def _hparams_for(self, tx, group):
        return {k: tuple(group[k]) if isinstance(group[k], list) else group[k]
                for k in self._HPARAMS}

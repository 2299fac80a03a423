"""A drop-in ``torch.optim.Optimizer`` class for every registered alias, made by one mechanism.

:func:`drop_in_class` turns a registry entry (:mod:`functional_optim.registry`) into a class:

- the constructor is ``Class(params, *alias arguments)``, with the alias's signature and
  defaults, validated by the alias itself;
- each param group holds the alias's arguments under their names: its hyperparameters (read at
  every step, so ``torch.optim.lr_scheduler``, ``group["lr"] = x`` and per-group values work)
  and its structural options (a group with other structural values runs its own transform);
- the state of each parameter is the generic adapter's (:class:`FunctionalOptimizer`): a dict
  following the alias's state tree, saved and loaded by ``state_dict``/``load_state_dict``;
- every execution path of the adapter (fused or blocked steps where the alias has them,
  multi-tensor, per-leaf with ``differentiable=True``, the flat layout) applies;
- an entry's :class:`~functional_optim.registry.DropInProtocol` (the one extension: every
  behaviour of a class beyond the usual step is a field of it) gives the class its own
  ``step(closure=None)``, which calls ``protocol.step(self, closure, run)`` (``run(**extras)``:
  one update of every group with those keyword arguments, each group's update computed before
  any parameter moves), and/or another gradient attribute (``p.grad_sample``); ``zero_grad``
  then clears that attribute too, and ``use_flat`` is refused to such a class (the flat
  layout gathers ``.grad`` and passes no keyword arguments). Ready-made:
  :data:`~functional_optim.registry.LOSS_AS_VALUE`, for an alias whose update reads the loss
  (``value=``): ``step`` requires the closure and passes its loss. SAM's, Sophia's and
  DP-SGD's protocols are in :mod:`functional_optim.aliases.contrib_more`;
- a protocol's ``modes`` (schedule-free learning) give the class ``eval()`` and ``train()``,
  which swap every parameter that has state between the parameters it steps at and those to
  evaluate (in place, as the reference implementation's classes do); each param group holds
  its ``train_mode`` (saved with the checkpoint, as the reference's groups hold it), and
  ``step`` in eval mode raises. Such a class keeps the flat layout (its step is the usual one).

The classes of ``functional_optim.optim`` named by ``register(drop_in=...)`` are made here
unless written by hand (torch.optim's and HuggingFace's, whose state formats are theirs).
"""

from __future__ import annotations

import inspect
from typing import Any

import optree
import torch

from ..base import Transform
from ..registry import Entry
from . import _layout
from .adapter import FunctionalOptimizer

__all__ = ["drop_in_class"]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class _AliasOptimizer(FunctionalOptimizer):
    """The machinery of the generated classes (``_ENTRY``: their registry entry)."""

    _ENTRY: Entry

    def __init__(self, params, *args: Any, foreach: bool | None = None,
                 differentiable: bool = False, **kwargs: Any):
        make = self._ENTRY.make
        bound = inspect.signature(make).bind(*args, **kwargs)
        bound.apply_defaults()
        options = dict(bound.arguments)
        make(**options)  # the alias's validation, with its messages
        self._source = None
        self._cache = {}
        protocol = self._ENTRY.protocol
        modes = {"train_mode": True} if protocol is not None and protocol.modes else {}
        torch.optim.Optimizer.__init__(self, params, dict(
            options, foreach=foreach, differentiable=differentiable, **modes))

    def _transform_for(self, group: dict) -> Transform:
        structural = self._ENTRY.structural
        key = ("tx", *(_hashable(group[k]) for k in structural))
        tx = self._cache.get(key)
        if tx is None:
            arguments = inspect.signature(self._ENTRY.make).parameters
            tx = self._cache[key] = self._ENTRY.make(
                **{k: _hashable(group[k]) for k in arguments})
        return tx

    def _hparams_for(self, tx: Transform, group: dict) -> dict:
        return {k: _hashable(group[k]) for k in self._ENTRY.hyperparameters}

    def _required_group_keys(self) -> list:
        return list(self._ENTRY.hyperparameters)

    def _fill_group(self, group: dict) -> None:
        for k, v in self.defaults.items():  # (an older checkpoint without a structural option)
            group.setdefault(k, v)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; a class whose updates take another gradient attribute
        (``grad_sample``) sets it to ``None`` too."""
        super().zero_grad(set_to_none)
        if self._GRADIENT != "grad":
            for group in self.param_groups:
                for p in group["params"]:
                    setattr(p, self._GRADIENT, None)

    def use_flat(self, *, params: bool = True, compile: bool = False) -> FunctionalOptimizer:
        protocol = self._ENTRY.protocol
        if protocol is not None and (protocol.step is not None or self._GRADIENT != "grad"):
            raise TypeError(
                f"{type(self).__name__}.use_flat: its updates take "
                + (f"p.{self._GRADIENT}" if self._GRADIENT != "grad" else
                   "keyword arguments from its step")
                + ", which the flat layout does not pass; it steps in the usual layout")
        return super().use_flat(params=params, compile=compile)


class _TrainEval:
    """``train()`` and ``eval()`` of a generated class whose protocol has ``modes``."""

    _ENTRY: Entry

    def eval(self) -> None:
        """Puts every parameter that has state at its evaluation value (the protocol's
        ``to_eval``; a group already in eval mode is left as it is)."""
        self._swap(train=False)

    def train(self) -> None:
        """Puts every parameter that has state back at the value the steps take (the
        protocol's ``to_train``; a group already in train mode is left as it is)."""
        self._swap(train=True)

    def _swap(self, train: bool) -> None:
        to_eval, to_train = self._ENTRY.protocol.modes
        to = to_train if train else to_eval
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            params, state = self._group_state(group)
            if params:
                new = to(state, {n: p.detach() for n, p in params.items()})
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(new[n])
            group["train_mode"] = train

    def _group_state(self, group: dict) -> tuple[dict, Any]:
        """The parameters of ``group`` that have state, by name, and the transform's state of
        them (the tree ``update`` takes), read from ``self.state``."""
        everything = group["params"]
        have = [i for i, p in enumerate(everything) if self.state.get(p)]
        names = [self._names(group, everything)[i] for i in have]
        params = [everything[i] for i in have]
        if not params:
            return {}, None
        spec, template, plan, columns, order = self._plan(self._transform_for(group), names,
                                                          params)
        in_order = params if order is None else [params[i] for i in order]
        leaves: list = [None] * len(plan)
        for path, at, owners, _ in columns:
            cp = in_order if owners is None else [params[i] for i in owners]
            _layout.assign(leaves, at,
                           self._load_column([self.state[p] for p in cp], path, cp, group))
        state = optree.tree_unflatten(
            optree.tree_structure(template) if spec is None else spec, leaves)
        return dict(zip(names, params)), state

    def _check_step(self) -> None:
        super()._check_step()
        for index, group in enumerate(self.param_groups):
            if not group["train_mode"]:
                raise RuntimeError(
                    f"{type(self).__name__}: param group {index} is in eval mode (its "
                    "parameters are the evaluation ones): call train() before step()")


def _protocol_step(self, closure=None):
    """One step as the alias's :class:`~functional_optim.registry.DropInProtocol` says;
    returns the closure's loss."""
    return self._ENTRY.protocol.step(self, closure,
                                     lambda **extras: self._update_all(extras, defer=True))


def drop_in_class(entry: Entry, module: str = "functional_optim.optim") -> type:
    """The drop-in class of ``entry``, named ``entry.drop_in`` and importable from ``module``
    (so that it pickles): ``Class(params, ...)`` with the alias's arguments."""
    make = entry.make
    signature = inspect.signature(make)
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                  inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                  *signature.parameters.values()]
    kinds = {p.kind for p in parameters}
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
             for n, d in (("foreach", None), ("differentiable", False))]
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        parameters += extra
    doc = (f"The drop-in ``torch.optim.Optimizer`` of :func:`functional_optim.{entry.name}` "
           f"({entry.paper}).\n\n"
           f"``{entry.drop_in}(params, ...)`` takes the alias's arguments (below) and the "
           "adapter's ``foreach`` and ``differentiable``; each param group holds them, "
           "hyperparameters and structural options alike; the state of a parameter follows "
           "the alias's state tree. See :mod:`functional_optim.optim.generated`.\n\n"
           + inspect.cleandoc(make.__doc__ or ""))
    namespace = {"_ENTRY": entry, "__doc__": doc, "__module__": module,
                 "__qualname__": entry.drop_in}
    if entry.protocol is not None:
        namespace["_GRADIENT"] = entry.protocol.gradient
        if entry.protocol.step is not None:
            namespace["step"] = _protocol_step
    modes = entry.protocol is not None and entry.protocol.modes is not None
    cls = type(entry.drop_in, (_TrainEval, _AliasOptimizer) if modes else (_AliasOptimizer,),
               namespace)
    cls.__init__ = _with_signature(_AliasOptimizer.__init__,
                                   signature.replace(parameters=parameters,
                                                     return_annotation=None))
    return cls


def _with_signature(function: Any, signature: inspect.Signature) -> Any:
    """``function`` (a method) behind a wrapper that shows ``signature``."""

    def __init__(self, *args, **kwargs):  # noqa: N807 - the method it stands for
        function(self, *args, **kwargs)

    __init__.__signature__ = signature
    __init__.__doc__ = function.__doc__
    return __init__

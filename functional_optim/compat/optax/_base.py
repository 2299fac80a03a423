"""optax's protocol over :class:`~functional_optim.Transform`: ``GradientTransformation``,
``chain``, ``apply_updates``, the empty state, the type names, and :func:`optax_names` (a
transform's hyperparameters under optax's argument names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import base as _base
from ...base import EmptyState, Transform, apply_updates, reparametrize
from ...combinators.injection import _get_in, _set_in, _split_path
from ...transforms import identity, set_to_zero

__all__ = [
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "EmptyState",
    "init_empty_state",
    "with_extra_args_support",
    "apply_updates",
    "chain",
    "named_chain",
    "identity",
    "set_to_zero",
    "optax_names",
    "Params",
    "Updates",
    "OptState",
    "MaskOrFn",
    "ScalarOrSchedule",
    "TransformInitFn",
    "TransformUpdateFn",
    "TransformUpdateExtraArgsFn",
]

Params = Any
Updates = Any
OptState = Any
MaskOrFn = Any
ScalarOrSchedule = float | torch.Tensor | Callable[[torch.Tensor], Any]
TransformInitFn = Callable[[Any], Any]
TransformUpdateFn = Callable[..., tuple[Any, Any]]
TransformUpdateExtraArgsFn = Callable[..., tuple[Any, Any]]


class _OptaxUpdate:
    """An optax ``update(updates, state, params=None[, **extra])`` as a transform's ``update``:
    the ``hparams`` argument is dropped (an optax transform keeps its numbers in closures or in
    its state), and so are the keyword arguments unless ``extra`` (optax's
    ``GradientTransformationExtraArgs``). A class, so that the transform pickles."""

    __slots__ = ("fn", "extra")

    def __init__(self, fn: Callable[..., tuple[Any, Any]], extra: bool):
        self.fn = fn
        self.extra = extra

    def __call__(self, updates, state, params=None, hparams=None, **extra):
        if self.extra:
            return self.fn(updates, state, params, **extra)
        return self.fn(updates, state, params)


class _TransformType(type):
    """``isinstance(tx, GradientTransformation)`` is ``isinstance(tx, Transform)``."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, Transform)


class GradientTransformation(metaclass=_TransformType):
    """``GradientTransformation(init, update)``: an optax transform written by hand, as a
    :class:`~functional_optim.Transform` (so it chains with every native transform).

    ``update(updates, state, params=None)`` receives no keyword arguments (optax's chain
    drops them for a plain ``GradientTransformation``); use
    :class:`GradientTransformationExtraArgs` to receive them. Every transform of this module
    *is* a :class:`~functional_optim.Transform`, whose ``update(updates, state, params=None,
    **extra)`` is optax's signature (its fourth argument, ``hparams``, optax never passes).
    """

    _extra = False

    def __new__(cls, init: Callable[[Any], Any], update: Callable[..., tuple[Any, Any]]):
        if not callable(init) or not callable(update):
            raise TypeError(f"{cls.__name__}(init, update): both must be callables, got "
                            f"{type(init).__name__} and {type(update).__name__}")
        return Transform(init, _OptaxUpdate(update, cls._extra), None)


class GradientTransformationExtraArgs(GradientTransformation):
    """``GradientTransformationExtraArgs(init, update)``: as :class:`GradientTransformation`,
    with ``update(updates, state, params=None, **extra_args)`` receiving the keyword
    arguments given to the chain's update (a loss ``value=``, say)."""

    _extra = True


def init_empty_state(params: Any) -> EmptyState:
    """The state of a stateless transform, whatever ``params``."""
    del params
    return EmptyState()


def with_extra_args_support(tx: Transform) -> Transform:
    """``tx`` itself: every transform here accepts (and forwards or ignores) keyword
    arguments to ``update``."""
    _base._check_transform(tx, "with_extra_args_support")
    return tx


def chain(*args: Transform) -> Transform:
    """Transforms applied in sequence (:func:`functional_optim.chain`); state and hparams are
    tuples, one entry per transform."""
    return _base.chain(*args)


def named_chain(*args: tuple[str, Transform]) -> Transform:
    """``named_chain(("clip", tx1), ("adam", tx2))``: a chain whose state and hparams are dicts
    keyed by these names (:func:`functional_optim.chain` with keywords)."""
    return _base.chain(**dict(args))


def optax_names(inner: Transform, names: dict[str, str]) -> Transform:
    """``inner`` with its hyperparameters under optax's argument names.

    ``names`` maps an optax name to the dotted path of the native hyperparameter in
    ``inner.hparams`` (``{"learning_rate": "lr.lr", "b1": "adam.betas.0"}``); the
    transform's hparams are ``{optax_name: value}``, so ``inject_hyperparams`` and an hparams
    dict given to ``update`` use optax's names. The native hyperparameters not named keep their
    values.
    """
    paths = {k: _split_path(p) for k, p in names.items()}
    defaults = {k: _get_in(inner.hparams, keys, names[k]) for k, keys in paths.items()}
    native = inner.hparams

    def to_inner(h):
        out = native
        for k, keys in paths.items():
            out = _set_in(out, keys, h[k])
        return out

    return reparametrize(inner, defaults, to_inner, "optax hparams")


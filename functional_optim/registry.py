"""One registry of the optimizers (DESIGN.md §7).

Every alias registers once, with :func:`register` beside its definition. From that one entry
come: lookup by name (:func:`get_optimizer`) and from a config dict
(:func:`optimizer_from_config`), the drop-in ``torch.optim.Optimizer`` class, the conformance
registration of the test suite (every registered alias is checked, every float hyperparameter
live) and the table of the docs' algorithms page.

An entry's *structural* options are derived, not listed: the constructor's arguments that are
not hyperparameters (not keys of ``make().hparams``), e.g. ``amsgrad``, ``maximize`` and
``decoupled_weight_decay`` for :func:`~functional_optim.adam`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from .base import Transform
from .groups import parameter_groups

__all__ = ["Entry", "DropInProtocol", "LOSS_AS_VALUE", "register", "entry", "names",
           "get_optimizer", "optimizer_from_config"]


class DropInProtocol(NamedTuple):
    """How the drop-in class of an alias steps, where the adapter's usual step (run the closure,
    then one update of every param group with the parameters' ``.grad``) does not fit: an
    algorithm that needs more than the gradient (SAM's second pass, Sophia's Hessian-vector
    product, a loss value: :data:`LOSS_AS_VALUE`) or other gradients (DP-SGD's per-example
    ones). The one extension mechanism of the generated classes
    (:mod:`functional_optim.optim.generated`): a new kind of behaviour is a new field here, whose
    default keeps the usual one.

    Attributes:
        gradient: the attribute of each parameter holding the gradient its updates take
            (``"grad"``; ``"grad_sample"`` for per-example gradients as Opacus attaches them).
        step: ``step(optimizer, closure, run) -> loss``, the class's ``step(closure=None)``:
            ``run(**extras)`` runs one update of every param group, passing ``extras`` as
            keyword arguments to the alias's ``update`` (computed once for all groups, e.g. a
            norm over all of them; every group's update is computed before any parameter
            moves); ``None``: the usual step.
        modes: ``(to_eval, to_train)`` for an optimizer that steps at one point and is
            evaluated at another (schedule-free learning): ``to_eval(state, params) ->
            eval_params`` and its inverse ``to_train(state, eval_params) -> params``, pure
            functions of the alias's state. The class gets ``eval()`` and ``train()``, which
            swap every parameter that has state in place, as the reference implementation's
            classes do; each param group holds its ``train_mode`` (saved with checkpoints) and
            ``step`` in eval mode raises. ``None``: no modes.

    Example: the drop-in class of an alias whose ``update`` reads the loss as ``value=``::

        @register(paper="...", drop_in="PolyakSGD", protocol=LOSS_AS_VALUE)
        def polyak_sgd(lr=1.0, ...): ...

        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step(lambda: loss)   # or a closure that computes it
    """

    gradient: str = "grad"
    step: Callable | None = None
    modes: tuple[Callable, Callable] | None = None


def _loss_as_value(optimizer: Any, closure: Any, run: Callable) -> Any:
    """A step that runs the closure and passes its loss to every update as ``value=``."""
    if closure is None:
        raise RuntimeError(
            f"{type(optimizer).__name__}.step needs a closure that returns the loss (its update "
            "reads it as value=): e.g. loss.backward(); opt.step(lambda: loss)")
    with torch.enable_grad():
        loss = closure()
    run(value=loss)
    return loss


LOSS_AS_VALUE = DropInProtocol(step=_loss_as_value)
"""The protocol of an alias whose ``update`` reads the loss (``value=``): the class's
``step(closure)`` requires the closure and passes what it returns."""


class Entry(NamedTuple):
    """A registered optimizer.

    Attributes:
        name: the registry name (the alias's function name, e.g. ``"adamw"``).
        make: the alias: ``make(**options) -> Transform``.
        paper: the reference (authors, year, title).
        drop_in: the name of its drop-in class in ``functional_optim.optim``.
        protocol: how that class steps, where not as usual (:class:`DropInProtocol`).
    """

    name: str
    make: Callable[..., Transform]
    paper: str
    drop_in: str
    protocol: DropInProtocol | None = None

    @property
    def hyperparameters(self) -> dict:
        """The defaults of the live hyperparameters (``make().hparams``)."""
        return _defaults(self.make)

    @property
    def structural(self) -> tuple[str, ...]:
        """The construction-time options: the constructor's arguments that are no
        hyperparameters."""
        live = set(self.hyperparameters)
        return tuple(n for n in inspect.signature(self.make).parameters if n not in live)


@functools.cache
def _defaults(make: Callable[..., Transform]) -> dict:
    return dict(make().hparams)


_ENTRIES: dict[str, Entry] = {}


def register(*, paper: str, drop_in: str, protocol: DropInProtocol | None = None) -> Callable:
    """Decorator: register an alias under its function name.

    Args:
        paper: the reference it implements (authors, year, title).
        drop_in: the name of its class in ``functional_optim.optim`` (written by hand there,
            or made from this entry by ``functional_optim.optim.generated``).
        protocol: how the generated class steps, where not as usual (:class:`DropInProtocol`).
    """

    def decorate(make: Callable[..., Transform]) -> Callable[..., Transform]:
        name = make.__name__
        if name in _ENTRIES:
            raise ValueError(f"registry: {name!r} is registered twice")
        _ENTRIES[name] = Entry(name, make, paper, drop_in, protocol)
        return make

    return decorate


def names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_ENTRIES)


#: the name :func:`optimizer_from_config` reads when a config has no ``type`` (AllenNLP's
#: ``Optimizer.default_implementation``)
DEFAULT = "adam"

#: other libraries' names of registered optimizers, accepted by :func:`entry` (AllenNLP's
#: registry calls ``asgd`` ``averaged_sgd``)
OTHER_NAMES = {"averaged_sgd": "asgd"}


def entry(name: str) -> Entry:
    """The entry of ``name`` (or of its :data:`OTHER_NAMES` name); an unknown name is a
    ``KeyError`` listing the known ones."""
    try:
        return _ENTRIES[OTHER_NAMES.get(name, name)]
    except KeyError:
        raise KeyError(f"no optimizer named {name!r}; known: {', '.join(names())}") from None


def get_optimizer(name: str, **options: Any) -> Transform:
    """The transform of the optimizer ``name`` built with ``options``
    (``get_optimizer("adamw", lr=3e-4, weight_decay=0.1)``); an unknown option is a
    ``TypeError`` naming the known ones."""
    make = entry(name).make
    known = inspect.signature(make).parameters
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"get_optimizer({name!r}): unknown option(s) {unknown}; known: "
                        f"{', '.join(known)}")
    return make(**options)


def optimizer_from_config(config: Mapping, params: Any = None) -> Transform:
    """The transform a config dict describes, as AllenNLP's ``Optimizer.from_params`` reads it.

    ``{"type": "adamw", "lr": 1e-3, ..., "parameter_groups": [[["regex", ...], {...}], ...]}``:
    ``type`` is a registered name or AllenNLP's name of one (:data:`OTHER_NAMES`; absent:
    ``"adam"``, AllenNLP's default), the other keys its options; with ``parameter_groups`` the
    result is :func:`functional_optim.parameter_groups` of it (AllenNLP's semantics: each
    group's overrides over the options, ``{"requires_grad": False}`` freezes a group, a
    parameter in two groups is an error, an unused regex a logged warning), and ``params`` (the
    parameter tree), when given, is assigned to the groups now.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"optimizer_from_config: expected a dict {{'type': name, **options}} "
                        f"(name one of {', '.join(names())}), got {config!r}")
    options = {k: v for k, v in config.items() if k not in ("type", "parameter_groups")}
    name = config.get("type", DEFAULT)
    tx = get_optimizer(name, **options)  # the options' errors, before any group's
    groups = config.get("parameter_groups")
    return parameter_groups(entry(name).make, groups, params, **options) if groups else tx

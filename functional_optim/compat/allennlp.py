"""AllenNLP's optimizers (``allennlp.training.optimizers``), backed by functional_optim.

A drop-in: replace ``from allennlp.training.optimizers import ...`` by
``from functional_optim.compat.allennlp import ...``. The same names, constructors, defaults,
registry and config format: :func:`make_parameter_groups`, :class:`Optimizer` (``register``,
``by_name``, ``list_available``, ``default``, ``from_params``) and the registered optimizers
``adam``, ``sparse_adam``, ``adamax``, ``adamw``, ``huggingface_adamw``, ``adagrad``,
``adadelta``, ``sgd``, ``rmsprop``, ``averaged_sgd`` and ``dense_sparse_adam``, each a subclass
of this module's :class:`Optimizer` and of the matching drop-in class of
``functional_optim.optim`` (torch.optim's numbers and ``state_dict`` format;
``huggingface_adamw`` is ``functional_optim.compat.transformers.AdamW``).

The functional side of the same features: :func:`functional_optim.parameter_groups` (the same
assignment of parameters to groups, one transform per group) and
:func:`functional_optim.optimizer_from_config` (the same config dicts, returning a transform).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch

from .. import groups as _groups
from .. import optim as _optim
from .transformers import AdamW as _HuggingFaceAdamW

__all__ = ["ConfigurationError", "make_parameter_groups", "Optimizer", "AdamOptimizer",
           "SparseAdamOptimizer", "AdamaxOptimizer", "AdamWOptimizer",
           "HuggingfaceAdamWOptimizer", "AdagradOptimizer",
           "AdadeltaOptimizer", "SgdOptimizer", "RmsPropOptimizer", "AveragedSgdOptimizer",
           "DenseSparseAdam"]

logger = logging.getLogger(__name__)


class ConfigurationError(Exception):
    """A bad optimizer config (AllenNLP's ``allennlp.common.checks.ConfigurationError``)."""


def make_parameter_groups(model_parameters: Iterable[tuple[str, torch.nn.Parameter]],
                          groups: list | None = None) -> list:
    """The ``params`` argument of a torch optimizer from named parameters and regex groups.

    ``groups`` is ``[(["regex", ...], {options}), ...]``. With groups, returns one dict
    ``{"params": [...], **options}`` per group, then ``{"params": [...]}`` with the parameters
    no group matches (the default group); without (``None`` or empty), the plain list of
    parameters. As AllenNLP's (:mod:`functional_optim.groups` has the rule):

    - a parameter that regexes of two groups match is a ``ValueError``
      (``"<name> was specified in two separate parameter groups"``, then both groups);
    - a group with ``{"requires_grad": False}`` is dropped and its parameters'
      ``requires_grad`` cleared;
    - logged (logger ``functional_optim.compat.allennlp``): the disabled parameters,
      ``"Done constructing parameter groups."``, ``"Group <i>: [names], {options}"`` per
      returned group, a warning per regex that matches no parameter name, and the number of
      trainable parameters.
    """
    named = [(name, p) for name, p in model_parameters]
    read = _groups.read_groups("make_parameter_groups", groups)
    index, uses = _groups.assign([n for n, _ in named], read)
    _groups.log_assignment(logger, read, [n for n, _ in named], [p.numel() for _, p in named],
                           index, uses,
                           frozen_message="Disabling gradient for the following parameters: %s",
                           label=lambda position, k: position)
    if not read:
        return [p for _, p in named]
    out = [{"params": [], **g.options} for g in read] + [{"params": []}]
    for (_, p), k in zip(named, index):
        out[k]["params"].append(p)
    for g, group in zip(read, out):
        if g.frozen:
            for p in group["params"]:
                p.requires_grad_(False)
    return [group for k, group in enumerate(out) if k == len(read) or not read[k].frozen]


class Optimizer(torch.optim.Optimizer):
    """AllenNLP's registrable optimizer base: a registry of optimizer classes by name and
    construction from a config dict.

    Every registered class takes ``model_parameters`` (a list of ``(name, parameter)``) and
    ``parameter_groups`` (see :func:`make_parameter_groups`) first, then its options.
    """

    default_implementation: ClassVar[str] = "adam"
    _registry: ClassVar[dict[str, tuple[type, str | None]]] = {}

    @classmethod
    def register(cls, name: str, constructor: str | None = None,
                 exist_ok: bool = False) -> Callable[[type], type]:
        """Decorator: register a class under ``name`` (``constructor``: the name of a
        classmethod to build it with instead of the class itself). A name in use is a
        :class:`ConfigurationError` unless ``exist_ok``."""

        def add(subclass: type) -> type:
            if name in cls._registry:
                if not exist_ok:
                    raise ConfigurationError(
                        f"Cannot register {name} as {cls.__name__}; name already in use for "
                        f"{cls._registry[name][0].__name__}")
                logger.info(f"{name} has already been registered as "
                            f"{cls._registry[name][0].__name__}, but exist_ok=True, so "
                            f"overwriting with {cls.__name__}")
            cls._registry[name] = (subclass, constructor)
            return subclass

        return add

    @classmethod
    def resolve_class_name(cls, name: str) -> tuple[type, str | None]:
        """The class registered as ``name`` (or importable as ``"module.Class"``) and the name
        of its registered constructor, if any."""
        if name in cls._registry:
            return cls._registry[name]
        if "." in name:
            module_name, class_name = name.rsplit(".", 1)
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                raise ConfigurationError(f"tried to interpret {name} as a path to a class but "
                                         f"unable to import module {module_name}") from None
            try:
                return getattr(module, class_name), None
            except AttributeError:
                raise ConfigurationError(f"tried to interpret {name} as a path to a class but "
                                         f"unable to find class {class_name} in "
                                         f"{module_name}") from None
        raise ConfigurationError(
            f"{name} is not a registered name for {cls.__name__}. You probably need to use the "
            "--include-package flag to load your custom code. Alternatively, you can specify "
            'your choices using fully-qualified paths, e.g. {"model": '
            '"my_module.models.MyModel"} in which case they will be automatically imported '
            "correctly.")

    @classmethod
    def by_name(cls, name: str) -> Callable[..., Optimizer]:
        """What builds the optimizer registered as ``name``: its class, or its registered
        constructor."""
        subclass, constructor = cls.resolve_class_name(name)
        return getattr(subclass, constructor) if constructor else subclass

    @classmethod
    def list_available(cls) -> list[str]:
        """The registered names, the default implementation first."""
        keys = list(cls._registry)
        default = cls.default_implementation
        if default not in keys:
            raise ConfigurationError(f"Default implementation {default} is not registered")
        return [default] + [k for k in keys if k != default]

    @classmethod
    def from_params(cls, params: Mapping | None = None, **extras: Any) -> Optimizer:
        """The optimizer a config describes, as AllenNLP builds it (call with keywords:
        ``Optimizer.from_params(model_parameters=..., params={...})``).

        ``params``: ``{"type": name, **options}`` (``type`` defaults to ``"adam"``; on a
        registered subclass it is not read), ``parameter_groups`` included
        (``[[["regex", ...], {options}], ...]``); an AllenNLP ``Params`` works too. ``extras``
        (``model_parameters``) are passed to the constructor. A missing required option or an
        unknown one is a :class:`ConfigurationError` with AllenNLP's message.
        """
        config = dict(params.as_dict(quiet=True) if hasattr(params, "as_dict") else params or {})
        make: Callable[..., Optimizer] = cls
        if cls is Optimizer:
            choice = config.pop("type", cls.default_implementation)
            choices = cls.list_available()
            if choice not in choices and "." not in choice:
                raise ConfigurationError(
                    f"{choice} not in acceptable choices for type: {choices}. You should either "
                    "use the --include-package flag to make sure the correct module is loaded, "
                    "or use a fully qualified class name in your config file like "
                    '{"model": "my_module.models.MyModel"} to have it imported automatically.')
            make = cls.by_name(choice)
        signature = inspect.signature(make)
        kwargs = {}
        for name, p in signature.parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if name in extras:
                kwargs[name] = extras[name]
            elif name in config:
                value = config.pop(name)
                kwargs[name] = tuple(value) if isinstance(value, list) and isinstance(
                    p.default, tuple) else value
            elif p.default is p.empty:
                raise ConfigurationError(f'key "{name}" is required')
        if config:
            raise ConfigurationError(
                f"Extra parameters passed to {getattr(make, '__name__', make)}: {config}")
        return make(**kwargs)

    @staticmethod
    def default(model_parameters: list) -> Optimizer:
        """The default optimizer (``adam`` with its defaults) for ``model_parameters``."""
        return Optimizer.from_params(model_parameters=model_parameters, params={})


@Optimizer.register("adam")
class AdamOptimizer(Optimizer, _optim.Adam):
    """Registered as ``"adam"``: :class:`functional_optim.optim.Adam`."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-08,
                 weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@Optimizer.register("sparse_adam")
class SparseAdamOptimizer(Optimizer, _optim.SparseAdam):
    """Registered as ``"sparse_adam"``: :class:`functional_optim.optim.SparseAdam`."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-08):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         betas=betas, eps=eps)


@Optimizer.register("adamax")
class AdamaxOptimizer(Optimizer, _optim.Adamax):
    """Registered as ``"adamax"``: :class:`functional_optim.optim.Adamax`."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 0.002, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-08,
                 weight_decay: float = 0.0):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         betas=betas, eps=eps, weight_decay=weight_decay)


@Optimizer.register("adamw")
class AdamWOptimizer(Optimizer, _optim.AdamW):
    """Registered as ``"adamw"``: :class:`functional_optim.optim.AdamW` (weight decay 0.01)."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-08,
                 weight_decay: float = 0.01, amsgrad: bool = False):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@Optimizer.register("huggingface_adamw")
class HuggingfaceAdamWOptimizer(Optimizer, _HuggingFaceAdamW):
    """Registered as ``"huggingface_adamw"``: ``functional_optim.compat.transformers.AdamW``
    (HuggingFace's algorithm; lr 1e-5)."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-08,
                 weight_decay: float = 0.0, correct_bias: bool = True):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         betas=betas, eps=eps, weight_decay=weight_decay,
                         correct_bias=correct_bias)


@Optimizer.register("adagrad")
class AdagradOptimizer(Optimizer, _optim.Adagrad):
    """Registered as ``"adagrad"``: :class:`functional_optim.optim.Adagrad`."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)


@Optimizer.register("adadelta")
class AdadeltaOptimizer(Optimizer, _optim.Adadelta):
    """Registered as ``"adadelta"``: :class:`functional_optim.optim.Adadelta`."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 1.0, rho: float = 0.9, eps: float = 1e-06,
                 weight_decay: float = 0.0):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         rho=rho, eps=eps, weight_decay=weight_decay)


@Optimizer.register("sgd")
class SgdOptimizer(Optimizer, _optim.SGD):
    """Registered as ``"sgd"``: :class:`functional_optim.optim.SGD` (``lr`` is required)."""

    def __init__(self, model_parameters: list, lr: float, parameter_groups: list | None = None,
                 momentum: float = 0.0, dampening: float = 0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)


@Optimizer.register("rmsprop")
class RmsPropOptimizer(Optimizer, _optim.RMSprop):
    """Registered as ``"rmsprop"``: :class:`functional_optim.optim.RMSprop`."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-08,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered)


@Optimizer.register("averaged_sgd")
class AveragedSgdOptimizer(Optimizer, _optim.ASGD):
    """Registered as ``"averaged_sgd"``: :class:`functional_optim.optim.ASGD`."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 0.01, lambd: float = 0.0001, alpha: float = 0.75,
                 t0: float = 1000000.0, weight_decay: float = 0.0):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay)


@Optimizer.register("dense_sparse_adam")
class DenseSparseAdam(Optimizer, _optim.DenseSparseAdam):
    """Registered as ``"dense_sparse_adam"``: :class:`functional_optim.optim.DenseSparseAdam`
    (Adam for dense gradients and lazy Adam for sparse ones, in one optimizer)."""

    def __init__(self, model_parameters: list, parameter_groups: list | None = None,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params=make_parameter_groups(model_parameters, parameter_groups), lr=lr,
                         betas=betas, eps=eps)

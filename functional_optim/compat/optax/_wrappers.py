"""optax's wrappers (``inject_hyperparams``, ``MultiSteps``, ``masked``, ``lookahead``, ...)
over :mod:`functional_optim.combinators`: optax's names and arguments, the native wrappers'
math and states."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import torch

from ... import combinators as _C
from ... import tree as _tree
from ...base import Transform
from ...transforms import set_to_zero

__all__ = [
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "MultiSteps",
    "ShouldSkipUpdateFunction",
    "apply_every",
    "conditionally_mask",
    "conditionally_transform",
    "masked",
    "partition",
    "multi_transform",
    "freeze",
    "selective_transform",
    "lookahead",
    "LookaheadParams",
    "WrappedSchedule",
    "StatefulSchedule",
]

ShouldSkipUpdateFunction = Callable[..., tuple[torch.Tensor, Any]]


def inject_hyperparams(inner_factory: Callable[..., Transform],
                       static_args: str | Iterable[str] = (),
                       hyperparam_dtype: torch.dtype | None = None) -> Callable[..., Transform]:
    """optax's ``inject_hyperparams``: ``inject_hyperparams(optax.adam)(learning_rate=sched)``.

    The factory's numeric arguments (not in ``static_args``) are held in the state and its
    callable ones are schedules of the step (:func:`functional_optim.inject_hparams` with
    ``in_state=`` and ``schedules=``; a stateful schedule, with ``init``/``update``, keeps its
    state there too). Read or change them in ``state.hparams`` (optax's
    ``state.hyperparams``), keyed by optax's argument names, e.g.
    ``state.hparams["learning_rate"]``. Only arguments that are hyperparameters of the
    transform the factory returns are injected (every factory of this module names its
    hyperparameters as its arguments); the others stay static. ``hyperparam_dtype`` is
    accepted for optax's signature: the values are held in the step's float dtype.
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    del hyperparam_dtype
    signature = inspect.signature(inner_factory)

    @functools.wraps(inner_factory)
    def factory(*args: Any, **kwargs: Any) -> Transform:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        schedules = {k: v for k, v in bound.arguments.items()
                     if k not in static and callable(v) and not isinstance(v, Transform)}
        start = {k: _first_value(v) for k, v in schedules.items()}
        inner = inner_factory(**{**bound.arguments, **start})
        held = [k for k, v in bound.arguments.items()
                if k not in static and k not in schedules and k in inner.hparams
                and isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool)]
        return _C.inject_hparams(inner, {k: v for k, v in schedules.items()
                                         if k in inner.hparams}, in_state=held)

    return factory


def _first_value(schedule: Any) -> Any:
    """A schedule's value at step 0 (a stateful one's at its initial state): the placeholder
    the factory is built with, before ``inject_hparams`` puts the schedule in its place."""
    if callable(getattr(schedule, "init", None)):
        return schedule(schedule.init())
    return schedule(torch.zeros((), dtype=torch.int64))


inject_stateful_hyperparams = inject_hyperparams


class WrappedSchedule:
    """optax's ``WrappedSchedule``: a schedule of the step as a stateful schedule (its state
    counts the steps)."""

    def __init__(self, schedule_fn: Callable[[torch.Tensor], Any]):
        self.schedule_fn = schedule_fn

    def init(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.int64)

    def update(self, state: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        return state + 1

    def __call__(self, state: torch.Tensor, **extra_args: Any) -> Any:
        return self.schedule_fn(state)


class StatefulSchedule(Protocol):
    """optax's ``StatefulSchedule``: ``init() -> state``, ``update(state, **extra) -> state``,
    ``schedule(state, **extra) -> value`` (what :func:`inject_hyperparams` accepts)."""

    def init(self) -> Any: ...

    def update(self, state: Any, **extra_args: Any) -> Any: ...

    def __call__(self, state: Any, **extra_args: Any) -> Any: ...


class MultiSteps:
    """optax's ``MultiSteps``: gradient accumulation over ``every_k_schedule`` micro-steps
    (:func:`functional_optim.multi_steps`; mean or sum of the micro-steps' gradients)."""

    def __init__(self, opt: Transform, every_k_schedule: int | Callable[[torch.Tensor], Any],
                 use_grad_mean: bool = True,
                 should_skip_update_fn: ShouldSkipUpdateFunction | None = None):
        self.inner_opt = opt
        self._tx = _C.multi_steps(opt, every_k_schedule,
                                  reduction="mean" if use_grad_mean else "sum",
                                  should_skip=should_skip_update_fn)
        self.init = self._tx.init
        self.update = self._tx.update

    has_updated = staticmethod(_C.has_updated)

    def gradient_transformation(self) -> Transform:
        """The accumulating transform itself."""
        return self._tx


def apply_every(k: int = 1) -> Transform:
    """optax's ``apply_every``: the sum of ``k`` updates every ``k``-th step, zeros between
    (:func:`functional_optim.multi_steps` of the identity with ``reduction="sum"``)."""
    return _C.multi_steps(_C.stateless(lambda updates, params: updates), k, reduction="sum")


def conditionally_mask(inner: Transform, should_transform_fn: Callable[..., torch.Tensor],
                       forward_extra_args: bool = False) -> Transform:
    """optax's ``conditionally_mask``: ``inner``'s update where ``should_transform_fn(count)``,
    zeros elsewhere (:func:`functional_optim.conditionally`, ``otherwise="zeros"``)."""
    return _C.conditionally(inner, predicate=should_transform_fn, otherwise="zeros",
                            forward_extra_args=forward_extra_args)


def conditionally_transform(inner: Transform, should_transform_fn: Callable[..., torch.Tensor],
                            forward_extra_args: bool = False) -> Transform:
    """optax's ``conditionally_transform``: ``inner``'s update where
    ``should_transform_fn(count)``, the updates unchanged elsewhere
    (:func:`functional_optim.conditionally`, ``otherwise="identity"``)."""
    return _C.conditionally(inner, predicate=should_transform_fn, otherwise="identity",
                            forward_extra_args=forward_extra_args)


def masked(inner: Transform, mask: Any, *, mask_compatible_extra_args: bool = False) -> Transform:
    """optax's ``masked`` (:func:`functional_optim.masked`); its state is ``inner``'s."""
    return _C.masked(inner, mask, mask_compatible_extra_args=mask_compatible_extra_args)


def partition(transforms: Mapping[Any, Transform], param_labels: Any, *,
              mask_compatible_extra_args: bool = False) -> Transform:
    """optax's ``partition`` (``multi_transform``): :func:`functional_optim.partition`; its
    state is a dict of the transforms' states by label."""
    return _C.partition(transforms, param_labels,
                        mask_compatible_extra_args=mask_compatible_extra_args)


multi_transform = partition


def freeze(mask: Any) -> Transform:
    """optax's ``freeze``: zero updates where ``mask`` is True (:func:`functional_optim.freeze`)."""
    return _C.freeze(mask)


def selective_transform(optimizer: Transform, *, freeze_mask: Any) -> Transform:
    """optax's ``selective_transform``: ``optimizer`` on the leaves where ``freeze_mask`` is
    False, zero updates where it is True (:func:`functional_optim.partition`); a single bool
    freezes every leaf or none."""
    labels = freeze_mask
    if isinstance(freeze_mask, bool):
        def labels(params):
            return _tree.map(lambda _: freeze_mask, params)
    return _C.partition({False: optimizer, True: set_to_zero()}, labels)


class LookaheadParams(NamedTuple):
    """optax's ``LookaheadParams``: the fast and the slow weights."""

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params: Any) -> LookaheadParams:
        """Fast and slow weights both ``params``."""
        return cls(params, params)


def lookahead(fast_optimizer: Transform, sync_period: int, slow_step_size: float,
              reset_state: bool = False) -> Transform:
    """optax's ``lookahead`` (:func:`functional_optim.lookahead`), on optax's parameters: a
    :class:`LookaheadParams` ``(fast, slow)``, and updates of the same form.

    The native lookahead keeps the slow weights in its state; this one reports them as the
    ``slow`` part of the updates (the difference between the state's slow weights and
    ``params.slow``) so that ``apply_updates(params, updates)`` gives optax's pair.
    """
    native = _C.lookahead(fast_optimizer, sync_period, slow_step_size, reset_state=reset_state)

    def init(params):
        return native.init(_fast(params))

    def update(updates, state, params=None, hparams=None, **extra):
        if not isinstance(params, LookaheadParams):
            raise TypeError("lookahead: params must be a LookaheadParams(fast, slow) "
                            f"(LookaheadParams.init_synced(params)), got {type(params).__name__}")
        fast_updates = updates.fast if isinstance(updates, LookaheadParams) else updates
        out, new_state = native.update(fast_updates, state, params.fast, hparams, **extra)
        return LookaheadParams(out, _tree.sub(new_state.slow, params.slow)), new_state

    return Transform(init, update, native.hparams)


def _fast(params: Any) -> Any:
    return params.fast if isinstance(params, LookaheadParams) else params

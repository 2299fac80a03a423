"""Which path an update runs, per thread: the multi-tensor path (:class:`multi_tensor`), the
adapter's and a caller's donation (:class:`donating`), the contexts that keep a state intact
(:class:`keep_state`, :func:`owning`), and the checks that choose between them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import optree
import torch

from . import tree as _tree

ADAPTER, DONATED = 1, 2
"""Donation levels: the adapter's state buffers (rules that opt in update them in place on the
multi-tensor path); a caller's donated state (``update(..., donate=True)``: also written back
under ``torch.compile``, see :class:`donating`)."""

class _Flags(threading.local):
    """This thread's ``[multi-tensor allowed, donation level, donation forbidden]``: per
    thread, so that a context entered in one thread (the adapter's donation, a donated
    update, ``multi_tensor``) never changes another thread's updates (with one flag for all,
    a pure update beside a donated one overwrote its input state)."""

    def __init__(self) -> None:
        self.value = [True, 0, False]


_FLAGS = _Flags()


class multi_tensor:  # noqa: N801 - used like torch.no_grad
    """The execution of the updates run in this context.

    ``enabled`` (the default outside any context too): eager updates in which nothing needs
    autograd (no tensor among the updates, state, inputs and tensor hyperparameters requires
    grad, or grad mode is off), outside ``torch.func`` transforms, ``torch.compile``, tracing
    (fake tensors, ``make_fx``) and forward-mode AD, run each rule once per group of leaves
    with ``torch._foreach_*`` kernels, out of place (pure; the same numbers as leaf by leaf). A
    group shares device, dtype, tensor type, ``ndim`` and, for DTensors, device mesh and
    placements (:func:`functional_optim.tree.layout`). ``enabled=False``: leaf by leaf.

    ``donate=True`` (the stateful adapter, which owns its state buffers) lets rules that opt in
    update their state in place, as torch.optim does: the input state tensors are overwritten
    (not inside :class:`keep_state`). The caller donates only to a transform that
    :func:`donates_to`, and library transforms pass it on to their inner ones the same way
    (:func:`owning`).
    """

    def __init__(self, enabled: bool = True, donate: bool = False):
        self.enabled = enabled
        self.donate = donate

    def __enter__(self):
        self.previous = list(_FLAGS.value)
        donate = self.enabled and self.donate and not _FLAGS.value[2]
        _FLAGS.value[:2] = [self.enabled, ADAPTER if donate else 0]

    def __exit__(self, *exc):
        _FLAGS.value[:] = self.previous


class donating:  # noqa: N801 - a context like torch.no_grad
    """The updates run in this context may reuse the memory of the state they are given: the
    caller donated it (``tx.update(..., donate=True)``; library updates enter this context
    with their ``donate`` keyword). On the multi-tensor path, rules that opt in
    (``donate_state``) update their state in place (a state leaf they replace instead, a step
    count, is marked: an update given that state again raises :class:`DonatedStateError`);
    under ``torch.compile`` their new state is
    written into the old tensors, so that the compiled code computes in place. Elsewhere (leaf
    by leaf in eager mode) nothing changes. Inside :class:`keep_state` nothing is donated."""

    def __init__(self, donate: Any):
        self.donate = donate is True

    def __enter__(self):
        self.previous = _FLAGS.value[1]
        if self.donate and not _FLAGS.value[2]:
            _FLAGS.value[1] = DONATED

    def __exit__(self, *exc):
        _FLAGS.value[1] = self.previous


class keep_state:  # noqa: N801 - a context like torch.no_grad
    """Inner updates in this context leave their input state intact (no donation, also where
    an inner update asks for it): for combinators that may keep the old state instead of the
    new one (``multi_steps``, ...) or that hold a user's transform (:func:`owning`)."""

    def __enter__(self):
        self.previous = list(_FLAGS.value)
        _FLAGS.value[1:] = [0, True]

    def __exit__(self, *exc):
        _FLAGS.value[:] = self.previous


_PACKAGE = __name__.partition(".")[0]


def donates_to(tx: Any) -> bool:
    """Whether a caller that owns the state it passes to ``tx.update`` may let it update that
    state in place (donation): only where ``update`` is the library's own code (a block, alias,
    chain or combinator), which reads each state once and calls each inner update once on it
    (or runs it in :class:`keep_state`), and runs no other code (see :func:`owning`). Any other
    ``update`` (a user's transform) may read its state again, keep it, or call an inner update
    twice on it: it and everything it calls get no donation (the same numbers, without reusing
    memory)."""
    update = tx.update
    module = getattr(update, "__module__", None)
    marked = (getattr(x, "keeps_state", False) for x in (update, getattr(update, "__self__", None)))
    return isinstance(module, str) and module.partition(".")[0] == _PACKAGE and not any(marked)


def owning(update: Callable, inners: Any) -> Callable:
    """The ``update`` of a library transform that runs the updates of the transforms
    ``inners`` (a chain's members, a combinator's inner transform): as it is where each of them
    :func:`donates_to`; else it runs in :class:`keep_state`, marked ``keeps_state`` so that its
    own callers donate nothing to it either (a library object whose method is an update
    carries the mark itself)."""
    if all(map(donates_to, inners)):
        return update

    def without_donation(*args: Any, **kwargs: Any) -> Any:
        with keep_state():
            return update(*args, **kwargs)

    without_donation.keeps_state = True
    return without_donation


def fusing(updates: Any, params: Any, hparams: Any) -> bool:
    """Whether a chain fuses its pointwise runs on ``updates`` (with ``params`` and ``hparams``):
    on the multi-tensor path, for real leaves (complex ones run transform by transform: passing
    a temporary from one rule to the next in place moves the last digit there). (A state that
    requires grad is seen by :func:`elementwise`, which then runs the fused rule leaf by leaf:
    the numbers of the transforms run one by one.)"""
    if _tree.traced():  # (per leaf: see multi_tensor_wanted)
        return False
    flat, spec = optree.tree_flatten(updates, none_is_leaf=True)
    leaves = [x for x in flat if x is not None]
    if any([x.is_complex() for x in leaves]):
        return False
    try:  # (the parameters along the updates' structure, in C; else as they are)
        inputs = [] if params is None else spec.flatten_up_to(params)
    except (ValueError, TypeError):
        inputs = optree.tree_leaves(params)
    return multi_tensor_wanted([leaves, inputs], hparams)


def pure_multi_tensor(columns: list, hparams: Any) -> bool:
    """Whether a pure update of the leaves ``columns`` (updates, parameters) runs the
    multi-tensor path with nothing donated (where an alias may run its exact program)."""
    return not _FLAGS.value[1] and multi_tensor_wanted(columns, hparams)


def multi_tensor_wanted(columns: list, hparams: Any = None) -> bool:
    """Whether the leaves ``columns`` (the updates first, then state and inputs) and
    ``hparams`` run on the multi-tensor path (see :class:`multi_tensor`)."""
    if not _FLAGS.value[0] or _tree.traced() or not any(
            isinstance(x, torch.Tensor) for x in columns[0]):
        return False
    return not torch.is_grad_enabled() or not (
        any(map(_requires_grad, columns)) or _requires_grad(optree.tree_leaves(hparams)))


def _requires_grad(leaves: list) -> bool:
    """Whether a tensor among ``leaves`` (tensors, ``None`` and other values) requires grad."""
    try:
        return any([x.requires_grad for x in leaves if x is not None])
    except AttributeError:  # (numbers: hparams, a static input's bools)
        return any([x.requires_grad for x in leaves if isinstance(x, torch.Tensor)])

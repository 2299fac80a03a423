"""One optimizer step of a functional transform, :func:`step`: the update and its application, pure
or on the caller's donated state and parameters (the fastest path the step allows)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import optree
import torch

from . import _execute, _fused, _rulemath
from . import tree as _tree
from ._parts import by_position, flat_dict, parts_of
from .base import Transform, apply_updates, apply_updates_, check_distinct, resolve_hparams

__all__ = ["host_counts", "step"]


def step(tx: Transform, grads: Any, state: Any, params: Any, hparams: Any = None, *,
         donate: bool = False, donate_grads: bool = False, **extra: Any) -> tuple[Any, Any]:
    """``updates, state = tx.update(grads, state, params, hparams, **extra)``, then
    ``params = apply_updates(params, updates)``; returns ``(params, state)``.

    ``donate=False`` (the default): pure, the two calls above (multi-tensor where nothing
    requires grad, leaf by leaf under ``torch.func`` transforms and ``torch.compile``); where
    the donated step below would run a fused or blocked step and no tensor requires grad (or
    grad mode is off), that step on copies of the state and parameters instead (the inputs
    untouched; the donated step's numbers, which are the two calls' up to a fused kernel's
    rounding order): one pass of copies instead of the chain's out-of-place temporaries; a
    blocked step runs its program out of place instead, into new tensors, with no copies.

    ``donate=True``: the caller gives up ``state`` and ``params``. The returned trees are the
    new ones; they share the old tensors (updated in place), so the old ones must not be read
    again. The step runs outside autograd (no gradient flows through it; a tensor that requires
    grad among the inputs is updated in place under ``torch.no_grad()``, as an optimizer
    does). The numbers are the pure step's (up to rounding order on a fused kernel). A tensor
    given as two leaves of ``params`` (a tied weight listed twice) is a ``ValueError`` naming
    both, before anything changes (updated in place, it would take both leaves' updates in
    turn). Eagerly:

    - an alias with a fused step (SGD, Adam, AdamW, Adagrad: torch's fused kernels; the other
      classic algorithms and every pointwise alias: the cache-blocked in-place step, whole
      lists on a GPU), or a library chain that one of
      torch's Adam kernels computes (``[clip_by_global_norm] → [add_decayed_weights] →
      scale_by_adam → [add_decayed_weights] → scale_by_learning_rate``), on plain CPU/CUDA
      float32/float64 tensors that all have gradients (a flat dict, or any tree: a list of
      parameters, nested dicts, by its leaves' positions): that step, in place, as
      :class:`functional_optim.optim.FunctionalOptimizer` runs it;
    - otherwise ``tx.update(..., donate=True)`` (the library's rules update the state in place)
      and :func:`~functional_optim.apply_updates_`.

    ``donate_grads=True`` (with ``donate=True``): the caller gives up ``grads`` too, so the
    step may overwrite them; a library chain that runs one of torch's Adam kernels clips them
    in place (as ``torch.nn.utils.clip_grad_norm_`` does) instead of into new tensors: one pass
    over memory less. Their values afterwards are unspecified; a tensor given as two of their
    leaves is an error, as for ``params``.

    Under ``torch.compile`` the update writes the new state into the donated tensors and the
    updates are added into the parameters, so that a compiled train step computes in place and
    allocates nothing for the optimizer but 0-d buffers for its per-leaf coefficients. A
    transform that is not the library's (a user's ``update``) gets no ``donate`` (its state is
    never reused); its parameters are still updated in place.
    """
    if donate_grads and not donate:
        raise ValueError("step: donate_grads=True gives up the gradients of a donated step: "
                         "pass donate=True too (got donate=False)")
    if donate:  # (updated in place: no tensor may be two leaves)
        check_distinct(params.values() if isinstance(params, dict) else
                       optree.tree_leaves(params), params, "params", "step(donate=True)")
        if donate_grads:
            check_distinct(grads.values() if isinstance(grads, dict) else
                           optree.tree_leaves(grads), grads, "grads", "step(donate_grads=True)")
    library = _execute.donates_to(tx)
    # the alias's fused step or a library chain's (torch's Adam kernel), if it has one
    fused = (tx.fused or _fused.chain_step(tx, grads_donated=donate_grads)
             if library and not extra else None)
    if fused is not None:
        if flat_dict(params):
            out = _fused_step(tx, fused, grads, state, params, hparams, donate)
        else:  # (a list of parameters, nested dicts: as dicts by position)
            out = _by_position(tx, fused, grads, state, params, hparams, donate)
        if out is not None:
            return out
    if not donate:
        updates, state = tx.update(grads, state, params, hparams, **extra)
        return apply_updates(params, updates), state
    with torch.no_grad():
        updates, state = tx.update(grads, state, params, hparams, donate=library, **extra)
        return apply_updates_(params, updates), state


def _fused_step(tx: Transform, fused: Any, grads: Any, state: Any, params: Any, hparams: Any,
                donate: bool) -> tuple | None:
    """``(params, state)`` of the fused step ``fused`` on copies (pure) or in place
    (``donate``), or ``None`` where it declines."""
    if not _fusable(params, grads, pure=not donate, hparams=hparams):
        return None
    if donate:
        with torch.no_grad():
            new_state = fused(params, grads, state, resolve_hparams(tx.hparams, hparams))
        return None if new_state is None else (params, new_state)
    copies: list = []
    try:  # (a state tensor that requires grad, found as the step copies: the chain)
        with _fused.owning(copies, torch.is_grad_enabled()), torch.no_grad():
            new_state = fused(params, grads, state, resolve_hparams(tx.hparams, hparams))
    except _fused.Graphed:
        return None
    return None if new_state is None else (copies[-1], new_state)


def _by_position(tx: Transform, fused: Any, grads: Any, state: Any, params: Any,
                 hparams: Any, donate: bool) -> tuple | None:
    """:func:`_fused_step` on trees other than flat dicts (a list of parameters, nested
    dicts), as dicts of their leaves by position (:func:`~functional_optim._parts.
    by_position`), the results back in their structures."""
    parts = None if _tree.traced() else parts_of(tx)  # (traced: the update and its apply)
    trees = None if parts is None else by_position(parts, params, grads, state)
    if trees is None:
        return None
    ps, gs, state, back = trees
    out = _fused_step(tx, fused, gs, state, ps, hparams, donate)
    return None if out is None else back(*out)


def _fusable(params: Any, grads: Any, pure: bool = False, hparams: Any = None) -> bool:
    """Whether a fused step may take these trees: eager, dicts of the same keys, every value a
    tensor, the gradients dense (the fused steps check dtypes, devices and layouts themselves),
    and, with grad mode on, no parameter that requires grad (nor, for a ``pure`` step, a
    gradient or a tensor of ``hparams``: its graph runs the chain; the state's tensors are
    looked at by the step as it copies them, :func:`~functional_optim._fused.owning`)."""
    if not (isinstance(params, dict) and isinstance(grads, dict)
            and params.keys() == grads.keys()
            and all([isinstance(x, torch.Tensor) for x in params.values()])
            and not any([getattr(g, "is_sparse", False) for g in grads.values()])):
        return False  # (a sparse gradient: the chain, whose rule takes it or names it)
    columns = [list(params.values())]
    if pure and torch.is_grad_enabled():
        columns.append(list(grads.values()))
        if hparams is not None:
            columns.append(optree.tree_leaves(hparams, none_is_leaf=True))
    return _execute.multi_tensor_wanted(columns)


@contextlib.contextmanager
def host_counts() -> Iterator[None]:
    """Within: ``init`` keeps each leaf's step count, and the other per-leaf 0-d state
    (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``), on the CPU, as torch.optim keeps
    ``state[p]["step"]`` and those unless ``capturable``, not on the parameter's device
    (DESIGN 2.5).

    For eager loops on a GPU that no CUDA graph captures: a leaf's bias corrections and other
    coefficients of that state are then computed on the host and reach the foreach kernels as
    numbers (one launch for all the tensors of an op; from device state they are 0-d tensors
    on the GPU, one per leaf, which torch's foreach kernels take one tensor at a time), and
    the blocked steps of the algorithms whose rules read it run their programs, as in the
    drop-in classes (Adamax, NAdam, RAdam, ASGD). The numbers are the device state's up to the
    rounding of those coefficients (the CPU's ``pow`` and a GPU's may differ in the last
    bit). Such a state is not for ``torch.cuda.graph`` capture (a captured step
    would replay one step's coefficients). Only the per-leaf counts move: a schedule's count
    stays with the parameters (its value is one 0-d tensor for every leaf)::

        with fo.host_counts():
            state = tx.init(params)
    """
    before, _rulemath.COUNTS.on_host = _rulemath.COUNTS.on_host, True
    try:
        yield
    finally:
        _rulemath.COUNTS.on_host = before

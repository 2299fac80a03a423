"""Meta-learning helpers: modules as pytrees, differentiable unrolls, vmapped sweeps.

Everything here is a thin layer over the pure core and :mod:`torch.func`:

* :func:`params_of` / :func:`buffers_of` / :func:`functional` / :func:`load_into_` turn an
  ``nn.Module`` into a dict of tensors and a pure function ``f(params, *args)`` (built on
  :func:`torch.func.functional_call`), and back;
* :func:`unroll` runs ``k`` optimizer steps of any transform and keeps them differentiable, so that
  a meta-gradient flows into the initial parameters (MAML), into every tensor hyperparameter
  (``lr``, ``betas``, ``eps``, ``weight_decay``, ``momentum``, schedule parameters) and into the
  optimizer state; ``first_order`` and ``truncate`` bound its cost;
* :func:`train_many` trains ``N`` independent copies at once with ``N`` different
  hyperparameters (a sweep, an ensemble) in one :func:`torch.func.vmap` call;
* :func:`stack`, :func:`unstack` and :func:`broadcast` move between ``N`` trees and one batched
  tree.

Nothing in the core imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import optree
import torch
from torch.func import functional_call, grad_and_value, vmap

from . import tree as _tree
from .base import Transform, apply_updates

__all__ = [
    "params_of",
    "buffers_of",
    "functional",
    "load_into_",
    "UnrollResult",
    "make_step",
    "unroll",
    "train_many",
    "stack",
    "unstack",
    "broadcast",
    "detach",
]


# ---------------------------------------------------------------- modules <-> pytrees


def params_of(module: torch.nn.Module, *, buffers: bool = False, detach: bool = True,
              requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """The module's parameters as a dict ``{qualified name: tensor}`` (``named_parameters``).

    Args:
        module: any ``nn.Module``.
        buffers: also include the buffers (batch-norm statistics...) under their names; the
            result then feeds :func:`functional` alone.
        detach: copies detached from the module (default), so that the module is never
            mutated by what is done to the dict; ``False`` returns the live parameters.
        requires_grad: with ``detach``, mark the copied floating-point parameters as requiring
            grad (for ``torch.autograd``-style meta-gradients; :mod:`torch.func` needs no flag).
    """
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if detach:
            p = p.detach().clone()
            if requires_grad and (p.is_floating_point() or p.is_complex()):
                p.requires_grad_(True)
        out[name] = p
    if buffers:
        out.update(buffers_of(module, detach=detach))
    return out


def buffers_of(module: torch.nn.Module, *, detach: bool = True) -> dict[str, torch.Tensor]:
    """The module's buffers as a dict ``{name: tensor}`` (copies unless ``detach=False``)."""
    return {name: (b.detach().clone() if detach else b) for name, b in module.named_buffers()}


def functional(module: torch.nn.Module) -> Callable[..., Any]:
    """A pure function ``f(params, *args, **kwargs)`` that runs ``module`` with ``params``.

    ``params`` is a dict of (some of) the module's parameters and buffers by name, as
    :func:`params_of` makes; entries it lacks come from the module itself. Built on
    :func:`torch.func.functional_call`, so it works under ``grad``/``vmap``/``compile``.
    Buffers updated in place by the forward (batch-norm running stats in training mode) are
    not returned; use ``module.eval()`` or keep them out of differentiated code.
    """

    def f(params: dict, *args: Any, **kwargs: Any) -> Any:
        return functional_call(module, params, args, kwargs)

    f.__name__ = f"functional({type(module).__name__})"
    return f


def load_into_(module: torch.nn.Module, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Copy ``params`` (a dict by name, parameters and/or buffers) into ``module`` in place.

    The inverse of :func:`params_of`; runs under ``torch.no_grad()``. An unknown name, or a
    shape that differs from the module's tensor, raises ``KeyError`` / ``ValueError``.
    """
    own = dict(module.named_parameters())
    own.update(module.named_buffers())
    unknown = sorted(set(params) - set(own))
    if unknown:
        raise KeyError(f"load_into_: {unknown} are not parameters or buffers of "
                       f"{type(module).__name__}; it has {sorted(own)}")
    with torch.no_grad():
        for name, value in params.items():
            if value is None:
                continue
            target = own[name]
            if target.shape != value.shape:
                raise ValueError(f"load_into_: {name!r} has shape {tuple(target.shape)} in the "
                                 f"module but {tuple(value.shape)} in params")
            target.copy_(value)
    return module


# ---------------------------------------------------------------- trees of N members


def stack(trees: Sequence[Any]) -> Any:
    """``N`` trees of the same structure -> one tree whose leaves have a leading dim ``N``."""
    if not trees:
        raise ValueError("stack: need at least one tree")
    spec = _tree.structure(trees[0])
    flats = [_tree.flatten_like(t, spec, f"tree {i}", "tree 0") for i, t in enumerate(trees)]
    out = [None if xs[0] is None else torch.stack(list(xs)) for xs in zip(*flats, strict=False)]
    return optree.tree_unflatten(spec, out)


def unstack(tree: Any) -> list[Any]:
    """The inverse of :func:`stack`: one tree per index of the leading dimension."""
    flat, spec = optree.tree_flatten(tree, none_is_leaf=True)
    sizes = {x.shape[0] for x in flat if isinstance(x, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"unstack: leaves disagree on the leading dimension: {sorted(sizes)}")
    (n,) = sizes
    return [optree.tree_unflatten(spec, [x[i] if isinstance(x, torch.Tensor) else x
                                         for x in flat]) for i in range(n)]


def broadcast(tree: Any, n: int) -> Any:
    """Every tensor leaf repeated ``n`` times along a new leading dimension (a copy)."""
    return _tree.map(lambda x: x.unsqueeze(0).expand(n, *x.shape).clone(), tree)


def detach(tree: Any) -> Any:
    """Every tensor leaf detached (a truncation point: no gradient flows back past it)."""
    return optree.tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, tree,
                           none_is_leaf=True)


# ---------------------------------------------------------------- differentiable steps


class UnrollResult(NamedTuple):
    """What :func:`unroll` returns.

    Attributes:
        params: the parameters after the last step.
        state: the optimizer state after the last step.
        losses: 1-D tensor, the loss at each step (evaluated before that step's update).
    """

    params: Any
    state: Any
    losses: torch.Tensor


def make_step(loss_fn: Callable[..., torch.Tensor], tx: Transform, *,
              first_order: bool = False) -> Callable[..., tuple[Any, Any, torch.Tensor]]:
    """One pure optimizer step ``step(params, state, *args, hparams=None)``.

    Returns ``(new_params, new_state, loss)`` where ``loss = loss_fn(params, *args)``. The
    gradient comes from :func:`torch.func.grad_and_value`, so the step is differentiable
    (second order) and composes with ``vmap``/``grad``/``compile``; ``first_order=True``
    detaches the gradient (FOMAML-style: the meta-gradient then skips the Hessian terms).
    """

    def step(params, state, *args, hparams=None):
        grads, loss = grad_and_value(loss_fn)(params, *args)
        if first_order:
            grads = detach(grads)
        updates, state = tx.update(grads, state, params, hparams)
        return apply_updates(params, updates), state, loss

    return step


def _batches(batches: Any, steps: int | None) -> tuple[Iterable, int | None]:
    if batches is None:
        if steps is None:
            raise TypeError("unroll: give steps, batches, or both")
        return ((() for _ in range(steps)), steps)
    if callable(batches):
        if steps is None:
            raise TypeError("unroll: a batch function needs steps")
        return ((_as_args(batches(i)) for i in range(steps)), steps)
    if steps is None and hasattr(batches, "__len__"):
        steps = len(batches)
    return ((_as_args(b) for b in batches), steps)


def _as_args(batch: Any) -> tuple:
    return batch if isinstance(batch, tuple) else (batch,)


def unroll(loss_fn: Callable[..., torch.Tensor], tx: Transform, params: Any,
           state: Any = None, hparams: Any = None, *, steps: int | None = None,
           batches: Any = None, first_order: bool = False,
           truncate: int | None = None) -> UnrollResult:
    """``steps`` differentiable optimizer steps of ``tx`` on ``loss_fn``.

    ``loss_fn(params, *batch)`` is called once per step; ``batches`` is ``None`` (no batch
    arguments), a sequence/iterable of batches (a tuple is unpacked into arguments), or a
    function ``i -> batch``. Nothing is detached unless asked, so the result is differentiable
    w.r.t. ``params``, ``state`` and every tensor in ``hparams`` (with :func:`torch.func.grad`,
    or ``torch.autograd`` when they require grad). Works under :func:`torch.func.vmap` (vmap
    it over tasks: per-task adaptation).

    Args:
        loss_fn: ``loss_fn(params, *batch) -> scalar``.
        tx: any transform (an alias, a chain).
        params: the initial parameters (a pytree).
        state: the initial optimizer state (default ``tx.init(params)``).
        hparams: hyperparameters for ``tx.update`` (default ``tx.hparams``); may hold tensors
            that require grad or are batched.
        steps: number of steps (default: ``len(batches)``).
        batches: see above.
        first_order: detach each inner gradient: the meta-gradient drops the second-order
            terms (first-order MAML); params, state and hparams still carry gradient.
        truncate: every ``truncate`` steps, detach params and state (and the losses so far):
            truncated backpropagation. The autograd graph then spans at most ``truncate``
            steps, so memory stays flat however long the unroll; hparams keep their gradient
            through the last window.

    Returns:
        An :class:`UnrollResult` ``(params, state, losses)``.
    """
    if truncate is not None and (not isinstance(truncate, int) or truncate < 1):
        raise ValueError(f"unroll: truncate must be a positive int or None, got {truncate!r}")
    if state is None:
        state = tx.init(params)
    step = make_step(loss_fn, tx, first_order=first_order)
    it, _ = _batches(batches, steps)
    losses: list[torch.Tensor] = []
    for i, args in enumerate(it):
        if steps is not None and i >= steps:
            break
        if truncate is not None and i > 0 and i % truncate == 0:
            params, state = detach(params), detach(state)
            losses = [loss.detach() for loss in losses]
        params, state, loss = step(params, state, *args, hparams=hparams)
        losses.append(loss)
    if not losses:
        raise ValueError("unroll: no steps were run (steps=0 or empty batches)")
    return UnrollResult(params, state, torch.stack(losses))


def _in_dims(tree: Any, batched: Callable[[Any], bool]) -> Any:
    return optree.tree_map(lambda x: 0 if batched(x) else None, tree, none_is_leaf=True)


def train_many(loss_fn: Callable[..., torch.Tensor], tx: Transform, params: Any,
               hparams: Any, *, steps: int | None = None, batches: Any = None,
               params_batched: bool = False, randomness: str = "error",
               **unroll_kwargs: Any) -> UnrollResult:
    """Train ``N`` independent copies at once, each with its own hyperparameters (one vmap).

    ``hparams`` is a (partial) hparams tree for ``tx`` in which every batched leaf is a 1-D
    tensor of length ``N`` (one value per member) and the rest are numbers or 0-d tensors shared
    by all members; e.g. ``{"lr": torch.logspace(-3, 0, 16)}`` for ``fo.sgd``. Equal to ``N``
    separate :func:`unroll` runs, as one :func:`torch.func.vmap` over them.

    Args:
        loss_fn: as for :func:`unroll`.
        tx: as for :func:`unroll`.
        params: the initial parameters; shared by all members unless ``params_batched`` (then
            every leaf has the leading dimension ``N``: an ensemble with different inits).
        hparams: see above.
        steps: as for :func:`unroll`.
        batches: as for :func:`unroll`; shared by all members.
        params_batched: whether ``params`` carries the member dimension.
        randomness: passed to :func:`torch.func.vmap` (``"different"`` for dropout per member).
        **unroll_kwargs: ``first_order``, ``truncate``.

    Returns:
        An :class:`UnrollResult` whose leaves have a leading dimension ``N`` (``losses`` is
        ``N × steps``).
    """
    sizes = {x.shape[0] for x in optree.tree_leaves(hparams)
             if isinstance(x, torch.Tensor) and x.ndim == 1}
    if len(sizes) > 1:
        raise ValueError(f"train_many: batched hparams disagree on N: {sorted(sizes)}")
    if not sizes and not params_batched:
        raise ValueError("train_many: no 1-D tensor in hparams and params not batched: "
                         "nothing to vmap over")
    hp_dims = _in_dims(hparams, lambda x: isinstance(x, torch.Tensor) and x.ndim == 1)
    p_dims = _in_dims(params, lambda x: params_batched and isinstance(x, torch.Tensor))
    batch_list = None if batches is None or callable(batches) else list(batches)

    def one(p, h):
        return unroll(loss_fn, tx, p, None, h, steps=steps,
                      batches=batches if batch_list is None else batch_list, **unroll_kwargs)

    return vmap(one, in_dims=(p_dims, hp_dims), randomness=randomness)(params, hparams)

r"""Line searches (optax's): a step size along the incoming update direction, chosen from the
objective's values (and slopes) at trial points.

**The functional form.** A line search needs the objective, so its ``update`` takes keyword
arguments besides the usual ones (chains pass them down to every block)::

    updates, state = tx.update(direction, state, params, hparams,
                               value=loss, grad=grads, value_fn=f, **fn_kwargs)

- ``value``: the objective at ``params`` (a number or 0-d tensor);
- ``grad``: its gradient at ``params`` (a tree like ``params``, torch's convention for complex
  leaves: the conjugate Wirtinger derivative, as ``.grad`` holds);
- ``value_fn(params, **fn_kwargs) -> value``: the objective, pure (e.g. a functional loss built
  with :func:`torch.func.functional_call`); gradients at trial points are taken with
  :func:`torch.func.grad_and_value`, so it must be traceable by ``torch.func``;
- ``fn_kwargs``: the other keyword arguments of ``update`` whose names are parameters of
  ``value_fn`` (a batch ``x=..., y=...``) go to it; the others are ignored (they are meant for
  other blocks of the chain);
- or, instead of ``value_fn``, ``value_and_grad_fn(params, **fn_kwargs) -> (value, grads)``:
  the objective and its gradient computed by the caller (e.g. a closure running ``backward``, as
  the drop-in class ``functional_optim.optim.OptaxLBFGS`` passes): the search then makes
  no ``torch.func`` call of its own (and is as pure, vmappable, ... as that function).

The slope along the direction :math:`u` is :math:`\mathrm{Re}\langle\nabla f, u\rangle`. The
searches return the direction scaled by the step found; their state keeps the step, the value
(and gradient) at the accepted point, for :func:`value_and_grad_from_state` to reuse.

**What holds: a fixed-iteration masked loop.** optax runs a ``while`` loop until the step is
accepted. Here every search runs its maximal number of iterations, each evaluating the
objective at the current trial step; once a step is accepted, the later iterations evaluate at
the accepted step and change nothing (``torch.where``). So ``update`` makes no host decision:
it runs under ``torch.func.vmap`` (each member searches its own step), ``torch.func.grad``
(meta-gradients flow through the accepted step), ``torch.compile(fullgraph=True)`` and CUDA-graph
capture, and the numbers equal optax's while loop. The price is evaluations: ``max + 1``
objective values per update for the backtracking search, ``max`` values and gradients for the
zoom search. ``early_exit=True`` (structural) stops the loop as soon as every step is accepted,
at one host read per iteration: the same numbers with fewer evaluations, in eager mode only (no
vmap/compile/capture).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .. import tree_math as _tm
from .._execute import first_device
from ..base import (
    HParamError,
    Transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)

__all__ = [
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "scale_by_backtracking_linesearch",
    "value_and_grad_from_state",
    "real_dot",
]


# -- shared pieces --------------------------------------------------------------------------------


def _value_dtype(params: Any) -> torch.dtype:
    """The real dtype of the first parameter leaf (optax's dtype of the search's scalars)."""
    for x in _tree.leaves(params):
        if x is not None:
            return x.real.dtype if x.is_complex() else x.dtype
    return torch.get_default_dtype()


def _fn_kwargs(value_fn: Callable, extra: dict) -> dict:
    """The keyword arguments of ``extra`` that ``value_fn`` takes (all with a ``**kwargs``)."""
    parameters = inspect.signature(value_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra)
    return {k: v for k, v in extra.items() if k in parameters}


def _objective(owner: str, value: Any, grad: Any, value_fn: Any, value_and_grad_fn: Any,
               extra: dict) -> tuple[Callable, Callable]:
    """``(value_at, value_and_grad_at)``: the objective and its gradient at a parameter tree,
    from ``value_fn`` (differentiated by ``torch.func``) or ``value_and_grad_fn``, with their
    keyword arguments taken from ``extra``; a ``TypeError`` naming what is missing."""
    fn = value_and_grad_fn if value_and_grad_fn is not None else value_fn
    missing = [n for n, x in (("value", value), ("grad", grad), ("value_fn", fn)) if x is None]
    if missing:
        raise TypeError(
            f"{owner} evaluates the objective along the update: call update(updates, state, "
            f"params, value=loss, grad=grads, value_fn=fn) with fn(params, **fn_kwargs) -> loss "
            f"(or value_and_grad_fn=); missing: {', '.join(missing)}")
    kwargs = _fn_kwargs(fn, extra)
    if value_and_grad_fn is not None:
        return (lambda p: value_and_grad_fn(p, **kwargs)[0],
                lambda p: value_and_grad_fn(p, **kwargs))
    return lambda p: value_fn(p, **kwargs), lambda p: value_and_grad(value_fn, p, kwargs)


def _scalar(owner: str, name: str, x: Any, like: torch.Tensor) -> torch.Tensor:
    """``x`` (a number or a real 0-d tensor) as a 0-d tensor of ``like``'s dtype and device."""
    x = torch.as_tensor(x, device=like.device)
    if x.ndim != 0 or x.is_complex():
        raise HParamError(f"{owner}: {name} must be a real 0-d tensor or a number, got shape "
                          f"{tuple(x.shape)} and dtype {x.dtype}")
    return x.to(like.dtype)


def _as(h: Any, like: torch.Tensor) -> Any:
    """A hyperparameter in the search's dtype (a number stays a number)."""
    return h.to(device=like.device, dtype=like.dtype) if isinstance(h, torch.Tensor) else h


def _leaf_real_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.conj(a) * b).real.sum() if a.is_complex() else (a * b).sum()


def real_dot(a: Any, b: Any) -> torch.Tensor:
    r""":math:`\mathrm{Re}\langle a, b\rangle = \mathrm{Re}\sum_i \bar a_i^\top b_i` over the
    leaves where both trees have a tensor (DTensor-aware; elementwise products and sums, which
    trace on any device, where :func:`torch.vdot` does not on fake CUDA tensors)."""
    spec = _tree.structure(a)
    pairs = [(x, y) for x, y in zip(_tree.leaves(a), _tree.flatten_like(b, spec, "b", "a"))
             if x is not None and y is not None]
    if not pairs:
        return torch.zeros(())
    xs, ys = zip(*pairs)
    return _tree.reduce_by_mesh(list(xs), _leaf_real_dot, torch.sum, list(ys))


def _slope(grad: Any, updates: Any) -> torch.Tensor:
    r"""The slope along ``updates``: :math:`\mathrm{Re}\langle g, u\rangle`."""
    return real_dot(grad, updates)


def _like_updates(updates: Any, tree: Any) -> Any:
    """``tree`` (a gradient) where the updates have leaves: ``None`` where an update is
    ``None`` (a frozen leaf takes no part in the search), zeros where ``tree`` lacks one."""
    return _tree.map(lambda u, x: torch.zeros_like(u) if x is None else x, updates, tree)


def _kept(old: Any, new: Any) -> Any:
    """``new``'s leaves, and ``old``'s where ``new`` has ``None`` (a frozen leaf's record)."""
    return _tree.map(lambda o, n: o if n is None else n, old, new)


def _select(cond: torch.Tensor, a: Any, b: Any) -> Any:
    """``a`` where ``cond`` holds, else ``b`` (trees of tensors, ``None`` leaves kept)."""
    return _tm.where(cond, a, b)


def value_and_grad(value_fn: Callable, params: Any, fn_kwargs: dict | None = None
                   ) -> tuple[torch.Tensor, Any]:
    """``(value_fn(params, **fn_kwargs), its gradient)`` by :func:`torch.func.grad_and_value`;
    a ``None`` leaf of ``params`` is passed as ``None`` and has a ``None`` gradient."""
    fn_kwargs = fn_kwargs or {}
    spec = _tree.structure(params)
    leaves = _tree.leaves(params)
    present = [i for i, x in enumerate(leaves) if x is not None]

    def f(xs):
        full = list(leaves)
        for i, x in zip(present, xs):
            full[i] = x
        return value_fn(spec.unflatten(full), **fn_kwargs)

    grads, value = torch.func.grad_and_value(f)(tuple(leaves[i] for i in present))
    out = [None] * len(leaves)
    for i, g in zip(present, grads):
        out[i] = g
    return value, spec.unflatten(out)


def _check_steps(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise HParamError(f"{owner}: {name} must be a positive int (structural: the loop's "
                          f"length), got {value!r}")


def _stop(early_exit: bool, i: int, running: torch.Tensor) -> bool:
    """Whether the masked loop may stop before iteration ``i``: with ``early_exit``, when no
    search is ``running`` any more (one host read)."""
    return early_exit and i > 0 and not bool(running.any())


# -- backtracking (Armijo) ------------------------------------------------------------------------


class BacktrackingLinesearchInfo(NamedTuple):
    """What the last backtracking search did (0-d tensors).

    Attributes:
        num_linesearch_steps: objective evaluations that counted (int64).
        decrease_error: the sufficient-decrease error at the end (0: accepted).
    """

    num_linesearch_steps: torch.Tensor
    decrease_error: torch.Tensor


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """State of :func:`scale_by_backtracking_linesearch`.

    Attributes:
        learning_rate: the step accepted last (1 at first), in the parameters' real dtype.
        value: the objective at the accepted point (``inf`` at first).
        grad: the gradient there (``store_grad=True``; zeros at first), else ``None``.
        info: :class:`BacktrackingLinesearchInfo`.
    """

    learning_rate: torch.Tensor
    value: torch.Tensor
    grad: Any
    info: BacktrackingLinesearchInfo


def scale_by_backtracking_linesearch(
        max_backtracking_steps: int, slope_rtol: float = 1e-4, decrease_factor: float = 0.8,
        increase_factor: float = 1.5, max_learning_rate: float = 1.0, atol: float = 0.0,
        rtol: float = 0.0, store_grad: bool = False, *, early_exit: bool = False) -> Transform:
    r"""Backtracking line search for sufficient decrease (Armijo, 1966; as optax's, after
    Vaswani et al., 2019, "Painless Stochastic Gradient"). Outputs :math:`\eta u`.

    From the guess :math:`\eta_0 = \min(\gamma_{inc}\,\eta_{prev}, \eta_{max})` it tries
    :math:`\eta_j = \eta_0\,\gamma_{dec}^j`, :math:`j = 0..J` (``J = max_backtracking_steps``),
    and accepts the first whose decrease error

    .. math::
        e(\eta) = \max\bigl(0,\ f(w + \eta u) - (1 + \delta) f(w)
                  - \eta\,c\,\mathrm{Re}\langle\nabla f(w), u\rangle\bigr)

    is at most ``atol`` (a NaN value counts as :math:`e = \infty`). Without one, the last trial
    is kept; a final :math:`e = \infty` gives :math:`\eta = 0` (no step). ``u`` should be a
    descent direction (e.g. after ``sgd``'s negative gradient).

    The update takes ``value``, ``grad`` and ``value_fn`` (see the module docstring); the search
    is a fixed-length masked loop of ``J + 1`` evaluations (``early_exit``: stops when accepted).

    Example (a quadratic; ``sgd(lr=1)`` gives the negative gradient as the direction)::

        f = lambda p: (p["w"] ** 2).sum()
        tx = chain(sgd(lr=1.0), scale_by_backtracking_linesearch(15, store_grad=True))
        params = {"w": torch.tensor([1.0, 2.0, 3.0])}
        state = tx.init(params)
        value_and_grad = value_and_grad_from_state(f)
        for _ in range(5):
            value, grad = value_and_grad(params, state=state)  # reuses the search's
            updates, state = tx.update(grad, state, params, value=value, grad=grad,
                                       value_fn=f)
            params = apply_updates(params, updates)        # f: 14 -> 5.04 -> 1.81 -> ...

    Args:
        max_backtracking_steps: ``J``, decreases tried after the guess (static).
        slope_rtol: ``c`` (default 1e-4).
        decrease_factor: :math:`\gamma_{dec}` (default 0.8).
        increase_factor: :math:`\gamma_{inc}`, the guess's growth over the last step (default
            1.5; ``math.inf`` starts each search at ``max_learning_rate``).
        max_learning_rate: :math:`\eta_{max}` (default 1).
        atol: tolerance on the error (default 0).
        rtol: :math:`\delta`, relative tolerance on the value (default 0).
        store_grad: also keep the gradient at the accepted point (one more evaluation with its
            gradient, after the search), for :func:`value_and_grad_from_state` (static).
        early_exit: stop at acceptance, reading it on the host (static; see the module).
    """
    owner = "scale_by_backtracking_linesearch"
    _check_steps(owner, "max_backtracking_steps", max_backtracking_steps)
    check_hparam(owner, "slope_rtol", slope_rtol, ge=0)
    check_hparam(owner, "decrease_factor", decrease_factor, gt=0, le=1)
    check_hparam(owner, "increase_factor", increase_factor, ge=1)
    check_hparam(owner, "max_learning_rate", max_learning_rate, gt=0)
    check_hparam(owner, "atol", atol, ge=0)
    check_hparam(owner, "rtol", rtol, ge=0)
    defaults = dict(slope_rtol=slope_rtol, decrease_factor=decrease_factor,
                    increase_factor=increase_factor, max_learning_rate=max_learning_rate,
                    atol=atol, rtol=rtol)
    structural = dict(max_backtracking_steps=max_backtracking_steps, store_grad=store_grad,
                      early_exit=early_exit)

    def init(params):
        device, dtype = first_device(params), _value_dtype(params)
        inf = torch.full((), math.inf, dtype=dtype, device=device)
        return ScaleByBacktrackingLinesearchState(
            torch.ones((), dtype=dtype, device=device), inf,
            _tree.zeros_like(params) if store_grad else None,
            BacktrackingLinesearchInfo(torch.zeros((), dtype=torch.int64, device=device), inf))

    def update(updates, state, params=None, hparams=None, *, value=None, grad=None,
               value_fn=None, value_and_grad_fn=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams", structural)
        check_state(owner, state, ScaleByBacktrackingLinesearchState)
        if missing_params(owner, updates, params, "to evaluate the objective") or \
                _tree.num_leaves(updates) == 0:
            return updates, state
        value_at, value_and_grad_at = _objective(owner, value, grad, value_fn,
                                                 value_and_grad_fn, extra)
        like = state.learning_rate
        h = {k: _as(v, like) for k, v in h.items()}
        value = _scalar(owner, "value", value, like)
        slope = _slope(grad, updates).to(like.dtype)

        def error(lr, new_value):
            e = new_value - (1.0 + h["rtol"]) * value - lr * h["slope_rtol"] * slope
            return torch.clamp(torch.where(torch.isnan(e), math.inf, e), min=0.0)

        lr = torch.clamp(h["increase_factor"] * state.learning_rate, max=h["max_learning_rate"])
        new_value = value
        err = torch.full_like(like, math.inf)
        steps = torch.zeros_like(state.info.num_linesearch_steps)
        for i in range(max_backtracking_steps + 1):
            active = err > h["atol"]
            if _stop(early_exit, i, active):
                break
            trial = torch.where(active, h["decrease_factor"] * lr, lr) if i else lr
            v = _scalar(owner, "value_fn's value",
                        value_at(_tree.add(params, updates, trial)), like)
            lr = trial
            new_value = torch.where(active, v, new_value)
            err = torch.where(active, error(trial, v), err)
            steps = steps + active.to(steps.dtype)
        new_grad = None
        if store_grad:
            _, new_grad = value_and_grad_at(_tree.add(params, updates, lr))
            new_grad = _kept(state.grad, _like_updates(updates, new_grad))
        lr = torch.where(torch.isinf(err), torch.zeros_like(lr), lr)
        return _tree.scale(updates, lr), ScaleByBacktrackingLinesearchState(
            lr, new_value, new_grad, BacktrackingLinesearchInfo(steps, err))

    return Transform(init, update, defaults)


# -- reuse --------------------------------------------------------------------------------------


def value_and_grad_from_state(value_fn: Callable) -> Callable:
    """``value_and_grad(params, *args, state=state, **kwargs) -> (value, grad)``: the value and
    gradient a line search stored in ``state`` (the fields ``value`` and ``grad`` found anywhere
    in it, e.g. in a chain's state), or, where the stored value is not finite (the first step),
    ``value_fn(params, *args, **kwargs)`` and its gradient (:func:`torch.func.grad_and_value`).

    Reading whether the value is finite is one host read per call, outside ``update``.
    A state without one ``value`` and one ``grad`` (or with ``grad=None``: a backtracking
    search without ``store_grad``) is a ``ValueError``.
    """

    def _value_and_grad(params, *args, state, **kwargs):
        value = _tm.get(state, "value")
        grad = _tm.get(state, "grad")
        if value is None or grad is None:
            raise ValueError(
                "value_and_grad_from_state: no value or gradient found in the state; use a "
                "line search that stores them (scale_by_zoom_linesearch, or "
                "scale_by_backtracking_linesearch(store_grad=True))")
        if bool(torch.isfinite(value)):
            return value, grad
        return value_and_grad(lambda p, **kw: value_fn(p, *args, **kw), params, kwargs)

    return _value_and_grad

r"""L-BFGS (Nocedal, 1980; Liu & Nocedal, 1989) with an optional strong-Wolfe line search, as
torch.optim.LBFGS computes it, in functional form.

**The functional form.** L-BFGS needs the loss and a way to re-evaluate it, so its ``update``
takes two keyword-only arguments besides the usual ones::

    updates, state = tx.update(grads, state, params, hparams, value=loss, value_fn=f)

- ``value``: the loss at ``params`` (a number or 0-d tensor), whose gradient is ``grads``;
- ``value_fn(params) -> (value, grads)``: evaluates the loss and its gradient at other
  parameters (a tree shaped like ``params``), purely; e.g. built on
  :func:`torch.func.grad_and_value`
  of a functional loss, or on a closure that loads the parameters into a module.

One ``update`` is one ``torch.optim.LBFGS.step(closure)``: up to ``max_iter`` iterations and
``max_eval`` evaluations; ``updates`` is the total displacement (the final parameters minus
``params``). With ``max_iter=1`` and no line search neither ``value`` nor ``value_fn`` is needed
(one quasi-Newton step per gradient). Chains pass both keywords down to every block.

**What holds.** ``update`` is pure (nothing is mutated, every step of the history lives in the
returned state) but *data-dependent*: like torch's, its stopping tests, the curvature test
``y's > 1e-10`` and the line search are Python decisions on values, so it synchronizes with the
host. It therefore does not run under ``torch.func.vmap``/``grad``,
``torch.compile(fullgraph=True)`` or CUDA-graph capture; the conformance suite registers it
with those checks explicitly excluded.

**State.** Global, not per leaf: the gradient, directions and history are flat vectors over all
parameter leaves (complex leaves as real pairs), of a fixed size ``history_size``, so the state's
structure never changes. A leaf whose gradient is ``None`` is frozen for that call: its
gradient counts as zero, its components of the direction are zero and its update is ``None``
(torch.optim.LBFGS, which uses a zero gradient but moves every parameter, is matched by the
drop-in class :class:`functional_optim.optim.LBFGS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import first_device
from ..base import (
    HParamError,
    Transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from .quasi_newton import two_loop

__all__ = ["LbfgsState", "scale_by_lbfgs"]


class LbfgsState(NamedTuple):
    """State of :func:`scale_by_lbfgs` (torch.optim.LBFGS's state, in fixed-size tensors).

    Attributes:
        func_evals: evaluations so far (0-d int64).
        n_iter: iterations so far (0-d int64).
        d: the last direction (flat, ``n``).
        t: the last step length (0-d float64).
        old_dirs: gradient differences :math:`y_i`, oldest first (``(history_size, n)``; rows
            ``>= num_old`` are unused).
        old_stps: steps :math:`s_i` (``(history_size, n)``).
        ro: :math:`1 / y_i^\\top s_i` (``(history_size,)``).
        num_old: how many history rows are in use (0-d int64).
        H_diag: the initial inverse-Hessian scale :math:`y^\\top s / y^\\top y` (0-d).
        prev_flat_grad: the last gradient (flat).
        prev_loss: the last loss (0-d float64; NaN before the first).
    """

    func_evals: torch.Tensor
    n_iter: torch.Tensor
    d: torch.Tensor
    t: torch.Tensor
    old_dirs: torch.Tensor
    old_stps: torch.Tensor
    ro: torch.Tensor
    num_old: torch.Tensor
    H_diag: torch.Tensor
    prev_flat_grad: torch.Tensor
    prev_loss: torch.Tensor


@dataclasses.dataclass
class Work:
    """The working state of one L-BFGS call, in torch.optim.LBFGS's own layout (lists of flat
    tensors, Python numbers); converted from/to :class:`LbfgsState` or a torch state dict."""

    func_evals: int = 0
    n_iter: int = 0
    d: Any = None
    t: Any = None
    old_dirs: list = dataclasses.field(default_factory=list)
    old_stps: list = dataclasses.field(default_factory=list)
    ro: list = dataclasses.field(default_factory=list)
    H_diag: Any = None
    prev_flat_grad: Any = None
    prev_loss: Any = None
    al: list | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    lr: float
    max_iter: int
    max_eval: int
    tolerance_grad: float
    tolerance_change: float
    history_size: int
    line_search_fn: str | None


# -- flat vectors ------------------------------------------------------------------------------


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def flat_dtype(leaves: list) -> torch.dtype:
    dtypes = [_real(p).dtype for p in leaves]
    dtype = dtypes[0] if dtypes else torch.float32
    for d in dtypes[1:]:
        dtype = torch.promote_types(dtype, d)
    return dtype


def flatten(grads: list, params: list) -> torch.Tensor:
    """One flat vector of the gradients (zeros for a missing or all-None one; dense for sparse)."""
    views = []
    for g, p in zip(grads, params):
        if g is None:
            view = torch.zeros(_real(p).numel(), dtype=_real(p).dtype, device=p.device)
        else:
            if g.is_sparse:
                g = g.to_dense()
            view = _real(g).reshape(-1)
        views.append(view)
    return torch.cat(views, 0)


def moved(params: list, t: Any, d: torch.Tensor) -> list:
    """``p + t d`` leaf by leaf, in each leaf's dtype (as torch's ``p.add_(d, alpha=t)``)."""
    out, offset = [], 0
    alpha = float(t)
    for p in params:
        r = _real(p)
        n = r.numel()
        new = torch.add(r, d[offset:offset + n].view_as(r), alpha=alpha).to(r.dtype)
        out.append(torch.view_as_complex(new) if p.is_complex() else new)
        offset += n
    return out


# -- line search -------------------------------------------------------------------------------


def _cubic_minimizer(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through ``(x1, f1)``, ``(x2, f2)`` with slopes ``g1``, ``g2``
    (Nocedal & Wright, eq. 3.59), clamped to ``bounds`` (default: the interval); the midpoint
    when the cubic has no minimum."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1**2 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2.0
    d2 = disc.sqrt() if isinstance(disc, torch.Tensor) else math.sqrt(disc)
    if x1 <= x2:
        x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        x = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(x, lo), hi)


class _Point(NamedTuple):
    t: Any
    f: Any
    g: Any
    gtd: Any


def strong_wolfe(evaluate: Callable, t, d: torch.Tensor, f, g, gtd, c1: float = 1e-4,
                 c2: float = 0.9, tolerance_change: float = 1e-9, max_ls: int = 25):
    """A step length satisfying the strong Wolfe conditions along ``d`` (bracketing, then cubic
    zoom; Nocedal & Wright, Algorithms 3.5/3.6, as in minFunc and torch.optim.LBFGS).

    ``evaluate(t) -> (loss, flat_grad)`` at ``x + t d``. Returns ``(loss, flat_grad, t, evals)``.
    """
    d_norm = d.abs().max()
    f_new, g_new = evaluate(t)
    evals = 1
    gtd_new = g_new.dot(d)
    prev = _Point(0, f, g, gtd)
    done = False
    ls_iter = 0
    bracket: list[_Point] = []
    while ls_iter < max_ls:  # bracketing: extrapolate until an interval holds a good step
        new = _Point(t, f_new, g_new, gtd_new)
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= prev.f):
            bracket = [prev, new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, done = [new], True
            break
        if gtd_new >= 0:
            bracket = [prev, new]
            break
        t_next = _cubic_minimizer(prev.t, prev.f, prev.gtd, t, f_new, gtd_new,
                                  bounds=(t + 0.01 * (t - prev.t), t * 10))
        prev, t = new, t_next
        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket = [_Point(0, f, g, None), _Point(t, f_new, g_new, None)]

    def order():
        return (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)

    low, high = order()
    insufficient = False
    while not done and ls_iter < max_ls:  # zoom: shrink the bracket around a good step
        if abs(bracket[1].t - bracket[0].t) * d_norm < tolerance_change:
            break
        t = _cubic_minimizer(*bracket[0][:2], bracket[0].gtd, *bracket[1][:2], bracket[1].gtd)
        t_max = max(bracket[0].t, bracket[1].t)
        t_min = min(bracket[0].t, bracket[1].t)
        margin = 0.1 * (t_max - t_min)
        if min(t_max - t, t - t_min) < margin:  # too close to an end: safeguard
            if insufficient or t >= t_max or t <= t_min:
                t = t_max - margin if abs(t - t_max) < abs(t - t_min) else t_min + margin
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        new = _Point(t, f_new, g_new, gtd_new)
        if f_new > (f + c1 * t * gtd) or f_new >= bracket[low].f:
            bracket[high] = new
            low, high = order()
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = new
    best = bracket[low]
    return best.f, best.g, best.t, evals


# -- the algorithm -----------------------------------------------------------------------------


def _two_loop(work: Work, flat_grad: torch.Tensor, history_size: int) -> torch.Tensor:
    """``-H g`` by the L-BFGS two-loop recursion
    (:func:`~functional_optim.transforms.quasi_newton.two_loop`) over the stored history, with
    torch's arithmetic (``add`` with a Python ``alpha``)."""
    if work.al is None:
        work.al = [None] * history_size
    r, alphas = two_loop(flat_grad.neg(), work.old_stps, work.old_dirs, work.ro, work.H_diag,
                         lambda a, b: a.dot(b), lambda x, a, y: x.add(y, alpha=float(a)))
    work.al[:len(alphas)] = alphas
    return r


def run(work: Work, params: list, loss: float, flat_grad: torch.Tensor,
        evaluate: Callable[[list], tuple[float, torch.Tensor]], cfg: Config,
        frozen: torch.Tensor | None = None) -> list:
    """One ``LBFGS.step``: mutates ``work`` and returns the final parameters (a new list).

    ``evaluate(params) -> (loss, flat_grad)``; ``frozen``: a 0/1 mask of coordinates whose
    direction is zeroed (leaves without a gradient), or ``None``.
    """
    work.func_evals += 1
    current_evals = 1
    if flat_grad.abs().max() <= cfg.tolerance_grad:  # already optimal
        return params
    d, t = work.d, work.t
    n_iter = 0
    opt_cond = False
    while n_iter < cfg.max_iter:
        n_iter += 1
        work.n_iter += 1
        if work.n_iter == 1:  # steepest descent, no history yet
            d = flat_grad.neg()
            work.old_dirs, work.old_stps, work.ro = [], [], []
            work.H_diag = 1
        else:
            y = flat_grad.sub(work.prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:  # curvature condition: keep the pair
                if len(work.old_dirs) == cfg.history_size:
                    work.old_dirs.pop(0)
                    work.old_stps.pop(0)
                    work.ro.pop(0)
                work.old_dirs.append(y)
                work.old_stps.append(s)
                work.ro.append(1.0 / ys)
                work.H_diag = ys / y.dot(y)
            d = _two_loop(work, flat_grad, cfg.history_size)
        if frozen is not None:
            d = d * frozen
        work.prev_flat_grad = flat_grad
        work.prev_loss = loss
        if work.n_iter == 1:
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * cfg.lr
        else:
            t = cfg.lr
        gtd = flat_grad.dot(d)
        if gtd > -cfg.tolerance_change:  # not a descent direction
            break
        evals = 0
        if cfg.line_search_fn is not None:
            x = params
            loss, flat_grad, t, evals = strong_wolfe(
                lambda step, x=x, d=d: evaluate(moved(x, step, d)), t, d, loss, flat_grad, gtd,
                max_ls=cfg.max_eval - current_evals)
            params = moved(x, t, d)
            opt_cond = bool(flat_grad.abs().max() <= cfg.tolerance_grad)
        else:
            params = moved(params, t, d)
            if n_iter != cfg.max_iter:
                loss, flat_grad = evaluate(params)
                opt_cond = bool(flat_grad.abs().max() <= cfg.tolerance_grad)
                evals = 1
        current_evals += evals
        work.func_evals += evals
        if n_iter == cfg.max_iter or current_evals >= cfg.max_eval or opt_cond:
            break
        if d.mul(t).abs().max() <= cfg.tolerance_change:  # no progress in the parameters
            break
        if abs(loss - work.prev_loss) < cfg.tolerance_change:  # nor in the loss
            break
    work.d, work.t = d, t
    return params


# -- the transform -----------------------------------------------------------------------------


def _check_config(owner: str, lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                  history_size, line_search_fn) -> int:
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "tolerance_grad", tolerance_grad)
    check_hparam(owner, "tolerance_change", tolerance_change)
    for name, value in (("max_iter", max_iter), ("history_size", history_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HParamError(f"{owner}: {name} must be a positive int, got {value!r}")
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    if not isinstance(max_eval, int) or isinstance(max_eval, bool):
        raise HParamError(f"{owner}: max_eval must be an int or None, got {max_eval!r}")
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"{owner}: only 'strong_wolfe' is supported, got {line_search_fn!r}")
    return max_eval


def _to_float(x: Any) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def scale_by_lbfgs(lr: float | torch.Tensor = 1, max_iter: int = 20, max_eval: int | None = None,
                   tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                   history_size: int = 100, line_search_fn: str | None = None) -> Transform:
    r"""L-BFGS (Nocedal, 1980; Liu & Nocedal, 1989), as torch.optim.LBFGS. Outputs the final
    (descent) update: the displacement of one ``LBFGS.step``.

    Each iteration :math:`k` sets :math:`d_k = -H_k g_k` by the two-loop recursion over the last
    ``history_size`` pairs :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i` with
    :math:`y_i^\top s_i > 10^{-10}`, :math:`H_k^0 = \frac{y^\top s}{y^\top y} I`; then
    :math:`x_{k+1} = x_k + t_k d_k` with :math:`t_k = \eta` (the first iteration ever:
    :math:`\eta\min(1, 1/\lVert g\rVert_1)`), or a step satisfying the strong Wolfe conditions
    (:math:`c_1 = 10^{-4}, c_2 = 0.9`) when ``line_search_fn="strong_wolfe"``. It stops after
    ``max_iter`` iterations or ``max_eval`` evaluations, when
    :math:`\lVert g\rVert_\infty \le` ``tolerance_grad``, or when the step, the loss change or
    :math:`-g^\top d` falls below ``tolerance_change``.

    See the module docstring for the keyword-only ``value``/``value_fn`` arguments of
    ``update`` and for what holds (pure, but host-synchronizing: no vmap/compile/capture).

    Args:
        lr: ``η`` (default 1).
        max_iter: iterations per update (static; default 20).
        max_eval: evaluations per update (static; default ``max_iter * 5 // 4``).
        tolerance_grad: first-order optimality tolerance (default 1e-7).
        tolerance_change: tolerance on changes of the loss and parameters (default 1e-9).
        history_size: pairs kept (static; default 100).
        line_search_fn: ``None`` or ``"strong_wolfe"`` (static).
    """
    owner = "scale_by_lbfgs"
    max_eval = _check_config(owner, lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                             history_size, line_search_fn)
    defaults = {"lr": lr, "tolerance_grad": tolerance_grad, "tolerance_change": tolerance_change}
    needs_fn = max_iter > 1 or line_search_fn is not None
    structural = dict(max_iter=max_iter, max_eval=max_eval, history_size=history_size,
                      line_search_fn=line_search_fn)

    def init(params):
        leaves = [p for p in _tree.leaves(params) if p is not None]
        dtype = flat_dtype(leaves)
        device = first_device(params)
        n = sum(_real(p).numel() for p in leaves)
        vec = torch.zeros(n, dtype=dtype, device=device)
        zero = torch.zeros((), dtype=dtype, device=device)
        count = torch.zeros((), dtype=torch.int64, device=device)
        return LbfgsState(
            count, count, vec, torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros((history_size, n), dtype=dtype, device=device),
            torch.zeros((history_size, n), dtype=dtype, device=device),
            torch.zeros(history_size, dtype=dtype, device=device), count, zero, vec,
            torch.full((), math.nan, dtype=torch.float64, device=device))

    def update(updates, state, params=None, hparams=None, *, value=None, value_fn=None,
               **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams", structural)
        check_state(owner, state, LbfgsState)
        if missing_params(owner, updates, params) or _tree.num_leaves(updates) == 0:
            return updates, state
        if needs_fn and (value is None or value_fn is None):
            raise TypeError(
                f"{owner} with max_iter > 1 or a line search re-evaluates the loss: call "
                "update(grads, state, params, value=loss, value_fn=fn) with "
                "fn(params) -> (loss, grads)")
        _tree.check_leaves(owner, updates, params, f"{owner} params", "parameter")
        spec = _tree.structure(params)
        flat_g = _tree.leaves(updates)
        flat_p = _tree.leaves(params)
        present = [i for i, p in enumerate(flat_p) if p is not None]
        leaves = [flat_p[i] for i in present]
        n = sum(_real(p).numel() for p in leaves)
        if state.d.shape != (n,) or state.old_dirs.shape[0] != history_size:
            raise _tree.TreeMismatchError(
                f"{owner}: the state is for {state.d.shape[0]} parameter elements and a history "
                f"of {state.old_dirs.shape[0]}, the parameters have {n} (history {history_size})")
        dtype, device = flat_dtype(leaves), first_device(params)
        if state.d.dtype != dtype or state.d.device != device:
            raise _tree.TreeMismatchError(
                f"{owner}: the state holds {state.d.dtype} on {state.d.device}, the parameters "
                f"need {dtype} on {device} (a state made by init for other parameters?)")
        frozen = None
        if any(flat_g[i] is None for i in present):
            frozen = flatten([None if flat_g[i] is None else torch.ones_like(flat_g[i])
                              for i in present], leaves)
            frozen = frozen.to(state.d.dtype)

        def as_flat(grads):
            g = _tree.flatten_like(grads, spec, f"{owner} value_fn grads", "params")
            return flatten([g[i] for i in present], leaves).to(state.d.dtype)

        def evaluate(new_leaves):
            full = list(flat_p)
            for i, x in zip(present, new_leaves):
                full[i] = x
            loss, grads = value_fn(spec.unflatten(full))
            return _to_float(loss), as_flat(grads)

        cfg = Config(_to_float(h["lr"]), max_iter, max_eval, _to_float(h["tolerance_grad"]),
                     _to_float(h["tolerance_change"]), history_size, line_search_fn)
        work = state_to_work(state)
        loss = math.nan if value is None else _to_float(value)
        final = run(work, leaves, loss, as_flat(updates), evaluate, cfg, frozen)
        out = [None] * len(flat_p)
        for i, x, p in zip(present, final, leaves):
            if flat_g[i] is not None:
                out[i] = x - p
        return spec.unflatten(out), work_to_state(work, state)

    return Transform(init, update, defaults)


def state_to_work(state: LbfgsState) -> Work:
    num_old = int(state.num_old)
    n_iter = int(state.n_iter)
    return Work(
        func_evals=int(state.func_evals), n_iter=n_iter,
        d=state.d if n_iter else None, t=float(state.t) if n_iter else None,
        old_dirs=list(state.old_dirs[:num_old].unbind()),
        old_stps=list(state.old_stps[:num_old].unbind()),
        ro=list(state.ro[:num_old].unbind()), H_diag=state.H_diag if n_iter else None,
        prev_flat_grad=state.prev_flat_grad if n_iter else None,
        prev_loss=float(state.prev_loss) if n_iter else None)


def work_to_state(work: Work, like: LbfgsState) -> LbfgsState:
    """``work`` as an :class:`LbfgsState` shaped like ``like``."""
    def scalar(x, dtype):
        if isinstance(x, torch.Tensor):
            return x.detach().to(dtype=dtype, device=device).reshape(())
        return torch.tensor(math.nan if x is None else x, dtype=dtype, device=device)

    def rows(items, template):
        if not items:
            return torch.zeros_like(template)
        stacked = torch.stack([x.to(template.dtype) for x in items])
        pad = template.shape[0] - stacked.shape[0]
        if pad:
            stacked = torch.cat([stacked, template.new_zeros((pad, *template.shape[1:]))])
        return stacked

    device, dtype = like.d.device, like.d.dtype
    count = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    return LbfgsState(
        count(work.func_evals), count(work.n_iter),
        like.d if work.d is None else work.d.to(dtype),
        scalar(work.t if work.t is not None else 0.0, torch.float64),
        rows(work.old_dirs, like.old_dirs), rows(work.old_stps, like.old_stps),
        rows([x.reshape(()) if isinstance(x, torch.Tensor) else torch.tensor(x)
              for x in work.ro], like.ro),
        count(len(work.old_dirs)),
        like.H_diag if work.H_diag is None else scalar(work.H_diag, dtype),
        like.prev_flat_grad if work.prev_flat_grad is None else work.prev_flat_grad.to(dtype),
        scalar(work.prev_loss, torch.float64))

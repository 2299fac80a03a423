"""optax's pure L-BFGS: the L-BFGS direction, a sign (or learning rate) and a line search."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..base import Transform, chain
from ..registry import DropInProtocol, register
from ..transforms import scale_by_learning_rate
from ..transforms.quasi_newton import scale_by_lbfgs_direction
from ..transforms.zoom import scale_by_zoom_linesearch
from ._common import _check_lr, _reparametrized

__all__ = ["optax_lbfgs"]

def _closure_step(optimizer: Any, closure: Any, run: Callable) -> Any:
    """The drop-in ``OptaxLBFGS``'s step, as torch.optim.LBFGS's: the closure (which computes
    the loss and calls ``backward``) gives the loss and gradient at the parameters, and, at the
    line search's trial points, through ``value_and_grad_fn`` (the parameters set to the trial
    point for the call, then restored with their gradients). One param group, as torch's.
    Without a line search (``linesearch=None``) it is the usual step (the closure optional)."""
    if all(group["linesearch"] is None for group in optimizer.param_groups):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        run()
        return loss
    if closure is None:
        raise RuntimeError(
            f"{type(optimizer).__name__}.step needs a closure that computes the loss and calls "
            "backward (its line search re-evaluates it), as torch.optim.LBFGS: "
            "opt.step(closure)")
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"{type(optimizer).__name__} doesn't support per-parameter options "
                         "(parameter groups): its line search moves all parameters together")
    with torch.enable_grad():
        loss = closure()
    group = optimizer.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    names = optimizer._names(group, params)
    grads = {n: p.grad for n, p in zip(names, params)}

    def value_and_grad_fn(trial):
        saved = [(p.detach().clone(), p.grad) for p in params]
        with torch.no_grad():
            for n, p in zip(names, params):
                p.copy_(trial[n])
                p.grad = None
        with torch.enable_grad():
            value = closure()
        at = {n: p.grad if p.grad is not None else torch.zeros_like(p)
              for n, p in zip(names, params)}
        with torch.no_grad():
            for p, (data, grad) in zip(params, saved):
                p.copy_(data)
                p.grad = grad
        return torch.as_tensor(value).detach(), at

    run(value=torch.as_tensor(loss).detach(), grad=grads, value_and_grad_fn=value_and_grad_fn)
    return loss


@register(paper=('Liu & Nocedal, 1989, "On the Limited Memory BFGS Method for Large Scale '
                 'Optimization" (optax\'s pure L-BFGS with a zoom line search)'),
          drop_in="OptaxLBFGS", protocol=DropInProtocol(step=_closure_step))
def optax_lbfgs(lr: float | torch.Tensor = 1.0, memory_size: int = 10,
                scale_init_precond: bool = True, linesearch: str | None = "zoom",
                max_linesearch_steps: int = 20, tol: float = 0.0, increase_factor: float = 2.0,
                slope_rtol: float = 1e-4, curv_rtol: float = 0.9,
                approx_dec_rtol: float | None = 1e-6, stepsize_precision: float = 1e-5, *,
                early_exit: bool = False) -> Transform:
    r"""L-BFGS as optax's ``lbfgs``: ``chain(scale_by_lbfgs_direction(memory_size,
    scale_init_precond), scale_by_learning_rate(lr), scale_by_zoom_linesearch(
    max_linesearch_steps, ..., initial_guess_strategy="one"))``: each update is one
    quasi-Newton step :math:`w \leftarrow w - \eta_k\,\mathrm{lr}\,P_k g_k` with
    :math:`\eta_k` from the zoom search. optax's ``learning_rate=None`` (its default: the
    search's step alone, a sign flip) is ``lr=1`` (the same numbers: a product by ``-1.0``).

    ``update(grads, state, params, hparams, *, value=loss, grad=grads, value_fn=f)``, as the
    line search needs (:mod:`functional_optim.transforms.linesearch`: ``f(params, **fn_kwargs)
    -> loss``, differentiated by ``torch.func``). :func:`value_and_grad_from_state` gives the
    value and gradient the search computed at the new point (no second evaluation)::

        f = lambda p: ((p["w"] - 1) ** 2).sum() + (p["w"] ** 4).sum()
        tx = optax_lbfgs()
        params = {"w": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)}
        state = tx.init(params)
        value_and_grad = value_and_grad_from_state(f)
        for _ in range(10):
            value, grad = value_and_grad(params, state=state)
            updates, state = tx.update(grad, state, params, value=value, grad=grad,
                                       value_fn=f)
            params = apply_updates(params, updates)

    Pure and capturable (fixed-length masked loops; see the line search's module): every update
    evaluates the objective and its gradient ``max_linesearch_steps`` times unless
    ``early_exit`` (structural; eager only) stops the search when it is done.

    The drop-in class ``functional_optim.optim.OptaxLBFGS`` steps as torch.optim.LBFGS does:
    ``opt.step(closure)`` with a closure that computes the loss and calls ``backward``; the
    search re-evaluates it at its trial points (``early_exit=True`` saves the evaluations after
    the search is done). One param group, as torch's.

    The hyperparameters are ``lr`` and the search's six (the same keys whatever the structural
    options: without a search, or with ``approx_dec_rtol=None``, those unused are inert).

    Args:
        lr: a step factor (default 1; a number, 0-d tensor or schedule).
        memory_size: pairs kept (static; default 10).
        scale_init_precond: scaled initial preconditioner (static; default True).
        linesearch: ``"zoom"`` (default) or ``None`` (no search: :math:`-\mathrm{lr}\,P_k g_k`)
            (static). optax's other searches: chain the blocks (see the docs).
        max_linesearch_steps: the zoom search's iterations (static; default 20).
        tol: the zoom search's tolerance on both conditions (default 0); this and the next
            five are :func:`~functional_optim.transforms.scale_by_zoom_linesearch`'s.
        increase_factor: the bracketing's growth of the step (default 2).
        slope_rtol: ``c1``, sufficient decrease (default 1e-4).
        curv_rtol: ``c2``, curvature (default 0.9).
        approx_dec_rtol: ``c3``, Hager-Zhang's approximate decrease (default 1e-6; ``None``:
            Armijo's decrease only, structural).
        stepsize_precision: the interval length that ends a zoom (default 1e-5).
        early_exit: stop the search when done, reading it on the host (static).
    """
    owner = "optax_lbfgs"
    if linesearch not in ("zoom", None):
        raise ValueError(f"{owner}: linesearch must be 'zoom' or None, got {linesearch!r}; "
                         "chain scale_by_lbfgs_direction, scale(-1.0) and another search")
    _check_lr(owner, lr)
    search = scale_by_zoom_linesearch(
        max_linesearch_steps, None, tol, increase_factor, slope_rtol, curv_rtol,
        approx_dec_rtol, stepsize_precision, "one", early_exit=early_exit)
    blocks = {"direction": scale_by_lbfgs_direction(memory_size, scale_init_precond),
              "lr": scale_by_learning_rate(lr)}
    if linesearch == "zoom":
        blocks["linesearch"] = search
    defaults = dict(lr=lr, tol=tol, increase_factor=increase_factor, slope_rtol=slope_rtol,
                    curv_rtol=curv_rtol, stepsize_precision=stepsize_precision,
                    approx_dec_rtol=1e-6 if approx_dec_rtol is None else approx_dec_rtol)

    def to_inner(h):
        out = {"direction": {}, "lr": {"lr": h["lr"]}}
        if linesearch == "zoom":
            out["linesearch"] = {k: h[k] for k in search.hparams}
        return out

    structural = dict(memory_size=memory_size, scale_init_precond=scale_init_precond,
                      linesearch=linesearch, max_linesearch_steps=max_linesearch_steps,
                      early_exit=early_exit)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)

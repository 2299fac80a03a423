r"""optax's zoom line search (strong Wolfe conditions; Nocedal & Wright, 1999, Algorithms 3.5
and 3.6, with Hager & Zhang's approximate decrease) as a fixed-length masked loop. Its
``update`` takes ``value``, ``grad`` and ``value_fn`` as the backtracking search's does: see
:mod:`functional_optim.transforms.linesearch` for the functional form and what holds.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import first_device
from ..base import Transform, check_hparam, check_state, missing_params, resolve_hparams
from .linesearch import (
    _as,
    _check_steps,
    _kept,
    _like_updates,
    _objective,
    _scalar,
    _select,
    _slope,
    _stop,
    _value_dtype,
)

__all__ = ["ZoomLinesearchInfo", "ScaleByZoomLinesearchState", "scale_by_zoom_linesearch"]



def _cubic_min(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through ``(a, fa)`` (slope ``fpa``), ``(b, fb)`` and
    ``(c, fc)`` (as scipy's ``_cubicmin``); NaN where it has none (safe for autograd: the
    invalid branches divide and take roots of substitutes)."""
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    ok = denom != 0
    denom = torch.where(ok, denom, torch.ones_like(denom))
    rb, rc = fb - fa - fpa * db, fc - fa - fpa * dc
    big_a = (dc ** 2 * rb - db ** 2 * rc) / denom
    big_b = (-(dc ** 3) * rb + db ** 3 * rc) / denom
    radical = big_b * big_b - 3.0 * big_a * fpa
    ok = ok & (radical >= 0) & (big_a != 0)
    one = torch.ones_like(radical)
    x = a + (-big_b + torch.sqrt(torch.where(ok, radical, one))) / (
        3.0 * torch.where(ok, big_a, one))
    return torch.where(ok, x, torch.full_like(x, math.nan))


def _quad_min(a, fa, fpa, b, fb):
    """The critical point of the parabola through ``(a, fa)`` (slope ``fpa``) and ``(b, fb)``
    (as scipy's ``_quadmin``); NaN where it has none."""
    db = b - a
    ok = db != 0
    db2 = torch.where(ok, db * db, torch.ones_like(db))
    big_b = (fb - fa - fpa * db) / db2
    ok = ok & (big_b != 0)
    x = a - fpa / (2.0 * torch.where(ok, big_b, torch.ones_like(big_b)))
    return torch.where(ok, x, torch.full_like(x, math.nan))


class ZoomLinesearchInfo(NamedTuple):
    """What the last zoom search did (0-d tensors).

    Attributes:
        num_linesearch_steps: iterations (objective values and gradients) that counted (int64).
        decrease_error: the sufficient-decrease error at the end (0: satisfied).
        curvature_error: the curvature error at the end (0: satisfied).
    """

    num_linesearch_steps: torch.Tensor
    decrease_error: torch.Tensor
    curvature_error: torch.Tensor


class ScaleByZoomLinesearchState(NamedTuple):
    """State of :func:`scale_by_zoom_linesearch`.

    Attributes:
        learning_rate: the step accepted last (1 at first), in the parameters' real dtype.
        value: the objective at the accepted point (``inf`` at first).
        grad: the gradient there (zeros at first).
        info: :class:`ZoomLinesearchInfo`.
    """

    learning_rate: torch.Tensor
    value: torch.Tensor
    grad: Any
    info: ZoomLinesearchInfo


_POINT = ("stepsize", "value", "slope")  # a trial point, as the bracket keeps it


def scale_by_zoom_linesearch(
        max_linesearch_steps: int, max_learning_rate: float | None = None, tol: float = 0.0,
        increase_factor: float = 2.0, slope_rtol: float = 1e-4, curv_rtol: float = 0.9,
        approx_dec_rtol: float | None = 1e-6, stepsize_precision: float = 1e-5,
        initial_guess_strategy: str = "keep", *, early_exit: bool = False) -> Transform:
    r"""Line search for the strong Wolfe conditions by bracketing and zoom (Nocedal & Wright,
    1999, Algorithms 3.5 and 3.6), with Hager & Zhang's (2006) approximate decrease, as optax's.
    Outputs :math:`\eta u`.

    With :math:`\phi(\eta) = f(w + \eta u)` and :math:`\phi'(\eta) =
    \mathrm{Re}\langle\nabla f(w + \eta u), u\rangle`, it seeks :math:`\eta` with decrease and
    curvature errors at most ``tol``:

    .. math::
        e_d = \max\bigl(0, \min(\phi(\eta) - \phi(0) - c_1\eta\phi'(0),\ \max(\phi'(\eta) -
        (2c_1 - 1)\phi'(0),\ \phi(\eta) - \phi(0) - c_3|\phi(0)|))\bigr),\quad
        e_c = \max(0, |\phi'(\eta)| - c_2|\phi'(0)|)

    (the inner ``min`` only with ``approx_dec_rtol`` :math:`= c_3` not ``None``; NaN counts as
    ``inf``). Bracketing tries the guess (1, or the last step for ``"keep"``), then grows it by
    ``increase_factor`` (capped by ``max_learning_rate``) until an interval holds a good step;
    zoom then tries the cubic's minimizer (through the bracket's ends and the last discarded
    point) if it lies inside the interval's middle 60%, else the quadratic's (middle 80%), else
    the midpoint. After ``max_linesearch_steps`` iterations, or an interval below
    ``stepsize_precision`` with a sufficient-decrease step found, it takes the best step with
    sufficient decrease (if any, or if the last value is not finite).

    The update takes ``value``, ``grad`` and ``value_fn`` (see the module docstring); each
    iteration evaluates the objective and its gradient; the search is a fixed-length masked loop
    of ``max_linesearch_steps`` iterations (``early_exit``: stops when done).

    Example (gradient descent with the zoom search, reusing its value and gradient)::

        f = lambda p: (p["w"] ** 2).sum()
        tx = chain(sgd(lr=1.0), scale_by_zoom_linesearch(15))
        params = {"w": torch.tensor([1.0, 2.0, 3.0])}
        state = tx.init(params)
        value_and_grad = value_and_grad_from_state(f)
        for _ in range(3):
            value, grad = value_and_grad(params, state=state)
            updates, state = tx.update(grad, state, params, value=value, grad=grad,
                                       value_fn=f)
            params = apply_updates(params, updates)        # f: 14 -> 0 (the exact step 1/2)

    Args:
        max_linesearch_steps: iterations (static).
        max_learning_rate: largest step (``None``: unbounded; static whether ``None``).
        tol: tolerance on both errors (default 0).
        increase_factor: growth of the trial step while bracketing (default 2).
        slope_rtol: :math:`c_1` (default 1e-4).
        curv_rtol: :math:`c_2` (default 0.9; ``inf`` drops the curvature condition).
        approx_dec_rtol: :math:`c_3` (default 1e-6; ``None``: the plain Armijo decrease; static
            whether ``None``).
        stepsize_precision: the interval length below which a step with sufficient decrease is
            taken (default 1e-5).
        initial_guess_strategy: ``"keep"`` (the last step) or ``"one"`` (static).
        early_exit: stop when done, reading it on the host (static; see the module).
    """
    owner = "scale_by_zoom_linesearch"
    _check_steps(owner, "max_linesearch_steps", max_linesearch_steps)
    if initial_guess_strategy not in ("keep", "one"):
        raise ValueError(f"{owner}: initial_guess_strategy must be 'keep' or 'one', got "
                         f"{initial_guess_strategy!r}")
    if max_learning_rate is not None:
        check_hparam(owner, "max_learning_rate", max_learning_rate, gt=0)
    if approx_dec_rtol is not None:
        check_hparam(owner, "approx_dec_rtol", approx_dec_rtol, ge=0)
    check_hparam(owner, "tol", tol, ge=0)
    check_hparam(owner, "increase_factor", increase_factor, gt=1)
    check_hparam(owner, "slope_rtol", slope_rtol, ge=0)
    check_hparam(owner, "curv_rtol", curv_rtol, ge=0)
    check_hparam(owner, "stepsize_precision", stepsize_precision, ge=0)
    defaults = dict(tol=tol, increase_factor=increase_factor, slope_rtol=slope_rtol,
                    curv_rtol=curv_rtol, stepsize_precision=stepsize_precision)
    if max_learning_rate is not None:
        defaults["max_learning_rate"] = max_learning_rate
    if approx_dec_rtol is not None:
        defaults["approx_dec_rtol"] = approx_dec_rtol
    structural = dict(max_linesearch_steps=max_linesearch_steps,
                      initial_guess_strategy=initial_guess_strategy, early_exit=early_exit)

    def init(params):
        device, dtype = first_device(params), _value_dtype(params)
        inf = torch.full((), math.inf, dtype=dtype, device=device)
        return ScaleByZoomLinesearchState(
            torch.ones((), dtype=dtype, device=device), inf, _tree.zeros_like(params),
            ZoomLinesearchInfo(torch.zeros((), dtype=torch.int64, device=device), inf, inf))

    def update(updates, state, params=None, hparams=None, *, value=None, grad=None,
               value_fn=None, value_and_grad_fn=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams", structural)
        check_state(owner, state, ScaleByZoomLinesearchState)
        if missing_params(owner, updates, params, "to evaluate the objective") or \
                _tree.num_leaves(updates) == 0:
            return updates, state
        _, value_and_grad_at = _objective(owner, value, grad, value_fn, value_and_grad_fn,
                                          extra)
        like = state.learning_rate
        h = {k: _as(v, like) for k, v in h.items()}
        grad = _like_updates(updates, grad)
        value0 = _scalar(owner, "value", value, like)
        slope0 = _slope(grad, updates).to(like.dtype)
        guess = torch.ones_like(like) if initial_guess_strategy == "one" else state.learning_rate

        def errors(t, v, slope):
            dec = v - value0 - h["slope_rtol"] * t * slope0
            if approx_dec_rtol is not None:
                approx = torch.maximum(slope - (2.0 * h["slope_rtol"] - 1.0) * slope0,
                                       v - value0 - h["approx_dec_rtol"] * value0.abs())
                dec = torch.minimum(approx, dec)
            curv = slope.abs() - h["curv_rtol"] * slope0.abs()
            dec, curv = (torch.where(torch.isnan(x), math.inf, torch.clamp(x, min=0.0))
                         for x in (dec, curv))
            return dec, curv

        zero = torch.zeros_like(like)
        false = torch.zeros_like(like, dtype=torch.bool)
        inf = torch.full_like(like, math.inf)
        s = dict(count=torch.zeros_like(state.info.num_linesearch_steps), stepsize=zero,
                 value=value0, grad=grad, slope=slope0, dec=inf, curv=inf,
                 interval_found=false, done=false, failed=false,
                 low=zero, value_low=value0, slope_low=slope0,
                 high=zero, value_high=value0, slope_high=slope0,
                 cubic_ref=zero, value_cubic_ref=value0,
                 safe_stepsize=zero, safe_value=value0, safe_grad=grad)
        for i in range(max_linesearch_steps):
            active = torch.logical_not(s["done"] | s["failed"])
            if _stop(early_exit, i, active):
                break
            new = _zoom_iteration(s, h, guess, params, updates, value_and_grad_at, errors,
                                  max_linesearch_steps, max_learning_rate is not None)
            s = {k: _select(active, new[k], s[k]) for k in s}
        lr = s["stepsize"]
        return _tree.scale(updates, lr), ScaleByZoomLinesearchState(
            lr, s["value"], _kept(state.grad, s["grad"]),
            ZoomLinesearchInfo(s["count"], s["dec"], s["curv"]))

    return Transform(init, update, defaults)


def _zoom_iteration(s: dict, h: dict, guess, params, updates, value_and_grad_at, errors,
                    max_steps: int, bounded: bool) -> dict:
    """One iteration of the zoom search on the state ``s`` (a dict): a bracketing step before
    an interval is found, a zoom step after; both are computed on scalars and the right one is
    selected, with one evaluation at the selected trial step."""
    count = s["count"]
    # bracketing (Algorithm 3.5): the guess first, then a growing step
    grown = torch.where(count == 0, guess, h["increase_factor"] * s["stepsize"])
    reached = torch.zeros_like(s["done"])
    if bounded:
        reached = grown >= h["max_learning_rate"]
        grown = torch.clamp(grown, max=h["max_learning_rate"])
    # zoom (Algorithm 3.6): cubic, quadratic or bisection inside the bracket
    low, high = s["low"], s["high"]
    delta = (high - low).abs()
    left, right = torch.minimum(low, high), torch.maximum(low, high)
    cubic = _cubic_min(low, s["value_low"], s["slope_low"], high, s["value_high"],
                       s["cubic_ref"], s["value_cubic_ref"])
    use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
    quad = _quad_min(low, s["value_low"], s["slope_low"], high, s["value_high"])
    use_quad = (torch.logical_not(use_cubic) & (quad > left + 0.1 * delta)
                & (quad < right - 0.1 * delta))
    middle = torch.where(use_cubic, cubic, torch.where(use_quad, quad, (low + high) / 2.0))
    zooming = s["interval_found"]
    t = torch.where(zooming, middle, grown)

    v, g = value_and_grad_at(_tree.add(params, updates, t))
    v, g = torch.as_tensor(v, device=t.device).to(t.dtype), _like_updates(updates, g)
    slope = _slope(g, updates).to(t.dtype)
    dec, curv = errors(t, v, slope)
    error = torch.maximum(dec, curv)
    point = dict(stepsize=t, value=v, slope=slope)
    last_step = count + 1 >= max_steps
    sufficient = dec <= h["tol"]

    # the bracketing step's outcome
    set_high = (dec > 0) | ((v >= s["value"]) & (count > 0))
    set_low = (slope >= 0) & torch.logical_not(set_high)
    prev = {k: s[k] for k in _POINT}
    b_low = {k: torch.where(set_low, point[k], prev[k]) for k in _POINT}
    b_high = {k: torch.where(set_low, prev[k], point[k]) for k in _POINT}
    b_found = set_high | set_low | (error <= h["tol"])
    b_done = (error <= h["tol"]) | (reached & torch.logical_not(b_found))
    b_safe = sufficient
    # the zoom step's outcome
    z_safe = sufficient & (v < s["safe_value"])
    z_done = error <= h["tol"]
    high_to_middle = (dec > 0) | (v >= s["value_low"])
    high_to_low = (slope * (high - low) >= 0) & torch.logical_not(high_to_middle)
    old_low = {k: s[_bracket_key("low", k)] for k in _POINT}
    old_high = {k: s[_bracket_key("high", k)] for k in _POINT}
    z_high = {k: torch.where(high_to_low, old_low[k],
                             torch.where(high_to_middle, point[k], old_high[k])) for k in _POINT}
    z_low = {k: torch.where(high_to_middle, old_low[k], point[k]) for k in _POINT}
    moved_high = high_to_middle | high_to_low
    z_ref = torch.where(moved_high, high, low), torch.where(moved_high, s["value_high"],
                                                            s["value_low"])

    new_low = {k: torch.where(zooming, z_low[k], b_low[k]) for k in _POINT}
    new_high = {k: torch.where(zooming, z_high[k], b_high[k]) for k in _POINT}
    take_safe = torch.where(zooming, z_safe, b_safe)
    safe_stepsize = torch.where(take_safe, t, s["safe_stepsize"])
    safe_value = torch.where(take_safe, v, s["safe_value"])
    safe_grad = _select(take_safe, g, s["safe_grad"])
    too_small = (delta <= h["stepsize_precision"]) & (safe_stepsize > 0)
    done = torch.where(zooming, z_done, b_done)
    failed = torch.where(zooming, last_step | too_small, last_step) & torch.logical_not(done)
    # a failed search falls back on the best step with sufficient decrease
    fallback = failed & ((safe_stepsize > 0) | torch.isinf(dec))
    out = dict(
        count=count + 1, stepsize=torch.where(fallback, safe_stepsize, t),
        value=torch.where(fallback, safe_value, v), grad=_select(fallback, safe_grad, g),
        slope=slope, dec=dec, curv=curv, interval_found=torch.where(zooming, zooming, b_found),
        done=done, failed=failed,
        cubic_ref=torch.where(zooming, z_ref[0], new_low["stepsize"]),
        value_cubic_ref=torch.where(zooming, z_ref[1], new_low["value"]),
        safe_stepsize=safe_stepsize, safe_value=safe_value, safe_grad=safe_grad)
    for end, point_ in (("low", new_low), ("high", new_high)):
        for k in _POINT:
            out[_bracket_key(end, k)] = point_[k]
    return out


def _bracket_key(end: str, field: str) -> str:
    """The state's key of a bracket end's field: ``low``, ``value_low``, ``slope_low``, ..."""
    return end if field == "stepsize" else f"{field}_{end}"

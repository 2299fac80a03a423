r"""Distance over Gradients: DoG, DoWG and layer-wise DoG (optax's ``contrib.dog``,
``contrib.dowg`` and ``scale_by_distance_over_gradients``). The step size is a distance from
the initial parameters over a sum of gradient norms: no learning rate to tune.

DoG's and DoWG's distances and sums are global scalars (the module's policy of
:mod:`functional_optim.transforms.parameter_free`: 0-d tensors of the scalar dtype; sums over
the leaves with an update, complex leaves as pairs of reals); layer-wise DoG keeps them per
leaf. Their output keeps the updates' sign: a learning-rate block follows (the aliases
:func:`functional_optim.dog` and :func:`functional_optim.dowg`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import cast_hparams, elementwise, full, init_count, safe_sqrt, scalar_dtype
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from .basic import _scale_rule
from .parameter_free import _clone, _real, _square, at_least, global_scalar, global_sum

__all__ = [
    "ScaleByDogState",
    "scale_by_dog",
    "ScaleByDowgState",
    "scale_by_dowg",
    "ScaleByDistanceOverGradientsState",
    "scale_by_distance_over_gradients",
]


def _distance_squared(p: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
    d = p - p0
    return d * d


_INIT_STEPS = ("heuristic", "distance", "learning_rate")


class ScaleByDogState(NamedTuple):
    """State of :func:`scale_by_dog`.

    Attributes:
        step: updates so far (0-d int64, global).
        max_dist: :math:`\\bar r`, the largest distance from :math:`x_0` seen (with the initial
            one; global scalar).
        sum_sq_norm_grads: :math:`G`, the sum of the squared gradient norms (global scalar).
        init_params: :math:`x_0`.
        init_norm: :math:`\\|x_0\\|` for the ``"heuristic"`` initial step (global scalar), else
            an empty :class:`EmptyState`.
    """

    step: Any
    max_dist: Any
    sum_sq_norm_grads: Any
    init_params: Any
    init_norm: Any = EmptyState()


def _scaled(owner: str, updates: Any, scale: torch.Tensor) -> Any:
    (out,) = elementwise(_scale_rule, {"step_size": scale}, updates, name=owner)
    return out


def scale_by_dog(init_step: float = 1e-6, eps: float = 1e-8, *,
                 init_step_type: str = "heuristic") -> Transform:
    r"""Distance over Gradients (Ivgi, Hinder & Carmon, 2023, *DoG is SGD's Best Friend: A
    Parameter-Free Dynamic Step Size Schedule*), as optax's ``contrib.dog`` computes it: the
    updates times

    .. math::
        \eta_t = \frac{\bar r_t}{\sqrt{G_t + \epsilon}}, \qquad
        \bar r_t = \max(r_\epsilon, \max_{k \le t} \|x_k - x_0\|), \qquad
        G_t = \sum_{k \le t} \|g_k\|^2

    (global norms over the tree). ``init_step_type`` says what ``init_step`` (:math:`v`) is:
    ``"heuristic"`` :math:`r_\epsilon = v(1 + \|x_0\|)` (the paper suggests 1e-6, 1e-4 with
    batch normalization); ``"distance"`` :math:`r_\epsilon = v`; ``"learning_rate"``
    :math:`r_\epsilon = 0` and the first step is :math:`\eta_1 = v`. The output keeps the
    updates' sign: put a (descending) learning-rate block after it, as :func:`functional_optim.dog`
    does. Needs ``params``; global scalars as in the module's policy (``init`` reads
    :math:`\|x_0\|` for the heuristic: give it the real parameters).

    Args:
        init_step: :math:`v` (default 1e-6).
        eps: ``ε`` added to :math:`G` (default 1e-8).
        init_step_type: ``"heuristic"``, ``"distance"`` or ``"learning_rate"`` (structural).
    """
    owner = "scale_by_dog"
    if init_step_type not in _INIT_STEPS:
        raise HParamError(f"{owner}: init_step_type must be one of {_INIT_STEPS}, got "
                          f"{init_step_type!r}")
    check_hparam(owner, "init_step", init_step, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"init_step": init_step, "eps": eps}
    heuristic = init_step_type == "heuristic"

    def init(params):
        zero = global_scalar(params)
        norm = safe_sqrt(global_sum(owner, zero, _square, params, params), nonnegative=True)
        return ScaleByDogState(zero.long(), zero, global_scalar(params), _clone(params),
                               norm if heuristic else EmptyState())

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByDogState)
        if missing_params(owner, updates, params, "it measures the distance to x_0"):
            return updates, state
        like = state.max_dist
        hs = cast_hparams(h, like)
        value = hs["init_step"]
        dist = safe_sqrt(global_sum(owner, like, _distance_squared, updates, params,
                                    state.init_params), nonnegative=True)
        r_eps = {"heuristic": lambda: value * (1 + state.init_norm), "distance": lambda: value,
                 "learning_rate": lambda: 0.0}[init_step_type]()
        max_dist = torch.maximum(at_least(like, r_eps), dist)
        grads = state.sum_sq_norm_grads + global_sum(owner, like, _square, updates, updates)
        eta = max_dist / torch.sqrt(grads + hs["eps"])
        if init_step_type == "learning_rate":
            eta = torch.where(state.step == 0, value, eta)
        return _scaled(owner, updates, eta), ScaleByDogState(
            state.step + 1, max_dist, grads, state.init_params, state.init_norm)

    return Transform(init, update, defaults)


class ScaleByDowgState(NamedTuple):
    """State of :func:`scale_by_dowg`.

    Attributes:
        estim_sq_dist: :math:`\\bar r^2`, the largest squared distance from :math:`x_0` seen
            (with the initial guess; global scalar).
        weighted_sq_norm_grads: :math:`v`, the weighted sum of squared gradient norms (global
            scalar).
        init_params: :math:`x_0`.
    """

    estim_sq_dist: Any
    weighted_sq_norm_grads: Any
    init_params: Any


def scale_by_dowg(init_estim_sq_dist: float | None = None, eps: float = 1e-4) -> Transform:
    r"""Distance over Weighted Gradients (Khaled, Mishchenko & Jin, 2023, *DoWG Unleashed: An
    Efficient Universal Parameter-Free Gradient Descent Method*), as optax's ``contrib.dowg``
    computes it: the updates times

    .. math::
        \bar r_t^2 = \max(\bar r_{t-1}^2, \|x_t - x_0\|^2), \qquad
        v_t = v_{t-1} + \bar r_t^2 \|g_t\|^2, \qquad
        \eta_t = \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}

    with :math:`\bar r_0^2` the ``init_estim_sq_dist`` (``None``: ``eps``). The output keeps the
    updates' sign (a learning-rate block follows, as in :func:`functional_optim.dowg`). Needs
    ``params``; global scalars as in the module's policy.

    Args:
        init_estim_sq_dist: :math:`\bar r_0^2` (default ``None``: ``eps``).
        eps: ``ε`` (default 1e-4).
    """
    owner = "scale_by_dowg"
    if init_estim_sq_dist is not None:
        check_hparam(owner, "init_estim_sq_dist", init_estim_sq_dist, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"init_estim_sq_dist": init_estim_sq_dist, "eps": eps}

    def init(params):
        return ScaleByDowgState(global_scalar(params), global_scalar(params), _clone(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByDowgState)
        if missing_params(owner, updates, params, "it measures the distance to x_0"):
            return updates, state
        hs = cast_hparams(h, state.estim_sq_dist)
        guess = hs["eps"] if hs["init_estim_sq_dist"] is None else hs["init_estim_sq_dist"]
        like = state.estim_sq_dist
        current = global_sum(owner, like, _distance_squared, updates, params, state.init_params)
        estim = torch.maximum(at_least(like, guess), current)
        weighted = estim * global_sum(owner, like, _square, updates, updates) + \
            state.weighted_sq_norm_grads
        eta = estim / (safe_sqrt(weighted, nonnegative=True) + hs["eps"])
        return _scaled(owner, updates, eta), ScaleByDowgState(estim, weighted,
                                                              state.init_params)

    return Transform(init, update, defaults)


class ScaleByDistanceOverGradientsState(NamedTuple):
    """State of :func:`scale_by_distance_over_gradients`; every field is a tree shaped like the
    parameters' leaves (0-d per leaf, except ``init_params``).

    Attributes:
        step: per-leaf step count (0-d int64).
        max_dist: per leaf, :math:`\\bar r`, the largest distance from :math:`x_0` seen.
        grad_sum_of_squares: per leaf, :math:`G`, the sum of squared gradient norms.
        init_params: :math:`x_0`, in ``param_dtype``.
        init_norm: per leaf, :math:`\\|x_0\\|`.
    """

    step: Any
    max_dist: Any
    grad_sum_of_squares: Any
    init_params: Any
    init_norm: Any


def _leaf_sum(x: torch.Tensor) -> torch.Tensor:
    """A leaf's sum in the scalar dtype (a DTensor's over its shards)."""
    return full(torch.sum(x, dtype=scalar_dtype(x)))


def _ldog_rule(h, g, t, max_dist, sos, norm0, p, p0):
    d = p - p0
    dist = safe_sqrt(_leaf_sum(d * d), nonnegative=True)
    start = h["reps_rel"] * (1 + norm0)
    max_dist = torch.maximum(torch.where(t == 0, start, max_dist), dist)
    sos = sos + _leaf_sum(g * g)
    eta = h["global_scale"] * (max_dist / torch.sqrt(sos + h["eps"]))
    return g * eta.to(g.dtype), t + 1, max_dist, sos, norm0


def scale_by_distance_over_gradients(reps_rel: float = 1e-6, eps: float = 1e-8,
                                     global_scale: float = 1.0, *,
                                     param_dtype: torch.dtype | None = None) -> Transform:
    r"""Layer-wise DoG (LDoG; Ivgi, Hinder & Carmon, 2023, *DoG is SGD's Best Friend*), as
    optax's ``scale_by_distance_over_gradients`` computes it: :func:`scale_by_dog` with the
    heuristic initial step, leaf by leaf. For each leaf :math:`i`:

    .. math::
        \bar r_{i,t} = \max\big(r_\epsilon (1 + \|x_{i,0}\|),\ \max_{k \le t}
        \|x_{i,k} - x_{i,0}\|\big), \qquad G_{i,t} = \sum_{k \le t} \|g_{i,k}\|^2,
        \qquad u_i = s\,\frac{\bar r_{i,t}}{\sqrt{G_{i,t} + \epsilon}}\, g_{i,t}

    with :math:`s` the ``global_scale`` (1, or -1 to descend without a learning-rate block).
    The per-leaf scalars are 0-d tensors of the scalar dtype (optax keeps
    :math:`G` in a 1-element array). Needs ``params``; complex leaves as pairs of reals;
    ``init`` reads :math:`\|x_0\|`.

    Args:
        reps_rel: :math:`r_\epsilon` (default 1e-6; 1e-4 for models with batch normalization).
        eps: ``ε`` added to :math:`G` (default 1e-8).
        global_scale: :math:`s` (default 1).
        param_dtype: dtype of the stored :math:`x_0` of real leaves (structural; default
            ``None``: the parameters'; optax's default is float32).
    """
    owner = "scale_by_distance_over_gradients"
    check_hparam(owner, "reps_rel", reps_rel, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "global_scale", global_scale)
    if param_dtype is not None and not (isinstance(param_dtype, torch.dtype)
                                        and param_dtype.is_floating_point):
        raise HParamError(f"{owner}: param_dtype must be None or a floating dtype, got "
                          f"{param_dtype!r}")
    defaults = {"reps_rel": reps_rel, "eps": eps, "global_scale": global_scale}

    def scalars(params):
        return _tree.map(lambda p: torch.zeros((), dtype=scalar_dtype(p), device=p.device),
                         params)

    def init(params):
        x0 = _clone(params) if param_dtype is None else _tree.map(
            lambda p: p.clone() if p.is_complex() else p.to(param_dtype, copy=True), params)
        norms = _tree.map(lambda p: safe_sqrt(_leaf_sum(_square(_real(p))), nonnegative=True),
                          params)
        return ScaleByDistanceOverGradientsState(init_count(params), scalars(params),
                                                 scalars(params), x0, norms)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByDistanceOverGradientsState)
        if missing_params(owner, updates, params, "it measures the distance to x_0"):
            return updates, state
        out, *new = elementwise(_ldog_rule, h, updates,
                                (state.step, state.max_dist, state.grad_sum_of_squares,
                                 state.init_norm), (params, state.init_params), name=owner,
                                complex_as_real=True, input_names=("params", "init_params"))
        step, max_dist, sos, norms = new
        return out, ScaleByDistanceOverGradientsState(step, max_dist, sos, state.init_params,
                                                      norms)

    return Transform(init, update, defaults)

r"""Sharpness-aware minimization: the normalized ascent step and the SAM combinator (Foret et
al., 2021, *Sharpness-Aware Minimization for Efficiently Improving Generalization*).

SAM minimizes :math:`\max_{\lVert\epsilon\rVert \le \rho} L(w + \epsilon)`: each outer step
takes the gradient at the *perturbed* point :math:`w + \rho\, g/\lVert g\rVert` and applies it
at :math:`w`. :func:`sam` runs any outer optimizer and any adversarial (ascent) optimizer, in
one of two protocols (optax's ``opaque_mode``):

*Transparent* (default): every ``update`` is one pass. Of each ``sync_period`` passes, the first
``sync_period - 1`` are adversarial steps (the update moves the parameters to the perturbed
point) and the last is the outer step (the update moves them back to where the cycle started,
plus the outer optimizer's step taken there with the last gradient). The caller computes a
gradient at whatever parameters it holds, as usual::

    tx = fo.sam(fo.sgd(lr=0.1, momentum=0.9), fo.chain(fo.normalize(),
                                                      fo.scale_by_learning_rate(0.05)))
    for x, y in batches:  # two passes per SAM step with the default sync_period=2
        grads = torch.func.grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)

*Opaque* (``opaque_mode=True``): one ``update`` is one whole SAM step; the gradients at the
perturbed points come from ``update``'s ``grad_fn`` keyword, ``grad_fn(params, i)`` being the
gradient at ``params`` for adversarial step ``i`` (``0 ... sync_period - 2``; pick a batch by
``i``, or ignore it)::

    tx = fo.sam(fo.sgd(lr=0.1), fo.chain(fo.normalize(), fo.scale_by_learning_rate(0.05)),
                opaque_mode=True)
    grad_fn = lambda p, i: torch.func.grad(loss)(p, x, y)
    updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)

The adversarial optimizer's output is a *descent* update, negated into the ascent step (as in
optax: ``chain(normalize(), scale_by_learning_rate(rho))`` gives :math:`+\rho g/\lVert g\rVert`).
The drop-in class ``functional_optim.optim.SAM`` (:func:`functional_optim.sam_sgd`) runs the
transparent protocol, two passes per ``step(closure)``, as davda54/sam's ``SAM.step``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .. import tree as _tree
from .._execute import elementwise, first_device
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    _check_transform,
    apply_updates,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)

__all__ = ["normalize", "asam_scale", "SamState", "sam", "MomentumSamState", "momentum_sam",
           "momentum_sam_eval_params", "momentum_sam_train_params"]


def asam_scale(p: Any, eta: Any = 0.0) -> Any:
    r"""ASAM's normalization operator :math:`T_p = |p| + \eta` (Kwon et al., 2021), elementwise;
    ``η`` that is the Python number 0 gives :math:`|p|`."""
    return p.abs() if _execute.is_off(eta) else p.abs() + eta


def _divide_rule(h, g):
    return (g / h["norm"],)


def _adaptive_rule(h, g, p):
    return ((asam_scale(p, h["eta"]) ** 2 * g) / h["norm"],)


def normalize(eps: float = 0.0, *, adaptive: bool = False, eta: float | None = None
              ) -> Transform:
    r"""Divides all updates together by their global L2 norm (optax's ``normalize``): SAM's
    ascent direction.

    .. math:: u_i \mapsto \frac{u_i}{\lVert u\rVert_2 + \epsilon} \qquad
              \text{or, adaptive (ASAM):}\quad
              u_i \mapsto \frac{|p_i|^2 \odot u_i}{\lVert\, |p| \odot u \rVert_2 + \epsilon}

    ASAM: Kwon et al., 2021, *ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
    Learning of Deep Neural Networks* (the perturbation :math:`T^2 g / \lVert T g\rVert` with
    :math:`T = \operatorname{diag}|p|`, as davda54/sam's ``adaptive=True``; needs ``params``).
    Where the denominator is 0 (all updates zero, ``ε = 0``) the result is 0, not optax's NaN.

    ``update(..., norm=n)`` divides by ``n + ε`` instead of this update's own norm: for a norm
    taken over more leaves than one update sees (the drop-in class
    ``functional_optim.optim.SAM`` passes the norm over all its param groups, as
    davda54/sam's ``SAM`` takes it).

    Args:
        eps: ``ε`` added to the norm (default 0, as optax; davda54/sam's is 1e-12).
        adaptive: ASAM's scale-invariant version (structural).
        eta: ASAM's ``η`` (a hyperparameter with ``adaptive`` only; default 0).
    """
    owner = "normalize"
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"eps": eps}
    if adaptive:
        defaults["eta"] = 0.0 if eta is None else eta
        check_hparam(owner, "eta", defaults["eta"], ge=0)
    elif eta is not None:
        raise HParamError(f"{owner}: eta is ASAM's (adaptive=True); got eta={eta!r} with "
                          "adaptive=False")

    def init(params):
        return EmptyState()

    def update(updates, state, params=None, hparams=None, *, norm=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        if adaptive and missing_params(owner, updates, params, "adaptive: |p| scales them"):
            return updates, state
        if norm is None:
            scaled = updates if not adaptive else _tree.map(
                lambda g, p: g * asam_scale(p, h["eta"]), updates, params)
            norm = _tree.global_norm(scaled)
        denom = norm + h["eps"] if not _execute.is_off(h["eps"]) else norm
        denom = torch.where(denom > 0, denom, 1.0)  # (then every update is 0)
        if adaptive:
            (out,) = elementwise(_adaptive_rule, {"norm": denom, "eta": h["eta"]}, updates,
                                 inputs=(params,),
                                 name=owner, input_names=("params",))
        else:
            (out,) = elementwise(_divide_rule, {"norm": denom}, updates, name=owner)
        return out, state

    return Transform(init, update, defaults)


class SamState(NamedTuple):
    """State of :func:`sam`.

    Attributes:
        steps_since_sync: adversarial passes since the last outer step (0-d int64).
        opt_state: the outer optimizer's state.
        adv_state: the adversarial optimizer's state.
        cache: the parameters where the cycle started (transparent protocol), else an empty
            :class:`EmptyState`.
    """

    steps_since_sync: Any
    opt_state: Any
    adv_state: Any
    cache: Any


def _pick(condition: torch.Tensor, if_true: Any, if_false: Any) -> Any:
    return optree.tree_map(lambda a, b: None if a is None else torch.where(condition, a, b),
                           if_true, if_false, none_is_leaf=True)


def _negated(tree: Any) -> Any:
    return _tree.map(torch.neg, tree)


def sam(optimizer: Transform, adv_optimizer: Transform, sync_period: int = 2,
        reset_state: bool = True, opaque_mode: bool = False) -> Transform:
    r"""Sharpness-aware minimization around any optimizer (Foret et al., 2021), as optax's
    ``contrib.sam`` (see the module docstring for the two protocols and worked examples).

    Transparent protocol, pass :math:`s` of each cycle (:math:`s = 0 \dots k-1`, ``k`` =
    ``sync_period``), with :math:`c` the parameters at the cycle's start:

    .. math::
        s < k-1:\ u = -\,\mathrm{adv}(g), \qquad
        s = k-1:\ u = c - p + \mathrm{opt}(g;\ \text{at } c)

    Both optimizers run at every pass and :func:`torch.where` keeps the results of the one
    that acts (no host sync: ``vmap``, ``grad``, ``compile`` and capture apply); the outer
    state moves only at outer passes; with ``reset_state`` the adversarial state restarts after
    each. Opaque protocol: :math:`k-1` adversarial steps with gradients from ``grad_fn``, then
    the outer step at ``params`` with the last gradient, in one ``update``. Needs ``params``.
    The keyword arguments of ``update`` reach both optimizers. optax's ``batch_axis_name``
    (a ``pmean`` of the adversarial gradients) has no counterpart: ``grad_fn`` returns averaged
    gradients (under DDP its backward does).

    The hparams are ``{"optimizer": optimizer.hparams, "adv_optimizer":
    adv_optimizer.hparams}``.

    Args:
        optimizer: the outer optimizer.
        adv_optimizer: the adversarial optimizer (its update is negated into the ascent).
        sync_period: ``k``, passes per SAM step (structural int >= 1; default 2).
        reset_state: restart the adversarial state after each outer step (structural).
        opaque_mode: the opaque protocol (structural; default False).
    """
    owner = "sam"
    _check_transform(optimizer, f"{owner}: optimizer")
    _check_transform(adv_optimizer, f"{owner}: adv_optimizer")
    if isinstance(sync_period, bool) or not isinstance(sync_period, int) or sync_period < 1:
        raise HParamError(f"{owner}: sync_period must be an int >= 1, got {sync_period!r}")
    defaults = {"optimizer": optimizer.hparams, "adv_optimizer": adv_optimizer.hparams}

    def init(params):
        return SamState(torch.zeros((), dtype=torch.int64, device=first_device(params)),
                        optimizer.init(params), adv_optimizer.init(params),
                        EmptyState() if opaque_mode else _tree.map(torch.clone, params))

    def transparent(h, updates, state, params, extra):
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == sync_period - 1
        with _execute.keep_state():  # (the old states may be kept)
            adv_u, adv_state = adv_optimizer.update(updates, state.adv_state, params,
                                                    h["adv_optimizer"], **extra)
            opt_u, opt_state = optimizer.update(updates, state.opt_state, state.cache,
                                                h["optimizer"], **extra)
        opt_u = _tree.map(lambda u, c, p: c - p + u, opt_u, state.cache, params)
        out = _pick(last, opt_u, _negated(adv_u))
        idle = adv_optimizer.init(params) if reset_state else state.adv_state
        return out, SamState(torch.remainder(state.steps_since_sync + 1, sync_period),
                             _pick(last, opt_state, state.opt_state),
                             _pick(last, idle, adv_state), _pick(first, params, state.cache))

    def opaque(h, updates, state, params, extra):
        grad_fn = extra.pop("grad_fn", None)
        if grad_fn is None and sync_period > 1:
            raise TypeError(f"{owner} with opaque_mode=True takes the gradients at the "
                            "perturbed points from update(grads, state, params, grad_fn=fn), "
                            "fn(params, i) -> grads")
        point, grads, adv_state = params, updates, state.adv_state
        for i in range(sync_period - 1):
            ascent, adv_state = adv_optimizer.update(grads, adv_state, point,
                                                     h["adv_optimizer"], **extra)
            point = apply_updates(point, _negated(ascent))
            # (a leaf without an incoming gradient gets none: a frozen parameter stays)
            grads = optree.tree_map(lambda g, u: None if u is None else g, grad_fn(point, i),
                                    updates, none_is_leaf=True)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        out, opt_state = optimizer.update(grads, state.opt_state, params, h["optimizer"],
                                          **extra)
        return out, SamState(torch.zeros_like(state.steps_since_sync), opt_state, adv_state,
                             state.cache)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, SamState)
        if missing_params(owner, updates, params):
            return updates, state
        run = opaque if opaque_mode else transparent
        return run(h, updates, state, params, dict(extra))

    return Transform(init, _execute.owning(update, [optimizer, adv_optimizer]), defaults)


class MomentumSamState(NamedTuple):
    """State of :func:`momentum_sam`.

    Attributes:
        opt_state: the outer optimizer's state.
        perturbation: :math:`e_t`, where the parameters stand from the point the optimizer
            steps (zeros at first).
    """

    opt_state: Any
    perturbation: Any


def momentum_sam(optimizer: Transform, rho: float = 0.3, eps: float = 1e-12) -> Transform:
    r"""Momentum-SAM (Becker et al., 2024, *Momentum-SAM: Sharpness Aware Minimization without
    Computational Overhead*): SAM's perturbation taken along the optimizer's own step instead of
    an extra gradient, so one gradient per step.

    The parameters the caller holds are the perturbed ones :math:`\tilde w_t = w_t + e_t`; the
    gradient is taken there, and each update moves them to the next perturbed point:

    .. math::
        s_t = \mathrm{opt}(g(\tilde w_t);\ \text{at } \tilde w_t), \qquad
        e_{t+1} = \rho\, \frac{s_t}{\lVert s_t\rVert_2 + \epsilon}, \qquad
        u_t = s_t - e_t + e_{t+1}

    (:math:`e_0 = 0`; the norm over all leaves). With SGD, :math:`s_t = -\eta b_t`
    (:math:`b_t` the momentum buffer) and :math:`e_t = -\rho b_t/\lVert b_t\rVert`, the
    authors' ``MSAM`` (:func:`~functional_optim.msam_sgd`). The evaluation parameters
    :math:`w_t = \tilde w_t - e_t` come from :func:`momentum_sam_eval_params` (and back from
    :func:`momentum_sam_train_params`); the drop-in class ``functional_optim.optim.MSAM``
    swaps them with ``eval()`` / ``train()``, as the authors' ``move_back_from_momentumAscent``.
    The state holds :math:`e_t` (one buffer more than the authors', who recompute it from the
    momentum buffer: this works around any optimizer). Needs ``params``.

    The hparams are ``{"optimizer": optimizer.hparams, "rho": rho, "eps": eps}``.

    Args:
        optimizer: the outer optimizer (its update is the descent step, learning rate
            included).
        rho: ``ρ``, the perturbation's radius (default 0.3, the authors').
        eps: ``ε`` added to the norm (default 1e-12).
    """
    owner = "momentum_sam"
    _check_transform(optimizer, f"{owner}: optimizer")
    check_hparam(owner, "rho", rho, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"optimizer": optimizer.hparams, "rho": rho, "eps": eps}

    def init(params):
        return MomentumSamState(optimizer.init(params), _tree.zeros_like(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, MomentumSamState)
        if missing_params(owner, updates, params):
            return updates, state
        step, opt_state = optimizer.update(updates, state.opt_state, params, h["optimizer"],
                                           **extra)
        norm = _tree.global_norm(step)
        denom = norm + h["eps"] if not _execute.is_off(h["eps"]) else norm
        scale = torch.where(denom > 0, h["rho"] / torch.where(denom > 0, denom, 1.0), 0.0)
        # (a leaf without a gradient is not moved: its perturbation stays)
        perturbation = optree.tree_map(
            lambda s, old: old if s is None else s * scale.to(s.dtype), step,
            state.perturbation, none_is_leaf=True)
        out = _tree.map(lambda s, old, new: s - old + new, step, state.perturbation,
                        perturbation)
        return out, MomentumSamState(opt_state, perturbation)

    return Transform(init, _execute.owning(update, [optimizer]), defaults)


def momentum_sam_eval_params(state: MomentumSamState, params: Any) -> Any:
    r"""The evaluation parameters :math:`w_t = \tilde w_t - e_t` of :func:`momentum_sam`."""
    return _tree.map(lambda p, e: p - e, params, state.perturbation)


def momentum_sam_train_params(state: MomentumSamState, eval_params: Any) -> Any:
    r"""The perturbed parameters :math:`\tilde w_t = w_t + e_t` back (the inverse of
    :func:`momentum_sam_eval_params`)."""
    return _tree.map(lambda w, e: w + e, eval_params, state.perturbation)

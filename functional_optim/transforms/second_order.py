r"""Second-order blocks: Hutchinson's estimate of the Hessian's diagonal, and Sophia.

**What they need besides the gradient.** A Hessian-vector product at the parameters, through
``update``'s keyword arguments (a chain passes them to every block)::

    updates, state = tx.update(grads, state, params, hparams, hvp_fn=hvp)   # or obj_fn=loss

- ``hvp_fn(params, v) -> H v``: the product of the Hessian of the loss at ``params`` with a
  tree ``v`` shaped like ``params``;
- ``obj_fn(params) -> loss``: a pure scalar loss of the parameter tree, from which the product
  is taken by forward-over-reverse differentiation
  (``torch.func.jvp(torch.func.grad(obj_fn), (params,), (v,))``).

A worked example, with a functional model (:func:`torch.func.functional_call`)::

    def obj_fn(p):
        return loss_fn(torch.func.functional_call(model, p, (x,)), y)

    grads = torch.func.grad(obj_fn)(params)
    updates, state = tx.update(grads, state, params, obj_fn=obj_fn)
    params = fo.apply_updates(params, updates)

(The drop-in class ``functional_optim.optim.Sophia`` builds ``hvp_fn`` from the graph of
``loss.backward(create_graph=True)``.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import _random
from .. import tree as _tree
from .._execute import cast_hparams, first_device, lerp, scalar_dtype
from ..base import (
    HParamError,
    Transform,
    check_betas,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)
from ._refresh import check_interval, refreshed

__all__ = ["HutchinsonState", "hutchinson_estimator_diag_hessian", "ScaleBySophiaState",
           "scale_by_sophia", "hessian_vector_product"]


def hessian_vector_product(params: Any, v: Any, hvp_fn: Any = None, obj_fn: Any = None,
                           owner: str = "hessian_vector_product") -> Any:
    """``H v`` at ``params`` from ``hvp_fn(params, v)`` or, failing that, from the scalar loss
    ``obj_fn(params)`` by forward-over-reverse differentiation (see the module docstring)."""
    if hvp_fn is not None:
        return hvp_fn(params, v)
    if obj_fn is None:
        raise TypeError(
            f"{owner} needs a Hessian-vector product: call update(grads, state, params, "
            "hvp_fn=fn) with fn(params, v) -> H v, or update(..., obj_fn=loss) with "
            "loss(params) -> a scalar")
    return torch.func.jvp(torch.func.grad(obj_fn), (params,), (v,))[1]


def _real_leaves(owner: str, tree: Any) -> None:
    for i, x in enumerate(_tree.leaves(tree)):
        if x is not None and x.is_complex():
            raise TypeError(f"{owner} does not support complex updates (leaf "
                            f"{_tree.leaf_label(tree, i)}, dtype {x.dtype})")


class HutchinsonState(NamedTuple):
    """State of :func:`hutchinson_estimator_diag_hessian`.

    Attributes:
        key: the random key of the next probe (int64 ``(2,)``: stream, counter; see
            :mod:`functional_optim._random`).
    """

    key: Any


def _check_seed(owner: str, seed: Any) -> None:
    integer = isinstance(seed, int) and not isinstance(seed, bool)
    tensor = isinstance(seed, torch.Tensor) and seed.ndim == 0 and not (
        seed.is_floating_point() or seed.is_complex() or seed.dtype == torch.bool)
    if not (integer or tensor):
        raise HParamError(f"{owner}: seed must be an int or a 0-d integer tensor, got {seed!r}")


def hutchinson_estimator_diag_hessian(seed: int | torch.Tensor = 0) -> Transform:
    r"""Hutchinson's estimate of the Hessian's diagonal (Hutchinson, 1989, *A stochastic
    estimator of the trace of the influence matrix*; Bekas, Kokiopoulou & Saad, 2007, for the
    diagonal).

    .. math:: d = v \odot (H v), \qquad v_i \in \{-1, +1\} \text{ independent, uniform}, \qquad
              \mathbb{E}[d] = \operatorname{diag}(H)

    The output (the estimate, shaped like the parameters) replaces the incoming updates, which
    are not read. The probe :math:`v` is drawn from the key in the state
    (:mod:`functional_optim._random`: reproducible, one stream per ``seed``, a batched seed
    gives each ``vmap`` member its own stream), leaf ``i`` of the tree with salt ``i``; each
    update advances the key. ``H v`` comes from ``update``'s ``hvp_fn=`` or ``obj_fn=``
    keyword (see the module docstring). Needs ``params``; real parameters only.

    Args:
        seed: the stream (structural: read by ``init``; an int or a 0-d integer tensor).
    """
    owner = "hutchinson_estimator_diag_hessian"
    _check_seed(owner, seed)

    def init(params):
        return HutchinsonState(_random.key(seed, first_device(params)))

    def update(updates, state, params=None, hparams=None, *, hvp_fn=None, obj_fn=None,
               **extra):
        resolve_hparams({}, hparams, f"{owner} hparams")
        check_state(owner, state, HutchinsonState)
        if missing_params(owner, updates, params, "the Hessian is taken at them"):
            return updates, state
        _real_leaves(owner, params)
        flat, spec = _tree.leaves(params), _tree.structure(params)
        probes = [None if p is None else _random.rademacher(state.key, i, p)
                  for i, p in enumerate(flat)]
        v = spec.unflatten(probes)
        hv = _tree.flatten_like(hessian_vector_product(params, v, hvp_fn, obj_fn, owner), spec,
                                f"{owner}: the Hessian-vector product", "params")
        out = [None if p is None or h is None else h * p for h, p in zip(hv, probes)]
        return spec.unflatten(out), HutchinsonState(_random.next_key(state.key))

    return Transform(init, update, {})


class ScaleBySophiaState(NamedTuple):
    """State of :func:`scale_by_sophia`.

    Attributes:
        count: updates so far (0-d int64 on the first parameter's device); the Hessian estimate
            is refreshed when it is a multiple of ``update_interval``.
        exp_avg: the running mean of the gradients :math:`m`.
        hessian: the running mean of the Hessian diagonal estimates :math:`h`.
        estimator: the state of ``hessian_diagonal_fn``.
    """

    count: Any
    exp_avg: Any
    hessian: Any
    estimator: Any


def scale_by_sophia(betas: tuple[float, float] = (0.965, 0.99), eps: float = 1e-8,
                    gamma: float = 0.01, clip_threshold: float | None = 1.0,
                    update_interval: int = 10, hessian_diagonal_fn: Transform | None = None,
                    *, host_refresh: bool = False) -> Transform:
    r"""Sophia's clipped, Hessian-preconditioned momentum (Liu et al., 2023, *Sophia: A Scalable
    Stochastic Second-order Optimizer for Language Model Pre-training*), as optax computes it.

    With :math:`t` the update's number (from 1), :math:`\hat H_t` the estimator's output and
    :math:`h_{t-1}` the running estimate *before* this update's refresh,

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        u_t = \operatorname{clip}\left(\frac{m_t / (1-\beta_1^t)}
              {\max(\gamma\, h_{t-1}, \epsilon)}, -c, c\right), \\
        h_t = \beta_2 h_{t-1} + (1-\beta_2) \hat H_t \text{ when } (t - 1) \bmod k = 0,
        \text{ else } h_{t-1}

    (:math:`k` = ``update_interval``; the first update refreshes, with :math:`h_0 = 0`, so its
    step is :math:`\pm c` where :math:`m \ne 0`). ``hessian_diagonal_fn`` (default
    :func:`hutchinson_estimator_diag_hessian`, Sophia-H) is a transform whose update, given the
    gradients, the parameters and ``update``'s keyword arguments, returns the diagonal estimate;
    its state lives in this block's. Weight decay and the learning rate are separate blocks
    (:func:`functional_optim.sophia`).

    *The refresh.* ``host_refresh=False`` (default) estimates the Hessian at every update and
    keeps it (and the estimator's state, so its random stream) only at refresh steps, by
    :func:`torch.where`: no host sync, so ``vmap``, ``torch.func.grad``, ``torch.compile`` and
    CUDA-graph capture apply, at the cost of a Hessian-vector product per update.
    ``host_refresh=True`` reads the count on the host and estimates only at refresh steps
    (one product per ``k`` updates, one sync per update; the same numbers), for eager training.
    Needs ``params``; real parameters only.

    Args:
        betas: ``(β1, β2)`` (default ``(0.965, 0.99)``).
        eps: ``ε`` (default 1e-8).
        gamma: ``γ``, the scale of the Hessian estimate (default 0.01).
        clip_threshold: ``c`` (default 1), or ``None``: no clipping (structural).
        update_interval: ``k`` (structural; default 10).
        hessian_diagonal_fn: the estimator (structural; default Hutchinson's with seed 0).
        host_refresh: decide the refresh on the host (structural; see above).
    """
    owner = "scale_by_sophia"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "gamma", gamma, ge=0)
    if clip_threshold is not None:
        check_hparam(owner, "clip_threshold", clip_threshold, ge=0)
    check_interval(owner, "update_interval", update_interval)
    estimator = hessian_diagonal_fn if hessian_diagonal_fn is not None else \
        hutchinson_estimator_diag_hessian()
    if not isinstance(estimator, Transform):
        raise TypeError(f"{owner}: hessian_diagonal_fn must be a functional_optim.Transform, "
                        f"got {type(estimator).__name__}")
    defaults = {"betas": tuple(betas), "eps": eps, "gamma": gamma,
                "clip_threshold": clip_threshold}

    def init(params):
        return ScaleBySophiaState(
            torch.zeros((), dtype=torch.int64, device=first_device(params)),
            _tree.zeros_like(params), _tree.zeros_like(params), estimator.init(params))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        if clip_threshold is None and h["clip_threshold"] is not None:
            raise HParamError(f"{owner}: clip_threshold is None (structural: no clipping); "
                              "construct with a number to set it at run time")
        check_state(owner, state, ScaleBySophiaState)
        if missing_params(owner, updates, params, "the Hessian is taken at them"):
            return updates, state
        _real_leaves(owner, updates)
        b1, b2 = h["betas"]
        spec = _tree.structure(updates)
        flat_g = _tree.leaves(updates)
        flat_m = _tree.flatten_like(state.exp_avg, spec, f"{owner} state", "updates")
        flat_h = _tree.flatten_like(state.hessian, spec, f"{owner} state", "updates")
        t = state.count + 1
        out, new_m = [], []
        for g, m, hess in zip(flat_g, flat_m, flat_h):
            if g is None:
                out.append(None)
                new_m.append(m)
                continue
            hl = cast_hparams(h, g)
            m = lerp(m, g, 1 - b1)
            u = (m / (1 - b1 ** t.to(scalar_dtype(g)))) / torch.clamp(hl["gamma"] * hess,
                                                                       min=hl["eps"])
            if clip_threshold is not None:
                u = torch.clamp(u, -hl["clip_threshold"], hl["clip_threshold"])
            out.append(u.to(g.dtype))
            new_m.append(m)

        def fresh():
            diag, est = estimator.update(updates, state.estimator, params, **extra)
            flat_d = _tree.flatten_like(diag, spec, f"{owner}: the Hessian estimate", "updates")
            return [old if d is None or g is None else lerp(old, d.to(old.dtype), 1 - b2)
                    for g, d, old in zip(flat_g, flat_d, flat_h)], est

        new_h, est = refreshed(state.count, update_interval, host_refresh, fresh,
                               (flat_h, state.estimator))
        return spec.unflatten(out), ScaleBySophiaState(
            t, spec.unflatten(new_m), spec.unflatten(new_h), est)

    return Transform(init, update, defaults)

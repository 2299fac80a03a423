"""Moment-based building blocks: Adam's moments, RMS scaling, momentum (trace)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    Pointwise,
    PointwiseCall,
    ema_square,
    init_count,
    is_off,
    lerp,
    safe_sqrt,
    scalar_dtype,
)
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    check_betas,
    check_hparam,
    check_state,
    pointwise_transform,
    resolve_hparams,
)

__all__ = [
    "ScaleByAdamState",
    "scale_by_adam",
    "ScaleByRmsState",
    "scale_by_rms",
    "TraceState",
    "trace",
]


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`; every field is a tree shaped like the parameters.

    Attributes:
        step: per-parameter step count (0-d int64), as torch.optim keeps ``state[p]["step"]``.
        mu: first moment (``exp_avg``).
        nu: second moment (``exp_avg_sq``).
        nu_max: running maximum of ``nu`` (``max_exp_avg_sq``) with ``amsgrad``, else an empty
            :class:`EmptyState` (no leaves, so the state stays ``vmap``-able).
    """

    step: Any
    mu: Any
    nu: Any
    nu_max: Any = EmptyState()


def _adam_rule(h, g, t, m, v, *nu_max, bias_correction="moments"):
    b1, b2 = h["betas"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    m = lerp(m, g, 1 - b1)
    v = ema_square(v, g, b2)
    nu_max = tuple(torch.maximum(n, v) for n in nu_max)
    second = nu_max[0] if nu_max else v
    eps_root = h["eps_root"]
    if bias_correction != "moments":  # eps on the uncorrected root
        if not is_off(eps_root):
            second = second + eps_root
        u = m / (safe_sqrt(second, nonnegative=True) + h["eps"])
        if bias_correction == "none":
            return (u, t, m, v, *nu_max)
        return (u * (torch.sqrt(1 - b2**tf) / (1 - b1**tf)), t, m, v, *nu_max)
    bc1 = 1 - b1**tf
    bc2 = 1 - b2**tf
    if not is_off(eps_root):
        second = second + eps_root * bc2
    # (m / bc1) / (sqrt(second) / sqrt(bc2) + eps), with bc1 folded into the denominator
    denom = safe_sqrt(second, nonnegative=True) * (bc1 / torch.sqrt(bc2)) + h["eps"] * bc1
    return (m / denom, t, m, v, *nu_max)


_BIAS_CORRECTIONS = ("moments", "step_size", "none")


def scale_by_adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                  eps_root: float = 0.0, amsgrad: bool = False, *,
                  bias_correction: str = "moments") -> Transform:
    r"""Rescales updates by Adam's bias-corrected moments (Kingma & Ba, 2015, Algorithm 1).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t, \qquad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t / (1-\beta_2^t) + \epsilon_{root}}
              + \epsilon}

    That is ``bias_correction="moments"`` (torch.optim.Adam's). Where the correction goes is
    structural, as it moves ``ε``:

    - ``"step_size"``: the paper's "efficient version" (end of its Section 2), HuggingFace's
      ``AdamW(correct_bias=True)`` and Keras's Adam: ``ε`` is added to the *uncorrected* root
      and the corrections scale the step,
      :math:`u_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
      \frac{m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}`;
    - ``"none"``: no correction (BERT's original optimizer, HuggingFace's
      ``correct_bias=False``), :math:`u_t = m_t / (\sqrt{\hat v_t + \epsilon_{root}} +
      \epsilon)`.

    AMSGrad: Reddi et al., 2018. Complex parameters are treated as pairs of reals, as
    torch.optim.Adam does. The square root is safe at zero (finite meta-gradients).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` added to the root (default 1e-8).
        eps_root: ``ε_root`` added inside the root (default 0).
        amsgrad: keep the running maximum of ``v`` (static; default False).
        bias_correction: ``"moments"``, ``"step_size"`` or ``"none"`` (static; see above).
    """
    if bias_correction not in _BIAS_CORRECTIONS:
        raise HParamError(f"scale_by_adam: bias_correction must be one of {_BIAS_CORRECTIONS}, "
                          f"got {bias_correction!r}")
    check_betas("scale_by_adam", betas)
    check_hparam("scale_by_adam", "eps", eps, ge=0)
    check_hparam("scale_by_adam", "eps_root", eps_root, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps, "eps_root": eps_root}
    rule = functools.partial(_adam_rule, bias_correction=bias_correction)

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAdamState(init_count(params), zeros(params), zeros(params),
                                zeros(params) if amsgrad else EmptyState())

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "scale_by_adam hparams")
        check_state("scale_by_adam", state, ScaleByAdamState)
        states = (state.step, state.mu, state.nu) + ((state.nu_max,) if amsgrad else ())
        return PointwiseCall(rule, h, states, finish=_adam_state,
                             donate_state=(True,) * len(states),
                             state_like=(None,) + (LIKE,) * (len(states) - 1))

    # torch's Adam kernels compute the "moments" correction only
    kernel = ("adam", amsgrad) if bias_correction == "moments" else ()
    return pointwise_transform(init, defaults, Pointwise(prepare, "scale_by_adam", "as_real",
                                                         kernel=kernel))


def _adam_state(new: tuple) -> ScaleByAdamState:
    return ScaleByAdamState(*new[:3], new[3] if len(new) > 3 else EmptyState())


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`.

    Attributes:
        step: per-parameter step count (0-d int64).
        nu: running mean of squared updates (``square_avg``).
        mu: running mean of updates (``grad_avg``) when ``centered``, else an empty
            :class:`EmptyState`.
    """

    step: Any
    nu: Any
    mu: Any = EmptyState()


def _rms_rule(h, g, t, v, *mu):
    alpha = h["alpha"]
    v = ema_square(v, g, alpha)
    if mu:
        m = lerp(mu[0], g, 1 - alpha)
        avg = safe_sqrt(v - m * m) + h["eps"]
        return g / avg, t + 1, v, m
    return g / (safe_sqrt(v, nonnegative=True) + h["eps"]), t + 1, v


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8, centered: bool = False) -> Transform:
    r"""Divides updates by the root of a running mean of their squares (RMSprop; Hinton, 2012).

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t - \bar g_t^2} + \epsilon} \text{ (centered, Graves 2013)}
        \text{ or } \frac{g_t}{\sqrt{v_t} + \epsilon}

    with :math:`\bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t`, as torch.optim.RMSprop computes
    it (``ε`` outside the root; complex parameters as pairs of reals).

    Args:
        alpha: smoothing constant (default 0.99).
        eps: ``ε`` (default 1e-8).
        centered: subtract the squared running mean (static; default False).
    """
    check_hparam("scale_by_rms", "alpha", alpha, ge=0, le=1)
    check_hparam("scale_by_rms", "eps", eps, ge=0)
    defaults = {"alpha": alpha, "eps": eps}

    def init(params):
        return ScaleByRmsState(init_count(params), _tree.zeros_like(params),
                               _tree.zeros_like(params) if centered else EmptyState())

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "scale_by_rms hparams")
        check_state("scale_by_rms", state, ScaleByRmsState)
        states = (state.step, state.nu) + ((state.mu,) if centered else ())
        return PointwiseCall(_rms_rule, h, states, finish=lambda new: ScaleByRmsState(*new),
                             donate_state=(True,) * len(states),
                             state_like=(None,) + (LIKE,) * (len(states) - 1))

    return pointwise_transform(init, defaults, Pointwise(prepare, "scale_by_rms", "as_real"))


class TraceState(NamedTuple):
    """State of :func:`trace`.

    Attributes:
        step: per-parameter count of the buffer's updates (0-d int64); at 0 the buffer starts
            as the update.
        momentum_buffer: the trace (torch.optim.SGD's ``momentum_buffer``).
    """

    step: Any
    momentum_buffer: Any


def _trace_rule(h, g, t, buf, *, nesterov, detach_first):
    momentum = h["momentum"]
    if is_off(momentum):  # no momentum (torch.optim.SGD's momentum=0): the buffer waits
        return g, t, buf
    # b = mu b + (1 - tau) g, except b = g at the first step (the buffer is zero then):
    # per-leaf coefficients instead of a select, so the multi-tensor path stays foreach
    started = (t > 0).to(scalar_dtype(g))
    keep = momentum * started
    take = 1 - h["dampening"] * started
    if detach_first and torch.is_grad_enabled() and not bool(t > 0):
        g_in = g.detach()  # (read on the host, as torch.optim.SGD's differentiable step does)
    else:
        g_in = g
    buf = buf * keep + take * g_in  # (dense + sparse: a sparse g gives a dense buffer)
    return (momentum * buf + g if nesterov else buf), t + 1, buf


def trace(momentum: float = 0.9, dampening: float = 0.0, nesterov: bool = False, *,
          detach_first: bool = False) -> Transform:
    r"""Momentum with torch.optim.SGD's semantics (Sutskever et al., 2013 for Nesterov).

    .. math::
        b_1 = g_1, \qquad b_t = \mu\, b_{t-1} + (1 - \tau)\, g_t, \qquad
        u_t = g_t + \mu\, b_t \text{ (nesterov) or } b_t

    ``step`` counts the buffer's updates. Where ``momentum`` is the Python number 0 at update
    time the block passes updates through and leaves its state as it is (torch.optim.SGD
    without momentum), so a later nonzero momentum starts the buffer at :math:`g`, as torch
    does; a tensor momentum always runs the formula. A sparse COO update
    (``nn.Embedding(sparse=True)``) gives a dense buffer and update, holding the values of
    torch.optim.SGD's sparse buffer.

    Args:
        momentum: ``μ`` (default 0.9).
        dampening: ``τ`` (default 0); must be 0 with ``nesterov``.
        nesterov: Nesterov momentum (structural; default False).
        detach_first: the first buffer :math:`b_1` is a detached copy of :math:`g_1`, as
            torch.optim.SGD makes it: with autograd on (its ``differentiable=True``) no gradient
            flows through it, and the count is read on the host to tell the first step, as
            torch's step does (structural; default False: meta-gradients flow through
            :math:`b_1 = g_1`, as MAML with momentum needs, and nothing is read).
    """
    check_hparam("trace", "momentum", momentum, ge=0)
    check_hparam("trace", "dampening", dampening)
    if nesterov and (isinstance(dampening, torch.Tensor) or dampening != 0):
        raise HParamError("trace: nesterov momentum requires dampening == 0 (as torch.optim.SGD)")
    defaults = {"momentum": momentum, "dampening": dampening}
    rule = functools.partial(_trace_rule, nesterov=nesterov, detach_first=detach_first)

    def init(params):
        return TraceState(init_count(params), _tree.zeros_like(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "trace hparams")
        check_state("trace", state, TraceState)
        return PointwiseCall(rule, h, (state.step, state.momentum_buffer),
                             finish=lambda new: TraceState(*new), donate_state=(True, True),
                             sparse=True, state_like=(None, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, "trace"))

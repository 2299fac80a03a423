"""Moment-based building blocks: Adam's moments, RMS scaling, momentum (trace)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    SHAPED,
    Pointwise,
    PointwiseCall,
    borrowed,
    decayed,
    ema_square,
    full_like,
    init_count,
    is_off,
    lerp,
    safe_sqrt,
    scalar_dtype,
    zeros_in,
)
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    check_betas,
    check_choice,
    check_dtype_option,
    check_hparam,
    check_init_value,
    check_state,
    pointwise_transform,
    resolve_hparams,
)

__all__ = [
    "corrected_first_moment",
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


def _adam_rule(h, g, t, m, v, *nu_max, bias_correction="moments", nesterov=False,
               amsgrad_corrected=False):
    b1, b2 = h["betas"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    if m.dtype == g.dtype:
        m = lerp(m, g, 1 - b1)
    else:  # a first moment kept in mu_dtype
        m = decayed(m, b1, g) + (1 - b1) * borrowed(g)
    v = ema_square(v, g, b2)
    if bias_correction == "step_size":  # eps on the uncorrected root
        second = torch.maximum(nu_max[0], v) if nu_max else v
        nu_max = (second,) if nu_max else ()
        if not is_off(h["eps_root"]):
            second = second + h["eps_root"]
        u = _nesterov_numerator(m, g, b1, tf, True) if nesterov else m
        u = u / (safe_sqrt(second, nonnegative=True) + h["eps"])
        return (u * (torch.sqrt(1 - b2**tf) / (1 - b1**tf)), t, m, v, *nu_max)
    bc1 = 1 - b1**tf if bias_correction in ("moments", "first_moment") else None
    bc2 = 1 - b2**tf if bias_correction in ("moments", "second_moment") else None
    if nu_max and amsgrad_corrected and bc2 is not None:  # the maximum of v / bc2
        nu_max = (torch.maximum(nu_max[0], v / bc2),)
        second, bc2 = nu_max[0], None
    else:
        nu_max = tuple(torch.maximum(n, v) for n in nu_max)
        second = nu_max[0] if nu_max else v
    # (m / bc1) / (sqrt(second / bc2 + eps_root) + eps), with bc1 folded into the denominator
    if not is_off(h["eps_root"]):
        second = second + (h["eps_root"] if bc2 is None else h["eps_root"] * bc2)
    scale = ((1 if bc1 is None else bc1) / torch.sqrt(bc2)) if bc2 is not None else bc1
    eps = h["eps"] if bc1 is None else h["eps"] * bc1
    if scale is None:  # (one expression each: the root's temporary is scaled in place)
        denom = safe_sqrt(second, nonnegative=True) + eps
    else:
        denom = safe_sqrt(second, nonnegative=True) * scale + eps
    num = _nesterov_numerator(m, g, b1, tf, bc1 is not None) if nesterov else m
    return (num / denom, t, m, v, *nu_max)


def _nesterov_numerator(m, g, b1, tf, corrected):
    r"""Dozat's Nesterov first moment times :math:`1-\beta_1^t` (``corrected``, so that it takes
    Adam's correction), else as it is: :math:`\beta_1 m_t \frac{1-\beta_1^t}{1-\beta_1^{t+1}}
    + (1-\beta_1) g_t`, or :math:`\beta_1 m_t + (1-\beta_1) g_t`."""
    keep = b1 * ((1 - b1**tf) / (1 - b1 ** (tf + 1))) if corrected else b1
    return m * keep + borrowed(g) * (1 - b1)


def corrected_first_moment(m: Any, g: Any, b1: Any, t: Any, nesterov: bool = False) -> Any:
    r"""Adam's bias-corrected first moment, or with ``nesterov`` Dozat's Nesterov one (Dozat,
    2016, *Incorporating Nesterov Momentum into Adam*), as optax's ``scale_by_adam``,
    ``scale_by_radam`` and ``scale_by_belief`` compute them:

    .. math::
        \hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad
        \hat m_t^{nesterov} = \frac{\beta_1 m_t}{1-\beta_1^{t+1}}
                             + \frac{(1-\beta_1) g_t}{1-\beta_1^t}

    A rule written with tensor ops, for blocks that reuse Adam's first moment.

    Args:
        m: :math:`m_t`, the first moment after this step's update (a tensor).
        g: :math:`g_t`, this step's update (a tensor like ``m``).
        b1: :math:`\beta_1` (a number or 0-d tensor).
        t: the step count :math:`t \ge 1` counting this step (a number or 0-d tensor; an
            integer tensor is taken in ``g``'s scalar dtype).
        nesterov: Dozat's first moment (structural).
    """
    if isinstance(t, torch.Tensor) and not t.is_floating_point():
        t = t.to(scalar_dtype(g))
    bc1 = 1 - b1**t
    return (_nesterov_numerator(m, g, b1, t, True) if nesterov else m) / bc1


_BIAS_CORRECTIONS = ("moments", "step_size", "none", "first_moment", "second_moment")


def scale_by_adam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                  eps_root: float = 0.0, amsgrad: bool = False, *,
                  bias_correction: str = "moments", nesterov: bool = False,
                  amsgrad_corrected: bool = False,
                  mu_dtype: torch.dtype | None = None) -> Transform:
    r"""Rescales updates by Adam's bias-corrected moments (Kingma & Ba, 2015, Algorithm 1).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t, \qquad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t / (1-\beta_2^t) + \epsilon_{root}}
              + \epsilon}

    That is ``bias_correction="moments"`` (torch.optim.Adam's and optax's). Where the correction
    goes is structural, as it moves ``ε``:

    - ``"step_size"``: the paper's "efficient version" (end of its Section 2), HuggingFace's
      ``AdamW(correct_bias=True)`` and Keras's Adam: ``ε`` is added to the *uncorrected* root
      and the corrections scale the step,
      :math:`u_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
      \frac{m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}`;
    - ``"none"``: no correction (BERT's original optimizer, HuggingFace's
      ``correct_bias=False``, optax's ``amsgrad(bias_correction_mu=False,
      bias_correction_nu=False)``, Reddi et al.'s AMSGrad), :math:`u_t = m_t / (\sqrt{\hat v_t
      + \epsilon_{root}} + \epsilon)`;
    - ``"first_moment"`` / ``"second_moment"``: only :math:`m_t` / only :math:`v_t` corrected
      (optax's ``amsgrad`` with ``bias_correction_nu=False`` / ``bias_correction_mu=False``).

    AMSGrad (Reddi et al., 2018) keeps the running maximum of :math:`v_t` (torch.optim.Adam's
    ``max_exp_avg_sq``) and corrects it; with ``amsgrad_corrected`` it keeps the maximum of the
    *corrected* :math:`v_t / (1-\beta_2^t)` instead, as optax's ``scale_by_amsgrad`` does (the
    two differ: the correction shrinks as :math:`t` grows, so an early corrected value can stay
    the maximum), :math:`\hat v_t = \max(\hat v_{t-1}, v_t / (1-\beta_2^t))`,
    :math:`u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}`
    (the same as the default where :math:`v_t` is not corrected).

    With ``nesterov`` the first moment is Dozat's Nesterov momentum (Dozat, 2016, *Incorporating
    Nesterov Momentum into Adam*), as optax's ``scale_by_adam(nesterov=True)`` (its ``nadam``):
    :math:`m_t / (1-\beta_1^t)` becomes :math:`\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1)
    g_t / (1-\beta_1^t)` (each term without its correction where :math:`m_t` is not corrected).
    This is not torch.optim.NAdam's momentum schedule
    (:func:`~functional_optim.transforms.scale_by_nadam`).

    ``mu_dtype`` keeps :math:`m_t` in the state in another dtype (e.g. ``torch.bfloat16`` to save
    memory), as optax's ``mu_dtype``: each step computes in the parameters' dtype from the stored
    :math:`m_{t-1}` and stores :math:`m_t` rounded to ``mu_dtype``; the update uses the unrounded
    :math:`m_t`. A complex parameter keeps it in the complex dtype of that precision.

    Complex parameters are treated as pairs of reals, as torch.optim.Adam does. The square root
    is safe at zero (finite meta-gradients).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` added to the root (default 1e-8).
        eps_root: ``ε_root`` added inside the root (default 0).
        amsgrad: keep the running maximum of ``v`` (static; default False).
        bias_correction: ``"moments"``, ``"step_size"``, ``"none"``, ``"first_moment"`` or
            ``"second_moment"`` (static; see above).
        nesterov: Dozat's Nesterov first moment (static; default False).
        amsgrad_corrected: with ``amsgrad``, the maximum of the corrected second moment, as
            optax (static; default False: torch's maximum of the raw one).
        mu_dtype: dtype of the first moment's state (static; default ``None``: the
            parameters').
    """
    check_choice("scale_by_adam", "bias_correction", bias_correction, _BIAS_CORRECTIONS)
    if amsgrad_corrected and not amsgrad:
        raise HParamError("scale_by_adam: amsgrad_corrected=True needs amsgrad=True")
    if amsgrad_corrected and bias_correction == "step_size":
        raise HParamError("scale_by_adam: amsgrad_corrected=True takes the maximum of the "
                          "corrected second moment, which bias_correction='step_size' does not "
                          "form; use 'moments' or 'second_moment'")
    check_betas("scale_by_adam", betas)
    check_hparam("scale_by_adam", "eps", eps, ge=0)
    check_hparam("scale_by_adam", "eps_root", eps_root, ge=0)
    check_dtype_option("scale_by_adam", "mu_dtype", mu_dtype)
    defaults = {"betas": tuple(betas), "eps": eps, "eps_root": eps_root}
    rule = functools.partial(_adam_rule, bias_correction=bias_correction, nesterov=nesterov,
                             amsgrad_corrected=amsgrad_corrected)

    mu_like = LIKE if mu_dtype is None else SHAPED

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAdamState(init_count(params), zeros_in(params, mu_dtype), zeros(params),
                                zeros(params) if amsgrad else EmptyState())

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "scale_by_adam hparams")
        check_state("scale_by_adam", state, ScaleByAdamState)
        states = (state.step, state.mu, state.nu) + ((state.nu_max,) if amsgrad else ())
        return PointwiseCall(rule, h, states, finish=_adam_state,
                             donate_state=(True,) * len(states),
                             state_like=(None, mu_like) + (LIKE,) * (len(states) - 2))

    # torch's Adam kernels compute the "moments" correction of torch's Adam only
    torch_adam = (bias_correction == "moments" and not nesterov and mu_dtype is None
                  and not (amsgrad and amsgrad_corrected))
    kernel = ("adam", amsgrad) if torch_adam else ()
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


def _rms_rule(h, g, t, v, *mu, eps_in_sqrt=False, bias_correction=False):
    alpha = h["alpha"]
    t = t + 1
    v = ema_square(v, g, alpha)
    m = (lerp(mu[0], g, 1 - alpha),) if mu else ()
    v_hat, m_hat = v, m
    if bias_correction:
        bc = 1 - alpha ** t.to(scalar_dtype(g))
        v_hat, m_hat = v / bc, tuple(x / bc for x in m)
    uncentered = len(mu) == 0  # (a square root of a mean of squares)
    second = v_hat if uncentered else v_hat - m_hat[0] * m_hat[0]
    if eps_in_sqrt:
        u = g / safe_sqrt(second + h["eps"], nonnegative=uncentered)
    else:
        u = g / (safe_sqrt(second, nonnegative=uncentered) + h["eps"])
    return (u, t, v, *m)


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8, centered: bool = False, *,
                 eps_in_sqrt: bool = False, bias_correction: bool = False,
                 initial_scale: float = 0.0) -> Transform:
    r"""Divides updates by the root of a running mean of their squares (RMSprop; Hinton, 2012).

    .. math::
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t - \bar g_t^2} + \epsilon} \text{ (centered, Graves 2013)}
        \text{ or } \frac{g_t}{\sqrt{v_t} + \epsilon}

    with :math:`\bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t`, as torch.optim.RMSprop computes
    it (``ε`` outside the root; complex parameters as pairs of reals). With ``bias_correction``
    (optax's option) the means are divided by :math:`1 - \alpha^t` first:
    :math:`u_t = g_t / (\sqrt{v_t / (1-\alpha^t)} + \epsilon)`, Adam without its first moment
    (schedule-free AdamW's preconditioner).

    optax's ``scale_by_rms``/``scale_by_stddev`` (its ``rmsprop``) are the same block with
    two more structural options: ``eps_in_sqrt`` puts ``ε`` inside the root (optax's default),
    :math:`u_t = g_t / \sqrt{v_t - \bar g_t^2 + \epsilon}` (the corrected means with
    ``bias_correction``); ``initial_scale`` is :math:`v_0` (TF1's RMSprop starts at 1;
    :math:`\bar g_0 = 0`).
    The root is safe at zero (finite meta-gradients; a negative centered estimate counts as 0).

    Args:
        alpha: smoothing constant (default 0.99).
        eps: ``ε`` (default 1e-8).
        centered: subtract the squared running mean (static; default False).
        eps_in_sqrt: ``ε`` inside the root (static; default False, torch's).
        bias_correction: correct the running means (static; default False).
        initial_scale: :math:`v_0` (static: read by ``init``; default 0).
    """
    check_hparam("scale_by_rms", "alpha", alpha, ge=0, le=1)
    check_hparam("scale_by_rms", "eps", eps, ge=0)
    v0 = check_init_value("scale_by_rms", "initial_scale", initial_scale)
    defaults = {"alpha": alpha, "eps": eps}
    rule = functools.partial(_rms_rule, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction)

    def init(params):
        return ScaleByRmsState(init_count(params), full_like(params, v0),
                               _tree.zeros_like(params) if centered else EmptyState())

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "scale_by_rms hparams")
        check_state("scale_by_rms", state, ScaleByRmsState)
        states = (state.step, state.nu) + ((state.mu,) if centered else ())
        return PointwiseCall(rule, h, states, finish=lambda new: ScaleByRmsState(*new),
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
    take = None if is_off(h["dampening"]) else 1 - h["dampening"] * started  # (None: times 1)
    if detach_first and torch.is_grad_enabled() and not bool(t > 0):
        g_in = g.detach()  # (read on the host, as torch.optim.SGD's differentiable step does)
    else:
        g_in = g
    # (one expression: the decayed buffer is a temporary, which the sum may overwrite in place,
    # so a donated buffer stays the buffer; dense + sparse: a sparse g gives a dense buffer)
    buf = (buf * keep if buf.dtype == g.dtype else decayed(buf, keep, g)) + (
        g_in if take is None else take * g_in)
    return (momentum * buf + g if nesterov else buf), t + 1, buf


def trace(momentum: float = 0.9, dampening: float = 0.0, nesterov: bool = False, *,
          detach_first: bool = False, accumulator_dtype: torch.dtype | None = None
          ) -> Transform:
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

    ``accumulator_dtype`` keeps the buffer in another dtype, as optax's ``trace(...,
    accumulator_dtype=)``: :math:`\mu\, b_{t-1}` is computed in that dtype, the rest in the
    updates' (the output uses the unrounded :math:`b_t`), and :math:`b_t` is stored rounded
    to it. With dampening 0 this block is optax's ``trace(decay=μ, nesterov=...)``.

    Args:
        momentum: ``μ`` (default 0.9).
        dampening: ``τ`` (default 0); must be 0 with ``nesterov``.
        nesterov: Nesterov momentum (structural; default False).
        detach_first: the first buffer :math:`b_1` is a detached copy of :math:`g_1`, as
            torch.optim.SGD makes it: with autograd on (its ``differentiable=True``) no gradient
            flows through it, and the count is read on the host to tell the first step, as
            torch's step does (structural; default False: meta-gradients flow through
            :math:`b_1 = g_1`, as MAML with momentum needs, and nothing is read).
        accumulator_dtype: dtype of the buffer's state (structural; default ``None``: the
            parameters').
    """
    check_hparam("trace", "momentum", momentum, ge=0)
    check_dtype_option("trace", "accumulator_dtype", accumulator_dtype)
    check_hparam("trace", "dampening", dampening)
    if nesterov and (isinstance(dampening, torch.Tensor) or dampening != 0):
        raise HParamError("trace: nesterov momentum requires dampening == 0 (as torch.optim.SGD)")
    defaults = {"momentum": momentum, "dampening": dampening}
    rule = functools.partial(_trace_rule, nesterov=nesterov, detach_first=detach_first)

    def init(params):
        return TraceState(init_count(params), zeros_in(params, accumulator_dtype))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, "trace hparams")
        check_state("trace", state, TraceState)
        return PointwiseCall(rule, h, (state.step, state.momentum_buffer),
                             finish=lambda new: TraceState(*new), donate_state=(True, True),
                             sparse=True,
                             state_like=(None, LIKE if accumulator_dtype is None else SHAPED))

    return pointwise_transform(init, defaults, Pointwise(prepare, "trace"))

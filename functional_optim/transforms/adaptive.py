r"""Adaptive building blocks of the classic optimizers: Adagrad, Adadelta, Adamax, NAdam, RAdam,
and averaged SGD (Rprop: :mod:`functional_optim.transforms.rprop`).

Each is written once as math on tensors (see :func:`functional_optim._execute.elementwise`) and
gives torch.optim's numbers when chained as in :mod:`functional_optim.aliases`. Every block keeps
a per-parameter ``step`` count (0-d int64) in its state, never syncs with the host (branches are
``torch.where``), and treats complex parameters as pairs of reals, as torch.optim does.

*Scalar state policy.* torch.optim.NAdam keeps its running product ``mu_product`` and
torch.optim.ASGD its ``eta`` and ``mu`` as 0-d tensors of torch's *scalar dtype*: float32 unless
the default dtype is float64, whatever the parameters' dtype; each step rounds them to it. The
blocks that keep such scalars take ``scalar_state_dtype``: ``None`` (the default) chooses the
dtype as torch.optim does when ``init`` runs, so their trajectories are torch's to the last digit;
``torch.float64`` keeps them exact (smooth in every hyperparameter, as meta-gradients want).
"""

from __future__ import annotations

import functools
from numbers import Number
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    Pointwise,
    PointwiseCall,
    elementwise,
    ema_square,
    full_like,
    init_count,
    is_off,
    lerp,
    safe_sqrt,
    scalar_dtype,
)
from .._rulemath import leaf_scalars
from ..base import (
    MissingParamsError,
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
from .moments import corrected_first_moment
from .sparse import at_indices, rows

__all__ = [
    "ScaleByRssState",
    "scale_by_rss",
    "ScaleByAdadeltaState",
    "scale_by_adadelta",
    "ScaleByAdamaxState",
    "scale_by_adamax",
    "ScaleByNadamState",
    "scale_by_nadam",
    "ScaleByRadamState",
    "scale_by_radam",
    "ScaleByAsgdState",
    "scale_by_asgd",
]


def _torch_scalar_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """``dtype``, or (``None``) the dtype torch.optim gives its 0-d scalar state."""
    if dtype is not None:
        return dtype
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Adagrad


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`.

    Attributes:
        step: per-parameter step count (0-d int64).
        sum: running sum of squared updates, from ``initial_accumulator_value``
            (torch.optim.Adagrad's ``sum``).
    """

    step: Any
    sum: Any


def _rss_rule(h, g, t, s, *, eps_in_sqrt):
    t = t + 1
    if isinstance(g, torch.Tensor) and g.is_sparse:
        s, u = _sparse_rss(h, g, s, eps_in_sqrt)
    else:
        s = torch.addcmul(s, g, g)
        u = _rss_scaled(g, s, h["eps"], eps_in_sqrt)
    decay = h["lr_decay"]
    if isinstance(decay, torch.Tensor) or decay != 0:
        u = u / (1 + (t.to(scalar_dtype(g)) - 1) * decay)
    return u, t, s


def _rss_scaled(g, s, eps, eps_in_sqrt):
    """:math:`g / (\\sqrt s + \\epsilon)`, or with ``eps_in_sqrt`` optax's
    :math:`g / \\sqrt{s + \\epsilon}` where :math:`s > 0` and 0 elsewhere."""
    if not eps_in_sqrt:  # (a complex sum, from torch's sparse path: its principal root)
        return g / ((torch.sqrt(s) if s.is_complex() else safe_sqrt(s, nonnegative=True)) + eps)
    positive = s > 0
    root = safe_sqrt(torch.where(positive, s + eps, 1.0), nonnegative=True)
    return torch.where(positive, g / root, 0.0)


def _sparse_rss(h, g, s, eps_in_sqrt):
    """The rule's sum and update for a sparse ``g``, as torch.optim.Adagrad computes them: on
    the coalesced gradient's entries only (complex values as they are, as torch's sparse path)."""
    g = g.coalesce()  # not linear in g: repeated indices are summed first
    index, values = g.indices(), g.values()
    s = s + at_indices(index, values.pow(2), s.shape)
    u = _rss_scaled(values, rows(s, index), h["eps"], eps_in_sqrt)
    return s, at_indices(index, u, g.shape)


def scale_by_rss(lr_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, eps_in_sqrt: bool = False) -> Transform:
    r"""Divides updates by the root of the sum of their squares (Adagrad; Duchi, Hazan & Singer,
    2011, *Adaptive Subgradient Methods for Online Learning and Stochastic Optimization*).

    .. math::
        s_0 = s_{init}, \qquad s_t = s_{t-1} + g_t^2, \qquad
        u_t = \frac{1}{1 + (t-1)\,\delta}\;\frac{g_t}{\sqrt{s_t} + \epsilon}

    with :math:`\delta` the learning-rate decay, as torch.optim.Adagrad computes it (complex
    parameters as pairs of reals, :math:`s_0 = s_{init}(1 + i)`). A sparse COO update
    (``nn.Embedding(sparse=True)``) is coalesced and changes :math:`s` and the update at its
    entries only, as torch.optim.Adagrad's sparse path (which squares complex entries as
    complex numbers); the update stays sparse.

    With ``eps_in_sqrt`` it is optax's ``scale_by_rss`` (its ``adagrad``, with
    ``initial_accumulator_value=0.1``, ``eps=1e-7`` and ``lr_decay=0`` there):
    :math:`u_t = g_t / \sqrt{s_t + \epsilon}` where :math:`s_t > 0`, and 0 where
    :math:`s_t = 0`.

    Args:
        lr_decay: ``δ`` (default 0).
        initial_accumulator_value: ``s_init`` (static: read by ``init``; default 0).
        eps: ``ε`` (default 1e-10).
        eps_in_sqrt: ``ε`` inside the root, as optax (static; default False, torch's).
    """
    owner = "scale_by_rss"
    check_hparam(owner, "lr_decay", lr_decay, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    init_value = check_init_value(owner, "initial_accumulator_value", initial_accumulator_value)
    defaults = {"lr_decay": lr_decay, "eps": eps}
    rule = functools.partial(_rss_rule, eps_in_sqrt=eps_in_sqrt)

    def init(params):
        return ScaleByRssState(init_count(params), full_like(params, init_value))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByRssState)
        out, step, s = elementwise(rule, h, updates, (state.step, state.sum), name=owner,
                                   complex_as_real=True, donate_state=True, sparse=True,
                                   state_like=(None, LIKE))
        return out, ScaleByRssState(step, s)

    return Transform(init, update, defaults)


# --------------------------------------------------------------------------------------------
# Adadelta


class ScaleByAdadeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`.

    Attributes:
        step: per-parameter step count (0-d int64).
        square_avg: running mean of squared updates.
        acc_delta: running mean of squared outputs.
    """

    step: Any
    square_avg: Any
    acc_delta: Any


def _adadelta_rule(h, g, t, v, d2):
    rho, eps = h["rho"], h["eps"]
    v = ema_square(v, g, rho)
    delta = safe_sqrt(d2 + eps, nonnegative=True) / safe_sqrt(v + eps, nonnegative=True) * g
    d2 = ema_square(d2, delta, rho)
    return delta, t + 1, v, d2


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> Transform:
    r"""Adadelta's unit-corrected scaling (Zeiler, 2012, *ADADELTA: An Adaptive Learning Rate
    Method*).

    .. math::
        v_t = \rho v_{t-1} + (1-\rho) g_t^2, \qquad
        u_t = \frac{\sqrt{a_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t, \qquad
        a_t = \rho a_{t-1} + (1-\rho) u_t^2

    as torch.optim.Adadelta computes it (which then scales :math:`u_t` by its ``lr``; complex
    parameters as pairs of reals).

    Args:
        rho: ``ρ`` in [0, 1] (default 0.9).
        eps: ``ε`` (default 1e-6).
    """
    owner = "scale_by_adadelta"
    check_hparam(owner, "rho", rho, ge=0, le=1)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"rho": rho, "eps": eps}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAdadeltaState(init_count(params), zeros(params), zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAdadeltaState)
        return PointwiseCall(_adadelta_rule, h, (state.step, state.square_avg, state.acc_delta),
                             finish=lambda new: ScaleByAdadeltaState(*new),
                             state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


# --------------------------------------------------------------------------------------------
# Adamax


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`.

    Attributes:
        step: per-parameter step count (0-d int64).
        exp_avg: first moment.
        exp_inf: exponentially weighted infinity norm.
    """

    step: Any
    exp_avg: Any
    exp_inf: Any


def _adamax_rule(h, g, t, m, n):
    b1, b2 = h["betas"]
    t = t + 1
    m = lerp(m, g, 1 - b1)
    n = torch.maximum(n * b2, torch.abs(g) + h["eps"])
    bc1 = 1 - b1 ** t.to(scalar_dtype(g))
    return m / (n * bc1), t, m, n


def scale_by_adamax(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> Transform:
    r"""Adam's infinity-norm variant (Kingma & Ba, 2015, *Adam: A Method for Stochastic
    Optimization*, section 7.1).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        n_t = \max(\beta_2 n_{t-1}, |g_t| + \epsilon), \qquad
        u_t = \frac{m_t}{(1-\beta_1^t)\, n_t}

    as torch.optim.Adamax computes it (``ε`` inside the maximum; complex parameters as pairs of
    reals).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
    """
    owner = "scale_by_adamax"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps}

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByAdamaxState(init_count(params), zeros(params), zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAdamaxState)
        return PointwiseCall(_adamax_rule, h, (state.step, state.exp_avg, state.exp_inf),
                             finish=lambda new: ScaleByAdamaxState(*new),
                             donate_state=(True,) * 3, state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


# --------------------------------------------------------------------------------------------
# NAdam


class ScaleByNadamState(NamedTuple):
    """State of :func:`scale_by_nadam`.

    Attributes:
        step: per-parameter step count (0-d int64).
        mu_product: running product of the momentum coefficients :math:`\\prod_i \\mu_i`
            (0-d, of the scalar state dtype; starts at 1).
        exp_avg: first moment.
        exp_avg_sq: second moment.
    """

    step: Any
    mu_product: Any
    exp_avg: Any
    exp_avg_sq: Any


def _nadam_rule(h, g, t, mp, m, v):
    b1, b2 = h["betas"]
    psi = h["momentum_decay"]
    sd = scalar_dtype(g)
    t = t + 1
    tf = t.to(sd)
    mu = b1 * (1 - 0.5 * 0.96 ** (tf * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((tf + 1) * psi))
    mp = mp * mu.to(mp.dtype)  # in the state's dtype, as torch.optim.NAdam multiplies it
    mpf = mp.to(sd)
    m = lerp(m, g, 1 - b1)
    v = ema_square(v, g, b2)
    denom = safe_sqrt(v / (1 - b2 ** tf), nonnegative=True) + h["eps"]
    c_grad = (1 - mu) / (1 - mpf)
    c_avg = mu_next / (1 - mpf * mu_next)
    u = g / denom * c_grad + m / denom * c_avg
    return u, t, mp, m, v


def scale_by_nadam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                   momentum_decay: float = 4e-3, *,
                   scalar_state_dtype: torch.dtype | None = None) -> Transform:
    r"""Nesterov-accelerated Adam (Dozat, 2016, *Incorporating Nesterov Momentum into Adam*),
    with the momentum schedule of torch.optim.NAdam.

    .. math::
        \mu_t = \beta_1\big(1 - \tfrac12\, 0.96^{t\psi}\big), \qquad
        \Pi_t = \prod_{i \le t} \mu_i, \\
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        u_t = \frac{1}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}\left(
              \frac{1-\mu_t}{1-\Pi_t}\, g_t + \frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}}\, m_t\right)

    Weight decay (coupled or decoupled) is a separate block: see :func:`functional_optim.nadam`.

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        momentum_decay: ``ψ`` (default 4e-3).
        scalar_state_dtype: dtype of ``mu_product`` (see the module's scalar state policy;
            ``None``: torch.optim's).
    """
    owner = "scale_by_nadam"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "momentum_decay", momentum_decay, ge=0)
    check_dtype_option(owner, "scalar_state_dtype", scalar_state_dtype)
    defaults = {"betas": tuple(betas), "eps": eps, "momentum_decay": momentum_decay}

    def init(params):
        dtype = _torch_scalar_dtype(scalar_state_dtype)
        return ScaleByNadamState(init_count(params), leaf_scalars(params, 1.0, dtype),
                                 _tree.zeros_like(params), _tree.zeros_like(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByNadamState)
        return PointwiseCall(_nadam_rule, h,
                             (state.step, state.mu_product, state.exp_avg, state.exp_avg_sq),
                             finish=lambda new: ScaleByNadamState(*new),
                             donate_state=(True,) * 4, state_like=(None, None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


# --------------------------------------------------------------------------------------------
# RAdam


class ScaleByRadamState(NamedTuple):
    """State of :func:`scale_by_radam`.

    Attributes:
        step: per-parameter step count (0-d int64).
        exp_avg: first moment.
        exp_avg_sq: second moment.
    """

    step: Any
    exp_avg: Any
    exp_avg_sq: Any


def _radam_rule(h, g, t, m, v, *, optax, nesterov):
    b1, b2 = h["betas"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    m = lerp(m, g, 1 - b1)
    v = ema_square(v, g, b2)
    bc2 = 1 - b2 ** tf
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * tf * b2 ** tf / bc2
    rectify = rho_t >= h["threshold"] if optax else rho_t > h["threshold"]
    ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / torch.where(
        rectify, (rho_inf - 4) * (rho_inf - 2) * rho_t, 1.0)
    rect = torch.sqrt(torch.where(rectify, ratio, 1.0))
    m_hat = corrected_first_moment(m, g, b1, tf, nesterov)
    second = v
    if not is_off(h["eps_root"]):
        second = v + (h["eps_root"] * bc2 if optax else h["eps_root"])
    root = torch.sqrt(bc2)  # optax: 1 / (sqrt(v / bc2 + eps_root) + eps)
    adaptive = root / (safe_sqrt(second, nonnegative=True)
                       + (h["eps"] * root if optax else h["eps"]))
    u = torch.where(rectify, m_hat * adaptive * rect, m_hat)
    return u, t, m, v


RADAM_THRESHOLD = 5.0
"""The rectification switch of RAdam: the adaptive step is used once ``ρ_t > 5`` (the paper's
and torch.optim.RAdam's)."""

VARIANTS = ("torch", "optax")
"""The variants of the blocks that torch.optim and optax compute differently."""


def scale_by_radam(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                   threshold: float = RADAM_THRESHOLD, *, eps_root: float = 0.0,
                   nesterov: bool = False, variant: str = "torch") -> Transform:
    r"""Rectified Adam (Liu et al., 2020, *On the Variance of the Adaptive Learning Rate and
    Beyond*).

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}, \qquad
        \hat m_t = \frac{m_t}{1-\beta_1^t}, \\
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}},
        \qquad
        u_t = \begin{cases}
            \hat m_t\, r_t\, \dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} & \rho_t > \tau \\
            \hat m_t & \text{otherwise}
        \end{cases}

    with Adam's moments :math:`m_t, v_t` and the rectification switch at ``τ`` (5 in the paper
    and in torch.optim.RAdam), evaluated with ``torch.where`` (no host sync).

    ``variant="optax"`` is optax's ``scale_by_radam``: ``ε`` is added to the *corrected* root,
    :math:`\hat m_t r_t / (\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon)`, and the
    switch is :math:`\rho_t \ge \tau`. ``eps_root`` goes inside the root (of
    :math:`v_t` in torch's variant); ``nesterov`` replaces :math:`\hat m_t` by Dozat's
    :math:`\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)`, as optax's
    ``nesterov=True`` (see :func:`~functional_optim.transforms.scale_by_adam`).

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        threshold: ``τ``: the adaptive step is used once ``ρ_t > τ`` (default 5).
        eps_root: ``ε_root`` inside the root (default 0).
        nesterov: Dozat's Nesterov first moment (static; default False).
        variant: ``"torch"`` or ``"optax"`` (static; see above).
    """
    owner = "scale_by_radam"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "threshold", threshold, ge=4)
    check_hparam(owner, "eps_root", eps_root, ge=0)
    check_choice(owner, "variant", variant, VARIANTS)
    defaults = {"betas": tuple(betas), "eps": eps, "threshold": threshold, "eps_root": eps_root}
    rule = functools.partial(_radam_rule, optax=variant == "optax", nesterov=nesterov)

    def init(params):
        zeros = _tree.zeros_like
        return ScaleByRadamState(init_count(params), zeros(params), zeros(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByRadamState)
        return PointwiseCall(rule, h, (state.step, state.exp_avg, state.exp_avg_sq),
                             finish=lambda new: ScaleByRadamState(*new),
                             donate_state=(True,) * 3, state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


# --------------------------------------------------------------------------------------------
# ASGD


class ScaleByAsgdState(NamedTuple):
    """State of :func:`scale_by_asgd`.

    Attributes:
        step: per-parameter step count (0-d int64).
        eta: the step size of the next update (0-d, scalar state dtype).
        mu: the averaging weight of the next update (0-d, scalar state dtype).
        ax: the averaged parameters (evaluate with these).
    """

    step: Any
    eta: Any
    mu: Any
    ax: Any


def _asgd_rule(h, g, t, eta, mu, ax, p, *, rounding):
    lr, lambd = h["lr"], h["lambd"]
    sd = scalar_dtype(g)
    eta = torch.where(t == 0, lr, eta).to(eta.dtype)  # the stored value, as torch reads it
    e = eta.to(sd)
    t = t + 1
    tf = t.to(sd)
    p_new = p * (1 - lambd * e) - e * g
    ax = ax + (p_new - ax) * mu.to(sd)
    return (p_new - p, t, *asgd_schedule(h, tf, rounding), ax)


def asgd_schedule(h: dict, tf: torch.Tensor, rounding: torch.dtype) -> tuple:
    r"""ASGD's :math:`(\eta_t, \mu_t)` after step ``tf`` (a float64 count), rounded to
    ``rounding`` (torch.optim: a tensor of its scalar dtype), to be stored in the state's dtype.

    torch.div (``number / tensor`` is ``number * reciprocal``: one more rounding than torch's
    Python division) and torch.pow, elementwise on every path, so all give the same digits.
    """
    lr, lambd = h["lr"], h["lambd"]
    eta = torch.div(lr, torch.pow(1 + lambd * lr * tf, h["alpha"])).to(rounding)
    mu = torch.div(1.0, torch.clamp(tf - h["t0"], min=1.0)).to(rounding)
    return eta, mu


def scale_by_asgd(lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                  t0: float = 1e6, *, scalar_state_dtype: torch.dtype | None = None
                  ) -> Transform:
    r"""Averaged stochastic gradient descent (Polyak & Juditsky, 1992, *Acceleration of
    Stochastic Approximation by Averaging*), with torch.optim.ASGD's step-size schedule.

    .. math::
        p_t = p_{t-1}(1 - \lambda \eta_{t-1}) - \eta_{t-1} g_t, \qquad
        \bar p_t = \bar p_{t-1} + \mu_{t-1}(p_t - \bar p_{t-1}), \\
        \eta_t = \frac{\gamma}{(1 + \lambda \gamma t)^\alpha}, \qquad
        \mu_t = \frac{1}{\max(1, t - t_0)}, \qquad \eta_0 = \gamma,\ \mu_0 = 1

    The output is the whole step :math:`p_t - p_{t-1}` (it includes the learning rate ``γ``:
    put no learning-rate block after it); the average :math:`\bar p_t` is the state's ``ax``.
    ``η`` and ``μ`` are kept in the state as torch.optim does (so a changed ``lr`` acts from the
    next step's ``η``); ``η_0`` is the ``lr`` of the first update. Needs ``params``. Complex
    parameters as pairs of reals.

    Args:
        lr: ``γ`` (default 1e-2).
        lambd: decay term ``λ`` (default 1e-4).
        alpha: power ``α`` for the ``η`` update (default 0.75).
        t0: step at which averaging starts (default 1e6).
        scalar_state_dtype: dtype of ``eta`` and ``mu`` (see the module's scalar state
            policy; ``None``: torch.optim's). Their new values are rounded to it every step even
            where the state holds a wider dtype (torch.optim.ASGD makes them with
            ``torch.as_tensor``, in its scalar dtype, whatever dtype a loaded checkpoint gave
            its state).
    """
    owner = "scale_by_asgd"
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "lambd", lambd)
    check_hparam(owner, "alpha", alpha)
    check_hparam(owner, "t0", t0)
    check_dtype_option(owner, "scalar_state_dtype", scalar_state_dtype)
    defaults = {"lr": lr, "lambd": lambd, "alpha": alpha, "t0": t0}

    def init(params):
        dtype = _torch_scalar_dtype(scalar_state_dtype)
        first = lr if isinstance(lr, Number) else 0.0  # replaced by the lr of the first update
        return ScaleByAsgdState(init_count(params), leaf_scalars(params, first, dtype),
                                leaf_scalars(params, 1.0, dtype), _tree.zeros_like(params))

    rule = functools.partial(_asgd_rule, rounding=_torch_scalar_dtype(scalar_state_dtype))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAsgdState)
        if params is None and _tree.num_leaves(updates):
            raise MissingParamsError(
                f"{owner} needs the parameters (it decays and averages them): call "
                "update(updates, state, params)")
        return PointwiseCall(rule, h, (state.step, state.eta, state.mu, state.ax),
                             inputs=(params,) if params is not None else (),
                             finish=lambda new: ScaleByAsgdState(*new), input_names=("params",),
                             state_like=(None, None, None, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


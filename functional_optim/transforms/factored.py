"""Factored second moments: the Adafactor family (Shazeer & Stern, 2018), one definition with the
variants of torch.optim.Adafactor, of HuggingFace transformers' Adafactor and of optax's."""

from __future__ import annotations

import functools
from numbers import Number
from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    SHAPED,
    TYPED,
    decayed,
    elementwise,
    full,
    init_count,
    is_off,
    mean_over,
    placed_like,
    scalar_dtype,
)
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    check_choice,
    check_dtype_option,
    check_hparam,
    check_state,
    missing_params,
    resolve_hparams,
)

__all__ = ["ScaleByFactoredRmsState", "scale_by_factored_rms", "relative_step_size"]

# the state of a factor that a leaf does not keep (a vector has no row/col factors, a matrix no
# full variance): an empty tensor, so every state field stays a tree shaped like the parameters
_NONE_SHAPE = (0,)
_VARIANTS = ("torch", "huggingface", "optax")
_HALF = (torch.float16, torch.bfloat16)


class ScaleByFactoredRmsState(NamedTuple):
    """State of :func:`scale_by_factored_rms`; every field is a tree shaped like the parameters.

    Attributes:
        step: per-parameter step count (0-d int64).
        row_var: for a parameter of >= 2 dimensions, the running mean of the squared gradient
            over its last dimension (shape ``(..., m, 1)``; ``(..., m)`` in the HuggingFace
            variant); an empty tensor otherwise.
        col_var: the same over the second-to-last dimension (shape ``(..., 1, n)``;
            ``(..., n)`` in the HuggingFace variant); empty for parameters of fewer than 2
            dimensions.
        variance: for a parameter of 0 or 1 dimension, the running mean of the squared
            gradient (its shape); empty for >= 2 dimensions.
        exp_avg: with ``beta1``, the running mean of the scaled updates; else an empty
            :class:`EmptyState`.
        rms: in the HuggingFace variant, the RMS of each parameter at its last update (0-d), from
            which :func:`relative_step_size` gives the step size used; else an empty
            :class:`EmptyState`.
    """

    step: Any
    row_var: Any
    col_var: Any
    variance: Any
    exp_avg: Any = EmptyState()
    rms: Any = EmptyState()


def _max(x, bound):
    """``max(x, bound)`` for a tensor ``x`` and a number or 0-d tensor ``bound`` (no host sync;
    a NaN ``x`` stays NaN, as ``clamp``)."""
    if isinstance(bound, Number):
        return torch.clamp(x, min=bound)
    return torch.maximum(x, bound)


def at_least(x, bound):
    """``max(bound, x)`` as Python's ``max`` gives it, as torch.optim.Adafactor computes its
    step size and clipping (and HuggingFace's its step size): ``bound`` where ``x`` is NaN, so
    that a NaN or infinite gradient spoils only the entries it reaches (its row and column),
    not the whole parameter. Numbers or 0-d tensors (no host sync)."""
    if isinstance(x, Number) and isinstance(bound, Number):
        return max(bound, x)
    return torch.where(x > bound, x, bound)


def _min(x, bound):
    if isinstance(x, Number):
        return min(x, bound) if isinstance(bound, Number) else torch.clamp(bound, max=x)
    if isinstance(bound, Number):
        return torch.clamp(x, max=bound)
    return torch.minimum(x, bound)


def _statistic(p: torch.Tensor, dim: int) -> torch.Tensor:
    """Zeros shaped like ``p`` reduced over ``dim`` (kept as size 1), the initial mean of the
    squared gradient over that dimension. For a DTensor ``p``: a DTensor on its mesh, sharded as
    ``p`` along the other dimensions and replicated where ``p`` is sharded along ``dim`` (the
    layout of the reduction's result; made locally, no communication)."""
    shape = list(p.shape)
    dim = dim % p.ndim
    shape[dim] = 1
    key = _tree.layout(p)
    if key is None:
        return torch.zeros(shape, dtype=p.dtype, device=p.device)
    from torch.distributed.tensor import Replicate, zeros

    mesh, placements = key
    placements = [Replicate() if getattr(x, "dim", None) == dim else x for x in placements]
    return zeros(shape, dtype=p.dtype, device_mesh=mesh, placements=placements)


def relative_step_size(lr: Any, step: Any, rms: Any, eps2: Any, *, relative_step: bool = True,
                       scale_parameter: bool = True, warmup_init: bool = False) -> Any:
    r"""Adafactor's step size :math:`\alpha_t` (Shazeer & Stern, 2018, Section 8).

    .. math::
        \rho_t = \min(\eta\,(t \text{ if warmup\_init else } 1),\ 1/\sqrt t)
        \text{ if relative\_step else } \eta, \qquad
        \alpha_t = \max(\epsilon_2, \operatorname{RMS}(p_{t-1}))\,\rho_t
        \text{ if scale\_parameter else } \rho_t

    ``step`` is :math:`t` (>= 1), ``rms`` the parameter's RMS (numbers or 0-d tensors). The
    one definition :func:`scale_by_factored_rms` steps with and
    :class:`~functional_optim.optim.HuggingFaceAdafactorSchedule` reports.
    """
    if relative_step:
        cap = lr * step if warmup_init else lr
        rho = _min(1 / step**0.5, cap)
    else:
        rho = lr
    if not scale_parameter:
        return rho
    return at_least(rms, eps2) * rho


def _decayed(old, new, weight, *, huggingface):
    """The running mean :math:`\\hat\\beta_2 x + (1 - \\hat\\beta_2) g` with ``weight`` =
    :math:`1 - \\hat\\beta_2 = t^c`, in each variant's order of operations (HuggingFace
    computes :math:`\\hat\\beta_2` first, then :math:`1 - \\hat\\beta_2` from it)."""
    if huggingface:
        keep = 1 - weight
        return old * keep + (1 - keep) * new
    return torch.lerp(old, new, weight.to(old.dtype))


def _optax_decay(t, c):
    r""":math:`\hat\beta_{2,t} = 1 - t^c` and :math:`1 - \hat\beta_{2,t}` (``t``: the step
    count less the offset, a float), each rounded as optax computes them, in float32 from a
    float32 ``c`` (as jax computes with a Python number), with the derivatives of the exact
    formula in ``t``'s dtype, so that meta-gradients do not see float32's rounding."""
    c32 = c.to(torch.float32) if isinstance(c, torch.Tensor) else torch.full(
        (), c, dtype=torch.float32, device=t.device)
    keep32 = 1 - t.to(torch.float32) ** c32
    weight = t ** c
    keep = 1 - weight
    return (keep + (keep32.to(t.dtype) - keep).detach(),
            weight + ((1 - keep32).to(t.dtype) - weight).detach())


def _factored_rule(h, g, t, row, col, var, *rest, maximize, variant, momentum,
                   relative_step, scale_parameter, warmup_init):
    *moment, p, root_numel, n_last, n_prev, dims = rest
    huggingface, optax = variant == "huggingface", variant == "optax"
    if huggingface and g.dtype in _HALF:  # computed in float32, as HuggingFace does
        g, p = g.float(), p.float()
    if maximize:
        g = -g
    t = t + 1
    tf = t.to(scalar_dtype(g))
    if optax:
        keep, weight = _optax_decay(tf - h["decay_offset"], h["beta2_decay"])
    else:
        weight = tf ** h["beta2_decay"]  # 1 - beta2_t = t^c
    eps1 = h["eps1"] if h["eps1"] is not None else torch.finfo(g.dtype).eps
    if isinstance(eps1, torch.Tensor):  # a tensor hparam must not promote the leaf's math
        eps1 = eps1.to(g.dtype)
    if optax:  # as HuggingFace, factored along the two largest dimensions (dims)
        rms_p = full(torch.linalg.vector_norm(p)) / root_numel
        sq = g * g + eps1
        if dims:  # static: leaves are grouped by it
            row = row * keep + weight * mean_over(sq, dims[1], keepdim=True)
            col = col * keep + weight * mean_over(sq, dims[0], keepdim=True)
            u = g * (row / row.mean(dim=dims[0], keepdim=True)).rsqrt() * col.rsqrt()
        else:
            var = var * keep + weight * sq
            u = g * var.rsqrt()
    elif huggingface:  # eps1 in the squares; the RMS of p in its dtype, as HuggingFace
        rms_p = full(torch.linalg.vector_norm(p)) / root_numel
        sq = g * g + eps1
        if dims:  # static: leaves are grouped by it
            row = _decayed(row, mean_over(sq, -1), weight, huggingface=True)
            col = _decayed(col, mean_over(sq, -2), weight, huggingface=True)
            u = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1) \
                * col.unsqueeze(-2).rsqrt() * g
        else:
            var = _decayed(var, sq, weight, huggingface=True)
            u = var.rsqrt() * g
    else:  # eps1 floors the estimate; the RMS of p in float64
        rms_p = full(torch.linalg.vector_norm(p)).to(tf.dtype) / root_numel
        if dims:
            row = _decayed(row, placed_like(torch.linalg.vector_norm(g, dim=-1, keepdim=True)
                                            .square() / n_last, row), weight, huggingface=False)
            col = _decayed(col, placed_like(torch.linalg.vector_norm(g, dim=-2, keepdim=True)
                                            .square() / n_prev, col), weight, huggingface=False)
            estimate = torch.matmul(row, col) / torch.clamp(row.mean(dim=-2, keepdim=True),
                                                            min=eps1)
        else:
            var = _decayed(var, g * g, weight, huggingface=False)
            estimate = var
        u = torch.clamp(estimate, min=eps1 * eps1).rsqrt() * g
    alpha = relative_step_size(h["lr"], tf, rms_p, h["eps2"], relative_step=relative_step,
                               scale_parameter=scale_parameter, warmup_init=warmup_init)
    # update clipping: divide by max(1, RMS(u) / d)
    if h["d"] is None:  # (no clipping)
        out = u * alpha
    elif huggingface or optax:
        out = u / _max(full(torch.linalg.vector_norm(u)) / root_numel / h["d"], 1.0) * alpha
    else:
        denom = at_least(full(torch.linalg.vector_norm(u)).to(tf.dtype) / (root_numel * h["d"]),
                         1.0)
        out = placed_like(u, g) * (alpha / denom)
    new_moment = ()
    if momentum:
        beta1 = h["beta1"]
        if moment[0].dtype == out.dtype:
            out = moment[0] * beta1 + (1 - beta1) * out
        else:  # momentum_dtype
            out = decayed(moment[0], beta1, out) + (1 - beta1) * out
        new_moment = (out,)
    out = -out
    if not is_off(h["weight_decay"]):
        decay = {"torch": h["lr"], "huggingface": alpha}.get(variant, 1) * h["weight_decay"]
        out = out - p * decay
    if not huggingface:
        return (out, t, row, col, var, *new_moment)
    # the update in the compute dtype (a 0-d leaf would take the scalars' float64)
    return (out.to(g.dtype), t, row, col, var, *new_moment, rms_p)


def _factored_dims(p: torch.Tensor, variant: str, factored: bool, min_size: int) -> tuple:
    """The two dimensions a leaf's second moment is factored along, or ``()`` (unfactored).

    torch and HuggingFace factor a leaf of >= 2 dimensions along its last two, optax along its
    two largest (the larger last; ties in order); only where ``factored`` and both have at
    least ``min_size`` elements."""
    if not factored or p.ndim < 2:
        return ()
    if variant == "optax":
        second, first = sorted(range(p.ndim), key=lambda i: p.shape[i])[-2:]
    else:
        second, first = p.ndim - 2, p.ndim - 1
    return (second, first) if min(p.shape[second], p.shape[first]) >= min_size else ()


def scale_by_factored_rms(lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
                          eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                          weight_decay: float = 0.0, *, maximize: bool = False,
                          variant: str = "torch", relative_step: bool = True,
                          scale_parameter: bool = True, warmup_init: bool = False,
                          beta1: float | None = None, decay_offset: float = 0.0,
                          factored: bool = True, min_dim_size_to_factor: int = 0,
                          momentum_dtype: torch.dtype | None = None) -> Transform:
    r"""Adafactor's factored second moments and relative step size (Shazeer & Stern, 2018).
    Outputs the final (descent) update.

    With :math:`\hat\beta_{2,t} = 1 - t^{c}` (``c = beta2_decay``), for a parameter of at least
    two dimensions (factored along its last two), with :math:`G_t` the gradient:

    .. math::
        R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t}) \operatorname{mean}_{-1}(G_t^2),
        \qquad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t}) \operatorname{mean}_{-2}(G_t^2), \\
        \hat V_t = \frac{R_t C_t}{\max(\operatorname{mean}_{-2}(R_t), \epsilon_1)}

    and for 0-d and 1-d parameters :math:`\hat V_t = \hat\beta_{2,t}\hat V_{t-1} +
    (1-\hat\beta_{2,t}) G_t^2` (unfactored). Then, with :math:`\alpha_t` the step size of
    :func:`relative_step_size` (by default :math:`\max(\epsilon_2, \operatorname{RMS}(p_{t-1}))
    \min(\eta, 1/\sqrt t)`),

    .. math::
        U_t = \frac{G_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}}, \quad
        u_t = -\frac{\alpha_t}{\max(1, \operatorname{RMS}(U_t)/d)}\,U_t
              - \eta\lambda\,p_{t-1}

    (the last term is decoupled weight decay, skipped where ``weight_decay`` is the number 0).
    The ``max`` in :math:`\alpha_t` is Python's, as in both torch and HuggingFace, and so is the
    clipping's in torch's variant: a NaN RMS (from a NaN or infinite gradient) gives the bound,
    so only the entries that gradient reaches become non-finite (HuggingFace clamps the
    clipping's, so there the whole leaf does). With ``beta1`` the scaled update goes through a
    running mean first (the paper's optional momentum):
    :math:`M_t = \beta_1 M_{t-1} + (1-\beta_1)\,\alpha_t U_t / \max(1, \ldots)`,
    :math:`u_t = -M_t - \ldots`. ``maximize`` uses :math:`G_t = -g_t`. The learning rate enters
    the relative step size, so it is an hparam of this block. Needs ``params``. Real
    parameters only.

    ``variant`` (structural) selects whose computation, where torch.optim.Adafactor and
    HuggingFace's ``transformers.optimization.Adafactor`` differ:

    - :math:`\epsilon_1`: torch floors the estimate with it (:math:`\hat V_t` as above, then
      :math:`\max(\hat V_t, \epsilon_1^2)`); HuggingFace adds it to the squares (the moments of
      :math:`G_t^2 + \epsilon_1`) and computes :math:`U_t = G_t\,(R_t /
      \operatorname{mean}(R_t))^{-1/2}\, C_t^{-1/2}`;
    - weight decay: torch's :math:`\eta\lambda p_{t-1}`, HuggingFace's
      :math:`\alpha_t\lambda p_{t-1}`;
    - float16/bfloat16 parameters: torch computes in their dtype; HuggingFace in float32, with
      float32 state, and the update comes out in float32 (``apply_updates`` and the adapter add
      it in float32 and round the parameter once, as HuggingFace does);
    - factor shapes: torch's ``(..., m, 1)`` and ``(..., 1, n)``, HuggingFace's ``(..., m)``
      and ``(..., n)``; HuggingFace's state also keeps ``rms``, :math:`\operatorname{RMS}
      (p_{t-1})` in the parameter's (compute) dtype, as the RMS is computed there.

    ``variant="optax"`` is optax's ``scale_by_factored_rms`` with the blocks its ``adafactor``
    chains after it (``clip_by_block_rms``, ``scale_by_learning_rate``,
    ``scale_by_param_block_rms``, ``ema``, ``add_decayed_weights``; the alias
    :func:`~functional_optim.aliases.optax_variants.optax_adafactor`): HuggingFace's moments of
    :math:`G_t^2 + \epsilon_1`, except that

    - a leaf is factored along its two *largest* dimensions (not its last two);
    - :math:`1-\hat\beta_{2,t} = (t - t_0)^c` with ``decay_offset`` :math:`t_0` (optax's
      ``decay_rate`` is :math:`-c`), computed in float32 as optax computes it;
    - weight decay is :math:`\lambda p_{t-1}` (not scaled by the learning rate);
    - the update is in the parameter's dtype (no float32 for half-precision parameters).

    For every variant: ``factored=False`` keeps full second moments for every leaf, and a leaf
    is factored only where both its factored dimensions have at least ``min_dim_size_to_factor``
    elements (optax's default is 128; 0 here, torch's and HuggingFace's rule); ``d=None`` skips
    the update clipping (optax's ``clipping_threshold=None``), and ``momentum_dtype`` keeps the
    momentum ``exp_avg`` in another dtype (optax's ``dtype_momentum``; its product with
    :math:`\beta_1` in that dtype, the rest in the parameter's).

    ``eps[0] = None`` means ``torch.finfo(dtype).eps`` of each parameter's (compute) dtype (torch
    takes it from the first parameter of a group); the hparam ``eps1`` may be ``None``, a number
    or a tensor at update time (``None`` there means the default).
    ``row_var``/``col_var``/``variance`` that a leaf does not keep are empty tensors.

    Args:
        lr: ``η`` (default 1e-2): the cap of the relative step size, or the step size itself
            without ``relative_step``.
        beta2_decay: ``c <= 0`` (default -0.8).
        eps: ``(ε1, ε2)`` (default ``(None, 1e-3)``).
        d: clipping threshold (default 1; ``>= 1`` in the torch variant, as torch checks,
            ``> 0`` in the others), or ``None``: no clipping (structural).
        weight_decay: ``λ`` (default 0).
        maximize: ascend instead of descend (structural).
        variant: ``"torch"``, ``"huggingface"`` or ``"optax"`` (structural; see above).
        relative_step: :math:`\rho_t = \min(\eta, 1/\sqrt t)` rather than :math:`\eta`
            (structural).
        scale_parameter: scale the step by :math:`\max(\epsilon_2, \operatorname{RMS}(p))`
            (structural).
        warmup_init: :math:`\rho_t = \min(\eta t, 1/\sqrt t)` (structural; needs
            ``relative_step``).
        beta1: ``β1`` of the momentum on the scaled updates, or ``None`` (structural: no
            momentum, no ``exp_avg`` state; default).
        decay_offset: ``t_0`` (optax variant only; default 0).
        factored: factor the second moments (structural; default True).
        min_dim_size_to_factor: the smallest factored dimension (structural; default 0).
        momentum_dtype: dtype of ``exp_avg`` (structural; default ``None``: the compute
            dtype).
    """
    owner = "scale_by_factored_rms"
    check_choice(owner, "variant", variant, _VARIANTS)
    if warmup_init and not relative_step:
        raise HParamError(f"{owner}: warmup_init=True requires relative_step=True")
    huggingface = variant == "huggingface"
    check_dtype_option(owner, "momentum_dtype", momentum_dtype)
    if not isinstance(min_dim_size_to_factor, int) or min_dim_size_to_factor < 0:
        raise HParamError(f"{owner}: min_dim_size_to_factor must be an int >= 0, got "
                          f"{min_dim_size_to_factor!r}")
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "beta2_decay", beta2_decay, le=0)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise HParamError(f"{owner}: eps must be a pair (eps1 or None, eps2), got {eps!r}")
    if eps[0] is not None:
        check_hparam(owner, "eps[0]", eps[0], ge=0)
    check_hparam(owner, "eps[1]", eps[1], ge=0)
    if d is not None:
        check_hparam(owner, "d", d, **({"ge": 1} if variant == "torch" else {"gt": 0}))
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    defaults = {"lr": lr, "beta2_decay": beta2_decay, "eps1": eps[0], "eps2": eps[1], "d": d,
                "weight_decay": weight_decay}
    if beta1 is not None:
        check_hparam(owner, "beta1", beta1, ge=0, le=1)
        defaults["beta1"] = beta1
    if variant == "optax":
        check_hparam(owner, "decay_offset", decay_offset)
        defaults["decay_offset"] = decay_offset
    elif not is_off(decay_offset):
        raise HParamError(f"{owner}: decay_offset is optax's (variant='optax'), got "
                          f"{decay_offset!r} with variant={variant!r}")
    rule = functools.partial(_factored_rule, maximize=maximize, variant=variant,
                             momentum=beta1 is not None, relative_step=relative_step,
                             scale_parameter=scale_parameter, warmup_init=warmup_init)

    def dims(p):
        return _factored_dims(p, variant, factored, min_dim_size_to_factor)

    def init(params):
        def compute_dtype(p):
            return torch.float32 if huggingface and p.dtype in _HALF else p.dtype

        def zeros(p, shape):
            return torch.zeros(shape, dtype=compute_dtype(p), device=p.device)

        def factor(p, which):  # which: 1 for the rows' statistic, 0 for the columns'
            if not dims(p):
                return zeros(p, _NONE_SHAPE)
            dim = dims(p)[which]
            if huggingface:  # HF's shapes, without the reduced dimension
                return zeros(p, p.shape[:dim] + p.shape[dim + 1:])
            return _statistic(p, dim)

        if huggingface:
            for name, p in _tree.named_leaves(params):
                if p is not None and _tree.layout(p) is not None:
                    raise TypeError(f"{owner}: variant='huggingface' takes plain tensors; "
                                    f"parameter {name!r} is a DTensor (the torch variant "
                                    "runs on DTensors)")
        return ScaleByFactoredRmsState(
            init_count(params), _tree.map(lambda p: factor(p, 1), params),
            _tree.map(lambda p: factor(p, 0), params),
            _tree.map(lambda p: zeros(p, _NONE_SHAPE) if dims(p) else
                      torch.zeros_like(p, dtype=compute_dtype(p)), params),
            _tree.map(lambda p: torch.zeros_like(p, dtype=momentum_dtype or compute_dtype(p)),
                      params) if beta1 is not None else EmptyState(),
            _tree.map(lambda p: zeros(p, ()), params) if huggingface else EmptyState())

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByFactoredRmsState)
        if missing_params(owner, updates, params, "its step size is relative to their RMS"):
            return updates, state
        # static per-leaf sizes: leaves group by them on the multi-tensor path (at least 1:
        # an empty parameter's RMS and row/column means are 0, not 0/0)
        root_numel = _tree.map(lambda p: max(p.numel(), 1) ** 0.5, params)
        n_last = _tree.map(lambda p: max(p.shape[-1], 1) if p.ndim >= 1 else 1, params)
        n_prev = _tree.map(lambda p: max(p.shape[-2], 1) if p.ndim >= 2 else 1, params)
        factored_dims = _tree.map(dims, params)
        states = (state.step, state.row_var, state.col_var, state.variance)
        states += ((state.exp_avg,) if beta1 is not None else ()) + (
            (state.rms,) if huggingface else ())
        # (the HuggingFace variant keeps half-precision leaves' statistics in float32)
        typed, like = (None, SHAPED) if huggingface else (TYPED, LIKE)
        if momentum_dtype is not None:
            like = SHAPED
        out, *new = elementwise(
            rule, h, updates, states, (params, root_numel, n_last, n_prev, factored_dims),
            name=owner, real_only=True, input_names=("params", "size", "size", "size", "dims"),
            own_update_dtype=huggingface,
            state_like=(None, typed, typed, typed) + ((like,) if beta1 is not None else ()))
        step, row, col, var, *rest = new
        exp_avg = rest.pop(0) if beta1 is not None else EmptyState()
        return out, ScaleByFactoredRmsState(step, row, col, var, exp_avg,
                                            rest[0] if huggingface else EmptyState())

    return Transform(init, update, defaults)

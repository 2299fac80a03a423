r"""Adam's moments rearranged: LaProp (Ziyin et al., 2020), which normalizes before the
momentum, and Adam-mini (Zhang et al., 2024), which keeps one second moment per block."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    Pointwise,
    PointwiseCall,
    cast_hparams,
    ema_square,
    init_count,
    lerp,
    mean_over,
    safe_sqrt,
    scalar_dtype,
)
from ..base import (
    HParamError,
    Transform,
    check_betas,
    check_hparam,
    check_state,
    pointwise_transform,
    resolve_hparams,
)

__all__ = ["ScaleByLapropState", "scale_by_laprop", "ScaleByAdamMiniState", "scale_by_adam_mini"]


class ScaleByLapropState(NamedTuple):
    """State of :func:`scale_by_laprop`: per-parameter step count (0-d int64), the momentum of
    the normalized gradients ``exp_avg`` and the second moment ``exp_avg_sq``."""

    step: Any
    mu: Any
    nu: Any


def _laprop_rule(h, g, t, m, v):
    b1, b2 = h["betas"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    v = ema_square(v, g, b2)
    normalized = g / (safe_sqrt(v / (1 - b2**tf), nonnegative=True) + h["eps"])
    m = lerp(m, normalized.to(m.dtype), 1 - b1)  # (a 0-d leaf: its coefficients promote it)
    return (m / (1 - b1**tf), t, m, v)


def scale_by_laprop(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-15) -> Transform:
    r"""LaProp's direction (Ziyin, Wang & Ueda, 2020, *LaProp: Separating Momentum and
    Adaptivity in Adam*): the momentum of the RMS-normalized gradients.

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) \frac{g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},
        \qquad u_t = \frac{m_t}{1-\beta_1^t}

    The authors' code folds the learning rate into :math:`m_t` (their bias correction divides
    by the running mean of the rates); with a constant rate that is this block followed by
    ``scale_by_learning_rate`` (:func:`~functional_optim.laprop`). Complex parameters as pairs of
    reals.

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-15, the authors').
    """
    owner = "scale_by_laprop"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps}

    def init(params):
        return ScaleByLapropState(init_count(params), _tree.zeros_like(params),
                                  _tree.zeros_like(params))

    def prepare(updates, state, params, hparams):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByLapropState)
        return PointwiseCall(_laprop_rule, h, (state.step, state.mu, state.nu),
                             finish=lambda new: ScaleByLapropState(*new),
                             donate_state=(True, True, True), state_like=(None, LIKE, LIKE))

    return pointwise_transform(init, defaults, Pointwise(prepare, owner, "as_real"))


class ScaleByAdamMiniState(NamedTuple):
    """State of :func:`scale_by_adam_mini`.

    Attributes:
        step: per-parameter step count (0-d int64).
        mu: first moment, shaped like the parameter.
        nu: the second moment of each block: 0-d for a leaf that is one block, shape ``(n, 1)``
            for a leaf of ``n`` blocks.
    """

    step: Any
    mu: Any
    nu: Any


def _blocks_view(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x`` as rows of its blocks, ``(n, numel / n)``, ``n`` read from the block moment ``v``
    (a 0-d ``v``: one block, the flat leaf)."""
    return x.reshape(v.shape[0], -1) if v.ndim else x.reshape(-1)


def _check_blocks(owner: str, params: Any, blocks: Any) -> Any:
    """The number of blocks of each leaf (a tree like ``params``), validated."""
    if blocks is None:
        return _tree.map(lambda p: 1, params)
    tree = blocks(params) if callable(blocks) else blocks
    for (name, p), n in zip(_tree.named_leaves(params), _tree.flatten_like(
            tree, _tree.structure(params), "blocks", "params")):
        if p is None:
            continue
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or p.numel() % n:
            raise HParamError(f"{owner}: blocks of leaf {name!r} must be an int >= 1 dividing "
                              f"its {p.numel()} elements, got {n!r}")
    return tree


def scale_by_adam_mini(betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                       blocks: Any = None) -> Transform:
    r"""Adam-mini's direction (Zhang et al., 2024, *Adam-mini: Use Fewer Learning Rates To Gain
    More*): Adam with one second moment per block, the mean of the squared gradient over it.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_{t,b} = \beta_2 v_{t-1,b} + (1-\beta_2)\,\operatorname{mean}_{i \in b} g_{t,i}^2,
        \qquad u_{t,i} = \frac{m_{t,i}/(1-\beta_1^t)}{\sqrt{v_{t,b(i)}/(1-\beta_2^t)} + \epsilon}

    ``blocks`` gives each leaf's number ``n`` of blocks: its elements in order (row-major) cut
    into ``n`` equal runs. The authors' partition (their ``Adam_mini``): one block for a leaf
    (the default, ``n = 1``), one per head for the queries' and keys' weights (``n =
    n_heads``), one per element for embeddings and the output layer (``n = numel``: Adam's own
    moment), e.g. ``blocks=lambda ps: {k: p.numel() if "embed" in k or "lm_head" in k else
    n_heads if k.endswith(("q_proj.weight", "k_proj.weight")) else 1 for k, p in ps.items()}``.
    The state holds one number per block. Real only.

    Args:
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        blocks: a tree of ints like the parameters, or a function ``params -> tree``
            (structural; default ``None``: one block per leaf).
    """
    owner = "scale_by_adam_mini"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    defaults = {"betas": tuple(betas), "eps": eps}

    def init(params):
        counts = _check_blocks(owner, params, blocks)
        return ScaleByAdamMiniState(
            init_count(params), _tree.zeros_like(params),
            _tree.map(lambda p, n: p.new_zeros((n, 1) if n > 1 else ()), params, counts))

    def one(h, g, t, m, v):
        if g.is_complex():
            raise TypeError(f"{owner} does not support complex updates (dtype {g.dtype})")
        hh = cast_hparams(h, g)
        b1, b2 = hh["betas"]
        t = t + 1
        tf = t.to(scalar_dtype(g))
        m = lerp(m, g, 1 - b1)
        rows = _blocks_view(g, v)
        square = mean_over(rows * rows, -1, keepdim=v.ndim > 0)
        v = (v * b2 + (1 - b2) * square).to(v.dtype)  # (0-d: not promoted by b2)
        denom = safe_sqrt(v / (1 - b2**tf), nonnegative=True) + hh["eps"]
        u = (_blocks_view(m, v) / (1 - b1**tf)) / denom
        return u.reshape(g.shape).to(g.dtype), t, m, v

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleByAdamMiniState)
        spec = _tree.structure(updates)
        columns = [_tree.flatten_like(tree, spec, f"state.{name}", "updates")
                   for name, tree in zip(state._fields, state)]
        rows = [(g, t, m, v) if g is None else one(h, g, t, m, v)
                for g, t, m, v in zip(_tree.flatten_like(updates, spec, "updates", "updates"),
                                      *columns)]
        if not rows:
            return updates, state
        out, step, mu, nu = (spec.unflatten(list(col)) for col in zip(*rows))
        return out, ScaleByAdamMiniState(step, mu, nu)

    return Transform(init, update, defaults)

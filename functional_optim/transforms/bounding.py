r"""Bounding updates: by each leaf's RMS, unit-wise relative to the parameters (adaptive
gradient clipping), per example (differentially private SGD), and so that the parameters stay
non-negative.

The transforms here (:func:`clip_by_block_rms`, :func:`adaptive_grad_clip`,
:func:`keep_params_nonnegative`) are stateless, pointwise up to per-leaf (or per-unit)
reductions, and have live hyperparameters. The per-example functions
(:func:`per_example_global_norm_clip`, :func:`per_example_layer_norm_clip`) take gradients with a
leading batch dimension and return their clipped sum, the building block of DP-SGD.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .. import tree as _tree
from .._execute import elementwise, full, placed_like, safe_sqrt
from ..base import (
    EmptyState,
    HParamError,
    Transform,
    check_hparam,
    missing_params,
    resolve_hparams,
)
from ..numerics import abs_sq

__all__ = [
    "clip_by_block_rms",
    "adaptive_grad_clip",
    "unitwise_norm",
    "unitwise_clip",
    "keep_params_nonnegative",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
]


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def _block_rms_rule(h, g):
    rms = full(safe_sqrt(torch.mean(abs_sq(g)), nonnegative=True))
    return (g / torch.clamp(rms / h["threshold"], min=1.0),)


def clip_by_block_rms(threshold: float) -> Transform:
    r"""Rescales each leaf (block) whose RMS exceeds ``threshold``:

    .. math:: u \mapsto u / \max\left(1, \frac{\sqrt{\operatorname{mean}|u|^2}}{c}\right)

    Args:
        threshold: ``c`` (> 0), the largest RMS of a leaf.
    """
    check_hparam("clip_by_block_rms", "threshold", threshold, gt=0)
    defaults = {"threshold": threshold}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "clip_by_block_rms hparams")
        (out,) = elementwise(_block_rms_rule, h, updates, name="clip_by_block_rms")
        return out, state

    return Transform(_empty_init, update, defaults)


_LAYOUTS = ("torch", "jax")


@dataclasses.dataclass(frozen=True)
class _Units:
    """The dimensions a leaf's unit-wise norm reduces over (``None``: all): a static leaf."""

    dims: tuple[int, ...] | None


def _unit_dims(shape: tuple, axis: int | tuple[int, ...] | None, layout: str,
               name: str = "x") -> tuple[int, ...] | None:
    """The reduction dimensions of :func:`unitwise_norm` for a tensor of ``shape``."""
    if axis is not None:
        return (axis,) if isinstance(axis, int) else tuple(axis)
    ndim = len(shape)
    if layout == "torch":  # units along the first (output) dimension
        return None if ndim <= 1 else tuple(range(1, ndim))
    if sum(s != 1 for s in shape) <= 1:  # optax's jax layout: scalars and (squeezed) vectors
        return None
    if ndim in (2, 3):  # a linear layer (in, out), multi-head linear
        return (0,)
    if ndim in (4, 5):  # convolution kernels HWIO, DHWIO
        return tuple(range(ndim - 1))
    raise ValueError(f"unitwise_norm: {name} has shape {tuple(shape)}; the 'jax' layout knows "
                     "ranks 1 to 5: pass axis= for this shape")


def _norm(x: torch.Tensor, units: _Units) -> torch.Tensor:
    if units.dims is None:
        return full(safe_sqrt(torch.sum(abs_sq(x)), nonnegative=True))
    return placed_like(safe_sqrt(torch.sum(abs_sq(x), dim=units.dims, keepdim=True),
                                 nonnegative=True), x)


def unitwise_norm(x: torch.Tensor, axis: int | tuple[int, ...] | None = None,
                  layout: str = "torch") -> torch.Tensor:
    r"""The L2 norm of each unit of ``x``, broadcast to ``x``'s shape.

    A unit is a slice along the dimensions not reduced: ``axis`` (the dimensions reduced), or by
    ``layout``: ``"torch"`` (units along the first dimension: an output neuron of a
    ``Linear`` weight ``(out, in)`` or a filter of a ``Conv`` weight ``(out, in, *kernel)``;
    scalars and vectors as one unit) or ``"jax"`` (optax's, for JAX layouts: units along the last
    dimension of ranks 2 to 5, i.e. reduce dimension 0 of ``(in, out)`` and ``(in, heads, out)``,
    the first three of ``HWIO`` kernels, the first four of ``DHWIO``; a tensor with at most one
    dimension of size above 1 as one unit).
    """
    if layout not in _LAYOUTS:
        raise HParamError(f"unitwise_norm: layout must be one of {_LAYOUTS}, got {layout!r}")
    norm = _norm(x, _Units(_unit_dims(tuple(x.shape), axis, layout)))
    return norm.expand(x.shape)


def unitwise_clip(g_norm: torch.Tensor, max_norm: torch.Tensor, grad: torch.Tensor,
                  div_eps: float = 1e-6) -> torch.Tensor:
    r"""``grad`` rescaled to ``max_norm`` where its unit norm ``g_norm`` is not below it:
    :math:`g \cdot m / \max(\lVert g\rVert, \epsilon)` (``div_eps`` :math:`\epsilon` only
    guards the division), else ``grad``."""
    clipped = grad * (max_norm / torch.clamp(g_norm, min=div_eps))
    return torch.where(g_norm < max_norm, grad, clipped)


def _agc_rule(h, g, p, units):
    max_norm = h["clipping"] * torch.clamp(_norm(p, units), min=h["eps"])
    return (unitwise_clip(_norm(g, units), max_norm, g),)


def adaptive_grad_clip(clipping: float, eps: float = 1e-3,
                       axis: int | tuple[int, ...] | None = None, *,
                       layout: str = "torch") -> Transform:
    r"""Adaptive gradient clipping (Brock et al., 2021, "High-Performance Large-Scale Image
    Recognition Without Normalization"): each unit's update is at most ``clipping`` times its
    parameters' norm.

    .. math:: u_i \mapsto u_i \cdot \frac{\lambda \max(\lVert p_i\rVert, \epsilon)}
              {\lVert u_i\rVert} \quad\text{where } \lVert u_i\rVert \ge
              \lambda \max(\lVert p_i\rVert, \epsilon)

    over the units :math:`i` of each leaf (see :func:`unitwise_norm`; the division is guarded by
    :math:`10^{-6}`). Needs ``params``.

    Args:
        clipping: ``λ`` (> 0), the largest ratio of update norm to parameter norm.
        eps: ``ε`` (>= 0), the floor of a parameter norm (zero-initialized parameters can move).
        axis: the dimensions each unit norm reduces over (static), or ``None`` for ``layout``'s.
        layout: ``"torch"`` (units along the first dimension, PyTorch's weight layouts; the
            default) or ``"jax"`` (optax's rules for JAX layouts) (static).
    """
    check_hparam("adaptive_grad_clip", "clipping", clipping, gt=0)
    check_hparam("adaptive_grad_clip", "eps", eps, ge=0)
    if layout not in _LAYOUTS:
        raise HParamError(f"adaptive_grad_clip: layout must be one of {_LAYOUTS}, got "
                          f"{layout!r}")
    defaults = {"clipping": clipping, "eps": eps}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, "adaptive_grad_clip hparams")
        if missing_params("adaptive_grad_clip", updates, params, "the parameter norms"):
            return updates, state
        units = _tree.map(lambda p: _Units(_unit_dims(tuple(p.shape), axis, layout)), params)
        (out,) = elementwise(_agc_rule, h, updates, (), (params, units),
                             name="adaptive_grad_clip", input_names=("params", "units"))
        return out, state

    return Transform(_empty_init, update, defaults)


def _nonnegative_rule(h, u, p):
    return (torch.where(p + u < 0, -p, u),)


def keep_params_nonnegative() -> Transform:
    r"""Keeps the parameters non-negative: :math:`u \mapsto -p` where :math:`p + u < 0`, else
    :math:`u` (last in a chain; parameters already negative are moved to 0). Needs ``params``;
    real parameters only."""

    def update(updates, state, params=None, hparams=None, **extra):
        resolve_hparams({}, hparams, "keep_params_nonnegative hparams")
        if missing_params("keep_params_nonnegative", updates, params):
            return updates, state
        (out,) = elementwise(_nonnegative_rule, {}, updates, (), (params,),
                             name="keep_params_nonnegative", real_only=True,
                             input_names=("params",))
        return out, state

    return Transform(_empty_init, update, {})


# -- per-example clipping ------------------------------------------------------------------------


def _batched(owner: str, grads: Any) -> list:
    xs = [g for g in _tree.leaves(grads) if g is not None]
    sizes = {g.shape[0] if g.ndim else None for g in xs}
    if not xs or len(sizes) != 1 or None in sizes:
        shapes = [(n, tuple(g.shape)) for n, g in _tree.named_leaves(grads) if g is not None]
        raise ValueError(f"{owner} expects every gradient leaf to have the batch dimension "
                         f"first, of one size; got shapes {shapes[:8]}")
    return xs


def _clipped_sum(grads: Any, xs: list, l2_norm_clip: float | torch.Tensor
                 ) -> tuple[Any, torch.Tensor]:
    squares = torch.stack([abs_sq(g).reshape(g.shape[0], -1).sum(1) for g in xs]).sum(0)
    norms = safe_sqrt(squares, nonnegative=True)
    multipliers = torch.nan_to_num(torch.clamp(l2_norm_clip / norms, max=1.0), nan=1.0)
    num_clipped = (multipliers < 1.0).sum()
    total = _tree.map(lambda g: torch.tensordot(multipliers.to(g.dtype), g, dims=1), grads)
    return total, num_clipped


def per_example_global_norm_clip(grads: Any, l2_norm_clip: float | torch.Tensor
                                 ) -> tuple[Any, torch.Tensor]:
    r"""Clips each example's gradient to a global L2 norm and sums them (Abadi et al., 2016,
    "Deep Learning with Differential Privacy").

    .. math:: \sum_b g_b \min\left(1, \frac{C}{\lVert g_b\rVert_2}\right)

    with :math:`\lVert g_b\rVert_2` example :math:`b`'s norm over all leaves (a zero gradient is
    not scaled).

    Args:
        grads: per-example gradients, every leaf with the batch dimension first.
        l2_norm_clip: ``C`` (a number or 0-d tensor).

    Returns:
        The sum of the clipped gradients (a tree like ``grads`` without the batch dimension)
        and how many examples were clipped (a 0-d int64 tensor).
    """
    xs = _batched("per_example_global_norm_clip", grads)
    return _clipped_sum(grads, xs, l2_norm_clip)


def per_example_layer_norm_clip(grads: Any, global_l2_norm_clip: float | torch.Tensor,
                                uniform: bool = True) -> tuple[Any, Any]:
    r"""Clips each example's gradient leaf by leaf and sums them (McMahan et al., 2018,
    "Learning Differentially Private Recurrent Language Models").

    Leaf :math:`i` of :math:`K` is clipped to :math:`C/\sqrt{K}` (``uniform``) or to
    :math:`C\sqrt{D_i/D}` (:math:`D_i` its elements per example, :math:`D` all leaves'), as
    :func:`per_example_global_norm_clip` does for the whole tree.

    Returns:
        A tree like ``grads`` of the clipped sums, and a tree of the numbers of examples
        clipped, leaf by leaf.
    """
    xs = _batched("per_example_layer_norm_clip", grads)
    total = sum(g[0].numel() for g in xs)

    def one(g):
        scale = (1.0 / len(xs)) ** 0.5 if uniform else (g[0].numel() / total) ** 0.5
        return _clipped_sum(g, [g], global_l2_norm_clip * scale)

    flat = _tree.leaves(grads)
    results = [None if g is None else one(g) for g in flat]
    spec = _tree.structure(grads)
    return (spec.unflatten([None if r is None else r[0] for r in results]),
            spec.unflatten([None if r is None else r[1] for r in results]))

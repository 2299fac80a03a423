r"""Differential privacy: DP-SGD's aggregation of per-example gradients (Abadi et al., 2016,
*Deep Learning with Differential Privacy*).

The updates this block takes are *per-example* gradients: each leaf has a leading batch axis
(``torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)`` makes them, as
Opacus's ``p.grad_sample`` holds them); its output has the parameters' shapes. Put it first in a
chain. The drop-in class ``functional_optim.optim.DPSGD`` reads ``p.grad_sample``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import _random
from .. import tree as _tree
from .._execute import cast_hparams, first_device, full
from ..base import (
    Transform,
    TreeMismatchError,
    check_hparam,
    check_state,
    resolve_hparams,
)
from .second_order import _check_seed

__all__ = ["DifferentiallyPrivateAggregateState", "differentially_private_aggregate"]


class DifferentiallyPrivateAggregateState(NamedTuple):
    """State of :func:`differentially_private_aggregate`.

    Attributes:
        key: the random key of the next noise draw (int64 ``(2,)``: stream, counter; see
            :mod:`functional_optim._random`).
    """

    key: Any


def _per_example_norms(leaves: list) -> torch.Tensor:
    """The global L2 norm of each example's gradient over all leaves, ``(batch,)``."""
    device = leaves[0].device
    total = torch.stack([full((g * g).reshape(g.shape[0], -1).sum(1)).to(device, torch.float64)
                         for g in leaves]).sum(0)
    positive = total > 0  # (a finite gradient at a zero gradient)
    return torch.where(positive, torch.sqrt(torch.where(positive, total, 1.0)), 0.0)


def differentially_private_aggregate(l2_norm_clip: float = 1.0, noise_multiplier: float = 1.0,
                                     seed: int | torch.Tensor = 0) -> Transform:
    r"""DP-SGD's clipped, noised mean of per-example gradients (Abadi et al., 2016), as optax's
    ``contrib.differentially_private_aggregate`` computes it.

    With :math:`g_{b}` the gradient of example :math:`b` of :math:`B` (all leaves together),
    :math:`c` = ``l2_norm_clip`` and :math:`\sigma` = ``noise_multiplier``:

    .. math::
        u = \frac{1}{B}\left(\sum_b g_b \min\left(1, \frac{c}{\lVert g_b\rVert_2}\right)
            + \sigma c\, \xi\right), \qquad \xi \sim \mathcal N(0, I)

    (an example whose norm is 0 keeps factor 1). The noise :math:`\xi` is drawn from the key in
    the state (:mod:`functional_optim._random`: reproducible, one stream per ``seed``, a
    batched seed gives each ``vmap`` member its own stream), leaf ``i`` with salt ``i``; each
    update advances the key. Every leaf must have the same batch size. Real parameters only.

    Args:
        l2_norm_clip: ``c`` (>= 0; default 1).
        noise_multiplier: ``σ`` (>= 0; default 1).
        seed: the noise stream (structural: read by ``init``; an int or a 0-d integer tensor).
    """
    owner = "differentially_private_aggregate"
    check_hparam(owner, "l2_norm_clip", l2_norm_clip, ge=0)
    check_hparam(owner, "noise_multiplier", noise_multiplier, ge=0)
    _check_seed(owner, seed)
    defaults = {"l2_norm_clip": l2_norm_clip, "noise_multiplier": noise_multiplier}

    def init(params):
        return DifferentiallyPrivateAggregateState(_random.key(seed, first_device(params)))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, DifferentiallyPrivateAggregateState)
        flat = _tree.leaves(updates)
        present = [(i, g) for i, g in enumerate(flat) if g is not None]
        if not present:
            return updates, state
        batch = None
        for i, g in present:
            if g.is_complex():
                raise TypeError(f"{owner} does not support complex updates (leaf "
                                f"{_tree.leaf_label(updates, i)}, dtype {g.dtype})")
            if g.ndim == 0 or (batch is not None and g.shape[0] != batch):
                raise TreeMismatchError(
                    f"{owner}: leaf {_tree.leaf_label(updates, i)} has shape "
                    f"{tuple(g.shape)}: every update leaf must hold per-example gradients, with "
                    "one leading batch axis"
                    + ("" if batch is None else f" of size {batch}"))
            batch = g.shape[0]
        norms = _per_example_norms([g for _, g in present])
        out: list = [None] * len(flat)
        for i, g in present:
            hl = cast_hparams(h, g)
            clip = hl["l2_norm_clip"]
            n = norms.to(device=g.device, dtype=torch.float64)
            factor = torch.where(n > clip, clip / torch.where(n > 0, n, 1.0), 1.0)
            summed = torch.tensordot(factor.to(g.dtype), g, dims=1)
            noise = _random.normal(state.key, i, summed)
            # (a 0-d leaf is promoted by the 0-d float64 tensor hyperparameters: cast back)
            out[i] = ((summed + (clip * hl["noise_multiplier"]) * noise) / batch).to(g.dtype)
        return _tree.structure(updates).unflatten(out), DifferentiallyPrivateAggregateState(
            _random.next_key(state.key))

    return Transform(init, update, defaults)

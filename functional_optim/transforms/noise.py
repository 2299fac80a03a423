r"""Gradient noise with its randomness in the state: :func:`add_noise`.

*Randomness.* The noise comes from :mod:`functional_optim._random`: the state holds one key
(made at ``init`` from ``seed``), leaf :math:`i` of the tree draws
``_random.normal(key, i, leaf)`` (a counter-based hash of the key, :math:`i` and each element's
index, turned into standard normals by the Box-Muller transform) and each update advances the key
(:func:`~functional_optim._random.next_key`). No generator object is kept, so the noise is
reproducible (one seed gives the same noise on every execution path: per leaf, multi-tensor,
compiled, captured in a CUDA graph), pure, and batched by ``vmap`` like any state: members whose
states hold different keys draw independent noise (e.g. ``state._replace(key=
torch.func.vmap(functional_optim._random.key)(seeds))`` with one int64 seed per member), members
that share a key draw the same. The numbers are not jax's: optax's ``add_noise`` draws from
``jax.random``, so only the distribution and its schedule are optax's.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, NamedTuple

import torch

from .. import _random
from .. import tree as _tree
from .._execute import elementwise, first_device, init_count, safe_sqrt, scalar_dtype
from ..base import HParamError, Transform, check_hparam, check_state, resolve_hparams

__all__ = ["AddNoiseState", "add_noise"]


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`.

    Attributes:
        step: per-parameter step count (a tree shaped like the parameters, 0-d int64).
        key: the key of the next draw (one :mod:`functional_optim._random` key, shape ``(2,)``
            int64).
    """

    step: Any
    key: Any


def _noise_leaf(h, g, t, xi):
    t = t + 1
    std = safe_sqrt(h["eta"] / t.to(scalar_dtype(g)) ** h["gamma"], nonnegative=True)
    return g + std * xi, t


def _standard_normal(key: torch.Tensor, salt: int, g: torch.Tensor) -> torch.Tensor:
    """Leaf ``salt``'s draw shaped like ``g``: independent real and imaginary parts for a
    complex ``g``."""
    if g.is_complex():
        return torch.view_as_complex(_random.normal(key, salt, torch.view_as_real(g)))
    return _random.normal(key, salt, g)


def add_noise(eta: float = 0.01, gamma: float = 0.55, seed: int = 0) -> Transform:
    r"""Adds annealed Gaussian noise to the updates (Neelakantan et al., 2015, *Adding Gradient
    Noise Improves Learning for Very Deep Networks*), as optax's ``add_noise``.

    .. math::
        u_t = g_t + \sigma_t \xi_t, \qquad \sigma_t = \sqrt{\eta / t^\gamma}, \qquad
        \xi_t \sim \mathcal N(0, I)

    with :math:`t` the step (from 1). The noise comes from the key in the state (see the
    module: seeded, reproducible, ``vmap``-able and capturable). Complex updates get
    independent noise on their real and imaginary parts.

    Args:
        eta: ``η``, the base variance (default 0.01).
        gamma: ``γ``, the annealing exponent (default 0.55).
        seed: the seed of the noise (structural: read by ``init``; an int, default 0; optax's
            ``key``).
    """
    owner = "add_noise"
    check_hparam(owner, "eta", eta, ge=0)
    check_hparam(owner, "gamma", gamma)
    if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
        raise HParamError(f"{owner}: seed must be a nonnegative int, got {seed!r}")
    defaults = {"eta": eta, "gamma": gamma}

    def init(params):
        return AddNoiseState(init_count(params), _random.key(int(seed), first_device(params)))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, AddNoiseState)
        leaves = _tree.leaves(updates)
        noise = [None if g is None else _standard_normal(state.key, i, g)
                 for i, g in enumerate(leaves)]
        noise = _tree.structure(updates).unflatten(noise)
        out, step = elementwise(_noise_leaf, h, updates, (state.step,), (noise,), name=owner,
                                complex_as_real=True)
        return out, AddNoiseState(step, _random.next_key(state.key))

    return Transform(init, update, defaults)

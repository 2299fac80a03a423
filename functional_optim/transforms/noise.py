r"""Gradient noise with its randomness in the state: :func:`add_noise`.

*Randomness.* The noise is counter-based: the value added to entry :math:`i` of a leaf at step
:math:`t` is a fixed function of the leaf's key :math:`k` (made at ``init`` from ``seed`` and the
leaf's position in the tree), :math:`t` and :math:`i`: 32-bit integer hashing (the
``lowbias32`` mixer of C. Wellons's hash prospector, its products computed exactly in int64)
turns :math:`(k, t, 2i)` and :math:`(k, t, 2i+1)` into two uniform numbers, and the Box-Muller
transform into a standard normal one (``normal_noise``). No generator object is kept: the
state is two int64 tensors per leaf (the key and the step), so the noise is reproducible (one
seed gives the same noise on every execution path: per leaf, multi-tensor, compiled, captured
in a CUDA graph), pure, and batched by ``vmap`` like any state: members whose states hold
different keys draw independent noise (e.g. ``state._replace(key=...)`` with a tree of batched
int64 keys, one per member), members that share a key draw the same. The numbers are not
jax's: optax's ``add_noise`` draws from ``jax.random``, so only the distribution and its
schedule are optax's.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Any, NamedTuple

import optree
import torch

from .. import tree as _tree
from .._execute import elementwise, init_count, safe_sqrt, scalar_dtype
from ..base import HParamError, Transform, check_hparam, check_state, resolve_hparams
from ._leafwise import leafwise

__all__ = ["AddNoiseState", "add_noise", "normal_noise"]

_MASK32 = 0xFFFFFFFF


class AddNoiseState(NamedTuple):
    """State of :func:`add_noise`; every field is a tree shaped like the parameters.

    Attributes:
        step: per-parameter step count (0-d int64).
        key: per-parameter key of the noise stream (0-d int64, in ``[0, 2**32)``).
    """

    step: Any
    key: Any


def _mul32(x: Any, c: int) -> Any:
    """``x * c mod 2**32`` for ``x`` in ``[0, 2**32)`` (an int, or int64 tensors), without
    overflowing 64 bits (the constant in 16-bit halves)."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _MASK32


def _hash32(x: Any) -> Any:
    """The ``lowbias32`` mixer on 32-bit values (ints, or int64 tensors)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix(a: Any, b: Any) -> Any:
    """A 32-bit hash of the pair ``(a, b)`` of 32-bit values."""
    return _hash32(_hash32(a) ^ b ^ 0x9E3779B9)


def _leaf_key(seed: int, index: int, device: torch.device) -> torch.Tensor:
    key = _mix(_mix(seed & _MASK32, index & _MASK32), (seed >> 32) & _MASK32)
    return torch.full((), key, dtype=torch.int64, device=device)


def normal_noise(key: torch.Tensor, step: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (in its dtype) for stream ``key`` at ``step``
    (0-d int64 tensors): the counter-based draw of :func:`add_noise` (see the module)."""
    counter = torch.arange(like.numel(), device=like.device).reshape(like.shape) * 2
    base = _mix(_mix(key & _MASK32, step & _MASK32), (step >> 32) & _MASK32)
    dtype = scalar_dtype(like)

    def uniform(lane: int) -> torch.Tensor:
        c = counter + lane
        bits = _mix(_mix(base, c & _MASK32), c >> 32)
        return (bits.to(dtype) + 0.5) * 2.0**-32  # in (0, 1)

    radius = torch.sqrt(-2 * torch.log(uniform(0)))
    return (radius * torch.cos(2 * math.pi * uniform(1))).to(like.dtype)


def _noise_leaf(h, g, t, key):
    t = t + 1
    std = safe_sqrt(h["eta"] / t.to(scalar_dtype(g)) ** h["gamma"], nonnegative=True)
    return g + std * normal_noise(key, t, g), t, key


def add_noise(eta: float = 0.01, gamma: float = 0.55, seed: int = 0) -> Transform:
    r"""Adds annealed Gaussian noise to the updates (Neelakantan et al., 2015, *Adding Gradient
    Noise Improves Learning for Very Deep Networks*), as optax's ``add_noise``.

    .. math::
        u_t = g_t + \sigma_t \xi_t, \qquad \sigma_t = \sqrt{\eta / t^\gamma}, \qquad
        \xi_t \sim \mathcal N(0, I)

    with :math:`t` the step (from 1). The noise comes from the state (see the module: seeded,
    reproducible, ``vmap``-able and capturable). Complex updates get independent noise on their
    real and imaginary parts.

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
    rule = leafwise(_noise_leaf)

    def init(params):
        keys = [None if p is None else _leaf_key(int(seed), i, p.device)
                for i, p in enumerate(_tree.leaves(params))]
        return AddNoiseState(init_count(params),
                             optree.tree_unflatten(_tree.structure(params), keys))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, AddNoiseState)
        out, step, key = elementwise(rule, h, updates, (state.step, state.key), name=owner,
                                     complex_as_real=True)
        return out, AddNoiseState(step, key)

    return Transform(init, update, defaults)


r"""Reproducible randomness carried in a transform's state: counter-based keys.

A *key* is an int64 tensor of shape ``(2,)``, ``[stream, counter]``, both words in
:math:`[0, 2^{32})`. The random numbers of one draw are a pure function of the key, a *salt* (which
tree leaf, which use) and each element's index: a 32-bit hash
(:func:`_mix`, Wellons' "lowbias32", a bijection of 32-bit words) applied in integer arithmetic
that never overflows int64, so every device and every path (eager, ``vmap``, ``torch.func.grad``,
``torch.compile``, CUDA-graph capture) gives the same bits, with no host sync and no generator
object. A transform keeps its key in its state and returns :func:`next_key` of it with its new
state: the stream never repeats (the counter runs through :math:`2^{32}` draws per stream).

*Streams under vmap.* A key is data: a batched key gives each member its own stream. Build the
transform with a batched ``seed`` (a 0-d integer tensor per member, e.g. inside
``torch.func.vmap(lambda s: make(seed=s).init(params))(seeds)``), or replace the key of a batched
state with :func:`key` of distinct seeds; an unbatched key (one seed for all) gives every member
the same stream.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["key", "next_key", "rademacher", "normal", "uniform"]

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for ``x`` in [0, 2**32): the product in two 16-bit halves of ``c``, so
    no intermediate passes 2**49."""
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (high + x * (c & 0xFFFF)) & _M32


def _mix(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 hash of 32-bit words held in int64 tensors or Python ints (a bijection of
    [0, 2**32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def key(seed: int | torch.Tensor, device: Any = None) -> torch.Tensor:
    """The key of stream ``seed`` (an int, or a 0-d integer tensor: batched under ``vmap``, one
    stream per member), at counter 0."""
    if isinstance(seed, torch.Tensor):
        word = seed.to(device=device if device is not None else seed.device,
                       dtype=torch.int64) & _M32
        return torch.stack([word, torch.zeros_like(word)])
    return torch.tensor([int(seed) & _M32, 0], dtype=torch.int64, device=device)


def next_key(k: torch.Tensor) -> torch.Tensor:
    """The key of the next draw: the counter advanced by one."""
    stream, counter = k.unbind()
    return torch.stack([stream, (counter + 1) & _M32])


def _bits(k: torch.Tensor, salt: int, like: torch.Tensor) -> torch.Tensor:
    """32 random bits (in int64) per element of ``like``, for draw ``k`` and use ``salt``."""
    stream, counter = k.unbind()
    base = _mix(_mix(stream ^ _mix(salt & _M32)) ^ counter).to(like.device)
    index = torch.arange(like.numel(), dtype=torch.int64, device=like.device).reshape(like.shape)
    high = ((index >> 32) + base) & _M32  # (0 below 2**32 elements)
    return _mix(_mix((index & _M32) ^ base) ^ high)


def rademacher(k: torch.Tensor, salt: int, like: torch.Tensor) -> torch.Tensor:
    """Independent signs ±1, each with probability 1/2, shaped like ``like`` and of its
    dtype (a Hutchinson probe)."""
    return (1 - 2 * (_bits(k, salt, like) >> 31)).to(like.dtype)


def uniform(k: torch.Tensor, salt: int, like: torch.Tensor) -> torch.Tensor:
    r"""Independent uniform samples in :math:`[0, 1)` shaped like ``like``, of its dtype: the
    top 24 of 32 random bits times :math:`2^{-24}` (exact in float32 and float64)."""
    return (_bits(k, salt, like) >> 8).to(like.dtype) * 2.0 ** -24


def normal(k: torch.Tensor, salt: int, like: torch.Tensor) -> torch.Tensor:
    r"""Independent standard normal samples shaped like ``like``, of its dtype: the Box-Muller
    transform :math:`\sqrt{-2\ln u_1}\cos(2\pi u_2)` of two 32-bit uniforms
    :math:`u_i = (b_i + \frac12) / 2^{32}` in :math:`(0, 1)`, computed in float64."""
    scale = 2.0 ** -32
    u1 = (_bits(k, 2 * salt, like).to(torch.float64) + 0.5) * scale
    u2 = (_bits(k, 2 * salt + 1, like).to(torch.float64) + 0.5) * scale
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(like.dtype)

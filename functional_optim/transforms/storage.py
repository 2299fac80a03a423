r"""How the precision policy keeps a state field between updates: :class:`Storage`.

A storage turns the value computed in the compute dtype into what the state holds
(``encode``) and back (``decode``): :class:`CastStorage` casts to a floating dtype (to nearest,
or stochastically: :func:`stochastic_round`), :class:`QuantizedStorage` keeps blockwise 8- or
4-bit codes and their scales (:mod:`functional_optim.transforms.quantized`). Both are run by
:func:`~functional_optim.transforms.with_state_dtype`, which batches the leaves of one storage
(``encode_all``/``decode_all``: one pass of each op over a chunk of leaves).

*Randomness.* Stochastic rounding draws from a packed key (:func:`seed_key`; a 0-d int64
:math:`\mathrm{stream} \cdot 2^{32} + \mathrm{counter}`, :func:`advance` moves the counter),
unpacked to :mod:`functional_optim._random`'s 2-word key by :func:`words`.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _random
from ..base import HParamError
from .quantized import Quantized, check_bits, dequantize_flat, quantize_all

__all__ = ["Storage", "CastStorage", "QuantizedStorage", "storage", "stochastic_round"]

_M32 = 0xFFFFFFFF


class Storage:
    """How one state field is kept between updates (a base class to subclass).

    ``encode(x, key, salt)`` turns the value computed in the compute dtype into what the state
    holds (a tensor, or a NamedTuple of tensors such as quantized codes and their scales);
    ``key`` is the update's 2-word random key (``None`` at ``init``) and ``salt`` the leaf's.
    ``decode(stored, dtype, like)`` gives the value back in ``dtype`` (the compute dtype;
    ``None``: ``like``'s) with the shape of ``like`` (the update leaf the state belongs to;
    ``None`` where the state has no such leaf). ``holds(node)`` says whether ``node`` is one
    stored value (decoded as a unit), ``takes(x)`` whether a fresh state tensor ``x`` is
    stored by it (else it keeps its dtype; from the shape only), ``for_field(name)`` the
    storage of the state field ``name``.
    ``encode_all``/``decode_all`` do the same on lists of leaves (override them to batch).
    """

    def encode(self, x: torch.Tensor, key: torch.Tensor | None, salt: int) -> Any:
        raise NotImplementedError

    def decode(self, stored: Any, dtype: torch.dtype, like: torch.Tensor | None
               ) -> torch.Tensor:
        raise NotImplementedError

    def holds(self, node: Any) -> bool:
        return isinstance(node, torch.Tensor)

    def takes(self, x: torch.Tensor) -> bool:
        return True

    def for_field(self, name: str | None) -> Storage:
        return self

    def encode_all(self, xs: list, key: torch.Tensor | None, salts: list) -> list:
        return [self.encode(x, key, s) for x, s in zip(xs, salts)]

    def decode_all(self, stored: list, dtype: torch.dtype, likes: list) -> list:
        return [self.decode(s, dtype, like) for s, like in zip(stored, likes)]


class CastStorage(Storage):
    """A tensor stored in ``dtype``: to nearest, or stochastically (:func:`stochastic_round`)
    when ``stochastic`` and a key is given."""

    def __init__(self, dtype: torch.dtype, stochastic: bool = False):
        self.dtype = dtype
        self.stochastic = stochastic

    def encode(self, x, key, salt):
        if self.stochastic and key is not None and narrower(self.dtype, x.dtype):
            return stochastic_round(x, self.dtype, key, salt)
        return x.to(self.dtype)

    def decode(self, stored, dtype, like):
        return stored.to(dtype or (stored.dtype if like is None else like.dtype))

    def __repr__(self) -> str:
        return f"CastStorage({self.dtype}, stochastic={self.stochastic})"


class QuantizedStorage(Storage):
    """A real floating tensor of at least ``min_size`` elements (and one dimension) stored as a
    :class:`~functional_optim.transforms.quantized.Quantized` pair: ``bits`` (8 or 4) bits per
    element in blocks of ``block_size`` (default 256 in 8 bits, 128 in 4) with a float32
    absolute maximum per block (:func:`~functional_optim.transforms.quantized.quantize`, to the
    nearest code: stochastic rounding does not apply). The fields named in ``unsigned`` (Adam's
    nonnegative ``nu`` and ``nu_max`` by default) use the unsigned map, the others the signed
    one; smaller tensors keep their dtype (bitsandbytes' ``min_8bit_size``)."""

    def __init__(self, bits: int = 8, block_size: int | None = None, *, min_size: int = 4096,
                 unsigned: tuple[str, ...] = ("nu", "nu_max"), signed: bool = True):
        self.block_size = check_bits("QuantizedStorage", bits, block_size)
        if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
            raise HParamError(f"QuantizedStorage: min_size must be an int >= 0, got "
                              f"{min_size!r}")
        self.bits, self.min_size, self.unsigned = bits, min_size, tuple(unsigned)
        self.signed = signed
        self._fields: dict = {}

    def for_field(self, name):
        signed = name not in self.unsigned
        if signed == self.signed:
            return self
        found = self._fields.get(signed)
        if found is None:
            found = self._fields[signed] = QuantizedStorage(
                self.bits, self.block_size, min_size=self.min_size, unsigned=self.unsigned,
                signed=signed)
        return found

    def holds(self, node):
        return isinstance(node, Quantized)

    def takes(self, x):
        return not x.is_complex() and x.ndim > 0 and x.numel() >= self.min_size

    def encode(self, x, key, salt):
        return self.encode_all([x], key, [salt])[0]

    def encode_all(self, xs, key, salts):
        return quantize_all(xs, self.bits, self.block_size, self.signed)

    def decode(self, stored, dtype, like):
        return self.decode_all([stored], dtype, [like])[0]

    def decode_all(self, stored, dtype, likes):
        for q, like in zip(stored, likes):
            if not isinstance(q, Quantized) or like is None:
                raise TypeError(f"{self!r}: expected a Quantized(codes, absmax) stored for an "
                                f"update leaf, got {type(q).__name__}"
                                f"{'' if like is not None else ' with no update leaf'}")
        out: list = [None] * len(stored)
        for signed in (True, False):  # (one pass per map)
            where = [i for i, q in enumerate(stored)
                     if (q.codes.dtype == torch.int8) == signed]
            if where:
                flat = dequantize_flat([stored[i] for i in where], self.bits)
                for i, x in zip(where, flat):
                    out[i] = x.narrow(0, 0, likes[i].numel()).view(likes[i].shape).to(
                        dtype or likes[i].dtype)
        return out

    def __repr__(self) -> str:
        return (f"QuantizedStorage(bits={self.bits}, block_size={self.block_size}, "
                f"min_size={self.min_size}, signed={self.signed})")


_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32,
          "fp64": torch.float64, "float64": torch.float64}
_QUANTIZED = {"int8": 8, "int4": 4}


def storage(spec: Any, stochastic: bool = False, where: str = "state_dtype") -> Storage:
    """The :class:`Storage` that ``spec`` names: a :class:`Storage`, a floating ``torch.dtype``,
    one of ``"bf16"``, ``"fp16"``, ``"fp32"``, ``"fp64"`` (and the dtypes' names), or
    ``"int8"``/``"int4"`` (:class:`QuantizedStorage` with its defaults)."""
    if isinstance(spec, Storage):
        return spec
    if isinstance(spec, str) and spec in _QUANTIZED:
        return QuantizedStorage(_QUANTIZED[spec])
    dtype = _NAMES.get(spec) if isinstance(spec, str) else spec
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise HParamError(f"{where}: expected a floating torch.dtype, one of "
                          f"{sorted(_NAMES) + sorted(_QUANTIZED)} or a Storage, got {spec!r}")
    return CastStorage(dtype, stochastic)


def narrower(dtype: torch.dtype, than: torch.dtype) -> bool:
    return torch.finfo(dtype).bits < torch.finfo(than).bits


# -- stochastic rounding and its keys --------------------------------------------------------------

def seed_key(seed: int | torch.Tensor) -> torch.Tensor:
    """The packed key of stream ``seed`` (31 bits) at counter 0, a 0-d int64 tensor."""
    if isinstance(seed, torch.Tensor):
        return (seed.to(torch.int64) & 0x7FFFFFFF) << 32
    return torch.tensor((int(seed) & 0x7FFFFFFF) << 32, dtype=torch.int64)


def words(packed: torch.Tensor) -> torch.Tensor:
    """The 2-word key of :mod:`functional_optim._random` of a packed key."""
    return torch.stack([packed >> 32, packed & _M32])


def advance(packed: torch.Tensor) -> torch.Tensor:
    return ((packed >> 32) << 32) | ((packed + 1) & _M32)


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, key: torch.Tensor,
                     salt: int) -> torch.Tensor:
    r"""``x`` rounded to ``dtype`` stochastically, without bias.

    With :math:`r` the nearest value of ``dtype`` and :math:`o` its neighbour on the other side
    of :math:`x`, the result is :math:`o` with probability :math:`|x - r| / |o - r|`, else
    :math:`r`: its mean is :math:`x`. The uniform draw is :func:`functional_optim._random.uniform`
    of ``key`` (a 2-word key) and ``salt``; non-finite values round to nearest. Under autograd
    the gradient is the identity's (straight through).
    """
    r = x.to(dtype)
    wide_r = r.to(x.dtype)
    err = x - wide_r
    toward = torch.where(err > 0, float("inf"), float("-inf")).to(dtype)
    other = torch.nextafter(r, toward)
    chance = err.abs() / (other.to(x.dtype) - wide_r).abs()
    out = torch.where(_random.uniform(key, salt, x) < chance, other, r)
    if torch.is_grad_enabled() and x.requires_grad:
        out = (x + (out.to(x.dtype) - x).detach()).to(dtype)
    return out

r"""Quantized optimizer state: moments stored blockwise in 8 or 4 bits.

A state tensor :math:`x` (flattened, zero-padded to whole blocks of ``block_size`` elements) is
stored as, for each block :math:`b`, its absolute maximum :math:`a_b = \max_{i \in b} |x_i|`
(float32) and, for each element, the index of the nearest value of a fixed sorted *map*
:math:`Q` (``2**bits`` values in :math:`[-1, 1]`) to :math:`x_i / a_b`:

.. math::
    c_i = \arg\min_j |Q_j - x_i / a_b|, \qquad \tilde x_i = Q_{c_i}\, a_b

(:math:`\tilde x = 0` on a block of zeros). The error is at most half the gap between the two
map values around :math:`x_i / a_b`, times :math:`a_b`. This is the blockwise quantization of
Dettmers et al., 2022 ("8-bit Optimizers via Block-wise Quantization", bitsandbytes' 8-bit
Adam) and, in 4 bits, of Li et al., 2023 ("Memory Efficient Optimizers with 4-bit States", as
torchao's 4-bit optimizers take it).

The maps (:func:`quantization_map`):

- 8 bits: the *dynamic* map (Dettmers, 2016, "8-Bit Approximations for Parallelism in Deep
  Learning"; bitsandbytes' ``create_dynamic_map``): a sign bit, then a run of zero bits whose
  length is a decimal exponent (:math:`10^{-6} \dots 10^0`) and, after an indicator bit, a
  linear fraction in :math:`[0.1, 1]` with the remaining bits; the unsigned map uses the sign
  bit for one more fraction bit. Block size 256 by default (bitsandbytes' and torchao's).
- 4 bits: the signed dynamic map with 3 exponent bits for first moments, and the linear map
  :math:`\{1/16, 2/16, \dots, 1\}` *without zero* for second moments (Li et al.'s answer to the
  zero-point problem: a small second moment rounded to 0 would blow up :math:`1/\sqrt{v}`).
  Block size 128 by default (torchao's).

:class:`~functional_optim.transforms.storage.QuantizedStorage` makes this a storage of the
precision policy (:func:`~functional_optim.transforms.with_state_dtype`; ``"int8"``/``"int4"``,
:func:`~functional_optim.transforms.quantized_state`): the state leaves become
:class:`Quantized` pairs (what the adapter's ``state_dict`` saves), each update dequantizes a
chunk of leaves, runs the rule and quantizes the new state, every step vectorized over the
blocks (:func:`quantize_all`, :func:`dequantize_all`), never a Python loop over blocks.
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple

import torch

from ..base import HParamError

__all__ = ["Quantized", "quantization_map", "quantize", "dequantize", "quantize_all",
           "dequantize_all"]

#: default block sizes by bits (bitsandbytes' and torchao's 8-bit: 256; torchao's 4-bit: 128)
BLOCK_SIZES = {8: 256, 4: 128}

class Quantized(NamedTuple):
    """One blockwise-quantized state tensor.

    Attributes:
        codes: the map indices, flat, for the padded tensor (one byte each in 8 bits, two per
            byte in 4 bits: the first in the high nibble), read as unsigned bytes. Their dtype
            names the map: ``int8`` (the same bytes) the signed map, ``uint8`` the unsigned
            one.
        absmax: float32, one absolute maximum per block.
    """

    codes: Any
    absmax: Any


def _build_map(bits: int, signed: bool, device: Any) -> torch.Tensor:
    """The map's ``2**bits`` values, sorted, float32 on ``device``: made there by factory ops
    (computed in float64), so that a trace on fake or captured tensors holds no host copy."""
    f64 = dict(dtype=torch.float64, device=device)
    if bits == 4 and not signed:
        return (torch.arange(1, 17, **f64) / 16).to(torch.float32)
    exponent_bits, fraction_bits = (7, 7) if bits == 8 else (3, 3)
    parts = [torch.zeros(1, **f64), torch.ones(1, **f64)]
    for i in range(exponent_bits):  # (the unsigned map's sign bit is one more fraction bit)
        count = 2 ** (i + fraction_bits - exponent_bits + (0 if signed else 1))
        # the midpoints of `count` equal steps over [0.1, 1] (arange: linspace gives a host
        # constant under FakeTensorMode)
        means = (0.1 + 0.9 * (torch.arange(count, **f64) + 0.5) / count) * \
            10.0 ** (i + 1 - exponent_bits)
        parts += [means, -means] if signed else [means]
    return torch.sort(torch.cat(parts)).values.to(torch.float32)


def _bucket_floors(device: Any) -> torch.Tensor:
    """The least float32 of each of the 65536 buckets of floats that share their top 16 bits
    (sign, exponent, 7 mantissa bits), indexed by those bits."""
    k = torch.arange(1 << 16, dtype=torch.int64, device=device)
    bits = torch.where(k >= 1 << 15, (k << 16) | 0xFFFF, k << 16)  # negative: the last float
    return (bits - (bits >= 1 << 31).to(torch.int64) * (1 << 32)).to(torch.int32).view(
        torch.float32)


_ON_DEVICE: dict = {}


def _tables(bits: int, signed: bool, device: Any) -> tuple[torch.Tensor, ...]:
    """On ``device`` (made once per device eagerly, so that a captured update makes nothing):
    the map; for each bucket of :func:`_bucket_floors`, the code nearest to its least float
    (uint8) and the midpoint between that code and the next (``inf`` after the last).

    The nearest code of ``v`` is its bucket's code, plus one where ``v`` is above the bucket's
    midpoint: every bucket holds at most one midpoint of the maps here (their neighbours are
    more than a bucket's width, 2**-7 relative, apart; ``tests/test_quantized.py`` checks it),
    so this is the binary search's answer (ties to the lower code) in two gathers."""
    key = (bits, signed, torch.device(device))
    found = _ON_DEVICE.get(key)
    if found is not None:
        return found
    values = _build_map(bits, signed, device)
    n = values.numel() - 1  # (narrow, not indexing: fake CUDA tensors have no indexing)
    middles = (values.narrow(0, 1, n) + values.narrow(0, 0, n)) / 2
    codes = torch.searchsorted(middles, _bucket_floors(device))
    upper = torch.cat([middles, torch.full((1,), float("inf"), device=device)])
    found = (values, codes.to(torch.uint8), upper.index_select(0, codes))
    if type(values) is torch.Tensor and not torch.compiler.is_compiling():
        _ON_DEVICE[key] = found
    return found


#: which of a float32's two 16-bit halves holds its top bits
_HIGH_HALF = 1 if sys.byteorder == "little" else 0


def quantization_map(bits: int, signed: bool, device: Any = "cpu") -> torch.Tensor:
    """The sorted map values (float32) for ``bits`` (8 or 4) and signedness (see the module
    docstring)."""
    check_bits("quantization_map", bits, None)
    return _tables(bits, signed, device)[0]


def check_bits(owner: str, bits: Any, block_size: Any) -> int:
    if bits not in BLOCK_SIZES:
        raise HParamError(f"{owner}: bits must be 8 or 4, got {bits!r}")
    block_size = BLOCK_SIZES[bits] if block_size is None else block_size
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2 or \
            block_size % 2:
        raise HParamError(f"{owner}: block_size must be an even int >= 2, got {block_size!r}")
    return block_size


def quantize(x: torch.Tensor, bits: int = 8, block_size: int | None = None,
             signed: bool = True) -> Quantized:
    """``x`` blockwise-quantized (see the module docstring); computed in float32."""
    return quantize_all([x], bits, check_bits("quantize", bits, block_size), signed)[0]


def quantize_all(xs: list, bits: int, block_size: int, signed: bool) -> list[Quantized]:
    """Each tensor of ``xs`` blockwise-quantized, with one pass of each op over all of them:
    they are concatenated (each padded to whole blocks) and their codes and block maxima are
    views of one buffer each."""
    sizes = [x.numel() for x in xs]
    blocks = [math.ceil(n / block_size) for n in sizes]
    pieces = []
    for x, n, b in zip(xs, sizes, blocks):
        pieces.append(x.reshape(-1).to(torch.float32))
        if b * block_size > n:
            pieces.append(x.new_zeros(b * block_size - n, dtype=torch.float32))
    flat = (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).view(-1, block_size)
    absmax = torch.maximum(flat.amax(dim=1), -flat.amin(dim=1)) if flat.numel() else \
        flat.new_zeros(0)
    _, nearest, split = _tables(bits, signed, flat.device)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normalized = (flat / scale.unsqueeze(1)).view(-1)
    bucket = normalized.view(torch.uint16).view(-1, 2).select(1, _HIGH_HALF).to(torch.int32)
    above = normalized > split.index_select(0, bucket)
    index = nearest.index_select(0, bucket) + above.view(torch.uint8)
    if bits == 4:
        high, low = index.view(-1, 2).unbind(1)
        index = high * 16 + low
    codes = index.view(torch.int8) if signed else index
    return [Quantized(c, a) for c, a in zip(codes.split([b * block_size * bits // 8
                                                          for b in blocks]),
                                             absmax.split(blocks))]


def dequantize(q: Quantized, like: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """The tensor ``q`` stores, with ``like``'s shape and dtype (the products in float32)."""
    return dequantize_all([q], [like], bits)[0]


def dequantize_all(qs: list[Quantized], likes: list, bits: int) -> list[torch.Tensor]:
    """The tensors ``qs`` store (of one map and block size), each with the shape and dtype of
    its entry of ``likes``, with one pass of each op over all of them (the results are views
    of one float32 buffer where their dtype is float32)."""
    return [x.narrow(0, 0, like.numel()).view(like.shape).to(like.dtype)
            for x, like in zip(dequantize_flat(qs, bits), likes)]


def dequantize_flat(qs: list[Quantized], bits: int) -> list[torch.Tensor]:
    """The padded flat float32 tensors ``qs`` store (of one map and block size): views of one
    buffer, each op run once over all of them."""
    signed = qs[0].codes.dtype == torch.int8
    values = _tables(bits, signed, qs[0].codes.device)[0]
    codes = [q.codes.view(torch.uint8) if signed else q.codes for q in qs]
    codes = codes[0] if len(codes) == 1 else torch.cat(codes)
    absmax = qs[0].absmax if len(qs) == 1 else torch.cat([q.absmax for q in qs])
    if bits == 4:
        codes = torch.stack((codes >> 4, codes & 15), dim=-1).view(-1)
    out = values.index_select(0, codes.to(torch.int32)).view(absmax.shape[-1], -1) * \
        absmax.unsqueeze(1)
    return list(out.view(-1).split([q.codes.shape[-1] * 8 // bits for q in qs]))

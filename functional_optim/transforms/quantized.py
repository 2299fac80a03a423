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

:func:`quantized_state` makes this a storage option of any pointwise transform's state: its
state leaves become :class:`Quantized` pairs (what the adapter's ``state_dict`` saves), and
each update dequantizes a chunk of leaves, runs the inner transform's rule on it (the
multi-tensor path groups the chunk's leaves), and quantizes the new state: every step of it
vectorized over the blocks, never a Python loop over blocks, and the float copies of the
state never exceed one chunk.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .. import tree as _tree
from ..base import HParamError, Transform

__all__ = ["Quantized", "quantization_map", "quantize", "dequantize", "quantize_tree",
           "quantized_state"]

#: default block sizes by bits (bitsandbytes' and torchao's 8-bit: 256; torchao's 4-bit: 128)
BLOCK_SIZES = {8: 256, 4: 128}

#: at most this many elements of the state are dequantized at once (per state field)
CHUNK = 1 << 22


class Quantized(NamedTuple):
    """One blockwise-quantized state tensor.

    Attributes:
        codes: the map indices, flat, for the padded tensor (one byte each in 8 bits, two per
            byte in 4 bits: the first in the high nibble). Their dtype names the map: ``int8``
            the signed map (index ``code + 128`` in 8 bits), ``uint8`` the unsigned one.
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


_ON_DEVICE: dict = {}


def _tables(bits: int, signed: bool, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The map and the midpoints between its neighbours on ``device`` (made once per device
    eagerly, so that a captured update makes nothing)."""
    key = (bits, signed, torch.device(device))
    found = _ON_DEVICE.get(key)
    if found is not None:
        return found
    values = _build_map(bits, signed, device)
    n = values.numel() - 1  # (narrow, not indexing: fake CUDA tensors have no indexing)
    found = (values, (values.narrow(0, 1, n) + values.narrow(0, 0, n)) / 2)
    if type(values) is torch.Tensor and not torch.compiler.is_compiling():
        _ON_DEVICE[key] = found
    return found


def quantization_map(bits: int, signed: bool, device: Any = "cpu") -> torch.Tensor:
    """The sorted map values (float32) for ``bits`` (8 or 4) and signedness (see the module
    docstring)."""
    _check_bits("quantization_map", bits, None)
    return _tables(bits, signed, device)[0]


def _check_bits(owner: str, bits: Any, block_size: Any) -> int:
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
    block_size = _check_bits("quantize", bits, block_size)
    flat = x.reshape(-1).to(torch.float32)
    blocks = math.ceil(flat.numel() / block_size) if flat.numel() else 0
    pad = blocks * block_size - flat.numel()
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    flat = flat.view(blocks, block_size)
    absmax = flat.abs().amax(dim=1) if blocks else flat.new_zeros(0)
    values, middles = _tables(bits, signed, x.device)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    index = torch.searchsorted(middles, (flat / scale.unsqueeze(1)).contiguous()).view(-1)
    if bits == 4:
        high, low = index.view(-1, 2).unbind(1)
        index = high * 16 + low
        codes = index.to(torch.uint8)
        return Quantized(codes.view(torch.int8) if signed else codes, absmax)
    return Quantized((index - 128).to(torch.int8) if signed else index.to(torch.uint8), absmax)


def dequantize(q: Quantized, like: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """The tensor ``q`` stores, with ``like``'s shape and dtype (the products in float32)."""
    signed = q.codes.dtype == torch.int8
    values, _ = _tables(bits, signed, q.codes.device)
    if bits == 4:
        packed = q.codes.view(torch.uint8) if signed else q.codes
        index = torch.stack((packed >> 4, packed & 15), dim=-1).view(-1).to(torch.int32)
    else:
        index = q.codes.to(torch.int32) + 128 if signed else q.codes.to(torch.int32)
    blocks = q.absmax.shape[-1]
    out = values.index_select(0, index).view(blocks, -1) * q.absmax.unsqueeze(1)
    return out.view(-1).narrow(0, 0, like.numel()).view(like.shape).to(like.dtype)


def quantize_tree(state: Any, *, bits: int = 8, block_size: int | None = None,
                  min_size: int = 4096, unsigned: tuple[str, ...] = ("nu", "nu_max")) -> Any:
    """``state`` with each real floating-point tensor of at least ``min_size`` elements (and at
    least one dimension) replaced by its :class:`Quantized` form: with the unsigned map where a
    field or key on its path is named in ``unsigned`` (the nonnegative second moments), else
    the signed one. What :func:`quantized_state`'s ``init`` stores; call it to convert a float
    state explicitly (a checkpoint of the unquantized transform)."""
    block_size = _check_bits("quantize_tree", bits, block_size)

    def walk(node: Any, signed: bool) -> Any:
        if isinstance(node, torch.Tensor):
            if node.is_floating_point() and node.ndim and node.numel() >= min_size:
                return quantize(node, bits, block_size, signed)
            return node
        if isinstance(node, Quantized) or node is None:
            return node
        if isinstance(node, dict):
            return type(node)((k, walk(v, signed and str(k) not in unsigned))
                              for k, v in node.items())
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(walk(getattr(node, f), signed and f not in unsigned)
                                for f in node._fields))
        if isinstance(node, (tuple, list)):
            return type(node)(walk(v, signed) for v in node)
        return node

    return walk(state, True)


def quantized_state(inner: Transform, bits: int = 8, block_size: int | None = None, *,
                    min_size: int = 4096,
                    unsigned: tuple[str, ...] = ("nu", "nu_max")) -> Transform:
    r"""``inner`` with its state stored blockwise-quantized in ``bits`` (8 or 4) bits.

    The state is ``inner``'s with its large floating-point leaves as :class:`Quantized`
    (:func:`quantize_tree`: at least ``min_size`` elements, bitsandbytes' ``min_8bit_size``;
    smaller ones stay as they are, as in bitsandbytes and torchao). Each update, for each chunk
    of leaves (up to :data:`CHUNK` elements), dequantizes their state into the parameters'
    dtype, runs ``inner``'s pointwise rule (the multi-tensor path over the chunk's leaves),
    and quantizes the new state (:func:`quantize`):

    .. math:: s_t = Q\bigl(\mathrm{rule}(g_t, Q^{-1}(s_{t-1}))\bigr)

    ``inner`` must be one pointwise block (:attr:`Transform.pointwise`: a moment block such as
    :func:`~functional_optim.scale_by_adam`, :func:`~functional_optim.trace` or
    :func:`~functional_optim.scale_by_rms`; in a chain, wrap each block whose state is to be
    quantized); its hyperparameters are this transform's, unchanged (live as they are).
    Quantization is a rounding: gradients flow through the dequantized values and the block
    maxima, not through the choice of code. Complex leaves keep their full-precision state.

    Args:
        inner: the pointwise block whose state is stored quantized.
        bits: 8 (dynamic map) or 4 (dynamic signed map, linear unsigned map without zero)
            (structural).
        block_size: elements per block (structural; default 256 in 8 bits, 128 in 4 bits).
        min_size: leaves with fewer elements keep a full-precision state (structural; default
            4096).
        unsigned: the state fields (NamedTuple fields or dict keys on a leaf's path) that are
            nonnegative and use the unsigned map (structural; default Adam's ``nu`` and
            ``nu_max``). A negative value stored with the unsigned map becomes 0: list only
            fields that cannot be negative.
    """
    block_size = _check_bits("quantized_state", bits, block_size)
    spec = getattr(inner, "pointwise", None)
    if spec is None or spec.reads_updates or spec.parts:
        raise TypeError("quantized_state: inner must be one pointwise block (a moment block "
                        "such as scale_by_adam or trace: Transform.pointwise set, not reading "
                        "the updates' values; wrap each block of a chain on its own), got "
                        f"{getattr(spec, 'name', inner)!r}")
    if not isinstance(min_size, int) or min_size < 0:
        raise HParamError(f"quantized_state: min_size must be an int >= 0, got {min_size!r}")
    options = dict(bits=bits, block_size=block_size, min_size=min_size,
                   unsigned=tuple(unsigned))

    def init(params):
        return quantize_tree(inner.init(params), **options)

    def update(updates, state, params=None, hparams=None, **extra):
        call = spec.prepare(updates, state, params, hparams)
        leaves, treespec = optree.tree_flatten(updates, none_is_leaf=True)
        states = [treespec.flatten_up_to(s) for s in call.states]
        inputs = [treespec.flatten_up_to(x) for x in call.inputs]
        like = call.state_like + (None,) * (len(states) - len(call.state_like))
        _check_quantized(spec.name, updates, leaves, states, like, min_size)
        donate = tuple(True if any(isinstance(s, Quantized) for s in column) else flag
                       for column, flag in zip(states, call.donate_state or
                                               (False,) * len(states)))
        new_leaves = list(leaves)
        new_states = [list(column) for column in states]
        for chunk in _chunks(leaves):
            got = _execute.elementwise(
                call.rule, call.hparams, [leaves[i] for i in chunk],
                tuple([_read(column[i], leaves[i], bits) for i in chunk] for column in states),
                tuple([x[i] for i in chunk] for x in inputs),
                name=f"quantized_state({spec.name})", complex_as_real=spec.complex == "as_real",
                real_only=spec.real_only, input_names=call.input_names, donate_state=donate,
                sparse=False, state_like=call.state_like)
            for k, i in enumerate(chunk):
                new_leaves[i] = got[0][k]
                for j, column in enumerate(states):
                    old = column[i]
                    new = got[1 + j][k]
                    new_states[j][i] = quantize(new, bits, block_size,
                                                old.codes.dtype == torch.int8) \
                        if isinstance(old, Quantized) and leaves[i] is not None else new
        out = optree.tree_unflatten(treespec, new_leaves)
        return out, call.finish(tuple(optree.tree_unflatten(treespec, column)
                                      for column in new_states))

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


def _read(leaf: Any, like: Any, bits: int) -> Any:
    return dequantize(leaf, like, bits) if isinstance(leaf, Quantized) and like is not None \
        else leaf


def _chunks(leaves: list) -> list[list[int]]:
    """Consecutive leaf indices in runs of at most :data:`CHUNK` elements (a larger leaf alone)."""
    out: list[list[int]] = [[]]
    size = 0
    for i, x in enumerate(leaves):
        n = x.numel() if isinstance(x, torch.Tensor) else 0
        if out[-1] and size + n > CHUNK:
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return out


def _check_quantized(name: str, updates: Any, leaves: list, states: list, like: tuple,
                     min_size: int) -> None:
    """A state leaf that ``quantize_tree`` would have quantized but that is a plain tensor (a
    float state handed to the quantized transform) is an error, never a silent float state."""
    for j, column in enumerate(states):
        if like[j] != _execute.LIKE:
            continue
        for i, (g, s) in enumerate(zip(leaves, column)):
            if isinstance(s, torch.Tensor) and isinstance(g, torch.Tensor) and \
                    g.is_floating_point() and g.ndim and g.numel() >= min_size:
                raise _tree.TreeMismatchError(
                    f"quantized_state({name}): leaf {_tree.leaf_label(updates, i)}: state {j} "
                    f"is a float tensor of shape {tuple(s.shape)} and dtype {s.dtype}, expected "
                    "a Quantized(codes, absmax) (leaves of at least min_size elements are "
                    "stored quantized): convert a float state with quantize_tree")

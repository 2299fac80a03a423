"""The math that update rules are written with: tensor helpers that take a tensor or a
:class:`~functional_optim._foreach.TensorList` alike (so a rule runs leaf by leaf or over a
multi-tensor group with the same numbers), and the initial states they start from. Importable
from :mod:`functional_optim._execute` as well."""

from __future__ import annotations

import threading
from numbers import Number
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from . import _foreach
from . import tree as _tree


def first_device(tree: Any) -> torch.device:
    """The device of the first tensor leaf (CPU for a tree with none)."""
    for x in _tree.leaves(tree):
        if x is not None:
            return x.device
    return torch.device("cpu")


def _sample(x: Any) -> Any:
    """A tensor that stands for ``x`` (the first of a
    :class:`~functional_optim._foreach.TensorList`)."""
    return x.items[0] if isinstance(x, _foreach.TensorList) else x


def full(x: Any) -> Any:
    """A 0-d result of a reduction over a DTensor leaf as a plain tensor holding the full value
    (a partial norm or sum completed across the shards: one all-reduce, no host sync); a plain
    tensor unchanged. Rules use it for the global statistics of a leaf (its RMS), which then
    combine with the plain hyperparameters and step counts."""
    return x if _tree.layout(_sample(x)) is None else x.full_tensor()


def placed_like(x: Any, like: Any) -> Any:
    """``x`` laid out as ``like``: a DTensor result moved to ``like``'s placements (a partial
    reduction completed, a layout that sharding propagation picked put back), so that state and
    updates keep their parameter's layout from step to step; plain tensors unchanged."""
    key = _tree.layout(_sample(like))
    return x if key is None else x.redistribute(*key)


def safe_sqrt(x: torch.Tensor, nonnegative: bool = False) -> torch.Tensor:
    r"""``sqrt(x)`` for ``x > 0``, ``0`` otherwise, with a finite gradient at ``0``.

    :math:`\frac{d}{dx}\sqrt{x}` is infinite at 0, so differentiating an update whose second moment
    is exactly zero would give ``0 * inf = NaN``; here that gradient is 0. Without autograd it is
    ``sqrt(clamp(x, min=0))``: the same values in two passes instead of four, and one pass
    (``sqrt(x)``) when the caller knows ``x >= 0`` (``nonnegative``: a running mean of squares).
    """
    if not torch.is_grad_enabled():
        return torch.sqrt(x) if nonnegative else torch.sqrt(torch.clamp(x, min=0.0))
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, 1.0)), 0.0)


def mean_over(x: Any, dim: int, keepdim: bool = False) -> Any:
    """``x.mean(dim, keepdim=keepdim)``, but 0 where ``dim`` has no elements: the mean over
    nothing is NaN, which an empty parameter (a zero-size layer, an FSDP shard that holds no
    rows) would otherwise leave in a state that keeps statistics per row or column. Decided
    by the shapes, per tensor of a :class:`~functional_optim._foreach.TensorList`."""
    items = x.items if isinstance(x, _foreach.TensorList) else [x]
    if all(t.shape[dim] for t in items):
        return x.mean(dim=dim, keepdim=keepdim)
    out = [t.mean(dim=dim, keepdim=keepdim) if t.shape[dim] else t.sum(dim=dim, keepdim=keepdim)
           for t in items]
    return _foreach.TensorList(out) if isinstance(x, _foreach.TensorList) else out[0]


def writable(x: torch.Tensor) -> torch.Tensor:
    """``x`` for an in-place write: a 0-d tensor as a one-element view of itself. Compiled
    (torch 2.13, AOT autograd), an in-place op on a 0-d float64 tensor inside a dict input is
    dropped, silently: ``d["x"].add_(u)`` leaves ``d["x"]`` as it was, and reads of it after
    the op see the old value; on the view the write happens (a float64 model's 0-d parameter
    did not move in a compiled donated step)."""
    return x.reshape(1) if x.ndim == 0 else x


def is_off(value: Any) -> bool:
    """Whether a hyperparameter is the Python number 0, so that its block skips its work.

    A Python check on a number is free and syncs nothing; a tensor (even a zero one) always
    runs the math, so the value stays live under ``vmap``, ``grad``, ``compile`` and capture.
    A block's *shape* never depends on this: it only decides whether the arithmetic runs.
    """
    return isinstance(value, Number) and not isinstance(value, bool) and value == 0


def lerp(start: Any, end: Any, weight: Any) -> Any:
    """``torch.lerp(start, end, weight)`` with a tensor ``weight`` cast to ``start``'s dtype.

    lerp's kernels (and its ``vmap`` batching rule) require a tensor weight of the inputs'
    dtype; a number weight is rounded to that dtype by the kernel, so both give the same digits
    (hyperparameters arrive as 0-d float64 tensors: :func:`cast_hparams`).
    """
    if isinstance(weight, torch.Tensor) and weight.dtype != start.dtype:
        weight = weight.to(start.dtype)
    return torch.lerp(start, end, weight)


def borrowed(x: Any) -> Any:
    """``x`` for an op that must leave it readable: on the multi-tensor path, a view of the same
    tensors that no op overwrites in place (a rule's input ``g`` may be a fused run's donated
    update, which the first op taking it as its first operand overwrites and consumes); a tensor
    or number as it is. For a rule that reads ``g`` again after such an op."""
    if isinstance(x, _foreach.TensorList) and not x.scalar:
        return _foreach.TensorList(x.items)
    return x


def ema_square(v: torch.Tensor, g: torch.Tensor, decay: Any) -> torch.Tensor:
    r"""The running mean of squares :math:`\beta v + (1-\beta) g^2`, computed as torch.optim does
    (``v * β`` then ``addcmul``: two passes, no temporary) when ``β`` is a number. ``g`` stays
    readable (rules read it again)."""
    if isinstance(decay, Number):
        return torch.addcmul(v * decay, g, g, value=1 - decay)
    g = borrowed(g)
    return v * decay + (1 - decay) * (g * g)


class _Counts(threading.local):
    on_host = False


COUNTS = _Counts()
"""Where :func:`init_count` puts the counts: on the CPU within
:func:`functional_optim.host_counts` (``COUNTS.on_host``)."""


def leaf_scalars(params: Any, value: Any, dtype: torch.dtype) -> Any:
    """Per-leaf 0-d state (a step count, NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``):
    ``value`` in ``dtype`` on each parameter's device, on the CPU within
    :func:`functional_optim.host_counts`."""
    if COUNTS.on_host:
        return _tree.map(lambda p: torch.full((), value, dtype=dtype), params)
    return _tree.map(lambda p: torch.full((), value, dtype=dtype, device=p.device), params)


def init_count(params: Any) -> Any:
    """A per-leaf step counter: an int64 0-d zero on each parameter's device (on the CPU
    within :func:`functional_optim.host_counts`)."""
    return leaf_scalars(params, 0, torch.int64)


def full_like(params: Any, value: float) -> Any:
    """A state that starts at ``value`` (an initial accumulator): each leaf filled with it, a
    complex leaf's real and imaginary parts both (complex leaves are pairs of reals)."""
    return _tree.map(lambda p: torch.full_like(
        p, complex(value, value) if p.is_complex() else value,
        memory_format=torch.preserve_format), params)


def zeros_in(params: Any, dtype: torch.dtype | None) -> Any:
    """Zeros shaped like each leaf for a state kept in a dtype of its own (optax's ``mu_dtype``
    and ``accumulator_dtype``): ``dtype``, or the leaf's where it is ``None``; a complex leaf
    takes the complex dtype of ``dtype``'s precision (``float32`` -> ``complex64``)."""
    if dtype is None:
        return _tree.zeros_like(params)
    return _tree.map(lambda p: torch.zeros_like(
        p, dtype=torch.promote_types(dtype, torch.complex32) if p.is_complex() else dtype),
        params)


def decayed(x: Any, decay: Any, like: Any) -> Any:
    """``decay * x`` for a state ``x`` kept in a dtype of its own (:func:`zeros_in`): the
    product in ``x``'s dtype, then in ``like``'s (the dtype the rule computes in), as optax
    computes its moments with ``mu_dtype``/``accumulator_dtype`` (a tensor ``decay`` is rounded
    to ``x``'s dtype first, as jax's weakly typed Python numbers are). :func:`elementwise` rounds
    the new state back to the state's dtype."""
    if not isinstance(decay, Number):  # a tensor (or a list of the leaves' 0-d values)
        decay = decay.to(x.dtype)
    return (x * decay).to(like.dtype)


class scalars_once:  # noqa: N801 - a context like torch.no_grad
    """Where ``torch.compile`` traces an update on CPU tensors: each 0-d tensor that meets a
    CPU tensor of at least :data:`ONCE_MIN_NUMEL` elements in an op (a coefficient: a bias
    correction ``1 - β**t``, a step size, a schedule's value) is taken as a view of a buffer of
    its own (``torch.as_strided``), so that inductor computes it once per step. Otherwise
    inductor inlines its arithmetic (float64 ``pow``, ``sqrt``, ``cos``, divisions: the C++
    compiler does not hoist them) into the loop over the tensor's elements, where it runs once
    per vector of elements and costs more than the update's memory traffic (Adam on 4 x 1M
    floats: 3.7x torch's fused kernel, 1.0x with it). The same values: only where they are
    computed moves. A 0-d tensor that is already a buffer (an input) becomes a view of it, no
    copy; DTensors and other devices are left as they are (a GPU kernel computes a 0-d value
    once per block of elements).

    :func:`~functional_optim._execute.elementwise` runs its rules in it and ``chain`` its
    members (the blocks that loop over their leaves themselves); outside ``torch.compile``,
    and inside another ``scalars_once``, it does nothing."""

    def __enter__(self):
        self.mode = None
        if torch.compiler.is_compiling() and not _ONCE.running:
            _ONCE.running = True
            self.mode = _ScalarBuffers()
            self.mode.__enter__()

    def __exit__(self, *exc):
        if self.mode is not None:
            self.mode.__exit__(*exc)
            _ONCE.running = False


class _Once(threading.local):
    """Whether a :class:`scalars_once` context runs its mode in this thread (dynamo traces
    each thread's calls in that thread)."""

    def __init__(self) -> None:
        self.running = False


_ONCE = _Once()

ONCE_MIN_NUMEL = 1024
"""The smallest tensor whose 0-d coefficients :class:`scalars_once` computes apart: a buffer of
its own costs about 1 us a step (inductor allocates it each call), Adam's inlined
coefficients about 30 ns per vector of 16 floats; measured even at 1024 floats (100 leaves,
AdamW, one thread), a loss below (100 leaves of 16 floats: 0.44 -> 0.64 ms)."""


class _ScalarBuffers(TorchFunctionMode):
    """The mode of :class:`scalars_once`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if len(args) + len(kwargs) > 1:  # (an attribute, a one-argument op: nothing to mix)
            scalar = larger = False
            for x in (*args, *kwargs.values()):
                if isinstance(x, torch.Tensor):
                    if not x.ndim:
                        scalar = True
                    elif x.device.type == "cpu" and x.numel() >= ONCE_MIN_NUMEL:
                        larger = True
            if scalar and larger:
                args = tuple(map(_own_buffer, args))
                kwargs = {k: _own_buffer(x) for k, x in kwargs.items()}
        return func(*args, **kwargs)


def _own_buffer(x: Any) -> Any:
    """A plain 0-d tensor as a view that inductor must compute into a buffer (``as_strided``
    realizes its input); anything else as it is."""
    if isinstance(x, torch.Tensor) and not x.ndim and _tree.layout(x) is None:
        return torch.as_strided(x, (), ())
    return x

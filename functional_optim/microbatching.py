"""Microbatching (optax's ``optax.microbatching``): evaluate a function over a batch in
sequential micro-batches and combine the results, to bound peak memory.

- :func:`microbatch` splits the batch arguments of ``fun`` into micro-batches, calls ``fun`` on
  each in turn and combines the outputs with an :class:`Accumulator` (or an
  :class:`AccumulationType`, or a tree of them matching a prefix of the output);
- :func:`micro_vmap` is :func:`torch.func.vmap` over micro-batches (the outputs concatenated, or
  reduced);
- :func:`micro_grad` computes per-example gradients in micro-batches, transforms them (e.g.
  clips them) and accumulates them, returning per-example values and metrics as well;
- :func:`reshape_batch_axis` splits a batch axis into ``(num_microbatches, microbatch_size)``.

Micro-batch ``i`` holds the examples ``i, i + n, i + 2n, ...`` (``n`` micro-batches: optax's
column-major split, which keeps a sharded batch axis sharded); ``CONCAT`` restores the order.
The loop is a Python loop (the function is evaluated once per micro-batch); with
``num_real_microbatches`` a 0-d tensor, every micro-batch is evaluated and those at or past it
leave the accumulator unchanged (``torch.where``), so nothing is read on the host; a Python int
stops the loop there.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch

__all__ = ["Accumulator", "AccumulationType", "microbatch", "micro_vmap", "micro_grad",
           "reshape_batch_axis"]

#: what :func:`micro_grad`'s function returns besides the gradient, per example
IndividualOutputs = collections.namedtuple("IndividualOutputs", ["values", "metrics", "aux"])


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How the outputs of the micro-batches combine: ``carry = init(first output)``, then
    ``carry = update(carry, output_i, i)`` for every micro-batch ``i`` (the first too), and the
    result is ``finalize(carry)``; ``aggregate(outputs)`` reduces outputs stacked along axis 0
    (within a vmapped micro-batch, :func:`micro_vmap`)."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The built-in accumulators."""

    MEAN = enum.auto()
    """The mean of the outputs (floating point only)."""
    SUM = enum.auto()
    """The sum of the outputs."""
    RUNNING_MEAN = enum.auto()
    """The mean of the outputs of the micro-batches that ran (``num_real_microbatches``)."""
    CONCAT = enum.auto()
    """The outputs concatenated along axis 0, in the batch's order."""


def _floating(owner: str, x: torch.Tensor) -> torch.Tensor:
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"microbatching: the {owner} accumulator takes floating-point outputs, "
                        f"got dtype {x.dtype}")
    return torch.zeros_like(x)


def _sum() -> Accumulator:
    return Accumulator(torch.zeros_like, lambda c, v, i: c + v, lambda c: c,
                       lambda v: v.sum(0))


def _mean(num_microbatches: int) -> Accumulator:
    return Accumulator(lambda x: _floating("MEAN", x), lambda c, v, i: c + v,
                       lambda c: c / num_microbatches, lambda v: v.mean(0))


def _running_mean() -> Accumulator:
    def update(carry, value, index):
        p = index / (index + 1)
        return carry * p + value * (1 - p)

    return Accumulator(lambda x: _floating("RUNNING_MEAN", x), update, lambda c: c,
                       lambda v: v.mean(0))


def _concat(num_microbatches: int) -> Accumulator:
    def init(x):
        return x.new_zeros((num_microbatches, *x.shape))

    def update(carry, value, index):
        slot = torch.arange(num_microbatches, device=carry.device) == index
        return torch.where(slot.view(-1, *([1] * value.ndim)), value.unsqueeze(0), carry)

    def finalize(carry):  # (n, m, ...) column-major back to the batch's order
        return carry.transpose(0, 1).reshape(-1, *carry.shape[2:])

    return Accumulator(init, update, finalize, lambda v: v)


def _leaf_accumulator(acc: Any, num_microbatches: int) -> Accumulator:
    if isinstance(acc, Accumulator):
        return acc
    if acc is AccumulationType.SUM:
        return _sum()
    if acc is AccumulationType.MEAN:
        return _mean(num_microbatches)
    if acc is AccumulationType.RUNNING_MEAN:
        return _running_mean()
    if acc is AccumulationType.CONCAT:
        return _concat(num_microbatches)
    raise ValueError(f"microbatching: unknown accumulator {acc!r}; expected an Accumulator or "
                     "an AccumulationType")


def _compose(accumulators: Any, num_microbatches: int) -> Accumulator:
    """One :class:`Accumulator` over trees from a tree of them (a prefix of the outputs'
    tree): each applies leaf-wise to the subtree under it."""
    accs = optree.tree_map(lambda a: _leaf_accumulator(a, num_microbatches), accumulators)

    def over(method: str) -> Callable:
        def apply(values, *rest):
            return optree.tree_map(
                lambda a, v, *r: optree.tree_map(lambda x, *y: getattr(a, method)(x, *y),
                                                 v, *r), accs, values, *rest)
        return apply

    init, finalize, aggregate = over("init"), over("finalize"), over("aggregate")

    def update(carry, value, index):
        return optree.tree_map(
            lambda a, c, v: optree.tree_map(lambda x, y: a.update(x, y, index), c, v),
            accs, carry, value)

    return Accumulator(init, update, finalize, aggregate)


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Each leaf's batch axis ``axis`` split into ``(num_microbatches, microbatch_size)``
    column-major: micro-batch ``i`` holds examples ``i, i + n, ...`` (optax's split)."""
    def split(x):
        size = x.shape[axis]
        if size % microbatch_size:
            raise ValueError(f"reshape_batch_axis: the batch axis {axis} has size {size}, not "
                             f"divisible by microbatch_size={microbatch_size}")
        shape = (*x.shape[:axis], microbatch_size, size // microbatch_size, *x.shape[axis + 1:])
        return x.reshape(shape).transpose(axis, axis + 1)

    return optree.tree_map(split, tree)


def _as_tuple(x: Any) -> tuple:
    return (x,) if isinstance(x, (int, str)) else tuple(x)


def microbatch(fun: Callable, argnums: int | Sequence[int], microbatch_size: int | None,
               accumulator: Any = AccumulationType.SUM, *, argnames: str | Sequence[str] = (),
               in_axes: int | Sequence[int] = 0,
               num_real_microbatches: int | torch.Tensor | None = None) -> Callable:
    """``fun`` evaluated over micro-batches of its batch arguments, the outputs combined
    (optax's ``microbatch``)::

        total = microbatch(lambda x: (x ** 2).sum(), argnums=0, microbatch_size=2)(
            torch.arange(8.0))                  # = (torch.arange(8.0) ** 2).sum(), in 4 calls

    Args:
        fun: any function.
        argnums: the positions of its arguments with a batch axis (trees of tensors).
        microbatch_size: examples per micro-batch (must divide the batch size); ``None``
            returns ``fun`` itself.
        accumulator: an :class:`Accumulator`, an :class:`AccumulationType` or a tree of them
            matching a prefix of ``fun``'s output (default ``SUM``).
        argnames: the names of keyword arguments with a batch axis.
        in_axes: the batch axis of each (an int for all, or one per ``argnums + argnames``).
        num_real_microbatches: run only the first this many micro-batches (a Python int stops
            the loop; a 0-d tensor masks the rest, see the module docstring).
    """
    if microbatch_size is None:
        return fun
    argnums, argnames = _as_tuple(argnums), _as_tuple(argnames)
    axes = ((in_axes,) * (len(argnums) + len(argnames)) if isinstance(in_axes, int)
            else tuple(in_axes))
    if len(axes) != len(argnums) + len(argnames):
        raise ValueError(f"microbatch: in_axes has {len(axes)} entries, argnums and argnames "
                         f"{len(argnums) + len(argnames)}")

    def microbatched(*args, **kwargs):
        args = list(args)
        batches = [(args, i) for i in argnums] + [(kwargs, n) for n in argnames]
        sizes = {leaf.shape[ax] for (where, key), ax in zip(batches, axes)
                 for leaf in optree.tree_leaves(where[key])}
        if len(sizes) != 1:
            raise ValueError(f"microbatch: the batch arguments must have one batch size, got "
                             f"{sorted(sizes)}")
        (size,) = sizes
        if size % microbatch_size:
            raise ValueError(f"microbatch: the batch size {size} is not divisible by "
                             f"microbatch_size={microbatch_size}")
        count = size // microbatch_size
        split = [reshape_batch_axis(where[key], microbatch_size, ax)
                 for (where, key), ax in zip(batches, axes)]
        acc = _compose(accumulator, count)

        def call(i):
            a, k = list(args), dict(kwargs)
            for ((where, key), ax), tree in zip(zip(batches, axes), split):
                part = optree.tree_map(lambda x, ax=ax: x.select(ax, i), tree)
                (a if where is args else k)[key] = part
            return fun(*a, **k)

        real = num_real_microbatches
        steps = count if real is None or isinstance(real, torch.Tensor) else min(real, count)
        carry = None
        for i in range(steps):
            out = call(i)
            if carry is None:
                carry = acc.init(out)
            new = acc.update(carry, out, i)
            if isinstance(real, torch.Tensor):
                keep = real > i
                new = optree.tree_map(lambda n, c, k=keep: torch.where(k, n, c), new, carry)
            carry = new
        return acc.finalize(carry)

    return microbatched


def micro_vmap(fun: Callable, in_axes: int | Sequence[int | None] = 0, out_axes: int = 0, *,
               microbatch_size: int | None = None, vmap_fn: Callable = torch.func.vmap,
               accumulator: Any = AccumulationType.CONCAT,
               num_real_microbatches: int | torch.Tensor | None = None) -> Callable:
    """:func:`torch.func.vmap` of ``fun`` over micro-batches of ``microbatch_size`` examples
    (optax's ``micro_vmap``): ``CONCAT`` (default) gives vmap's outputs; ``SUM``/``MEAN`` reduce
    over the batch without holding every output. ``in_axes``: one per positional argument
    (``None``: not batched); keyword arguments are batched on axis 0; ``out_axes`` must be 0.
    """
    if out_axes != 0:
        raise NotImplementedError("micro_vmap: only out_axes=0 is supported")
    axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    def reduced(*args, kwargs):
        specs = []

        def flat(a, k):  # vmap takes tensors out: None leaves and optree nodes stay outside
            leaves, spec = optree.tree_flatten(fun(*a, **k))
            specs.append(spec)
            return tuple(leaves)

        leaves = vmap_fn(flat, (axes, 0), out_axes)(args, kwargs)
        output = optree.tree_unflatten(specs[0], leaves)
        size = leaves[0].shape[0]
        return _compose(accumulator, size).aggregate(output)

    batched = tuple(i for i, ax in enumerate(axes) if ax is not None)
    inner = microbatch(reduced, argnums=batched, argnames="kwargs",
                       microbatch_size=microbatch_size, accumulator=accumulator,
                       in_axes=tuple(ax for ax in axes if ax is not None) + (0,),
                       num_real_microbatches=num_real_microbatches)
    return lambda *args, **kwargs: inner(*args, kwargs=kwargs)


def micro_grad(fun: Callable, has_aux: bool = False, argnums: int | Sequence[int] = 0, *,
               batch_argnums: int | Sequence[int] = 1, keep_batch_dim: bool = True,
               microbatch_size: int | None = None, accumulator: Any = AccumulationType.SUM,
               transform_fn: Callable[[Any], Any] = lambda x: x,
               metrics_fn: Callable[[Any], Any] = lambda x: None,
               num_real_microbatches: int | torch.Tensor | None = None) -> Callable:
    """Per-example gradients of ``fun``, transformed and accumulated, in micro-batches
    (optax's ``micro_grad``): ``f(*args) -> (accumulated transform_fn(grad_i),
    IndividualOutputs(values, metrics, aux))`` with the per-example values, ``metrics_fn(grad_i)``
    and auxiliary outputs stacked along axis 0. E.g. clipped per-example gradients summed::

        grad, out = micro_grad(loss, batch_argnums=1, microbatch_size=4,
                               transform_fn=lambda g: clip_by_global_norm(1.0)...)(params, batch)

    Args:
        fun: ``fun(params, batch, ...)`` (a scalar, or ``(scalar, aux)`` with ``has_aux``).
        has_aux: ``fun`` returns ``(value, aux)``.
        argnums: the arguments differentiated (:func:`torch.func.grad_and_value`'s).
        batch_argnums: the arguments with a batch axis (axis 0).
        keep_batch_dim: ``fun`` sees each example with a batch axis of 1.
        microbatch_size: examples per micro-batch (``None``: the whole batch at once).
        accumulator: how the transformed gradients combine (default ``SUM``).
        transform_fn: applied to each example's gradient.
        metrics_fn: per-example metrics of each gradient (returned, not accumulated).
        num_real_microbatches: see :func:`microbatch`.
    """
    batch_argnums = _as_tuple(batch_argnums)
    with_aux = fun if has_aux else (lambda *a, **k: (fun(*a, **k), ()))
    grad_and_value = torch.func.grad_and_value(with_aux, argnums, has_aux=True)

    def per_example(*args, **kwargs):
        if keep_batch_dim:
            args = tuple(optree.tree_map(lambda x: x.unsqueeze(0), a) if i in batch_argnums
                         else a for i, a in enumerate(args))
        grad, (value, aux) = grad_and_value(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(value, metrics_fn(grad),
                                                     aux if has_aux else None)

    def run(*args, **kwargs):
        axes = tuple(0 if i in batch_argnums else None for i in range(len(args)))
        return micro_vmap(per_example, axes, microbatch_size=microbatch_size,
                          accumulator=(accumulator, AccumulationType.CONCAT),
                          num_real_microbatches=num_real_microbatches)(*args, **kwargs)

    return run

"""torch's fused optimizer kernels as the in-place fast path of the aliases that have one.

An alias built from blocks (``adam``: ``[maximize] → [decay] → scale_by_adam → [decay] → lr``)
computes, in its chain, exactly what one of torch's fused kernels (``torch._fused_adam_``,
``_fused_adamw_``, ``_fused_sgd_``, ``_fused_adagrad_``) computes in a single pass over memory.
An alias without a kernel still saves the learning-rate pass (:func:`lr_folded_step`). The alias
attaches a *fused step* to its :class:`~functional_optim.Transform`::

    fused(params, grads, state, hparams) -> state | None

``params``, ``grads`` and ``state`` are the stateful adapter's (dicts keyed by parameter name,
tensors it owns): the step updates params and state **in place** and returns the state, or returns
``None`` when the kernel does not apply (a tensor beta, a schedule, complex or half-precision
leaves, a DTensor, a step count on another device, a memory layout the kernel cannot index: see
:func:`linear`), and the adapter then runs the chain. The numbers are the chain's up to rounding
order (tested).

Only the adapter and ``fo.step`` call it, outside autograd and ``torch.compile``, with dense
gradients: donated (the caller gives up the state, counts included) or pure (within
:func:`owning`: on copies); the pure ``update`` is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import threading
from collections.abc import Callable, Iterator
from numbers import Number
from typing import Any

import optree
import torch

from . import _execute, _foreach
from ._blocks import BLOCK, blocks, scratch
from .base import EmptyState, Transform, resolve_hparams

__all__ = ["adam_step", "sgd_step", "adagrad_step", "lr_folded_step", "chain_step", "first",
           "dense", "linear"]

FusedStep = Callable[[dict, dict, Any, dict], Any]

# dtypes on which the kernels compute as the chain does (half precision: the kernels compute in
# float32 and round once, the chain rounds every op, so they stay on the chain)
_DTYPES = (torch.float32, torch.float64)


def _number(x: Any) -> bool:
    return type(x) in (float, int) or isinstance(x, Number) and not isinstance(x, (bool, complex))


_device, _dtype = operator.attrgetter("device"), operator.attrgetter("dtype")


def dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill ``t.numel()`` consecutive memory slots, one each: a
    contiguous tensor or a permutation of one (channels_last, a transpose), not a strided view
    (``big[:, ::2]``) nor an overlapping one (``expand``)."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return t.numel() == 0
        expected *= size
    return True


_is_contiguous = torch.Tensor.is_contiguous


def linear(columns: list[list[torch.Tensor]]) -> bool:
    """Whether a kernel that walks each tensor's memory linearly (torch's fused optimizer
    kernels: element ``i`` of a parameter is element ``i`` of its gradient and state) computes
    the right thing on ``columns`` (one tensor per parameter in each: parameters, gradients,
    state buffers): each parameter's tensors are :func:`dense` and have the same strides.

    The usual case, everything contiguous, is one C-level pass of ``is_contiguous``."""
    if all(map(_is_contiguous, itertools.chain.from_iterable(columns))):
        return True
    for row in zip(*columns):
        if all(map(_is_contiguous, row)):
            continue
        strides = row[0].stride()
        if not (dense(row[0]) and all(t.stride() == strides for t in row[1:])):
            return False
    return True


def _groups(params: dict, grads: dict, steps: dict | None,
            buffers: tuple[dict, ...] | None = None) -> dict | None:
    """Names of the leaves by (device, dtype), or ``None`` when a leaf is not for a kernel.

    Gradients match their parameter's dtype, device and shape (autograd enforces it on
    assignment), and state buffers too (``init`` and ``load_state_dict`` make them so). The step
    counts sit on their parameters' devices, or all on the CPU (torch keeps them there unless
    capturable or fused: :func:`_as_read` copies them over, outside a CUDA graph's capture).
    Gradients are dense: the adapter runs a step with a sparse one on the chain.
    ``buffers`` (the state a kernel updates, by name): the memory layouts are checked too
    (:func:`linear`); ``None`` for a caller that walks the tensors with layout-aware ops.
    """
    names = list(params)
    gs = list(map(grads.__getitem__, names))
    if not names or set(map(type, gs)) != {torch.Tensor}:
        return None  # a DTensor or other subclass gradient
    ps = list(params.values())
    if buffers is not None and not linear([ps, gs, *(_take(b, names) for b in buffers)]):
        return None
    devices, dtypes = list(map(_device, ps)), list(map(_dtype, ps))
    if steps is not None:
        at = list(map(_device, map(steps.__getitem__, names)))
        if at != devices and (any(d.type != "cpu" for d in at) or torch.cuda.is_available()
                              and torch.cuda.is_current_stream_capturing()):
            return None
    if devices.count(devices[0]) == len(ps) and dtypes.count(dtypes[0]) == len(ps):
        groups = {(devices[0], dtypes[0]): names}  # the usual case: one device and dtype
    else:
        groups = {}
        for name, key in zip(names, zip(devices, dtypes)):
            groups.setdefault(key, []).append(name)
    if any(dtype not in _DTYPES or device.type not in ("cpu", "cuda")
           for device, dtype in groups):
        return None  # a dtype the chain keeps (see _DTYPES)
    return groups


def _lr(h: dict, device: torch.device, dtype: torch.dtype) -> Any:
    """The lr as the kernels on ``device`` take it for ``dtype`` parameters: a number, or a 0-d
    tensor on that device. A GPU kernel reads a tensor lr as float32: a float64 one is rounded
    to float32 for float32 parameters (as the chain's product rounds it) and declined for
    float64 ones (the chain keeps its digits: 1e-9 relative on a float64 schedule's step)."""
    lr = h["lr"]
    if _number(lr):
        return float(lr)
    if not (isinstance(lr, torch.Tensor) and lr.ndim == 0 and lr.device == device
            and lr.dtype.is_floating_point):
        return None
    if device.type == "cpu" or lr.dtype == torch.float32:
        return lr
    return lr.float() if dtype == torch.float32 else None


def _numbers(h: dict, keys: tuple[str, ...]) -> bool:
    """Whether each of these hparams is a Python number (what the kernels take)."""
    return all(_number(h[k]) for k in keys)


def _take(column: dict, names: list) -> list:
    return [column[n] for n in names]


def _kernel_groups(params: dict, grads: dict, steps: dict | None, h: dict, state: dict,
                   buffers: tuple[dict, ...], cpu_only: bool = False) -> list | None:
    """``[(names, lr)]``, one per (device, dtype) group, or ``None`` when a kernel cannot run
    (also for a schedule: its ``lr`` block keeps a count; with ``cpu_only``, a kernel torch
    has for the CPU alone, off it)."""
    if not isinstance(state["lr"], EmptyState):
        return None
    groups = _groups(params, grads, steps, buffers)
    if groups is None or cpu_only and any(device.type != "cpu" for device, _ in groups):
        return None
    out = [(names, _lr(h, *key)) for key, names in groups.items()]
    return None if any(lr is None for _, lr in out) else out


def _plus_one(counts: list, inplace: bool) -> Any:
    """``counts + 1``, in place or as new tensors. With a 0-d one of the counts' dtype and an
    ``alpha``, the foreach kernel takes its one-tensor overload: a third of the time of the
    number overload torch's fused optimizers use (0.12 against 0.37 ms for 300 CPU counts),
    the same numbers."""
    first = counts[0]
    one = _foreach.constant(1, first.dtype) if first.is_cpu else \
        torch.ones((), dtype=first.dtype, device=first.device)
    if inplace:
        torch._foreach_add_(counts, one, alpha=1)
        return counts
    return torch._foreach_add(counts, one, alpha=1)


def _counted(counts: list) -> list:
    """``counts + 1`` for a caller that was given the state: in place where each count is a
    tensor of its own, else new tensors (the adapter's SGD derives one count tensor for every
    leaf whose buffer has started: in place, it would be advanced once per leaf; a pure step,
    :func:`owning`, shares the caller's counts)."""
    return _plus_one(counts, inplace=_OWNING.copies is None
                     and len(set(map(id, counts))) == len(counts))


def _as_read(counts: list, device: torch.device) -> list:
    """The counts as torch's Adam kernels on ``device`` read them. On the CPU, as they are (the
    kernel converts each). On a GPU, float32 tensors there: the CUDA kernel reads each count's
    memory as a float32 whatever its dtype (an int64 count of 1 would read as 1e-45, and the
    step divide by zero), so other counts are read from a float32 copy (one stack and one
    cast); counts on the CPU (torch.optim's format) are copied over from pinned memory, which
    does not wait for the GPU."""
    if device.type == "cpu" or counts[0].device == device and all(
            [c.dtype == torch.float32 for c in counts]):
        return counts
    read = torch.stack(counts).float()
    if read.device != device:
        read = read.pin_memory().to(device, non_blocking=True)
    return list(read.unbind())


def _advance(steps: dict, names: list, fresh: dict) -> list:
    """The counts of ``names`` advanced (:func:`_counted`); new tensors go into ``fresh``."""
    counts = _take(steps, names)
    new = _counted(counts)
    if new is not counts:
        fresh.update(zip(names, new))
    return new


class _Owning(threading.local):
    copies: list | None = None
    graphed: bool = False


class Graphed(Exception):
    """Raised within :func:`owning` for a caller that records a graph (grad mode on) by a step
    about to copy a state tensor that requires grad: the pure step's graph runs the chain."""


_OWNING = _Owning()


@contextlib.contextmanager
def owning(copies: list, graphed: bool = False) -> Iterator[None]:
    """Within: the fused steps leave their inputs alone (``fo.step`` without donation). Once a
    step's checks pass, it copies the parameters and the state it updates, runs in place on
    the copies and returns the new state on them; the parameters' copy is appended to
    ``copies`` (empty if no step ran). ``graphed``: the caller records a graph (grad mode was
    on), so a state tensor that requires grad makes the step raise :class:`Graphed`, found
    where the step walks the state to copy it (no other walk of the whole state)."""
    before = _OWNING.copies, _OWNING.graphed
    _OWNING.copies, _OWNING.graphed = copies, graphed
    try:
        yield
    finally:
        _OWNING.copies, _OWNING.graphed = before


def pure_copies() -> list | None:
    """Within :func:`owning`, the list the new parameters go to (a step that makes new tensors
    itself instead of copying its inputs: the blocked programs); else ``None``."""
    return _OWNING.copies


def check_graphed(leaves: Any) -> None:
    """Within :func:`owning` for a caller that records a graph: raises :class:`Graphed` where
    a tensor among ``leaves`` (an iterable of tensors, ``None`` and other values) requires
    grad."""
    if _OWNING.graphed and _execute._requires_grad(list(leaves)):
        raise Graphed


def _owned(params: dict, *trees: Any, shared: tuple = ()) -> tuple:
    """``(params, *trees)``, or, within :func:`owning`, copies of them (their tensors cloned:
    the same strides), the parameters' copy handed to the caller. The tensors of ``shared``
    (dicts of counts that the step replaces with new ones, :func:`_counted`) are not copied.
    On a GPU the copies are made by foreach kernels (:func:`_copies`): a clone per tensor, a
    launch each, took 18 ms of a pure AdamW step on 300 parameters whose donated step takes
    2.7 ms, on an H200."""
    copies = _OWNING.copies
    if copies is None:
        return (params, *trees)
    keep = {id(x) for column in shared for x in column.values()}
    flats = [optree.tree_flatten(tree, none_is_leaf=True) for tree in trees]
    leaves = [*params.values(), *(x for flat, _ in flats for x in flat)]
    check_graphed(leaves)
    at = [k for k, x in enumerate(leaves) if isinstance(x, torch.Tensor) and id(x) not in keep]
    for k, new in zip(at, _copies([leaves[k] for k in at])):
        leaves[k] = new
    params = dict(zip(params, leaves))
    copies.append(params)
    out, start = [params], len(params)
    for flat, spec in flats:
        out.append(optree.tree_unflatten(spec, leaves[start:start + len(flat)]))
        start += len(flat)
    return tuple(out)


def _owned_fields(params: dict, holder: Any, fields: tuple) -> tuple:
    """``(params, holder)``, or, within :func:`owning`, copies of ``params`` and of the dicts
    of tensors in ``holder``'s ``fields`` (a state NamedTuple), the parameters' copy handed to
    the caller: the tensors a kernel writes, copied without walking the whole state (19 µs
    less than :func:`_owned` of a pure AdamW step on the quickstart's model, 0.14 ms; through
    :func:`_owned` on the fields' dicts, whose flattens it would pay, it measured 35 µs more
    after a backward). The state's other tensors are the kernel's step counts (replaced, never
    written), or none.
    ``holder`` may be ``None`` (no fields: the parameters alone)."""
    copies = _OWNING.copies
    if copies is None:
        return params, holder
    columns = [getattr(holder, f) for f in fields]
    sources = [*params.values(), *(x for c in columns for x in c.values())]
    check_graphed(sources)
    made = _copies(sources)
    at = len(params)
    new = dict(zip(params, made))
    copies.append(new)
    parts = {}
    for f, c in zip(fields, columns):
        parts[f] = dict(zip(c, made[at:at + len(c)]))
        at += len(c)
    return new, holder._replace(**parts) if parts else holder


def _copies(sources: list) -> list:
    """New tensors holding ``sources`` (each one's strides). On the CPU a clone each (as fast
    as any foreach form there, whose CPU kernels copy one by one too). Elsewhere a foreach
    kernel per (device, dtype): a clone is a launch per tensor on a GPU, and an
    ``empty_like`` per tensor costs more host time than the step's kernels, so floating
    tensors are multiplied by one (``x * 1`` is ``x``, bit for bit: signed zeros, infinities,
    subnormals; a NaN stays a NaN, of the GPU's payload), which allocates each output in C++
    (300 x 4096 on an H200: AdamW's pure step 11.8 -> 10.1 ms, SGD's 8.1 -> 7.2), and the
    others are copied into new tensors with ``torch._foreach_copy_`` (the one-launch copy
    takes a single dtype)."""
    if sources[0].is_cpu:
        return [x.clone() for x in sources]
    news: list = [None] * len(sources)
    by: dict = {}
    for k, x in enumerate(sources):
        by.setdefault((x.device, x.dtype), []).append(k)
    for (_, dtype), ks in by.items():
        xs = [sources[k] for k in ks]
        if dtype.is_floating_point:
            made = torch._foreach_mul(xs, 1)
        else:
            made = [torch.empty_like(x) for x in xs]
            torch._foreach_copy_(made, xs)
        for k, new in zip(ks, made):
            news[k] = new
    return news


def adam_step(*, decoupled: bool, amsgrad: bool, maximize: bool) -> FusedStep:
    """The fused step of ``adam``/``adamw`` (``torch._fused_adam_``/``_fused_adamw_``)."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

    def fused(params, grads, state, h):
        if not (_numbers(h, ("eps", "weight_decay")) and all(_number(b) for b in h["betas"])):
            return None
        adam = state["adam"]
        groups = _kernel_groups(params, grads, adam.step, h, state,
                                (adam.mu, adam.nu, adam.nu_max) if amsgrad else (adam.mu, adam.nu))
        if groups is None:
            return None
        params, adam = _owned_fields(params, adam, ("mu", "nu", "nu_max") if amsgrad
                                     else ("mu", "nu"))
        state, fresh = {**state, "adam": adam}, {}
        for names, lr in groups:
            counts = _as_read(_advance(adam.step, names, fresh), params[names[0]].device)
            kernel(_take(params, names), _take(grads, names), _take(adam.mu, names),
                   _take(adam.nu, names), _take(adam.nu_max, names) if amsgrad else [],
                   counts, lr=lr, beta1=float(h["betas"][0]),
                   beta2=float(h["betas"][1]), weight_decay=float(h["weight_decay"]),
                   eps=float(h["eps"]), amsgrad=amsgrad, maximize=maximize)
        return {**state, "adam": adam._replace(step={**adam.step, **fresh})} if fresh else state

    return fused


def sgd_step(*, nesterov: bool, maximize: bool, has_momentum: bool,
             count: bool = True) -> FusedStep:
    """The fused step of ``sgd`` (``torch._fused_sgd_``); ``has_momentum``: the alias has a
    momentum block (``momentum`` not ``None``).

    The chain starts the momentum buffer at ``b_1 = g_1`` (torch's first step). With zero
    dampening that is ``μ·0 + g_1`` from the zero buffer ``init`` gives, so the kernel runs as on
    a later step; a nonzero dampening stays on the chain (telling the first step apart would read
    the count). A momentum of 0 skips the buffer (and its count), as the chain's ``trace``.
    ``count=False`` leaves the momentum's step counts as they are, for a caller that derives
    them (the drop-in ``SGD`` keeps none, as torch's).
    """

    def fused(params, grads, state, h):
        if not (_numbers(h, ("weight_decay", "dampening")) and h["dampening"] == 0):
            return None
        momentum = h["momentum"]
        if has_momentum and not _number(momentum) or not has_momentum and not (
                momentum is None or _number(momentum) and momentum == 0):
            return None  # (the chain raises the alias's error for a momentum without block)
        moving = has_momentum and momentum != 0
        trace = state["momentum"] if moving else None
        groups = _kernel_groups(params, grads, trace.step if moving else None, h, state,
                                (trace.momentum_buffer,) if moving else ())
        if groups is None:
            return None
        params, trace = _owned_fields(params, trace, ("momentum_buffer",) if moving else ())
        if moving:
            state = {**state, "momentum": trace}
        fresh: dict = {}  # (counts advanced into new tensors)
        for names, lr in groups:
            buffers = []
            if moving:
                buffers = _take(trace.momentum_buffer, names)
                if count:
                    _advance(trace.step, names, fresh)
            torch._fused_sgd_(_take(params, names), _take(grads, names), buffers,
                              weight_decay=float(h["weight_decay"]),
                              momentum=float(h["momentum"]) if moving else 0.0, lr=lr,
                              dampening=0.0, nesterov=nesterov and moving, maximize=maximize,
                              is_first_step=False)
        if not fresh:
            return state
        return {**state, "momentum": trace._replace(step={**trace.step, **fresh})}

    return fused


def adagrad_step(*, maximize: bool) -> FusedStep:
    """The fused step of ``adagrad`` (``torch._fused_adagrad_``, which torch has for the CPU
    alone)."""

    def fused(params, grads, state, h):
        if not _numbers(h, ("lr_decay", "eps", "weight_decay")):
            return None
        rss = state["rss"]
        groups = _kernel_groups(params, grads, rss.step, h, state, (rss.sum,), cpu_only=True)
        if groups is None:
            return None
        params, rss = _owned_fields(params, rss, ("sum",))
        state, fresh = {**state, "rss": rss}, {}
        for names, lr in groups:
            torch._fused_adagrad_(_take(params, names), _take(grads, names),
                                  _take(rss.sum, names), _advance(rss.step, names, fresh), lr=lr,
                                  lr_decay=float(h["lr_decay"]),
                                  weight_decay=float(h["weight_decay"]), eps=float(h["eps"]),
                                  maximize=maximize)
        return {**state, "rss": rss._replace(step={**rss.step, **fresh})} if fresh else state

    return fused


def lr_folded_step(head: Transform, defaults: dict, to_inner: Callable,
                   where: str) -> FusedStep:
    """The step of an alias ``chain(**blocks, lr=scale_by_learning_rate(lr))`` with the last
    block folded into the parameter update: ``head`` (the chain without ``lr``) runs
    multi-tensor, then ``p += -lr * u`` is one ``torch._foreach_add_(..., alpha=-lr)``: one pass
    over memory and one temporary fewer than scaling, then adding. A schedule or tensor lr runs
    the whole chain."""

    def fused(params, grads, state, h):
        h = resolve_hparams(defaults, h, where)
        lr = h["lr"]
        if not (_number(lr) and isinstance(state["lr"], EmptyState)):
            return None
        inner = {k: v for k, v in to_inner(h).items() if k != "lr"}  # raises the alias's errors
        params, state = _owned(params, state)  # (counts too: the rules advance them in place)
        head_state = {k: v for k, v in state.items() if k != "lr"}
        with _execute.multi_tensor(True, donate=True):
            updates, new_state = head.update(grads, head_state, params, inner)
        pairs = [(p, updates[n]) for n, p in params.items() if updates[n] is not None]
        same = [(p, u) for p, u in pairs if u.dtype == p.dtype]
        if same:
            torch._foreach_add_([p for p, _ in same], [u for _, u in same], alpha=-lr)
        for p, u in pairs:
            if u.dtype != p.dtype:
                p.add_(u, alpha=-lr)
        return {**new_state, "lr": state["lr"]}

    return fused


def first(*steps: FusedStep) -> FusedStep:
    """The first of ``steps`` that applies (returns a state), else ``None``."""

    def fused(params, grads, state, h):
        for step in steps:
            new_state = step(params, grads, state, h)
            if new_state is not None:
                return new_state
        return None

    return fused


# a chain's kinds of blocks (after an optional clip_by_global_norm, identities left out) that
# one of torch's Adam kernels computes: (kernel, whether a decay block is in it)
_CHAINS = {
    ("adam", "lr"): ("_fused_adam_", False),
    ("decay", "adam", "lr"): ("_fused_adam_", True),
    ("adam", "decay", "lr"): ("_fused_adamw_", True),
}


def _adam_columns(kernel: Callable, columns: list, **kwargs: Any) -> None:
    """One of torch's Adam kernels on ``columns``: parameters, gradients, ``mu``, ``nu``,
    [``nu_max``, with ``amsgrad``], counts."""
    p, g, mu, nu, *rest = columns
    kernel(p, g, mu, nu, rest[0] if kwargs["amsgrad"] else [], rest[-1], **kwargs)


_CLIP_BLOCK = 4 * BLOCK
"""Elements per block of a clipped Adam step on the CPU: 4x a blocked step's. torch's Adam
kernel costs about 12 us a call beyond its work (4 x 4M in blocks of 128K elements: 8.7 ms,
whole 7.2 ms, AMD EPYC), and the clipped gradients gain nothing from staying in L2: the step
is bound by the reads and writes of the parameters and moments. Measured, 4 x 4M / torch
fused with an in-place clip: 1.10x at 128K, 1.06x at 512K and 1M (a 2 MB scratch here)."""


def _clipped(grads: list, coef: torch.Tensor) -> list:
    """``grads * coef`` (the clipped gradients, for the kernel only): on the CPU into a kept
    scratch (:func:`~functional_optim._blocks.scratch`), else into new tensors. Fresh memory
    takes page faults on every step wherever glibc's allocator hands it back to the system:
    a tensor of more than its mmap threshold (128 KB at first), and small ones too once their
    sum at the heap's top passes its trim threshold (300 x 4096: 1.45x torch fused with fresh
    clipped tensors in the functional benchmark's rounds, 0.97x-1.03x into the scratch). Up
    to 4 tensors with ``out=``, a call each (2 us); more with a foreach copy and an in-place
    multiply (two calls: 10 us for 4 tensors of 83K elements, against 8 us with ``out=``, AMD
    EPYC)."""
    if not (grads[0].is_cpu and all(map(_is_contiguous, grads))):
        return torch._foreach_mul(grads, coef)
    clipped = scratch(grads)
    if len(grads) <= 4:
        for g, out in zip(grads, clipped):
            torch.mul(g, coef, out=out)
    else:
        torch._foreach_copy_(clipped, grads)
        torch._foreach_mul_(clipped, coef)
    return clipped


def chain_step(tx: Transform, grads_donated: bool = False) -> FusedStep | None:
    """The fused step of a user chain that is Adam or AdamW in blocks, else ``None``.

    ``chain([clip_by_global_norm], [add_decayed_weights], scale_by_adam,
    [add_decayed_weights], scale_by_learning_rate)`` (unmasked decay, a descending learning rate
    or schedule, ``eps_root`` 0, identities anywhere) computes what ``torch._fused_adam_``
    (decay before the moments: L2) or ``_fused_adamw_`` (decay after: decoupled) computes. The
    step clips the gradients (a multiply by the norm's coefficient, as the chain) into other
    tensors (:func:`_clipped`: a kept scratch on the CPU, never fresh memory); on the CPU a
    block of :data:`_CLIP_BLOCK` elements at a time (:func:`~functional_optim._blocks.blocks`:
    the scratch is one block's), the kernel running on each block after its clip (on a GPU,
    whole: two kernel launches a block made the step 12x torch fused's on 4 x 4M). With
    ``grads_donated`` the clip is in place, as ``torch.nn.utils.clip_grad_norm_``, then the
    kernel runs on everything. The blocks' hparams are read from the chain's as the chain
    reads them (a schedule's value from its count). The numbers are the chain's up to rounding
    order (tested). Anything the kernel cannot take runs
    the chain (see :func:`adam_step`).
    """
    spec = tx.pointwise
    if spec is None or not spec.parts:
        return None
    members = [(k, s) for k, s in spec.parts if s.kernel != ("identity",)]
    if not members or any(not s.kernel for _, s in members):
        return None
    clip = members[0][0] if members[0][1].kernel == ("clip",) else None
    rest = members[1:] if clip is not None else members
    pattern = _CHAINS.get(tuple(s.kernel[0] for _, s in rest))
    if pattern is None:
        return None
    name, has_decay = pattern
    keys = {s.kernel[0]: k for k, s in rest}
    amsgrad = next(s for _, s in rest if s.kernel[0] == "adam").kernel[1]

    def fused(params, grads, state, hparams):
        calls = {k: s.prepare(grads, state[k], params, hparams[k]) for k, s in spec.parts}
        adam = calls[keys["adam"]]
        h = adam.hparams
        wd = calls[keys["decay"]].hparams["weight_decay"] if has_decay else 0.0
        neg_lr = calls[keys["lr"]].hparams["lr"]
        if not (all(_number(b) for b in h["betas"]) and _number(h["eps"]) and _number(wd)
                and _number(h["eps_root"]) and h["eps_root"] == 0):
            return None
        steps, mu, nu = adam.states[:3]
        groups = _groups(params, grads, steps, adam.states[1:4] if amsgrad else (mu, nu))
        if groups is None:
            return None
        lrs = [_lr({"lr": -neg_lr}, *key) for key in groups]
        if any(lr is None for lr in lrs):
            return None
        params, *states = _owned(params, *adam.states, shared=(steps,))
        mu, nu = states[1:3]
        coef = calls[clip].hparams["coef"] if clip is not None else None
        kernel = getattr(torch, name)
        new_steps: dict = {}
        for ((device, _), names), lr in zip(groups.items(), lrs):
            counts = _counted(_take(steps, names))
            new_steps.update(zip(names, counts))
            columns = [_take(params, names), _take(grads, names), _take(mu, names),
                       _take(nu, names), *([_take(states[3], names)] if amsgrad else []),
                       _as_read(counts, device)]
            run = functools.partial(
                _adam_columns, kernel, lr=lr, beta1=float(h["betas"][0]),
                beta2=float(h["betas"][1]), weight_decay=float(wd), eps=float(h["eps"]),
                amsgrad=amsgrad, maximize=False)
            if coef is None:
                run(columns)
            elif grads_donated:
                torch._foreach_mul_(columns[1], coef.to(device))
                run(columns)
            else:  # (on the CPU a block at a time: the scratch is a block's)
                coef_here = coef.to(device)
                for part in blocks(columns, _CLIP_BLOCK) if device.type == "cpu" else [columns]:
                    part[1] = _clipped(part[1], coef_here)
                    run(part)
        new = {k: c.finish((new_steps, *states[1:]) if k == keys["adam"] else ())
               for k, c in calls.items()}
        return {k: new[k] for k in state} if isinstance(state, dict) else \
            tuple(new[k] for k in range(len(state)))

    return fused

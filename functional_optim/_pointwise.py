"""Pointwise transforms (:class:`Pointwise`, :class:`PointwiseCall`) and their fusion: a chain
runs consecutive pointwise transforms as one rule on the multi-tensor path (:func:`fuse`), with
the numbers of the transforms run one by one. Importable from
:mod:`functional_optim._execute` as well."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import _foreach
from ._execute import elementwise


class PointwiseCall(NamedTuple):
    """One update of a pointwise transform as an :func:`elementwise` call, ready to run alone or
    fused with its neighbours in a chain.

    Attributes:
        rule: ``rule(h, g, *states, *inputs) -> (u, *new_states)`` (see :func:`elementwise`),
            pointwise: each output element depends on the same element of every tensor argument
            and on 0-d values only.
        hparams: ``h``, resolved.
        states: the state trees the rule updates.
        inputs: read-only trees shaped like the updates (the parameters, a mask).
        finish: ``finish(new_states) -> state``: the transform's new state from the rule's.
        donate_state: for each state, whether the rule reads it once (so the adapter may update
            it in place).
        input_names: the ``inputs`` trees' names in errors.
        sparse: the rule takes sparse COO updates (see :func:`elementwise`).
        state_like: for each state, what its leaves share with the update (``LIKE``,
            ``SHAPED``, ``TYPED`` or ``None``; see :func:`elementwise`).
        reads_update_once: the rule reads its update ``g`` in one operation only, so that in
            a fused run a temporary made by the transform before it may be overwritten in
            place (:func:`fuse`); a rule that reads ``g`` twice (``g * g`` and ``g / d``) must
            leave it ``False``.
    """

    rule: Callable
    hparams: Any
    states: tuple = ()
    inputs: tuple = ()
    finish: Callable[[tuple], Any] = tuple
    donate_state: tuple[bool, ...] = ()
    input_names: tuple[str, ...] = ()
    sparse: bool = False
    state_like: tuple[str | None, ...] = ()
    reads_update_once: bool = False


class Pointwise(NamedTuple):
    """A transform whose update is one pointwise rule (:attr:`Transform.pointwise`).

    A chain runs consecutive pointwise transforms as one rule (:func:`fuse`) on the eager
    multi-tensor path: one pass of Python over the leaves instead of one per transform, and
    temporaries pass from one rule to the next in place. The numbers are those of the
    transforms run one by one.

    Attributes:
        prepare: ``prepare(updates, state, params, hparams) -> PointwiseCall``: checks and
            resolves what ``update`` would; reads the values of ``updates`` only if
            ``reads_updates``.
        name: the transform's name in errors.
        complex: how complex leaves are treated: ``"as_real"`` (as pairs of reals, like
            torch.optim), ``"native"``, or ``"neutral"`` (the same numbers either way: linear
            maps with real coefficients).
        real_only: complex leaves are an error.
        reads_updates: ``prepare`` reads the updates' values (a global norm), so the transform
            can only start a fused run.
        kernel: what the transform is, for the adapter to run a chain of such blocks with one of
            torch's fused kernels (:func:`functional_optim._fused.chain_step`): ``("adam",
            amsgrad)``, ``("decay",)`` (unmasked), ``("lr",)`` (descending), ``("clip",)``
            (global norm), ``("identity",)``; ``()`` for the others.
        parts: a chain's members, ``((key, spec), ...)`` (empty for a single transform).
    """

    prepare: Callable[..., PointwiseCall]
    name: str
    complex: str = "neutral"
    real_only: bool = False
    reads_updates: bool = False
    kernel: tuple = ()
    parts: tuple = ()


def run_pointwise(spec: Pointwise, updates: Any, state: Any, params: Any,
                  hparams: Any) -> tuple[Any, Any]:
    """``update`` of the transform that ``spec`` describes: where it may, its rule's exact
    program (:mod:`functional_optim._program_calls`, the same numbers), else
    :func:`elementwise`."""
    call = spec.prepare(updates, state, params, hparams)
    from ._program_calls import exact_update
    out = exact_update(spec, call, updates)
    if out is None:
        out = elementwise(call.rule, call.hparams, updates, call.states, call.inputs,
                          name=spec.name, complex_as_real=spec.complex == "as_real",
                          real_only=spec.real_only, input_names=call.input_names,
                          donate_state=call.donate_state or False, sparse=call.sparse,
                          state_like=call.state_like, pointwise=True)
    return out[0], call.finish(out[1:])


def fusable(specs: list) -> bool:
    """Whether these transforms can run as one rule: each has a :class:`Pointwise`, only the
    first reads the updates' values, and they agree on complex leaves."""
    if not specs or any(s is None for s in specs) or any(s.reads_updates for s in specs[1:]):
        return False
    return len({s.complex for s in specs} - {"neutral"}) <= 1


def fuse(specs: list, name: str) -> Pointwise:
    """The :class:`Pointwise` of ``specs`` run one after the other (:func:`fusable` ones): its
    ``prepare`` takes and its ``finish`` gives sequences of the members' states and
    hparams."""
    modes = {s.complex for s in specs} - {"neutral"}

    def prepare(updates, states, params, hparams):
        calls = [s.prepare(updates, st, params, h) for s, st, h in zip(specs, states, hparams)]
        return _fuse_calls(calls)

    return Pointwise(prepare, name, modes.pop() if modes else "neutral",
                     any(s.real_only for s in specs), specs[0].reads_updates)


def _fuse_calls(calls: list) -> PointwiseCall:
    inputs: list = []
    names: list = []
    slots = []
    for c in calls:  # each input tree once (several transforms read the parameters)
        slot = []
        for n, tree in enumerate(c.inputs):
            k = next((j for j, x in enumerate(inputs) if x is tree), None)
            if k is None:
                k = len(inputs)
                inputs.append(tree)
                names.append(c.input_names[n] if n < len(c.input_names) else "input")
            slot.append(k)
        slots.append(slot)
    counts = [len(c.states) for c in calls]
    total = sum(counts)

    once = [c.reads_update_once for c in calls[1:]] + [False]

    def rule(h, g, *args):
        olds, ins = args[:total], args[total:]
        original, new, start, dtype = g, [], 0, g.dtype
        for c, hc, count, slot, next_once in zip(calls, h, counts, slots, once):
            mine = [ins[k] for k in slot]
            res = c.rule(hc, g, *olds[start:start + count], *mine)
            start += count
            new.extend(res[1:])
            u = res[0]
            if u.dtype != dtype:  # in the leaf's dtype, as each transform's own update is
                u = u.to(dtype)  # (trace's buffer in its accumulator_dtype, say)
            g = _owned(u, g, [original, *res[1:], *mine], next_once)
        return (g, *new)

    def finish(new_states):
        out, start = [], 0
        for c, count in zip(calls, counts):
            out.append(c.finish(tuple(new_states[start:start + count])))
            start += count
        return out

    def per_state(field: str, missing: Any) -> tuple:
        return tuple(x for c in calls
                     for x in (getattr(c, field) + (missing,) * len(c.states))[:len(c.states)])

    return PointwiseCall(rule, tuple(c.hparams for c in calls),
                         tuple(st for c in calls for st in c.states), tuple(inputs), finish,
                         per_state("donate_state", False), tuple(names),
                         all(c.sparse for c in calls), per_state("state_like", None),
                         all(c.reads_update_once for c in calls))


def _owned(u: Any, g: Any, others: list, reads_once: bool) -> Any:
    """A rule's result ``u`` handed to the next rule of a fused run: *donated* (the next rule
    may overwrite it in place) when the next rule reads its update once (``reads_once``) and
    ``u`` is a fresh multi-tensor result that shares no tensor with the run's input, an input,
    or a state the rule returned (momentum returns its buffer as the update too). A donated
    ``u`` passed through by a rule (``u is g``) stays donated only for a next rule that reads
    it once."""
    if not isinstance(u, _foreach.TensorList):
        return u
    if not reads_once:
        return _foreach.TensorList(u.items, fresh=u._fresh) if u._donated else u
    if u is g or not u._fresh or u._donated or u.scalar:
        return u
    items = u.items
    mine = set(map(id, items))
    for other in others:
        if isinstance(other, _foreach.TensorList):
            if not other.scalar and not mine.isdisjoint(map(id, other.items)):
                return u
        elif isinstance(other, torch.Tensor) and id(other) in mine:
            return u
    return _foreach.TensorList(items, donated=True)

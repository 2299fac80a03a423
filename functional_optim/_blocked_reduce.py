"""The blocked step of an alias whose rule reduces over each leaf (Adafactor: its step size
depends on norms over each parameter): the alias's own chain, traced once per leaf shape into a
:class:`~functional_optim._program_reduce.ReduceProgram` and run in place on the parameters and
the state, the adapter's fast path as :func:`functional_optim._blocked.rule_step` is for the
pointwise rules.

A leaf larger than a block runs in passes over blocks of its rows (Adafactor: its statistics,
then the norm of its update, then the update, each block's intermediates in cache; torch
materializes the update at full size). Small leaves of one shape run stacked, a block of them
at a time, each block in one compiled function (per-leaf Python would cost more than their
math); a leaf whose rule no pass plan divides (more than two dimensions), whole. The step
counts are read on the host, as the pointwise steps read them, and replaced by new tensors.
The same programs traced with the update as their output are the alias's pure ``tx.update``
(:func:`reduce_update`).
"""

from __future__ import annotations

from typing import Any

import torch

from ._blocked import (
    _SAMPLE,
    _by_value,
    _filled,
    _given_up_or_graphed,
    _matches,
    _plain,
    _Rule,
)
from ._blocks import BLOCK
from ._fused import FusedStep, _copies, _groups, _owned
from ._parts import parts_of
from ._program import SCALAR
from ._program_passes import _numel
from ._program_reduce import FULL, SMALL, ReduceProgram, trace
from .base import HParamError, resolve_hparams

__all__ = ["reduce_step", "reduce_update"]


def _layout(tx: Any) -> tuple:
    """``(parts, scalar)``: the parameter-shaped parts of ``tx``'s state and which of them are
    0-d per leaf (the step counts); ``parts`` is ``None`` where the state has other parts (a
    schedule's count)."""
    parts = parts_of(tx)
    try:
        sample = parts.columns(tx.init({"x": torch.ones(_SAMPLE)})) if parts.only else None
    except (AttributeError, TypeError, ValueError):  # (no parts: an init that reads its
        return None, []                              # parameters' structure)
    if sample is None:
        return None, []
    return parts, [c for c, column in enumerate(sample) if not column["x"].ndim]


def _batches(params: dict, names: list) -> list[list]:
    """``names`` in the batches a program runs: the leaves of at most :data:`BLOCK` elements by
    shape, each larger one alone."""
    batches: dict = {}
    for n in names:
        p = params[n]
        batches.setdefault(p.shape if p.numel() <= BLOCK else n, []).append(n)
    return list(batches.values())


class _Reduced:
    """The programs of an alias's rule that reduces over each leaf, by leaf shape, dtypes and
    traced hyperparameters, in two forms (``update``: the rule's update written into a new
    tensor, its parameter only read; else the new parameter written over it), and their runs:
    what the blocked step (:func:`reduce_step`) and the pure update share."""

    def __init__(self, tx: Any, defaults: dict, where: str) -> None:
        self.tx, self.defaults, self.where = tx, defaults, where
        self.programs: dict = {}
        self.layout: list = []  # (parts, scalar columns): made at the first step

    def program(self, rule: _Rule, baked: tuple, g: torch.Tensor, columns: list,
                update: bool) -> ReduceProgram | None:
        _, scalar = self.layout
        key = (g.shape, g.dtype, tuple((c.shape, c.dtype) for c in columns), baked, update)
        if key not in self.programs:
            leaf = torch.empty(g.shape, dtype=g.dtype, device="meta")
            inputs = [leaf, leaf.clone()]
            kinds = [FULL, FULL]
            for c, x in enumerate(columns):
                inputs.append(torch.zeros((), dtype=x.dtype) if c in scalar else
                              torch.empty(x.shape, dtype=x.dtype, device="meta"))
                kinds.append(SCALAR if c in scalar else FULL if x.shape == g.shape else SMALL)
            inputs += [torch.tensor(float(rule.leaves[k]), dtype=torch.float64)
                       for k in rule.live]
            kinds += [SCALAR] * len(rule.live)
            lead = 1  # (the new parameter over the parameter; an update into a new tensor,
            if update:  # an input of its own that the rule does not read)
                lead = len(inputs)
                inputs.append(leaf.clone())
                kinds.append(FULL)
            targets = [lead] + [None if c in scalar else 2 + c for c in range(len(columns))]
            self.programs[key] = trace(lambda *xs: rule(*xs[:len(xs) - update]), inputs, kinds,
                                       targets)
        return self.programs[key]

    def plan(self, params: dict, grads: dict, state: Any, hparams: Any, update: bool
             ) -> tuple | None:
        """``(columns, rule, runs)`` of a step or a pure update, or ``None`` where the chain
        must run (see :func:`reduce_step`)."""
        try:
            h = resolve_hparams(self.defaults, hparams, self.where)
        except HParamError:  # (the chain's error names what is fixed at construction)
            return None
        groups = _groups(params, grads, None)
        if not all(_plain(v) for v in h.values()) or groups is None or any(
                d.type != "cpu" for d, _ in groups):
            return None
        if not self.layout:
            self.layout[:] = _layout(self.tx)  # (one assignment: threads may race here)
        parts, scalar = self.layout
        try:
            columns = parts.columns(state) if parts is not None else None
        except (ValueError, TypeError):  # (not the state of this transform: its error)
            return None
        if columns is None or params.keys() != grads.keys():
            return None
        if update and not _matches(params, grads, columns, [
                SCALAR if c in scalar else None for c in range(len(columns))]):
            return None  # (the chain names what differs)
        counts = [columns[c] for c in scalar]
        if not all(x.is_cpu for c in counts for x in c.values()) or any(
                len({x.dtype for x in c.values()}) > 1 for c in counts):
            return None
        rule = _Rule(self.tx, parts, h, update=update)
        baked, runs = rule.key(), []
        for (device, _), names in groups.items():
            values = [torch.stack([c[n] for n in names]).tolist() for c in counts]
            keys = list(zip(*values)) if counts else [()] * len(names)
            for key, members in _by_value(names, keys).items():
                for batch in _batches(params, members):
                    n = batch[0]
                    prog = self.program(rule, baked, grads[n], [c[n] for c in columns], update)
                    if prog is None or update and prog.values[prog.targets[0]].dtype != \
                            prog.values[prog.outputs[0].index].dtype:
                        return None  # (an update in another dtype than the parameter's)
                    runs.append((prog, key, batch, device))
        return columns, rule, runs

    def run(self, columns: list, rule: _Rule, runs: list, tables: list) -> list:
        """The runs on ``tables`` (the tensor inputs by index: gradients, parameters, the
        state's columns, ...), in place; the state's columns with new 0-d tensors for the
        scalar outputs (the step counts)."""
        _, scalar = self.layout
        made: list = [{} for _ in scalar]
        with torch.no_grad():
            for prog, key, batch, device in runs:
                inputs = [None] * prog.n_inputs
                for c, v in zip(scalar, key):
                    inputs[2 + c] = v
                for j, k in enumerate(rule.live):
                    inputs[2 + len(columns) + j] = rule.leaves[k]
                scalars = prog.scalar.scalars(inputs)
                _run(prog, prog.env(scalars, device), tables, batch)
                for m, c in enumerate(scalar):
                    if not prog.scalar.unchanged(1 + c, 2 + c):
                        made[m].update(_filled(prog.scalar.output(1 + c, scalars),
                                               columns[c][batch[0]].dtype, batch))
        new = list(columns)
        for m, c in enumerate(scalar):
            if made[m]:
                new[c] = {n: made[m].get(n, x) for n, x in columns[c].items()}
        return new


def reduce_step(tx: Any, defaults: dict, where: str) -> FusedStep:
    """The blocked step of ``tx`` (an alias: flat hyperparameters ``defaults``) whose rule
    reduces over each leaf. ``None`` (the chain runs) unless every hyperparameter is a number,
    the state is all parameter-shaped, the leaves are CPU tensors, their step counts are on the
    CPU and every leaf's rule traces (:func:`~functional_optim._program_reduce.trace`).
    Within :func:`~functional_optim._fused.owning` (the pure ``fo.step``) it runs on copies.
    ``step.programs``: the programs by leaf shape, dtypes and traced hyperparameters;
    ``step.update``: the pure update of the same rule (:func:`reduce_update`)."""
    reduced = _Reduced(tx, defaults, where)

    def fused(params, grads, state, hparams):
        planned = reduced.plan(params, grads, state, hparams, False)
        if planned is None:
            return None
        parts, scalar = reduced.layout
        # (the counts replaced, never written in place: the adapter may hand one tensor to
        # several parameters, a flat layout's shared count)
        params, state = _owned(params, state,
                               shared=tuple(planned[0][c] for c in scalar))
        columns = parts.columns(state)
        new = reduced.run(columns, planned[1], planned[2], [grads, params, *columns])
        return parts.rebuilt(state, new)

    fused.programs = reduced.programs  # (for inspection)
    fused.update = reduce_update(reduced)
    return fused


def reduce_update(reduced: _Reduced) -> Any:
    """``update(updates, state, params, hparams)``: the pure ``tx.update`` of the rule of
    ``reduced``, or ``None`` where it declines (see :func:`reduce_step`): the state the rule
    writes copied first, the update into new tensors, the inputs left alone. The chain's
    numbers up to the order of the blocks' sums (not bit for bit, as the pointwise rules'
    exact programs are)."""

    def update(updates, state, params, hparams):
        planned = reduced.plan(params, updates, state, hparams, True)
        if planned is None:
            return None
        columns, rule, runs = planned
        parts, scalar = reduced.layout
        if _given_up_or_graphed(columns):
            return None  # (the chain raises for a donated state, or records the graph)
        copied = [column if c in scalar else dict(zip(column, _copies(list(column.values()))))
                  for c, column in enumerate(columns)]
        out = {n: torch.empty_like(p) for n, p in params.items()}
        tables = [updates, params, *copied] + [None] * len(rule.live) + [out]
        new = reduced.run(copied, rule, runs, tables)
        return {n: out[n] for n in updates}, parts.rebuilt(state, new)

    return update


def _run(prog: ReduceProgram, env: list, tables: list, batch: list) -> None:
    """``prog`` on the leaves ``batch`` in place (``tables``: each tensor input's leaves by
    name): small leaves of one shape a block of them at a time, stacked (into buffers kept with
    the stacked program, per thread: a fresh stack of 300 leaves of 16 KB took 0.47 ms, most
    of it page faults); a larger leaf in passes over blocks of its rows; whole where no pass
    plan divides the rule."""
    tables = tables + [None] * (prog.n_inputs - len(tables))
    size = max(1, BLOCK // max(1, _numel(prog.shape)))
    alone = []
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        stacked = prog.stacked(len(chunk)) if len(chunk) > 1 else None
        if stacked is None:
            alone += chunk
            continue
        tensors = stacked.buffers(env[-1])
        for k in stacked.consumed:
            torch.stack([tables[k][n] for n in chunk], out=tensors[k])
        stacked.run(env, tensors)  # (a stack fits a block: one compiled function)
        for _, k, _ in stacked.written:
            torch._foreach_copy_([tables[k][n] for n in chunk], list(tensors[k].unbind()))
    for n in alone:
        tensors = [tables[k][n] if k in prog.read else None for k in range(prog.n_inputs)]
        if not prog.run(env, tensors):
            for (_, k, _), out in zip(prog.written, prog.whole(env, tensors)):
                tensors[k].copy_(out)

"""The blocked step of an alias whose rule reduces over each leaf (Adafactor: its step size
depends on norms over each parameter): the alias's own chain, traced once per leaf shape into a
:class:`~functional_optim._program_reduce.ReduceProgram` and run in place on the parameters and
the state, the adapter's fast path as :func:`functional_optim._blocked.rule_step` is for the
pointwise rules.

A leaf larger than a block runs in passes over blocks of its rows (Adafactor: its statistics,
then the norm of its update, then the update, each block's intermediates in cache; torch
materializes the update at full size). Small leaves of one shape run as one batch, stacked, in
passes over blocks of leaves (per-leaf Python would cost more than their math); a leaf whose
rule no pass plan divides (more than two dimensions), whole. The step counts are read on the
host, as the pointwise steps read them, and replaced by new tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from ._blocked import _by_value, _filled, _Parts, _plain, _Rule
from ._blocks import BLOCK
from ._fused import FusedStep, _groups, _owned
from ._program import SCALAR
from ._program_passes import _numel
from ._program_reduce import FULL, SMALL, ReduceProgram, trace
from .base import HParamError, resolve_hparams
from .tree_math import _ParamsPlaceholder

__all__ = ["reduce_step"]

_SAMPLE = (2, 3)


def _layout(tx: Any) -> tuple:
    """``(parts, scalar)``: the parameter-shaped parts of ``tx``'s state and which of them are
    0-d per leaf (the step counts); ``parts`` is ``None`` where the state has other parts (a
    schedule's count)."""
    parts = _Parts(tx.init(_ParamsPlaceholder()))
    if not parts.only:
        return None, []
    sample = parts.columns(tx.init({"x": torch.ones(_SAMPLE)}))
    return parts, [c for c, column in enumerate(sample) if not column["x"].ndim]


def _batches(params: dict, names: list) -> list[list]:
    """``names`` in the batches a program runs: the leaves of at most :data:`BLOCK` elements by
    shape, each larger one alone."""
    batches: dict = {}
    for n in names:
        p = params[n]
        batches.setdefault(p.shape if p.numel() <= BLOCK else n, []).append(n)
    return list(batches.values())


def reduce_step(tx: Any, defaults: dict, where: str) -> FusedStep:
    """The blocked step of ``tx`` (an alias: flat hyperparameters ``defaults``) whose rule
    reduces over each leaf. ``None`` (the chain runs) unless every hyperparameter is a number,
    the state is all parameter-shaped, the leaves are CPU tensors, their step counts are on the
    CPU and every leaf's rule traces (:func:`~functional_optim._program_reduce.trace`).
    Within :func:`~functional_optim._fused.owning` (the pure ``fo.step``) it runs on copies.
    ``step.programs``: the programs by leaf shape, dtypes and traced hyperparameters."""
    programs: dict = {}
    layout: list = []

    def program(rule: _Rule, baked: tuple, g: torch.Tensor, columns: list, scalar: list
                ) -> Any:
        key = (g.shape, g.dtype, tuple((c.shape, c.dtype) for c in columns), baked)
        if key not in programs:
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
            targets = [1] + [None if c in scalar else 2 + c for c in range(len(columns))]
            programs[key] = trace(rule, inputs, kinds, targets)
        return programs[key]

    def fused(params, grads, state, hparams):
        try:
            h = resolve_hparams(defaults, hparams, where)
        except HParamError:  # (the chain's error names what is fixed at construction)
            return None
        groups = _groups(params, grads, None)
        if not all(_plain(v) for v in h.values()) or groups is None or any(
                d.type != "cpu" for d, _ in groups):
            return None
        if not layout:
            layout.extend(_layout(tx))
        parts, scalar = layout
        try:
            columns = parts.columns(state) if parts is not None else None
        except (ValueError, TypeError):  # (not the state of this transform: its error)
            return None
        if columns is None or params.keys() != grads.keys():
            return None
        counts = [columns[c] for c in scalar]
        if not all(x.is_cpu for c in counts for x in c.values()) or any(
                len({x.dtype for x in c.values()}) > 1 for c in counts):
            return None
        rule = _Rule(tx, parts, h)
        baked, runs = rule.key(), []
        for (device, _), names in groups.items():
            values = [torch.stack([c[n] for n in names]).tolist() for c in counts]
            keys = list(zip(*values)) if counts else [()] * len(names)
            for key, members in _by_value(names, keys).items():
                for batch in _batches(params, members):
                    n = batch[0]
                    prog = program(rule, baked, grads[n], [c[n] for c in columns], scalar)
                    if prog is None:
                        return None
                    runs.append((prog, key, batch, device))
        # (the counts replaced, never written in place: the adapter may hand one tensor to
        # several parameters, a flat layout's shared count)
        params, state = _owned(params, state, shared=tuple(counts))
        columns = parts.columns(state)
        made: list = [{} for _ in scalar]
        with torch.no_grad():
            for prog, key, batch, device in runs:
                inputs = [None] * prog.n_inputs
                for c, v in zip(scalar, key):
                    inputs[2 + c] = v
                for j, k in enumerate(rule.live):
                    inputs[prog.n_inputs - len(rule.live) + j] = rule.leaves[k]
                scalars = prog.scalar.scalars(inputs)
                _run(prog, prog.env(scalars, device), grads, params, columns, batch)
                for m, c in enumerate(scalar):
                    if not prog.scalar.unchanged(1 + c, 2 + c):
                        made[m].update(_filled(prog.scalar.output(1 + c, scalars),
                                               columns[c][batch[0]].dtype, batch))
        new = list(columns)
        for m, c in enumerate(scalar):
            if made[m]:
                new[c] = {n: made[m].get(n, x) for n, x in columns[c].items()}
        return parts.rebuilt(state, new)

    fused.programs = programs  # (for inspection)
    return fused


def _run(prog: ReduceProgram, env: list, grads: dict, params: dict, columns: list,
         batch: list) -> None:
    """``prog`` on the leaves ``batch`` in place: small leaves of one shape a block of them at
    a time, stacked (into buffers kept with the stacked program: a fresh stack of 300 leaves of
    16 KB took 0.47 ms, most of it page faults); a larger leaf in passes over blocks of its
    rows; whole where no pass plan divides the rule."""
    tables = [grads, params, *columns] + [None] * (prog.n_inputs - 2 - len(columns))
    size = max(1, BLOCK // max(1, _numel(prog.shape)))
    alone = []
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        stacked = prog.stacked(len(chunk)) if len(chunk) > 1 else None
        if stacked is None:
            alone += chunk
            continue
        tensors = stacked.buffers(env[-1])
        for k in stacked.read:
            torch.stack([tables[k][n] for n in chunk], out=tensors[k])
        if not stacked.run(env, tensors):
            for (_, k, _), out in zip(stacked.written, stacked.whole(env, tensors)):
                tensors[k].copy_(out)
        for _, k, _ in stacked.written:
            torch._foreach_copy_([tables[k][n] for n in chunk], list(tensors[k].unbind()))
    for n in alone:
        tensors = [tables[k][n] if k in prog.read else None for k in range(prog.n_inputs)]
        if not prog.run(env, tensors):
            for (_, k, _), out in zip(prog.written, prog.whole(env, tensors)):
                tensors[k].copy_(out)

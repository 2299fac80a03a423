"""The pure multi-tensor update of a pointwise transform (a fused chain of them included) as the
exact program of its rule (:mod:`functional_optim._program_exact`): the rule that ``prepare``
returns (:class:`~functional_optim._pointwise.PointwiseCall`) traced once on one leaf, with
its hyperparameters' numbers in the trace and their 0-d tensors (a clip's coefficient, a
schedule's value) and the 0-d state (step counts) as scalar inputs, then replayed op for op on
blocks of the leaves into new tensors. The same ops per leaf as the per-leaf path, so its
numbers bit for bit, without the multi-tensor machinery's Python per op: what the aliases'
pure update does (:func:`functional_optim._blocked.rule_update`) for any user chain whose
members are pointwise (``clip_by_global_norm``, ``scale_by_adam``, ``add_decayed_weights``,
``scale_by_learning_rate`` with a schedule...).

Where per-leaf variation lives is explicit: in the rule's arguments (the gradient, the state's
and the inputs' leaves), all checked here to be plain tensors like the gradient, or 0-d
tensors; a rule that reads a tensor it closed over (a value of the call, not an argument) is
not traced (it would be replayed stale), nor one with other dtypes or devices, or a state
that is neither like the update nor 0-d: those run the multi-tensor path."""

from __future__ import annotations

import weakref
from typing import Any

import optree
import torch

from . import _execute, _foreach
from . import tree as _tree
from ._blocks import BLOCK
from ._parts import flat_dict
from ._program import CONST, SCALAR, TENSOR, trace

__all__ = ["exact_update"]

_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""By a transform's ``prepare`` (the spec's identity): its programs by what a trace bakes in."""
_MAX_PROGRAMS = 16
"""The most programs one transform traces (numbers that change every step would trace one per
step: beyond, the multi-tensor path runs)."""
_SAMPLE = (2, 3)


def _plain_column(column: Any, keys: Any, like: list, shaped: bool) -> list | None:
    """The leaves of a state or input tree given as a dict of ``keys``, in their order (the
    dict's own may differ: the parameters made in another order than the gradients): tensors
    like ``like`` (``shaped``) or 0-d CPU tensors of one dtype (else), or ``None``."""
    if type(column) is not dict or column.keys() != keys:
        return None
    xs = [column[k] for k in keys]
    if not all([type(x) is torch.Tensor for x in xs]):
        return None
    if shaped:
        if [x.shape for x in xs] != [g.shape for g in like] or \
                [x.dtype for x in xs] != [g.dtype for g in like] or \
                any([x.device.type != "cpu" for x in xs]):
            return None
    elif any([x.ndim or x.device.type != "cpu" or x.dtype != xs[0].dtype for x in xs]):
        return None
    return xs


def exact_update(spec: Any, call: Any, updates: Any) -> tuple | None:
    """``(new updates, *new states)`` of ``call`` (of the transform ``spec``) on ``updates``
    as its exact program, or ``None`` where the multi-tensor path must run: outside its
    conditions (eager, nothing requiring grad, no donation; dense CPU float32 or float64
    tensors of one dtype, no ``None`` leaf; states and inputs of the same structure, tensors
    like them or 0-d CPU tensors; number or 0-d CPU tensor hyperparameters), or where the
    rule does not trace. A flat dict is read by its keys; another tree (a list of parameters,
    nested dicts) by its leaves' positions in optree's order.
    A 0-d leaf (a learned scale) is one element of a block, as every path runs it: a
    one-element vector, which a 0-d coefficient does not promote (:func:`~functional_optim.
    _execute.elementwise`)."""
    flags = _execute._FLAGS.value
    if not flags[0] or flags[1] or _tree.traced() or call.sparse:
        return None  # (leaf by leaf, donated, traced: compiled, transformed, fake tensors)
    if flat_dict(updates):
        return _exact(spec, call, updates, call.states, call.inputs)
    # another tree (a list of parameters, nested dicts): its leaves as a dict by position
    flat, tree = optree.tree_flatten(updates, none_is_leaf=True)
    if not flat:
        return None
    try:
        states, inputs = ([dict(enumerate(tree.flatten_up_to(x))) for x in xs]
                          for xs in (call.states, call.inputs))
    except (ValueError, TypeError):  # (the multi-tensor path names what differs)
        return None
    out = _exact(spec, call, dict(enumerate(flat)), states, inputs)
    return None if out is None else tuple(tree.unflatten(list(o.values())) for o in out)


def _exact(spec: Any, call: Any, updates: dict, call_states: Any, call_inputs: Any
           ) -> tuple | None:
    """:func:`exact_update` on a dict of ``updates``, the state and input trees being
    ``call_states`` and ``call_inputs``."""
    gs = list(updates.values())
    if not all([type(g) is torch.Tensor for g in gs]):
        return None
    dtype = gs[0].dtype
    if dtype not in (torch.float32, torch.float64) or any(
            [g.dtype != dtype or g.device.type != "cpu" or g.is_sparse for g in gs]):
        return None
    h = _execute.cast_hparams(call.hparams, gs[0])
    leaves, hspec = optree.tree_flatten(h, none_is_leaf=True)
    live = [k for k, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
    if any(type(v) not in (int, float, bool, type(None)) for k, v in enumerate(leaves)
           if k not in live) or any(leaves[k].ndim or leaves[k].device.type != "cpu"
                                    for k in live):
        return None
    keys = updates.keys()
    marks = list(call.state_like) + [None] * (len(call.states) - len(call.state_like))
    kinds = [TENSOR if mark == _execute.LIKE else SCALAR if mark is None else None
             for mark in marks]
    if None in kinds:
        return None
    states = [_plain_column(s, keys, gs, kind == TENSOR) for s, kind in zip(call_states, kinds)]
    inputs = [_plain_column(x, keys, gs, True) for x in call_inputs]
    if any(c is None for c in states + inputs) or any(map(_execute.given_up, call_states)) or \
            not _execute.pure_multi_tensor([gs, *states, *inputs], h):
        return None  # (a state an earlier donated update replaced: the error names it)
    prog = _program(spec, call, (dtype, len(gs)), leaves, hspec, live, states, kinds,
                    len(inputs))
    if prog is None:
        return None
    return _run(prog, gs, states, kinds, inputs, [leaves[k].item() for k in live], list(keys),
                dtype)


def _program(spec: Any, call: Any, of: tuple, leaves: list, hspec: Any, live: list,
             states: list, kinds: list, n_inputs: int) -> Any:
    """The rule's program for these dtypes, baked numbers and number of leaves ``of``
    (``(dtype, count)``: a rule may close over numbers its ``prepare`` took from the tree's
    structure), traced at the first such call."""
    try:
        programs = _PROGRAMS.setdefault(spec.prepare, {})
    except TypeError:  # (a prepare that takes no weak reference: not cached, not traced)
        return None
    dtype = of[0]
    key = (of, hspec, tuple((k, repr(v)) for k, v in enumerate(leaves) if k not in live),
           tuple(leaves[k].dtype for k in live), tuple(kinds),
           tuple(s[0].dtype for s in states), n_inputs)
    if key in programs:
        return programs[key]
    if len(programs) >= _MAX_PROGRAMS:
        return None
    sample = torch.ones(_SAMPLE, dtype=dtype)
    inputs = [sample.clone()]
    inputs += [sample.clone() if kind == TENSOR else torch.zeros((), dtype=s[0].dtype)
               for s, kind in zip(states, kinds)]
    inputs += [sample.clone() for _ in range(n_inputs)]
    inputs += [torch.ones((), dtype=leaves[k].dtype) for k in live]
    n_states = len(states)

    def rule(g, *rest):
        values = list(leaves)
        for k, v in zip(live, rest[n_states + n_inputs:]):
            values[k] = v
        return list(call.rule(optree.tree_unflatten(hspec, values), g,
                              *rest[:n_states + n_inputs]))

    targets = [0] + [1 + j if kind == TENSOR else None for j, kind in enumerate(kinds)]
    prog = trace(rule, inputs, [TENSOR] + kinds + [TENSOR] * n_inputs + [SCALAR] * len(live),
                 targets)
    cached = set(map(id, _foreach._CONSTANTS.values()))
    if prog is not None and any(v.kind == CONST and isinstance(v.const, torch.Tensor) and
                                id(v.const) not in cached for v in prog.values):
        prog = None  # (a tensor the rule closed over: this call's value, stale at the next)
    programs[key] = prog
    return prog


def _run(prog: Any, gs: list, states: list, kinds: list, inputs: list, live: list,
         names: list, dtype: torch.dtype) -> tuple | None:
    """The program on the leaves, grouped by the values of their 0-d state (the step counts:
    one group unless some leaves skipped steps), a block at a time into new tensors."""
    from ._blocked import _Blocks, _by_value, _filled, _pure_run, _scalars, _vectors

    n_states = len(states)
    scalar = [j for j, kind in enumerate(kinds) if kind == SCALAR]
    tensor = [j for j, kind in enumerate(kinds) if kind == TENSOR]
    values = [torch.stack(states[j]).tolist() for j in scalar]
    groups = _by_value(list(range(len(gs))), list(zip(*values)) if scalar else [()] * len(gs))
    slots = [0] + [1 + j for j in tensor] + [1 + n_states + j for j in range(len(inputs))]
    result: list = [list(gs)] + [list(s) for s in states]
    for key, members in groups.items():
        scalars = [None] * (1 + n_states + len(inputs)) + live
        for j, v in zip(scalar, key):
            scalars[1 + j] = v
        env = prog.scalars(scalars)
        plan = prog.plan(env, (), dtype, False, True)
        if plan is None:
            return None
        columns = [[gs[i] for i in members]] + [[states[j][i] for i in members] for j in tensor]
        columns += [[x[i] for i in members] for x in inputs]
        columns, zero = _vectors(columns)
        whole = sum(gs[i].numel() for i in members) <= BLOCK
        olds = [columns[0]] + [None if prog.unchanged(1 + j, 1 + j) else columns[1 + m]
                               for m, j in enumerate(tensor)]
        made = _scalars(_pure_run(plan[0], plan[1], _Blocks(columns, slots, prog.n_inputs,
                                                            whole), olds, whole, False), zero)
        for j, tensors in zip([0] + [1 + j for j in tensor], made):
            if tensors is not None:
                for i, t in zip(members, tensors):
                    result[j][i] = t
        for j in scalar:
            if not prog.unchanged(1 + j, 1 + j):
                new = _filled(prog.output(1 + j, env), states[j][0].dtype, members)
                for i in members:
                    result[1 + j][i] = new[i]
    return tuple(dict(zip(names, column)) for column in result)


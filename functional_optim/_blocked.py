"""Cache-blocked in-place steps: the adapter's fast path for the algorithms that torch has no
fused kernel for (Adadelta, Adafactor, Adamax, ASGD, NAdam, RAdam, RMSprop, Rprop).

torch runs these either per tensor (the CPU default: every op on one tensor, then the next
tensor) or with foreach kernels (one op on every tensor, then the next op). Both make several
passes over memory per step; the per-tensor loop keeps a tensor's intermediates in cache but pays
Python per tensor and op, foreach pays each pass out of cache. Here the step runs in-place
foreach ops on *blocks* of about :data:`BLOCK` elements: small tensors are grouped, large ones
split into views. Every pass after the first reads the block from cache, and the Python cost is
one call per op and block.

The ops are the alias's own rule: :func:`rule_step` traces the chain's update of one parameter
into a foreach program (:mod:`functional_optim._program`: torch.optim's in-place sequence, not a
second copy of the math) and runs it on each block; one definition of each rule. Adafactor's
step is not pointwise (its step size depends on norms over each parameter): it is written out
in :mod:`functional_optim._blocked_adafactor`, two passes per parameter.

Each step is the alias's ``fused`` step (see :mod:`functional_optim._fused`):
``fused(params, grads, state, hparams) -> state | None``, in place on the adapter's tensors;
``None`` (the adapter then runs the chain) unless every hyperparameter is a number, the leaves
are float32/float64 plain CPU tensors, and the step counts live on the CPU (torch's
non-capturable layout). On CUDA the chain runs (its multi-tensor path: on an H200, 1.9x-2.2x
torch's foreach RMSprop step, donated; the blocked steps have not run there). The numbers are
the chain's up to rounding order (tested against the chain and torch.optim).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from numbers import Number
from typing import Any

import optree
import torch

from ._blocks import BLOCK, blocks
from ._fused import FusedStep, _groups, pure_copies
from ._program import SCALAR, TENSOR, Program, trace
from .base import apply_updates, resolve_hparams
from .tree_math import _ParamsPlaceholder

__all__ = ["BLOCK", "blocks", "rule_step"]

_CPU = torch.device("cpu")


def _plain(value: Any) -> bool:
    """A number, ``None`` (RMSprop's ``momentum`` without block, Adafactor's ``eps[0]``), or a
    tuple of those (``betas``, Adafactor's ``eps``): what the blocked steps take."""
    if type(value) in (float, int) or value is None:
        return True
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, Number) and not isinstance(value, (bool, complex))


def _runs_on(group: tuple) -> bool:
    """Whether a group's ``(device, dtype)`` has a blocked step: the CPU, or a GPU outside a
    CUDA graph's capture (a captured step would replay the numbers this one computes)."""
    device = group[0]
    return device.type == "cpu" or device.type == "cuda" and not \
        torch.cuda.is_current_stream_capturing()


def _whole(device: torch.device) -> bool:
    """Whether a program runs on ``device``'s lists whole, its scalars as Python numbers (a
    GPU: a launch per op and list, not per block; torch's one-launch path takes numbers), not a
    block at a time with cached CPU 0-d tensors (the CPU)."""
    return device.type != "cpu"


class _Blocks:
    """The blocks a program runs on: called with ``outs`` (lists of tensors or ``None``, one
    entry per parameter, beside ``tables``), ``(lists, outs' part)`` for each block, ``lists``
    the block's tensors as the program takes them (``tables`` whole on a GPU)."""

    def __init__(self, tables: list, at: list, n: int, whole: bool) -> None:
        self.tables, self.at, self.whole = tables, at, whole
        self.lists: list = [None] * n

    def __call__(self, outs: list) -> Iterator[tuple]:
        lists, columns = self.lists, self.tables + outs
        for part in [columns] if self.whole else blocks(columns, BLOCK):
            lists[1], lists[0] = part[0], part[1]
            for c, column in zip(self.at, part[2:]):
                lists[2 + c] = column
            yield lists, part[len(self.tables):]


def _pure_run(run: Callable, k: tuple, each_block: Callable, olds: list, whole: bool) -> list:
    """A program's new tensors for the outputs whose old tensors are ``olds`` (``None``: an
    output left as it is), its inputs untouched. A block of small leaves gets new tensors from
    the program's ops; a leaf that the blocks split (larger than a block) gets its new tensors
    first, which the ops write a block at a time (``out=``: the fresh memory written once,
    from cache; 0.65x the time of each op on whole leaves, RMSprop on 4 x 4M)."""
    big = [not whole and x.numel() > BLOCK for x in olds[0]]
    at = [j for j, old in enumerate(olds) if old is not None]
    outs = [[torch.empty_like(x) if b else None for x, b in zip(olds[j], big)] for j in at]
    fresh: list = [[] for _ in at]
    for lists, part in each_block(outs):
        given = [None] * len(olds)
        for j, column in zip(at, part):
            if column[0] is not None:  # (a block is small leaves or a piece of a big one)
                given[j] = column
        got = run(lists, k, given)
        for i, j in enumerate(at):
            if given[j] is None:
                fresh[i] += got[j]
    result: list = [None] * len(olds)
    for i, j in enumerate(at):
        small = iter(_laid_out(fresh[i], [x for x, b in zip(olds[j], big) if not b]))
        result[j] = [out if out is not None else next(small) for out in outs[i]]
    return result


def _laid_out(new: list, old: list) -> list:
    """``new`` (a pure step's tensors) with the strides of ``old`` (the inputs they replace),
    as the pure step promises: copied where an op laid one out otherwise (a transposed
    parameter beside a contiguous gradient)."""
    return [x if x.stride() == y.stride() else torch.empty_like(y).copy_(x)
            for x, y in zip(new, old)]


def _by_value(names: list[str], values: list) -> dict:
    """``names`` grouped by their value (one group unless some parameters skipped steps)."""
    if values.count(values[0]) == len(values):
        return {values[0]: names}
    groups: dict = {}
    for name, value in zip(names, values):
        groups.setdefault(value, []).append(name)
    return groups


def _filled(value: Any, dtype: torch.dtype, names: list) -> dict:
    """A new 0-d tensor of ``dtype`` per name, holding ``value`` (a number or 0-d tensor)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return dict(zip(names, torch.full((len(names),), value, dtype=dtype,
                                      device=_CPU).unbind()))


# --------------------------------------------------------------------------------------------
# The generic step: the alias's own chain, traced into a foreach program (functional_optim.
# _program), run block by block

def _placeholder(x: Any) -> bool:
    return isinstance(x, _ParamsPlaceholder)


class _Parts:
    """The parameter-shaped parts of a transform's state (where ``init`` of a placeholder
    puts one, as :func:`~functional_optim.tree_math.map_params` finds them), each a dict of
    the parameters' leaves: read and replaced in a fixed order, through a spec made once (a
    step reads them twice)."""

    def __init__(self, marked: Any) -> None:
        self.spec = optree.tree_structure(marked, is_leaf=_placeholder, none_is_leaf=True)
        marks = optree.tree_leaves(marked, is_leaf=_placeholder, none_is_leaf=True)
        self.at = [k for k, m in enumerate(marks) if _placeholder(m)]
        self.only = not any(isinstance(m, torch.Tensor) for m in marks)
        """Whether the state is all parameter-shaped (no schedule's count, no global
        statistic: what a step on some of the parameters would have to share)."""

    def columns(self, state: Any) -> list[dict]:
        parts = self.spec.flatten_up_to(state)
        return [parts[k] for k in self.at]

    def rebuilt(self, state: Any, columns: list) -> Any:
        """``state`` with its parameter-shaped parts replaced by ``columns``."""
        parts = self.spec.flatten_up_to(state)
        for k, column in zip(self.at, columns):
            parts[k] = column
        return self.spec.unflatten(parts)


class _Rule:
    """What :func:`rule_step` traces: ``tx``'s update of a one-parameter tree, as a function of
    the gradient, the parameter, the state's columns and the hyperparameters' leaves, returning
    the new parameter and columns."""

    def __init__(self, tx: Any, parts: _Parts, h: Any) -> None:
        self.tx, self.parts = tx, parts
        self.leaves, self.spec = optree.tree_flatten(h, none_is_leaf=True)
        self.live = [k for k, v in enumerate(self.leaves) if not _baked(v)]

    def key(self) -> tuple:
        """What a program depends on besides dtypes: the hyperparameters that are structural
        to the trace (0 switches a block's work off, ``None``)."""
        return tuple((k, repr(v)) for k, v in enumerate(self.leaves) if _baked(v))

    def inputs(self, dtype: torch.dtype, column_dtypes: list, kinds: list) -> tuple:
        leaf = torch.ones(_SAMPLE, dtype=dtype)
        columns = [torch.ones(_SAMPLE if kind == TENSOR else (), dtype=d)
                   for d, kind in zip(column_dtypes, kinds)]
        hparams = [torch.tensor(float(self.leaves[k]), dtype=torch.float64) for k in self.live]
        return [leaf, leaf.clone(), *columns, *hparams]

    def __call__(self, g, p, *rest):
        n = len(rest) - len(self.live)
        columns, hparams = rest[:n], rest[n:]
        leaves = list(self.leaves)
        for k, value in zip(self.live, hparams):
            leaves[k] = value
        h = optree.tree_unflatten(self.spec, leaves)
        state = self.parts.rebuilt(self.tx.init({"x": p}), [{"x": c} for c in columns])
        updates, state = self.tx.update({"x": g}, state, {"x": p}, h)
        new = apply_updates({"x": p}, updates)["x"]
        return [new, *(c["x"] for c in self.parts.columns(state))]


def _baked(value: Any) -> bool:
    """A hyperparameter traced as the value it is (0: the rule skips that work; ``None``)."""
    return value is None or value == 0


def _layout(tx: Any) -> tuple:
    """``(parts, kinds, scalar)``: the parameter-shaped parts of ``tx``'s state, whether each
    holds a tensor shaped like its parameter (``TENSOR``) or a 0-d one (``SCALAR``), and the
    indices of the 0-d ones; ``kinds`` is ``None`` where the state has other parts (a
    schedule's count) or other shapes (SM3's accumulator per dimension, factored moments)."""
    parts = _Parts(tx.init(_ParamsPlaceholder()))
    leaf = torch.ones(_SAMPLE)
    kinds: list | None = []
    for column in parts.columns(tx.init({"x": leaf})) if parts.only else [None]:
        x = None if column is None else column.get("x")
        if not isinstance(x, torch.Tensor) or x.ndim and x.shape != leaf.shape:
            kinds = None
            break
        kinds.append(TENSOR if x.ndim else SCALAR)
    return parts, kinds, [c for c, kind in enumerate(kinds or ()) if kind == SCALAR]


_SAMPLE = (2, 3)
"""The shape of the parameter a rule is traced on (a matrix: state that is not shaped like its
parameter, per row or column, shows)."""


def rule_step(tx: Any, defaults: dict, where: str) -> FusedStep:
    """The blocked step of ``tx`` (an alias: flat hyperparameters ``defaults``): its chain's
    update traced once per dtype and structural hyperparameters (:func:`_baked`) into a
    foreach program (:mod:`functional_optim._program`) and run in place, a cache-sized block
    at a time, on the parameters and the state's tensors; 0-d state (step counts) is replaced
    by new tensors, one per parameter, as torch.optim keeps it.

    ``None`` (the chain runs) unless every hyperparameter is a number, the state is all
    parameter-shaped (no schedule), the leaves are float32/float64 CPU tensors, the 0-d state
    is on the CPU and the rule is pointwise (:func:`~functional_optim._program.trace`)."""
    programs: dict = {}
    layout: list = []  # (parts, kinds, scalar columns): made at the first step, not here (a
    # compiled adapter step builds its transform under dynamo; the step itself runs untraced)

    def program(rule: _Rule, dtype: torch.dtype, column_dtypes: list) -> Program | None:
        key = (dtype, tuple(column_dtypes), rule.key())
        if key not in programs:
            _, kinds, _ = layout
            n = len(kinds)
            all_kinds = [TENSOR, TENSOR, *kinds, *[SCALAR] * len(rule.live)]
            targets = [1] + [2 + c if kinds[c] == TENSOR else None for c in range(n)]
            programs[key] = trace(rule, rule.inputs(dtype, column_dtypes, kinds), all_kinds,
                                  targets)
        return programs[key]

    def rule_runs(rule: _Rule, dtype: torch.dtype, numbers: bool, columns: list, names: list,
                  runs: list) -> bool:
        """Appends the runs of the parameters ``names`` (one dtype) to ``runs``: one per value
        of the 0-d state the rule reads (the step counts, unless some parameters skipped
        steps), apart where a column of 0-d state it reads or writes mixes dtypes; ``False``
        where the rule has no program. Only that 0-d state is looked at (RMSprop's momentum
        count, untouched while its momentum is 0, is not: on 300 tensors each count read is a
        cache miss)."""
        _, kinds, scalar = layout
        prog = program(rule, dtype, [c[names[0]].dtype for c in columns])
        if prog is None:
            return False
        used = [c for c in scalar if 2 + c in prog.read or not prog.unchanged(1 + c, 2 + c)]
        counts = {c: [columns[c][n] for n in names] for c in used}
        if not all(x.is_cpu for column in counts.values() for x in column):
            return False
        if not all(len({x.dtype for x in column}) == 1 for column in counts.values()):
            dtypes = list(zip(*([x.dtype for x in column] for column in counts.values())))
            return all(rule_runs(rule, dtype, numbers, columns, members, runs)
                       for members in _by_value(names, dtypes).values())
        keyed = [c for c in used if 2 + c in prog.read]
        values = [torch.stack(counts[c]).tolist() for c in keyed]
        keys = list(zip(*values)) if keyed else [()] * len(names)
        owned = () if pure_copies() is not None else (
            1, *(2 + c for c, kind in enumerate(kinds) if kind == TENSOR))
        for key, members in _by_value(names, keys).items():
            inputs = [None] * (2 + len(kinds)) + [rule.leaves[k] for k in rule.live]
            for c, v in zip(keyed, key):
                inputs[2 + c] = v
            env = prog.scalars(inputs)
            plan = prog.plan(env, owned, dtype, numbers)
            if plan is None:
                return False
            runs.append((prog, env, plan, members, numbers))
        return True

    def fused(params, grads, state, hparams):
        h = resolve_hparams(defaults, hparams, where)
        if not all(_plain(v) for v in h.values()):
            return None
        if not layout:
            layout.extend(_layout(tx))
        parts, kinds, scalar = layout
        tensor = [c for c, kind in enumerate(kinds or ()) if kind == TENSOR]
        groups = _groups(params, grads, None)
        if kinds is None or groups is None or not all(map(_runs_on, groups)):
            return None
        columns = parts.columns(state)
        rule = _Rule(tx, parts, h)
        runs: list = []
        if not all(rule_runs(rule, dtype, _whole(device), columns, names, runs)
                   for (device, dtype), names in groups.items()):
            return None
        copies = pure_copies()
        new, new_params = list(columns), params if copies is None else dict(params)
        with torch.no_grad():
            for prog, env, (run, k), members, whole in runs:
                at = [c for c, kind in enumerate(kinds) if kind == TENSOR and (
                    2 + c in prog.read or not prog.unchanged(1 + c, 2 + c))]
                tables = [[params[n] for n in members], [grads[n] for n in members]]
                tables += [[columns[c][n] for n in members] for c in at]
                each = _Blocks(tables, at, 2 + len(kinds) + len(rule.live), whole)
                if copies is None:
                    for lists, _ in each([]):
                        run(lists, k)
                else:  # (fo.step without donation: new tensors, the inputs left alone)
                    olds = [tables[0]] + [
                        [columns[c][n] for n in members] if not prog.unchanged(1 + c, 2 + c)
                        else None for c in tensor]
                    made = _pure_run(run, k, each, olds, whole)
                    new_params.update(zip(members, made[0]))
                    for c, tensors in zip(tensor, made[1:]):
                        if tensors is not None:
                            new[c] = {**new[c], **dict(zip(members, tensors))}
                for c in scalar:
                    if not prog.unchanged(1 + c, 2 + c):
                        filled = _filled(prog.output(1 + c, env), columns[c][members[0]].dtype,
                                         members)
                        if len(filled) == len(columns[c]):  # (every parameter: the usual step)
                            new[c] = filled
                        else:
                            new[c] = {**new[c], **filled}
        if copies is not None:
            copies.append(new_params)
        return parts.rebuilt(state, new)

    fused.programs = programs  # (by dtypes and structural hparams: for inspection)
    return fused

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
second copy of the math) and runs it on each block; one definition of each rule. A rule that
reduces over each parameter (Adafactor's step size depends on norms over it) is traced per
parameter shape and run in passes over blocks of rows instead
(:mod:`functional_optim._blocked_reduce`). The same trace, op for
op (:mod:`functional_optim._program_exact`), is the alias's pure ``tx.update``
(:func:`rule_update`): the per-leaf numbers, bit for bit. Only an alias whose rule is every
leaf's gets either (not one built with a mask or a partition: ``aliases/_common.py``).

Each step is the alias's ``fused`` step (see :mod:`functional_optim._fused`):
``fused(params, grads, state, hparams) -> state | None``, in place on the adapter's tensors
(within :func:`functional_optim._fused.owning`, the pure ``fo.step``: out of place, into new
tensors); ``None`` (the adapter then runs the chain) unless every hyperparameter is a number,
the leaves are float32/float64 plain CPU or CUDA tensors, and the step counts that the rule
reads live on the CPU (torch's non-capturable layout; a count it only advances, RMSprop's or
Adadelta's, may be on the parameters' device, as the functional state keeps it: a foreach
kernel adds one to it). On a GPU a program runs on whole lists, a launch per op as
torch's foreach step (blocks would multiply the launches), its scalar operands Python numbers,
not under a CUDA graph's capture (the numbers of one step would be replayed). The numbers are
the chain's up to rounding order (tested against the chain and torch.optim).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from numbers import Number
from typing import Any

import optree
import torch

from . import _execute
from . import tree as _tree
from ._blocks import BLOCK, blocks
from ._fused import FusedStep, _groups, _plus_one, check_graphed, first, pure_copies
from ._parts import Parts, by_position, flat_dict, parts_of
from ._program import SCALAR, TENSOR, Program, trace
from .base import HParamError, apply_updates, resolve_hparams

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
    the block's tensors as the program takes them, ``tables[k]``'s at input ``slots[k]``
    (``tables`` whole on a GPU)."""

    def __init__(self, tables: list, slots: list, n: int, whole: bool) -> None:
        self.tables, self.slots, self.whole = tables, slots, whole
        self.lists: list = [None] * n

    def __call__(self, outs: list) -> Iterator[tuple]:
        lists, columns = self.lists, self.tables + outs
        for part in [columns] if self.whole else blocks(columns, BLOCK):
            for slot, column in zip(self.slots, part):
                lists[slot] = column
            yield lists, part[len(self.tables):]


def _vectors(tables: list) -> tuple[list, list]:
    """``tables`` (lists of tensors, one per leaf) with the 0-d leaves (where the first table
    has one) as one-element vectors, as every path runs them (see :func:`~functional_optim.
    _execute.elementwise`), and the indices of those leaves."""
    zero = [i for i, x in enumerate(tables[0]) if not x.ndim]
    if zero:
        tables = [list(t) for t in tables]
        for t in tables:
            for i in zero:
                t[i] = t[i].reshape(1)
    return tables, zero


def _scalars(made: list, zero: list) -> list:
    """``made`` (new tensors per output, or ``None``) with the leaves ``zero`` back to 0-d."""
    for tensors in made if zero else ():
        for i in zero if tensors is not None else ():
            tensors[i] = tensors[i].reshape(())
    return made


def _pure_run(run: Callable, k: tuple, each_block: Callable, olds: list, whole: bool,
              layouts: bool) -> list:
    """A program's new tensors for the outputs whose old tensors are ``olds`` (``None``: an
    output left as it is), its inputs untouched. A block of small leaves gets new tensors from
    the program's ops; a leaf that the blocks split (larger than a block) gets its new tensors
    first, which the ops write a block at a time (``out=``: the fresh memory written once,
    from cache; 0.65x the time of each op on whole leaves, RMSprop on 4 x 4M). ``layouts``:
    the new tensors take the strides of the old ones (the pure step's promise; an exact
    program's are those of the chain's ops, which it runs)."""
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
        small = fresh[i] if not layouts else _laid_out(
            fresh[i], [x for x, b in zip(olds[j], big) if not b])
        small = iter(small)
        result[j] = [out if out is not None else next(small) for out in outs[i]]
    return result


def _matches(params: dict, grads: dict, columns: list, kinds: list) -> bool:
    """Whether the gradients are shaped, typed and placed like the parameters, and the state's
    ``columns`` are dicts of their keys, each a tensor like its parameter (``TENSOR``; ``None``:
    typed and placed like it, of any shape) or a 0-d tensor (``SCALAR``): what the chain
    checks (its errors name the leaf) before a pure program runs on them (the adapter's own
    tensors are made so)."""
    ps = list(params.values())
    shapes, dtypes, devices = [p.shape for p in ps], [p.dtype for p in ps], [p.device for p in ps]
    try:
        gs = list(grads.values())
        if [g.shape for g in gs] != shapes or [g.dtype for g in gs] != dtypes or \
                [g.device for g in gs] != devices:
            return False
        for column, kind in zip(columns, kinds):
            if not isinstance(column, dict) or column.keys() != grads.keys():
                return False
            xs = list(column.values())
            if kind != SCALAR and ([x.dtype for x in xs] != dtypes or
                                   [x.device for x in xs] != devices or
                                   kind == TENSOR and [x.shape for x in xs] != shapes):
                return False
            if kind == SCALAR and any([x.ndim for x in xs]):
                return False
    except AttributeError:  # (a leaf that is no tensor)
        return False
    return True


def _given_up_or_graphed(columns: list) -> bool:
    """Whether the state ``columns`` hold a donated state (its first leaf marks it: the chain
    raises :class:`~functional_optim._execute.DonatedStateError`) or, with grad mode on, a
    tensor that requires grad (the chain records a graph through the state)."""
    if any(map(_execute.given_up, columns)):
        return True
    return torch.is_grad_enabled() and any(
        map(_execute._requires_grad, (c.values() for c in columns)))


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

class _Rule:
    """What :func:`rule_step` traces: ``tx``'s update of a one-parameter tree, as a function of
    the gradient, the parameter, the state's columns and the hyperparameters' leaves, returning
    the new parameter (``update``, by default ``exact``: the update, :func:`rule_update`) and
    columns. ``exact``
    traces every hyperparameter as the number it is (the ops the chain runs with it); else
    only the structural ones (:func:`_baked`), the others as 0-d float64 inputs."""

    def __init__(self, tx: Any, parts: Parts, h: Any, exact: bool = False,
                 update: bool | None = None) -> None:
        self.tx, self.parts, self.exact = tx, parts, exact
        self.update = exact if update is None else update  # (the lead: the update)
        self.leaves, self.spec = optree.tree_flatten(h, none_is_leaf=True)
        self.live = [] if exact else [k for k, v in enumerate(self.leaves) if not _baked(v)]

    def key(self) -> tuple:
        """What a program depends on besides dtypes: the hyperparameters traced as values."""
        live = set(self.live)
        return tuple((k, repr(v)) for k, v in enumerate(self.leaves) if k not in live)

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
        lead = updates["x"] if self.update else apply_updates({"x": p}, updates)["x"]
        return [lead, *(c["x"] for c in self.parts.columns(state))]


def _baked(value: Any) -> bool:
    """A hyperparameter traced as the value it is (0: the rule skips that work; ``None``)."""
    return value is None or value == 0


def _layout(tx: Any) -> tuple:
    """``(parts, kinds, scalar)``: the parameter-shaped parts of ``tx``'s state, whether each
    holds a tensor shaped like its parameter (``TENSOR``) or a 0-d one (``SCALAR``), and the
    indices of the 0-d ones; ``kinds`` is ``None`` where the state has other parts (a
    schedule's count) or other shapes (SM3's accumulator per dimension, factored moments)."""
    leaf = torch.ones(_SAMPLE)
    parts = parts_of(tx)
    if parts is None:  # (an init that reads its parameters' structure: a partition, a mask)
        return None, None, []
    try:
        sample = tx.init({"x": leaf}) if parts.only else None
    except (TypeError, ValueError):
        return None, None, []
    kinds: list | None = []
    for column in parts.columns(sample) if parts.only else [None]:
        x = None if column is None else column.get("x")
        if not isinstance(x, torch.Tensor) or x.ndim and x.shape != leaf.shape:
            kinds = None
            break
        kinds.append(TENSOR if x.ndim else SCALAR)
    return parts, kinds, [c for c, kind in enumerate(kinds or ()) if kind == SCALAR]


_SAMPLE = (2, 3)
"""The shape of the parameter a rule is traced on (a matrix: state that is not shaped like its
parameter, per row or column, shows)."""


class _Programs:
    """The programs of an alias's rule, by dtypes and the hyperparameters a trace bakes in
    (:meth:`_Rule.key`), and their runs on a step's tensors: what its blocked step
    (:func:`rule_step`) and its pure update (:func:`rule_update`) share."""

    def __init__(self, tx: Any, defaults: dict, where: str) -> None:
        self.tx, self.defaults, self.where = tx, defaults, where
        self.programs: dict = {}
        self.pointwise = True  # (False once a trace or the layout says the rule is not)
        self.layout: list = []  # (parts, kinds, scalar columns): made at the first step, not
        # here (a compiled adapter step builds its transform under dynamo; the step runs
        # untraced)

    def program(self, rule: _Rule, dtype: torch.dtype, column_dtypes: list) -> Program | None:
        key = (dtype, tuple(column_dtypes), rule.key(), rule.exact)
        if key not in self.programs:
            if rule.exact and sum(k[3] for k in self.programs) >= _EXACT_PROGRAMS:
                return None  # (numbers that change every step: the chain runs)
            _, kinds, _ = self.layout
            all_kinds = [TENSOR, TENSOR, *kinds, *[SCALAR] * len(rule.live)]
            targets = [0 if rule.exact else 1] + [2 + c if kind == TENSOR else None
                                                  for c, kind in enumerate(kinds)]
            self.programs[key] = trace(rule, rule.inputs(dtype, column_dtypes, kinds),
                                       all_kinds, targets)
            self.pointwise = self.programs[key] is not None
        return self.programs[key]

    def rule_runs(self, rule: _Rule, dtype: torch.dtype, numbers: bool, columns: list,
                  names: list, owned: tuple, runs: list) -> bool:
        """Appends the runs of the parameters ``names`` (one dtype) to ``runs``: one per value
        of the 0-d state the rule reads (the step counts, unless some parameters skipped
        steps), apart where a column of 0-d state it reads or writes mixes dtypes; ``False``
        where the rule has no program. Only that 0-d state is looked at (RMSprop's momentum
        count, untouched while its momentum is 0, is not: on 300 tensors each count read is a
        cache miss)."""
        _, kinds, scalar = self.layout
        prog = self.program(rule, dtype, [c[names[0]].dtype for c in columns])
        if prog is None:
            return False
        used = [c for c in scalar if 2 + c in prog.read or not prog.unchanged(1 + c, 2 + c)]
        counts = {c: [columns[c][n] for n in names] for c in used}
        if not all(len({x.dtype for x in column}) == 1 for column in counts.values()):
            dtypes = list(zip(*([x.dtype for x in column] for column in counts.values())))
            return all(self.rule_runs(rule, dtype, numbers, columns, members, owned, runs)
                       for members in _by_value(names, dtypes).values())
        advanced = [c for c in used if not counts[c][0].is_cpu and len(
            {x.device for x in counts[c]}) == 1 and prog.advances(1 + c, 2 + c)]
        # (counts on a GPU that the rule only advances: no value read, a foreach kernel adds
        # one, :meth:`run`; on the CPU the value is read, one new tensor is cheaper than many)
        if not all(x.is_cpu for c in used if c not in advanced for x in counts[c]):
            return False
        keyed = [c for c in used if 2 + c in prog.read and c not in advanced]
        values = [torch.stack(counts[c]).tolist() for c in keyed]
        keys = list(zip(*values)) if keyed else [()] * len(names)
        for key, members in _by_value(names, keys).items():
            inputs = [None] * (2 + len(kinds)) + [rule.leaves[k] for k in rule.live]
            for c in advanced:
                inputs[2 + c] = 1  # (a placeholder: only its own, unread output depends on it)
            for c, v in zip(keyed, key):
                inputs[2 + c] = v
            env = prog.scalars(inputs)
            plan = prog.plan(env, owned, dtype, numbers, rule.exact)
            if plan is None:
                return False
            runs.append((prog, env, plan, members, numbers))
        return True

    def parts(self) -> Parts | None:
        """The parameter-shaped parts of the state, or ``None`` where it has other parts or
        shapes (see :func:`_layout`)."""
        if not self.layout:
            self.layout[:] = _layout(self.tx)  # (one assignment: threads may race here)
            self.pointwise = self.layout[1] is not None
        return self.layout[0] if self.layout[1] is not None else None

    def runs(self, params: dict, grads: dict, state: Any, hparams: Any, exact: bool,
             owned: bool) -> tuple | None:
        """``(columns, runs)`` of a step or an update (``exact``: the pure update's programs,
        op for op, on the CPU; ``owned``: the parameters and state may be overwritten), or
        ``None`` where the chain must run."""
        if not self.pointwise:
            return None
        try:
            h = resolve_hparams(self.defaults, hparams, self.where)
        except HParamError:  # (the chain's error names what is fixed at construction)
            return None
        if not all(_plain(v) for v in h.values()):
            return None
        parts = self.parts()
        kinds = self.layout[1]
        if parts is None or exact and params.keys() != grads.keys():
            return None  # (fo.step and the adapter give dicts of the same keys)
        groups = _groups(params, grads, None)
        if groups is None or not all(map(_runs_on, groups)):
            return None
        if exact and (any(d.type != "cpu" for d, _ in groups) or any(
                [g.is_sparse for g in grads.values()])):
            return None  # (sparse: the chain's error or sparse rule)
        try:
            columns = parts.columns(state)
        except (ValueError, TypeError):  # (not the state of this transform: its error)
            return None
        if not owned and not _matches(params, grads, columns, kinds) or exact and \
                _given_up_or_graphed(columns):
            return None  # (the chain names what differs, raises for a donated state, or
            # records a graph through the state)
        rule = _Rule(self.tx, parts, h, exact)
        mine = (1, *(2 + c for c, kind in enumerate(kinds) if kind == TENSOR)) if owned else ()
        runs: list = []
        if not all(self.rule_runs(rule, dtype, _whole(device), columns, names, mine, runs)
                   for (device, dtype), names in groups.items()):
            return None
        return columns, runs

    def run(self, params: dict, grads: dict, state: Any, columns: list, runs: list,
            owned: bool) -> tuple:
        """``(lead, state)``: the runs in place (``owned``: ``lead`` is ``params``, updated) or
        into new tensors (``lead``: the new parameters, or the updates of an exact program),
        the 0-d state replaced by new tensors."""
        parts, kinds, scalar = self.layout
        tensor = [c for c, kind in enumerate(kinds) if kind == TENSOR]
        new, lead = list(columns), params if owned else {}
        step = runs[0][0].targets[0] == 1  # (else an exact program: ``lead`` the updates)
        with torch.no_grad():
            for prog, env, (run, k), members, whole in runs:
                at = [c for c in tensor if 2 + c in prog.read or not prog.unchanged(1 + c, 2 + c)]
                tables = [[params[n] for n in members], [grads[n] for n in members]]
                tables += [[columns[c][n] for n in members] for c in at]
                tables, zero = _vectors(tables)
                each = _Blocks(tables, [1, 0, *(2 + c for c in at)], prog.n_inputs, whole)
                if owned:
                    for lists, _ in each([]):
                        run(lists, k)
                else:  # (new tensors, the inputs left alone)
                    of = dict(zip(at, tables[2:]))
                    olds = [tables[0 if step else 1]] + [
                        None if prog.unchanged(1 + c, 2 + c) else of[c] for c in tensor]
                    made = _scalars(_pure_run(run, k, each, olds, whole, step), zero)
                    lead.update(zip(members, made[0]))
                    for c, tensors in zip(tensor, made[1:]):
                        if tensors is not None:
                            new[c] = {**new[c], **dict(zip(members, tensors))}
                for c in scalar:
                    if prog.unchanged(1 + c, 2 + c):
                        continue
                    first = columns[c][members[0]]
                    made = dict(zip(members, _plus_one([columns[c][n] for n in members],
                                                       inplace=False))) if \
                        not first.is_cpu else \
                        _filled(prog.output(1 + c, env), first.dtype, members)
                    # (a count off the CPU reaches a run only where the rule just advances it:
                    # :meth:`rule_runs`)
                    if len(made) == len(columns[c]):  # (every parameter: the usual step)
                        new[c] = made
                    else:
                        new[c] = {**new[c], **made}
        if not owned:  # (in the order of the trees given)
            lead = {n: lead[n] for n in (params if step else grads)}
        return lead, parts.rebuilt(state, new)


_EXACT_PROGRAMS = 16
"""The most exact programs an alias traces (a Python-number hyperparameter that changes every
step, a schedule's lr given as a float, would trace one per step: beyond, the chain runs)."""


def rule_step(tx: Any, defaults: dict, where: str, reduce: bool = False) -> FusedStep:
    """The blocked step of ``tx`` (an alias: flat hyperparameters ``defaults``): its chain's
    update traced once per dtype and structural hyperparameters (:func:`_baked`) into a
    foreach program (:mod:`functional_optim._program`) and run in place, a cache-sized block
    at a time, on the parameters and the state's tensors; 0-d state (step counts) is replaced
    by new tensors, one per parameter, as torch.optim keeps it.

    ``None`` (the chain runs) unless every hyperparameter is a number, the state is all
    parameter-shaped (no schedule), the leaves are float32/float64 CPU or CUDA tensors, the
    0-d state that the rule reads is on the CPU (a count it only advances may be on any
    device) and the rule is pointwise (:func:`~functional_optim._program.trace`); with
    ``reduce``, where that declines (a rule that is not: Adafactor's, LAMB's reductions over
    each parameter), the blocked step of :func:`~functional_optim._blocked_reduce.reduce_step`
    runs instead, on the CPU (an alias vouches for it: its passes reread the state to
    recompute what they do not keep, which costs some rules more than the chain's
    multi-tensor step on large tensors, ``benchmarks/bench_alias_step.py``).
    Within :func:`~functional_optim._fused.owning` (``fo.step`` without donation) the program
    runs out of place (:func:`_pure_run`): the same ops, so the donated step's numbers.
    ``step.rules``: its :class:`_Programs`, shared with :func:`rule_update`; ``step.reduced``:
    the other step."""
    programs = _Programs(tx, defaults, where)
    reduced = reduce_step(tx, defaults, where) if reduce else None

    def fused(params, grads, state, hparams):
        copies = pure_copies()
        prepared = programs.runs(params, grads, state, hparams, False, copies is None)
        if prepared is None:
            return None if reduced is None else reduced(params, grads, state, hparams)
        if copies is not None:  # (the state's every tensor is in its columns)
            check_graphed(x for column in prepared[0] for x in column.values())
        new_params, new_state = programs.run(params, grads, state, *prepared, copies is None)
        if copies is not None:
            copies.append(new_params)
        return new_state

    fused.programs = programs.programs  # (by dtypes and hyperparameters: for inspection)
    fused.rules = programs  # (shared with the alias's pure update: with_rule_steps)
    fused.reduced = reduced
    return fused


def rule_update(programs: _Programs, update: Callable, reduced: Callable | None = None
                ) -> Callable:
    """``update`` (an alias's pure ``tx.update``, whose rule ``programs`` traces) run, where it
    may, as the rule's exact program (:mod:`functional_optim._program_exact`): traced once per
    dtype and hyperparameter values, replayed op for op on blocks of the leaves into new
    tensors. The same ops per leaf, so the same numbers as ``update`` leaf by leaf (and its
    multi-tensor path), bit for bit, without its Python per op. Where ``update`` would run its
    multi-tensor path on dicts of plain float32/float64 CPU tensors (a 0-d one a one-element
    vector, as every path runs it) and number hyperparameters, called with nothing but these
    four arguments; where the rule is not pointwise (LAMB's trust ratio, a schedule's count:
    found once, then not tried again), ``reduced`` (the pure update of a rule that reduces over
    each leaf, in passes: :func:`~functional_optim._blocked_reduce.reduce_update`) where given
    and it runs; ``update`` itself otherwise."""

    def dicts(updates: dict, state: Any, params: dict, hparams: Any,
              reduce: bool = True) -> tuple | None:
        if not _execute.pure_multi_tensor([list(updates.values()), list(params.values())],
                                          hparams):
            return None
        prepared = programs.runs(params, updates, state, hparams, True, False)
        if prepared is not None:
            return programs.run(params, updates, state, *prepared, False)
        return None if reduced is None or not reduce else reduced(updates, state, params,
                                                                   hparams)

    def positions(updates: Any, state: Any, params: Any, hparams: Any) -> tuple | None:
        """Another tree (a list of parameters, nested dicts): its leaves, and those of the
        state's parameter-shaped parts (or, for a rule that reduces, its per-leaf parts: rows,
        columns), as dicts by position in optree's order; the results in its structure."""
        if _tree.traced():  # (leaf by leaf)
            return None
        parts = programs.parts()
        if parts is None and reduced is not None:
            parts = parts_of(programs.tx)
        trees = None if parts is None else by_position(parts, params, updates, state)
        if trees is None:
            return None
        ps, gs, state, back = trees
        out = dicts(gs, state, ps, hparams)
        return None if out is None else back(*out)

    def fast(updates, state, params=None, hparams=None, **extra):
        new = None
        if not extra and params is not None:
            flat = flat_dict(params) and isinstance(updates, dict)
            new = (dicts if flat else positions)(updates, state, params, hparams)
        return update(updates, state, params, hparams, **extra) if new is None else new

    return fast


def with_rule_steps(tx: Any, defaults: dict, where: str, then: FusedStep | None = None, *,
                    blocked: bool = True, reduce: bool = False) -> Any:
    """``tx`` (an alias: flat hyperparameters ``defaults``) with its pure ``update`` run as the
    rule's exact program where it may (:func:`rule_update`) and, with ``blocked``, its rule's
    blocked step as its ``fused`` step (:func:`rule_step`, ``reduce`` passed on; ``then``
    where that declines);
    else ``then`` (torch's fused kernels). For the aliases whose every leaf runs the same rule:
    a transform whose rule depends on the leaf (a mask, a partition, a name: HuggingFace's
    ``exclude_from_weight_decay``) would be traced for one leaf and replayed on all, so a
    chain gets no such program unless its alias vouches for it here."""
    if not blocked:
        return tx._replace(update=rule_update(_Programs(tx, defaults, where), tx.update),
                           fused=then)
    step = rule_step(tx, defaults, where, reduce)
    return tx._replace(update=rule_update(step.rules, tx.update,
                                          step.reduced.update if reduce else None),
                       fused=step if then is None else first(step, then))


from ._blocked_reduce import reduce_step  # noqa: E402  (it builds on this module's helpers)

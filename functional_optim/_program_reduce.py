"""A rule that reduces over its leaf (Adafactor's norms and row and column means), traced once
per leaf shape and run in passes over blocks of the leaf's rows.

:mod:`functional_optim._program` runs a pointwise rule on any list of leaves, a block at a time.
A rule with reductions over the whole leaf cannot be cut so: Adafactor's step size needs the
norm of its whole update first. :func:`trace` records the aten ops of the chain's update of one
leaf of a given shape (on ``meta`` tensors: nothing is computed; the shape's sizes are in the
ops, so a program is one shape's) and sorts its values into

- *scalars*: from the hyperparameters and the 0-d state (the step count) only, evaluated once
  per step and count by :class:`~functional_optim._program.Program`'s scalar part (torch's
  float64 digits on Python numbers);
- *full* values, shaped like the leaf, which a block of its rows computes from the same rows
  (pointwise ops and broadcasts, the product of a per-row factor with a whole one);
- *small* values, any other shape (a norm, a row or column statistic, the factored moments):
  computed whole, between passes.

:meth:`ReduceProgram.run` computes the full values a block of rows at a time, in passes
(:class:`~functional_optim._program_passes.Passes`): a full value that reads a reduction over
the rows waits for the pass after it (the reduction accumulates over its pass's blocks), and as
full values are not stored, a later pass recomputes what it needs from the inputs (Adafactor's
update: once for its norm, once to apply it; two passes over a matrix after the one of its
statistics). The outputs land in their tensors in the pass that computes them. Each pass is
compiled into a Python function of the aten ops on one block (:mod:`functional_optim.
_program_block`), in place or into scratch blocks. A leaf that fits a block runs its ops in
one such function; small leaves of one shape run stacked (:meth:`ReduceProgram.stacked`: the
same ops on a leading dimension) a block of them at a time; a leaf no pass plan divides (of
more than two dimensions: its traced ``matmul`` reshapes through views), its ops whole, one by
one. The numbers are the chain's up to the order of the blocks' sums and of the sums of scaled
values (:mod:`functional_optim._program_block`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from ._blocks import BLOCK
from ._program import CONST, SCALAR, Node, Program, Ref, Value, _as_tensor, recorded
from ._program_passes import (
    FULL,
    NORM,
    REDUCTIONS,
    SMALL,
    Declined,
    Passes,
    _numel,
    arguments,
    call,
    padded,
)

__all__ = ["ReduceProgram", "trace"]

aten = torch.ops.aten


def trace(fn: Callable, inputs: list[torch.Tensor], kinds: list[str],
          targets: list[int | None]) -> ReduceProgram | None:
    """The program of ``fn(*inputs) -> list of tensors`` (one per output slot) on a leaf of
    the shape of ``inputs[0]``, or ``None`` where it reads a value on the host, writes in
    place, draws random numbers or takes a tensor list. ``kinds[k]``: ``FULL`` or ``SMALL``
    for a tensor input (``meta``; ``FULL``: shaped like the leaf), ``SCALAR`` for a 0-d CPU
    one. ``targets[j]``: the input whose tensor receives output ``j`` (``None``: a scalar
    output, read with ``program.scalar.output``)."""
    shape = tuple(inputs[0].shape)

    def classify(found: set, out: torch.Tensor) -> str | None:
        if found & {FULL, SMALL} or out.is_meta:  # (a factory on the leaf's device too)
            return FULL if tuple(out.shape) == shape else SMALL
        if out.ndim:
            return None  # (a tensor from the scalars alone)
        return SCALAR if SCALAR in found else CONST

    got = recorded(fn, inputs, kinds, classify)
    if got is None:
        return None
    values, shapes, nodes, outs = got
    if any(t is None and values[r.index].kind in (FULL, SMALL) for t, r in zip(targets, outs)):
        return None  # (a scalar output computed from the leaf's tensors)
    live = {r.index for r in outs if isinstance(r, Ref)}
    for n in reversed(nodes):  # (the ops whose values reach no output: the trace's init)
        if n.out in live:
            live.update(a.index for a in (*n.args, *n.kwargs.values()) if isinstance(a, Ref))
    nodes = _split_norms([n for n in nodes if n.out in live], values, shapes)
    scalar = Program(values, [n for n in nodes if values[n.out].kind == SCALAR], outs,
                     len(inputs), targets)
    return ReduceProgram(shape, values, shapes,
                         [n for n in nodes if values[n.out].kind in (FULL, SMALL)], outs,
                         len(inputs), targets, scalar)


def _split_norms(nodes: list, values: list, shapes: list) -> list:
    """``nodes`` with each 2-norm of a tensor over dimensions that do not include its last
    written as the root of a sum of squares (``x * x``, ``sum``, ``sqrt``: new values appended
    to ``values`` and ``shapes``). torch's norm over the rows of a matrix, a strided reduction,
    takes 30x the time of the sum there (a 42 x 3072 block: 478 against 16 us)."""
    out = []
    for n in nodes:
        if n.func is not NORM or values[n.out].kind not in (FULL, SMALL):
            out.append(n)
            continue
        x, given = n.args[0], arguments(n)
        rank, dims = len(shapes[x.index]), given.get("dim")
        if given.get("ord", 2) != 2 or "dtype" in given or not dims or \
                (rank - 1) in {d % rank for d in dims}:
            out.append(n)
            continue
        square, total = len(values), len(values) + 1
        values += [values[x.index], values[n.out]]
        shapes += [shapes[x.index], shapes[n.out]]
        out += [Node(aten.mul.Tensor, (x, x), {}, square),
                Node(aten.sum.dim_IntList, (Ref(square), list(dims),
                                             given.get("keepdim", False)), {}, total),
                Node(aten.sqrt.default, (Ref(total),), {}, n.out)]
    return out


class ReduceProgram:
    """A traced rule on one leaf shape, or on a stack of such leaves (:meth:`stacked`; see the
    module docstring): ``scalar``, the :class:`~functional_optim._program.Program` of its scalar
    part; ``ops``, its tensor ops in order."""

    def __init__(self, shape: tuple, values: list, shapes: list, ops: list, outputs: list,
                 n_inputs: int, targets: list, scalar: Program) -> None:
        self.shape, self.values, self.shapes, self.ops = shape, values, shapes, ops
        self.outputs, self.n_inputs, self.targets = outputs, n_inputs, targets
        self.scalar = scalar
        self.operands = sorted({a.index for n in ops for a in (*n.args, *n.kwargs.values())
                                if isinstance(a, Ref) and values[a.index].kind in (SCALAR, CONST)})
        """The scalars and constants that tensor ops read (as 0-d tensors)."""
        self.written = [(j, self.targets[j], r.index) for j, r in enumerate(outputs)
                        if self.targets[j] is not None and r != Ref(self.targets[j])]
        """``(slot, input, value)`` of each tensor output that is not its input as it came."""
        self.consumed = {a.index for n in ops for a in (*n.args, *n.kwargs.values())
                         if isinstance(a, Ref) and a.index < n_inputs and
                         values[a.index].kind in (FULL, SMALL)}
        """The tensor inputs that the ops read."""
        self.read = sorted(self.consumed | {k for _, k, _ in self.written})
        """The tensor inputs that the ops read or the outputs go to."""
        self._stacks: dict = {}
        self._passes: Any = None  # (made at the first run in passes: False where none)
        self._kept = threading.local()  # (this thread's buffers: see :meth:`buffers`)

    def env(self, scalars: list, device: torch.device) -> list:
        """The values that tensor ops read from ``scalars`` (:meth:`Program.scalars`'s), as
        0-d tensors of their traced dtypes, with the leaf's ``device`` at index ``-1``."""
        env = list(scalars)
        for i in self.operands:  # (a number's tensor made once: most recur every step)
            env[i] = _as_tensor(env[i], self.values[i].dtype)
        env.append(device)
        return env

    def whole(self, env: list, tensors: list) -> list:
        """The tensor outputs (by :attr:`written`) of the rule on whole leaves ``tensors``
        (the tensor inputs, by index; ``None`` at scalars): the ops one by one."""
        e = padded(env, len(self.values))
        for k in self.read:
            e[k] = tensors[k]
        for node in self.ops:
            e[node.out] = call(node, e)
        return [e[i] for _, _, i in self.written]

    def run(self, env: list, tensors: list) -> bool:
        """The rule in place on ``tensors`` (the outputs written into their inputs), compiled
        (:class:`~functional_optim._program_passes.Passes`): in one block where the leaf (or
        stack) fits one, else in passes over blocks of rows; ``False`` (nothing written) where
        no pass plan divides the rule."""
        if self._passes is None:
            self._passes = Passes.of(self, _numel(self.shape) <= BLOCK) or False
        if self._passes is False:
            return False
        self._passes(env, tensors)
        return True

    def buffers(self, device: torch.device) -> list:
        """Tensors of the shapes of the tensor inputs (``None`` at the others), made once per
        thread (a transform shared by threads runs its programs at once): where a stacked
        program's inputs are stacked."""
        kept = vars(self._kept)
        if "buffers" not in kept:
            kept["buffers"] = [torch.empty(self.shapes[k], dtype=self.values[k].dtype,
                                           device=device) if k in self.read else None
                               for k in range(self.n_inputs)]
        return kept["buffers"]

    def stacked(self, count: int) -> ReduceProgram | None:
        """The program of ``count`` leaves of this shape stacked (a leading dimension): each
        tensor value stacked, with its shape left-padded to the leaf's rank (so that it
        broadcasts as it did), a reduction over the same dimensions of each leaf (kept),
        a matrix product batched; ``None`` where an op has no such form (a view)."""
        if count not in self._stacks:
            self._stacks[count] = _stack(self, count)
        return self._stacks[count]


def _stack(program: ReduceProgram, count: int) -> ReduceProgram | None:
    rank = len(program.shape)
    values, shapes = list(program.values), list(program.shapes)
    batched = {k for k in range(program.n_inputs) if values[k].kind in (FULL, SMALL)}

    def padded(i: int) -> tuple:
        s = program.shapes[i]
        if len(s) > rank:
            raise Declined
        return (count, *(1,) * (rank - len(s)), *s)

    ops = []
    try:
        for k in batched:
            shapes[k] = padded(k)
        for n in program.ops:
            refs = [a.index for a in (*n.args, *n.kwargs.values()) if isinstance(a, Ref)]
            if not any(r in batched for r in refs):
                if program.shapes[n.out]:
                    raise Declined  # (a factory of a tensor: not one per leaf)
                ops.append(n)
                continue
            batched.add(n.out)
            shapes[n.out] = padded(n.out)
            if n.func in REDUCTIONS:
                x, given = n.args[0], arguments(n)
                r = len(program.shapes[x.index])
                dims = given.get("dim") or list(range(r))
                if not given.get("keepdim", False) and len(dims) != r:
                    raise Declined  # (a dimension dropped within the padded shape)
                at = 1 + rank - r
                args = [x, *([given.get("ord", 2)] if n.func is NORM else []),
                        [at + d % r for d in dims], True]
                kwargs = {k: v for k, v in n.kwargs.items() if k == "dtype"}
                ops.append(Node(n.func, tuple(args), kwargs, n.out))
            elif n.func is aten.mm.default:
                if not all(r in batched for r in refs):
                    raise Declined
                ops.append(Node(aten.bmm.default, n.args, n.kwargs, n.out))
            elif torch.Tag.pointwise in n.func.tags or n.func is aten._to_copy.default:
                ops.append(n._replace(args=tuple(_cast(a, n, program, values, shapes, ops)
                                                 for a in n.args)))
            else:
                raise Declined
    except Declined:
        return None
    return ReduceProgram((count, *program.shape), values, shapes, ops, program.outputs,
                         program.n_inputs, program.targets, program.scalar)


def _cast(a: Any, n: Node, program: ReduceProgram, values: list, shapes: list,
          ops: list) -> Any:
    """Operand ``a`` of a pointwise op of a stacked program, cast to the op's dtype where it
    was a 0-d value of another among tensors with dimensions: stacked, it has dimensions and
    would promote the op (a leaf's float64 step size times its float32 update, computed in
    float32 as torch rounds a 0-d operand, not in float64)."""
    out = values[n.out].dtype
    if not isinstance(a, Ref) or program.shapes[a.index] or values[a.index].dtype == out or \
            not out.is_floating_point or not values[a.index].dtype.is_floating_point or \
            not any(isinstance(b, Ref) and program.shapes[b.index] for b in n.args):
        return a
    values.append(Value(SMALL, out))
    shapes.append(shapes[a.index])
    ops.append(Node(aten._to_copy.default, (a,), {"dtype": out}, len(values) - 1))
    return Ref(len(values) - 1)

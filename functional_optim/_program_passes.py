"""The passes of a :class:`~functional_optim._program_reduce.ReduceProgram`: its ops scheduled
and compiled to run on blocks of a leaf's rows (or of a stack of leaves), a pass at a time.

*Schedule.* A full value (shaped like the leaf) is computed a block of rows at a time, from the
same rows of its operands: pointwise ops and broadcasts, the product of a per-row factor with a
whole one. A reduction of a full value is computed on each block too: over whole rows, each
block gives its rows of the result; across rows, each block's partial result is kept and
combined after the pass (a sum, a mean, a 2-norm from the blocks' norms). A value that needs a
reduction waits for the pass after it; the small values (any other shape) are computed whole
between passes. Full values are not stored: a later pass recomputes the ones it needs from the
inputs, but for the outputs, which land in their tensors in the pass that computes them (an
input so overwritten is not read by a later pass, or the rule has no plan).

*Code.* Each pass is a Python function of the ops on one block
(:mod:`functional_optim._program_block`): in place, or into scratch blocks kept with the plan
(per thread: a transform may be shared by threads), so that no memory is allocated per block
but the reductions' small results. Fresh blocks of 512 KB from the allocator cost a page fault
each where several are alive (the allocator returns freed memory to the system): 80 us for a
product that takes 15. The small ops between passes are compiled too (:func:`_stage`). A plan
is ``whole`` where the leaf (or a stack of leaves) fits one block: all its ops in one function,
in order, nothing computed twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ._blocks import BLOCK
from ._program import DEVICE as _DEVICE
from ._program import Node, Ref

__all__ = ["Passes"]

aten = torch.ops.aten
FULL, SMALL = "full", "small"
NORM, SUM, MEAN = aten.linalg_vector_norm.default, aten.sum.dim_IntList, aten.mean.dim
REDUCTIONS = {NORM: ("self", "ord", "dim", "keepdim"), SUM: ("self", "dim", "keepdim"),
              MEAN: ("self", "dim", "keepdim")}
"""The reductions a plan computes by blocks, with their positional arguments."""


class Declined(Exception):
    """A rule with no such form (a plan, a stacked program)."""


def padded(env: list, n: int) -> list:
    """``env`` (values, the device last) with room for ``n`` values (a stacked program's
    casts follow its leaf program's values)."""
    return [*env[:-1], *[None] * (n + 1 - len(env)), env[-1]]


def call(node: Node, e: list) -> Any:
    """The node's op on the values ``e`` (``e[-1]``: the device)."""
    device = e[-1]
    args = [e[a.index] if isinstance(a, Ref) else device if a is _DEVICE else a
            for a in node.args]
    kwargs = {k: e[v.index] if isinstance(v, Ref) else device if v is _DEVICE else v
              for k, v in node.kwargs.items()}
    return node.func(*args, **kwargs)


class _Reduction(NamedTuple):
    rows: bool  # over whole rows only: the blocks' results concatenated
    combine: Callable[[list], torch.Tensor] | None  # else: the blocks' partial results'
    node: Node  # the op on each block (a mean's: the sum)


def arguments(node: Node) -> dict:
    """A reduction's arguments by name (``self``, ``ord``, ``dim``, ``keepdim``, ``dtype``: those
    given)."""
    return dict(zip(REDUCTIONS[node.func], node.args)) | node.kwargs


def _reduction(node: Node, shape: tuple, dtype: torch.dtype) -> _Reduction | None:
    if node.func not in REDUCTIONS or not dtype.is_floating_point or "dtype" in node.kwargs:
        return None
    given = arguments(node)
    if given.get("ord", 2) != 2:
        return None
    dims = given.get("dim")
    dims = set(range(len(shape))) if not dims else {d % len(shape) for d in dims}
    if 0 not in dims:
        return _Reduction(True, None, node)
    if node.func is NORM:
        return _Reduction(False, lambda parts: torch.stack(parts).double().square().sum(0)
                          .sqrt().to(dtype), node)
    count = 1
    for d in dims:
        count *= shape[d]
    scale = count if node.func is MEAN else 1
    return _Reduction(False, lambda parts: (torch.stack(parts).double().sum(0) / scale)
                      .to(dtype), node._replace(func=SUM))


def _rowwise(node: Node) -> bool:
    """Whether rows ``r0:r1`` of the op's result are its operands' (pointwise ops and
    broadcasts; matrix products)."""
    return torch.Tag.pointwise in node.func.tags or node.func in (
        aten.mm.default, aten.bmm.default, aten._to_copy.default)


def _inplace(func: Any) -> Any:
    """The in-place overload of a pointwise aten op (``mul.Tensor`` -> ``mul_.Tensor``)."""
    if torch.Tag.pointwise not in func.tags:
        return None
    packet = getattr(aten, func.overloadpacket.__name__ + "_", None)
    return getattr(packet, func._overloadname, None) if packet is not None else None


def _out(func: Any) -> Any:
    """The ``out=`` overload of an aten op with the same other arguments, or ``None``."""
    mine = [(a.name, str(a.type)) for a in func._schema.arguments]
    for name in func.overloadpacket.overloads():
        overload = getattr(func.overloadpacket, name)
        arguments = overload._schema.arguments
        if [(a.name, str(a.type)) for a in arguments if not a.is_out] == mine and \
                [a.name for a in arguments if a.is_out] == ["out"]:
            return overload
    return None


class Passes:
    """The pass plan of a program on its leaf shape, compiled (see the module docstring);
    ``whole``: one block, the ops in order in one function (the plan of a leaf, or a stack of
    leaves, that fits a block: nothing is computed twice)."""

    @classmethod
    def of(cls, program: Any, whole: bool) -> Passes | None:
        if not whole and (not program.shape or program.shape[0] < 2):
            return None
        try:
            return cls(program, whole)
        except Declined:
            return None

    def __init__(self, program: Any, whole: bool) -> None:
        self.program, self.whole = program, whole
        self.kind = [v.kind for v in program.values]
        self.slots: list = []  # (dtype) of each scratch buffer
        self._kept = threading.local()  # (this thread's scratch views by block length: a
        # transform shared by threads runs its plans at once)
        if whole:
            self.rows, self.n = program.shape[0] if program.shape else 1, 1
            self.out_at = {i: (k, 0) for _, k, i in program.written}
            self.code = [self._compile(program.ops, 0)]
            return
        self._plan()
        self.rows = max(1, BLOCK // max(1, _numel(program.shape[1:])))
        self.code = [self._compile(self._needed(q), q) for q in range(self.n)]

    def _plan(self) -> None:
        program, kind = self.program, self.kind
        values, shapes, shape = program.values, program.shapes, program.shape
        at: dict = {k: 0 for k in program.read}
        # (a full value: the first pass that can compute it; a small one: the first before
        # which it is known)
        self.reductions: dict = {}
        for node in program.ops:
            refs = [a.index for a in (*node.args, *node.kwargs.values()) if isinstance(a, Ref)]
            fulls = [r for r in refs if kind[r] == FULL]
            when = max([at.get(r, 0) for r in refs], default=0)
            if kind[node.out] == FULL:
                if not _rowwise(node) or any(
                        kind[r] == SMALL and len(shapes[r]) == len(shape) and
                        shapes[r][0] not in (1, shape[0]) for r in refs):
                    raise Declined
                at[node.out] = when
            elif fulls:  # a reduction of a full value
                red = _reduction(node, shape, values[node.out].dtype)
                if red is None or refs != fulls[:1]:
                    raise Declined
                self.reductions[node.out] = red
                at[node.out] = when + 1
            else:
                at[node.out] = when
        self.at = at
        self.out_at = {i: (k, at[i]) for _, k, i in program.written if kind[i] == FULL}
        """The full outputs: their input tensor and the pass that writes them."""
        self.late = [(k, i) for _, k, i in program.written if kind[i] != FULL]
        self.n = 1 + max([when for _, when in self.out_at.values()] +
                         [at[i] - 1 for i in self.reductions], default=0)
        self.small = [_stage([n for n in program.ops if kind[n.out] == SMALL and
                              n.out not in self.reductions and at[n.out] == q])
                      for q in range(self.n + 1)]
        """The small ops before each pass (and after the last), compiled."""

    def _needed(self, q: int) -> list:
        """The full ops and reductions that pass ``q`` runs, in order: its reductions and
        outputs, and the full values they read (again, where an earlier pass computed them),
        but for outputs written before, which are read from their tensors."""
        roots = [i for i in self.reductions if self.at[i] - 1 == q]
        roots += [i for i, (_, when) in self.out_at.items() if when == q]
        ops = {n.out: n for n in self.program.ops}
        need: set = set()
        stack = list(roots)
        while stack:
            i = stack.pop()
            if i in need or i < self.program.n_inputs or \
                    i in self.out_at and self.out_at[i][1] < q:
                continue
            need.add(i)
            stack += [a.index for a in (*ops[i].args, *ops[i].kwargs.values())
                      if isinstance(a, Ref) and self.kind[a.index] == FULL]
        return [n for n in self.program.ops if n.out in need]

    def _compile(self, nodes: list, q: int) -> Callable:
        """Pass ``q``'s function of one block (whole: of the leaf) on the ops ``nodes``."""
        return Emitter(self, nodes, q).function()

    def _views(self, length: int, device: torch.device) -> list:
        """The scratch blocks of ``length`` rows: views of buffers of :attr:`rows` rows, this
        thread's."""
        scratch = vars(self._kept)
        views = scratch.get(length)
        if views is None:
            shape = self.program.shape
            full = scratch.get(self.rows)
            buffers = full or [torch.empty((self.rows, *shape[1:]) if shape else (), dtype=d,
                                           device=device) for d in self.slots]
            views = scratch[length] = [b[:length] if shape else b for b in buffers]
        return views

    def __call__(self, env: list, tensors: list) -> None:
        if self.whole:
            self.code[0](tensors, env, None, self._views(self.rows, env[-1]), 0, self.rows)
            return
        e = padded(env, len(self.program.values))
        for k in self.program.read:
            e[k] = tensors[k]
        length, rows = self.program.shape[0], self.rows
        full = self._views(rows, env[-1])
        for q in range(self.n + 1):
            self.small[q](e)
            if q == self.n:
                break
            partials = {i: [] for i in self.reductions if self.at[i] - 1 == q}
            run = self.code[q]
            for r0 in range(0, length, rows):
                r1 = min(r0 + rows, length)
                run(tensors, e, partials, full if r1 - r0 == rows else
                    self._views(r1 - r0, env[-1]), r0, r1)
            for i, parts in partials.items():
                red = self.reductions[i]
                e[i] = torch.cat(parts) if red.rows else red.combine(parts)
        for k, i in self.late:
            tensors[k].copy_(e[i])


def _stage(nodes: list) -> Callable[[list], None]:
    """The ops ``nodes`` as one function on the values (``e[-1]``: the device)."""
    funcs, consts, lines = [], [], []

    def operand(a: Any) -> str:
        if isinstance(a, Ref):
            return f"e[{a.index}]"
        if a is _DEVICE:
            return "e[-1]"
        consts.append(a)
        return f"K[{len(consts) - 1}]"

    for n in nodes:
        funcs.append(getattr(n.func, "_op", n.func))
        args = [operand(a) for a in n.args]
        args += [f"{name}={operand(v)}" for name, v in n.kwargs.items()]
        lines.append(f"    e[{n.out}] = F[{len(funcs) - 1}]({', '.join(args)})\n")
    namespace = {"F": funcs, "K": consts}
    exec(compile("def stage(e):\n" + "".join(lines or ["    pass\n"]),  # noqa: S102
                 "<functional_optim reduce stage>", "exec"), namespace)
    return namespace["stage"]


def _numel(shape: tuple) -> int:
    count = 1
    for s in shape:
        count *= s
    return count


from ._program_block import Emitter  # noqa: E402  (it builds on this module's helpers)

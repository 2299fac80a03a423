"""The code of one pass of a :class:`~functional_optim._program_passes.Passes` plan: a Python
function of the aten ops on one block of rows (or on the whole leaf).

*Sums of scaled values.* A full value that is a sum of others times numbers (``c·x``, ``x / s``,
``-x``, ``a - c·b``, with ``c`` a 0-d value or a number: the coefficients of
:mod:`functional_optim._program_code`) is not computed as the ops are traced: it stays a list of
``(value, coefficient)`` terms until an op reads it, and is then computed in one place, the
coefficients multiplied as Python numbers (``x.mul_(c0).add_(y, alpha=c1)``). An output goes
into its tensor so: Adafactor's ``p + (-(c·u) - λp)`` is ``p.mul_(1 - λ).add_(u, alpha=-c)``,
two ops on a block where the trace has five. The digits are the trace's up to that order of
rounding.

*Memory.* An op runs in place on its first operand where that dies there (a temporary, or the
block of the input its output goes to); otherwise into a scratch block kept with the plan
(per thread; ``out=``; a scratch buffer is reused once the value in it dies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._program import CONST, SCALAR, Node, Ref
from ._program_code import ONE, _coef, _NoPlan, _plus, _times
from ._program_passes import _DEVICE, FULL, SMALL, Declined, _inplace, _out

__all__ = ["Emitter"]

aten = torch.ops.aten
_SCALED = {aten.neg.default, aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor,
           aten.sub.Tensor}


class _Source(str):
    """Python source standing for an operand (a coefficient computed from numbers)."""


class Emitter:
    """The function of pass ``q`` of ``passes`` on the ops ``nodes`` (see the module
    docstring)."""

    def __init__(self, passes: Any, nodes: list, q: int) -> None:
        self.passes, self.nodes, self.q = passes, nodes, q
        program = passes.program
        self.program, self.kind, self.values = program, passes.kind, program.values
        self.whole = passes.whole
        self.mine = {n.out for n in nodes}
        self.reductions = {} if self.whole else passes.reductions
        self.aliased = any(n.func._schema.returns[0].alias_info is not None for n in nodes)
        # (a view among the ops: none runs in place, none is deferred)
        self.sums: dict = {}
        if not self.aliased:
            self._sums()
        self.outputs = [i for i in self.mine if i in passes.out_at]
        self.last: dict = {}  # value -> the position of the last op that reads it
        for k, n in enumerate(nodes):
            if n.out not in self.sums:
                for r in self._reads(n.args, n.kwargs):
                    self.last[r] = k
        for i in self.outputs:  # (written at the end of the block)
            for r in self._reads((Ref(i),), {}):
                self.last[r] = len(nodes)
        for i in self.last:  # an input written by an earlier pass must not be read again
            if i < program.n_inputs and any(k == i and when < q
                                            for k, when in passes.out_at.values()):
                raise Declined
        self.consts: list = []
        self.funcs: list = []
        self.lines: list = []
        self.writes: list = []
        self.blocks: dict = {}  # the block views of the inputs and written outputs read here
        self.slot_of: dict = {}  # a temporary in a scratch buffer -> the buffer
        self.fresh: set = set()  # the other temporaries that are not views
        self.free = list(range(len(passes.slots)))  # (the other passes' buffers too)
        self.made: set = set()  # sums computed since

    # ---------------------------------------------------------------------------------------
    # The sums of scaled values

    def _number(self, a: Any) -> bool:
        if isinstance(a, Ref):
            return self.program.shapes[a.index] == () and \
                self.kind[a.index] in (SCALAR, CONST, SMALL) and \
                self.values[a.index].dtype.is_floating_point
        return type(a) in (int, float)

    def _terms(self, a: Any) -> list:
        return self.sums.get(a.index, [(a.index, ONE)])

    def _sums(self) -> None:
        """The values kept as sums: ``self.sums[value] = [(x, coefficient), ...]``."""
        sums = self.sums
        full = [k == FULL for k in self.kind]

        def tensor(a: Any) -> bool:
            return isinstance(a, Ref) and full[a.index]

        for n in self.nodes:
            a = n.args
            if n.func not in _SCALED or n.out in self.reductions or not full[n.out] or \
                    set(n.kwargs) - {"alpha"} or type(n.kwargs.get("alpha", 1)) not in (
                    int, float) or len(a) != (1 if n.func is aten.neg.default else 2):
                continue
            try:
                if n.func is aten.neg.default and tensor(a[0]):
                    terms = self._scaled(self._terms(a[0]), _coef(-1.0))
                elif n.func is aten.mul.Tensor and tensor(a[0]) and self._number(a[1]):
                    terms = self._scaled(self._terms(a[0]), _coef(a[1]))
                elif n.func is aten.mul.Tensor and tensor(a[1]) and self._number(a[0]):
                    terms = self._scaled(self._terms(a[1]), _coef(a[0]))
                elif n.func is aten.div.Tensor and tensor(a[0]) and self._number(a[1]):
                    terms = self._scaled(self._terms(a[0]), _coef(a[1], -1))
                elif n.func in (aten.add.Tensor, aten.sub.Tensor) and tensor(a[0]) and \
                        tensor(a[1]) and (a[0].index in sums or a[1].index in sums):
                    alpha = n.kwargs.get("alpha", 1) * (-1 if n.func is aten.sub.Tensor else 1)
                    terms = self._terms(a[0]) + self._scaled(self._terms(a[1]),
                                                              _coef(alpha))
                else:
                    continue
            except _NoPlan:  # (a division by the number 0)
                continue
            merged: dict = {}
            for x, c in terms:
                merged[x] = _plus(merged[x], c) if x in merged else c
            if all(self.values[x].dtype == self.values[n.out].dtype for x in merged):
                sums[n.out] = list(merged.items())

    @staticmethod
    def _scaled(terms: list, c: tuple) -> list:
        return [(x, _times(coefficient, c)) for x, coefficient in terms]

    def _reads(self, args: tuple, kwargs: dict) -> list:
        """The values that operands read (a sum's terms and the 0-d values of their
        coefficients)."""
        out = []
        for a in (*args, *kwargs.values()):
            if isinstance(a, Ref):
                out.append(a.index)
                for x, c in self.sums.get(a.index, ()):
                    out += [x] + [r.index for _, factors in c for r, _ in factors]
        return out

    def _render(self, c: tuple, scale: float = 1.0) -> _Source:
        """Python source of ``scale`` times coefficient ``c`` (a float)."""
        terms = []
        for literal, factors in c:
            parts = [repr(float(literal * scale))] if literal * scale != 1 else []
            for r, exponent in factors:
                value = f"{self._operand(r)}.item()"
                parts.append(value if exponent == 1 else f"(1.0 / {value})")
            terms.append(" * ".join(parts) or "1.0")
        return _Source(" + ".join(terms) or "0.0")

    def _made(self, a: Any, k: int) -> Any:
        """Operand ``a`` of op ``k``, computed here if it was a sum."""
        if not isinstance(a, Ref) or a.index not in self.sums or a.index in self.made:
            return a
        i = a.index
        self.made.add(i)
        target = self.passes.out_at.get(i, (None,))[0]
        self.last[i] = len(self.nodes) if target is not None else max(
            j for j, n in enumerate(self.nodes) if n.out not in self.sums and
            i in [r.index for r in (*n.args, *n.kwargs.values()) if isinstance(r, Ref)])
        # (an output: on its input's block where no later op reads that but through this
        # sum, else written at the end of the block)
        if not self._sum(k, i, target if self._only_through(target, i, k) else None) and \
                target is not None:
            self._write(target, i)
        return a

    def _only_through(self, x: int | None, i: int, k: int) -> bool:
        """Whether no op from ``k`` on reads value ``x`` but through the sum ``i``."""
        for n in self.nodes[k:]:
            if n.out in self.sums:
                continue
            for a in (*n.args, *n.kwargs.values()):
                if isinstance(a, Ref) and a.index != i and (
                        a.index == x or x in self._reads((a,), {})):
                    return False
        return x is not None

    def _sum(self, k: int, out: int, target: int | None) -> bool:
        """``v{out}``, the sum ``self.sums[out]``, computed at op ``k``: on the term of its
        ``target`` input's block (an output), or of a temporary that dies here, in place;
        else into a scratch block. ``True`` where on the ``target``'s block."""
        terms = list(self.sums[out])
        host = next((t for t in terms if t[0] == target), None) or next(
            (t for t in terms if self._dies(t[0], k)), None)
        on_target = host is not None and host[0] == target
        if host is None and len(terms) > 1 and terms[0][1] == ONE:
            (x, _), (y, c) = terms[:2]
            self._emit(k, out, aten.add.Tensor, [Ref(x), Ref(y)], {"alpha": self._render(c)},
                       inplace=False)
            terms = terms[2:]
        else:
            x, c = host or terms[0]
            terms.remove((x, c))
            if c != ONE or host is None:
                self._emit(k, out, aten.mul.Scalar, [Ref(x), self._render(c)], {},
                           inplace=host is not None)
            else:
                self._alias(out, x)
        for y, c in terms:
            self._emit(k, out, aten.add.Tensor, [Ref(out), Ref(y)], {"alpha": self._render(c)},
                       inplace=True)
        return on_target

    def _alias(self, out: int, x: int) -> None:
        """``v{out}`` is ``x`` (a sum's host whose coefficient is 1)."""
        self.lines.append(f"    v{out} = {self._operand(Ref(x))}\n")
        if x in self.slot_of:
            self.slot_of[out] = self.slot_of.pop(x)
        elif x in self.fresh:
            self.fresh.add(out)

    def _dies(self, i: int, k: int) -> bool:
        """Whether temporary ``i`` may be overwritten by op ``k`` (its last reader)."""
        return self.last.get(i) == k and (i in self.slot_of or i in self.fresh) and \
            i not in self.passes.out_at

    # ---------------------------------------------------------------------------------------
    # Code

    def _block(self, i: int) -> str:
        if i not in self.blocks:
            self.blocks[i] = f"b{i}"
            source = i if i < self.program.n_inputs else self.passes.out_at[i][0]
            self.lines.append(f"    b{i} = X[{source}]{'' if self.whole else '[r0:r1]'}\n")
        return self.blocks[i]

    def _operand(self, a: Any, rows: bool = True) -> str:
        if isinstance(a, _Source):
            return a
        if isinstance(a, Ref):
            i, program = a.index, self.program
            if i in self.mine:
                return f"v{i}"
            if self.kind[i] == FULL or self.whole and self.kind[i] == SMALL and \
                    i < program.n_inputs:
                return self._block(i)
            if self.kind[i] == SMALL and rows and len(program.shapes[i]) == len(program.shape) \
                    and program.shapes[i][0] == program.shape[0]:
                return f"E[{i}][r0:r1]"
            return f"E[{i}]"
        if a is _DEVICE:
            return "E[-1]"
        self.consts.append(a)
        return f"K[{len(self.consts) - 1}]"

    def _scratch(self, i: int) -> int:
        dtype, slots = self.values[i].dtype, self.passes.slots
        for j in self.free:
            if slots[j] == dtype:
                self.free.remove(j)
                return j
        slots.append(dtype)
        return len(slots) - 1

    def _emit(self, k: int, out: int, func: Any, args: list, kwargs: dict,
              reduction: bool = False, inplace: bool | None = None) -> bool:
        """``v{out} = func(*args, **kwargs)``: in place on its first operand where that dies
        here (a temporary, or the input this output goes to; ``inplace``: the caller knows),
        else into a scratch block (``out=``); ``True`` where in place on the input it goes
        to."""
        first = args[0].index if args and isinstance(args[0], Ref) else None
        target = self.passes.out_at.get(out, (None,))[0]
        if inplace is None:
            inplace = not reduction and not self.aliased and first is not None and \
                self.values[first].dtype == self.values[out].dtype and \
                (self._dies(first, k) or first == target and self.last.get(first) == k)
        inplace = inplace and _inplace(func) is not None
        into = None
        if inplace:
            func = _inplace(func)
            if first in self.slot_of:
                self.slot_of[out] = self.slot_of.pop(first)
            elif first != out:
                self.fresh.add(out)
        elif not reduction and self.kind[out] == FULL and _out(func) is not None:
            func = _out(func)
            into = self.slot_of[out] = self._scratch(out)
        elif func._schema.returns[0].alias_info is None:
            self.fresh.add(out)
        rowwise = func not in (aten.mm.default, aten.mm.out)
        code = [self._operand(a, rowwise or j == 0) for j, a in enumerate(args)]
        code += [f"{name}={self._operand(v, rowwise)}" for name, v in kwargs.items()]
        if into is not None:
            code.append(f"out=W[{into}]")
        self.funcs.append(getattr(func, "_op", func))  # (an overload's C++ entry)
        call = f"F[{len(self.funcs) - 1}]({', '.join(code)})"
        self.lines.append(f"    R[{out}].append({call})\n" if reduction else
                          f"    v{out} = {call}\n")
        return inplace and first == target

    def _node(self, k: int, n: Node) -> None:
        red = self.reductions.get(n.out)
        node = red.node if red else n
        args = [self._made(a, k) for a in node.args]
        kwargs = {name: self._made(v, k) for name, v in node.kwargs.items()}
        written = self._emit(k, n.out, node.func, args, kwargs, red is not None)
        self._freed(k, n.args, n.kwargs)
        target = self.passes.out_at.get(n.out, (None,))[0]
        if target is not None and not written:
            self._write(target, n.out)

    def _freed(self, k: int, args: tuple, kwargs: dict) -> None:
        for r in self._reads(args, kwargs):  # (buffers whose values die here)
            if self.last.get(r) == k and r in self.slot_of:
                self.free.append(self.slot_of.pop(r))

    def _write(self, target: int, i: int) -> None:
        self.writes.append(f"    X[{target}]{'' if self.whole else '[r0:r1]'}.copy_(v{i})\n")

    def function(self) -> Callable:
        end = len(self.nodes)
        for k, n in enumerate(self.nodes):
            if n.out not in self.sums:
                self._node(k, n)
        for i in self.outputs:  # (the outputs kept as sums, into their tensors)
            if i in self.sums and i not in self.made:
                target = self.passes.out_at[i][0]
                self.made.add(i)
                self.last[target] = end
                if not self._sum(end, i, target):
                    self._write(target, i)
        source = "def run(X, E, R, W, r0, r1):\n" + "".join(
            self.lines + self.writes or ["    pass\n"])
        namespace = {"F": self.funcs, "K": self.consts}
        exec(compile(source, f"<functional_optim reduce pass {self.q}>", "exec"),  # noqa: S102
             namespace)
        return namespace["run"]

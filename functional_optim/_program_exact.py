"""The tensor part of a traced rule as foreach code op for op (see
:mod:`functional_optim._program`): the pure ``tx.update`` of an alias, whose numbers must be the
chain's leaf by leaf, bit for bit.

Each traced op becomes the foreach op that runs the same kernel on every tensor of a list
(``mul`` of a tensor and a 0-d tensor: ``torch._foreach_mul(list, tensor)``, which on the CPU
calls ``mul`` per tensor), or runs per tensor where torch has no such foreach op. The operands
are what the traced op took: the same 0-d tensors (a scalar recomputed each step, as a tensor
of its dtype), the same wrapped numbers, the same literals; no term is folded into another. An
op runs in place on a temporary that no later op reads (the same kernel). So the result is the
per-leaf path's, element for element, and the per-leaf Python (the chain's prepare, checks,
hyperparameter plumbing, :class:`~functional_optim._foreach.TensorList` dispatch) runs once, at
the trace. A ``where`` on a scalar condition takes its branch per plan, as the fused lowering's
(:mod:`functional_optim._program_code`) does.
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import torch

from ._program import TENSOR, Program, Ref
from ._program_code import _UNARY
from ._program_emit import Emitter

_LIST_SCALAR = {"add", "mul", "div"}  # ops with a (list, 0-d tensor) overload
_LISTS = {"add", "sub", "mul", "div", "maximum", "minimum"}  # (list, list)


class _Values:
    """Each value's dtype, and which are tensors (lists in the code)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.dtypes = {k: v.dtype for k, v in enumerate(program.values)}

    def tensor(self, x: Any) -> bool:
        return isinstance(x, Ref) and self.program.kind(x) == TENSOR


def compile_exact(program: Program, env: list, dtype: torch.dtype) -> Any:
    """``(run, operands)`` for :meth:`Program.plan` with ``exact``: ``run(L, k, O)`` returns the
    tensor outputs' new lists (its inputs left alone; see :meth:`Emitter.returns`); ``False``
    where an output is no tensor of ``dtype`` (a scalar branch taken into a tensor)."""
    alias = {n.out: n.args[1] if env[n.args[0].index] else n.args[2] for n in program.wheres}

    def res(x: Any) -> Any:
        while isinstance(x, Ref) and x.index in alias:
            x = alias[x.index]
        return x

    values = _Values(program)
    targets = program.targets
    outs = {slot: res(r) for slot, r in enumerate(program.outputs) if targets[slot] is not None}
    if any(not values.tensor(r) or program.values[r.index].dtype != dtype
           for r in outs.values()):
        return False
    nodes = program.tensor_nodes
    needed, stack = set(), [r.index for r in outs.values()]
    while stack:
        j = stack.pop()
        if j in needed or j not in nodes:
            continue
        needed.add(j)
        stack += [a.index for a in map(res, (*nodes[j].args, *nodes[j].kwargs.values()))
                  if values.tensor(a)]
    order = [n for j, n in nodes.items() if j in needed]
    if any(not any(map(values.tensor, map(res, n.args))) for n in order):
        return False  # (a where took a scalar branch into a tensor op: the chain runs)
    last: dict = {}
    for i, n in enumerate(order):
        for a in map(res, (*n.args, *n.kwargs.values())):
            if values.tensor(a):
                last[a.index] = i
    for r in outs.values():
        last[r.index] = len(order)
    code = Emitter(values, ())
    for k in range(program.n_inputs):
        if program.kind(Ref(k)) == TENSOR:
            code.home[k] = f"a{k}"
    for i, n in enumerate(order):
        _emit(code, n, [res(a) for a in n.args],
              {k: res(v) for k, v in n.kwargs.items()}, i, last)
    return code.finish(program, {f"a{targets[slot]}": code.home[r.index]
                                 for slot, r in outs.items()})


def _form(name: str, overload: str, tensors: list, args: list, kw: dict) -> str | None:
    """How the op runs on lists: ``"lists"`` (every tensor argument a list, in their places),
    ``"scalar"`` (a list and a 0-d tensor or number), ``"sub"`` (a list minus a 0-d tensor:
    torch's one-tensor overload lacks it, the list of it takes it), or ``None`` (per tensor)."""
    first = bool(tensors) and tensors[0]
    if not first:
        return None
    if name in _UNARY and overload == "default" and len(args) == 1 and not kw:
        return "lists"
    if name in ("addcmul", "addcdiv") and len(args) == 3 and all(tensors) and \
            set(kw) <= {"value"} and isinstance(kw.get("value", 1), Number):
        return "lists"
    if name == "lerp" and overload == "Scalar" and tensors[:2] == [True, True] and not kw:
        return "lists"
    if name in ("clamp_min", "clamp_max") and len(args) == 2 and not tensors[1] and \
            isinstance(args[1], Number) and not kw:
        return "lists"
    if name == "pow" and overload == "Tensor_Scalar" and isinstance(args[1], Number):
        return "lists"
    if name in _LISTS and overload in ("Tensor", "default") and len(args) == 2 and \
            set(kw) <= {"alpha"}:
        if tensors[1]:
            return "lists"
        if name in _LIST_SCALAR and (name != "div" or not kw):
            return "scalar"
        if name == "sub":
            return "sub"
    return None


def _emit(code: Emitter, node: Any, args: list, kw: dict, i: int, last: dict) -> None:
    """One traced op as a line of ``code`` (in place on its first operand where that is a
    temporary no later op reads)."""
    values = code.low
    name, overload = node.func.overloadpacket.__name__, node.func._overloadname
    tensors = [values.tensor(a) for a in args]
    form = None if any(values.tensor(v) for v in kw.values()) else _form(
        name, overload, tensors, args, kw)
    if form is None:
        return code.each(node.func, tuple(args), kw, node.out)
    dtype = values.program.values[node.out].dtype
    # (the scalar of a list and a scalar: a 0-d tensor in the list's dtype, which each
    # tensor's kernel would cast it to; for add and sub, once per tensor in a list: the one-0-d
    # tensor overload reads it on the host and wraps it again per tensor)
    cast = dtype if form in ("scalar", "sub") and dtype == values.dtypes[args[0].index] and \
        dtype in (torch.float32, torch.float64) else None
    names = [code.home[a.index] if t else code.operand(a, cast) for a, t in zip(args, tensors)]
    if form == "sub" or form == "scalar" and name == "add" and cast is not None:
        names[1] = f"[{names[1]}] * len({names[0]})"
    call = ", ".join(names + [f"{k}={code.operand(v)}" for k, v in kw.items()])
    code.foreach(name, call, node.out, code.free(args[0], i, last, dtype), args[0])

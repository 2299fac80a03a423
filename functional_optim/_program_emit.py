"""Foreach code as Python source: what the two lowerings of a traced rule share (the fused one,
:mod:`functional_optim._program_code`; the exact one, :mod:`functional_optim._program_exact`):
the lines, the operands bound per call, the names of the values, and how the outputs end (moved
into the inputs the caller gave up, or returned as new tensors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._foreach import constant
from ._program import CONST, TENSOR, Program, Ref, _as_tensor


def _each(func: Any, args: list, lists: tuple, kwargs: dict) -> list:
    """``func`` on each element of the list arguments (``lists[i]``: whether ``args[i]`` is
    one), the other arguments as they are: an op without a foreach kernel."""
    n = len(next(a for a, is_list in zip(args, lists) if is_list))
    return [func(*(a[j] if is_list else a for a, is_list in zip(args, lists)), **kwargs)
            for j in range(n)]


def _into(fn: Callable, outs: list, *args: Any, **kwargs: Any) -> list:
    """``fn`` on each element of the list arguments, written into ``outs``: a foreach op with
    ``out=`` (the same kernel per tensor as the foreach op's, so the same digits)."""
    for i, out in enumerate(outs):
        fn(*(a[i] if isinstance(a, (list, tuple)) else a for a in args), **kwargs, out=out)
    return outs


def _copied(outs: list, new: list) -> list:
    torch._foreach_copy_(outs, new)
    return outs


class Emitter:
    """The lines of a program's ``run(L, k, O=None)``: ``L`` its inputs' lists (``a0``, ...),
    ``k`` the operands bound for a call (:meth:`bind`), ``O`` where a pure run's outputs go."""

    def __init__(self, low: Any, owned: tuple) -> None:
        self.low = low  # (the lowering: .program, .dtypes of values, .tensor(x))
        self.lines: list[str] = []
        self.operands: list[Callable] = []
        self.funcs: list = []
        self.home: dict[int, str] = {}
        self.owned = {f"a{k}" for k in owned}
        self.owned_inputs = bool(owned)
        self.made: dict[str, tuple] = {}  # temporary -> (its line, foreach name, arguments)

    def bind(self, fn: Callable) -> str:
        self.operands.append(fn)
        return f"k[{len(self.operands) - 1}]"

    def operand(self, x: Any, dtype: torch.dtype | None = None) -> str:
        """A non-tensor operand as the traced op took it: a scalar recomputed as a 0-d tensor
        of its dtype, a constant as the very tensor (a wrapped number stays one), a literal.
        With ``dtype`` (the tensors' own, float32 or float64), each in that dtype, as a 0-d
        tensor: the value the kernel computes with, which it would otherwise cast (a number:
        wrap, then cast) once per tensor."""
        if not isinstance(x, Ref):
            if dtype is not None and type(x) in (int, float):
                x = constant(x, dtype)
            return self.bind(lambda env: x)
        value = self.low.program.values[x.index]
        if value.kind == CONST:
            const = value.const
            if dtype is not None and const.dtype != dtype:
                const = const.to(dtype)
            return self.bind(lambda env: const)
        if dtype is None or dtype == value.dtype:
            return self.bind(lambda env: _as_tensor(env[x.index], value.dtype))
        return self.bind(lambda env: _as_tensor(env[x.index], value.dtype).to(dtype))

    def free(self, x: Any, i: int, last: dict, dtype: torch.dtype) -> bool:
        """Whether op ``i`` (of ``dtype``) may overwrite ``x``: a list no later op reads, that
        is a temporary or an owned input, of the op's dtype."""
        return self.low.tensor(x) and last.get(x.index) == i and \
            self.home[x.index] in self.owned and self.low.dtypes[x.index] == dtype

    def foreach(self, name: str, call: str, out: int, in_place: bool, first: Any) -> None:
        """``torch._foreach_<name>(call)``, in place on its first operand ``first``, or into
        the new temporary of ``out``."""
        if in_place:
            self.lines.append(f"torch._foreach_{name}_({call})")
            self.home[out] = self.home[first.index]
            return
        self.made[f"t{out}"] = (len(self.lines), name, call)
        self.lines.append(f"t{out} = torch._foreach_{name}({call})")
        self.home[out] = f"t{out}"
        self.owned.add(f"t{out}")

    def each(self, func: Any, args: tuple, kwargs: dict, out: int) -> None:
        """``func`` run per tensor (an op without a foreach kernel) into the temporary of
        ``out``."""
        flags = tuple(self.low.tensor(a) for a in args)
        specs = [self.home[a.index] if t else self.operand(a) for a, t in zip(args, flags)]
        kw = "{" + ", ".join(f"{k!r}: {self.operand(v)}" for k, v in kwargs.items()) + "}"
        self.funcs.append(func)
        self.lines.append(f"t{out} = _each(F[{len(self.funcs) - 1}], [{', '.join(specs)}], "
                          f"{flags!r}, {kw})")
        self.home[out] = f"t{out}"
        if not func._schema.returns[0].alias_info:  # (a view is nobody's to overwrite)
            self.owned.add(f"t{out}")

    def returns(self, homes: dict) -> None:
        """``run(L, k, O)`` returns each output's tensors (``homes``: by target input), new
        ones: an input's own where it is unchanged, else a copy where they are another input's
        or another output's (no tensor of the caller's ends in a new place). ``O[j]``, where
        not ``None``, is where output ``j``'s new tensors go (views of a split leaf's new
        tensor): the op that makes them writes there (``out=``), or they are copied there."""
        seen: set = set()
        out = []
        for j, (target, home) in enumerate(homes.items()):
            if home in seen or home.startswith("a") and home != target:
                self.lines.append(f"c_{target} = torch._foreach_mul({home}, 1)")
                self.made[f"c_{target}"] = (len(self.lines) - 1, "mul", f"{home}, 1")
                home = f"c_{target}"
            if home in self.made:
                line, name, call = self.made.pop(home)
                self.lines[line] = (f"{home} = torch._foreach_{name}({call}) if O[{j}] is None "
                                    f"else _into(torch.{name}, O[{j}], {call})")
                out.append(home)
            else:  # (an output made in place, or unchanged: its input's list)
                out.append(f"{home} if O[{j}] is None else _copied(O[{j}], {home})")
            seen.add(home)
        self.lines.append(f"return [{', '.join(out)}]")

    def moves(self, moves: dict) -> None:
        """Each new tensor (at ``moves[target]``) into its target's tensors, none overwritten
        while another move still reads it."""
        pending = {t: s for t, s in moves.items() if t != s}
        while pending:
            free = [t for t in pending if t not in pending.values()]
            if not free:  # (a cycle: one source copied aside first)
                t = next(iter(pending))
                self.lines.append(f"s_{t} = torch._foreach_add({pending[t]}, 0)")
                pending[t] = f"s_{t}"
                continue
            for t in free:
                self.lines.append(f"torch._foreach_copy_({t}, {pending.pop(t)})")

    def finish(self, program: Program, homes: dict) -> tuple:
        """``(run, operands)``: the outputs (``homes``: each one's value by its target input)
        moved into their targets where the inputs are owned, else returned (:meth:`returns`)."""
        if self.owned_inputs:
            self.moves(homes)
        else:
            self.returns(homes)
            self.lines.insert(0, f"O = O or {(None,) * len(homes)!r}")
        lists = ", ".join(f"a{k}" if program.kind(Ref(k)) == TENSOR else "_"
                          for k in range(program.n_inputs))
        source = f"def run(L, k, O=None):\n    {lists}, = L\n" + "".join(
            f"    {line}\n" for line in self.lines or ["pass"])
        namespace = {"torch": torch, "_each": _each, "_into": _into, "_copied": _copied,
                     "F": self.funcs}
        exec(compile(source, "<functional_optim program>", "exec"), namespace)  # noqa: S102
        run = namespace["run"]
        run.source = source
        return run, self.operands

"""The tensor part of a traced rule compiled into foreach code (see
:mod:`functional_optim._program`), for one choice of its scalar ``where`` branches.

*Lowering.* Products and quotients by scalars, products and quotients of tensors and sums of
those stay symbolic (:class:`Term`: a scalar coefficient times a product of tensors over a
product of tensors) until an op needs their value; the scalar coefficients multiply in Python
(float64). A sum is then computed by accumulating each term into the first:
``x + c·a`` as ``add(alpha=c)``, ``x + c·a·b`` as ``addcmul``, ``x + c·a/b`` as ``addcdiv``. So
``p - lr · (m / bc1) · r · sqrt(bc2) / (sqrt(v) + eps)`` is one ``addcdiv`` with the
coefficients multiplied once, the form torch.optim's hand-written steps take; the digits are
the chain's up to that rounding order.

*Code.* Each op runs in place on its first operand where that operand is not read again and is a
temporary or an input the caller gave up (the parameters, the state); the new tensors then move
into their inputs' tensors (a copy only where an op could not end there).
"""

from __future__ import annotations

from numbers import Number
from typing import Any, NamedTuple

import torch

from ._foreach import constant
from ._program import TENSOR, Program, Ref, _special
from ._program_emit import Emitter

_UNARY = {"sqrt", "abs", "neg", "sign", "exp", "log", "reciprocal", "sigmoid", "tanh", "expm1",
          "log1p", "sin", "cos", "erf", "floor", "ceil", "round", "trunc", "frac"}
_COMMUTATIVE = ("add", "mul", "maximum", "minimum")
ONE = ((1.0, ()),)


class _NoPlan(Exception):
    pass


# A coefficient is a polynomial in the scalars: ``((literal, factors), ...)``, a sum of
# monomials, each a number times a product of scalar values ``((Ref, ±1), ...)`` (sorted);
# ``()`` is 0, :data:`ONE` is 1.

def _coef(x: Any, exponent: int = 1, special: dict | None = None) -> tuple:
    """A scalar operand (a :class:`Ref` or a number) to the power ±1, as a coefficient; a
    :class:`Ref` in ``special`` (a scalar that is 0 or 1 for this plan) as its value."""
    if isinstance(x, Ref) and special and x.index in special:
        x = special[x.index]
    if isinstance(x, Ref):
        return ((1.0, ((x, exponent),)),)
    if exponent == -1 and x == 0:
        raise _NoPlan  # (a division by a scalar 0: the traced op's inf or nan)
    return ((float(x) if exponent == 1 else 1.0 / float(x), ()),)


def _plus(a: tuple, b: tuple) -> tuple:
    """``a + b``; monomials that cancel are dropped (a lone zero is kept: ``0 · inf`` is
    NaN)."""
    merged: dict = {}
    for literal, factors in a + b:
        total, count = merged.get(factors, (0.0, 0))
        merged[factors] = (total + literal, count + 1)
    return tuple((total, f) for f, (total, count) in merged.items()
                 if total != 0.0 or count == 1)


def _times(a: tuple, b: tuple) -> tuple:
    return _plus((), tuple((x * y, _product(f, g)) for x, f in a for y, g in b))


def _product(f: tuple, g: tuple) -> tuple:
    powers: dict = {}
    for r, e in f + g:
        powers[r] = powers.get(r, 0) + e
    return tuple(sorted(((r, e) for r, e in powers.items() if e), key=lambda p: p[0].index))


def _inverse(c: tuple) -> tuple | None:
    """``1 / c`` for a monomial (``None`` for a sum: 1 / (a + b) has no such form)."""
    if len(c) != 1 or c[0][0] == 0.0:
        return None
    literal, factors = c[0]
    return ((1.0 / literal, tuple((r, -e) for r, e in factors)),)


class Term(NamedTuple):
    """``coef · Π num / Π den`` (``num``, ``den``: tensors, sorted)."""

    coef: tuple
    num: tuple
    den: tuple = ()

    @property
    def plain(self) -> bool:
        return self.coef == ONE and len(self.num) == 1 and not self.den


class IR(NamedTuple):
    """One foreach call: ``name`` on the tensor ``args`` (:class:`Ref`), with the scalar
    ``coef`` (an alpha, a value, a factor, a weight, a bound, an exponent); ``each``: ``func``
    on each element, ``args``/``kwargs`` as the trace gave them (tensors as :class:`Ref`)."""

    name: str
    out: int
    args: tuple
    coef: tuple = ONE
    func: Any = None
    kwargs: dict | None = None


def _sorted(refs: tuple) -> tuple:
    return tuple(sorted(refs, key=lambda r: r.index))


def _scaled(terms: list, coef: tuple) -> list:
    return terms if coef == ONE else [t._replace(coef=_times(t.coef, coef)) for t in terms]


def _sum(a: list, b: list) -> list:
    """The terms of ``a + b``; terms of one tensor product whose coefficients cancel are
    dropped (``x + (y - x)`` is ``y``, as torch.optim computes a new value in place: an
    infinite ``x`` does not make it NaN), others kept apart (``p·a - p·b`` is not ``p·(a - b)``
    where torch computes both: NaN at an infinite ``p``)."""
    groups: dict = {}
    for t in a + b:
        groups.setdefault((t.num, t.den), []).append(t)
    out = []
    for key, terms in groups.items():
        coef = terms[0].coef
        for t in terms[1:]:
            coef = _plus(coef, t.coef)
        if len(coef) <= 1 or len(terms) == 1:
            out += [Term(coef, *key)] if coef else []
        else:
            out += terms
    return out


class _Lowering:
    def __init__(self, program: Program, alias: dict, uses: dict, special: dict) -> None:
        self.program, self.alias, self.uses, self.special = program, alias, uses, special
        self.lazy: dict[int, list] = {}
        self.held: dict[int, tuple] = {}  # a comparison with 0, a fill, a select by sign
        self.signs: dict[int, Ref] = {}
        self.ir: list[IR] = []
        self.dtypes = {k: v.dtype for k, v in enumerate(program.values)}
        self.next = len(program.values)

    def coef(self, x: Any, exponent: int = 1) -> tuple:
        return _coef(x, exponent, self.special)

    def res(self, x: Any) -> Any:
        while isinstance(x, Ref) and x.index in self.alias:
            x = self.alias[x.index]
        return x

    def tensor(self, x: Any) -> bool:
        return isinstance(x, Ref) and (x.index >= len(self.program.values) or
                                       self.program.kind(x) == TENSOR)

    def terms(self, x: Ref) -> list:
        return self.lazy[x.index] if x.index in self.lazy else [Term(ONE, (x,))]

    def emit(self, name: str, args: tuple, coef: tuple = ONE, dtype: Any = None, **kw) -> Ref:
        out = self.next
        self.next += 1
        self.dtypes[out] = dtype if dtype is not None else self.dtypes[args[0].index]
        self.ir.append(IR(name, out, args, coef, **kw))
        return Ref(out)

    def atom(self, x: Any) -> Any:
        """``x`` computed (a :class:`Ref` no term stands for)."""
        if self.tensor(x) and x.index in self.held:
            return self._unhold(x)
        if not self.tensor(x) or x.index not in self.lazy:
            return x
        terms = self.lazy.pop(x.index)
        if not terms:
            raise _NoPlan  # (a difference of equal terms: a zero)
        start = next((t for t in terms if t.plain),
                     next((t for t in terms if len(t.num) == 1 and not t.den), terms[0]))
        buf = start.num[0] if start.plain else self._product(start)
        for t in terms:
            if t is start:
                continue
            if len(t.num) == 1 and not t.den:
                buf = self.emit("add", (buf, t.num[0]), t.coef)
            elif len(t.num) == 2 and not t.den:
                buf = self.emit("addcmul", (buf, *t.num), t.coef)
            elif len(t.num) == 1 and len(t.den) == 1:
                buf = self.emit("addcdiv", (buf, t.num[0], t.den[0]), t.coef)
            else:
                buf = self.emit("add", (buf, self._product(t)))
        self.alias[x.index] = buf
        return buf

    def _product(self, t: Term) -> Ref:
        if t.num:
            x, dens = t.num[0], t.den
        else:
            x, dens = self.emit("reciprocal", (t.den[0],)), t.den[1:]
        for y in t.num[1:]:
            x = self.emit("mul", (x, y))
        for y in dens:
            x = self.emit("div", (x, y))
        return self.emit("mul_s", (x,), t.coef) if t.coef != ONE else x

    def single(self, x: Ref, invertible: bool = False) -> Term:
        """``x`` as one term (a sum computed first; with ``invertible``, a term whose
        coefficient is a monomial)."""
        terms = self.terms(x)
        if len(terms) == 1 and (not invertible or _inverse(terms[0].coef) is not None):
            return terms[0]
        return Term(ONE, (self.atom(x),))

    def lower(self, node: Any) -> None:
        name = node.func.overloadpacket.__name__
        args = tuple(map(self.res, node.args))
        kw = {k: self.res(v) for k, v in node.kwargs.items()}
        out = node.out
        dtype = self.program.values[out].dtype
        if any(self.tensor(v) for v in kw.values()):
            raise _NoPlan
        if self._held(node, name, args, kw):
            return
        args = tuple(self.atom(a) if self.tensor(a) and a.index in self.held else a
                     for a in args)
        same = all(self.dtypes[a.index] == dtype for a in args if self.tensor(a))
        terms = self._lazy(name, args, kw) if same else None
        if terms is not None:
            self.lazy[out] = terms
            if self.uses.get(out, 0) != 1:  # (computed once for its several readers)
                self.atom(Ref(out))
            return
        atoms = tuple(self.atom(a) for a in args)
        if not any(map(self.tensor, atoms)):
            raise _NoPlan  # (a where took a scalar branch into a tensor op: the chain runs)
        if same and self._direct(name, atoms, kw, out, dtype):
            return
        self.alias[out] = self.emit("each", atoms, dtype=dtype, func=node.func, kwargs=kw)

    # -- selection by the sign of a tensor (Rprop's) --------------------------------------------
    # ``x > 0``, ``x < 0`` and ``ones_like``/``zeros_like`` are held until a ``where`` reads
    # them: a choice among scalars by the sign of ``x`` is a quadratic in ``s = sign(x)``
    # (:meth:`_unhold`), a zero where ``x`` (a product with ``t``) is negative keeps ``t``
    # elsewhere (:meth:`_zero_where`); anything else computes them as traced, tensor by tensor.

    def _held(self, node: Any, name: str, args: tuple, kw: dict) -> bool:
        x = args[0] if args else None
        if name in ("gt", "lt") and len(args) == 2 and self.tensor(x) and not kw and \
                isinstance(args[1], Number) and args[1] == 0:  # (x as traced: the same x
            self.held[node.out] = ("mask", node, (node.args[0], name))  # once computed)
        elif name in ("ones_like", "zeros_like") and self.tensor(x) and \
                kw.get("dtype", self.dtypes[x.index]) == self.dtypes[x.index] and \
                set(kw) <= {"dtype", "pin_memory"}:
            value = 1.0 if name == "ones_like" else 0.0
            self.held[node.out] = ("select", node, (None, (value,) * 3))
        elif name == "where" and len(args) == 3 and self.tensor(args[0]) and \
                self.held.get(args[0].index, ("",))[0] == "mask":
            return self._where(node, *args)
        else:
            return False
        return True

    def _choices(self, v: Any, x: Ref) -> tuple | None:
        """``v`` as its values where ``sign(x)`` is 1, -1 and 0 (``None``: a tensor)."""
        if not self.tensor(v):
            return (v,) * 3
        kind, _, data = self.held.get(v.index, ("", None, None))
        if kind == "select" and data[0] in (None, x):
            return data[1]
        return None

    def _where(self, node: Any, cond: Ref, a: Any, b: Any) -> bool:
        x, cmp = self.held[cond.index][2]
        ca, cb = self._choices(a, x), self._choices(b, x)
        if ca is not None and cb is not None:
            choices = (ca[0], cb[1], cb[2]) if cmp == "gt" else (cb[0], ca[1], cb[2])
            self.held[node.out] = ("select", node, (x, choices))
            return True
        factors = self.program.tensor_nodes.get(x.index)  # (x as traced)
        if cmp == "lt" and ca is not None and all(map(self._zero, ca)) and factors is not None \
                and factors.func.overloadpacket.__name__ == "mul" and \
                b in map(self.res, factors.args):
            self.alias[node.out] = self._zero_where(x, self.atom(b))
            return True
        return False

    def _zero(self, c: Any) -> bool:
        """Whether a scalar operand is the constant 0."""
        if isinstance(c, Ref):
            const = self.program.values[c.index].const
            return const is not None and bool(const == 0)
        return isinstance(c, Number) and c == 0

    def _sign(self, x: Ref) -> Ref:
        """``sign(x)`` (``x`` as traced), computed once."""
        if x.index not in self.signs:
            self.signs[x.index] = self.emit("sign", (self.atom(self.res(x)),))
        return self.signs[x.index]

    def _zero_where(self, x: Ref, t: Ref) -> Ref:
        """``where(x < 0, 0, t)`` where ``x`` is ``t`` times something (a NaN or infinite ``t``
        makes ``x`` NaN or infinite: not negative where ``t`` is NaN). ``keep = min(sign(x) + 1,
        1)`` (0 where ``x < 0``, else 1) bounds ``t`` to ``±keep / (1 - keep)``: ``±inf``
        (unchanged) or ``±0``; ``t · keep`` would make an infinite ``t`` NaN."""
        keep = self.emit("clamp_max", (self.emit("add_s", (self._sign(x),), self.coef(1)),),
                         self.coef(1))
        bound = self.emit("div", (keep, self.emit("add_s", (self.emit(
            "mul_s", (keep,), self.coef(-1)),), self.coef(1))))
        kept = self.emit("clamp_max", (t, bound))
        return self.emit("clamp_min", (kept, self.emit("mul_s", (bound,), self.coef(-1))))

    def _unhold(self, x: Ref) -> Ref:
        kind, node, data = self.held.pop(x.index)
        if kind == "select" and data[0] is not None:
            # p, n, z at s = 1, -1, 0: z + s (c1 + c2 s), c1 = (p - n) / 2, c2 = (p + n) / 2 - z
            # (exact at s = 0, within an ulp or two of p and n; torch.sign(nan) is 0)
            p, n, z = (self.coef(c) for c in data[1])
            half = self.coef(0.5)
            c1 = _times(_plus(p, _times(n, self.coef(-1))), half)
            c2 = _plus(_times(_plus(p, n), half), _times(z, self.coef(-1)))
            s = self._sign(data[0])
            t = self.emit("add_s", (self.emit("mul_s", (s,), c2),), c1)
            out = self.emit("add_s", (self.emit("mul", (t, s)),), z)
        else:  # (a mask or a fill that another op reads: as traced)
            atoms = tuple(self.atom(a) for a in map(self.res, node.args))
            out = self.emit("each", atoms, dtype=self.program.values[node.out].dtype,
                            func=node.func, kwargs=node.kwargs)
        self.alias[x.index] = out
        return out

    def _lazy(self, name: str, args: tuple, kw: dict) -> list | None:
        """The terms of a sum, product or quotient (``None``: not one)."""
        tensors = [self.tensor(a) for a in args]
        if name in ("add", "sub", "rsub") and len(args) == 2 and set(kw) <= {"alpha"} and all(
                tensors):
            x, y = args[::-1] if name == "rsub" else args
            sign = ONE if name == "add" else self.coef(-1)
            return _sum(self.terms(x), _scaled(self.terms(y),
                                               _times(sign, self.coef(kw.get("alpha", 1)))))
        if name == "neg" and tensors == [True]:
            return _scaled(self.terms(args[0]), self.coef(-1))
        if name not in ("mul", "div") or len(args) != 2 or kw:
            return None
        x, y = args
        if tensors == [True, False]:
            return _scaled(self.terms(x), self.coef(y, 1 if name == "mul" else -1))
        if tensors == [False, True]:
            if name == "mul":
                return _scaled(self.terms(y), self.coef(x))
            t = self.single(y, invertible=True)
            return [Term(_times(_inverse(t.coef), self.coef(x)), t.den, t.num)]
        if tensors == [True, True]:
            a = self.single(x)
            b = self.single(y, invertible=name == "div")
            if name == "mul":
                return [Term(_times(a.coef, b.coef), _sorted(a.num + b.num),
                             _sorted(a.den + b.den))]
            return [Term(_times(a.coef, _inverse(b.coef)), _sorted(a.num + b.den),
                         _sorted(a.den + b.num))]
        return None

    def _direct(self, name: str, args: tuple, kw: dict, out: int, dtype: Any) -> bool:
        """Emits the op as a foreach call where one fits (else ``False``)."""
        tensors = [self.tensor(a) for a in args]
        alpha = kw.get("alpha", 1)
        if name in ("add", "sub", "rsub") and set(kw) <= {"alpha"} and len(args) == 2 and \
                sum(tensors) == 1 and isinstance(alpha, Number) and alpha == 1:
            x, s = args if tensors[0] else args[::-1]
            negate = name == "rsub" if tensors[0] else name == "sub"
            if negate:  # s - x = -x + s, exactly
                x = self.emit("mul_s", (x,), self.coef(-1))
            subtracted = name == "sub" if tensors[0] else name == "rsub"
            self.alias[out] = self.emit("add_s", (x,), _times(self.coef(s), self.coef(
                -1 if subtracted else 1)))
            return True
        if name in ("addcmul", "addcdiv") and all(tensors) and set(kw) <= {"value"}:
            self.alias[out] = self.emit(name, args, self.coef(kw.get("value", 1)))
            return True
        if name == "lerp" and tensors[:2] == [True, True] and not kw:
            w = args[2]
            self.alias[out] = (self.emit("lerp", args) if self.tensor(w) else
                               self.emit("lerp", args[:2], self.coef(w)))
            return True
        if name in _UNARY and tensors == [True] and not kw:
            self.alias[out] = self.emit(name, args)
            return True
        if name in ("maximum", "minimum") and tensors[0] and not kw:
            self.alias[out] = (self.emit(name, args) if tensors[1] else self.emit(
                "clamp_min" if name == "maximum" else "clamp_max", args[:1], self.coef(args[1])))
            return True
        if name in ("clamp", "clamp_min", "clamp_max") and tensors[0] and not any(
                tensors[1:]) and not kw:
            bounds = {"clamp": args[1:3], "clamp_min": args[1:2], "clamp_max": (None,) +
                      args[1:2]}[name]
            x = args[0]
            for bound, op in zip(bounds, ("clamp_min", "clamp_max")):
                if bound is not None:
                    x = self.emit(op, (x,), self.coef(bound))
            if x is args[0]:
                return False
            self.alias[out] = x
            return True
        if name == "pow" and tensors == [True, False] and isinstance(args[1], Number) and \
                not kw:
            self.alias[out] = self.emit("pow", args[:1], self.coef(args[1]))
            return True
        return False


def _value(env: list, coef: tuple) -> float:
    """The value of a coefficient (float64, as Python computes)."""
    total = 0.0
    for literal, factors in coef:
        r = literal
        for x, e in factors:
            v = env[x.index]
            v = float(v.item() if isinstance(v, torch.Tensor) else v)
            r = r * v if e == 1 else r / v ** -e
        total += r
    return total


class _Code(Emitter):
    """Foreach code for a list of :class:`IR` calls."""

    def __init__(self, lowering: _Lowering, owned: tuple, dtype: torch.dtype,
                 numbers: bool) -> None:
        super().__init__(lowering, owned)
        self.dtype, self.numbers = dtype, numbers

    def number(self, coef: tuple) -> str:
        return self.bind(lambda env: _value(env, coef))

    def tensor0d(self, coef: tuple) -> str:
        """A 0-d tensor of the lists' dtype (cached: the foreach kernels' fast overload on the
        CPU; the value rounded to that dtype, as each leaf's op rounds it); with ``numbers``,
        the number itself (on a GPU a CPU tensor sends each tensor to a kernel of its own; a
        number takes the one-launch path, which rounds it to the lists' float32 or float64 as
        each leaf's op does)."""
        if self.numbers:
            return self.number(coef)
        dtype = self.dtype
        return self.bind(lambda env: constant(_value(env, coef), dtype))

    def emit(self, op: IR, i: int, last: dict) -> None:
        def free(x):
            return self.free(x, i, last, self.low.dtypes[op.out])

        args = op.args
        if op.name == "each":
            return self.each(op.func, op.args, op.kwargs, op.out)
        if op.name in _COMMUTATIVE and len(args) == 2 and op.coef == ONE and \
                not free(args[0]) and free(args[1]):
            args = args[::-1]
        extra = []
        if op.name in ("add", "addcmul", "addcdiv") and op.coef != ONE:
            extra = [("alpha=" if op.name == "add" else "value=") + self.number(op.coef)]
        elif op.name in ("lerp", "clamp_min", "clamp_max", "pow") and \
                len(op.args) == (2 if op.name == "lerp" else 1):
            extra = [self.number(op.coef)]
        elif op.name == "mul_s":
            extra = [self.tensor0d(op.coef)]
        elif op.name == "add_s":
            extra = [f"[{self.tensor0d(op.coef)}] * len(@)"]
        name = {"mul_s": "mul", "add_s": "add"}.get(op.name, op.name)
        names = [self.home[a.index] for a in args]
        call = ", ".join(names + [e.replace("@", names[0]) for e in extra])
        self.foreach(name, call, op.out, free(args[0]), args[0])


def compile_plan(program: Program, env: list, owned: tuple, dtype: torch.dtype,
                 numbers: bool) -> Any:
    """``(run, operands)`` for :meth:`Program.plan`, or ``False`` where the tensor outputs
    are not all tensors of ``dtype`` computed from the tensor inputs."""
    alias = {n.out: n.args[1] if env[n.args[0].index] else n.args[2]
             for n in program.wheres}
    special = {i: env[i] for i in program.coefficients if _special(env[i]) is not None}
    low = _Lowering(program, alias, {}, special)
    targets = program.targets
    outs = {slot: low.res(r) for slot, r in enumerate(program.outputs)
            if targets[slot] is not None}
    if any(not low.tensor(r) or program.values[r.index].dtype != dtype for r in outs.values()):
        return False  # (e.g. a state filled from a scalar at a first step)
    needed, stack = set(), [r.index for r in outs.values()]
    nodes = program.tensor_nodes
    while stack:
        j = stack.pop()
        if j in needed or j not in nodes or j in alias:
            continue
        needed.add(j)
        stack += [a.index for a in map(low.res, (*nodes[j].args, *nodes[j].kwargs.values()))
                  if low.tensor(a)]
    order = [n for j, n in nodes.items() if j in needed]
    for n in order:
        for a in map(low.res, (*n.args, *n.kwargs.values())):
            if low.tensor(a):
                low.uses[a.index] = low.uses.get(a.index, 0) + 1
    for r in outs.values():
        low.uses[r.index] = low.uses.get(r.index, 0) + 1
    try:
        for n in order:
            low.lower(n)
    except _NoPlan:
        return False
    outs = {slot: low.atom(low.res(r)) for slot, r in outs.items()}
    last = {}
    for i, op in enumerate(low.ir):
        for a in (*op.args, *(op.kwargs or {}).values()):
            if low.tensor(a):
                last[a.index] = i
    for r in outs.values():
        last[r.index] = len(low.ir)
    code = _Code(low, owned, dtype, numbers)
    for k in range(program.n_inputs):
        if program.kind(Ref(k)) == TENSOR:
            code.home[k] = f"a{k}"
    for i, op in enumerate(low.ir):
        code.emit(op, i, last)
    return code.finish(program, {f"a{targets[slot]}": code.home[r.index]
                                 for slot, r in outs.items()})

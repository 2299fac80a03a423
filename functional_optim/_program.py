"""A pointwise rule traced once, leaf by leaf, and run as a straight-line foreach program.

The blocked steps (:mod:`functional_optim._blocked`) run an alias's own chain, not a second copy
of its math: :func:`trace` records the aten ops of one per-leaf update (the chain's pure path, on
a one-element tree of tiny tensors, hyperparameters as 0-d tensors) and :class:`Program` splits
them into

- the *scalar* part, which depends on the hyperparameters and the 0-d state only (step counts,
  bias corrections, NAdam's ``mu_product``): evaluated once per step and group of parameters
  that share those values (:meth:`Program.scalars`), on Python numbers where that gives torch's
  float64/int64 digits (IEEE double arithmetic, C ``pow``), on 0-d tensors otherwise;
- the *tensor* part, the pointwise ops on the leaf's tensors: compiled, for the values the
  scalar part took (a ``where`` on a scalar condition picks a branch, the other is not run),
  into a Python function of ``torch._foreach_*`` calls (:meth:`Program.plan`) that runs on any
  list of leaves, a cache-sized block at a time.

The compilation is what torch.optim's hand-written foreach steps do by hand: an op whose
operand dies there and is a temporary or donated state runs in place; ``x + a * b``,
``x + a / b`` and ``x + s * y`` become one ``addcmul``, ``addcdiv`` or ``add(alpha=s)``; the new
parameter and state end in the old tensors. So the numbers are the chain's up to those fused
ops' rounding (tested against the chain and torch.optim). A rule whose tensor part is not
pointwise (a reduction, a value read on the host) has no program: :func:`trace` returns ``None``
and the chain runs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from numbers import Number
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._foreach import constant

__all__ = ["Program", "trace"]

aten = torch.ops.aten
TENSOR, SCALAR, CONST = "tensor", "scalar", "const"


class Ref(NamedTuple):
    """A traced value: an input (the first ``n_inputs``) or an op's result, by index."""

    index: int


class Value(NamedTuple):
    kind: str  # TENSOR (from a leaf-shaped input), SCALAR (0-d inputs only) or CONST
    dtype: torch.dtype
    const: Any = None  # a CONST's tensor


class Node(NamedTuple):
    func: Any  # the aten overload
    args: tuple  # Ref for traced tensors, else literals
    kwargs: dict
    out: int


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append((func, args, kwargs or {}, out))
        return out


_ALIASES = {aten.detach.default, aten.alias.default, aten.lift_fresh.default}


class _Device:
    """Where a traced factory's ``meta`` device stands: the leaf's device at run time."""


DEVICE = _Device()


def recorded(fn: Callable, inputs: list[torch.Tensor], kinds: list[str],
             classify: Callable[[set, torch.Tensor], str | None]) -> tuple | None:
    """``(values, shapes, nodes, outputs)``: the aten ops of ``fn(*inputs) -> list of tensors``
    as :class:`Node` s on :class:`Ref` s (inputs first; ``kinds[k]``: input ``k``'s kind; a
    0-d tensor made before, a cached constant, a ``CONST``), or ``None`` where a value is read
    on the host, an op writes in place, draws random numbers or takes a tensor list, or
    ``classify(kinds among its operands, result)`` gives a result no kind (``None``). A
    ``meta`` device among the arguments (a factory on a traced leaf's device) becomes
    :data:`DEVICE`."""
    recorder = _Recorder()
    with torch.no_grad(), recorder:
        outputs = fn(*inputs)
    values = [Value(kind, x.dtype) for kind, x in zip(kinds, inputs)]
    shapes = [tuple(x.shape) for x in inputs]
    ids = {id(x): Ref(k) for k, x in enumerate(inputs)}
    nodes = []

    def ref(x: Any) -> Any:
        if isinstance(x, torch.device) and x.type == "meta":
            return DEVICE
        if not isinstance(x, torch.Tensor):
            return x
        r = ids.get(id(x))
        if r is None:  # a tensor made before the trace (a cached constant)
            if x.ndim or x.is_meta:
                raise _NotPointwise
            r = ids[id(x)] = Ref(len(values))
            values.append(Value(CONST, x.dtype, x))
            shapes.append(())
        return r

    try:
        for func, args, kwargs, out in recorder.calls:
            if func in _ALIASES and isinstance(args[0], torch.Tensor):
                ids[id(out)] = ref(args[0])
                continue
            if not isinstance(out, torch.Tensor) or func._schema.is_mutable or \
                    torch.Tag.nondeterministic_seeded in func.tags or any(
                    isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a)
                    for a in args):
                return None  # a value read on the host, an in-place op, random numbers (a
                # program would draw them per block, not as the chain does), a tensor list
            a = tuple(map(ref, args))
            kw = {k: ref(v) for k, v in kwargs.items()}
            kind = classify({values[r.index].kind for r in (*a, *kw.values())
                             if isinstance(r, Ref)}, out)
            if kind is None:
                return None
            ids[id(out)] = Ref(len(values))
            values.append(Value(kind, out.dtype, out if kind == CONST else None))
            shapes.append(tuple(out.shape))
            if kind != CONST:
                nodes.append(Node(func, a, kw, len(values) - 1))
        return values, shapes, nodes, [ref(x) for x in outputs]
    except _NotPointwise:
        return None


def trace(fn: Callable, inputs: list[torch.Tensor], kinds: list[str],
          targets: list[int | None]) -> Program | None:
    """The program of ``fn(*inputs) -> list of tensors`` (one per output slot), or ``None``
    where it is not a pointwise rule. ``kinds[k]``: ``TENSOR`` for an input shaped like the
    leaf (the first input), ``SCALAR`` for a 0-d one. ``targets[j]``: the input whose tensors
    receive output ``j`` (``None``: a scalar output, read with :meth:`Program.output`)."""
    shape = inputs[0].shape

    def classify(found: set, out: torch.Tensor) -> str | None:
        kind = TENSOR if TENSOR in found else SCALAR if SCALAR in found else CONST
        if kind == TENSOR and out.shape != shape or kind != TENSOR and out.ndim:
            return None  # a reduction, a broadcast: not pointwise
        return kind

    got = recorded(fn, inputs, kinds, classify)
    if got is None:
        return None
    values, _, nodes, outputs = got
    return Program(values, nodes, outputs, len(inputs), targets)


class _NotPointwise(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The scalar part, on Python numbers where they give torch's digits

_NUMBERS = (torch.float64, torch.float32, torch.int64, torch.bool)
"""The dtypes whose 0-d values the scalar part keeps as Python numbers (exactly)."""
_FLOATS = {torch.float64: "float", torch.float32: "_f32"}
"""How Python rounds a result to each dtype: a float64 result of ``+ - * /`` on values of that
dtype is rounded once more to float32 (the double rounding is exact for these operations:
53 >= 2 * 24 + 2 bits), as torch's float32 kernel computes it."""
_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">", "lt": "<", "ge": ">=",
          "le": "<=", "eq": "==", "ne": "!="}
_COMPARE = ("gt", "lt", "ge", "le", "eq", "ne")


def _python(node: Node, values: list, numeric: list, literal: Callable[[Any], str]
            ) -> str | None:
    """Python source for the node's value from Python numbers (``e[i]``: value ``i``), or
    ``None`` where that might not give torch's digits: float64 results of powers (C ``pow``, as
    torch's kernel) and ``reciprocal``; float64 and float32 results of the four operations (on
    operands of that dtype), casts and ``where``; int64 sums and products; comparisons of
    float64 or int values. (Not ``sqrt``: torch's float64 ``sqrt`` is not always the correctly
    rounded one that ``math.sqrt`` gives, e.g. of 206082 on an AMD EPYC. Python raises where
    torch would give inf or nan: :meth:`Program.scalars` then runs torch.)"""
    name = node.func.overloadpacket.__name__
    out = values[node.out].dtype
    if out not in _NUMBERS or node.kwargs.get("alpha", 1) != 1:
        return None
    args, ints, dtypes = [], [], set()
    for a in node.args:
        if isinstance(a, Ref):
            if not numeric[a.index]:
                return None
            args.append(f"e[{a.index}]")
            ints.append(values[a.index].dtype == torch.int64)
            dtypes.add(values[a.index].dtype)
        elif isinstance(a, Number) and not isinstance(a, complex):
            args.append(literal(a) if out != torch.float32 or isinstance(a, bool) else
                        f"_f32({literal(a)})")  # (a number meets a float32 value as float32)
            ints.append(isinstance(a, int))
        else:
            return None
    rounded = _FLOATS.get(out)
    kw = {k: v for k, v in node.kwargs.items() if k != "alpha"}
    if name == "rsub" and len(args) == 2:
        name, args, ints = "sub", args[::-1], ints[::-1]
    if name == "where" and rounded and len(args) == 3:
        return f"{rounded}(float({args[1]}) if {args[0]} else float({args[2]}))"
    if name == "_to_copy" and rounded and kw == {"dtype": out}:
        return f"{rounded}(float({args[0]}))"
    if kw:
        return None
    if node.func in (aten.pow.Scalar, aten.pow.Tensor_Tensor) and out == torch.float64:
        return f"_real(float({args[0]}) ** float({args[1]}))"
    if name == "reciprocal" and out == torch.float64:
        return f"(1.0 / float({args[0]}))"
    if name in _COMPARE and len(args) == 2:
        dtypes = {values[a.index].dtype for a in node.args if isinstance(a, Ref)}
        exact = dtypes == {torch.float64} or all(ints)
        return f"({args[0]} {_INFIX[name]} {args[1]})" if exact else None
    if name == "neg" and len(args) == 1:
        return f"(-float({args[0]}))" if out == torch.float64 else \
            f"(-{args[0]})" if all(ints) and out == torch.int64 else None
    if name not in ("add", "sub", "mul", "div") or len(args) != 2:
        return None
    if out == torch.float64 or out == torch.float32 and dtypes <= {torch.float32}:
        return f"{rounded}(float({args[0]}) {_INFIX[name]} float({args[1]}))"
    if out == torch.int64 and name != "div" and all(ints):
        return f"_i64({args[0]} {_INFIX[name]} {args[1]})"
    return None


def _f32(x: float) -> float:
    """``x`` rounded to float32 (``OverflowError`` past its range, where torch gives inf)."""
    return _F32.unpack(_F32.pack(x))[0]


_F32 = struct.Struct("f")


def _real(r: Any) -> float:
    if not isinstance(r, float):
        raise ValueError(r)  # (Python's pow left the reals: torch gives nan)
    return r


def _i64(r: int) -> int:
    if not -(1 << 63) <= r < 1 << 63:
        raise OverflowError(r)  # (torch's int64 wraps around)
    return r


def _torch(node: Node, values: list) -> Callable[[list], Any]:
    """The node's value computed by its op on 0-d tensors (a Python number where its dtype is
    one of :data:`_NUMBERS`)."""

    def operand(a: Any) -> Callable[[list], Any]:
        if not isinstance(a, Ref):
            return lambda e: a
        dtype = values[a.index].dtype
        return lambda e: _as_tensor(e[a.index], dtype)

    args = [operand(a) for a in node.args]
    kwargs = {k: operand(v) for k, v in node.kwargs.items()}
    number = values[node.out].dtype in _NUMBERS

    def run(e: list) -> Any:
        r = node.func(*(f(e) for f in args), **{k: f(e) for k, f in kwargs.items()})
        return r.item() if number else r

    return run


def _special(v: Any) -> Any:
    """``v`` where it is the number 1 (which a plan may bake in), else ``None``."""
    return v if type(v) in (int, float) and v == 1 else None


def _as_tensor(v: Any, dtype: torch.dtype) -> Any:
    """A number as a 0-d CPU tensor of ``dtype`` (made once for each value: only read), a
    tensor as it is."""
    if type(v) in (int, float, bool):
        return constant(v, dtype)
    return torch.tensor(v, dtype=dtype) if isinstance(v, Number) else v


class Program:
    """A traced rule (see the module docstring): ``values`` (inputs first), ``nodes`` in
    order, ``outputs`` (a :class:`Ref` per output slot)."""

    def __init__(self, values: list, nodes: list, outputs: list, n_inputs: int,
                 targets: list) -> None:
        self.values, self.outputs, self.n_inputs = values, outputs, n_inputs
        self.targets = targets
        self.consts = [v.const.item() if v.kind == CONST and v.const.dtype in _NUMBERS
                       else v.const for v in values[n_inputs:]]
        self.scalar_nodes = [n for n in nodes if values[n.out].kind == SCALAR]
        self.tensor_nodes = {n.out: n for n in nodes if values[n.out].kind == TENSOR}
        self._plans: dict = {}
        self._compile_scalars()
        self.wheres = [n for n in self.tensor_nodes.values() if n.func is aten.where.self and
                       self.kind(n.args[0]) == SCALAR]
        """The ``where`` ops on a scalar condition: each plan takes one branch of each."""
        self.coefficients = sorted({a.index for n in self.tensor_nodes.values()
                                    for a in (*n.args, *n.kwargs.values())
                                    if isinstance(a, Ref) and values[a.index].kind == SCALAR})
        """The scalars that tensor ops read."""
        self.read = {a.index for n in nodes for a in (*n.args, *n.kwargs.values())
                     if isinstance(a, Ref) and a.index < n_inputs}
        """The inputs that an op reads (others at most pass through to an output)."""
        self._advances: dict = {}
        self._inputs_of: dict = {}  # a scalar's value: the inputs it depends on
        for n in self.scalar_nodes:
            self._inputs_of[n.out] = set().union(*(
                {a.index} if a.index < n_inputs else self._inputs_of.get(a.index, set())
                for a in (*n.args, *n.kwargs.values()) if isinstance(a, Ref)))

    def kind(self, x: Any) -> str | None:
        return self.values[x.index].kind if isinstance(x, Ref) else None

    def scalars(self, inputs: list) -> list:
        """The values of every scalar and constant (``inputs``: the scalar inputs' values,
        ``None`` at tensor inputs): Python numbers or 0-d tensors."""
        env = list(inputs) + self.consts
        try:
            self._fast(env)
        except (ArithmeticError, ValueError):  # (Python raised where torch gives inf or nan)
            for node, run in zip(self.scalar_nodes, self._slow):
                env[node.out] = run(env)
        return env

    def _compile_scalars(self) -> None:
        numeric = [v.kind == SCALAR or v.kind == CONST and v.dtype in _NUMBERS
                   for v in self.values]
        literals: list = []

        def literal(x: Any) -> str:
            literals.append(x)
            return f"C[{len(literals) - 1}]"

        self._slow = [_torch(node, self.values) for node in self.scalar_nodes]
        lines = []
        for k, node in enumerate(self.scalar_nodes):
            expr = _python(node, self.values, numeric, literal)
            numeric[node.out] = self.values[node.out].dtype in _NUMBERS
            lines.append(f"    e[{node.out}] = {expr or f'S[{k}](e)'}\n")
        source = "def scalars(e):\n" + ("".join(lines) or "    pass\n")
        namespace = {"C": literals, "S": self._slow, "_real": _real, "_i64": _i64,
                     "_f32": _f32, "float": float}
        exec(compile(source, "<functional_optim scalars>", "exec"), namespace)  # noqa: S102
        self._fast = namespace["scalars"]

    def output(self, slot: int, env: list) -> Any:
        """A scalar output's value."""
        return env[self.outputs[slot].index]

    def unchanged(self, slot: int, k: int) -> bool:
        """Whether output ``slot`` is input ``k`` as it came."""
        return self.outputs[slot] == Ref(k)

    def advances(self, slot: int, k: int) -> bool:
        """Whether output ``slot`` is input ``k`` plus one and no other value depends on that
        input: a step count the rule only advances (RMSprop's, Adadelta's), whose new value
        needs no number read on the host (``counts + 1``, one foreach kernel on any device)."""
        if (slot, k) not in self._advances:
            out = self.outputs[slot].index
            node = next((n for n in self.scalar_nodes if n.out == out), None)
            others = [self._inputs_of.get(r.index, set()) for r in self.outputs
                      if r.index != out]
            others += [{c} if c < self.n_inputs else self._inputs_of.get(c, set())
                       for c in self.coefficients]
            self._advances[slot, k] = node is not None and node.func is aten.add.Tensor and \
                node.args == (Ref(k), 1) and not node.kwargs and \
                not any(k in inputs for inputs in others)
        return self._advances[slot, k]

    def plan(self, env: list, owned: tuple[int, ...], dtype: torch.dtype,
             numbers: bool = False, exact: bool = False) -> tuple[Callable, tuple] | None:
        """``(run, k)``: ``run(lists, k)`` computes the tensor outputs in place on ``lists``
        (one list per input, ``None`` at scalars), for the scalar values ``env``; inputs
        ``owned`` may be overwritten (the parameters, donated state). With nothing owned,
        ``run`` leaves its inputs alone and returns the tensor outputs' new lists instead (in
        slot order; an unchanged input's own list; the same ops, so the same digits). ``None``:
        a tensor op that does not keep ``dtype``. ``numbers``: the scalar operands of the
        foreach kernels are Python numbers (for lists on a GPU), not cached CPU 0-d tensors.
        ``exact``: op for op (:mod:`functional_optim._program_exact`), with nothing owned.

        A plan holds for the branches its ``where`` ops take and for which of the scalars
        that the tensor ops read are exactly 1 (a plan drops a multiplication by 1, and the
        terms that then cancel: ASGD's average is a copy while its ``mu`` is 1, as
        torch.optim runs it); other values are read from ``env`` at each call."""
        where = tuple(bool(env[n.args[0].index]) for n in self.wheres)
        key = (where, tuple(map(_special, map(env.__getitem__, self.coefficients))), owned,
               dtype, numbers, exact)
        compiled = self._plans.get(key)
        if compiled is None:
            compiled = self._plans[key] = (
                _compile_exact(self, env, dtype) if exact else
                _compile(self, env, owned, dtype, numbers))
        if compiled is False:
            return None
        run, operands = compiled
        return run, tuple(bind(env) for bind in operands)


from ._program_code import compile_plan as _compile  # noqa: E402
from ._program_exact import compile_exact as _compile_exact  # noqa: E402



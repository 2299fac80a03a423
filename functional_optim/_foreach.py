"""Run an update rule over many tensors at once with ``torch._foreach_*`` kernels.

:class:`TensorList` behaves like one tensor inside a rule: arithmetic and the torch functions the
rules use map to one ``torch._foreach_*`` call for the whole list (any other torch function maps
element by element). So a rule written once, as math on a tensor, runs per leaf (pure, for
``vmap``/``grad``/``compile``) or over a list of leaves (eager speed), and gives the same numbers:
on CPU the foreach kernels call the same per-tensor operators.

*Reusing memory.* Out-of-place kernels allocate a fresh buffer for every result; on CPU that costs
about as much as the arithmetic. So an op runs in place (``torch._foreach_*_``) on its first operand
when that operand is

- a temporary: a fresh result of an earlier op that no name refers to any more (Python's reference
  count says so), e.g. the ``sqrt(...)`` in ``sqrt(v) * c + eps``; or
- *donated* state: the stateful adapter owns its state buffers and replaces them with the rule's
  results, so a rule that opts in (``elementwise(..., donate_state=True)``) may update its state in
  place, as torch.optim does. A donated list is consumed by its first in-place update: reading it
  again raises, which the tests of every opting-in rule would catch.

Values are the same either way (the in-place kernels compute the same thing).
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable
from numbers import Number
from typing import Any

import torch

__all__ = ["TensorList"]


_NAMED = 1 << 30
_UNKNOWN = object()
_CPU = torch.device("cpu")
# sys.getrefcount of an operand that only the expression being evaluated refers to, as seen by
# TensorList._binary (from a dunder method), and the extra references the __torch_function__
# route adds; measured on this interpreter by _calibrate() at import
_TEMPORARY_REFS = -1
_FUNCTION_EXTRA_REFS = 0


_HALVES = (torch.bfloat16, torch.float16)
_FLOATS = (torch.float32, torch.float64, *_HALVES)
_TENSOR_OVERLOADS = ("add", "mul", "div")  # foreach ops with a one-0-d-tensor overload
_LIST_OVERLOADS = ("add", "sub")
"""Ops whose one-0-d-tensor form is slower on CPU than the same tensor once per element (a
list: 30 µs instead of 68 for 32 tensors of 4096 floats); the same numbers."""
_NUMBER_AS_TENSOR = ("add", "sub", "mul", "div")
"""Ops whose Python-number form wraps the number in a new tensor per element on CPU (2 µs per
element): on a floating-point CPU list a number becomes a 0-d tensor of the dtype the kernel
rounds it to (the list's; float32 for bfloat16 and float16, whose kernels compute in float32):
the same numbers as each leaf's op with the number (torch's in-place ``_foreach_mul_`` with a
number rounds it to bfloat16 instead)."""


_CONSTANTS: dict = {}


def constant(value: float, dtype: torch.dtype) -> torch.Tensor:
    """``value`` as a 0-d CPU tensor of ``dtype``, made once for each value (a rule's numbers
    recur every step; creating the tensor costs as much as a foreach kernel's Python call). The
    cached tensors are only read, as kernel operands."""
    key = (value, dtype, math.copysign(1.0, value))  # (-0.0 and 0.0 are equal keys otherwise)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        if len(_CONSTANTS) >= 1024:  # (a schedule's new value every step: bounded)
            _CONSTANTS.clear()
        tensor = _CONSTANTS[key] = torch.tensor(value, dtype=dtype)
    return tensor


def _keeps_dtype(target: TensorList, other: Any) -> bool:
    """Whether ``target op other`` has ``target``'s dtype (so it may be computed in place)."""
    if isinstance(other, TensorList):
        return other.dtype == target.dtype or other.scalar
    if isinstance(other, torch.Tensor):
        return other.ndim == 0
    return isinstance(other, Number) and not isinstance(other, complex)


def _items(x: Any, n: int) -> list:
    return x.items if isinstance(x, TensorList) else [x] * n


class TensorList:
    """A list of tensors of one device and dtype that a rule treats as one tensor.

    A list of 0-d tensors (per-leaf step counts, bias corrections) is kept stacked in one 1-d
    tensor, so scalar arithmetic on it is one small kernel, not one per leaf. On the CPU, a list
    of int64 or float64 0-d tensors that all hold one value (the counts of parameters stepped
    together) computes with that value as a Python number (:meth:`_number_op`): the same IEEE
    double arithmetic and C ``pow`` as torch's 0-d kernels (unary functions run torch's 0-d
    kernel on it), without a kernel per op; it becomes tensors again where a tensor is needed
    (:func:`_number_list`).
    """

    __slots__ = ("_items", "_stacked", "_fresh", "_donated", "_consumed", "_scalar", "_value",
                 "_number", "_shape")

    def __init__(self, items: list | None = None, stacked: torch.Tensor | None = None, *,
                 fresh: bool = False, donated: bool = False):
        self._items = None if items is None else list(items)
        self._stacked = stacked
        self._fresh = fresh  # its tensors were allocated by an op and belong to nobody else
        self._donated = donated
        self._consumed = False
        self._scalar = None
        self._value = _UNKNOWN  # (uniform()'s answer, once asked)
        self._number = _UNKNOWN  # (its one value as a Python number, once asked)
        self._shape = None  # (a number list's length and dtype)

    @property
    def items(self) -> list:
        if self._consumed:
            raise RuntimeError(
                "TensorList: a donated state was read after its in-place update; a rule that "
                "passes donate_state=True must read each old state once"
            )
        if self._items is None:
            self._items = list(self.stacked.unbind())
        return self._items

    def _reusable(self, refs: int) -> bool:
        """Whether an op may overwrite this list (``refs``: its reference count at the op)."""
        return (self._donated or (self._fresh and refs <= _TEMPORARY_REFS)) and \
            self._stacked is None and not self.scalar

    def _reused(self, items: list) -> TensorList:
        """The result of an in-place op on this list (which is consumed if it was donated)."""
        out = TensorList(items, fresh=True)
        self._consumed = self._donated
        return out

    @property
    def donated(self) -> bool:
        """Whether its tensors are a donated state, which ops may overwrite."""
        return self._donated

    @property
    def scalar(self) -> bool:
        """Whether every element is 0-d (then :attr:`stacked` is cheap)."""
        if self._scalar is None:
            self._scalar = self._stacked is not None or not (  # (the first decides, mostly)
                self._items[0].ndim or any([x.ndim for x in self._items]))
        return self._scalar

    @property
    def stacked(self) -> torch.Tensor:
        if self._stacked is None:
            if self._items is None:  # (a number list)
                n, dtype = self._shape
                self._stacked = torch.full((n,), self._number, dtype=dtype)
            else:
                self._stacked = torch.stack(self._items)
        return self._stacked

    def __len__(self) -> int:
        if self._shape is not None:
            return self._shape[0]
        return len(self._items) if self._items is not None else self._stacked.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        if self._shape is not None:
            return self._shape[1]
        return self._stacked.dtype if self._stacked is not None else self._items[0].dtype

    @property
    def device(self) -> torch.device:
        if self._shape is not None:
            return _CPU
        return self._stacked.device if self._stacked is not None else self._items[0].device

    def is_complex(self) -> bool:
        return self.dtype.is_complex

    def __getattr__(self, name: str) -> Any:
        """Any other tensor attribute: a method maps over the elements; a property must be the
        same for every element (the executor groups leaves by dtype, device and ``ndim``)."""
        if name.startswith("_"):
            raise AttributeError(name)
        values = [getattr(x, name) for x in self.items]
        if callable(values[0]):
            def method(*args: Any, **kwargs: Any) -> Any:
                out = [v(*args, **kwargs) for v in values]
                return TensorList(out) if isinstance(out[0], torch.Tensor) else out
            return method
        if any(v != values[0] for v in values[1:]):
            raise AttributeError(f"TensorList: {name!r} differs between elements")
        return values[0]

    def to(self, *args: Any, **kwargs: Any) -> TensorList:
        if (args == (torch.float64,) and not kwargs or not args and kwargs == {
                "dtype": torch.float64}) and self.scalar:
            a = self._number_value()
            if a is not None and abs(a) < 1 << 53:  # (exact in float64)
                return _number_list(float(a), len(self), torch.float64)
        if self.scalar:
            return TensorList(stacked=self.stacked.to(*args, **kwargs))
        return TensorList([x.to(*args, **kwargs) for x in self.items])

    # -- arithmetic: one foreach call where torch has one, else element by element ---------

    def uniform(self) -> torch.Tensor | None:
        """The one value of a list of CPU 0-d tensors that are all equal (per-leaf step counts
        and bias corrections, unless some parameters skipped steps), as a 0-d tensor; else
        ``None``. Applied to many tensors, that one value takes the single-tensor overload of
        the foreach kernels instead of one 0-d operand per leaf: the same numbers, a third of
        the per-leaf cost. (Not on accelerators: the check would be a host sync; not for
        DTensors and other subclasses, whose values are local shards or partial sums.)"""
        if self._value is _UNKNOWN and self._shape is not None:  # (a number list)
            self._value = torch.tensor(self._number, dtype=self._shape[1])
        if self._value is _UNKNOWN:
            self._value = None
            sample = self._stacked if self._items is None else self._items[0]
            stacked = self.stacked if type(sample) is torch.Tensor else None
            if stacked is not None and stacked.device.type == "cpu" and stacked.shape[0]:
                first = stacked[0]
                self._value = first if bool(torch.all(stacked == first)) else None
        return self._value

    def _number_value(self) -> Number | None:
        """The one value of a CPU list of int64 or float64 0-d tensors as a Python number, else
        ``None`` (values differ: some parameters skipped steps)."""
        if self._number is _UNKNOWN:
            self._number = None
            if self.scalar and self.dtype in _NUMBER_DTYPES and self.device.type == "cpu" \
                    and len(self):
                value = self.uniform()
                if value is not None:
                    self._number = value.item()
        return self._number

    def _number_op(self, name: str, other: Any, reverse: bool = False) -> TensorList | None:
        """``self op other`` (``other op self`` if ``reverse``) on Python numbers, where both
        are numbers (:meth:`_number_value`, or a Python int or float) and torch's result is
        float64 (or int64: ints added or subtracted), as a number list; else ``None`` (also
        where Python raises or leaves the reals: torch's tensors give inf and nan there)."""
        if isinstance(other, TensorList):
            if len(other) != len(self):
                return None
            b, other_dtype = other._number_value(), other.dtype
        elif isinstance(other, Number) and not isinstance(other, (bool, complex)):
            b, other_dtype = other, None
        else:
            return None
        a = self._number_value()
        if a is None or b is None or name not in _NUMBER_OPS or torch.bool in (
                self.dtype, other_dtype):
            return None  # (bools: torch's arithmetic on them is not Python's)
        dtype = self.dtype
        if other_dtype is not None and other_dtype != dtype:
            dtype = torch.float64  # (int64 with float64)
        if dtype == torch.int64 and not (name in ("add", "sub") and isinstance(b, int)):
            return None  # (torch's int64 division and float products take other dtypes)
        if name == "pow" and not reverse and other_dtype is None:  # (tensor ** number takes
            # other kernels for some exponents, 0.5 its sqrt: the 0-d one, as on each leaf)
            r = torch.pow(torch.tensor(a, dtype=dtype), b).item()
            return _number_list(r, len(self), dtype)
        try:
            r = _NUMBER_OPS[name](b, a) if reverse else _NUMBER_OPS[name](a, b)
        except (ZeroDivisionError, OverflowError):
            return None
        if isinstance(r, complex) or dtype == torch.int64 and not -(1 << 63) <= r < 1 << 63:
            return None
        return _number_list(float(r) if dtype == torch.float64 else r, len(self), dtype)

    def _pow_of_scalars(self, other: Any, reverse: bool) -> TensorList:
        """``self ** other`` (``other ** self`` if ``reverse``) for 0-d values, as each leaf's own
        0-d ``pow`` gives it: on the CPU the kernel's vector loop (a long enough list) computes
        another ``pow`` than its scalar loop, an ulp apart at some exponents (``0.999 ** 32``),
        so the one value of uniform lists is raised once, other lists element by element."""
        n, fn = len(self), (lambda x, y: torch.pow(y, x)) if reverse else torch.pow
        a = self.uniform()
        b = other.uniform() if isinstance(other, TensorList) else other
        if a is not None and b is not None:
            return TensorList(stacked=fn(a, b).expand(n).clone())
        return TensorList(stacked=torch.stack([fn(x, y) for x, y in zip(self.items, _items(
            other, n))]))

    def _binary(self, name: str, other: Any, reverse: bool = False,
                refs: int = _NAMED) -> TensorList:
        if self.scalar:
            result = self._number_op(name, other, reverse)
            if result is not None:
                return result
        elif (name in _NUMBER_AS_TENSOR and isinstance(other, TensorList) and not reverse
              and self.dtype in (torch.float32, torch.float64)):
            value = other._number_value()
            if value is not None and other.dtype != torch.bool:  # (a cached 0-d tensor, below)
                other = value
        if isinstance(other, TensorList) and other.scalar and not self.scalar and (
                name in _TENSOR_OVERLOADS or name in _NUMBER_AS_TENSOR and not reverse
                and self.device.type != "cpu"):
            value = other.uniform()
            if value is not None:  # in the dtype the kernel would compute in per leaf: this
                # list's (float32 for bfloat16 and float16, whose kernels compute in float32)
                floating = self.dtype.is_floating_point or self.dtype.is_complex
                dtype = torch.float32 if self.dtype in _HALVES else self.dtype
                other = value.to(dtype) if floating and not value.is_complex() else value
        if isinstance(other, torch.Tensor) and other.ndim == 0 and other.is_cpu and \
                name in _NUMBER_AS_TENSOR and not (reverse or self.scalar) and \
                self.device.type != "cpu":
            # On a GPU the foreach kernels take their fast path (one launch for many tensors)
            # with a number or a 0-d tensor on the list's device; a CPU 0-d tensor, or a list of
            # them, sends each tensor to a kernel of its own (torch's slow path). So a CPU 0-d
            # operand (a CPU tensor hyperparameter, a coefficient of float32 counts on the CPU)
            # goes as its value: read on the host, no sync; the value the kernel would read.
            other = other.item()
        if not reverse and name in _NUMBER_AS_TENSOR and isinstance(other, Number) and not \
                isinstance(other, (bool, complex)) and not self.scalar and \
                self.dtype in _FLOATS and self.device.type == "cpu":
            other = constant(other, torch.float32 if self.dtype in _HALVES else self.dtype)
        if name in _LIST_OVERLOADS and isinstance(other, torch.Tensor) and other.ndim == 0 \
                and not self.scalar:
            other = TensorList([other] * len(self))
        if not reverse and self._reusable(refs) and _keeps_dtype(self, other):
            items = self.items
            op_ = getattr(torch, f"_foreach_{name}_")
            op_(items, other.items if isinstance(other, TensorList) else other)
            return self._reused(items)
        if self.scalar and (not isinstance(other, TensorList) or other.scalar) and not (
                isinstance(other, torch.Tensor) and other.ndim > 0):
            if name == "pow" and self.device.type == "cpu" and len(self) > 1:
                return self._pow_of_scalars(other, reverse)
            a, b = self.stacked, other.stacked if isinstance(other, TensorList) else other
            if isinstance(b, torch.Tensor) and b.ndim and b.device != a.device:
                a, b = _one_device(a, b)
            fn = getattr(torch, name)
            return TensorList(stacked=fn(b, a) if reverse else fn(a, b))
        op = getattr(torch, f"_foreach_{name}")
        if isinstance(other, TensorList):
            a, b = (other.items, self.items) if reverse else (self.items, other.items)
            return TensorList(op(a, b), fresh=True)
        if not reverse and (isinstance(other, Number) or (
                isinstance(other, torch.Tensor) and other.ndim == 0 and name != "pow")):
            return TensorList(op(self.items, other), fresh=True)
        if reverse and name == "pow" and isinstance(other, Number):
            return TensorList(op(other, self.items), fresh=True)
        fn = getattr(torch, name)
        return TensorList([fn(other, x) if reverse else fn(x, other) for x in self.items])

    def __add__(self, other):
        return self._binary("add", other, refs=sys.getrefcount(self))

    def __radd__(self, other):
        return self._binary("add", other, refs=sys.getrefcount(self))

    def __sub__(self, other):
        return self._binary("sub", other, refs=sys.getrefcount(self))

    def __rsub__(self, other):
        return self._binary("sub", other, reverse=True)

    def __mul__(self, other):
        return self._binary("mul", other, refs=sys.getrefcount(self))

    def __rmul__(self, other):
        return self._binary("mul", other, refs=sys.getrefcount(self))

    def __truediv__(self, other):
        return self._binary("div", other, refs=sys.getrefcount(self))

    def __rtruediv__(self, other):
        if isinstance(other, Number):  # as torch.Tensor.__rtruediv__: reciprocal, then times
            inverse = self._number_op("div", 1, reverse=True) if self.scalar else None
            return (self.reciprocal() if inverse is None else inverse) * other
        return self._binary("div", other, reverse=True)

    def __pow__(self, other):
        return self._binary("pow", other)

    def __rpow__(self, other):
        return self._binary("pow", other, reverse=True)

    def __neg__(self):
        if self.scalar:
            return TensorList(stacked=-self.stacked)
        return TensorList(torch._foreach_neg(self.items))

    def _compare(self, op: Callable, other: Any) -> TensorList:
        if self.scalar and not isinstance(other, TensorList):
            a = self._number_value()
            if a is not None and type(other) in (int, float) and (
                    isinstance(other, int) and (self.dtype == torch.int64 or abs(other) < 1 << 53)
                    or self.dtype == torch.float64):
                # (a step count against a number: Python compares what torch's 0-d kernel
                # compares, exactly; an int64 count against a float torch compares in float32)
                return _number_list(_COMPARISONS[op](a, other), len(self), torch.bool)
            return TensorList(stacked=op(self.stacked, other))
        return TensorList([op(x, o) for x, o in zip(self.items, _items(other, len(self)))])

    def __eq__(self, other):  # type: ignore[override]
        return self._compare(torch.eq, other)

    def __gt__(self, other):
        return self._compare(torch.gt, other)

    def __lt__(self, other):
        return self._compare(torch.lt, other)

    def __ge__(self, other):
        return self._compare(torch.ge, other)

    __hash__ = None  # type: ignore[assignment]

    # -- torch functions ---------------------------------------------------------------------

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        special = _SPECIAL.get(func)
        if special is not None:
            refs = sys.getrefcount(args[0]) - _FUNCTION_EXTRA_REFS if args else _NAMED
            result = special(*args, _refs=refs, **kwargs)
            if result is not NotImplemented:
                return result
        n = next(len(a) for a in list(args) + list(kwargs.values()) if isinstance(a, TensorList))
        columns = [_items(a, n) for a in args]
        kw_columns = {k: _items(v, n) for k, v in kwargs.items()}
        out = [func(*(c[i] for c in columns), **{k: v[i] for k, v in kw_columns.items()})
               for i in range(n)]
        if out and isinstance(out[0], tuple):
            return tuple(TensorList(list(col)) for col in zip(*out))
        return TensorList(out)


def _one_device(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """Two stacked lists of 0-d tensors, one on the CPU, the other's device: each leaf's op
    takes the CPU 0-d operand as a number and gives its result on the other's device (Adafactor's
    RMS of a GPU parameter times a step size from its CPU count, in torch.optim's layout), so the
    CPU one moves there (a copy to the device, no sync)."""
    if a.is_cpu:
        return a.to(b.device), b
    if b.is_cpu:
        return a, b.to(a.device)
    return a, b  # (two accelerators: torch's error, as on each leaf)


def _number_list(value: Number, n: int, dtype: torch.dtype) -> TensorList:
    """``n`` CPU 0-d tensors of ``dtype`` that hold ``value``, kept as the number until a tensor
    is needed (see :class:`TensorList`)."""
    out = TensorList()
    out._number, out._shape, out._scalar = value, (n, dtype), True
    return out


_NUMBER_DTYPES = (torch.int64, torch.float64)
_COMPARISONS = {torch.eq: operator.eq, torch.gt: operator.gt, torch.lt: operator.lt,
                torch.ge: operator.ge}
"""The comparisons a number list computes in Python (a list of one bool: a number list of
dtype bool, which arithmetic turns into tensors first and ``.to(float64)`` into 0.0 or 1.0)."""
_NUMBER_OPS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
               "div": operator.truediv, "pow": operator.pow}
"""The ops a number list computes in Python: IEEE double arithmetic and C ``pow``, as torch's
0-d CPU kernels compute them (and torch.optim's Python-float bias corrections)."""


# the torch functions a list runs as one kernel (TensorList.__torch_function__) live beside
from ._foreach_functions import SPECIAL as _SPECIAL  # noqa: E402


def _calibrate() -> tuple[int, int]:
    """The reference counts a temporary operand shows to ``_binary`` and to the functions of
    ``_SPECIAL``, measured by evaluating ``fresh() * 1`` and ``torch.neg(fresh())`` against named
    operands. Where a named operand shows no more references than a temporary (an interpreter that
    borrows references), reuse stays off: out-of-place ops, the same numbers.
    """
    seen: list[int] = []

    class Probe(TensorList):
        __slots__ = ()

        def _binary(self, name, other, reverse=False, refs=_NAMED):
            seen.append(refs)
            return self

    def record(x, *, _refs):
        seen.append(_refs)
        return x

    def fresh() -> Probe:
        return Probe([])

    saved, _SPECIAL[torch.neg] = _SPECIAL[torch.neg], record
    try:
        fresh() * 1
        named = fresh()
        named * 1
        torch.neg(fresh())
        torch.neg(named)
    finally:
        _SPECIAL[torch.neg] = saved
    dunder, dunder_named, function, function_named = seen
    if not (dunder < dunder_named and function < function_named):
        return -1, 0
    return dunder, function - dunder


_TEMPORARY_REFS, _FUNCTION_EXTRA_REFS = _calibrate()

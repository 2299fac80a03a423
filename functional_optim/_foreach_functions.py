"""The torch functions that a :class:`~functional_optim._foreach.TensorList` runs as one
``torch._foreach_*`` kernel (or a list's 0-d math), looked up by its ``__torch_function__``:
each takes the lists (and ``_refs``, the first operand's reference count, for in-place reuse)
and returns ``NotImplemented`` where the per-element route must run instead."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Number

import torch

from ._foreach import _NAMED, TensorList, _keeps_dtype, _number_list

__all__ = ["SPECIAL"]


def _unary(name: str) -> Callable:
    op, op_ = getattr(torch, f"_foreach_{name}"), getattr(torch, f"_foreach_{name}_")
    fn = getattr(torch, name)

    def unary(x, *, _refs=_NAMED):
        if x.scalar and x.dtype == torch.float64:
            a = x._number_value()
            if a is not None:  # (torch's 0-d kernel, as on each leaf: its float64 sqrt is not
                # always the correctly rounded one of math.sqrt)
                return _number_list(fn(torch.tensor(a, dtype=torch.float64)).item(), len(x),
                                    torch.float64)
        if x.scalar:
            return TensorList(stacked=fn(x.stacked))
        if x._reusable(_refs):
            op_(x.items)
            return x._reused(x.items)
        return TensorList(op(x.items), fresh=True)

    return unary


def _add(a, b, *, alpha=1, _refs=_NAMED):
    if not (isinstance(a, TensorList) and isinstance(b, TensorList) and isinstance(alpha, Number)
            and not a.scalar):
        return NotImplemented
    if a._reusable(_refs) and _keeps_dtype(a, b):
        torch._foreach_add_(a.items, b.items, alpha=alpha)
        return a._reused(a.items)
    return TensorList(torch._foreach_add(a.items, b.items, alpha=alpha), fresh=True)


def _lerp(start, end, weight, *, _refs=_NAMED):
    if not (isinstance(start, TensorList) and isinstance(end, TensorList)):
        return NotImplemented
    if isinstance(weight, torch.Tensor):
        weight = [weight] * len(start)
    elif isinstance(weight, TensorList):
        weight = weight.items
    if start._reusable(_refs) and _keeps_dtype(start, end):
        torch._foreach_lerp_(start.items, end.items, weight)
        return start._reused(start.items)
    return TensorList(torch._foreach_lerp(start.items, end.items, weight), fresh=True)


def _maximum(a, b, *, _refs=_NAMED):
    if not (isinstance(a, TensorList) and isinstance(b, TensorList)):
        return NotImplemented
    if a._reusable(_refs) and _keeps_dtype(a, b):
        torch._foreach_maximum_(a.items, b.items)
        return a._reused(a.items)
    return TensorList(torch._foreach_maximum(a.items, b.items), fresh=True)


def _clamp(x, min=None, max=None, *, _refs=_NAMED):  # noqa: A002 - torch's names
    if not isinstance(x, TensorList) or not all(
            v is None or isinstance(v, Number) for v in (min, max)):
        return NotImplemented
    items, in_place = x.items, x._reusable(_refs)
    for bound, op_, op in ((min, torch._foreach_clamp_min_, torch._foreach_clamp_min),
                           (max, torch._foreach_clamp_max_, torch._foreach_clamp_max)):
        if bound is None:
            continue
        if in_place:
            op_(items, bound)
        else:
            items, in_place = op(items, bound), True  # a fresh copy: the next bound reuses it
    return x._reused(items) if x._reusable(_refs) else TensorList(items, fresh=True)


def _addc(name: str) -> Callable:
    """``torch.addcmul``/``torch.addcdiv`` with a number ``value``: one foreach kernel."""
    op, op_ = getattr(torch, f"_foreach_{name}"), getattr(torch, f"_foreach_{name}_")

    def addc(input, tensor1, tensor2, *, value=1, _refs=_NAMED):  # noqa: A002 - torch's name
        lists = (input, tensor1, tensor2)
        if not (all(isinstance(x, TensorList) and not x.scalar for x in lists)
                and isinstance(value, Number) and not isinstance(value, complex)):
            return NotImplemented
        if input._reusable(_refs) and all(x.dtype == input.dtype for x in lists):
            op_(input.items, tensor1.items, tensor2.items, value)
            return input._reused(input.items)
        return TensorList(op(input.items, tensor1.items, tensor2.items, value), fresh=True)

    return addc


def _vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None, _refs=_NAMED):  # noqa: A002
    if ord != 2 or dim is not None or keepdim or dtype is not None:
        return NotImplemented
    return TensorList(torch._foreach_norm(x.items), fresh=True)


def _function(name: str) -> Callable:
    """``torch.<name>(a, b)`` with a list among its operands: as ``a <op> b``."""

    def function(a, b, *, _refs=_NAMED, **kwargs):
        if kwargs:  # (alpha=, rounding_mode=: per leaf)
            return NotImplemented
        if isinstance(a, TensorList):
            return a._binary(name, b, refs=_refs)
        return b._binary(name, a, reverse=True)

    return function


def _where(condition, input, other, *, _refs=_NAMED):  # noqa: A002 - torch's name
    """``torch.where`` whose condition is one value for every leaf (a uniform list of 0-d bools:
    a branch on the step count): the chosen operand as it is, with no copy and no pass over
    memory (the same values as the per-leaf ``where``; a list so chosen is not overwritten in
    place by later ops). Other conditions: element by element."""
    if not (isinstance(condition, TensorList) and condition.scalar
            and condition.dtype == torch.bool):
        return NotImplemented
    lists = [x for x in (input, other) if isinstance(x, TensorList)]
    if not lists or any(len(x) != len(condition) for x in lists) or len(
            {(x.scalar, x.dtype) for x in lists}) > 1:
        return NotImplemented
    value = condition.uniform()
    if value is None:
        return NotImplemented
    chosen = input if bool(value) else other
    if isinstance(chosen, TensorList):
        return chosen if chosen._shape is not None else TensorList(chosen.items)
    like = lists[0]
    if not (like.scalar and like.dtype == torch.float64 and isinstance(chosen, Number)
            and not isinstance(chosen, (bool, complex))):
        return NotImplemented  # (a number shaped like a tensor list: per leaf)
    return _number_list(float(chosen), len(like), torch.float64)


SPECIAL = {
    torch.sqrt: _unary("sqrt"),
    torch.sign: _unary("sign"),
    torch.abs: _unary("abs"),
    torch.addcmul: _addc("addcmul"),
    torch.addcdiv: _addc("addcdiv"),
    torch.neg: _unary("neg"),
    torch.add: _add,
    torch.lerp: _lerp,
    torch.maximum: _maximum,
    torch.clamp: _clamp,
    torch.linalg.vector_norm: _vector_norm,
    torch.where: _where,
    torch.mul: _function("mul"),
    torch.sub: _function("sub"),
    torch.div: _function("div"),
    torch.pow: _function("pow"),
}

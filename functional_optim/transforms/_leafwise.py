"""Rules that are math on one leaf and cannot run over a list of leaves at once (they split,
concatenate or index a leaf by its own shape): :func:`leafwise` runs them leaf by leaf on the
multi-tensor path too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._foreach import TensorList

__all__ = ["leafwise"]


def leafwise(rule: Callable) -> Callable:
    """``rule(h, *tensors)`` (math on one leaf, see :func:`functional_optim._execute.elementwise`)
    as a rule that also takes :class:`~functional_optim._foreach.TensorList` groups, running it
    on each leaf of the group in turn (the same numbers as per leaf)."""

    def run(h: Any, *args: Any) -> tuple:
        n = next((len(a) for a in args if isinstance(a, TensorList)), None)
        if n is None:
            return rule(h, *args)
        columns = [a.items if isinstance(a, TensorList) else [a] * n for a in args]
        outs = [rule(h, *(c[i] for c in columns)) for i in range(n)]
        return tuple(TensorList(list(col)) for col in zip(*outs))

    return run

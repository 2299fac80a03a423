"""Work done every ``interval`` steps (a Hessian estimate, a subspace), decided from a count in
the state, two ways: as tensor selects (pure, capturable) or on the host (cheap)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from ..base import HParamError


def check_interval(owner: str, name: str, interval: Any) -> None:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise HParamError(f"{owner}: {name} must be an int >= 1 (structural), got {interval!r}")


def refreshed(count: torch.Tensor, interval: int, host: bool, fresh: Callable[[], Any],
              old: Any) -> Any:
    """``fresh()`` where ``count % interval == 0``, else ``old`` (a tree of the same structure).

    ``host=False``: ``fresh()`` runs at every step and :func:`torch.where` picks, leaf by leaf
    (no host sync: ``vmap``, ``torch.func.grad``, ``torch.compile`` and CUDA-graph capture
    apply; the work is done every step). ``host=True``: the count is read on the host (one
    sync per step) and ``fresh()`` runs only when due (the cost of one refresh per
    ``interval`` steps; eager use only).
    """
    if host:
        return fresh() if int(count) % interval == 0 else old
    due = torch.remainder(count, interval) == 0
    return optree.tree_map(lambda new, before: None if new is None else torch.where(
        due, new, before), fresh(), old, none_is_leaf=True)

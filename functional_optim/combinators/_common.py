"""Helpers shared by the combinators."""

from __future__ import annotations

from typing import Any

import optree
import torch

from .._execute import first_device

_NONE = {"none_is_leaf": True}


def _pick(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """``torch.where(cond, new, old)`` over two trees of the same structure (states, updates)."""

    def one(n, o):
        if not isinstance(n, torch.Tensor):
            return n
        return torch.where(cond.to(n.device) if cond.device != n.device and
                           cond.device.type != "cpu" else cond, n, o)

    return optree.tree_map(one, new, old, **_NONE)


def _count(params: Any) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=first_device(params))

"""Numerics on tensors with safe gradients and saturating counters (optax's ``numerics``).

Pure tensor functions: they trace under ``torch.func`` and ``torch.compile`` and take no host
decision.
"""

from __future__ import annotations

from typing import Any

import torch

from . import tree as _tree

__all__ = ["abs_sq", "safe_norm", "safe_root_mean_squares", "safe_increment", "scale_gradient"]


def abs_sq(x: torch.Tensor) -> torch.Tensor:
    r""":math:`|x|^2` elementwise, real: :math:`\Re(x)^2 + \Im(x)^2` for complex ``x``."""
    if not x.is_complex():
        return x * x
    re, im = torch.real(x), torch.imag(x)  # (functions: a TensorList maps them over its items)
    return re * re + im * im


def safe_norm(x: torch.Tensor, min_norm: float | torch.Tensor, ord: int | float | str | None
              = None, dim: int | tuple[int, ...] | None = None,  # noqa: A002 - torch's name
              keepdim: bool = False) -> torch.Tensor:
    r""":math:`\max(\lVert x\rVert, m)` (``min_norm`` :math:`m`) with a zero gradient where the
    norm is at most :math:`m` (``max`` of a norm would give NaN there at :math:`x = 0`).

    ``ord``, ``dim``, ``keepdim``: as :func:`torch.linalg.norm`.
    """
    norm = torch.linalg.norm(x, ord, dim, keepdim=True)
    small = norm <= min_norm
    masked = torch.linalg.norm(torch.where(small, torch.ones_like(x), x), ord, dim, keepdim)
    if not keepdim:
        small = small.squeeze() if dim is None else small.squeeze(dim)
    return torch.where(small, torch.as_tensor(min_norm, dtype=masked.dtype,
                                              device=masked.device), masked)


def safe_root_mean_squares(x: torch.Tensor, min_rms: float | torch.Tensor) -> torch.Tensor:
    r""":math:`\max(\sqrt{\operatorname{mean}|x|^2}, m)` (``min_rms`` :math:`m`) with a zero
    gradient where the RMS is at most :math:`m`."""
    rms = torch.sqrt(torch.mean(abs_sq(x)))
    small = rms <= min_rms
    masked = torch.sqrt(torch.mean(abs_sq(torch.where(small, torch.ones_like(x), x))))
    return torch.where(small, torch.as_tensor(min_rms, dtype=masked.dtype,
                                              device=masked.device), masked)


def safe_increment(count: torch.Tensor) -> torch.Tensor:
    """``count + 1``, saturating at the largest value of ``count``'s dtype instead of
    overflowing."""
    info = torch.finfo(count.dtype) if count.is_floating_point() else torch.iinfo(count.dtype)
    top = torch.full_like(count, info.max)
    return torch.where(count < top, count + 1, top)


def scale_gradient(tree: Any, scale: float | torch.Tensor) -> Any:
    r"""``tree`` itself in the forward pass, its gradient multiplied by ``scale`` in the
    backward pass (each leaf :math:`x` becomes :math:`\operatorname{sg}(x) + s\,(x -
    \operatorname{sg}(x))`, :math:`\operatorname{sg}` a stop-gradient: the same value
    exactly). Works under autograd and ``torch.func``; a Python ``scale`` of 1 returns
    ``tree``, of 0 detaches it."""
    if isinstance(scale, (int, float)) and scale == 1:
        return tree
    if isinstance(scale, (int, float)) and scale == 0:
        return _tree.map(torch.Tensor.detach, tree)
    return _tree.map(lambda x: x.detach() + (x - x.detach()) * scale, tree)

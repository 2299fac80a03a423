"""What the Kronecker-factored preconditioners (SOAP, Shampoo, PSGD-Kron) share: how a leaf is
viewed as a tensor of a few axes (merged dimensions), which axes carry a factor, per-leaf
tuples of factors in the state, the factors' statistics and rotations by one matrix per axis."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from ..base import HParamError
from ..tree import TreeMismatchError, mismatch_message


def check_dim(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HParamError(f"{owner}: {name} must be an int >= 1 (structural), got {value!r}")


def check_dtype(owner: str, name: str, value: Any) -> None:
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise HParamError(f"{owner}: {name} must be None or a floating dtype, got {value!r}")


def merged_shape(shape: tuple, max_dim: int) -> tuple:
    """``shape`` with runs of consecutive axes merged while their product stays at most
    ``max_dim`` (an axis larger than ``max_dim`` stays alone), as SOAP's reference code merges
    dimensions: ``(64, 3, 3)`` with ``max_dim=1000`` is ``(576,)``; ``(128, 64, 3, 3)`` with
    ``max_dim=1000`` is ``(128, 576)``."""
    out: list[int] = []
    run = 1
    for size in shape:
        if run * size > max_dim:
            if run > 1:
                out.append(run)
                run = size
            else:
                out.append(size)
                run = 1
        else:
            run *= size
    if run > 1 or not out:
        out.append(run)
    return tuple(out)


class Layout(NamedTuple):
    """How one leaf is preconditioned: viewed with shape ``shape``, axis ``k`` carrying a
    factor where ``factored[k]``."""

    shape: tuple
    factored: tuple

    def factor_shapes(self) -> tuple:
        """Per axis the shape of its factor: ``(d, d)``, or ``(0, 0)`` where it has none."""
        return tuple((d, d) if f else (0, 0) for d, f in zip(self.shape, self.factored))


def per_leaf(tree: Any, spec: Any, owner: str, field: str) -> list:
    """The per-leaf subtrees of state field ``field`` (tuples of factors), in the order of the
    updates' leaves (``spec``); a clear error when its structure is not the updates'."""
    try:
        return spec.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise TreeMismatchError(mismatch_message(
            "updates", spec, f"{owner} state.{field}", _tree.structure(tree))) from None


def check_real(owner: str, updates: Any, flat: list) -> None:
    """A clear error for a complex update leaf (these preconditioners take real ones)."""
    for i, g in enumerate(flat):
        if g is not None and g.is_complex():
            raise TypeError(f"{owner} does not support complex updates (leaf "
                            f"{_tree.leaf_label(updates, i)}, dtype {g.dtype})")


def check_like(owner: str, updates: Any, i: int, g: torch.Tensor, x: Any, what: str) -> None:
    """A clear error unless state tensor ``x`` matches update leaf ``i`` (``g``): shape,
    dtype, device (:func:`functional_optim.tree.leaf_mismatch`)."""
    problem = _tree.leaf_mismatch(g, x, what)
    if problem is not None:
        raise TreeMismatchError(f"{owner}: leaf {_tree.leaf_label(updates, i)}: {problem}")


def check_factors(owner: str, updates: Any, i: int, field: str, got: Any,
                  shapes: list) -> None:
    """A clear error unless leaf ``i``'s state tuple ``got`` holds tensors of ``shapes`` (a
    state made for other parameters); metadata only."""
    if not isinstance(got, tuple) or [tuple(getattr(x, "shape", ())) for x in got] != [
            tuple(s) for s in shapes] or not all(isinstance(x, torch.Tensor) for x in got):
        found = (f"a tuple of shapes {[tuple(x.shape) for x in got]}"
                 if isinstance(got, tuple) and all(isinstance(x, torch.Tensor) for x in got)
                 else type(got).__name__)
        raise TreeMismatchError(
            f"{owner}: state.{field} of leaf {_tree.leaf_label(updates, i)} must be a tuple of "
            f"tensors of shapes {[tuple(s) for s in shapes]} (made by init for this "
            f"parameter), got {found}")


def axis_covariance(x: torch.Tensor, axis: int) -> torch.Tensor:
    r"""The Gram matrix of ``x`` along ``axis``: :math:`\sum_{\text{other axes}} x_{\ldots i
    \ldots} x_{\ldots j \ldots}` (:math:`G G^\top` and :math:`G^\top G` for a matrix)."""
    moved = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return moved @ moved.T


def rotate(x: torch.Tensor, matrices: tuple, back: bool = False) -> torch.Tensor:
    r"""``x`` multiplied along each axis ``k`` by ``matrices[k]``: by :math:`Q_k^\top`
    (``back=False``: :math:`Q_L^\top X Q_R` for a matrix), or by :math:`Q_k` (``back=True``:
    :math:`Q_L X Q_R^\top`); an axis whose matrix is empty (``(0, 0)``) is left as it is."""
    for q in matrices:
        if q.numel() == 0:
            x = x.movedim(0, -1)
        else:
            x = torch.tensordot(x, q, dims=([0], [1 if back else 0]))
    return x


def decomposition_dtype(dtype: torch.dtype, chosen: torch.dtype | None) -> torch.dtype:
    """The dtype of a factor's decomposition: ``chosen``, else the leaf's (at least float32:
    the linear-algebra routines take no half precision)."""
    return chosen or torch.promote_types(dtype, torch.float32)

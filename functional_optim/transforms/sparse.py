"""Sparse gradients: lazy (sparse) Adam, moments updated only where a sparse gradient has entries
(SparseAdam), AllenNLP's DenseSparseAdam (dense and sparse gradients in one transform), and the
helpers of the blocks that take sparse updates (Adagrad's ``scale_by_rss``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import tree as _tree
from .._execute import cast_hparams, init_count, scalar_dtype
from ..base import (
    EmptyState,
    Transform,
    chain,
    check_betas,
    check_hparam,
    check_state,
    resolve_hparams,
)
from .basic import scale_by_learning_rate
from .moments import ScaleByAdamState, scale_by_adam

__all__ = ["ScaleBySparseAdamState", "scale_by_sparse_adam", "scale_by_dense_sparse_adam",
           "DENSE_GRAD_MESSAGE", "rows", "at_indices"]

#: torch.optim.SparseAdam's message for a dense gradient
DENSE_GRAD_MESSAGE = (
    "SparseAdam does not support dense gradients, please consider Adam instead")


class ScaleBySparseAdamState(NamedTuple):
    """State of :func:`scale_by_sparse_adam`; every field is a tree shaped like the parameters.

    Attributes:
        step: per-parameter step count (0-d int64; counts every update with a gradient, even
            one with no entries, as torch.optim.SparseAdam's ``state["step"]``).
        exp_avg: first moment (dense; only rows that had gradient entries ever change).
        exp_avg_sq: second moment (dense).
    """

    step: Any
    exp_avg: Any
    exp_avg_sq: Any


def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The entries of dense ``x`` at a coalesced COO ``index`` of shape ``(sparse_dim, nnz)``:
    shape ``(nnz, *dense_dims)``."""
    if index.shape[0] == 0:  # sparse_dim 0: the whole tensor, nnz (<= 1) times
        return x.expand(index.shape[1], *x.shape)
    return x[tuple(index)]


def at_indices(index: torch.Tensor, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The coalesced sparse COO tensor of ``shape`` with ``values`` at ``index`` (the index of a
    coalesced gradient: no check of the invariants)."""
    return torch.sparse_coo_tensor(index, values, shape, is_coalesced=True,
                                   check_invariants=False)


def _init(params: Any) -> ScaleBySparseAdamState:
    zeros = lambda p: torch.zeros_like(p, memory_format=torch.preserve_format)  # noqa: E731
    return ScaleBySparseAdamState(init_count(params), _tree.map(zeros, params),
                                  _tree.map(zeros, params))


def _sparse_adam_leaf(h: dict, g: torch.Tensor, t, m, v, *, maximize: bool, name: str):
    if g.is_complex():
        raise TypeError(f"scale_by_sparse_adam does not support complex updates (leaf {name!r})")
    if not (g.is_floating_point() and m.is_floating_point()):
        raise TypeError(
            f"scale_by_sparse_adam needs floating-point updates and state (leaf {name!r}: "
            f"update {g.dtype}, state {m.dtype})")
    if not g.is_sparse:
        raise RuntimeError(f"{DENSE_GRAD_MESSAGE} (leaf {name!r})")
    for x in (m, v):
        problem = _tree.leaf_mismatch(g, x, "state")
        if problem is not None:
            raise _tree.TreeMismatchError(f"scale_by_sparse_adam: leaf {name!r}: {problem}")
    h = cast_hparams(h, m)
    b1, b2 = h["betas"]
    if maximize:
        g = -g
    g = g.coalesce()  # the update is not linear in g: repeated indices must be summed first
    index, values = g.indices(), g.values()
    old_m, old_v = rows(m, index), rows(v, index)
    dm = (values - old_m) * (1 - b1)
    dv = (values.pow(2) - old_v) * (1 - b2)
    m_new = m + at_indices(index, dm, m.shape)
    v_new = v + at_indices(index, dv, v.shape)
    t = t + 1
    tf = t.to(scalar_dtype(m))
    step_size = h["lr"] * torch.sqrt(1 - b2**tf) / (1 - b1**tf)
    ratio = (dm + old_m) / (torch.sqrt(dv + old_v) + h["eps"])
    u = at_indices(index, -step_size * ratio, m.shape)
    return u, t, m_new, v_new


def scale_by_sparse_adam(lr: float | torch.Tensor = 1e-3,
                         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                         maximize: bool = False) -> Transform:
    r"""Adam (Kingma & Ba, 2015) restricted to the entries a sparse gradient has ("lazy Adam"),
    as torch.optim.SparseAdam computes it. Outputs the final (descent) update, sparse.

    For a sparse COO gradient (``nn.Embedding(sparse=True)``), coalesced first (repeated indices
    summed), with :math:`I` its set of indices, only rows :math:`i \in I` change:

    .. math::
        m_{t,i} = \beta_1 m_{t-1,i} + (1-\beta_1) g_{t,i}, \quad
        v_{t,i} = \beta_2 v_{t-1,i} + (1-\beta_2) g_{t,i}^2, \\
        u_{t,i} = -\eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
                  \frac{m_{t,i}}{\sqrt{v_{t,i}} + \epsilon}

    where ``t`` counts this parameter's updates. The update is a sparse COO tensor with the
    gradient's indices (``apply_updates`` adds it to the dense parameter); its learning rate is
    folded in, so this block ends a chain. A dense gradient raises torch's ``RuntimeError``
    ("SparseAdam does not support dense gradients, please consider Adam instead"); complex
    gradients a ``TypeError``. Pure; not ``vmap``-able, differentiable or capturable (sparse
    tensors and ``coalesce`` have data-dependent sizes).

    Args:
        lr: ``η`` (default 1e-3).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        maximize: ascend instead of descend (static).
    """
    owner = "scale_by_sparse_adam"
    check_hparam(owner, "lr", lr, gt=0)
    check_hparam(owner, "eps", eps, gt=0)
    check_betas(owner, betas)
    defaults = {"lr": lr, "betas": tuple(betas), "eps": eps}

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams", {"maximize": maximize})
        check_state(owner, state, ScaleBySparseAdamState)
        spec = _tree.structure(updates)
        flat = [_tree.flatten_like(s, spec, f"{owner} state", "updates")
                for s in (state.step, state.exp_avg, state.exp_avg_sq)]
        outs: list[list] = [[], list(flat[0]), list(flat[1]), list(flat[2])]
        for i, (name, g) in enumerate(_tree.named_leaves(updates)):
            if g is None:
                outs[0].append(None)
                continue
            if flat[1][i] is None:
                raise _tree.TreeMismatchError(
                    f"{owner}: update leaf {name!r} has no state (its parameter was None at init)")
            u, t, m, v = _sparse_adam_leaf(h, g, flat[0][i], flat[1][i], flat[2][i],
                                           maximize=maximize, name=name)
            outs[0].append(u)
            outs[1][i], outs[2][i], outs[3][i] = t, m, v
        trees = [spec.unflatten(o) for o in outs]
        return trees[0], ScaleBySparseAdamState(*trees[1:])

    return Transform(_init, update, defaults)


def scale_by_dense_sparse_adam(lr: float | torch.Tensor = 1e-3,
                               betas: tuple[float, float] = (0.9, 0.999),
                               eps: float = 1e-8) -> Transform:
    r"""Adam for dense updates and lazy Adam for sparse ones, in one transform with one state,
    as AllenNLP's ``DenseSparseAdam`` computes them. Outputs the final (descent) update, dense
    or sparse as the gradient.

    Both are Adam with the bias corrections in the step size and ``ε`` on the uncorrected root
    (Kingma & Ba's "efficient version"):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        u_t = -\eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t} \frac{m_t}{\sqrt{v_t} + \epsilon}

    over every entry for a dense gradient (:func:`~functional_optim.transforms.scale_by_adam`
    with ``bias_correction="step_size"``, then the learning rate), and over the rows a sparse
    COO gradient has for a sparse one (:func:`scale_by_sparse_adam`'s rule: the other rows of
    ``m`` and ``v`` keep their values). ``t`` counts the parameter's updates of either kind.
    The state is :class:`ScaleBySparseAdamState` (``step``, ``exp_avg``, ``exp_avg_sq``).

    Dense updates: pure, differentiable, ``vmap``-able, compilable and capturable, complex
    parameters as pairs of reals; sparse ones as :func:`scale_by_sparse_adam` (no complex).

    Args:
        lr: ``η`` (default 1e-3).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
    """
    owner = "scale_by_dense_sparse_adam"
    check_hparam(owner, "lr", lr, ge=0)
    check_hparam(owner, "eps", eps, ge=0)
    check_betas(owner, betas)
    defaults = {"lr": lr, "betas": tuple(betas), "eps": eps}
    dense = chain(scale_by_adam(betas, eps, bias_correction="step_size"),
                  scale_by_learning_rate(lr))

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, ScaleBySparseAdamState)
        named = _tree.named_leaves(updates)
        sparse = {i for i, (_, g) in enumerate(named) if g is not None and g.is_sparse}
        spec = _tree.structure(updates)
        if sparse:  # the dense rule leaves them alone (None), the sparse rule runs below
            updates = spec.unflatten([None if i in sparse else g
                                      for i, (_, g) in enumerate(named)])
        inner = ({"betas": h["betas"], "eps": h["eps"], "eps_root": 0.0}, {"lr": h["lr"]})
        out, (adam, _) = dense.update(updates, (ScaleByAdamState(*state), EmptyState()), params,
                                      inner)
        new = ScaleBySparseAdamState(adam.step, adam.mu, adam.nu)
        if not sparse:
            return out, new
        flat = [list(_tree.flatten_like(x, spec, f"{owner} state", "updates"))
                for x in (out, *new)]
        for i in sparse:
            name, g = named[i]
            flat[0][i], flat[1][i], flat[2][i], flat[3][i] = _sparse_adam_leaf(
                h, g, flat[1][i], flat[2][i], flat[3][i], maximize=False, name=name)
        trees = [spec.unflatten(x) for x in flat]
        return trees[0], ScaleBySparseAdamState(*trees[1:])

    return Transform(_init, update, defaults)

"""torch.optim's special algorithms (Adafactor, Muon, L-BFGS, SparseAdam) and AllenNLP's
DenseSparseAdam."""

from __future__ import annotations

import torch

from .. import _blocked
from ..base import Transform, chain
from ..registry import register
from ..transforms import (
    MUON_NS_COEFFICIENTS,
    scale_by_factored_rms,
    scale_by_lbfgs,
    scale_by_muon,
    scale_by_sparse_adam,
)
from ..transforms.sparse import scale_by_dense_sparse_adam
from ._common import _decay_around, _number_or_tensor_lr, _reparametrized

__all__ = ["adafactor", "muon", "lbfgs", "sparse_adam", "dense_sparse_adam"]


@register(paper=('Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory '
          'Cost"'),
          drop_in='Adafactor')
def adafactor(lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
              eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
              weight_decay: float = 0.0, *, maximize: bool = False) -> Transform:
    r"""Adafactor (Shazeer & Stern, 2018), as torch.optim.Adafactor: factored second moments for
    parameters of >= 2 dimensions, a step size relative to the parameters' RMS, update clipping
    and decoupled weight decay. See :func:`~functional_optim.transforms.scale_by_factored_rms`
    for the math (this alias is that block with torch's flat hyperparameter names).

    Args:
        lr: ``η`` (default 1e-2), a number or 0-d tensor.
        beta2_decay: ``c <= 0`` in :math:`\hat\beta_{2,t} = 1 - t^c` (default -0.8).
        eps: ``(ε1, ε2)``; ``ε1 = None`` is the dtype's machine epsilon (default
            ``(None, 1e-3)``); each may be a number or tensor at update time.
        d: clipping threshold (default 1).
        weight_decay: ``λ`` (default 0).
        maximize: ascend instead of descend (structural).
    """
    owner = "adafactor"
    _number_or_tensor_lr(owner, lr)
    inner = scale_by_factored_rms(lr, beta2_decay, eps, d, weight_decay, maximize=maximize)
    defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                    weight_decay=weight_decay)

    def to_inner(h):
        eps1, eps2 = h["eps"]
        return {"lr": h["lr"], "beta2_decay": h["beta2_decay"], "eps1": eps1, "eps2": eps2,
                "d": h["d"], "weight_decay": h["weight_decay"]}

    tx = _reparametrized(owner, inner, defaults, to_inner, dict(maximize=maximize))
    return _blocked.with_rule_steps(tx, defaults, f"{owner} hparams", reduce=True)


@register(paper='Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"',
          drop_in='Muon')
def muon(lr: float | torch.Tensor = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
         nesterov: bool = True,
         ns_coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS,
         eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
         ns_dtype: torch.dtype | None = torch.bfloat16) -> Transform:
    r"""Muon (Jordan et al., 2024), as torch.optim.Muon: momentum, Newton-Schulz
    orthogonalization of each 2-D update, a shape-dependent learning-rate ratio and decoupled
    weight decay.

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) g_t, \quad
        O_t = \mathrm{NS}_k(\text{nesterov} ? (1-\mu) g_t + \mu B_t : B_t), \quad
        p_t = p_{t-1} - \eta\lambda p_{t-1} - \eta\, r(A, B)\, O_t

    Chain: ``scale_by_muon → add_decayed_weights → scale_by_learning_rate``. 2-D parameters
    only (others: a ``ValueError``; use :func:`~functional_optim.partition` to give them AdamW).

    Args:
        lr: ``η`` (default 1e-3), a number, tensor or schedule.
        weight_decay: decoupled ``λ`` (default 0.1).
        momentum: ``μ`` (default 0.95).
        nesterov: Nesterov momentum (structural; default True).
        ns_coefficients: ``(a, b, c)`` of the quintic iteration, or one per iteration
            (``functional_optim.transforms.NS_COEFFICIENTS``).
        eps: ``ε`` of the normalization (default 1e-7).
        ns_steps: Newton-Schulz iterations (structural; default 5).
        adjust_lr_fn: ``None``/``"original"`` (:math:`r = \sqrt{\max(1, A/B)}`),
            ``"match_rms_adamw"`` (:math:`r = 0.2\sqrt{\max(A, B)}`), ``"spectral"``
            (:math:`\sqrt{A/B}`) or ``"none"`` (structural; see
            :func:`~functional_optim.transforms.scale_by_muon`).
        ns_dtype: precision of the iteration (structural; bfloat16 as torch; ``None``: the
            parameter's).
    """
    owner = "muon"
    blocks = _decay_around(owner, lr, weight_decay, False, True, "muon",
                           scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps,
                                         adjust_lr_fn, ns_dtype=ns_dtype))
    defaults = dict(lr=blocks["lr"].hparams["lr"], weight_decay=weight_decay,
                    momentum=momentum, ns_coefficients=blocks["muon"].hparams["ns_coefficients"],
                    eps=eps)

    def to_inner(h):
        return {"muon": {"momentum": h["momentum"], "ns_coefficients": h["ns_coefficients"],
                         "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                "weight_decay": {"weight_decay": h["weight_decay"]}}

    structural = dict(nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                      ns_dtype=ns_dtype)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)


@register(paper=('Liu & Nocedal, 1989, "On the Limited Memory BFGS Method for Large Scale '
          'Optimization"'),
          drop_in='LBFGS')
def lbfgs(lr: float | torch.Tensor = 1, max_iter: int = 20, max_eval: int | None = None,
          tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
          line_search_fn: str | None = None) -> Transform:
    r"""L-BFGS (Nocedal, 1980; Liu & Nocedal, 1989), as torch.optim.LBFGS.

    ``update(grads, state, params, hparams, *, value=loss, value_fn=fn)``: one update is one
    ``LBFGS.step(closure)``; ``fn(params) -> (loss, grads)`` re-evaluates the loss (needed with
    ``max_iter > 1`` or a line search). Pure but host-synchronizing (no vmap/compile/capture);
    see :mod:`functional_optim.transforms.lbfgs` and the "Algorithms" page of the docs.

    Args:
        lr: ``η`` (default 1).
        max_iter: iterations per update (default 20).
        max_eval: evaluations per update (default ``max_iter * 5 // 4``).
        tolerance_grad: first-order optimality tolerance (default 1e-7).
        tolerance_change: loss/parameter change tolerance (default 1e-9).
        history_size: pairs kept (default 100).
        line_search_fn: ``None`` or ``"strong_wolfe"``.
    """
    _number_or_tensor_lr("lbfgs", lr)
    return scale_by_lbfgs(lr, max_iter, max_eval, tolerance_grad, tolerance_change,
                          history_size, line_search_fn)


@register(paper=('Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization" (lazy, on the '
          'rows a sparse gradient has)'),
          drop_in='SparseAdam')
def sparse_adam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, maximize: bool = False) -> Transform:
    r"""SparseAdam, as torch.optim.SparseAdam: Adam (Kingma & Ba, 2015) on the rows a sparse COO
    gradient has (``nn.Embedding(sparse=True)``); see
    :func:`~functional_optim.transforms.scale_by_sparse_adam`. Updates are sparse; a dense
    gradient raises torch's ``RuntimeError``.

    Args:
        lr: ``η > 0`` (default 1e-3), a number or 0-d tensor.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε > 0`` (default 1e-8).
        maximize: ascend instead of descend.
    """
    _number_or_tensor_lr("sparse_adam", lr)
    return scale_by_sparse_adam(lr, betas, eps, maximize=maximize)


@register(paper=('Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization" (dense, and '
          'lazy on the rows a sparse gradient has: AllenNLP\'s DenseSparseAdam)'),
          drop_in='DenseSparseAdam')
def dense_sparse_adam(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                      eps: float = 1e-8) -> Transform:
    r"""AllenNLP's DenseSparseAdam: Adam for dense gradients and lazy Adam for sparse COO ones
    (``nn.Embedding(sparse=True)``) in one optimizer, both with the bias corrections in the step
    size and ``ε`` on the uncorrected root; see
    :func:`~functional_optim.transforms.scale_by_dense_sparse_adam`.

    Args:
        lr: ``η >= 0`` (default 1e-3), a number or 0-d tensor.
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε >= 0`` (default 1e-8).
    """
    _number_or_tensor_lr("dense_sparse_adam", lr)
    return scale_by_dense_sparse_adam(lr, betas, eps)

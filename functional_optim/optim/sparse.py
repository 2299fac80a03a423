"""AllenNLP's ``DenseSparseAdam`` as a drop-in ``torch.optim.Optimizer`` (torch-style
constructor: ``params`` first); :mod:`functional_optim.compat.allennlp` registers it with
AllenNLP's constructor (``model_parameters``, ``parameter_groups``)."""

from __future__ import annotations

import torch

from .. import aliases
from ._compat import _TorchCompatible
from .special import SparseAdam

__all__ = ["DenseSparseAdam"]


class DenseSparseAdam(SparseAdam):
    """AllenNLP's ``DenseSparseAdam``, backed by :func:`functional_optim.dense_sparse_adam`:
    Adam for dense gradients, lazy Adam for sparse ones, in one optimizer.

    State: SparseAdam's format, as AllenNLP's: ``step`` (a Python int), ``exp_avg``,
    ``exp_avg_sq``. AllenNLP's validation (``lr >= 0``, ``eps >= 0``, each beta in ``[0, 1)``,
    with its messages); any parameter, any gradient layout.
    """

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        # (not SparseAdam's constructor: its checks reject sparse and complex parameters)
        _TorchCompatible.__init__(self, params, dict(lr=lr, betas=betas, eps=eps))

    def _static_key(self, group):
        return ()

    def _build(self, group):
        return aliases.dense_sparse_adam(group["lr"], tuple(group["betas"]), group["eps"])

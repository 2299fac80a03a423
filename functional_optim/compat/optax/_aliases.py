"""optax's optimizers (``optax.adam``, ``optax.sgd``, ...) as chains of the native blocks, in
optax's order, with optax's arguments and defaults; hyperparameters under optax's names."""

from __future__ import annotations

from typing import Any

import torch

from ... import combinators as _C
from ... import transforms as _T
from ...base import Transform, chain
from . import _transforms as _ox
from ._base import optax_names

__all__ = ["adadelta", "adam", "adamax", "adamw", "sgd", "sign_sgd", "signum"]


def lr_chain(learning_rate: Any, names: dict[str, str], **blocks: Transform) -> Transform:
    """``chain(**blocks, lr=scale_by_learning_rate(learning_rate))`` with hyperparameters
    ``{"learning_rate": ..., **names}`` (``names``: optax name -> path in the chain's hparams);
    ``learning_rate=None`` leaves the updates unscaled, as optax's."""
    if learning_rate is not None:
        blocks["lr"] = _T.scale_by_learning_rate(learning_rate)
        names = {"learning_rate": "lr.lr", **names}
    return optax_names(chain(**blocks), names)


def _adam_names(block: str = "adam") -> dict[str, str]:
    return {"b1": f"{block}.betas.0", "b2": f"{block}.betas.1", "eps": f"{block}.eps",
            "eps_root": f"{block}.eps_root"}


def adam(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         eps_root: float = 0.0, mu_dtype: torch.dtype | None = None, *,
         nesterov: bool = False) -> Transform:
    """optax's ``adam``: ``scale_by_adam → scale_by_learning_rate``."""
    return lr_chain(learning_rate, _adam_names(),
                    adam=_T.scale_by_adam((b1, b2), eps, eps_root,
                                          **_ox.given(nesterov=nesterov, mu_dtype=mu_dtype)))


def adamw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
          weight_decay: float = 1e-4, mask: Any = None, *, nesterov: bool = False) -> Transform:
    """optax's ``adamw``: ``scale_by_adam → add_decayed_weights(mask) →
    scale_by_learning_rate`` (decoupled decay, weight decay 1e-4 by default)."""
    return lr_chain(learning_rate,
                    {**_adam_names(), "weight_decay": "weight_decay.weight_decay"},
                    adam=_T.scale_by_adam((b1, b2), eps, eps_root,
                                          **_ox.given(nesterov=nesterov, mu_dtype=mu_dtype)),
                    weight_decay=_T.add_decayed_weights(weight_decay, mask))


def adamax(learning_rate: Any, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8) -> Transform:
    """optax's ``adamax``: ``scale_by_adamax → scale_by_learning_rate``."""
    return lr_chain(learning_rate, {"b1": "adamax.betas.0", "b2": "adamax.betas.1",
                                    "eps": "adamax.eps"},
                    adamax=_T.scale_by_adamax((b1, b2), eps))


def adadelta(learning_rate: Any = None, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0, weight_decay_mask: Any = None) -> Transform:
    """optax's ``adadelta``: ``add_decayed_weights(weight_decay_mask) → scale_by_adadelta →
    scale_by_learning_rate`` (no learning rate: the Adadelta step itself)."""
    return lr_chain(learning_rate, {"rho": "adadelta.rho", "eps": "adadelta.eps",
                                    "weight_decay": "weight_decay.weight_decay"},
                    weight_decay=_T.add_decayed_weights(weight_decay, weight_decay_mask),
                    adadelta=_T.scale_by_adadelta(rho, eps))


def sgd(learning_rate: Any, momentum: float | None = None, nesterov: bool = False,
        accumulator_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``sgd``: ``[trace(momentum, nesterov)] → scale_by_learning_rate``; no
    momentum block when ``momentum`` is ``None``."""
    if momentum is None:
        return lr_chain(learning_rate, {})
    return lr_chain(learning_rate, {"momentum": "momentum.momentum"},
                    momentum=_T.trace(momentum, 0.0, nesterov,
                                      **_ox.given(accumulator_dtype=accumulator_dtype)))


def sign_sgd(learning_rate: Any) -> Transform:
    """optax's ``sign_sgd``: ``scale_by_sign → scale_by_learning_rate``."""
    return lr_chain(learning_rate, {}, sign=_T.sign())


def signum(learning_rate: Any, beta: float = 0.9,
           accumulator_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``signum``: ``ema(beta, debias=False) → scale_by_sign →
    scale_by_learning_rate``."""
    return lr_chain(learning_rate, {"beta": "momentum.decay"},
                    momentum=_C.ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
                    sign=_T.sign())

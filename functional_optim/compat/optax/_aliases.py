"""optax's optimizers (``optax.adam``, ``optax.sgd``, ...) as chains of the native blocks, in
optax's order, with optax's arguments and defaults; hyperparameters under optax's names."""

from __future__ import annotations

from typing import Any

import torch

from ... import aliases as _A
from ... import combinators as _C
from ... import transforms as _T
from ...base import Transform, chain
from . import _transforms as _ox
from ._base import optax_names

__all__ = [
    "adabelief",
    "lbfgs",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "amsgrad",
    "fromage",
    "lamb",
    "lars",
    "lion",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
]


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

# -- optax's variants of the names torch also uses: the native optax_* aliases ------------------

_LR = {"learning_rate": "lr"}
_ADAM = {**_LR, "b1": "betas.0", "b2": "betas.1", "eps": "eps", "eps_root": "eps_root"}


def nadam(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: torch.dtype | None = None, *,
          nesterov: bool = True) -> Transform:
    """optax's ``nadam``: :func:`adam` with Dozat's Nesterov first moment (not torch's NAdam;
    :func:`functional_optim.aliases.optax_nadam` is the native alias)."""
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def nadamw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
           eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
           weight_decay: float = 1e-4, mask: Any = None, *, nesterov: bool = True) -> Transform:
    """optax's ``nadamw``: :func:`adamw` with Dozat's Nesterov first moment."""
    return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask,
                 nesterov=nesterov)


def amsgrad(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
            bias_correction_mu: bool = True, bias_correction_nu: bool = True) -> Transform:
    """optax's ``amsgrad``: the maximum of the bias-corrected second moments
    (:func:`functional_optim.aliases.optax_amsgrad`; not ``adam(amsgrad=True)``)."""
    return optax_names(_A.optax_amsgrad(learning_rate, (b1, b2), eps, eps_root,
                                        bias_correction_mu=bias_correction_mu,
                                        bias_correction_nu=bias_correction_nu,
                                        **_ox.given(mu_dtype=mu_dtype)), _ADAM)


def adagrad(learning_rate: Any, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7) -> Transform:
    """optax's ``adagrad``: ``ε`` inside the square root
    (:func:`functional_optim.aliases.optax_adagrad`; not torch's Adagrad)."""
    return optax_names(_A.optax_adagrad(learning_rate, initial_accumulator_value, eps),
                       {**_LR, "eps": "eps"})


def rmsprop(learning_rate: Any, decay: float = 0.9, eps: float = 1e-8,
            initial_scale: float = 0.0, eps_in_sqrt: bool = True, centered: bool = False,
            momentum: float | None = None, nesterov: bool = False,
            bias_correction: bool = False) -> Transform:
    """optax's ``rmsprop``: ``ε`` inside the root by default
    (:func:`functional_optim.aliases.optax_rmsprop`; not torch's RMSprop)."""
    names = {**_LR, "decay": "alpha", "eps": "eps"}
    if momentum is not None:
        names["momentum"] = "momentum"
    return optax_names(_A.optax_rmsprop(learning_rate, decay, eps, momentum=momentum,
                                        centered=centered, nesterov=nesterov,
                                        eps_in_sqrt=eps_in_sqrt,
                                        bias_correction=bias_correction,
                                        initial_scale=initial_scale), names)


def radam(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, threshold: float = 5.0, *, nesterov: bool = False) -> Transform:
    """optax's ``radam``: :func:`functional_optim.aliases.optax_radam` (``ε`` on the corrected
    root, ``ρ_t >= threshold``)."""
    return optax_names(_A.optax_radam(learning_rate, (b1, b2), eps, eps_root, threshold,
                                      nesterov=nesterov), {**_ADAM, "threshold": "threshold"})


def rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
          min_step_size: float = 1e-6, max_step_size: float = 50.0) -> Transform:
    """optax's ``rprop``: :func:`functional_optim.aliases.optax_rprop`."""
    return optax_names(_A.optax_rprop(learning_rate, (eta_minus, eta_plus),
                                      (min_step_size, max_step_size)),
                       {**_LR, "eta_minus": "etas.0", "eta_plus": "etas.1",
                        "min_step_size": "step_sizes.0", "max_step_size": "step_sizes.1"})


def adafactor(learning_rate: Any = None, min_dim_size_to_factor: int = 128,
              decay_rate: float = 0.8, decay_offset: int = 0,
              multiply_by_parameter_scale: bool = True, clipping_threshold: float | None = 1.0,
              momentum: float | None = None, dtype_momentum: torch.dtype = torch.float32,
              weight_decay_rate: float | None = None, eps: float = 1e-30,
              factored: bool = True, weight_decay_mask: Any = None) -> Transform:
    """optax's ``adafactor``: :func:`functional_optim.aliases.optax_adafactor`
    (``learning_rate=None``: a unit step; ``weight_decay_rate=None``: no decay)."""
    if weight_decay_mask is not None:
        raise NotImplementedError("adafactor: weight_decay_mask has no native option yet "
                                  "(functional_optim.aliases.optax_adafactor)")
    names = {"decay_rate": "decay_rate", "decay_offset": "decay_offset",
             "clipping_threshold": "clipping_threshold", "eps": "eps",
             "weight_decay_rate": "weight_decay"}
    if learning_rate is not None:
        names.update(_LR)
    if momentum is not None:
        names["momentum"] = "momentum"
    return optax_names(_A.optax_adafactor(
        1.0 if learning_rate is None else learning_rate, min_dim_size_to_factor, decay_rate,
        decay_offset, multiply_by_parameter_scale, clipping_threshold, momentum, dtype_momentum,
        weight_decay_rate or 0.0, eps, factored), names)

# -- optax's other optimizers: the native aliases of optax-core ---------------------------------


def lion(learning_rate: Any, b1: float = 0.9, b2: float = 0.99,
         mu_dtype: torch.dtype | None = None, weight_decay: float = 1e-3,
         mask: Any = None) -> Transform:
    """optax's ``lion``: :func:`functional_optim.aliases.lion`."""
    return optax_names(_A.lion(learning_rate, (b1, b2), weight_decay, mask=mask,
                               mu_dtype=mu_dtype),
                       {**_LR, "b1": "betas.0", "b2": "betas.1",
                        "weight_decay": "weight_decay"})


def lamb(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         eps_root: float = 0.0, weight_decay: float = 0.0, mask: Any = None) -> Transform:
    """optax's ``lamb``: :func:`functional_optim.aliases.lamb`."""
    return optax_names(_A.lamb(learning_rate, (b1, b2), eps, eps_root, weight_decay, mask=mask),
                       {**_ADAM, "weight_decay": "weight_decay"})


def lars(learning_rate: Any, weight_decay: float = 0.0, weight_decay_mask: Any = True,
         trust_coefficient: float = 0.001, eps: float = 0.0, trust_ratio_mask: Any = True,
         momentum: float = 0.9, nesterov: bool = False) -> Transform:
    """optax's ``lars``: :func:`functional_optim.aliases.lars`."""
    return optax_names(_A.lars(learning_rate, weight_decay, trust_coefficient, eps, momentum,
                               nesterov, weight_decay_mask=weight_decay_mask,
                               trust_ratio_mask=trust_ratio_mask),
                       {**_LR, "weight_decay": "weight_decay",
                        "trust_coefficient": "trust_coefficient", "eps": "eps",
                        "momentum": "momentum"})


def fromage(learning_rate: float, min_norm: float = 1e-6) -> Transform:
    """optax's ``fromage``: :func:`functional_optim.aliases.fromage`."""
    return optax_names(_A.fromage(learning_rate, min_norm), {**_LR, "min_norm": "min_norm"})


def adabelief(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
              eps_root: float = 1e-16, *, nesterov: bool = False) -> Transform:
    """optax's ``adabelief``: :func:`functional_optim.aliases.adabelief`."""
    return optax_names(_A.adabelief(learning_rate, (b1, b2), eps, eps_root, nesterov=nesterov),
                       _ADAM)


def yogi(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3) -> Transform:
    """optax's ``yogi``: :func:`functional_optim.aliases.yogi`."""
    return optax_names(_A.yogi(learning_rate, (b1, b2), eps),
                       {**_LR, "b1": "betas.0", "b2": "betas.1", "eps": "eps"})


def novograd(learning_rate: Any, b1: float = 0.9, b2: float = 0.25, eps: float = 1e-6,
             eps_root: float = 0.0, weight_decay: float = 0.0) -> Transform:
    """optax's ``novograd``: :func:`functional_optim.aliases.novograd`."""
    return optax_names(_A.novograd(learning_rate, (b1, b2), eps, eps_root, weight_decay),
                       {**_ADAM, "weight_decay": "weight_decay"})


def adan(learning_rate: Any, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99,
         eps: float = 1e-8, eps_root: float = 1e-8, weight_decay: float = 0.0,
         mask: Any = None) -> Transform:
    """optax's ``adan``: :func:`functional_optim.aliases.adan`."""
    return optax_names(_A.adan(learning_rate, (b1, b2, b3), eps, eps_root, weight_decay,
                               mask=mask),
                       {**_ADAM, "b3": "betas.2", "weight_decay": "weight_decay"})


def adamaxw(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            weight_decay: float = 1e-4, mask: Any = None) -> Transform:
    """optax's ``adamaxw``: :func:`functional_optim.aliases.adamaxw`."""
    return optax_names(_A.adamaxw(learning_rate, (b1, b2), eps, weight_decay, mask=mask),
                       {**_LR, "b1": "betas.0", "b2": "betas.1", "eps": "eps",
                        "weight_decay": "weight_decay"})


def sm3(learning_rate: float, momentum: float = 0.9) -> Transform:
    """optax's ``sm3``: :func:`functional_optim.aliases.sm3`."""
    return optax_names(_A.sm3(learning_rate, momentum), {**_LR, "momentum": "momentum"})


def noisy_sgd(learning_rate: Any, eta: float = 0.01, gamma: float = 0.55, key: Any = None, *,
              seed: int | None = None) -> Transform:
    """optax's ``noisy_sgd``: :func:`functional_optim.aliases.noisy_sgd` (``key``: an integer
    seed or a :class:`torch.Generator`)."""
    return optax_names(_A.noisy_sgd(learning_rate, eta, gamma,
                                    seed=_ox.seed_of(key, seed, "noisy_sgd")),
                       {**_LR, "eta": "eta", "gamma": "gamma"})


def polyak_sgd(max_learning_rate: float = 1.0, scaling: Any = 1.0, f_min: float = 0.0,
               eps: float = 0.0, variant: str = "sps") -> Transform:
    """optax's ``polyak_sgd`` (the loss as ``value=`` at ``update``):
    :func:`functional_optim.aliases.polyak_sgd` with ``lr=scaling``."""
    return optax_names(_A.polyak_sgd(scaling, max_learning_rate, f_min, eps, variant=variant),
                       {"max_learning_rate": "max_lr", "scaling": "lr", "f_min": "f_min",
                        "eps": "eps"})


def optimistic_gradient_descent(learning_rate: Any, alpha: float = 1.0,
                                beta: float = 1.0) -> Transform:
    """optax's ``optimistic_gradient_descent``:
    :func:`functional_optim.aliases.optimistic_gradient_descent`."""
    return optax_names(_A.optimistic_gradient_descent(learning_rate, alpha, beta),
                       {**_LR, "alpha": "alpha", "beta": "beta"})


def optimistic_adam_v2(learning_rate: Any, *, alpha: float = 1.0, beta: float = 1.0,
                       b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                       eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
                       nesterov: bool = True) -> Transform:
    """optax's ``optimistic_adam_v2``: :func:`functional_optim.aliases.optimistic_adam`."""
    return optax_names(_A.optimistic_adam(learning_rate, (b1, b2), eps, eps_root, alpha, beta,
                                          nesterov=nesterov, **_ox.given(mu_dtype=mu_dtype)),
                       {**_ADAM, "alpha": "alpha", "beta": "beta"})


def optimistic_adam(learning_rate: float, optimism: float | None = None, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                    mu_dtype: torch.dtype | None = None, *, nesterov: bool = True) -> Transform:
    """optax's ``optimistic_adam``: :func:`optimistic_adam_v2` with a unit step,
    ``alpha=learning_rate`` and ``beta=optimism`` (``learning_rate`` by default), as optax
    defines it."""
    return optax_names(_A.optimistic_adam(1.0, (b1, b2), eps, eps_root, learning_rate,
                                          learning_rate if optimism is None else optimism,
                                          nesterov=nesterov, **_ox.given(mu_dtype=mu_dtype)),
                       {"learning_rate": "alpha", "optimism": "beta", "b1": "betas.0",
                        "b2": "betas.1", "eps": "eps", "eps_root": "eps_root"})

_ZOOM = _ox.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


def lbfgs(learning_rate: Any = None, memory_size: int = 10, scale_init_precond: bool = True,
          linesearch: Transform | None = _ZOOM) -> Transform:
    """optax's ``lbfgs`` (``value=``, ``grad=``, ``value_fn=`` at ``update`` for its line
    search): ``scale_by_lbfgs → scale(-1) (or scale_by_learning_rate) → linesearch``, as
    optax's; the default line search is optax's zoom with ``initial_guess_strategy="one"``
    (:func:`functional_optim.aliases.optax_lbfgs` is the native alias)."""
    blocks: dict[str, Transform] = {
        "lbfgs": _T.scale_by_lbfgs_direction(memory_size, scale_init_precond),
        "scale": _T.scale(-1.0) if learning_rate is None
        else _T.scale_by_learning_rate(learning_rate)}
    if linesearch is not None:
        blocks["linesearch"] = linesearch
    names = {} if learning_rate is None else {"learning_rate": "scale.lr"}
    return optax_names(chain(**blocks), names)

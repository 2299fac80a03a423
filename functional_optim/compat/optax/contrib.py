"""``optax.contrib``: optax's contributed optimizers under their optax names, over the native
blocks (the same arguments and defaults; hyperparameters under optax's names). Each optimizer
is the chain optax builds, of the native blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import aliases as _A
from ... import combinators as _C
from ... import transforms as _T
from ...base import EmptyState, Transform, check_hparam
from ...base import chain as _chain
from ...transforms import (
    DifferentiallyPrivateAggregateState,
    GaLoreDimensionNumbers,
    HutchinsonState,
    ScaleByAdemamixState,
)
from ...transforms.asynchronous import adopt_clip_value
from ._aliases import lr_chain
from ._base import optax_names
from ._transforms import given, seed_of

__all__ = [
    "COCOBState",
    "DAdaptAdamWState",
    "DoGState",
    "DoWGState",
    "MechanicState",
    "MomoAdamState",
    "MomoState",
    "ProdigyState",
    "ScheduleFreeState",
    "cocob",
    "dadapt_adamw",
    "dog",
    "dowg",
    "mechanize",
    "momo",
    "momo_adam",
    "prodigy",
    "scale_by_cocob",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "DifferentiallyPrivateAggregateState",
    "GaLoreDimensionNumbers",
    "GaLoreState",
    "HutchinsonState",
    "MadgradState",
    "NormalizeState",
    "SAMState",
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdEMAMixState",
    "SophiaState",
    "acprop",
    "ademamix",
    "adopt",
    "differentially_private_aggregate",
    "dpsgd",
    "galore",
    "hutchinson_estimator_diag_hessian",
    "madgrad",
    "normalize",
    "sam",
    "scale_by_acprop",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_galore",
    "scale_by_madgrad",
    "scale_by_simplified_ademamix",
    "simplified_ademamix",
    "sophia",
    "SplitRealAndImaginaryState",
    "split_real_and_imaginary",
    "ReduceLROnPlateauState",
    "reduce_on_plateau",
    "MuonDimensionNumbers",
    "MuonState",
    "muon",
    "scale_by_muon",
]

COCOBState = _T.ScaleByCocobState
DAdaptAdamWState = _T.ScaleByDadaptAdamwState
DoGState = _T.ScaleByDogState
DoWGState = _T.ScaleByDowgState
MechanicState = _T.MechanicState
MomoAdamState = _T.ScaleByMomoAdamState
MomoState = _T.ScaleByMomoState
ProdigyState = _T.ScaleByProdigyState
ScheduleFreeState = _T.ScheduleFreeState
schedule_free_eval_params = _T.schedule_free_eval_params
GaLoreState = _T.ScaleByGaloreState
MadgradState = _T.ScaleByMadgradState
NormalizeState = EmptyState
SAMState = _T.SamState
ScaleBySimplifiedAdEMAMixState = _T.ScaleBySimplifiedAdemamixState
SophiaState = _T.ScaleBySophiaState
SplitRealAndImaginaryState = _C.SplitRealAndImaginaryState
ReduceLROnPlateauState = _T.ReduceOnPlateauAveragedState
MuonState = _T.ScaleByMuonCountedState

_B12 = {"b1": "betas.0", "b2": "betas.1"}
_EPS = {"eps": "eps", "eps_root": "eps_root"}


def _in(block: str, names: dict[str, str]) -> dict[str, str]:
    return {k: f"{block}.{v}" for k, v in names.items()}


def _decay(weight_decay: float, mask: Any = None) -> dict:
    """optax's ``add_decayed_weights`` member of a chain, and its hyperparameter's name."""
    return {"weight_decay": _T.add_decayed_weights(weight_decay, mask)}


_WD = {"weight_decay": "weight_decay.weight_decay"}


def scale_by_acprop(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
                    eps_root: float = 1e-16) -> Transform:
    """optax's ``scale_by_acprop``: :func:`functional_optim.transforms.scale_by_acprop`."""
    return optax_names(_T.scale_by_acprop((b1, b2), eps, eps_root), {**_B12, **_EPS})


def acprop(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
           eps_root: float = 1e-16, weight_decay: float = 0.0, mask: Any = None) -> Transform:
    """optax's ``acprop``: ``scale_by_acprop → add_decayed_weights(mask) →
    scale_by_learning_rate``."""
    return lr_chain(learning_rate, {**_in("acprop", {**_B12, **_EPS}), **_WD},
                    acprop=_T.scale_by_acprop((b1, b2), eps, eps_root),
                    **_decay(weight_decay, mask))


_B123 = {**_B12, "b3": "betas.2", "alpha": "alpha", **_EPS}


def scale_by_ademamix(b1: float = 0.9, b2: float = 0.999, b3: float = 0.9999,
                      alpha: float = 6.0, eps: float = 1e-8, eps_root: float = 0.0,
                      mu_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``scale_by_ademamix``: :func:`functional_optim.transforms.scale_by_ademamix`."""
    return optax_names(_T.scale_by_ademamix((b1, b2, b3), alpha, eps, eps_root,
                                            **given(mu_dtype=mu_dtype)), _B123)


def ademamix(learning_rate: Any, b1: float = 0.9, b2: float = 0.999, b3: float = 0.9999,
             alpha: float = 5.0, eps: float = 1e-8, eps_root: float = 0.0,
             mu_dtype: torch.dtype | None = None, weight_decay: float = 0.0,
             mask: Any = None) -> Transform:
    """optax's ``ademamix``: ``scale_by_ademamix → add_decayed_weights(mask) →
    scale_by_learning_rate``."""
    return lr_chain(learning_rate, {**_in("ademamix", _B123), **_WD},
                    ademamix=_T.scale_by_ademamix((b1, b2, b3), alpha, eps, eps_root,
                                                  **given(mu_dtype=mu_dtype)),
                    **_decay(weight_decay, mask))


_SIMPLE = {**_B12, "alpha": "alpha", **_EPS}


def scale_by_simplified_ademamix(b1: float = 0.99, b2: float = 0.95, alpha: float = 0.0,
                                 eps: float = 1e-8, eps_root: float = 0.0) -> Transform:
    """optax's ``scale_by_simplified_ademamix``:
    :func:`functional_optim.transforms.scale_by_simplified_ademamix`."""
    return optax_names(_T.scale_by_simplified_ademamix((b1, b2), alpha, eps, eps_root), _SIMPLE)


def simplified_ademamix(learning_rate: Any, b1: float = 0.99, b2: float = 0.95,
                        alpha: float = 0.0, eps: float = 1e-8, eps_root: float = 0.0,
                        weight_decay: float = 0.0, mask: Any = None) -> Transform:
    """optax's ``simplified_ademamix``: ``scale_by_simplified_ademamix →
    add_decayed_weights(mask) → scale_by_learning_rate``."""
    return lr_chain(learning_rate, {**_in("ademamix", _SIMPLE), **_WD},
                    ademamix=_T.scale_by_simplified_ademamix((b1, b2), alpha, eps, eps_root),
                    **_decay(weight_decay, mask))


def scale_by_adopt(b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6,
                   mu_dtype: torch.dtype | None = None, *, nesterov: bool = False,
                   use_clipping: bool = True,
                   clip_value_fn: Callable[[torch.Tensor], Any] = adopt_clip_value
                   ) -> Transform:
    """optax's ``scale_by_adopt``: :func:`functional_optim.transforms.scale_by_adopt`
    (``use_clipping=False``: ``clip_value=None``)."""
    return optax_names(_T.scale_by_adopt((b1, b2), eps, nesterov=nesterov,
                                         clip_value=clip_value_fn if use_clipping else None,
                                         **given(mu_dtype=mu_dtype)),
                       {**_B12, "eps": "eps"})


def adopt(learning_rate: Any, b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6,
          mu_dtype: torch.dtype | None = None, *, nesterov: bool = False,
          use_clipping: bool = True,
          clip_value_fn: Callable[[torch.Tensor], Any] = adopt_clip_value) -> Transform:
    """optax's ``adopt``: ``scale_by_adopt → scale_by_learning_rate``."""
    return lr_chain(learning_rate, _in("adopt", {**_B12, "eps": "eps"}),
                    adopt=_T.scale_by_adopt((b1, b2), eps, nesterov=nesterov,
                                            clip_value=clip_value_fn if use_clipping else None,
                                            **given(mu_dtype=mu_dtype)))


_MADGRAD = {"learning_rate": "lr", "momentum": "momentum", "eps": "eps"}


def scale_by_madgrad(learning_rate: Any = 1e-2, momentum: float = 0.9,
                     eps: float = 1e-6) -> Transform:
    """optax's ``scale_by_madgrad`` (a descent step: it holds the learning rate):
    :func:`functional_optim.transforms.scale_by_madgrad`."""
    return optax_names(_T.scale_by_madgrad(learning_rate, momentum, eps), _MADGRAD)


def madgrad(learning_rate: Any = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0,
            eps: float = 1e-6) -> Transform:
    """optax's ``madgrad``: ``add_decayed_weights → scale_by_madgrad``."""
    return optax_names(_chain(weight_decay=_T.add_decayed_weights(weight_decay),
                              madgrad=_T.scale_by_madgrad(learning_rate, momentum, eps)),
                       {**_in("madgrad", _MADGRAD), **_WD})


def hutchinson_estimator_diag_hessian(random_seed: int | torch.Tensor | None = None
                                      ) -> Transform:
    """optax's ``hutchinson_estimator_diag_hessian`` (``obj_fn=`` or ``hvp_fn=`` at
    ``update``): :func:`functional_optim.transforms.hutchinson_estimator_diag_hessian`;
    ``random_seed`` is an integer seed (or a key tensor), 0 by default."""
    return _T.hutchinson_estimator_diag_hessian(0 if random_seed is None else random_seed)


def sophia(learning_rate: Any, b1: float = 0.965, b2: float = 0.99, eps: float = 1e-8,
           weight_decay: float = 1e-4, weight_decay_mask: Any = None, gamma: float = 0.01,
           clip_threshold: float | None = 1.0, update_interval: int = 10,
           hessian_diagonal_fn: Transform | None = None,
           mu_dtype: torch.dtype | None = None, verbose: bool = False,
           print_win_rate_every_n_steps: int = 0) -> Transform:
    """optax's ``sophia`` (``obj_fn=`` at ``update``): ``scale_by_sophia →
    add_decayed_weights(mask) → scale_by_learning_rate``
    (:func:`functional_optim.transforms.scale_by_sophia`, Hutchinson's estimator by default).
    ``verbose`` and ``print_win_rate_every_n_steps`` print nothing here (no host sync)."""
    del verbose, print_win_rate_every_n_steps
    block = _T.scale_by_sophia((b1, b2), eps, gamma, clip_threshold, update_interval,
                               hessian_diagonal_fn, **given(mu_dtype=mu_dtype))
    return lr_chain(learning_rate,
                    {**_in("sophia", {**_B12, "eps": "eps", "gamma": "gamma",
                                      "clip_threshold": "clip_threshold"}), **_WD},
                    sophia=block, **_decay(weight_decay, weight_decay_mask))


def differentially_private_aggregate(l2_norm_clip: float, noise_multiplier: float,
                                     key: Any = None, *, seed: int | None = None) -> Transform:
    """optax's ``differentially_private_aggregate`` (per-example gradients, the leading
    dimension): :func:`functional_optim.transforms.differentially_private_aggregate`
    (``key``: an integer seed or a :class:`torch.Generator`)."""
    return _T.differentially_private_aggregate(
        l2_norm_clip, noise_multiplier, seed_of(key, seed, "differentially_private_aggregate"))


def dpsgd(learning_rate: Any, l2_norm_clip: float, noise_multiplier: float, seed: int,
          momentum: float | None = None, nesterov: bool = False) -> Transform:
    """optax's ``dpsgd``: ``differentially_private_aggregate → [trace] →
    scale_by_learning_rate``."""
    names = {"l2_norm_clip": "dp.l2_norm_clip", "noise_multiplier": "dp.noise_multiplier"}
    blocks = {"dp": _T.differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed)}
    if momentum is not None:
        blocks["momentum"] = _T.trace(momentum, 0.0, nesterov)
        names["momentum"] = "momentum.momentum"
    return lr_chain(learning_rate, names, **blocks)


def scale_by_galore(rank: int = 128, update_proj_gap: int = 200, scale: float = 1.0,
                    base_optimizer: Transform | None = None,
                    weight_dimension_numbers: Any = None) -> Transform:
    """optax's ``scale_by_galore``: :func:`functional_optim.transforms.scale_by_galore`."""
    return _T.scale_by_galore(rank, update_proj_gap, scale, base_optimizer,
                              weight_dimension_numbers)


def galore(learning_rate: Any, rank: int = 128, update_proj_gap: int = 200, scale: float = 1.0,
           base_optimizer: Transform | None = None, weight_decay: float = 0.0,
           mask: Any = None, weight_dimension_numbers: Any = None) -> Transform:
    """optax's ``galore``: ``scale_by_galore → add_decayed_weights(mask) →
    scale_by_learning_rate``."""
    return lr_chain(learning_rate, _WD,
                    galore=_T.scale_by_galore(rank, update_proj_gap, scale, base_optimizer,
                                              weight_dimension_numbers),
                    **_decay(weight_decay, mask))


def normalize() -> Transform:
    """optax's ``normalize``: ``u / ‖u‖`` (:func:`functional_optim.transforms.normalize`)."""
    return _T.normalize()


def sam(optimizer: Transform, adv_optimizer: Transform, sync_period: int = 2,
        reset_state: bool = True, opaque_mode: bool = False,
        batch_axis_name: str | None = None) -> Transform:
    """optax's ``sam`` (sharpness-aware minimization):
    :func:`functional_optim.transforms.sam`; ``batch_axis_name`` (a JAX ``pmap`` axis) has no
    meaning here and must be ``None``."""
    if batch_axis_name is not None:
        raise ValueError("sam: batch_axis_name is a JAX pmap axis; average the gradients with "
                         "torch.distributed (DDP) instead")
    return _T.sam(optimizer, adv_optimizer, sync_period, reset_state, opaque_mode)


# -- parameter-free and schedule-free methods ---------------------------------------------------


def scale_by_cocob(alpha: float = 100.0, eps: float = 1e-8) -> Transform:
    """optax's ``scale_by_cocob``: :func:`functional_optim.transforms.scale_by_cocob`."""
    return _T.scale_by_cocob(alpha, eps)


def cocob(learning_rate: Any = 1.0, alpha: float = 100.0, eps: float = 1e-8,
          weight_decay: float = 0.0, mask: Any = None) -> Transform:
    """optax's ``cocob``: ``add_decayed_weights(mask) → scale_by_learning_rate (no sign flip)
    → scale_by_cocob``."""
    return optax_names(
        _chain(weight_decay=_T.add_decayed_weights(weight_decay, mask),
               lr=_T.scale_by_learning_rate(learning_rate, flip_sign=False),
               cocob=_T.scale_by_cocob(alpha, eps)),
        {"learning_rate": "lr.lr", "alpha": "cocob.alpha", "eps": "cocob.eps", **_WD})


def dadapt_adamw(learning_rate: Any = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, estim_lr0: float = 1e-6,
                 weight_decay: float = 0.0) -> Transform:
    """optax's ``dadapt_adamw``: :func:`functional_optim.aliases.dadapt_adamw` (``d0`` is
    ``estim_lr0``)."""
    return optax_names(_A.dadapt_adamw(learning_rate, betas, eps, weight_decay, estim_lr0),
                       {"learning_rate": "lr", "betas": "betas", "eps": "eps",
                        "estim_lr0": "d0", "weight_decay": "weight_decay"})


def _optional_decay(weight_decay: float | None, mask: Any) -> dict:
    """optax's ``add_decayed_weights`` member, or none for ``weight_decay=None``."""
    return {} if weight_decay is None else _decay(weight_decay, mask)


def dog(learning_rate: Any = 1.0, init_step: tuple[str, float] = ("heuristic", 1e-6),
        eps: float = 1e-8, weight_decay: float | None = None, mask: Any = None) -> Transform:
    """optax's ``dog``: ``[add_decayed_weights(mask)] → scale_by_dog → scale_by_learning_rate``
    (:func:`functional_optim.transforms.scale_by_dog`; ``init_step`` is the pair
    ``(kind, value)``: ``"distance"``, ``"learning_rate"`` or ``"heuristic"``)."""
    kind, value = init_step
    return lr_chain(learning_rate,
                    {"eps": "dog.eps", **({} if weight_decay is None else _WD)},
                    **_optional_decay(weight_decay, mask),
                    dog=_T.scale_by_dog(value, eps, init_step_type=kind))


def dowg(learning_rate: Any = 1.0, init_estim_sq_dist: float | None = None, eps: float = 1e-4,
         weight_decay: float | None = None, mask: Any = None) -> Transform:
    """optax's ``dowg``: ``[add_decayed_weights(mask)] → scale_by_dowg →
    scale_by_learning_rate`` (:func:`functional_optim.transforms.scale_by_dowg`)."""
    return lr_chain(learning_rate,
                    {"eps": "dowg.eps", **({} if weight_decay is None else _WD)},
                    **_optional_decay(weight_decay, mask),
                    dowg=_T.scale_by_dowg(init_estim_sq_dist, eps))


def mechanize(base_optimizer: Transform, weight_decay: float = 1e-2, eps: float = 1e-8,
              s_init: float = 1e-6, num_betas: int = 6) -> Transform:
    """optax's ``mechanize`` (Mechanic's learned scale of ``base_optimizer``'s updates):
    :func:`functional_optim.transforms.mechanize`."""
    return _T.mechanize(base_optimizer, weight_decay, eps, s_init, num_betas=num_betas)


def momo(learning_rate: Any = 1.0, beta: float = 0.9, lower_bound: float = 0.0,
         weight_decay: float = 0.0, adapt_lower_bound: bool = False) -> Transform:
    """optax's ``momo`` (the loss as ``value=`` at ``update``):
    :func:`functional_optim.aliases.momo`."""
    return optax_names(_A.momo(learning_rate, beta, lower_bound, weight_decay,
                               adapt_lower_bound=adapt_lower_bound),
                       {"learning_rate": "lr", "beta": "beta", "lower_bound": "lower_bound",
                        "weight_decay": "weight_decay"})


def momo_adam(learning_rate: Any = 1e-2, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              lower_bound: float = 0.0, weight_decay: float = 0.0,
              adapt_lower_bound: bool = False) -> Transform:
    """optax's ``momo_adam`` (the loss as ``value=`` at ``update``):
    :func:`functional_optim.aliases.momo_adam`."""
    return optax_names(_A.momo_adam(learning_rate, (b1, b2), eps, lower_bound, weight_decay,
                                    adapt_lower_bound=adapt_lower_bound),
                       {"learning_rate": "lr", **_B12, "eps": "eps",
                        "lower_bound": "lower_bound", "weight_decay": "weight_decay"})


def prodigy(learning_rate: Any = 1.0, betas: tuple[float, float] = (0.9, 0.999),
            beta3: float | None = None, eps: float = 1e-8, estim_lr0: float = 1e-6,
            estim_lr_coef: float = 1.0, weight_decay: float = 0.0,
            safeguard_warmup: bool = False) -> Transform:
    """optax's ``prodigy``: :func:`functional_optim.aliases.prodigy` (``d0`` is ``estim_lr0``,
    ``d_coef`` is ``estim_lr_coef``)."""
    return optax_names(_A.prodigy(learning_rate, betas, beta3, eps, weight_decay, estim_lr0,
                                  estim_lr_coef, safeguard_warmup=safeguard_warmup),
                       {"learning_rate": "lr", "betas": "betas", "beta3": "beta3", "eps": "eps",
                        "estim_lr0": "d0", "estim_lr_coef": "d_coef",
                        "weight_decay": "weight_decay"})


def schedule_free(base_optimizer: Transform, learning_rate: Any, b1: float = 0.9,
                  weight_lr_power: float = 2.0,
                  state_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``schedule_free`` (the evaluation parameters:
    :func:`schedule_free_eval_params`): :func:`functional_optim.transforms.schedule_free`."""
    return _T.schedule_free(base_optimizer, learning_rate, b1, weight_lr_power,
                            state_dtype=state_dtype)


def schedule_free_adamw(learning_rate: Any = 0.0025, warmup_steps: int | None = None,
                        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        weight_decay: float = 0.0, weight_lr_power: float = 2.0,
                        state_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``schedule_free_adamw``: :func:`functional_optim.aliases.schedule_free_adamw`."""
    return optax_names(_A.schedule_free_adamw(learning_rate, (b1, b2), eps, weight_decay,
                                              warmup_steps, weight_lr_power,
                                              state_dtype=state_dtype),
                       {"learning_rate": "lr", **_B12, "eps": "eps",
                        "weight_decay": "weight_decay", "weight_lr_power": "weight_lr_power"})


def schedule_free_sgd(learning_rate: Any = 1.0, warmup_steps: int | None = None,
                      b1: float = 0.9, weight_decay: float | None = None,
                      weight_lr_power: float = 2.0,
                      state_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``schedule_free_sgd``: :func:`functional_optim.aliases.schedule_free_sgd`
    (``momentum`` is ``b1``; ``weight_decay=None`` is no decay)."""
    return optax_names(_A.schedule_free_sgd(learning_rate, b1, weight_decay or 0.0,
                                            warmup_steps, weight_lr_power,
                                            state_dtype=state_dtype),
                       {"learning_rate": "lr", "b1": "momentum",
                        "weight_decay": "weight_decay", "weight_lr_power": "weight_lr_power"})


def split_real_and_imaginary(inner: Transform) -> Transform:
    """optax's ``split_real_and_imaginary``: ``inner`` on the real and imaginary parts of
    complex leaves as separate real leaves
    (:func:`functional_optim.combinators.split_real_and_imaginary`; PyTorch's complex gradients
    need no conjugation)."""
    return _C.split_real_and_imaginary(inner)


def reduce_on_plateau(factor: float = 0.1, patience: int = 10, rtol: float = 1e-4,
                      atol: float = 0.0, cooldown: int = 0, accumulation_size: int = 1,
                      min_scale: float = 0.0) -> Transform:
    """optax's ``reduce_on_plateau`` (the loss as ``value=`` at ``update``; a scale, no sign
    flip): :func:`functional_optim.reduce_on_plateau` with ``rule="optax"`` and ``lr=1``
    (``rtol`` is ``threshold``, ``min_scale`` is ``min_lr``)."""
    owner = "reduce_on_plateau"
    check_hparam(owner, "factor", factor, gt=0, lt=1)
    check_hparam(owner, "rtol", rtol, ge=0, le=1)
    if rtol == 0 and atol == 0:
        raise ValueError(f"{owner}: at least one of rtol and atol must be positive, got "
                         f"rtol={rtol!r} and atol={atol!r}")
    return optax_names(
        _T.reduce_on_plateau(1.0, factor, patience, rtol, "rel", cooldown, min_scale,
                             rule="optax", atol=atol, accumulation_size=accumulation_size),
        {"factor": "factor", "patience": "patience", "rtol": "threshold", "atol": "atol",
         "cooldown": "cooldown", "accumulation_size": "accumulation_size",
         "min_scale": "min_lr"})


MuonDimensionNumbers = _T.MuonDimensionNumbers
_OPTAX_MUON_COEFFS = {"standard": _T.MUON_NS_COEFFICIENTS, "dion": _T.NS_COEFFICIENTS["dion"]}


def _muon_options(owner: str, ns_coeffs: Any, ns_steps: int, mu_dtype: Any,
                  preconditioning: str) -> tuple:
    """optax's Newton-Schulz arguments as the native ones (``ns_steps`` is the number of
    triples when one per iteration is given); a clear error for optax's options that have no
    native home yet."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in _OPTAX_MUON_COEFFS:
            raise ValueError(f"{owner}: unknown ns_coeffs preset {ns_coeffs!r}; known: "
                             f"{sorted(_OPTAX_MUON_COEFFS)}")
        ns_coeffs = _OPTAX_MUON_COEFFS[ns_coeffs]
    coeffs = _T.resolve_ns_coefficients(ns_coeffs)
    if isinstance(coeffs, tuple) and coeffs and isinstance(coeffs[0], tuple):
        if len(coeffs) > ns_steps:
            raise ValueError(f"{owner}: {len(coeffs)} coefficient triples for ns_steps="
                             f"{ns_steps}: not enough steps")
        ns_steps = len(coeffs)
    unsupported = {"mu_dtype": mu_dtype is not None,
                   "preconditioning": preconditioning != "frobenius"}
    given_ = [k for k, v in unsupported.items() if v]
    if given_:
        raise NotImplementedError(f"{owner}: {given_} have no native home yet (supported: "
                                  "mu_dtype=None, preconditioning='frobenius')")
    return coeffs, ns_steps


def scale_by_muon(ns_coeffs: Any = _T.MUON_NS_COEFFICIENTS, ns_steps: int = 5,
                  beta: float = 0.95, eps: float = 1e-8, mu_dtype: torch.dtype | None = None,
                  *, nesterov: bool = True, adaptive: bool = False,
                  preconditioning: str = "frobenius",
                  weight_dimension_numbers: Any = None) -> Transform:
    """optax's ``scale_by_muon`` (no shape scaling):
    :func:`functional_optim.transforms.scale_by_muon` with ``bias_correction``, ``eps_added``,
    ``adjust_lr_fn="none"`` and the iteration in the parameters' dtype."""
    coeffs, ns_steps = _muon_options("scale_by_muon", ns_coeffs, ns_steps, mu_dtype,
                                     preconditioning)
    return optax_names(
        _T.scale_by_muon(beta, nesterov, coeffs, eps, ns_steps, "none", ns_dtype=None,
                         bias_correction=True, eps_added=True, adaptive=adaptive, layout="jax",
                         dimension_numbers=weight_dimension_numbers),
        {"beta": "momentum", "eps": "eps", "ns_coeffs": "ns_coefficients"})


def muon(learning_rate: Any, ns_coeffs: Any = _T.MUON_NS_COEFFICIENTS, ns_steps: int = 5,
         beta: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.0,
         weight_decay_mask: Any = None, mu_dtype: torch.dtype | None = None, *,
         nesterov: bool = True, adaptive: bool = False, preconditioning: str = "frobenius",
         adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps_root: float = 0.0,
         adam_weight_decay: float = 0.0, adam_learning_rate: Any = None,
         muon_weight_dimension_numbers: Any = None,
         consistent_rms: float | None = None) -> Transform:
    """optax's ``muon``: :func:`functional_optim.optax_muon` (``beta`` is ``momentum``,
    ``consistent_rms`` is ``rms_scale`` with ``match_rms``; Muon on 2-D leaves, AdamW on the
    others)."""
    coeffs, ns_steps = _muon_options("muon", ns_coeffs, ns_steps, mu_dtype, preconditioning)
    names = {"learning_rate": "lr", "beta": "momentum", "eps": "eps",
             "weight_decay": "weight_decay", "adam_b1": "adam_betas.0",
             "adam_b2": "adam_betas.1", "adam_eps_root": "adam_eps_root",
             "adam_weight_decay": "adam_weight_decay", "ns_coeffs": "ns_coefficients"}
    if adam_learning_rate is not None:
        names["adam_learning_rate"] = "adam_lr"
    if consistent_rms is not None:
        names["consistent_rms"] = "rms_scale"
    return optax_names(
        _A.optax_muon(learning_rate, beta, eps, weight_decay, adam_learning_rate,
                      (adam_b1, adam_b2), adam_eps_root, adam_weight_decay,
                      0.2 if consistent_rms is None else consistent_rms, nesterov=nesterov,
                      adaptive=adaptive, match_rms=consistent_rms is not None,
                      ns_coefficients=coeffs, ns_steps=ns_steps,
                      weight_decay_mask=weight_decay_mask,
                      dimension_numbers=muon_weight_dimension_numbers), names)

"""optax's building blocks (``scale_by_*``, clipping, decay, ``trace``, ``ema``) over the
native blocks of :mod:`functional_optim.transforms` and :mod:`functional_optim.combinators`.

Each function has optax's name, arguments and defaults and returns the native block with
optax's variant selected; its hyperparameters are under optax's argument names
(:func:`~functional_optim.compat.optax._base.optax_names`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import combinators as _C
from ... import transforms as _T
from ...base import Transform
from ...base import chain as _base_chain
from ._base import optax_names

__all__ = [
    "add_noise",
    "scale_by_adan",
    "scale_by_belief",
    "scale_by_lion",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_sm3",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "scale_by_backtracking_linesearch",
    "scale_by_lbfgs",
    "scale_by_zoom_linesearch",
    "scale_by_amsgrad",
    "scale_by_factored_rms",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_stddev",
    "normalize_by_update_norm",
    "scale_by_distance_over_gradients",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "centralize",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "ema",
    "keep_params_nonnegative",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_sign",
    "trace",
    "zero_nans",
]

centralize = _C.centralize
zero_nans = _C.zero_nans
keep_params_nonnegative = _T.keep_params_nonnegative
clip_by_block_rms = _T.clip_by_block_rms
per_example_global_norm_clip = _T.per_example_global_norm_clip
per_example_layer_norm_clip = _T.per_example_layer_norm_clip
clip = _T.clip
scale = _T.scale
scale_by_sign = _T.sign


def given(**options: Any) -> dict:
    """The structural options given a value other than optax's default (``None``/``False``):
    the native block keeps its own default for the others."""
    return {k: v for k, v in options.items() if v is not None and v is not False}


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                  mu_dtype: torch.dtype | None = None, *, nesterov: bool = False) -> Transform:
    """optax's ``scale_by_adam``: :func:`functional_optim.scale_by_adam` (``nesterov``: its
    Nesterov first moment; ``mu_dtype``: the first moment's dtype)."""
    return optax_names(
        _T.scale_by_adam((b1, b2), eps, eps_root, **given(nesterov=nesterov, mu_dtype=mu_dtype)),
        {"b1": "betas.0", "b2": "betas.1", "eps": "eps", "eps_root": "eps_root"})


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """optax's ``scale_by_adamax``: :func:`functional_optim.scale_by_adamax` (the same
    infinity norm, :math:`\\max(\\beta_2 u, |g| + \\epsilon)`)."""
    return optax_names(_T.scale_by_adamax((b1, b2), eps),
                       {"b1": "betas.0", "b2": "betas.1", "eps": "eps"})


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> Transform:
    """optax's ``scale_by_adadelta``: :func:`functional_optim.scale_by_adadelta`."""
    return _T.scale_by_adadelta(rho, eps)


def scale_by_learning_rate(learning_rate: Any, *, flip_sign: bool = True) -> Transform:
    """optax's ``scale_by_learning_rate``: :func:`functional_optim.scale_by_learning_rate`
    (a number, tensor or schedule); ``None`` is :func:`functional_optim.identity`, as optax's."""
    if learning_rate is None:
        return _T.identity()
    return optax_names(_T.scale_by_learning_rate(learning_rate, flip_sign=flip_sign),
                       {"learning_rate": "lr"})


def scale_by_schedule(step_size_fn: Callable[[torch.Tensor], Any]) -> Transform:
    """optax's ``scale_by_schedule``: the updates times ``step_size_fn(count)``, no sign flip
    (:func:`functional_optim.scale_by_learning_rate` with ``flip_sign=False``; state
    :class:`~functional_optim.ScaleByScheduleState`)."""
    return optax_names(_T.scale_by_learning_rate(step_size_fn, flip_sign=False),
                       {"step_size_fn": "lr"})


def clip_by_global_norm(max_norm: float) -> Transform:
    """optax's ``clip_by_global_norm``: :math:`u \\cdot c / \\max(\\|u\\|, c)`
    (:func:`functional_optim.clip_by_global_norm` with ``formula="tensorflow"``, optax's rule;
    torch's adds 1e-6 to the norm)."""
    return _T.clip_by_global_norm(max_norm, formula="tensorflow")


def adaptive_grad_clip(clipping: float, eps: float = 1e-3, axis: Any = None) -> Transform:
    """optax's ``adaptive_grad_clip``: :func:`functional_optim.adaptive_grad_clip` with
    ``layout="jax"`` (optax's units: JAX kernels are ``(in, out)``; the native default,
    ``layout="torch"``, is the rule for torch's ``(out, in)`` weights)."""
    return _T.adaptive_grad_clip(clipping, eps, axis, layout="jax")


def add_decayed_weights(weight_decay: float = 0.0, mask: Any = None) -> Transform:
    """optax's ``add_decayed_weights``: :math:`u + \\lambda p` where ``mask`` is True
    (:func:`functional_optim.add_decayed_weights`)."""
    return _T.add_decayed_weights(weight_decay, mask)


def trace(decay: float, nesterov: bool = False,
          accumulator_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``trace``: :math:`t = g + \\mu t`, the update :math:`t` or with ``nesterov``
    :math:`g + \\mu t` (:func:`functional_optim.trace` with no dampening)."""
    return optax_names(_T.trace(decay, 0.0, nesterov,
                                **given(accumulator_dtype=accumulator_dtype)),
                       {"decay": "momentum"})


def ema(decay: float, debias: bool = True,
        accumulator_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``ema``: :func:`functional_optim.ema`."""
    return _C.ema(decay, debias, accumulator_dtype)


def seed_of(key: Any, seed: int | None, owner: str) -> int:
    """The integer seed of optax's ``key``/``seed`` arguments: an int, or a draw from a
    :class:`torch.Generator` (a JAX key has no meaning here)."""
    if key is not None and seed is not None:
        raise ValueError(f"{owner}: give key or seed, not both")
    if isinstance(key, torch.Generator):
        return int(torch.randint(0, 2**31 - 1, (), generator=key))
    value = key if key is not None else seed
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: key must be an int seed or a torch.Generator, got "
                        f"{type(value).__name__}")
    return value


def scale_by_distance_over_gradients(reps_rel: float = 1e-6, eps: float = 1e-8,
                                     param_dtype: torch.dtype | None = None,
                                     global_scale: float = 1.0) -> Transform:
    """optax's ``scale_by_distance_over_gradients`` (DoG with per-layer distances):
    :func:`functional_optim.transforms.scale_by_distance_over_gradients` (``param_dtype``:
    the dtype of the initial parameters kept; ``None``, the parameters' own, where optax
    defaults to float32)."""
    return _T.scale_by_distance_over_gradients(reps_rel, eps, global_scale,
                                               param_dtype=param_dtype)


def normalize_by_update_norm(scale_factor: float = 1.0, eps: float = 1e-6) -> Transform:
    r"""optax's ``normalize_by_update_norm``: :math:`s\,u / (\|u\| + \epsilon)`
    (:func:`functional_optim.transforms.normalize`, then :func:`functional_optim.scale`)."""
    return optax_names(_base_chain(normalize=_T.normalize(eps), scale=_T.scale(scale_factor)),
                       {"scale_factor": "scale.step_size", "eps": "normalize.eps"})


# -- optax's variants of the blocks torch also has ------------------------------------------------


def scale_by_amsgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
                     bias_correction_mu: bool = True,
                     bias_correction_nu: bool = True) -> Transform:
    """optax's ``scale_by_amsgrad``: the maximum of the bias-corrected second moments
    (:func:`functional_optim.scale_by_adam` with ``amsgrad=True, amsgrad_corrected=True``)."""
    corrections = {(True, True): "moments", (True, False): "first_moment",
                   (False, True): "second_moment", (False, False): "none"}
    return optax_names(
        _T.scale_by_adam((b1, b2), eps, eps_root, amsgrad=True, amsgrad_corrected=True,
                         bias_correction=corrections[bias_correction_mu, bias_correction_nu],
                         **given(mu_dtype=mu_dtype)),
        {"b1": "betas.0", "b2": "betas.1", "eps": "eps", "eps_root": "eps_root"})


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                 eps_in_sqrt: bool = True, bias_correction: bool = False) -> Transform:
    """optax's ``scale_by_rms``: :func:`functional_optim.scale_by_rms` with ``ε`` inside the
    root by default (``eps_in_sqrt``), ``initial_scale`` and ``bias_correction``."""
    return optax_names(_T.scale_by_rms(decay, eps, eps_in_sqrt=eps_in_sqrt,
                                       bias_correction=bias_correction,
                                       initial_scale=initial_scale),
                       {"decay": "alpha", "eps": "eps"})


def scale_by_stddev(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                    eps_in_sqrt: bool = True, bias_correction: bool = False) -> Transform:
    """optax's ``scale_by_stddev``: the centered :func:`scale_by_rms`
    (:func:`functional_optim.scale_by_rms` with ``centered=True``)."""
    return optax_names(_T.scale_by_rms(decay, eps, True, eps_in_sqrt=eps_in_sqrt,
                                       bias_correction=bias_correction,
                                       initial_scale=initial_scale),
                       {"decay": "alpha", "eps": "eps"})


def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> Transform:
    """optax's ``scale_by_rss``: :func:`functional_optim.scale_by_rss` with ``ε`` inside the
    square root (``eps_in_sqrt=True``) and no learning-rate decay."""
    return optax_names(_T.scale_by_rss(0.0, initial_accumulator_value, eps, eps_in_sqrt=True),
                       {"eps": "eps"})


def scale_by_radam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   eps_root: float = 0.0, threshold: float = 5.0, *,
                   nesterov: bool = False) -> Transform:
    """optax's ``scale_by_radam``: :func:`functional_optim.scale_by_radam` with
    ``variant="optax"``."""
    return optax_names(_T.scale_by_radam((b1, b2), eps, threshold, eps_root=eps_root,
                                         nesterov=nesterov, variant="optax"),
                       {"b1": "betas.0", "b2": "betas.1", "eps": "eps", "eps_root": "eps_root",
                        "threshold": "threshold"})


def scale_by_rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
                   min_step_size: float = 1e-6, max_step_size: float = 50.0) -> Transform:
    """optax's ``scale_by_rprop`` (an ascent step, as optax's: its ``rprop`` negates it):
    :func:`functional_optim.scale_by_rprop` with ``variant="optax"``, whose output is the
    descent step, negated."""
    native = _T.scale_by_rprop(learning_rate, (eta_minus, eta_plus),
                               (min_step_size, max_step_size), variant="optax")
    return optax_names(_base_chain(rprop=native, sign=_T.scale(-1.0)),
                       {"learning_rate": "rprop.init_step_size",
                        "eta_minus": "rprop.etas.0", "eta_plus": "rprop.etas.1",
                        "min_step_size": "rprop.step_sizes.0",
                        "max_step_size": "rprop.step_sizes.1"})


def scale_by_factored_rms(factored: bool = True, decay_rate: float = 0.8, step_offset: int = 0,
                          min_dim_size_to_factor: int = 128, epsilon: float = 1e-30,
                          decay_rate_fn: Callable[..., Any] | None = None) -> Transform:
    """optax's ``scale_by_factored_rms``: :func:`functional_optim.scale_by_factored_rms` with
    ``variant="optax"``, a unit step, no clipping, no parameter scale (the blocks optax's
    ``adafactor`` chains after it), negated back to optax's sign. ``decay_rate_fn`` must be
    optax's default :math:`1 - (t - t_0)^{-c}` (the native block's)."""
    if decay_rate_fn is not None:
        raise NotImplementedError("scale_by_factored_rms: decay_rate_fn other than optax's "
                                  "default (1 - t^-decay_rate) has no native block")
    native = _T.scale_by_factored_rms(1.0, -decay_rate, (epsilon, 1e-3), None, variant="optax",
                                      relative_step=False, scale_parameter=False,
                                      decay_offset=step_offset, factored=factored,
                                      min_dim_size_to_factor=min_dim_size_to_factor)
    return _base_chain(factored_rms=native, sign=_T.scale(-1.0))


# -- optax's other blocks ----------------------------------------------------------------------

scale_by_trust_ratio = _T.scale_by_trust_ratio
scale_by_param_block_norm = _T.scale_by_param_block_norm
scale_by_param_block_rms = _T.scale_by_param_block_rms
scale_by_optimistic_gradient = _T.scale_by_optimistic_gradient

_B12 = {"b1": "betas.0", "b2": "betas.1"}


def scale_by_lion(b1: float = 0.9, b2: float = 0.99, mu_dtype: torch.dtype | None = None, *,
                  mode: str = "hard", smooth_beta: float = 1.0) -> Transform:
    """optax's ``scale_by_lion``: :func:`functional_optim.scale_by_lion`."""
    return optax_names(_T.scale_by_lion((b1, b2), mode=mode, smooth_beta=smooth_beta,
                                        mu_dtype=mu_dtype), _B12)


def scale_by_belief(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
                    eps_root: float = 1e-16, *, nesterov: bool = False) -> Transform:
    """optax's ``scale_by_belief`` (AdaBelief): :func:`functional_optim.scale_by_belief`."""
    return optax_names(_T.scale_by_belief((b1, b2), eps, eps_root, nesterov=nesterov),
                       {**_B12, "eps": "eps", "eps_root": "eps_root"})


def scale_by_yogi(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3, eps_root: float = 0.0,
                  initial_accumulator_value: float = 1e-6) -> Transform:
    """optax's ``scale_by_yogi``: :func:`functional_optim.scale_by_yogi`."""
    return optax_names(_T.scale_by_yogi((b1, b2), eps, eps_root, initial_accumulator_value),
                       {**_B12, "eps": "eps", "eps_root": "eps_root"})


def scale_by_adan(b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8,
                  eps_root: float = 0.0) -> Transform:
    """optax's ``scale_by_adan``: :func:`functional_optim.scale_by_adan`."""
    return optax_names(_T.scale_by_adan((b1, b2, b3), eps, eps_root),
                       {**_B12, "b3": "betas.2", "eps": "eps", "eps_root": "eps_root"})


def scale_by_novograd(b1: float = 0.9, b2: float = 0.25, eps: float = 1e-8,
                      eps_root: float = 0.0, weight_decay: float = 0.0,
                      mu_dtype: torch.dtype | None = None) -> Transform:
    """optax's ``scale_by_novograd``: :func:`functional_optim.scale_by_novograd` (``mu_dtype``
    other than the parameters' has no native option)."""
    return optax_names(_T.scale_by_novograd((b1, b2), eps, eps_root, weight_decay,
                                            **given(mu_dtype=mu_dtype)),
                       {**_B12, "eps": "eps", "eps_root": "eps_root",
                        "weight_decay": "weight_decay"})


def scale_by_sm3(b1: float = 0.9, b2: float = 1.0, eps: float = 1e-8) -> Transform:
    """optax's ``scale_by_sm3``: :func:`functional_optim.scale_by_sm3`."""
    return optax_names(_T.scale_by_sm3((b1, b2), eps), {**_B12, "eps": "eps"})


def scale_by_polyak(f_min: float = 0.0, max_learning_rate: float = 1.0, eps: float = 0.0,
                    variant: str = "sps") -> Transform:
    """optax's ``scale_by_polyak`` (the loss as ``value=`` at ``update``):
    :func:`functional_optim.scale_by_polyak`."""
    return optax_names(_T.scale_by_polyak(f_min, max_learning_rate, eps, variant),
                       {"f_min": "f_min", "max_learning_rate": "max_lr", "eps": "eps"})


def add_noise(eta: float, gamma: float, key: Any = None, *, seed: int | None = None) -> Transform:
    """optax's ``add_noise``: :func:`functional_optim.add_noise` (``key``: an integer seed or
    a :class:`torch.Generator`; the noise comes from a counter-based key in the state)."""
    return _T.add_noise(eta, gamma, seed_of(key, seed, "add_noise"))
# -- line searches and L-BFGS --------------------------------------------------------------------


def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> Transform:
    """optax's ``scale_by_lbfgs`` (the two-loop recursion's direction):
    :func:`functional_optim.transforms.scale_by_lbfgs_direction` (not torch's L-BFGS,
    :func:`functional_optim.scale_by_lbfgs`)."""
    return _T.scale_by_lbfgs_direction(memory_size, scale_init_precond)


def scale_by_backtracking_linesearch(max_backtracking_steps: int, slope_rtol: float = 1e-4,
                                     decrease_factor: float = 0.8, increase_factor: float = 1.5,
                                     max_learning_rate: float = 1.0, atol: float = 0.0,
                                     rtol: float = 0.0, store_grad: bool = False,
                                     verbose: bool = False) -> Transform:
    """optax's ``scale_by_backtracking_linesearch`` (``value=``, ``grad=``, ``value_fn=`` at
    ``update``): :func:`functional_optim.transforms.scale_by_backtracking_linesearch`;
    ``verbose`` prints nothing here (no host sync)."""
    del verbose
    return _T.scale_by_backtracking_linesearch(max_backtracking_steps, slope_rtol,
                                               decrease_factor, increase_factor,
                                               max_learning_rate, atol, rtol, store_grad)


def scale_by_zoom_linesearch(max_linesearch_steps: int, max_learning_rate: float | None = None,
                             tol: float = 0.0, increase_factor: float = 2.0,
                             slope_rtol: float = 1e-4, curv_rtol: float = 0.9,
                             approx_dec_rtol: float | None = 1e-6,
                             stepsize_precision: float = 1e-5,
                             initial_guess_strategy: str = "keep",
                             verbose: bool = False) -> Transform:
    """optax's ``scale_by_zoom_linesearch`` (strong Wolfe; ``value=``, ``grad=``, ``value_fn=``
    at ``update``): :func:`functional_optim.transforms.scale_by_zoom_linesearch`; ``verbose``
    prints nothing here (no host sync)."""
    del verbose
    return _T.scale_by_zoom_linesearch(max_linesearch_steps, max_learning_rate, tol,
                                       increase_factor, slope_rtol, curv_rtol, approx_dec_rtol,
                                       stepsize_precision, initial_guess_strategy)

"""optax.contrib's parameter-free and schedule-free optimizers, with optax's numbers and torch's
hyperparameter names: schedule-free SGD and AdamW, Prodigy, D-Adaptation AdamW, DoG, DoWG,
COCOB, MoMo, MoMo-Adam, and Mechanic over Adam.

Each is a chain of the blocks of :mod:`functional_optim.transforms.parameter_free`,
:mod:`~functional_optim.transforms.distance_over_gradients`,
:mod:`~functional_optim.transforms.momo`, :mod:`~functional_optim.transforms.mechanic` and
:mod:`~functional_optim.transforms.schedule_free_learning`. Optax's names map onto them as the
compat layer (``functional_optim.compat.optax``) lists; the keyword differences are torch's names
(``lr`` for ``learning_rate``, ``betas`` for ``(b1, b2)``, ``d0`` for ``estim_lr0``,
``momentum`` for schedule-free SGD's ``b1``) and ``weight_decay=0`` for optax's ``None``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import HParamError, Transform, chain, check_betas, check_hparam, check_pair
from ..registry import LOSS_AS_VALUE, DropInProtocol, register
from ..schedules import warmup_constant
from ..transforms import (
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
)
from ..transforms.distance_over_gradients import scale_by_dog, scale_by_dowg
from ..transforms.mechanic import mechanize
from ..transforms.momo import scale_by_momo, scale_by_momo_adam
from ..transforms.parameter_free import scale_by_cocob, scale_by_dadapt_adamw, scale_by_prodigy
from ..transforms.schedule_free_learning import (
    schedule_free,
    schedule_free_eval_params,
    schedule_free_train_params,
)
from ._common import _check_lr, _classic, _decay_around, _reparametrized

__all__ = ["schedule_free_sgd", "schedule_free_adamw", "prodigy", "dadapt_adamw", "dog", "dowg",
           "cocob", "momo", "momo_adam", "mechanic_adam"]

_ROAD_LESS_SCHEDULED = ('Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, 2024, "The Road '
                        'Less Scheduled"')
SCHEDULE_FREE_PROTOCOL = DropInProtocol(modes=(schedule_free_eval_params,
                                               schedule_free_train_params))
"""The drop-in protocol of the schedule-free aliases: their classes' ``eval()``/``train()``
swap in the evaluation parameters and back."""


def _same(h: dict) -> dict:
    return h


def _warmup(owner: str, lr: Any, warmup_steps: int | None) -> tuple[Any, Any]:
    """The learning rate the blocks get (``lr``, or optax's linear warmup from 0 to ``lr``
    over ``warmup_steps``) and ``to_inner(lr) -> its hparam``."""
    _check_lr(owner, lr)
    if warmup_steps is None or warmup_steps == 0:
        return lr, lambda value: value
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise HParamError(f"{owner}: warmup_steps must be None or an int >= 0, got "
                          f"{warmup_steps!r}")
    if callable(lr):
        raise HParamError(f"{owner}: with warmup_steps, lr is the peak learning rate: a number "
                          f"or a 0-d tensor, got {lr!r}")
    return warmup_constant(0.0, lr, warmup_steps), lambda value: {
        "init_value": 0.0, "peak_value": value, "warmup_steps": warmup_steps}


def _schedule_free_alias(owner: str, lr: Any, warmup_steps: int | None, b1: Any,
                         weight_lr_power: Any, state_dtype: Any, base_blocks: dict,
                         defaults: dict, inner) -> Transform:
    """``schedule_free(chain(**base_blocks, lr=...), ...)`` under the flat ``defaults``;
    ``inner(h) -> (b1, the hparams of base_blocks)``."""
    check_hparam(owner, "weight_lr_power", weight_lr_power)
    lr_spec, lr_hparam = _warmup(owner, lr, warmup_steps)
    base = chain(**base_blocks, lr=scale_by_learning_rate(lr_spec))
    tx = schedule_free(base, lr_spec, b1, weight_lr_power, state_dtype=state_dtype)
    defaults = {"lr": lr if warmup_steps else tx.hparams["lr"], **defaults,
                "weight_lr_power": weight_lr_power}

    def to_inner(h):
        lr_h = lr_hparam(h["lr"])
        b1_h, base_h = inner(h)
        return {"lr": lr_h, "b1": b1_h, "weight_lr_power": h["weight_lr_power"],
                "base": {**base_h, "lr": {"lr": lr_h}}}

    return _reparametrized(owner, tx, defaults, to_inner,
                           dict(warmup_steps=warmup_steps, state_dtype=state_dtype))


@register(paper=_ROAD_LESS_SCHEDULED, drop_in="ScheduleFreeSGD", protocol=SCHEDULE_FREE_PROTOCOL)
def schedule_free_sgd(lr: float | torch.Tensor = 1.0, momentum: float = 0.9,
                      weight_decay: float = 0.0, warmup_steps: int | None = None,
                      weight_lr_power: float = 2.0, *,
                      state_dtype: torch.dtype | None = None) -> Transform:
    r"""Schedule-free SGD (Defazio et al., 2024), as optax's ``contrib.schedule_free_sgd``:
    :func:`~functional_optim.transforms.schedule_free_learning.schedule_free` around SGD.

    Chain: ``schedule_free(add_decayed_weights → scale_by_learning_rate)``; the decay is
    coupled (added to the gradient at :math:`y`, then scaled by the learning rate, as torch
    and optax do). Evaluate at :func:`~functional_optim.schedule_free_eval_params` (the drop-in
    class ``ScheduleFreeSGD`` has ``eval()``/``train()``).

    Args:
        lr: :math:`\gamma` (default 1), a number, tensor or (without warmup) schedule; with
            ``warmup_steps``, the peak of optax's linear warmup from 0.
        momentum: the interpolation :math:`\beta_1` in (0, 1] (optax's ``b1``; default 0.9).
        weight_decay: coupled decay :math:`\lambda` (default 0; optax's ``None``).
        warmup_steps: steps of the linear warmup (structural; ``None`` or 0: none. optax's 0
            would keep the learning rate at 0).
        weight_lr_power: the power of the averaging weights (default 2).
        state_dtype: dtype of :math:`z` (structural; default the parameters').
    """
    owner = "schedule_free_sgd"
    check_hparam(owner, "momentum", momentum, gt=0, le=1)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    return _schedule_free_alias(
        owner, lr, warmup_steps, momentum, weight_lr_power, state_dtype,
        {"weight_decay": add_decayed_weights(weight_decay)},
        {"momentum": momentum, "weight_decay": weight_decay},
        lambda h: (h["momentum"], {"weight_decay": {"weight_decay": h["weight_decay"]}}))


@register(paper=_ROAD_LESS_SCHEDULED, drop_in="ScheduleFreeAdamW", protocol=SCHEDULE_FREE_PROTOCOL)
def schedule_free_adamw(lr: float | torch.Tensor = 0.0025,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                        weight_decay: float = 0.0, warmup_steps: int | None = None,
                        weight_lr_power: float = 2.0, *,
                        state_dtype: torch.dtype | None = None) -> Transform:
    r"""Schedule-free AdamW (Defazio et al., 2024), as optax's
    ``contrib.schedule_free_adamw``:
    :func:`~functional_optim.transforms.schedule_free_learning.schedule_free` around Adam
    without its first moment.

    Chain: ``schedule_free(scale_by_rms(β2, ε, bias_correction=True) → add_decayed_weights →
    scale_by_learning_rate)``: :math:`u = -\gamma\,(g / (\sqrt{v / (1-\beta_2^t)} + \epsilon)
    + \lambda y)`. The interpolation is ``betas[0]``. Evaluate at
    :func:`~functional_optim.schedule_free_eval_params` (the drop-in class
    ``ScheduleFreeAdamW`` has ``eval()``/``train()``, as the reference implementation's
    ``AdamWScheduleFree``; its numbers are optax's).

    Args:
        lr: :math:`\gamma` (default 0.0025), a number, tensor or (without warmup) schedule; with
            ``warmup_steps``, the peak of optax's linear warmup from 0.
        betas: ``(β1, β2)``: the interpolation and the second moment's decay (default
            ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled decay :math:`\lambda` (default 0).
        warmup_steps: steps of the linear warmup (structural; ``None`` or 0: none).
        weight_lr_power: the power of the averaging weights (default 2).
        state_dtype: dtype of :math:`z` (structural; default the parameters').
    """
    owner = "schedule_free_adamw"
    check_pair(owner, "betas", betas)
    check_hparam(owner, "betas[0]", betas[0], gt=0, le=1)
    check_hparam(owner, "betas[1]", betas[1], ge=0, lt=1)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    return _schedule_free_alias(
        owner, lr, warmup_steps, betas[0], weight_lr_power, state_dtype,
        {"rms": scale_by_rms(betas[1], eps, bias_correction=True),
         "weight_decay": add_decayed_weights(weight_decay)},
        {"betas": tuple(betas), "eps": eps, "weight_decay": weight_decay},
        lambda h: (h["betas"][0], {"rms": {"alpha": h["betas"][1], "eps": h["eps"]},
                                   "weight_decay": {"weight_decay": h["weight_decay"]}}))


@register(paper=('Mishchenko & Defazio, 2023, "Prodigy: An Expeditiously Adaptive '
                 'Parameter-Free Learner"'), drop_in="Prodigy")
def prodigy(lr: Any = 1.0, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
            eps: float = 1e-8, weight_decay: float = 0.0, d0: float = 1e-6,
            d_coef: float = 1.0, *, safeguard_warmup: bool = False) -> Transform:
    """Prodigy (Mishchenko & Defazio, 2023), as optax's ``contrib.prodigy``: the block
    :func:`~functional_optim.transforms.parameter_free.scale_by_prodigy` (the step, learning
    rate and decoupled decay included), with the reference implementation's names ``d0``
    (optax's ``estim_lr0``) and ``d_coef`` (``estim_lr_coef``).

    Args:
        lr: the learning-rate schedule around 1 (default 1; a number, tensor or schedule).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        beta3: the decay of the estimate's sums (default ``None``: ``sqrt(β2)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled decay (default 0).
        d0: the initial estimate of the step size (default 1e-6).
        d_coef: a factor on every estimate (default 1).
        safeguard_warmup: leave the learning rate out of the estimate's denominator
            (structural).
    """
    tx = scale_by_prodigy(lr, betas, beta3, eps, weight_decay, d0, d_coef,
                          safeguard_warmup=safeguard_warmup)
    return _reparametrized("prodigy", tx, tx.hparams, _same,
                           dict(safeguard_warmup=safeguard_warmup))


@register(paper=('Defazio & Mishchenko, 2023, "Learning-Rate-Free Learning by '
                 'D-Adaptation"'), drop_in="DAdaptAdamW")
def dadapt_adamw(lr: Any = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, d0: float = 1e-6) -> Transform:
    """D-Adaptation AdamW (Defazio & Mishchenko, 2023), as optax's ``contrib.dadapt_adamw``:
    the block :func:`~functional_optim.transforms.parameter_free.scale_by_dadapt_adamw` (the
    step, learning rate and decoupled decay included), ``d0`` being optax's ``estim_lr0``.

    Args:
        lr: the learning-rate schedule around 1 (default 1; a number, tensor or schedule).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        weight_decay: decoupled decay (default 0).
        d0: the initial estimate of the step size (default 1e-6).
    """
    tx = scale_by_dadapt_adamw(lr, betas, eps, weight_decay, d0)
    return _reparametrized("dadapt_adamw", tx, tx.hparams, _same, {})


@register(paper=('Ivgi, Hinder & Carmon, 2023, "DoG is SGD\'s Best Friend: A Parameter-Free '
                 'Dynamic Step Size Schedule"'), drop_in="DoG")
def dog(lr: Any = 1.0, init_step: float = 1e-6, eps: float = 1e-8, weight_decay: float = 0.0,
        *, init_step_type: str = "heuristic") -> Transform:
    """DoG (Ivgi et al., 2023), as optax's ``contrib.dog``.

    Chain: ``add_decayed_weights → scale_by_dog → scale_by_learning_rate``. optax's
    ``init_step=(kind, value)`` is ``init_step_type=kind`` and ``init_step=value`` here
    (:func:`~functional_optim.transforms.distance_over_gradients.scale_by_dog`).

    Args:
        lr: a learning-rate factor or schedule (default 1).
        init_step: the initial step's value (default 1e-6).
        eps: ``ε`` (default 1e-8).
        weight_decay: coupled decay (default 0; optax's ``None``).
        init_step_type: ``"heuristic"``, ``"distance"`` or ``"learning_rate"`` (structural).
    """
    owner = "dog"
    blocks = _decay_around(owner, lr, weight_decay, False, False, "dog",
                           scale_by_dog(init_step, eps, init_step_type=init_step_type))
    defaults = dict(lr=blocks["lr"].hparams["lr"], init_step=init_step, eps=eps,
                    weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "dog", ("init_step", "eps"),
                    dict(init_step_type=init_step_type))


@register(paper=('Khaled, Mishchenko & Jin, 2023, "DoWG Unleashed: An Efficient Universal '
                 'Parameter-Free Gradient Descent Method"'), drop_in="DoWG")
def dowg(lr: Any = 1.0, init_estim_sq_dist: float | None = None, eps: float = 1e-4,
         weight_decay: float = 0.0) -> Transform:
    """DoWG (Khaled et al., 2023), as optax's ``contrib.dowg``.

    Chain: ``add_decayed_weights → scale_by_dowg → scale_by_learning_rate``
    (:func:`~functional_optim.transforms.distance_over_gradients.scale_by_dowg`).

    Args:
        lr: a learning-rate factor or schedule (default 1).
        init_estim_sq_dist: the initial squared distance (default ``None``: ``eps``).
        eps: ``ε`` (default 1e-4).
        weight_decay: coupled decay (default 0; optax's ``None``).
    """
    owner = "dowg"
    blocks = _decay_around(owner, lr, weight_decay, False, False, "dowg",
                           scale_by_dowg(init_estim_sq_dist, eps))
    defaults = dict(lr=blocks["lr"].hparams["lr"], init_estim_sq_dist=init_estim_sq_dist,
                    eps=eps, weight_decay=weight_decay)
    return _classic(owner, blocks, defaults, "dowg", ("init_estim_sq_dist", "eps"), {})


@register(paper=('Orabona & Tommasi, 2017, "Training Deep Networks without Learning Rates '
                 'Through Coin Betting"'), drop_in="COCOB")
def cocob(lr: Any = 1.0, alpha: float = 100.0, eps: float = 1e-8,
          weight_decay: float = 0.0) -> Transform:
    """COCOB-Backprop (Orabona & Tommasi, 2017), as optax's ``contrib.cocob``.

    Chain: ``add_decayed_weights → scale_by_learning_rate(flip_sign=False) →
    scale_by_cocob``: the (decayed) gradients times ``lr`` are COCOB's input
    (:func:`~functional_optim.transforms.parameter_free.scale_by_cocob`).

    Args:
        lr: a factor or schedule on the gradients (default 1).
        alpha: the fraction to bet (default 100).
        eps: the least scale (default 1e-8).
        weight_decay: coupled decay (default 0).
    """
    owner = "cocob"
    blocks = _decay_around(owner, lr, weight_decay, False, False, "lr",
                           scale_by_learning_rate(lr, flip_sign=False), lr_block=False)
    blocks["cocob"] = scale_by_cocob(alpha, eps)
    defaults = dict(lr=blocks["lr"].hparams["lr"], alpha=alpha, eps=eps,
                    weight_decay=weight_decay)

    def to_inner(h):
        return {"weight_decay": {"weight_decay": h["weight_decay"]}, "lr": {"lr": h["lr"]},
                "cocob": {"alpha": h["alpha"], "eps": h["eps"]}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner, {})


_MOMO = ('Schaipp, Ohana, Eickenberg, Defazio & Gower, 2023, "MoMo: Momentum Models for '
         'Adaptive Learning Rates"')


@register(paper=_MOMO, drop_in="Momo", protocol=LOSS_AS_VALUE)
def momo(lr: Any = 1.0, beta: float = 0.9, lower_bound: float = 0.0, weight_decay: float = 0.0,
         *, adapt_lower_bound: bool = False) -> Transform:
    """MoMo (Schaipp et al., 2023), as optax's ``contrib.momo``: the block
    :func:`~functional_optim.transforms.momo.scale_by_momo` (the step included). Its update
    reads the loss: ``update(grads, state, params, value=loss)``; the drop-in class ``Momo``
    takes it from the closure, ``opt.step(lambda: loss)``.

    Args:
        lr: the largest step size (default 1; a number, tensor or schedule).
        beta: the averaging coefficient (default 0.9).
        lower_bound: a lower bound of the loss (default 0).
        weight_decay: decay (default 0).
        adapt_lower_bound: estimate the lower bound on the fly (structural).
    """
    tx = scale_by_momo(lr, beta, lower_bound, weight_decay, adapt_lower_bound=adapt_lower_bound)
    return _reparametrized("momo", tx, tx.hparams, _same,
                           dict(adapt_lower_bound=adapt_lower_bound))


@register(paper=_MOMO, drop_in="MomoAdam", protocol=LOSS_AS_VALUE)
def momo_adam(lr: Any = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              lower_bound: float = 0.0, weight_decay: float = 0.0, *,
              adapt_lower_bound: bool = False) -> Transform:
    """MoMo-Adam (Schaipp et al., 2023), as optax's ``contrib.momo_adam``: the block
    :func:`~functional_optim.transforms.momo.scale_by_momo_adam` (the step included). Its
    update reads the loss (``value=``), as :func:`momo`.

    Args:
        lr: the largest step size (default 1e-2; a number, tensor or schedule).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-8).
        lower_bound: a lower bound of the loss (default 0).
        weight_decay: decoupled decay (default 0).
        adapt_lower_bound: estimate the lower bound on the fly (structural).
    """
    tx = scale_by_momo_adam(lr, betas, eps, lower_bound, weight_decay,
                            adapt_lower_bound=adapt_lower_bound)
    return _reparametrized("momo_adam", tx, tx.hparams, _same,
                           dict(adapt_lower_bound=adapt_lower_bound))


@register(paper=('Cutkosky, Defazio & Mehta, 2023, "Mechanic: A Learning Rate Tuner"; base: '
                 'Kingma & Ba, 2015'), drop_in="MechanicAdam")
def mechanic_adam(lr: Any = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                  weight_decay: float = 1e-2, mechanic_eps: float = 1e-8, s_init: float = 1e-6,
                  *, num_betas: int = 6) -> Transform:
    """Mechanic over Adam (Cutkosky et al., 2023): optax's ``contrib.mechanize(optax.adam(lr))``,
    with Mechanic's own decay.

    Chain: ``mechanize(scale_by_adam → scale_by_learning_rate)``
    (:func:`~functional_optim.transforms.mechanic.mechanize`; Adam as torch.optim.Adam computes
    it, without decay). Give ``lr`` a schedule around 1: Mechanic learns the scale.

    Args:
        lr: Adam's learning rate (default 1; a number, tensor or schedule).
        betas: Adam's ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: Adam's ``ε`` (default 1e-8).
        weight_decay: Mechanic's decay (default 1e-2).
        mechanic_eps: Mechanic's ``ε`` (default 1e-8).
        s_init: Mechanic's initial scale (default 1e-6).
        num_betas: how many averaging rates Mechanic runs (structural; default 6).
    """
    owner = "mechanic_adam"
    _check_lr(owner, lr)
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    base = chain(adam=scale_by_adam(betas, eps), lr=scale_by_learning_rate(lr))
    tx = mechanize(base, weight_decay, mechanic_eps, s_init, num_betas=num_betas)
    defaults = dict(lr=base.hparams["lr"]["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay, mechanic_eps=mechanic_eps, s_init=s_init)

    def to_inner(h):
        return {"weight_decay": h["weight_decay"], "eps": h["mechanic_eps"],
                "s_init": h["s_init"],
                "base": {"adam": {"betas": h["betas"], "eps": h["eps"]}, "lr": {"lr": h["lr"]}}}

    return _reparametrized(owner, tx, defaults, to_inner, dict(num_betas=num_betas))

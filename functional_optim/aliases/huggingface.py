"""HuggingFace transformers' optimizers as chains of the native blocks, with HF's names.

``huggingface_adamw`` is ``transformers.optimization.AdamW`` (4.x, since removed there),
``huggingface_adafactor`` is ``transformers.optimization.Adafactor`` and ``adam_weight_decay``
is the Keras ``AdamWeightDecay`` of ``transformers.optimization_tf`` (the optimizer of
``create_optimizer``). Each exposes a flat hparams dict, so a param group *is* its hparams; the
drop-in ``torch.optim.Optimizer`` classes are
:class:`~functional_optim.optim.HuggingFaceAdamW` and
:class:`~functional_optim.optim.HuggingFaceAdafactor`, and HF's module of names
:mod:`functional_optim.compat.transformers`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import optree
import torch

from .._execute import is_off
from ..base import HParamError, Transform, chain, check_betas, check_hparam
from ..combinators import _path_names
from ..registry import register
from ..transforms import (
    add_decayed_weights,
    clip,
    clip_by_global_norm,
    clip_by_norm,
    scale_by_adam,
    scale_by_factored_rms,
    scale_by_learning_rate,
)
from ._common import _number_or_tensor_lr, _reparametrized

__all__ = ["huggingface_adamw", "huggingface_adafactor", "adam_weight_decay",
           "RELATIVE_STEP_CAP", "WARMUP_INIT_CAP"]

RELATIVE_STEP_CAP = 1e-2
"""HuggingFace's Adafactor with ``relative_step``: :math:`\\rho_t = \\min(10^{-2}, 1/\\sqrt t)`."""
WARMUP_INIT_CAP = 1e-6
"""... and with ``warmup_init``: :math:`\\rho_t = \\min(10^{-6} t, 1/\\sqrt t)`."""


def _absent(owner: str, name: str, value: Any) -> None:
    """An option built as ``None`` (structural: no block) must stay ``None`` at update time."""
    if value is not None:
        raise HParamError(
            f"{owner}: {name} is None (structural: no block for it); got {value!r} at update "
            f"time. Construct with a number to set it at run time.")


@register(paper=('Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization", as '
                 "HuggingFace transformers 4.x AdamW (the bias correction in the step size, as "
                 'Kingma & Ba, 2015, Section 2; the decay after the step)'),
          drop_in="HuggingFaceAdamW")
def huggingface_adamw(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                      eps: float = 1e-6, weight_decay: float = 0.0,
                      correct_bias: bool = True) -> Transform:
    r"""AdamW as HuggingFace transformers 4.x computed it (``transformers.AdamW``).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \tilde p = p_{t-1} - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
                   \frac{m_t}{\sqrt{v_t} + \epsilon}, \quad
        p_t = \tilde p\,(1 - \eta\lambda)

    ``ε`` is added to the uncorrected root (``correct_bias=False`` drops the correction factor),
    and the decay shrinks the parameters *after* the Adam step. This differs from
    :func:`~functional_optim.adamw` (torch's). Chain: ``scale_by_adam(bias_correction=
    "step_size" or "none") → scale_by_learning_rate → add_decayed_weights(after_step=True)``,
    the decay block given :math:`\eta\lambda`.

    Args:
        lr: ``η`` (default 1e-3), a number or 0-d tensor (for a schedule, use
            :func:`~functional_optim.inject_hparams`: the decay reads the lr too).
        betas: ``(β1, β2)`` (default ``(0.9, 0.999)``).
        eps: ``ε`` (default 1e-6, HF's).
        weight_decay: ``λ`` (default 0).
        correct_bias: apply the bias correction (structural; default True).
    """
    owner = "huggingface_adamw"
    _number_or_tensor_lr(owner, lr)
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    blocks = {"adam": scale_by_adam(betas, eps,
                                    bias_correction="step_size" if correct_bias else "none"),
              "lr": scale_by_learning_rate(lr),
              "weight_decay": add_decayed_weights(after_step=True)}
    defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def to_inner(h):
        wd = h["weight_decay"]
        return {"adam": {"betas": h["betas"], "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                "weight_decay": {"weight_decay": wd if is_off(wd) else h["lr"] * wd}}

    return _reparametrized(owner, chain(**blocks), defaults, to_inner,
                           dict(correct_bias=correct_bias))


@register(paper=('Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory '
                 'Cost", as HuggingFace transformers computes it'),
          drop_in="HuggingFaceAdafactor")
def huggingface_adafactor(lr: float | torch.Tensor | None = None,
                          eps: tuple[float, float] = (1e-30, 1e-3),
                          clip_threshold: float = 1.0, decay_rate: float = -0.8,
                          beta1: float | None = None, weight_decay: float = 0.0,
                          scale_parameter: bool = True, relative_step: bool = True,
                          warmup_init: bool = False) -> Transform:
    r"""Adafactor as HuggingFace transformers computes it (``transformers.Adafactor``): HF's
    names and defaults over :func:`~functional_optim.transforms.scale_by_factored_rms` with
    ``variant="huggingface"`` (see there for the math and how it differs from torch's).

    With ``relative_step`` (the default) the step size is
    :math:`\max(\epsilon_2, \operatorname{RMS}(p)) \min(10^{-2}, 1/\sqrt t)` (or
    :math:`\min(10^{-6} t, 1/\sqrt t)` with ``warmup_init``), and ``lr`` must be ``None`` at
    construction (HF's rule); an ``lr`` given at update time replaces the cap
    (:math:`10^{-2}`, or :math:`10^{-6}` per step). Without it, ``lr`` is the step size,
    scaled by the parameter's RMS if ``scale_parameter``. Half-precision parameters are
    computed in float32.

    Args:
        lr: the external learning rate (``None`` with ``relative_step``).
        eps: ``(ε1, ε2)``: added to the squared gradients, and the floor of the parameter RMS
            (default ``(1e-30, 1e-3)``).
        clip_threshold: ``d``, the RMS the update is clipped to (default 1).
        decay_rate: ``c`` in :math:`\hat\beta_{2,t} = 1 - t^c` (default -0.8).
        beta1: momentum on the scaled updates, or ``None`` (structural: none; default).
        weight_decay: ``λ``, decoupled, times the step size (default 0).
        scale_parameter: scale the step by the parameter RMS (structural; default True).
        relative_step: a time-dependent step size (structural; default True).
        warmup_init: warm the relative step up linearly (structural; needs ``relative_step``).
    """
    owner = "huggingface_adafactor"
    if lr is not None and relative_step:
        raise HParamError(f"{owner}: Cannot combine manual `lr` and `relative_step=True` "
                          "options")
    if warmup_init and not relative_step:
        raise HParamError(f"{owner}: `warmup_init=True` requires `relative_step=True`")
    if lr is None and not relative_step:
        raise HParamError(f"{owner}: relative_step=False needs an lr (the step size)")
    cap = WARMUP_INIT_CAP if warmup_init else RELATIVE_STEP_CAP
    if lr is not None:
        _number_or_tensor_lr(owner, lr)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise HParamError(f"{owner}: eps must be a pair (eps1, eps2), got {eps!r}")
    inner = scale_by_factored_rms(cap if lr is None else lr, decay_rate, tuple(eps),
                                  clip_threshold, weight_decay, variant="huggingface",
                                  relative_step=relative_step,
                                  scale_parameter=scale_parameter, warmup_init=warmup_init,
                                  beta1=beta1)
    defaults = dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold,
                    decay_rate=decay_rate, beta1=beta1, weight_decay=weight_decay)

    def to_inner(h):
        eps1, eps2 = h["eps"]
        inner_h = {"lr": cap if h["lr"] is None else h["lr"], "beta2_decay": h["decay_rate"],
                   "eps1": eps1, "eps2": eps2, "d": h["clip_threshold"],
                   "weight_decay": h["weight_decay"]}
        if beta1 is None:
            _absent(owner, "beta1", h["beta1"])
        else:
            inner_h["beta1"] = h["beta1"]
        return inner_h

    return _reparametrized(owner, inner, defaults, to_inner,
                           dict(scale_parameter=scale_parameter, relative_step=relative_step,
                                warmup_init=warmup_init))


def _decay_mask(include: list[str] | None, exclude: list[str] | None) -> Callable | None:
    """Keras ``AdamWeightDecay._do_use_weight_decay`` on the parameters' dotted names: decay
    where an ``include`` regex matches (``re.search``), else not where an ``exclude`` one does,
    else decay."""
    if not include and not exclude:
        return None

    def decays(name: str) -> bool:
        if any(re.search(r, name) for r in include or ()):
            return True
        return not any(re.search(r, name) for r in exclude or ())

    def mask(params):
        return optree.tree_map(decays, _path_names(params), none_is_leaf=True)

    return mask


_CLIPS = ("clipvalue", "clipnorm", "global_clipnorm")


@register(paper=('Devlin et al., 2019, "BERT" (its AdamWeightDecay; Loshchilov & Hutter, 2019), as '
                 "HuggingFace transformers' TF AdamWeightDecay and Keras's Adam compute it"),
          drop_in="AdamWeightDecay")
def adam_weight_decay(lr: float | torch.Tensor = 1e-3,
                      betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-7,
                      weight_decay: float = 0.0, amsgrad: bool = False,
                      include_in_weight_decay: list[str] | None = None,
                      exclude_from_weight_decay: list[str] | None = None,
                      clipnorm: float | None = None, clipvalue: float | None = None,
                      global_clipnorm: float | None = None) -> Transform:
    r"""``AdamWeightDecay`` of ``transformers.optimization_tf`` (Keras's Adam with decoupled
    decay on the parameters the regexes select, and Keras's gradient clipping), in PyTorch.

    .. math::
        p_t = p_{t-1} - \eta\left(\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
              \frac{m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda\,p_{t-1}\,[\text{decayed}]\right)

    with Keras's Adam moments (``ε`` on the uncorrected root; ``amsgrad``: :math:`\hat v_t` the
    running max). A parameter is decayed when a regex of ``include_in_weight_decay`` matches its
    dotted name (``re.search``), else unless one of ``exclude_from_weight_decay`` does. The
    gradients are first clipped as Keras does, in its order: ``clipvalue`` (each element to
    :math:`\pm c`), ``clipnorm`` (each tensor, :math:`g c / \max(\|g\|, c)`),
    ``global_clipnorm`` (all together). Chain: ``[clip] → [clip_by_norm] →
    [clip_by_global_norm] → scale_by_adam(bias_correction="step_size") →
    add_decayed_weights(mask) → scale_by_learning_rate``.

    Args:
        lr: ``η`` (Keras's ``learning_rate``; default 1e-3), a number, tensor or schedule.
        betas: ``(beta_1, beta_2)`` (default ``(0.9, 0.999)``).
        eps: Keras's ``epsilon`` (default 1e-7).
        weight_decay: ``weight_decay_rate`` :math:`\lambda` (default 0).
        amsgrad: AMSGrad (structural).
        include_in_weight_decay: regexes of names to decay (structural).
        exclude_from_weight_decay: regexes of names not to decay (structural).
        clipnorm: per-tensor norm clip, or ``None`` (structural: no block; default).
        clipvalue: per-element clip, or ``None`` (structural: no block; default).
        global_clipnorm: global norm clip, or ``None`` (structural: no block; default).
    """
    owner = "adam_weight_decay"
    check_betas(owner, betas)
    check_hparam(owner, "eps", eps, ge=0)
    check_hparam(owner, "weight_decay", weight_decay, ge=0)
    if clipnorm is not None and global_clipnorm is not None:
        raise HParamError("Cannot accept both `clipnorm` and `global_clipnorm`, passed "
                          f"`clipnorm` {clipnorm}, `global_clipnorm` {global_clipnorm}")
    clips = {"clipvalue": clipvalue, "clipnorm": clipnorm, "global_clipnorm": global_clipnorm}
    makers = {"clipvalue": clip,
              "clipnorm": lambda c: clip_by_norm(c, formula="tensorflow"),
              "global_clipnorm": lambda c: clip_by_global_norm(c, formula="tensorflow")}
    blocks = {k: makers[k](v) for k, v in clips.items() if v is not None}
    blocks["adam"] = scale_by_adam(betas, eps, amsgrad=amsgrad, bias_correction="step_size")
    blocks["weight_decay"] = add_decayed_weights(
        weight_decay, _decay_mask(include_in_weight_decay, exclude_from_weight_decay))
    blocks["lr"] = scale_by_learning_rate(lr)
    defaults = dict(lr=blocks["lr"].hparams["lr"], betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay, **clips)
    keys = {"clipvalue": "max_delta", "clipnorm": "max_norm", "global_clipnorm": "max_norm"}

    def to_inner(h):
        inner = {"adam": {"betas": h["betas"], "eps": h["eps"]}, "lr": {"lr": h["lr"]},
                 "weight_decay": {"weight_decay": h["weight_decay"]}}
        for name in _CLIPS:
            if name in blocks:
                inner[name] = {keys[name]: h[name]}
            else:
                _absent(owner, name, h[name])
        return inner

    structural = dict(amsgrad=amsgrad, include_in_weight_decay=include_in_weight_decay,
                      exclude_from_weight_decay=exclude_from_weight_decay)
    return _reparametrized(owner, chain(**blocks), defaults, to_inner, structural)

"""Drop-in replacements for HuggingFace transformers' optimizer classes, backed by the functional
aliases of :mod:`functional_optim.aliases.huggingface`: the same constructor, defaults,
validation errors, numbers and ``state_dict`` names as ``transformers.optimization``'s.

:mod:`functional_optim.compat.transformers` gives them HF's names (``AdamW``, ``Adafactor``).
``state["step"]`` is torch's 0-d float32 tensor in memory (no host sync per step) and HF's
Python int in ``state_dict()``; a checkpoint of either loads into the other.
"""

from __future__ import annotations

import warnings
from numbers import Number

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..aliases import huggingface as _hf
from ..transforms.factored import relative_step_size
from ._compat import _TorchCompatible
from .special import _empty, _Factored

__all__ = ["HuggingFaceAdamW", "HuggingFaceAdafactor", "HuggingFaceAdafactorSchedule"]


class _HFStep(_TorchCompatible):
    """HF's step, a Python int in its checkpoints: ``state_dict()`` writes it so (HF computes
    its bias corrections from it in Python floats: a tensor there would round them to
    float32); a checkpoint's int loads as torch's (float32) step tensor, which the step keeps
    in memory (no host sync)."""

    def state_dict(self) -> dict:
        """torch's ``state_dict``, with HF's Python-int ``step``."""
        saved = super().state_dict()
        saved["state"] = {k: {**v, "step": int(v["step"])}
                          if isinstance(v.get("step"), torch.Tensor) else v
                          for k, v in saved["state"].items()}
        return saved


def _compute_dtype(p: torch.Tensor) -> torch.dtype:
    """HF's Adafactor computes half-precision parameters (and their state) in float32."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


class HuggingFaceAdamW(_HFStep):
    """``transformers.AdamW`` (transformers 4.x), backed by
    :func:`functional_optim.huggingface_adamw`: HF's bias correction in the step size, ``ε`` on
    the uncorrected root, the decoupled decay after the step. State: ``step``, ``exp_avg``,
    ``exp_avg_sq``.

    As HF's, the constructor emits a ``FutureWarning`` unless ``no_deprecation_warning=True``
    and checks ``lr``, ``betas`` and ``eps`` with HF's messages. A negative ``weight_decay``
    (which HF silently ignores) raises an error here.
    """

    _HPARAMS = ("lr", "betas", "eps", "weight_decay")
    _STATE_NAMES = {("adam", "step"): "step", ("adam", "mu"): "exp_avg",
                    ("adam", "nu"): "exp_avg_sq"}

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, correct_bias: bool = True,
                 no_deprecation_warning: bool = False):
        if not no_deprecation_warning:
            warnings.warn(
                "This implementation of AdamW is deprecated and will be removed in a future "
                "version. Use the PyTorch implementation torch.optim.AdamW instead, or set "
                "`no_deprecation_warning=True` to disable this warning", FutureWarning,
                stacklevel=2)
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr} - should be >= 0.0")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter: {betas[0]} - should be in [0.0, 1.0)")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter: {betas[1]} - should be in [0.0, 1.0)")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps} - should be >= 0.0")
        _hf.huggingface_adamw(lr, betas, eps, weight_decay, correct_bias)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias))

    def _static_key(self, group):
        return (group["correct_bias"],)

    def _build(self, group):
        return _hf.huggingface_adamw(group["lr"], tuple(group["betas"]), group["eps"],
                                     group["weight_decay"], group["correct_bias"])

    def _step_group(self, group):
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients, please consider "
                                   "SparseAdam instead")
        super()._step_group(group)


class HuggingFaceAdafactor(_HFStep, _Factored):
    """``transformers.Adafactor``, backed by :func:`functional_optim.huggingface_adafactor`.

    State (HF's names): ``step``, ``RMS`` and, for parameters of >= 2 dimensions,
    ``exp_avg_sq_row`` and ``exp_avg_sq_col``, else ``exp_avg_sq``; ``exp_avg`` with
    ``beta1``. Half-precision parameters are computed in float32 (float32 state), as HF does.
    With ``relative_step``, a group's ``lr`` is not read (HF ignores it too: the step size is
    relative; :class:`HuggingFaceAdafactorSchedule` writes it for logging).
    """

    _HPARAMS = ("lr", "eps", "clip_threshold", "decay_rate", "beta1", "weight_decay")
    _STATE_NAMES = {("step",): "step", ("row_var",): "exp_avg_sq_row",
                    ("col_var",): "exp_avg_sq_col", ("variance",): "exp_avg_sq",
                    ("exp_avg",): "exp_avg", ("rms",): "RMS"}
    _MOMENTS = _Factored._FACTORS | {("exp_avg",)}

    def __init__(self, params, lr: float | None = None, eps: tuple[float, float] = (1e-30, 1e-3),
                 clip_threshold: float = 1.0, decay_rate: float = -0.8,
                 beta1: float | None = None, weight_decay: float = 0.0,
                 scale_parameter: bool = True, relative_step: bool = True,
                 warmup_init: bool = False):
        if lr is not None and relative_step:
            raise ValueError("Cannot combine manual `lr` and `relative_step=True` options")
        if warmup_init and not relative_step:
            raise ValueError("`warmup_init=True` requires `relative_step=True`")
        _hf.huggingface_adafactor(lr, eps, clip_threshold, decay_rate, beta1, weight_decay,
                                  scale_parameter, relative_step, warmup_init)
        super().__init__(params, dict(lr=lr, eps=eps, clip_threshold=clip_threshold,
                                      decay_rate=decay_rate, beta1=beta1,
                                      weight_decay=weight_decay,
                                      scale_parameter=scale_parameter,
                                      relative_step=relative_step, warmup_init=warmup_init))

    def _static_key(self, group):
        return (group["scale_parameter"], group["relative_step"], group["warmup_init"],
                group["beta1"] is None)

    def _build(self, group):
        return _hf.huggingface_adafactor(
            None if group["relative_step"] else group["lr"], tuple(group["eps"]),
            group["clip_threshold"], group["decay_rate"], group["beta1"],
            group["weight_decay"], group["scale_parameter"], group["relative_step"],
            group["warmup_init"])

    def _hparams_for(self, tx, group):
        h = {k: tuple(group[k]) if k == "eps" else group[k] for k in self._HPARAMS}
        if group["relative_step"]:
            h["lr"] = None  # (HF's relative step size ignores the group's lr)
        return h

    @staticmethod
    def _empty_for(p) -> torch.Tensor:
        return _empty(_compute_dtype(p), p.device)

    def _load_column(self, stores, path, params, group):
        values = super()._load_column(stores, path, params, group)
        if path not in self._MOMENTS:
            return values
        # HF's ``state[...].to(grad)``: state that ``load_state_dict`` cast to a half-precision
        # parameter's dtype is computed in float32 again
        return [v if v is None or v.dtype == _compute_dtype(p) else v.to(_compute_dtype(p))
                for v, p in zip(values, params)]

    def _step_group(self, group):
        for p in group["params"]:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("Adafactor does not support sparse gradients.")
        super()._step_group(group)

    @staticmethod
    def _get_lr(param_group: dict, param_state: dict):
        """HF's ``Adafactor._get_lr``: the step size of a parameter's last update, from its
        ``step`` and ``RMS`` (:func:`~functional_optim.transforms.relative_step_size`)."""
        relative, warmup = param_group["relative_step"], param_group["warmup_init"]
        if relative:
            lr = _hf.WARMUP_INIT_CAP if warmup else _hf.RELATIVE_STEP_CAP
        else:
            lr = param_group["lr"]
        step = param_state["step"]
        step = step if isinstance(step, Number) else step.item()
        return relative_step_size(lr, step, param_state["RMS"], param_group["eps"][1],
                                  relative_step=relative,
                                  scale_parameter=param_group["scale_parameter"],
                                  warmup_init=warmup)


class HuggingFaceAdafactorSchedule(LambdaLR):
    """``transformers.optimization.AdafactorSchedule``: a proxy scheduler that reports the step
    size an Adafactor (with its own, relative schedule) used: ``initial_lr`` before the first
    step, then ``optimizer._get_lr(group, state)`` of each group's first parameter (the groups
    whose first parameter has a gradient)."""

    def __init__(self, optimizer, initial_lr: float = 0.0):
        def lr_lambda(_):
            return initial_lr

        for group in optimizer.param_groups:
            group["initial_lr"] = initial_lr
        super().__init__(optimizer, lr_lambda)
        for group in optimizer.param_groups:
            del group["initial_lr"]

    def get_lr(self):
        opt = self.optimizer
        lrs = [opt._get_lr(group, opt.state[group["params"][0]]) for group in opt.param_groups
               if group["params"][0].grad is not None]
        return lrs if lrs else self.base_lrs  # (before the first step)

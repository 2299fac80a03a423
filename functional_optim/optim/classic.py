"""torch.optim's classic set as drop-in classes: Adagrad, Adadelta, Adamax, NAdam, RAdam,
RMSprop, Rprop, ASGD."""

from __future__ import annotations

import torch

from .. import aliases
from ._compat import _Classic, _momentum

__all__ = ["Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD"]


class Adagrad(_Classic):
    """torch.optim.Adagrad, backed by :func:`functional_optim.adagrad`.

    State: ``step``, ``sum`` (made at construction, as torch does). Sparse gradients
    (``nn.Embedding(sparse=True)``) are taken as torch takes them: ``sum`` and the parameter
    change at the gradient's entries only; torch's errors for ``weight_decay`` and
    ``fused=True``.
    """

    _HPARAMS = ("lr", "lr_decay", "weight_decay", "eps")
    _SPARSE_ERROR = ""
    _STATE_NAMES = {("rss", "step"): "step", ("rss", "sum"): "sum"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None):
        aliases.adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps,
                        maximize=maximize)
        super().__init__(params, dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused))
        value = float(initial_accumulator_value)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = self._fresh_leaf(p, ("rss", "step"), None, group)
                state["sum"] = torch.full_like(
                    p, complex(value, value) if p.is_complex() else value,
                    memory_format=torch.preserve_format)

    def _check_sparse(self, group):
        if group.get("fused"):
            raise RuntimeError("`fused` does not support sparse grad or complex param")
        if group["weight_decay"] != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adagrad(group["lr"], group["lr_decay"], group["weight_decay"],
                               self.defaults["initial_accumulator_value"], group["eps"],
                               maximize=group["maximize"])


class Adadelta(_Classic):
    """torch.optim.Adadelta, backed by :func:`functional_optim.adadelta`.

    State: ``step``, ``square_avg``, ``acc_delta``.
    """

    _CAPTURABLE = ("params and state_steps", False)

    _HPARAMS = ("lr", "rho", "eps", "weight_decay")
    _STATE_NAMES = {("adadelta", "step"): "step", ("adadelta", "square_avg"): "square_avg",
                    ("adadelta", "acc_delta"): "acc_delta"}

    def __init__(self, params, lr: float | torch.Tensor = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False, differentiable: bool = False):
        aliases.adadelta(lr, rho, eps, weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
            capturable=capturable, foreach=foreach, differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adadelta(group["lr"], group["rho"], group["eps"], group["weight_decay"],
                                maximize=group["maximize"])


class Adamax(_Classic):
    """torch.optim.Adamax, backed by :func:`functional_optim.adamax`.

    State: ``step``, ``exp_avg``, ``exp_inf``.
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "betas", "eps", "weight_decay")
    _STATE_NAMES = {("adamax", "step"): "step", ("adamax", "exp_avg"): "exp_avg",
                    ("adamax", "exp_inf"): "exp_inf"}

    def __init__(self, params, lr: float | torch.Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, capturable: bool = False):
        aliases.adamax(lr, betas, eps, weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adamax(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                              maximize=group["maximize"])


class NAdam(_Classic):
    """torch.optim.NAdam, backed by :func:`functional_optim.nadam`.

    State: ``step``, ``mu_product`` (0-d, torch's scalar dtype), ``exp_avg``, ``exp_avg_sq``.
    """

    _CAPTURABLE = ("params, mu_products and state_steps", True)

    _HPARAMS = ("lr", "betas", "eps", "weight_decay", "momentum_decay")
    _SCALARS = ("step", "mu_product")
    _STATE_NAMES = {("nadam", "step"): "step", ("nadam", "mu_product"): "mu_product",
                    ("nadam", "exp_avg"): "exp_avg", ("nadam", "exp_avg_sq"): "exp_avg_sq"}

    def __init__(self, params, lr: float | torch.Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False):
        aliases.nadam(lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay,
                      maximize=maximize)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"], group["decoupled_weight_decay"])

    def _build(self, group):
        return aliases.nadam(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                             group["momentum_decay"], group["decoupled_weight_decay"],
                             maximize=group["maximize"])


class RAdam(_Classic):
    """torch.optim.RAdam, backed by :func:`functional_optim.radam`.

    State: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "betas", "eps", "weight_decay")
    _STATE_NAMES = {("radam", "step"): "step", ("radam", "exp_avg"): "exp_avg",
                    ("radam", "exp_avg_sq"): "exp_avg_sq"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False):
        aliases.radam(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
            foreach=foreach, capturable=capturable,
            decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"], group["decoupled_weight_decay"])

    def _build(self, group):
        return aliases.radam(group["lr"], group["betas"], group["eps"], group["weight_decay"],
                             group["decoupled_weight_decay"], maximize=group["maximize"])


class RMSprop(_Classic):
    """torch.optim.RMSprop, backed by :func:`functional_optim.rmsprop`.

    State: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg``
    (centered).
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "alpha", "eps", "weight_decay", "momentum")
    _DEFAULTED = ("momentum",)
    _STATE_NAMES = {("rms", "step"): "step", ("rms", "nu"): "square_avg",
                    ("rms", "mu"): "grad_avg",
                    ("momentum", "momentum_buffer"): "momentum_buffer"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False):
        aliases.rmsprop(lr, alpha, eps, weight_decay, momentum, centered, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable))

    def _static_key(self, group):
        return (group["maximize"], group["centered"], _momentum(group) is None)

    def _build(self, group):
        return aliases.rmsprop(group["lr"], group["alpha"], group["eps"], group["weight_decay"],
                               _momentum(group), group["centered"], maximize=group["maximize"])

    def _load_leaf(self, store, path, p, group):
        if path == ("momentum", "step"):  # torch keeps one step (its buffer starts at zero)
            return store.get("step")
        return super()._load_leaf(store, path, p, group)

    def _store_leaf(self, store, path, value, group):
        if path != ("momentum", "step"):
            super()._store_leaf(store, path, value, group)


class Rprop(_Classic):
    """torch.optim.Rprop, backed by :func:`functional_optim.rprop`.

    State: ``step``, ``prev``, ``step_size``.
    """

    _CAPTURABLE = ("params and state_steps", True)

    _HPARAMS = ("lr", "etas", "step_sizes")
    _STATE_NAMES = {("rprop", "step"): "step", ("rprop", "prev"): "prev",
                    ("rprop", "step_size"): "step_size"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2,
                 etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False):
        aliases.rprop(lr, etas, step_sizes, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.rprop(group["lr"], group["etas"], group["step_sizes"],
                             maximize=group["maximize"])

    def _fresh_leaf(self, p, path, value, group):
        if path == ("rprop", "step_size"):  # torch's: the lr (ours reads it at the first step)
            lr = float(group["lr"])
            return torch.full_like(p, complex(lr, lr) if p.is_complex() else lr,
                                   memory_format=torch.preserve_format)
        return super()._fresh_leaf(p, path, value, group)


class ASGD(_Classic):
    """torch.optim.ASGD, backed by :func:`functional_optim.asgd`.

    State: ``step``, ``eta``, ``mu`` (0-d, torch's scalar dtype, on the parameter's device),
    ``ax`` (the averaged parameter).
    """

    _CAPTURABLE = ("params, mus, etas, and state_steps", True)

    _HPARAMS = ("lr", "lambd", "alpha", "t0", "weight_decay")
    _SCALARS = ("step", "eta", "mu")
    _ON_DEVICE = True
    _STATE_NAMES = {("asgd", "step"): "step", ("asgd", "eta"): "eta", ("asgd", "mu"): "mu",
                    ("asgd", "ax"): "ax"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False):
        aliases.asgd(lr, lambd, alpha, t0, weight_decay, maximize=maximize)
        super().__init__(params, dict(
            lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.asgd(group["lr"], group["lambd"], group["alpha"], group["t0"],
                            group["weight_decay"], maximize=group["maximize"])

    def _fresh_leaf(self, p, path, value, group):
        if path == ("asgd", "eta"):  # torch's: the lr (ours reads it at the first step)
            return self._scalar(p, group["lr"], group)
        return super()._fresh_leaf(p, path, value, group)

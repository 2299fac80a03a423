"""torch.optim's special algorithms as drop-in classes: Adafactor, Muon, SparseAdam, LBFGS."""

from __future__ import annotations

import functools

import torch

from .. import aliases
from ..transforms import lbfgs as _lbfgs
from ..transforms.orthogonal import MUON_NS_COEFFICIENTS as _NS
from . import _checkpoint
from ._compat import _TorchCompatible

__all__ = ["Adafactor", "Muon", "SparseAdam", "LBFGS"]


def _check_params(owner: str, group: dict) -> None:
    """torch's error for complex parameters, before any update (sparse gradients:
    :meth:`_TorchCompatible._check_sparse`)."""
    for p in group["params"]:
        if p.grad is not None and torch.is_complex(p):
            raise RuntimeError(f"{owner} does not support complex parameters")


class _Factored(_TorchCompatible):
    """The state of an Adafactor block in a torch-style format: the factors a parameter does
    not keep (row/column factors of a vector, the full variance of a matrix) are absent, not
    empty tensors. ``_STATE_NAMES`` names the block's fields."""

    _FACTORS = frozenset([("row_var",), ("col_var",), ("variance",)])
    _LEAF_PATHS = _FACTORS

    @staticmethod
    def _kept(p, path) -> bool:
        return (path == ("variance",)) == (p.ndim < 2)

    @staticmethod
    def _empty_for(p) -> torch.Tensor:
        return _empty(p.dtype, p.device)

    def _load_leaf(self, store, path, p, group):
        if path in self._FACTORS and not self._kept(p, path):
            return self._empty_for(p)
        return super()._load_leaf(store, path, p, group)

    def _load_column(self, stores, path, params, group):
        if path not in self._FACTORS:
            return super()._load_column(stores, path, params, group)
        name = self._STATE_NAMES[path]
        return [store.get(name) if self._kept(p, path) else self._empty_for(p)
                for store, p in zip(stores, params)]

    def _store_leaf(self, store, path, value, group):
        # a factor the parameter does not keep (an empty placeholder) is not stored, as torch
        if value.shape == (0,) and (path in (("row_var",), ("col_var",)) or (
                path == ("variance",) and self._STATE_NAMES[("row_var",)] in store)):
            return
        super()._store_leaf(store, path, value, group)

    def _state_key(self, path, p):
        return None if path in self._FACTORS and not self._kept(p, path) else \
            super()._state_key(path, p)


class Adafactor(_Factored):
    """torch.optim.Adafactor, backed by :func:`functional_optim.adafactor`.

    State: ``step`` and, for parameters of >= 2 dimensions, ``row_var`` and ``col_var``, else
    ``variance`` (torch's format: the factors a parameter does not keep are absent).
    """

    _HPARAMS = ("lr", "beta2_decay", "eps", "d", "weight_decay")
    _STATE_NAMES = {("step",): "step", ("row_var",): "row_var", ("col_var",): "col_var",
                    ("variance",): "variance"}

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, foreach: bool | None = None,
                 maximize: bool = False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        aliases.adafactor(lr, beta2_decay, eps, d, weight_decay, maximize=maximize)
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, foreach=foreach,
                                      maximize=maximize))

    def _static_key(self, group):
        return (group["maximize"],)

    def _build(self, group):
        return aliases.adafactor(group["lr"], group["beta2_decay"], tuple(group["eps"]),
                                 group["d"], group["weight_decay"], maximize=group["maximize"])

    def _hparams_for(self, tx, group):
        return {k: tuple(group[k]) if k == "eps" else group[k] for k in self._HPARAMS}

    def _step_group(self, group):
        _check_params("Adafactor", group)
        super()._step_group(group)


@functools.cache
def _empty(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The placeholder of a factor a parameter does not keep (shared: it has no elements)."""
    return torch.zeros(0, dtype=dtype, device=device)


class Muon(_TorchCompatible):
    """torch.optim.Muon, backed by :func:`functional_optim.muon`. State: ``momentum_buffer``.

    2-D parameters only (torch's ``ValueError`` otherwise, at construction).
    """

    _HPARAMS = ("lr", "weight_decay", "momentum", "ns_coefficients", "eps")
    _STATE_NAMES = {("muon", "momentum_buffer"): "momentum_buffer"}

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[float, float, float] = _NS, eps: float = 1e-7,
                 ns_steps: int = 5, adjust_lr_fn: str | None = None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        aliases.muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
                     adjust_lr_fn)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=ns_coefficients,
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        "Muon only supports 2D parameters whereas we found a parameter with "
                        f"size: {p.size()}")

    def _static_key(self, group):
        return (group["nesterov"], group["ns_steps"], group["adjust_lr_fn"])

    def _build(self, group):
        return aliases.muon(group["lr"], group["weight_decay"], group["momentum"],
                            group["nesterov"], tuple(group["ns_coefficients"]), group["eps"],
                            group["ns_steps"], group["adjust_lr_fn"])

    def _hparams_for(self, tx, group):
        return {k: tuple(group[k]) if k == "ns_coefficients" else group[k]
                for k in self._HPARAMS}

    def _step_group(self, group):
        _check_params("Muon", group)
        super()._step_group(group)


class SparseAdam(_TorchCompatible):
    """torch.optim.SparseAdam, backed by :func:`functional_optim.sparse_adam`.

    State: ``step`` (a Python int, as torch), ``exp_avg``, ``exp_avg_sq``. Gradients must be
    sparse (``nn.Embedding(sparse=True)``); a dense one raises torch's ``RuntimeError``.
    """

    _HPARAMS = ("lr", "betas", "eps")
    _STATE_NAMES = {("step",): "step", ("exp_avg",): "exp_avg", ("exp_avg_sq",): "exp_avg_sq"}
    _SPARSE_ERROR = ""
    _LEAF_PATHS = frozenset([("step",)])
    _SCALARS = ()  # torch keeps "step" a Python int

    def __init__(self, params, lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 maximize: bool = False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))
        for kind, test, what in (("Sparse", lambda p: p.is_sparse,
                                  "SparseAdam requires dense parameter tensors"),
                                 ("Complex", lambda p: p.is_complex(),
                                  "SparseAdam does not support complex parameters")):
            found = [[i, j] for i, g in enumerate(self.param_groups)
                     for j, p in enumerate(g["params"]) if test(p)]
            if found:
                raise ValueError(f"{kind} params at indices {found}: {what}")

    def _static_key(self, group):
        return (group.get("maximize", False),)

    def _build(self, group):
        return aliases.sparse_adam(group["lr"], tuple(group["betas"]), group["eps"],
                                   group.get("maximize", False))

    def _load_leaf(self, store, path, p, group):
        if path == ("step",):
            step = store.get("step")
            if step is None:
                return None
            return torch.as_tensor(step, dtype=torch.int64, device=p.device)
        return super()._load_leaf(store, path, p, group)

    def _store_leaf(self, store, path, value, group):
        if path == ("step",):  # torch keeps a Python int
            store["step"] = int(value)
        else:
            super()._store_leaf(store, path, value, group)

    def _number_keys(self):
        return frozenset([("step",)])


class LBFGS(_TorchCompatible):
    """torch.optim.LBFGS, backed by :mod:`functional_optim.transforms.lbfgs`.

    ``step(closure)`` drives the closure as torch does (the same evaluations, in the same order,
    on the same parameter values) and returns the first loss. One param group only. State (on
    the first parameter, torch's layout): ``func_evals``, ``n_iter``, ``d``, ``t``,
    ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``al``.
    """

    _HPARAMS = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
                "history_size", "line_search_fn")
    _SCALARS = ()

    def __init__(self, params, lr: float | torch.Tensor = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(params, dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, history_size=history_size,
            line_search_fn=line_search_fn))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    def _static_key(self, group):
        return (group["max_iter"], group["max_eval"], group["history_size"],
                group["line_search_fn"])

    def _build(self, group):
        return aliases.lbfgs(group["lr"], group["max_iter"], group["max_eval"],
                             group["tolerance_grad"], group["tolerance_change"],
                             group["history_size"], group["line_search_fn"])

    def _check_group_state(self, owner, index, group, ids, entries):
        # torch's layout: the state of the whole group on its first parameter, nothing on the
        # others
        size = sum(torch.view_as_real(p).numel() if p.is_complex() else p.numel()
                   for p in group["params"])
        for k, entry in entries.items():
            where = _checkpoint.Where.of(owner, index, group, ids, k)
            if k == 0:
                _checkpoint.check_lbfgs(where, entry, size, group["history_size"])
            elif entry:
                where.fail(None, "no state (LBFGS keeps its state on the first parameter)",
                           _checkpoint.describe(entry))
        return {}

    def step(self, closure):  # type: ignore[override]
        """One L-BFGS step (up to ``max_iter`` iterations); returns the closure's first loss."""
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        group = self.param_groups[0]
        if group["line_search_fn"] not in (None, "strong_wolfe"):
            raise RuntimeError("only 'strong_wolfe' is supported")
        params = group["params"]
        closure = torch.enable_grad()(closure)
        cfg = _lbfgs.Config(float(group["lr"]), group["max_iter"], group["max_eval"],
                            group["tolerance_grad"], group["tolerance_change"],
                            group["history_size"], group["line_search_fn"])
        store = self.state[params[0]]
        store.setdefault("func_evals", 0)
        store.setdefault("n_iter", 0)
        work = _lbfgs.Work(
            func_evals=store["func_evals"], n_iter=store["n_iter"], d=store.get("d"),
            t=store.get("t"), old_dirs=list(store.get("old_dirs") or []),
            old_stps=list(store.get("old_stps") or []), ro=list(store.get("ro") or []),
            H_diag=store.get("H_diag"), prev_flat_grad=store.get("prev_flat_grad"),
            prev_loss=store.get("prev_loss"), al=store.get("al"))

        def gather():
            return _lbfgs.flatten([p.grad for p in params], params)

        def evaluate(values):
            with torch.no_grad():
                for p, x in zip(params, values):
                    p.copy_(x)
            loss = float(closure())
            return loss, gather()

        orig_loss = closure()
        with torch.no_grad():
            start = [p.detach().clone(memory_format=torch.contiguous_format) for p in params]
            final = _lbfgs.run(work, start, float(orig_loss), gather(), evaluate, cfg)
            for p, x in zip(params, final):
                p.copy_(x)
        store["func_evals"], store["n_iter"] = work.func_evals, work.n_iter
        if work.n_iter:  # torch writes these once an iteration has run
            for key in ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad",
                        "prev_loss"):
                store[key] = getattr(work, key)
        if work.al is not None:
            store["al"] = work.al
        return orig_loss

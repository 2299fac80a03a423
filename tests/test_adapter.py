"""The stateful adapter against ``torch.optim`` (DESIGN §4).

``functional_optim.optim.SGD/Adam/AdamW`` and ``FunctionalOptimizer(params, transform)`` are run
side by side with ``torch.optim``'s classes on identical float64 models and data; parameters and
the whole ``state_dict`` must agree to ``1e-10`` relative (per tensor,
``max|a-b| <= 1e-10 max|b|``).

Covered: constructor signatures, defaults, validation and every option torch accepts;
``param_groups`` read on each step; closures, ``zero_grad``, ``repr``, hooks, deepcopy/pickle;
the generic adapter's group keys, factories and schedule-driven chains; ``state_dict`` in
torch's format both ways (through ``torch.save``/``torch.load(weights_only=True)``) and failed
loads leaving the optimizer unchanged; ``torch.amp.GradScaler``; ``torch.compile`` of ``step``;
the stateful path equal to the functional one. lr schedulers: ``test_adapter_schedulers.py``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import pickle
import warnings

import pytest
import torch
from tolerance import UPDATE_OPS, assert_close_ulps, ulp_budget
from torch import nn

import functional_optim as fo
import functional_optim.optim as foo
from functional_optim import optim as fo_optim
from functional_optim.optim import SGD, Adam, AdamW, FunctionalOptimizer

RTOL = 1e-10
STEPS = 12
PAIRS = {"SGD": (SGD, torch.optim.SGD), "Adam": (Adam, torch.optim.Adam),
         "AdamW": (AdamW, torch.optim.AdamW)}


# -- harness ---------------------------------------------------------------------------------

def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


_GEN = torch.Generator().manual_seed(1234)
X = torch.randn(32, 4, generator=_GEN, dtype=torch.float64)
Y = torch.randn(32, 3, generator=_GEN, dtype=torch.float64)


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    j = (i % 4) * 8
    return nn.functional.mse_loss(model(X[j:j + 8]), Y[j:j + 8])


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0,
           before_step=None) -> list[float]:
    losses = []
    for i in range(start, start + steps):
        opt.zero_grad()
        loss = _loss(model, i)
        loss.backward()
        if before_step is not None:
            before_step(i)
        opt.step()
        losses.append(loss.item())
    return losses


def _close(a: torch.Tensor, b: torch.Tensor, where: str, rtol: float = RTOL) -> None:
    assert a.shape == b.shape, f"{where}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
    a, b = a.detach(), b.detach()
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    bound = rtol * (b.double().abs().max().item() if b.numel() else 0.0)
    assert err <= bound, f"{where}: max|a-b| = {err:.3e} > {bound:.3e}"


def _same_params(m1: nn.Module, m2: nn.Module, rtol: float = RTOL) -> None:
    for (name, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        _close(a, b, f"parameter {name}", rtol)


def _same_value(a, b, where: str, rtol: float = RTOL) -> None:
    if isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor), f"{where}: {type(a).__name__}, expected a tensor"
        assert a.device == b.device, f"{where}: device {a.device} != {b.device}"
        _close(a, b, where, rtol)
    elif isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b), f"{where}: keys {a} != {sorted(b)}"
        for k in b:
            _same_value(a[k], b[k], f"{where}[{k!r}]", rtol)
    elif isinstance(b, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_value(x, y, f"{where}[{i}]", rtol)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _same_state_dict(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer,
                     rtol: float = RTOL) -> None:
    """Same ``state_dict``: keys, tensor dtypes/devices/values and param_groups."""
    _same_value(ours.state_dict(), theirs.state_dict(), "state_dict", rtol)


def _pair(name: str, kwargs: dict, groups=None, seed: int = 0):
    """Identical models with our optimizer and torch's."""
    ours_cls, torch_cls = PAIRS[name]
    m1, m2 = _model(seed), _model(seed)
    p1 = groups(m1) if groups else m1.parameters()
    p2 = groups(m2) if groups else m2.parameters()
    return m1, ours_cls(p1, **kwargs), m2, torch_cls(p2, **kwargs)


def _snapshot(opt: torch.optim.Optimizer):
    """A deep copy of what ``load_state_dict`` may change."""
    return copy.deepcopy((dict(opt.state), opt.param_groups))


def _assert_unchanged(opt: torch.optim.Optimizer, snap) -> None:
    state, groups = snap
    now_state, now_groups = dict(opt.state), opt.param_groups
    assert len(now_state) == len(state)
    for (p, s), (q, t) in zip(now_state.items(), state.items(), strict=True):
        assert torch.equal(p, q)
        _same_value(s, t, "state after a failed load", rtol=0)
    assert len(now_groups) == len(groups)
    for g, h in zip(now_groups, groups, strict=True):
        assert set(g) == set(h)
        for k in g:
            if k == "params":
                assert len(g[k]) == len(h[k])
            else:
                _same_value(g[k], h[k], f"group[{k!r}] after a failed load", rtol=0)


# -- constructor ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PAIRS))
def test_signature_and_defaults_match_torch(name):
    ours_cls, torch_cls = PAIRS[name]
    ours = inspect.signature(ours_cls).parameters
    theirs = inspect.signature(torch_cls).parameters
    assert list(ours) == list(theirs)
    for k in theirs:
        assert ours[k].kind == theirs[k].kind, k
        assert ours[k].default == theirs[k].default, k
        assert type(ours[k].default) is type(theirs[k].default), k
    m = _model()
    assert ours_cls(m.parameters()).defaults == torch_cls(m.parameters()).defaults
    assert ours_cls(m.parameters(), 0.1).defaults == torch_cls(m.parameters(), 0.1).defaults


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, amsgrad=True,
                  foreach=False, maximize=True, differentiable=False, fused=None,
                  decoupled_weight_decay=True)),
    ("AdamW", dict(lr=0.1, weight_decay=0.0, amsgrad=True, capturable=False)),
])
def test_defaults_and_repr_match_torch(name, kwargs):
    def groups(m):
        return [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.5}]
    _, ours, _, theirs = _pair(name, kwargs, groups)
    assert ours.defaults == theirs.defaults
    assert repr(ours) == repr(theirs)
    assert ours.param_groups[1]["lr"] == 0.5


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(lr=-0.1)),
    ("SGD", dict(momentum=-0.5)),
    ("SGD", dict(weight_decay=-1.0)),
    ("SGD", dict(nesterov=True)),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1)),
    ("SGD", dict(lr=torch.tensor([0.1, 0.2]))),
    ("Adam", dict(lr=-1e-3)),
    ("Adam", dict(eps=-1e-8)),
    ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(weight_decay=-0.1)),
    ("Adam", dict(lr=torch.tensor([1e-3, 1e-3]))),
    ("AdamW", dict(lr=-1e-3)),
    ("AdamW", dict(betas=(0.9, 1.0))),
    ("AdamW", dict(weight_decay=-0.1)),
])
def test_invalid_hyperparameters_raise_value_error_like_torch(name, kwargs):
    ours_cls, torch_cls = PAIRS[name]
    with pytest.raises(ValueError):
        torch_cls(_model().parameters(), **kwargs)
    with pytest.raises(ValueError):
        ours_cls(_model().parameters(), **kwargs)


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("case", ["empty", "tensor", "duplicate", "non_leaf", "overlapping"])
def test_invalid_params_raise_like_torch(name, case):
    ours_cls, torch_cls = PAIRS[name]
    w = nn.Parameter(torch.randn(3, dtype=torch.float64))
    params = {
        "empty": lambda: [],
        "tensor": lambda: w,
        "duplicate": lambda: [w, w],
        "non_leaf": lambda: [w * 2],
        "overlapping": lambda: [{"params": [w]}, {"params": [w]}],
    }[case]
    outcomes = []
    for cls in (torch_cls, ours_cls):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cls(params())
                outcomes.append((None, None))
            except Exception as e:  # noqa: BLE001 - the type and message are what we compare
                outcomes.append((type(e), str(e)))
        outcomes[-1] += (sorted(str(w.message) for w in caught),)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("name, kwargs", [
    ("SGD", dict(fused=True, foreach=True)),
    ("Adam", dict(fused=True, foreach=True)),
    ("Adam", dict(fused=True, differentiable=True)),
    ("AdamW", dict(fused=True, differentiable=True)),
])
def test_incompatible_flags_raise_like_torch(name, kwargs):
    ours_cls, torch_cls = PAIRS[name]
    with pytest.raises(RuntimeError) as theirs:
        torch_cls(_model().parameters(), **kwargs)
    with pytest.raises(RuntimeError) as ours:
        ours_cls(_model().parameters(), **kwargs)
    assert str(ours.value) == str(theirs.value)


# -- trajectories for every option ------------------------------------------------------------

def _f64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


OPTION_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, foreach=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, foreach=False)),
    ("SGD", dict(lr=0.1, momentum=0.9, fused=True)),
    ("SGD", dict(lr=_f64(0.1), momentum=0.9)),
    ("SGD", dict(lr=_f64(0.1), momentum=0.9, foreach=True)),
    ("Adam", dict(lr=0.02)),
    ("Adam", dict(lr=0.02, amsgrad=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)),
    ("Adam", dict(lr=0.02, foreach=True)),
    ("Adam", dict(lr=0.02, foreach=False, betas=(0.8, 0.95), eps=1e-6)),
    ("Adam", dict(lr=0.02, fused=True, amsgrad=True)),
    ("Adam", dict(lr=_f64(0.02))),
    ("Adam", dict(lr=_f64(0.02), betas=(_f64(0.8), _f64(0.95)))),
    ("AdamW", dict(lr=0.02)),
    ("AdamW", dict(lr=0.02, weight_decay=0.3, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.02, foreach=True)),
    ("AdamW", dict(lr=0.02, fused=True)),
    ("AdamW", dict(lr=_f64(0.02), weight_decay=0.1)),
]


@pytest.mark.parametrize("name, kwargs", OPTION_CASES,
                         ids=[f"{n}-{'-'.join(sorted(k))}-{i}" for i, (n, k) in
                              enumerate(OPTION_CASES)])
def test_trajectory_matches_torch(name, kwargs):
    m1, ours, m2, theirs = _pair(name, copy.deepcopy(kwargs))
    assert _train(m1, ours, STEPS) == pytest.approx(_train(m2, theirs, STEPS), rel=1e-10)
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


CAPTURABLE = ["Adam", "AdamW", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop",
              "ASGD"]


@pytest.mark.parametrize("name", CAPTURABLE)
def test_capturable_on_the_cpu_raises_as_torch(name):
    """torch.optim refuses ``capturable=True`` for parameters CUDA graphs cannot capture (an
    AssertionError at step time, with its message); ours too, before anything changes. (On a
    GPU, tests/test_cuda.py checks the capturable step and its device-resident ``step``.)"""
    errors, states = [], []
    for cls in (getattr(fo_optim, name), getattr(torch.optim, name)):
        p = nn.Parameter(torch.linspace(-1, 1, 4, dtype=torch.float64))
        p.grad = torch.ones_like(p)
        opt = cls([p], capturable=True)
        with pytest.raises(AssertionError) as caught:
            opt.step()
        errors.append(str(caught.value))
        states.append(opt.state[p])
        assert torch.equal(p.detach(), torch.linspace(-1, 1, 4, dtype=torch.float64))
    assert errors[0] == errors[1] and errors[0].startswith("If capturable=True, ")
    assert not states[0]  # (torch has made its state by then)


def _differentiable_run(cls, kwargs: dict, w0: torch.Tensor, lr: torch.Tensor,
                        differentiable: bool = True, steps: int = 4) -> torch.Tensor:
    """``steps`` steps on ``p = w0.clone()`` (a non-leaf: only differentiable optimizers take
    it)."""
    target = torch.linspace(-1, 1, 5, dtype=torch.float64)
    p = w0.clone()
    opt = cls([p], lr=lr, differentiable=differentiable, **kwargs)
    for _ in range(steps):
        p.grad = 2 * (p - target)  # depends on p: d(step)/d(grad) flows into the result
        opt.step()
    return (p * torch.arange(5, dtype=torch.float64)).sum()


def _differentiable_grads(cls, kwargs, steps: int = 4):
    w0 = torch.linspace(0.3, -0.7, 5, dtype=torch.float64).requires_grad_()
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    out = _differentiable_run(cls, kwargs, w0, lr, steps=steps)
    return (out.detach(), *torch.autograd.grad(out, (w0, lr)))


@pytest.mark.parametrize("name, kwargs, steps", [
    ("SGD", dict(), 4),
    ("SGD", dict(weight_decay=0.1, maximize=True), 4),
    # torch's first momentum buffer is a detached copy of the gradient (ours too: the drop-in
    # runs sgd(detach_first=True)); torch's later in-place buffer updates fail over 4 steps,
    # except with nesterov
    ("SGD", dict(momentum=0.9), 1),
    ("SGD", dict(momentum=0.5, dampening=0.3, weight_decay=0.1, maximize=True), 1),
    ("SGD", dict(momentum=0.9, nesterov=True), 4),
    ("Adam", dict(), 4),
    ("Adam", dict(weight_decay=0.1), 4),
    ("AdamW", dict(weight_decay=0.1), 4),
])
def test_differentiable_gives_torchs_gradients(name, kwargs, steps):
    """``differentiable=True``: the step is part of the graph; d(result)/d(init, lr) as torch's.

    Under float64 default dtype: torch's differentiable Adam computes its bias corrections in
    the dtype of ``state["step"]`` (float32 by default), ~1e-7 off."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours = _differentiable_grads(PAIRS[name][0], kwargs, steps)
        theirs = _differentiable_grads(PAIRS[name][1], kwargs, steps)
    finally:
        torch.set_default_dtype(old)
    for a, b, what in zip(ours, theirs, ("result", "d/dw0", "d/dlr"), strict=True):
        _close(a, b, what)


def _functional_sgd(**options):
    """The generic adapter on ``fo.sgd(**options)``: its first momentum buffer is the gradient
    itself (meta-gradients flow through it, unlike the drop-in's torch-like detached copy)."""
    def make(params, **kwargs):
        return FunctionalOptimizer(params, fo.sgd(**options), **kwargs)
    return make


@pytest.mark.parametrize("name, kwargs", [
    (_functional_sgd(momentum=0.9, weight_decay=0.1), {}),
    (_functional_sgd(momentum=0.9, nesterov=True), {}),
    ("Adam", dict(amsgrad=True)),                    # torch: fails (in-place on a saved tensor)
    ("AdamW", dict(weight_decay=0.1, amsgrad=True, maximize=True)),
], ids=["sgd-momentum-wd", "sgd-nesterov", "Adam-amsgrad", "AdamW-amsgrad"])
def test_differentiable_gradients_match_finite_differences(name, kwargs):
    """Where torch's differentiable step fails or is wrong, ours is checked against central
    finite differences of the eager (non-differentiable) result."""
    cls = PAIRS[name][0] if isinstance(name, str) else name
    value, d_w0, d_lr = _differentiable_grads(cls, kwargs)
    w0 = torch.linspace(0.3, -0.7, 5, dtype=torch.float64)
    lr, h = torch.tensor(0.05, dtype=torch.float64), 1e-6

    def f(w, rate):
        with torch.no_grad():
            return _differentiable_run(cls, kwargs, w, rate, differentiable=False).item()

    fd_w0 = torch.tensor([(f(w0 + h * e, lr) - f(w0 - h * e, lr)) / (2 * h)
                          for e in torch.eye(5, dtype=torch.float64)], dtype=torch.float64)
    fd_lr = torch.tensor((f(w0, lr + h) - f(w0, lr - h)) / (2 * h), dtype=torch.float64)
    torch.testing.assert_close(d_w0, fd_w0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(d_lr, fd_lr, rtol=1e-6, atol=1e-7)
    assert value.item() == pytest.approx(f(w0, lr), rel=1e-12)


@pytest.mark.parametrize("name", list(PAIRS))
def test_float32_parameters_match_torch(name):
    m1, ours, m2, theirs = _pair(name, dict(lr=0.02, momentum=0.9) if name == "SGD" else
                                 dict(lr=0.02))
    m1.float(), m2.float()
    x, y = X.float(), Y.float()
    peak = {k: p.abs().max().item() for k, p in m2.named_parameters()}
    for _ in range(STEPS):
        for m, o in ((m1, ours), (m2, theirs)):
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            o.step()
        peak = {k: max(peak[k], p.abs().max().item()) for k, p in m2.named_parameters()}
    # the update rule's ops, 2 ulps each, every step, of each tensor's peak (ours runs torch's
    # fused kernel, torch its single-tensor path: other roundings); each side's gradients come
    # from its own parameters, which feeds a difference back, by little over 12 steps at lr 0.02
    for (k, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert_close_ulps(a, b, scale=peak[k], where=k,
                          ulps=ulp_budget(STEPS, UPDATE_OPS[name.lower()]))


# -- param_groups are the hyperparameters ----------------------------------------------------

def _two_groups(m):
    return [{"params": m[0].parameters(), "lr": 0.03, "weight_decay": 0.2},
            {"params": m[2].parameters()}]


@pytest.mark.parametrize("name", list(PAIRS))
def test_per_group_hyperparameters(name):
    kwargs = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    m1, ours, m2, theirs = _pair(name, kwargs, _two_groups)
    _train(m1, ours, STEPS)
    _train(m2, theirs, STEPS)
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


@pytest.mark.parametrize("name", list(PAIRS))
def test_group_values_are_read_on_every_step(name):
    kwargs = dict(lr=0.05, momentum=0.5, weight_decay=0.1) if name == "SGD" else \
        dict(lr=0.05, weight_decay=0.1)

    def change(opts):
        def before(i):
            for opt in opts:
                g = opt.param_groups[i % 2]
                g["lr"] = 0.05 / (1 + i)
                g["weight_decay"] = 0.1 * (i % 3)
                if name == "SGD":
                    g["momentum"] = 0.5 + 0.04 * i
                else:
                    g["betas"] = (0.9 - 0.01 * i, 0.99)
                    g["eps"] = 1e-8 * (1 + i)
        return before

    m1, ours, m2, theirs = _pair(name, kwargs, _two_groups)
    _train(m1, ours, STEPS, before_step=change([ours]))
    _train(m2, theirs, STEPS, before_step=change([theirs]))
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


@pytest.mark.parametrize("foreach", [None, True, False])
def test_sgd_momentum_from_zero_and_back_mid_run(foreach):
    """A group's momentum going 0 -> 0.9 (with dampening) -> 0 -> 0.5 follows torch.optim.SGD:
    no buffer while it is 0, a fresh buffer (the gradient itself) when it turns on, the old
    buffer kept while it is off again; the state_dict matches at every stage."""
    def change(opt):
        def before(i):
            opt.param_groups[0]["momentum"] = {3: 0.9, 6: 0.0, 9: 0.5}.get(
                i, opt.param_groups[0]["momentum"])
            opt.param_groups[0]["dampening"] = 0.3 if i < 9 else 0.0
        return before

    m1, ours, m2, theirs = _pair("SGD", dict(lr=0.05, foreach=foreach), _two_groups)
    for start in (0, 3, 6, 9):
        _train(m1, ours, 3, start=start, before_step=change(ours))
        _train(m2, theirs, 3, start=start, before_step=change(theirs))
        _same_params(m1, m2)
        _same_state_dict(ours, theirs)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_static_options_changed_in_a_group(name):
    """Structural options (``nesterov``, ``amsgrad``, ``maximize``) are also read per step."""
    kwargs = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)

    def change(opt):
        def before(i):
            if i == 4:
                opt.param_groups[0]["maximize"] = True
            if i == 8:  # (torch cannot turn amsgrad on mid-training: no max_exp_avg_sq)
                opt.param_groups[0]["maximize"] = False
                opt.param_groups[0]["nesterov" if name == "SGD" else "weight_decay"] = 0.1 \
                    if name == "Adam" else True
        return before

    m1, ours, m2, theirs = _pair(name, kwargs)
    _train(m1, ours, STEPS, before_step=change(ours))
    _train(m2, theirs, STEPS, before_step=change(theirs))
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


@pytest.mark.parametrize("name", list(PAIRS))
def test_add_param_group_mid_training(name):
    kwargs = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.02)
    m1, m2 = _model(), _model()
    ours = PAIRS[name][0](m1[0].parameters(), **kwargs)
    theirs = PAIRS[name][1](m2[0].parameters(), **kwargs)
    _train(m1, ours, 4)
    _train(m2, theirs, 4)
    ours.add_param_group({"params": m1[2].parameters(), "lr": 0.01})
    theirs.add_param_group({"params": m2[2].parameters(), "lr": 0.01})
    assert ours.param_groups[1].keys() == theirs.param_groups[1].keys()
    _train(m1, ours, 6, start=4)
    _train(m2, theirs, 6, start=4)
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)
    with pytest.raises(ValueError, match="more than one parameter group"):
        ours.add_param_group({"params": m1[2].weight})


@pytest.mark.parametrize("name", list(PAIRS))
def test_params_without_grad_are_skipped(name):
    kwargs = dict(lr=0.05, momentum=0.9, weight_decay=0.1) if name == "SGD" else \
        dict(lr=0.02, weight_decay=0.1)
    m1, ours, m2, theirs = _pair(name, kwargs)
    frozen1, frozen2 = m1[0].bias, m2[0].bias        # never has a grad
    late1, late2 = m1[2].bias, m2[2].bias            # has a grad only from step 5 on

    def drop(model, frozen, late):
        def before(i):
            frozen.grad = None
            if i < 5:
                late.grad = None
        return before

    before1 = frozen1.detach().clone()
    _train(m1, ours, 5, before_step=drop(m1, frozen1, late1))
    _train(m2, theirs, 5, before_step=drop(m2, frozen2, late2))
    assert frozen1 not in ours.state and late1 not in ours.state
    _same_state_dict(ours, theirs)
    _train(m1, ours, 5, start=5, before_step=drop(m1, frozen1, late1))
    _train(m2, theirs, 5, start=5, before_step=drop(m2, frozen2, late2))
    assert torch.equal(frozen1, before1)  # weight decay did not touch it either
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


@pytest.mark.parametrize("name", list(PAIRS))
def test_step_with_closure_returns_its_loss(name):
    m1, ours, m2, theirs = _pair(name, dict(lr=0.02))
    calls = []

    def closure_for(model, opt):
        def closure():
            calls.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = _loss(model, 0)
            loss.backward()
            return loss
        return closure

    for _ in range(3):
        with torch.no_grad():  # the closure still runs with grad enabled
            l1 = ours.step(closure_for(m1, ours))
            l2 = theirs.step(closure_for(m2, theirs))
        assert isinstance(l1, torch.Tensor) and l1.item() == l2.item()
    assert calls == [True] * 6
    assert ours.step() is None and theirs.step() is None  # a step on the last grads
    _same_params(m1, m2)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_like_torch(set_to_none):
    m1, ours, m2, theirs = _pair("Adam", {})
    for m, o in ((m1, ours), (m2, theirs)):
        _loss(m, 0).backward()
        o.zero_grad(set_to_none=set_to_none)
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        if set_to_none:
            assert p.grad is None and q.grad is None
        else:
            assert p.grad is not None and torch.equal(p.grad, q.grad) and not p.grad.any()
    # a step after zero_grad(set_to_none=False) is a real step with zero grads (state advances)
    ours.step()
    theirs.step()
    _same_state_dict(ours, theirs)


def test_step_hooks_like_torch():
    events = {"ours": [], "torch": []}
    handles = []

    def pre(tag, kind):
        def hook(opt, args, kwargs):
            events[tag].append(f"{kind}-pre")
        return hook

    def post(tag, kind):
        def hook(opt, args, kwargs):
            events[tag].append(f"{kind}-post")
        return hook

    m1, ours, m2, theirs = _pair("AdamW", dict(lr=0.02))

    def global_pre(opt, args, kwargs):
        events["ours" if isinstance(opt, FunctionalOptimizer) else "torch"].append("global-pre")

    def global_post(opt, args, kwargs):
        events["ours" if isinstance(opt, FunctionalOptimizer) else "torch"].append("global-post")

    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )
    handles += [register_optimizer_step_pre_hook(global_pre),
                register_optimizer_step_post_hook(global_post)]
    try:
        for tag, opt in (("ours", ours), ("torch", theirs)):
            handles += [opt.register_step_pre_hook(pre(tag, "local")),
                        opt.register_step_post_hook(post(tag, "local"))]

        _train(m1, ours, 2)
        _train(m2, theirs, 2)
    finally:
        for h in handles:
            h.remove()
    assert events["ours"] == events["torch"] == [
        "global-pre", "local-pre", "local-post", "global-post"] * 2
    _train(m1, ours, 1, start=2)
    assert len(events["ours"]) == 8  # removed hooks are gone


def test_step_pre_hook_can_replace_the_closure():
    m1, ours, m2, theirs = _pair("SGD", dict(lr=0.1))

    def make_hook(model):
        def hook(opt, args, kwargs):
            def closure():
                opt.zero_grad()
                loss = _loss(model, 1)
                loss.backward()
                return loss
            return args, {"closure": closure}
        return hook

    ours.register_step_pre_hook(make_hook(m1))
    theirs.register_step_pre_hook(make_hook(m2))
    assert ours.step().item() == theirs.step().item()
    _same_params(m1, m2)


def test_state_dict_hooks_like_torch():
    m1, ours, m2, theirs = _pair("Adam", dict(lr=0.02))
    _train(m1, ours, 2)
    _train(m2, theirs, 2)
    logs = {id(ours): [], id(theirs): []}
    for opt in (ours, theirs):
        log = logs[id(opt)]
        opt.register_state_dict_pre_hook(lambda o, log=log: log.append("sd-pre"))
        opt.register_state_dict_post_hook(
            lambda o, sd, log=log: log.append("sd-post") or {**sd, "extra": 7})
        opt.register_state_dict_pre_hook(lambda o, log=log: log.append("sd-pre0"), prepend=True)
        opt.register_load_state_dict_pre_hook(
            lambda o, sd, log=log: log.append(("load-pre", sorted(sd))))
        opt.register_load_state_dict_post_hook(lambda o, log=log: log.append("load-post"))
    sd1, sd2 = ours.state_dict(), theirs.state_dict()
    assert sd1["extra"] == sd2["extra"] == 7
    ours.load_state_dict(sd1)
    theirs.load_state_dict(sd2)
    assert logs[id(ours)] == logs[id(theirs)] == [
        "sd-pre0", "sd-pre", "sd-post", ("load-pre", ["extra", "param_groups", "state"]),
        "load-post"]
    _train(m1, ours, 3, start=2)
    _train(m2, theirs, 3, start=2)
    _same_params(m1, m2)


def test_load_state_dict_pre_hook_runs_before_validation():
    """A pre-hook may adapt an old checkpoint (here: flattened state) before it is checked."""
    m1, ours, m2, theirs = _pair("AdamW", dict(lr=0.02))
    _train(m2, theirs, 3)
    sd = theirs.state_dict()
    flat = {"state": {k: {n: (v.flatten() if n != "step" else v) for n, v in s.items()}
                      for k, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}
    shapes = [p.shape for p in m1.parameters()]

    def unflatten(opt, state_dict):
        return {"state": {k: {n: (v.reshape(shapes[k]) if n != "step" else v)
                              for n, v in s.items()} for k, s in state_dict["state"].items()},
                "param_groups": state_dict["param_groups"]}

    ours.register_load_state_dict_pre_hook(unflatten)
    m1.load_state_dict(m2.state_dict())
    ours.load_state_dict(flat)
    _train(m1, ours, 3, start=3)
    _train(m2, theirs, 3, start=3)
    _same_params(m1, m2)


# -- deepcopy and pickle ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_training_identically(name, how):
    kwargs = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.02, amsgrad=True)
    m1, ours, m2, theirs = _pair(name, kwargs, _two_groups)
    _train(m1, ours, 4)
    _train(m2, theirs, 4)
    ours.param_groups[0]["lr"] = theirs.param_groups[0]["lr"] = 0.004
    if how == "deepcopy":
        c1, co = copy.deepcopy((m1, ours))
    else:
        c1, co = pickle.loads(pickle.dumps((m1, ours)))
    assert type(co) is type(ours) and repr(co) == repr(ours)
    assert all(p is q for p, q in zip(co.param_groups[0]["params"], c1[0].parameters(),
                                      strict=True))
    _same_state_dict(co, ours, rtol=0)
    _train(c1, co, 4, start=4)
    _train(m1, ours, 4, start=4)
    _train(m2, theirs, 4, start=4)
    _same_params(c1, m2)
    _same_params(m1, m2)
    _same_state_dict(co, theirs)


@pytest.mark.parametrize("name", list(PAIRS))
def test_copies_drop_hooks_like_torch(name):
    ours_cls, torch_cls = PAIRS[name]
    for cls in (ours_cls, torch_cls):
        opt = cls(_model().parameters())
        opt.register_step_pre_hook(lambda *a: None)
        opt.register_load_state_dict_post_hook(lambda *a: None)
        for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
            assert not copied._optimizer_step_pre_hooks
            assert not copied._optimizer_load_state_dict_post_hooks


# -- the generic adapter ---------------------------------------------------------------------

def _named_chain(max_norm=1.0, lr=1e-3):
    return fo.chain(clip=fo.clip_by_global_norm(max_norm), adam=fo.scale_by_adam(),
                    lr=fo.scale_by_learning_rate(lr))


def test_group_keys_of_a_named_chain():
    opt = FunctionalOptimizer(_model().parameters(), _named_chain())
    group = opt.param_groups[0]
    assert set(group) == {"params", "clip.max_norm", "betas", "adam.eps", "adam.eps_root",
                          "lr", "foreach", "differentiable"}  # (lr, betas: torch's names)
    assert group["clip.max_norm"] == 1.0 and group["betas"] == (0.9, 0.999)
    assert group["lr"] == 1e-3 and group["adam.eps_root"] == 0.0
    assert opt.defaults == {k: v for k, v in group.items() if k != "params"}


def test_group_keys_of_an_alias_are_torchs():
    opt = FunctionalOptimizer(_model().parameters(), fo.adamw(lr=0.1))
    assert {k for k in opt.param_groups[0] if k != "params"} == {
        "lr", "betas", "eps", "weight_decay", "foreach", "differentiable"}


def test_overriding_defaults_by_kwargs_and_groups():
    """kwargs override the transform's defaults; group dicts override those; all are read."""
    m1, m2 = _model(), _model()
    ours = FunctionalOptimizer(
        [{"params": m1[0].parameters(), "lr": 0.03, "betas": (0.8, 0.9)},
         {"params": m1[2].parameters()}],
        fo.chain(adam=fo.scale_by_adam(), wd=fo.add_decayed_weights(0.5),
                 lr=fo.scale_by_learning_rate(1.0)),
        lr=0.01, **{"wd.weight_decay": 0.1, "adam.eps": 1e-6})
    assert ours.param_groups[0]["wd.weight_decay"] == 0.1
    assert ours.param_groups[1]["betas"] == (0.9, 0.999)
    theirs = torch.optim.AdamW(
        [{"params": m2[0].parameters(), "lr": 0.03, "betas": (0.8, 0.9)},
         {"params": m2[2].parameters()}], lr=0.01, eps=1e-6, weight_decay=0.1)
    # chain(adam, add_decayed_weights(wd), lr): p <- p(1 - lr wd) - lr adam, torch's AdamW
    _train(m1, ours, STEPS)
    _train(m2, theirs, STEPS)
    _same_params(m1, m2)


def test_unknown_hyperparameter_is_a_clear_error():
    with pytest.raises(fo.HParamError, match=r"unknown hyperparameter\(s\) \['adam.bets'\].*"
                                             r"adam.eps"):
        FunctionalOptimizer(_model().parameters(), _named_chain(), **{"adam.bets": (0.9, 0.9)})
    with pytest.raises(TypeError, match="Transform or a factory"):
        FunctionalOptimizer(_model().parameters(), lambda: "not a transform")


def test_generic_alias_matches_torch_class():
    m1, m2 = _model(), _model()
    ours = FunctionalOptimizer(m1.parameters(), fo.adamw(lr=0.02, weight_decay=0.1, amsgrad=True))
    theirs = torch.optim.AdamW(m2.parameters(), lr=0.02, weight_decay=0.1, amsgrad=True)
    _train(m1, ours, STEPS)
    _train(m2, theirs, STEPS)
    _same_params(m1, m2)
    state = ours.state[next(m1.parameters())]
    assert set(state) == {"adam"} and set(state["adam"]) == {"step", "mu", "nu", "nu_max"}


def test_factory_optimizer_pickles_and_continues():
    m1, m2 = _model(), _model()
    factory = functools.partial(fo.adamw, lr=0.02, weight_decay=0.1)
    ours = FunctionalOptimizer(m1.parameters(), factory)
    theirs = torch.optim.AdamW(m2.parameters(), lr=0.02, weight_decay=0.1)
    _train(m1, ours, 4)
    _train(m2, theirs, 4)
    c1, co = pickle.loads(pickle.dumps((m1, ours)))
    _train(c1, co, 4, start=4)
    _train(m2, theirs, 4, start=4)
    _same_params(c1, m2)


def test_transform_instance_deepcopies_but_does_not_pickle():
    m1, m2 = _model(), _model()
    ours = FunctionalOptimizer(m1.parameters(), _named_chain(lr=0.02))
    ref = FunctionalOptimizer(m2.parameters(), _named_chain(lr=0.02))
    _train(m1, ours, 3)
    _train(m2, ref, 3)
    c1, co = copy.deepcopy((m1, ours))
    _train(c1, co, 3, start=3)
    _train(m2, ref, 3, start=3)
    _same_params(c1, m2, rtol=0)
    with pytest.raises(pickle.PicklingError, match="factory"):
        pickle.dumps(ours)


def _scheduled_chain():
    return fo.chain(clip=fo.clip_by_global_norm(0.5), adam=fo.scale_by_adam(),
                    lr=fo.scale_by_learning_rate(
                        fo.schedules.warmup_cosine_decay(0.0, 0.05, 3, 15)))


def test_schedule_driven_chain_matches_the_functional_loop():
    """Group-level (shared) state, here a schedule's step count, advances once per step."""
    m1, m2 = _model(), _model()
    opt = FunctionalOptimizer(m1.named_parameters(), _scheduled_chain())
    assert "lr.lr.peak_value" in opt.param_groups[0]
    tx = _scheduled_chain()
    params = {k: v.detach() for k, v in m2.named_parameters()}
    state = tx.init(params)
    for i in range(STEPS):
        opt.zero_grad()
        _loss(m1, i).backward()
        opt.step()
        grads = torch.func.grad(
            lambda p, i=i: _loss(lambda x: torch.func.functional_call(m2, p, (x,)), i))(params)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    for name, p in m1.named_parameters():
        _close(p, params[name], name)
        assert opt.state[p]["lr"]["step"].item() == STEPS


def test_shared_state_survives_params_without_grad():
    """Group-level state (the schedule's count) advances once per step whichever parameters
    have a grad: here the first parameter has none for steps 2-5, then has one again."""
    m = _model()
    opt = FunctionalOptimizer(m.parameters(), _scheduled_chain())
    first = m[0].weight

    def before(i):
        if 2 <= i < 6:
            first.grad = None

    _train(m, opt, 8, before_step=before)
    assert {opt.state[p]["lr"]["step"].item() for p in m.parameters()} == {8}
    assert opt.state[first]["adam"]["step"].item() == 4  # its own state advanced 4 times only


# -- state_dict in torch's format -------------------------------------------------------------

def _through_disk(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


STATE_CASES = [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.02, amsgrad=True)),
    ("Adam", dict(lr=0.02, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1)),
    ("AdamW", dict(lr=0.02, amsgrad=True, maximize=True)),
]


@pytest.mark.parametrize("name, kwargs", STATE_CASES)
@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_checkpoints_cross_load(name, kwargs, direction):
    ours_cls, torch_cls = PAIRS[name]
    src_cls, dst_cls = (torch_cls, ours_cls) if direction == "torch_to_ours" else \
        (ours_cls, torch_cls)
    m_src, m_ref = _model(), _model()
    src = src_cls(m_src.parameters(), **kwargs)
    ref = torch_cls(m_ref.parameters(), **kwargs)  # torch all the way: the trajectory to follow
    _train(m_src, src, 5)
    _train(m_ref, ref, 5)
    ckpt = _through_disk({"model": m_src.state_dict(), "opt": src.state_dict()})
    m_dst = _model(seed=1)
    m_dst.load_state_dict(ckpt["model"])
    dst = dst_cls(m_dst.parameters(), **kwargs)
    dst.load_state_dict(ckpt["opt"])
    _same_state_dict(dst, ref)
    _train(m_dst, dst, 6, start=5)
    _train(m_ref, ref, 6, start=5)
    _same_params(m_dst, m_ref)
    _same_state_dict(dst, ref)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_checkpoint_with_partial_state_cross_loads(name):
    """A checkpoint where some params never had a grad (no state entry for them)."""
    kwargs = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.02)
    m1, ours, m2, theirs = _pair(name, kwargs)

    def drop(model):
        return lambda i: setattr(model[0].bias, "grad", None)

    _train(m2, theirs, 4, before_step=drop(m2))
    ours.load_state_dict(_through_disk(theirs.state_dict()))
    m1.load_state_dict(m2.state_dict())
    _same_state_dict(ours, theirs)
    _train(m1, ours, 4, start=4)
    _train(m2, theirs, 4, start=4)
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.05, momentum=0.9)),
                                          ("Adam", dict(lr=0.02)), ("AdamW", dict(lr=0.02))])
def test_old_checkpoint_without_newer_keys_loads_like_torch(name, kwargs):
    """Checkpoints from older torch versions lack newer group keys (``fused``,
    ``decoupled_weight_decay``, ...) and kept ``step`` as a Python number: torch fills them in."""
    m1, ours, m2, theirs = _pair(name, kwargs)
    ref_model, ref = _model(), PAIRS[name][1](_model().parameters(), **kwargs)
    _train(ref_model, ref, 3)
    old = ref.state_dict()
    newer = {"amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused",
             "decoupled_weight_decay", "nesterov"}
    old["param_groups"] = [{k: v for k, v in g.items() if k not in newer}
                           for g in old["param_groups"]]
    old["state"] = {k: {n: (v.item() if n == "step" else v) for n, v in s.items()}
                    for k, s in old["state"].items()}
    for m, opt in ((m1, ours), (m2, theirs)):
        m.load_state_dict(ref_model.state_dict())
        opt.load_state_dict(copy.deepcopy(old))
    def no_params(groups):  # (torch's SGD fills in fused=False, its signature says None)
        return [{k: bool(v) if k == "fused" else v for k, v in g.items() if k != "params"}
                for g in groups]

    assert no_params(ours.param_groups) == no_params(theirs.param_groups)
    for g in theirs.param_groups:
        g["fused"] = g["fused"] or None
    _train(m1, ours, 3, start=3)
    _train(m2, theirs, 3, start=3)
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


def test_generic_state_dict_round_trips_through_weights_only_load():
    m1, m2 = _model(), _model()
    opt = FunctionalOptimizer(m1.named_parameters(), _scheduled_chain())
    ref = FunctionalOptimizer(m2.named_parameters(), _scheduled_chain())
    _train(m1, opt, 4)
    _train(m2, ref, 4)
    sd = _through_disk(opt.state_dict())
    assert sd["param_groups"][0]["param_names"] == [n for n, _ in m1.named_parameters()]
    m3 = _model(seed=5)
    m3.load_state_dict(m1.state_dict())
    new = FunctionalOptimizer(m3.named_parameters(), _scheduled_chain())
    new.load_state_dict(sd)
    for p, q in zip(m3.parameters(), m1.parameters(), strict=True):
        _same_value(new.state[p], opt.state[q], "loaded state", rtol=0)
    _train(m3, new, 4, start=4)
    _train(m2, ref, 4, start=4)
    _same_params(m3, m2)


def _wrong_shape(sd):
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"][:, :2].clone()
    return sd


def _wrong_groups(sd):
    sd["param_groups"] = sd["param_groups"] + [dict(sd["param_groups"][0], params=[])]
    return sd


def _wrong_group_size(sd):
    sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
    return sd


def _wrong_last_shape(sd):  # only the last parameter's state is wrong: nothing may be loaded
    last = max(sd["state"])
    sd["state"][last]["exp_avg_sq"] = sd["state"][last]["exp_avg_sq"].reshape(1, -1)
    return sd


@pytest.mark.parametrize("corrupt, error", [
    (_wrong_shape, "shape"),
    (_wrong_last_shape, "shape"),
    (_wrong_groups, "number of parameter groups"),
    (_wrong_group_size, "doesn't match the size"),
])
def test_bad_state_dict_raises_and_leaves_the_optimizer_unchanged(corrupt, error):
    m1, ours, m2, theirs = _pair("AdamW", dict(lr=0.02))
    _train(m1, ours, 3)
    _train(m2, theirs, 5)
    ours.param_groups[0]["lr"] = 0.007
    snap = _snapshot(ours)
    with pytest.raises(ValueError, match=error):
        ours.load_state_dict(corrupt(theirs.state_dict()))
    _assert_unchanged(ours, snap)
    assert ours.param_groups[0]["lr"] == 0.007


def test_bad_generic_state_dict_raises_and_leaves_the_optimizer_unchanged():
    m1, m2 = _model(), _model()
    opt = FunctionalOptimizer(m1.parameters(), _named_chain())
    other = FunctionalOptimizer(m2.parameters(), _named_chain())
    _train(m1, opt, 2)
    _train(m2, other, 2)
    sd = other.state_dict()
    sd["state"][1]["adam"]["mu"] = torch.zeros(7, dtype=torch.float64)
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match="adam.mu"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, snap)


# -- GradScaler --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PAIRS))
def test_grad_scaler_skips_non_finite_steps_like_torch(name):
    kwargs = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.02)
    m1, ours, m2, theirs = _pair(name, kwargs)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
               for _ in range(2)]
    for i in range(10):
        for m, opt, scaler in ((m1, ours, scalers[0]), (m2, theirs, scalers[1])):
            opt.zero_grad()
            scaler.scale(_loss(m, i)).backward()
            if i in (2, 6):
                m[0].weight.grad[0, 0] = float("inf") if i == 2 else float("nan")
                before = (copy.deepcopy(list(m.parameters())), _snapshot(opt))
            scaler.step(opt)
            scaler.update()
            if i in (2, 6):  # skipped: params and state unchanged
                for p, q in zip(m.parameters(), before[0], strict=True):
                    assert torch.equal(p, q)
                _assert_unchanged(opt, before[1])
        assert scalers[0].get_scale() == scalers[1].get_scale()
    _same_params(m1, m2)
    _same_state_dict(ours, theirs)


# -- torch.compile ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, lr_kind", [("AdamW", "tensor"), ("SGD", "float")])
def test_compiled_step_fullgraph_matches_torch(name, lr_kind):
    """``torch.compile(opt.step, fullgraph=True)`` from the very first step (state creation
    included), equal to torch's eager trajectory; a new tensor-lr value does not recompile.
    torch.optim's own ``step`` cannot compile with ``fullgraph=True``: its ``_use_grad`` wrapper
    calls ``torch._dynamo.graph_break()`` on purpose (pytorch#104053)."""
    import torch._dynamo.testing

    def lr_value():
        return _f64(0.02) if lr_kind == "tensor" else 0.02

    m1, m2 = _model(), _model()
    lr1, lr2 = lr_value(), lr_value()
    if name == "generic":
        ours = FunctionalOptimizer(m1.parameters(), fo.adamw(lr=lr1, weight_decay=0.1))
        theirs = torch.optim.AdamW(m2.parameters(), lr=lr2, weight_decay=0.1)
    else:
        kwargs = dict(momentum=0.9, nesterov=True) if name == "SGD" else dict(weight_decay=0.1)
        ours = PAIRS[name][0](m1.parameters(), lr=lr1, **kwargs)
        theirs = PAIRS[name][1](m2.parameters(), lr=lr2, **kwargs)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled_step = torch.compile(ours.step, backend=counter, fullgraph=True)
    frames = None
    try:
        for i in range(6):
            if lr_kind == "tensor" and i >= 1:
                lr1.fill_(0.02 / (i + 1))
                lr2.fill_(0.02 / (i + 1))
            for m, opt, step in ((m1, ours, compiled_step), (m2, theirs, theirs.step)):
                opt.zero_grad()
                _loss(m, i).backward()
                step()
            if i == 3:  # the first steps may compile again (state created, then advanced)
                frames = counter.frame_count
        _same_params(m1, m2)
        if name != "generic":
            _same_state_dict(ours, theirs)
        assert counter.frame_count == frames, "a new lr value (or step) recompiled the step"
    finally:
        torch._dynamo.reset()


def test_compiled_train_step_has_no_more_graph_breaks_than_torch():
    """A whole step (forward, backward, ``opt.step()``) under ``torch.compile``: the only
    graph breaks of ours are those of ``torch.optim.AdamW`` (``loss.backward()``)."""
    results = {}
    for tag in ("ours", "torch"):
        m = _model()
        lr = _f64(0.02)
        opt = (AdamW if tag == "ours" else torch.optim.AdamW)(m.parameters(), lr=lr)

        def train_step(m=m, opt=opt):
            loss = _loss(m, 0)
            loss.backward()
            opt.step()
            return loss

        torch._dynamo.reset()
        try:
            explanation = torch._dynamo.explain(train_step)()
        finally:
            torch._dynamo.reset()
        results[tag] = explanation.graph_break_count
        if tag == "ours":
            reasons = [r.reason for r in explanation.break_reasons]
            assert all("backward" in r for r in reasons), reasons
    assert results["ours"] <= results["torch"], results


# -- the functional and stateful paths agree ---------------------------------------------------

@pytest.mark.parametrize("foreach", [None, False])
def test_stateful_equals_functional(foreach):
    m1, m2 = _model(), _model()
    tx = fo.adamw(lr=0.02, weight_decay=0.1, amsgrad=True)
    opt = FunctionalOptimizer(m1.parameters(), tx, foreach=foreach)
    params = {k: v.detach().clone() for k, v in m2.named_parameters()}
    state = tx.init(params)

    def functional_loss(p, i):
        return _loss(lambda x: torch.func.functional_call(m2, p, (x,)), i)

    for i in range(30):
        opt.zero_grad()
        _loss(m1, i).backward()
        opt.step()
        grads = torch.func.grad(functional_loss)(params, i)
        updates, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    for name, p in m1.named_parameters():
        _close(p, params[name], name)
    flat_state = {k: v for k, v in zip(params, _leaves_by_param(state, params), strict=True)}
    for name, p in m1.named_parameters():
        assert opt.state[p]["adam"]["step"].item() == 30
        _close(opt.state[p]["adam"]["mu"], flat_state[name]["mu"], f"{name} mu")
        _close(opt.state[p]["adam"]["nu_max"], flat_state[name]["nu_max"], f"{name} nu_max")


def _leaves_by_param(state, params):
    """The scale_by_adam state of each parameter, from a functional adamw state."""
    def find(node):
        if isinstance(node, fo.ScaleByAdamState):
            return node
        if isinstance(node, dict):
            for v in node.values():
                found = find(v)
                if found is not None:
                    return found
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            for v in node:
                found = find(v)
                if found is not None:
                    return found
        return None

    adam = find(state)
    return [{"mu": adam.mu[k], "nu": adam.nu[k], "nu_max": adam.nu_max[k]} for k in params]


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax",
                                  "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD", "Adafactor",
                                  "Muon", "SparseAdam"])
def test_state_columns_read_what_each_leaf_reads(name):
    """The adapter reads and writes a step's state one path at a time (``_load_column``,
    ``_store_column``); each class's column must agree with its per-leaf methods."""
    params = [torch.zeros(3, 4, requires_grad=True), torch.zeros(5, requires_grad=True)]
    opt = getattr(foo, name)(params[:1] if name == "Muon" else params)
    group = opt.param_groups[0]
    stores = [{n: torch.full((), float(i)) for i, n in enumerate(opt._STATE_NAMES.values())}
              for _ in group["params"]]
    for path in opt._STATE_NAMES:
        column = opt._load_column(stores, path, group["params"], group)
        leaves = [opt._load_leaf(s, path, p, group) for s, p in zip(stores, group["params"])]
        assert len(column) == len(leaves)
        for a, b in zip(column, leaves):
            assert a is b or torch.equal(a, b)
        values = [torch.full((0,) if p.ndim == 2 and name == "Adafactor" else (), 7.0)
                  for p in group["params"]]
        by_column, by_leaf = copy.deepcopy(stores), copy.deepcopy(stores)
        opt._store_column(by_column, path, values, group)
        for store, value in zip(by_leaf, values):
            opt._store_leaf(store, path, value, group)
        assert _plain_stores(by_column) == _plain_stores(by_leaf)


def _plain_stores(stores):
    def plain(v):
        return (float(v) if v.numel() else None) if isinstance(v, torch.Tensor) else v

    return [{k: plain(v) for k, v in s.items()} for s in stores]


def _paired_rms():
    """A transform whose state holds a pair per parameter (its leaves interleave in optree's
    order) next to a shared count: ``a += g``, ``b += g²``, ``u = -0.1·a/(√b + 1)``."""

    def init(params):
        return {"pair": {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in
                         params.items()}, "count": torch.zeros((), dtype=torch.int64)}

    def update(grads, state, params=None, hparams=None):
        pairs = {k: (a + grads[k], b + grads[k] ** 2) for k, (a, b) in state["pair"].items()}
        updates = {k: -0.1 * a / (b.sqrt() + 1) for k, (a, b) in pairs.items()}
        return updates, {"pair": pairs, "count": state["count"] + 1}

    return fo.Transform(init, update, {})


def test_state_of_any_layout_round_trips_with_names_out_of_order():
    """Twelve parameters (their sorted names "0", "1", "10", "11", "2", ... are not their
    order), a state with a pair per parameter and a shared leaf, and steps where some
    parameters have no gradient: the adapter's steps equal the functional loop's."""
    torch.manual_seed(0)
    shapes = [(3,), (2, 2), (4,)] * 4
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    reference = {str(i): p.detach().clone() for i, p in enumerate(params)}
    tx = _paired_rms()
    opt = FunctionalOptimizer(params, tx)
    states = {k: tx.init({k: v}) for k, v in reference.items()}  # per parameter: skips apart
    for step in range(4):
        skipped = {1, 10} if step in (1, 2) else set()
        for i, p in enumerate(params):
            p.grad = None if i in skipped else torch.full_like(p, 0.5 + i + step)
        opt.step()
        for i, p in enumerate(params):
            k = str(i)
            if i in skipped:
                continue
            updates, states[k] = tx.update({k: p.grad}, states[k])
            reference[k] = reference[k] + updates[k]
    for i, p in enumerate(params):
        k = str(i)
        torch.testing.assert_close(p.detach(), reference[k], msg=k)
        a, b = opt.state[p]["pair"]["0"], opt.state[p]["pair"]["1"]
        torch.testing.assert_close(a, states[k]["pair"][k][0], msg=k)
        torch.testing.assert_close(b, states[k]["pair"][k][1], msg=k)
    assert all(opt.state[p]["count"].item() == 4 for p in params)  # shared: every step

"""Every ``torch.optim.lr_scheduler`` (and ``swa_utils.SWALR``) drives our optimizers exactly as
it drives torch.optim's: the same lr (and momentum/betas) sequence, the same warnings, and the
same parameter trajectory (float64, ``1e-10`` relative) over 30-40 steps, with two param groups:
SGD, Adam and AdamW under every scheduler; the classic classes and ``FunctionalOptimizer`` chains
under the momentum-cycling ones, the combined ones and ``ReduceLROnPlateau``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S
from torch.optim.swa_utils import SWALR

import functional_optim as fo
import functional_optim.optim as foo
from functional_optim.optim import SGD, Adam, AdamW, FunctionalOptimizer

RTOL = 1e-10
STEPS = 36
CLASSES = {"SGD": (SGD, torch.optim.SGD), "Adam": (Adam, torch.optim.Adam),
           "AdamW": (AdamW, torch.optim.AdamW)}
KWARGS = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
          "Adam": dict(lr=0.02, weight_decay=0.01), "AdamW": dict(lr=0.02)}

_GEN = torch.Generator().manual_seed(99)
X = torch.randn(32, 4, generator=_GEN, dtype=torch.float64)
Y = torch.randn(32, 3, generator=_GEN, dtype=torch.float64)
# a plateauing metric for ReduceLROnPlateau (the same for both sides)
METRIC = [1.0 / (1 + i) if i < 6 else 0.2 + 0.01 * (i % 3) for i in range(STEPS)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    j = (i % 4) * 8
    return nn.functional.mse_loss(model(X[j:j + 8]), Y[j:j + 8])


def _groups(model: nn.Module, lr: float) -> list[dict]:
    return [{"params": model[0].parameters(), "lr": lr / 2}, {"params": model[2].parameters()}]


def _hparams(opt: torch.optim.Optimizer) -> list[tuple]:
    return [tuple(float(g[k]) if not isinstance(g[k], tuple) else tuple(map(float, g[k]))
                  for k in ("lr", "momentum", "betas") if k in g) for g in opt.param_groups]


def _run(cls, kwargs: dict, make, steps: int = STEPS, metric: bool = False,
         epoch_fn=None):
    model = _model()
    opt = cls(_groups(model, kwargs["lr"]), **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = make(opt)
        trace = [_hparams(opt)]
        for i in range(steps):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
            if metric:
                sched.step(METRIC[i])
            elif epoch_fn is not None:
                sched.step(epoch_fn(i))
            else:
                sched.step()
            trace.append(_hparams(opt))
    messages = sorted({str(w.message) for w in caught})
    last = sched.get_last_lr() if hasattr(sched, "get_last_lr") else None
    return model, opt, trace, messages, last


def _compare(name: str, make, kwargs: dict | None = None, **run_kwargs):
    kwargs = dict(KWARGS[name], **(kwargs or {}))
    ours_cls, torch_cls = CLASSES[name]
    m1, o1, t1, w1, last1 = _run(ours_cls, kwargs, make, **run_kwargs)
    m2, o2, t2, w2, last2 = _run(torch_cls, kwargs, make, **run_kwargs)
    assert t1 == t2, "the schedulers set different hyperparameters"
    assert len({tuple(map(tuple, step)) for step in t2}) > 1, "the schedule never moved"
    assert w1 == w2, "different warnings"
    assert last1 == last2
    for (n, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        err = (a - b).abs().max().item()
        assert err <= RTOL * b.abs().max().item(), f"{n}: max|a-b| = {err:.3e}"
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s2:
        assert s1[k].keys() == s2[k].keys()
        for key in s2[k]:
            a, b = s1[k][key], s2[k][key]
            assert a.dtype == b.dtype
            assert (a - b).abs().max().item() <= RTOL * b.abs().max().item(), (k, key)


SCHEDULERS = {
    "LambdaLR": lambda o: S.LambdaLR(o, lr_lambda=lambda e: 0.95 ** e),
    "LambdaLR-per-group": lambda o: S.LambdaLR(o, lr_lambda=[lambda e: 0.9 ** e,
                                                             lambda e: 1 / (1 + e)]),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lr_lambda=lambda e: 0.97),
    "StepLR": lambda o: S.StepLR(o, step_size=5, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[4, 11, 20], gamma=0.3),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=6),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=8),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.93),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=20, power=2.0),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(
        o, T_0=5, T_mult=2, eta_min=1e-4),
    "ChainedScheduler": lambda o: S.ChainedScheduler(
        [S.ConstantLR(o, factor=0.5, total_iters=5), S.ExponentialLR(o, gamma=0.95)]),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=5),
            S.CosineAnnealingLR(o, T_max=25)], milestones=[5]),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=[0.05, 0.1], total_steps=STEPS),
    "OneCycleLR-three-phase-linear": lambda o: S.OneCycleLR(
        o, max_lr=0.08, total_steps=STEPS, three_phase=True, anneal_strategy="linear",
        base_momentum=0.8, max_momentum=0.9),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=0.005, max_lr=0.05, step_size_up=4,
                                     mode="triangular2"),
    "CyclicLR-exp_range": lambda o: S.CyclicLR(o, base_lr=[0.005, 0.01], max_lr=0.05,
                                               step_size_up=3, step_size_down=5,
                                               mode="exp_range", gamma=0.97),
    "SWALR-cos": lambda o: SWALR(o, swa_lr=0.01, anneal_epochs=6, anneal_strategy="cos"),
    "SWALR-linear": lambda o: SWALR(o, swa_lr=[0.004, 0.03], anneal_epochs=4,
                                    anneal_strategy="linear"),
}


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_scheduler_drives_ours_as_torchs(name, scheduler):
    make = SCHEDULERS[scheduler]
    kwargs = {}
    if scheduler.startswith("CyclicLR") and name != "SGD":
        # momentum cycling needs "momentum" (SGD) or "betas" (Adam*) in the defaults
        kwargs = dict(betas=(0.9, 0.999))
    _compare(name, make, kwargs)


@pytest.mark.parametrize("name", list(CLASSES))
def test_reduce_lr_on_plateau(name):
    _compare(name, lambda o: S.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=1,
                                                 threshold=1e-3, cooldown=1, min_lr=1e-4),
             metric=True)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_cyclic_momentum_is_read_by_the_step(name):
    """CyclicLR/OneCycleLR cycle ``momentum`` (SGD) or ``betas[0]`` (Adam): the trace above
    compares the values set; here a cycle without momentum cycling must give another
    trajectory, so the cycled values are really used."""
    def make(cycle):
        return lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=STEPS,
                                      cycle_momentum=cycle)

    _compare(name, make(True))
    m1 = _run(CLASSES[name][0], KWARGS[name], make(True))[0]
    m2 = _run(CLASSES[name][0], KWARGS[name], make(False))[0]
    assert not torch.allclose(m1[0].weight, m2[0].weight, rtol=1e-6, atol=0)


def test_warm_restarts_with_fractional_epochs():
    _compare("AdamW", lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
             epoch_fn=lambda i: (i + 1) / 4)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_schedulers_fill_a_tensor_lr_in_place(name):
    """With a tensor lr, torch's schedulers ``fill_`` it: ours read the same tensor."""
    def make(o):
        return S.SequentialLR(o, [S.LinearLR(o, start_factor=0.25, total_iters=4),
                                  S.StepLR(o, step_size=6, gamma=0.5)], milestones=[4])

    def tensor_lr_run(cls):
        model = _model()
        lr = torch.tensor(KWARGS[name]["lr"], dtype=torch.float64)
        kwargs = dict(KWARGS[name], lr=lr)
        opt = cls([{"params": model[0].parameters(), "lr": lr.clone()},
                   {"params": model[2].parameters()}], **kwargs)
        sched = make(opt)
        lrs = []
        for i in range(20):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
            sched.step()
            lrs.append([float(g["lr"]) for g in opt.param_groups])
        assert opt.param_groups[1]["lr"] is lr  # filled in place
        return model, lrs

    (m1, l1), (m2, l2) = tensor_lr_run(CLASSES[name][0]), tensor_lr_run(CLASSES[name][1])
    assert l1 == l2
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert (a - b).abs().max().item() <= RTOL * b.abs().max().item()


def test_scheduler_and_optimizer_state_dicts_resume_together():
    """Save optimizer + scheduler mid-run (ours), resume into torch's and vice versa."""
    def make(o):
        return S.OneCycleLR(o, max_lr=0.05, total_steps=STEPS)

    def run(first_cls, second_cls):
        model = _model()
        opt = first_cls(model.parameters(), **KWARGS["SGD"])
        sched = make(opt)
        for i in range(STEPS // 2):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
            sched.step()
        ckpt = {"opt": opt.state_dict(), "sched": sched.state_dict()}
        opt2 = second_cls(model.parameters(), **KWARGS["SGD"])
        sched2 = make(opt2)
        opt2.load_state_dict(ckpt["opt"])
        sched2.load_state_dict(ckpt["sched"])
        for i in range(STEPS // 2, STEPS - 1):
            opt2.zero_grad()
            _loss(model, i).backward()
            opt2.step()
            sched2.step()
        return model, _hparams(opt2)

    ref_model, ref_h = run(torch.optim.SGD, torch.optim.SGD)
    for first, second in ((SGD, torch.optim.SGD), (torch.optim.SGD, SGD), (SGD, SGD)):
        model, h = run(first, second)
        assert h == ref_h
        for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
            assert (a - b).abs().max().item() <= RTOL * b.abs().max().item()


@pytest.mark.parametrize("name", list(CLASSES))
def test_scheduler_step_before_optimizer_step_warns_like_torch(name):
    caught = {}
    for cls in CLASSES[name]:
        model = _model()
        opt = cls(model.parameters(), **KWARGS[name])
        sched = S.StepLR(opt, step_size=2)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            sched.step()  # before any optimizer.step(): torch warns
            opt.zero_grad()
            _loss(model, 0).backward()
            opt.step()
            sched.step()
        caught[cls] = sorted(str(w.message) for w in record)
    ours, theirs = caught.values()
    assert ours == theirs and any("before `optimizer.step()`" in m for m in theirs)


# -- the classic classes and the generic adapter -------------------------------------------------

CLASSIC = {name: (getattr(foo, name), getattr(torch.optim, name)) for name in (
    "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD", "Adafactor")}
CLASSIC_KWARGS = {"Adagrad": dict(lr=0.05), "Adadelta": dict(lr=0.5), "Adamax": dict(lr=0.01),
                  "NAdam": dict(lr=0.01), "RAdam": dict(lr=0.01),
                  "RMSprop": dict(lr=0.01, momentum=0.5), "Rprop": dict(lr=0.01),
                  "ASGD": dict(lr=0.02), "Adafactor": dict(lr=0.02)}
MORE_SCHEDULERS = ("OneCycleLR", "CyclicLR", "ChainedScheduler", "SequentialLR")


@pytest.mark.parametrize("name", list(CLASSIC))
@pytest.mark.parametrize("scheduler", [*MORE_SCHEDULERS, "ReduceLROnPlateau"])
def test_scheduler_drives_the_classic_classes_as_torchs(name, scheduler):
    """``OneCycleLR``/``CyclicLR`` cycle ``betas[0]`` (Adamax, NAdam, RAdam) or ``momentum``
    (RMSprop), and raise torch's error for the others."""
    ours_cls, torch_cls = CLASSIC[name]
    if scheduler == "ReduceLROnPlateau":
        make, run_kwargs = (lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1)), {
            "metric": True}
    else:
        make, run_kwargs = SCHEDULERS[scheduler], {}
    errors = []
    for cls in (torch_cls, ours_cls):
        try:
            kwargs = CLASSIC_KWARGS[name]
            make(cls(_groups(_model(), kwargs["lr"]), **kwargs))
        except ValueError as e:
            errors.append(str(e))
    if errors:
        assert len(errors) == 2 and errors[0] == errors[1] and "momentum or beta1" in errors[0]
        return
    CLASSES[name], KWARGS[name] = CLASSIC[name], CLASSIC_KWARGS[name]
    try:
        _compare(name, make, **run_kwargs)
    finally:
        del CLASSES[name], KWARGS[name]


def _chain(kind: str, lr: float):
    """A chain that holds one ``betas`` (Adam's) or one ``momentum`` (SGD's) leaf, and torch's
    class with the same numbers."""
    if kind == "adam":
        tx = fo.chain(clip=fo.clip_by_global_norm(10.0), adam=fo.scale_by_adam(),
                      lr=fo.scale_by_learning_rate(lr))
        return (lambda params, **kw: FunctionalOptimizer(params, tx, **kw)), torch.optim.Adam
    tx = fo.chain(fo.trace(0.9), fo.scale_by_learning_rate(lr))
    return (lambda params, **kw: FunctionalOptimizer(params, tx, **kw)), torch.optim.SGD


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("scheduler", [*MORE_SCHEDULERS, "ReduceLROnPlateau"])
def test_scheduler_drives_a_chain_as_torchs_class(kind, scheduler):
    """A ``FunctionalOptimizer`` chain exposes its one ``betas``/``momentum`` leaf under torch's
    group key: ``cycle_momentum`` schedulers drive it as they drive torch's class, the same
    values set at every step and the same trajectory."""
    lr = 0.02
    ours_cls, torch_cls = _chain(kind, lr)
    if scheduler == "ReduceLROnPlateau":
        make, metric = (lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1)), True
    else:
        make, metric = SCHEDULERS[scheduler], False
    kwargs = dict(lr=lr) if kind == "adam" else dict(lr=lr, momentum=0.9)
    m1, o1, t1, w1, _ = _run(ours_cls, dict(lr=lr), make, metric=metric)
    m2, _, t2, w2, _ = _run(torch_cls, kwargs, make, metric=metric)
    assert t1 == t2 and w1 == w2
    key = "betas" if kind == "adam" else "momentum"
    assert key in o1.param_groups[0]
    for (n, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        err = (a - b).abs().max().item()
        assert err <= RTOL * b.abs().max().item(), f"{n}: max|a-b| = {err:.3e}"


def test_scheduled_keys_only_for_a_single_leaf():
    """Two ``betas`` leaves (a partition of two Adams) keep their dotted keys: no scheduler can
    take one for the other. (A ``parameter_groups`` transform makes one torch param group per
    group instead, each with torch's keys: tests/test_groups.py.)"""
    tx = fo.partition({"a": fo.adam(lr=0.01), "b": fo.adam(lr=0.02)},
                      [(["^0\\."], "a"), (["^2\\."], "b")])
    opt = FunctionalOptimizer(_model().named_parameters(), tx)
    keys = set(opt.param_groups[0])
    assert {"a.betas", "b.betas", "a.lr", "b.lr"} <= keys
    assert not {"betas", "lr", "momentum"} & keys

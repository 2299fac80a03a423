"""The schedule zoo against its references: torch.optim.lr_scheduler's value sequences (run
here), HuggingFace's and optax's formulas written out plainly, over hundreds of steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo.testing

import functional_optim as fo
from functional_optim import schedules as sch

N = 300


def torch_sequence(make_scheduler, steps=N, lr=0.1, momentum=0.0, metric=None):
    """The learning rate ``optimizer.step`` number ``t`` uses, for ``t < steps``."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=lr, momentum=momentum)
    sched = make_scheduler(opt)
    values = []
    for _ in range(steps):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def assert_sequence(schedule, expected, rtol=1e-10, atol=1e-14, where=""):
    got = schedule(torch.arange(len(expected)))
    for t, e in enumerate(expected):
        assert abs(got[t].item() - e) <= rtol * abs(e) + atol, (where, t, got[t].item(), e)
    # a 0-d step gives the same value as the vectorized evaluation
    for t in (0, 1, len(expected) // 3, len(expected) - 1):
        assert schedule(torch.tensor(t)).item() == pytest.approx(got[t].item(), rel=1e-14,
                                                                 abs=1e-300)


LRS = torch.optim.lr_scheduler

def _mult(epoch):
    """MultiplicativeLR's ``lr_lambda`` (an int epoch -> a factor)."""
    return 0.97 if epoch % 3 else 1.05


TORCH_CASES = {
    "step_lr": (lambda: sch.step_lr(0.1, step_size=30, gamma=0.5),
                lambda o: LRS.StepLR(o, step_size=30, gamma=0.5)),
    "multistep_lr": (lambda: sch.multistep_lr(0.1, [40, 90, 90, 200], gamma=0.3),
                     lambda o: LRS.MultiStepLR(o, [40, 90, 90, 200], gamma=0.3)),
    "constant_lr": (lambda: sch.constant_lr(0.1, factor=0.25, total_iters=17),
                    lambda o: LRS.ConstantLR(o, factor=0.25, total_iters=17)),
    "linear_lr": (lambda: sch.linear_lr(0.1, start_factor=0.1, end_factor=0.9, total_iters=120),
                  lambda o: LRS.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=120)),
    "exponential_lr": (lambda: sch.exponential_lr(0.1, gamma=0.98),
                       lambda o: LRS.ExponentialLR(o, gamma=0.98)),
    "polynomial_lr": (lambda: sch.polynomial_lr(0.1, total_iters=250, power=2.0),
                      lambda o: LRS.PolynomialLR(o, total_iters=250, power=2.0)),
    "cosine_annealing_lr": (lambda: sch.cosine_annealing_lr(0.1, T_max=110, eta_min=1e-3),
                            lambda o: LRS.CosineAnnealingLR(o, T_max=110, eta_min=1e-3)),
    "cosine_warm_restarts": (lambda: sch.cosine_annealing_warm_restarts(0.1, T_0=37,
                                                                         eta_min=1e-3),
                             lambda o: LRS.CosineAnnealingWarmRestarts(o, T_0=37,
                                                                       eta_min=1e-3)),
    "cosine_warm_restarts_mult": (lambda: sch.cosine_annealing_warm_restarts(0.1, T_0=5,
                                                                              T_mult=2),
                                  lambda o: LRS.CosineAnnealingWarmRestarts(o, T_0=5,
                                                                            T_mult=2)),
    "cosine_warm_restarts_mult3": (lambda: sch.cosine_annealing_warm_restarts(
        0.1, T_0=3, T_mult=3, eta_min=0.01),
        lambda o: LRS.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=3, eta_min=0.01)),
    "cyclic_triangular": (lambda: sch.cyclic_lr(0.01, 0.1, step_size_up=20),
                          lambda o: LRS.CyclicLR(o, 0.01, 0.1, step_size_up=20,
                                                 cycle_momentum=False)),
    "cyclic_triangular2": (lambda: sch.cyclic_lr(0.01, 0.1, 13, 29, mode="triangular2"),
                           lambda o: LRS.CyclicLR(o, 0.01, 0.1, 13, 29, mode="triangular2",
                                                  cycle_momentum=False)),
    "cyclic_exp_range": (lambda: sch.cyclic_lr(0.01, 0.1, 25, mode="exp_range", gamma=0.995),
                         lambda o: LRS.CyclicLR(o, 0.01, 0.1, 25, mode="exp_range",
                                                gamma=0.995, cycle_momentum=False)),
    "cyclic_scale_fn_iterations": (
        lambda: sch.cyclic_lr(0.01, 0.1, 10, 30, scale_fn=lambda x: 1 / (1 + x / 100),
                              scale_mode="iterations"),
        lambda o: LRS.CyclicLR(o, 0.01, 0.1, 10, 30, scale_fn=lambda x: 1 / (1 + x / 100),
                               scale_mode="iterations", cycle_momentum=False)),
    "one_cycle_cos": (lambda: sch.one_cycle_lr(0.5, total_steps=N),
                      lambda o: LRS.OneCycleLR(o, 0.5, total_steps=N, cycle_momentum=False)),
    "one_cycle_linear_three_phase": (
        lambda: sch.one_cycle_lr(0.5, N, pct_start=0.25, anneal_strategy="linear",
                                 div_factor=10.0, final_div_factor=100.0, three_phase=True),
        lambda o: LRS.OneCycleLR(o, 0.5, total_steps=N, pct_start=0.25,
                                 anneal_strategy="linear", div_factor=10.0,
                                 final_div_factor=100.0, three_phase=True,
                                 cycle_momentum=False)),
    "one_cycle_cos_three_phase": (
        lambda: sch.one_cycle_lr(0.5, N, pct_start=0.33, three_phase=True),
        lambda o: LRS.OneCycleLR(o, 0.5, total_steps=N, pct_start=0.33, three_phase=True,
                                 cycle_momentum=False)),
    "sequential": (lambda: sch.sequential_lr([sch.linear_lr(0.1, 0.01, 1.0, 20),
                                              sch.cosine_annealing_lr(0.1, 150, 1e-4)], [20]),
                   lambda o: LRS.SequentialLR(o, [LRS.LinearLR(o, 0.01, 1.0, 20),
                                                  LRS.CosineAnnealingLR(o, 150, 1e-4)], [20])),
    "multiplicative": (lambda: sch.multiplicative_lr(0.1, _mult, N),
                       lambda o: LRS.MultiplicativeLR(o, _mult)),
    "chained": (lambda: sch.chained_scheduler([sch.constant_lr(1.0, 0.5, 17),
                                               sch.exponential_lr(1.0, 0.99),
                                               sch.step_lr(1.0, 40, 0.7),
                                               sch.linear_lr(1.0, 0.2, 1.0, 60)], lr=0.1),
                lambda o: LRS.ChainedScheduler([LRS.ConstantLR(o, 0.5, 17),
                                                LRS.ExponentialLR(o, 0.99),
                                                LRS.StepLR(o, 40, 0.7),
                                                LRS.LinearLR(o, 0.2, 1.0, 60)])),
    "swalr_cos": (lambda: sch.swalr(0.1, 0.02, 25),
                  lambda o: torch.optim.swa_utils.SWALR(o, 0.02, 25)),
    "swalr_linear": (lambda: sch.swalr(0.1, 0.3, 7, "linear"),
                     lambda o: torch.optim.swa_utils.SWALR(o, 0.3, 7, "linear")),
    "swalr_no_anneal": (lambda: sch.swalr(0.1, 0.02, 0),
                        lambda o: torch.optim.swa_utils.SWALR(o, 0.02, 0)),
    "sequential_three": (lambda: sch.sequential_lr([sch.constant_lr(0.1, 0.5, 10),
                                                    sch.exponential_lr(0.1, 0.97),
                                                    sch.step_lr(0.1, 25, 0.5)], [10, 100]),
                         lambda o: LRS.SequentialLR(o, [LRS.ConstantLR(o, 0.5, 10),
                                                        LRS.ExponentialLR(o, 0.97),
                                                        LRS.StepLR(o, 25, 0.5)], [10, 100])),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_matches_torch_lr_scheduler(case):
    ours, theirs = TORCH_CASES[case]
    expected = torch_sequence(theirs)
    assert_sequence(ours(), expected, where=case)


def test_one_cycle_momentum_matches_torch():
    for three_phase, anneal in ((False, "cos"), (True, "linear")):
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
        s = LRS.OneCycleLR(opt, 0.5, total_steps=N, three_phase=three_phase,
                           anneal_strategy=anneal, base_momentum=0.8, max_momentum=0.9)
        expected = []
        for _ in range(N):
            expected.append(opt.param_groups[0]["momentum"])
            opt.step()
            s.step()
        ours = sch.one_cycle_momentum(N, 0.8, 0.9, three_phase=three_phase,
                                      anneal_strategy=anneal)
        assert_sequence(ours, expected, where=f"momentum {three_phase}")


@pytest.mark.parametrize("mode,kwargs", [("triangular2", {}), ("exp_range", {"gamma": 0.99}),
                                         ("triangular", {"step_size_down": 7})])
@pytest.mark.parametrize("adam", [False, True], ids=["sgd_momentum", "adam_beta1"])
def test_cyclic_momentum_matches_torch(mode, kwargs, adam):
    """CyclicLR's momentum cycle (SGD's ``momentum``, Adam's ``betas[0]``)."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=0.1) if adam else torch.optim.SGD([p], lr=0.1, momentum=0.9)
    s = LRS.CyclicLR(opt, 0.01, 0.1, 15, mode=mode, base_momentum=0.8, max_momentum=0.9,
                     **kwargs)
    expected = []
    for _ in range(N):
        group = opt.param_groups[0]
        expected.append(group["betas"][0] if adam else group["momentum"])
        opt.step()
        s.step()
    assert_sequence(sch.cyclic_momentum(0.8, 0.9, 15, mode=mode, **kwargs), expected)


# --------------------------------------------------------------------------------------------
# HuggingFace transformers (optimization.py), the lr_lambda formulas written out.


def hf_warmup(t, w):
    return t / max(1, w)


def hf_constant_with_warmup(t, w):
    return hf_warmup(t, w) if t < w else 1.0


def hf_linear(t, w, total):
    return hf_warmup(t, w) if t < w else max(0.0, (total - t) / max(1, total - w))


def hf_cosine(t, w, total, num_cycles=0.5):
    if t < w:
        return hf_warmup(t, w)
    p = (t - w) / max(1, total - w)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * p)))


def hf_cosine_min_lr(t, w, total, num_cycles=0.5, min_lr_rate=0.0):
    if t < w:
        return hf_warmup(t, w)
    p = (t - w) / max(1, total - w)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * p))
    return factor * (1 - min_lr_rate) + min_lr_rate


def hf_hard_restarts(t, w, total, num_cycles=1):
    if t < w:
        return hf_warmup(t, w)
    p = (t - w) / max(1, total - w)
    if p >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * p) % 1.0))))


def hf_polynomial(t, w, total, lr_init, lr_end=1e-7, power=1.0):
    if t < w:
        return hf_warmup(t, w)
    if t > total:
        return lr_end / lr_init
    decay = (lr_init - lr_end) * (1 - (t - w) / (total - w)) ** power + lr_end
    return decay / lr_init


def hf_inverse_sqrt(t, w, timescale=None):
    if timescale is None:
        timescale = w or 10_000
    if t < w:
        return hf_warmup(t, w)
    return 1.0 / math.sqrt((t + timescale - w) / timescale)


def hf_cosine_warmup_min_lr(t, w, total, num_cycles=0.5, min_lr_rate=0.0,
                            warmup_lr_rate=None):
    if t < w:
        if warmup_lr_rate is None:
            return (t + 1.0) / max(1.0, w)
        return warmup_lr_rate + (1.0 - warmup_lr_rate) * t / max(1, w - 1)
    p = (t - w + 1.0) / max(1.0, total - w)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * p))
    return max(0, factor * (1 - min_lr_rate) + min_lr_rate)


def hf_wsd(t, w, stable, decay_steps, min_lr_ratio=0.0, num_cycles=0.5, warmup_type="linear",
           decay_type="cosine"):
    if t < w:
        p = t / max(1, w)
        f = {"linear": p, "cosine": 0.5 * (1 - math.cos(math.pi * p)),
             "1-sqrt": 1 - math.sqrt(1 - p)}[warmup_type]
        return max(0.0, f * (1 - min_lr_ratio) + min_lr_ratio)
    if t < w + stable:
        return 1.0
    if t < w + stable + decay_steps:
        p = (t - w - stable) / max(1, decay_steps)
        f = {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * num_cycles * 2 * p)),
             "1-sqrt": 1 - math.sqrt(p)}[decay_type]
        return max(0.0, f * (1 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


LR = 3e-4
HF_CASES = {
    "constant_with_warmup": (sch.constant_with_warmup(LR, 25),
                             lambda t: hf_constant_with_warmup(t, 25)),
    "constant_with_warmup_0": (sch.constant_with_warmup(LR, 0),
                               lambda t: hf_constant_with_warmup(t, 0)),
    "linear": (sch.linear_with_warmup(LR, 30, 250), lambda t: hf_linear(t, 30, 250)),
    "cosine": (sch.cosine_with_warmup(LR, 30, 250), lambda t: hf_cosine(t, 30, 250)),
    "cosine_cycles": (sch.cosine_with_warmup(LR, 10, 200, num_cycles=1.7),
                      lambda t: hf_cosine(t, 10, 200, 1.7)),
    "cosine_min_lr": (sch.get_schedule("cosine_with_min_lr", LR, 20, 200, min_lr=3e-5),
                      lambda t: hf_cosine_min_lr(t, 20, 200, min_lr_rate=0.1)),
    "hard_restarts": (sch.cosine_with_hard_restarts_with_warmup(LR, 20, 260, num_cycles=3),
                      lambda t: hf_hard_restarts(t, 20, 260, 3)),
    "polynomial": (sch.polynomial_decay_with_warmup(LR, 20, 240, lr_end=1e-6, power=2.0),
                   lambda t: hf_polynomial(t, 20, 240, LR, 1e-6, 2.0)),
    "inverse_sqrt": (sch.inverse_sqrt(LR, 40), lambda t: hf_inverse_sqrt(t, 40)),
    "inverse_sqrt_timescale": (sch.inverse_sqrt(LR, 15, timescale=100),
                               lambda t: hf_inverse_sqrt(t, 15, 100)),
    "inverse_sqrt_no_warmup": (sch.inverse_sqrt(LR), lambda t: hf_inverse_sqrt(t, 0)),
    "wsd": (sch.warmup_stable_decay(LR, 20, 60, num_training_steps=250),
            lambda t: hf_wsd(t, 20, 170, 60)),
    "wsd_linear_min": (sch.warmup_stable_decay(LR, 20, 80, num_stable_steps=100,
                                               min_lr_ratio=0.1, decay_type="linear",
                                               warmup_type="cosine"),
                       lambda t: hf_wsd(t, 20, 100, 80, 0.1, warmup_type="cosine",
                                        decay_type="linear")),
    "cosine_warmup_with_min_lr": (
        sch.cosine_warmup_with_min_lr(LR, 20, 200, num_cycles=0.8, min_lr_rate=0.1),
        lambda t: hf_cosine_warmup_min_lr(t, 20, 200, 0.8, 0.1)),
    "cosine_warmup_with_min_lr_rate": (
        sch.cosine_warmup_with_min_lr(LR, 20, 200, min_lr_rate=0.1, warmup_lr_rate=0.25),
        lambda t: hf_cosine_warmup_min_lr(t, 20, 200, min_lr_rate=0.1, warmup_lr_rate=0.25)),
    "wsd_1_sqrt": (sch.warmup_stable_decay(LR, 10, 90, num_stable_steps=50,
                                           warmup_type="1-sqrt", decay_type="1-sqrt"),
                   lambda t: hf_wsd(t, 10, 50, 90, warmup_type="1-sqrt",
                                    decay_type="1-sqrt")),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_matches_huggingface_formula(case):
    schedule, factor = HF_CASES[case]
    assert_sequence(schedule, [LR * factor(t) for t in range(N)], where=case)


@pytest.mark.parametrize("name,kwargs,expected", [
    ("constant", {}, lambda t: LR),
    ("constant_with_warmup", dict(num_warmup_steps=10), lambda t: LR * hf_warmup(min(t, 10), 10)),
    ("linear", dict(num_warmup_steps=10, num_training_steps=100),
     lambda t: LR * hf_linear(t, 10, 100)),
    ("cosine", dict(num_warmup_steps=10, num_training_steps=100),
     lambda t: LR * hf_cosine(t, 10, 100)),
    ("cosine_with_restarts", dict(num_warmup_steps=10, num_training_steps=100, num_cycles=2),
     lambda t: LR * hf_hard_restarts(t, 10, 100, 2)),
    ("polynomial", dict(num_warmup_steps=10, num_training_steps=100),
     lambda t: LR * hf_polynomial(t, 10, 100, LR)),
    ("inverse_sqrt", dict(num_warmup_steps=10), lambda t: LR * hf_inverse_sqrt(t, 10)),
    ("warmup_stable_decay", dict(num_warmup_steps=10, num_training_steps=100,
                                 num_decay_steps=30), lambda t: LR * hf_wsd(t, 10, 60, 30)),
])
def test_get_schedule_by_hf_name(name, kwargs, expected):
    assert_sequence(sch.get_schedule(name, LR, **kwargs), [expected(t) for t in range(150)],
                    where=name)


def test_get_schedule_errors():
    """HuggingFace's messages (``get_scheduler``, ``SchedulerType``), written out."""
    with pytest.raises(ValueError) as e:
        sch.get_schedule("cosyne", 0.1)
    assert str(e.value) == (
        "cosyne is not a valid SchedulerType, please select one of ['linear', 'cosine', "
        "'cosine_with_restarts', 'polynomial', 'constant', 'constant_with_warmup', "
        "'inverse_sqrt', 'reduce_lr_on_plateau', 'cosine_with_min_lr', "
        "'cosine_warmup_with_min_lr', 'warmup_stable_decay', 'greedy']")
    with pytest.raises(ValueError) as e:
        sch.get_schedule("linear", 0.1, num_warmup_steps=3)
    assert str(e.value) == ("SchedulerType.LINEAR requires `num_training_steps`, please provide "
                            "that argument.")
    with pytest.raises(ValueError) as e:
        sch.get_schedule("inverse_sqrt", 0.1)
    assert str(e.value) == ("SchedulerType.INVERSE_SQRT requires `num_warmup_steps`, please "
                            "provide that argument.")
    with pytest.raises(ValueError, match="reduce_on_plateau"):
        sch.get_schedule("reduce_lr_on_plateau", 0.1)
    with pytest.raises(ValueError, match="^One of min_lr or min_lr_rate should be set through "
                                         "the `lr_scheduler_kwargs`$"):
        sch.get_schedule("cosine_with_min_lr", 0.1, 2, 10)
    with pytest.raises(ValueError, match="^Only one of min_lr or min_lr_rate should be set$"):
        sch.get_schedule("cosine_with_min_lr", 0.1, 2, 10, min_lr=0.01, min_lr_rate=0.1)


# --------------------------------------------------------------------------------------------
# optax's schedules (optax/schedules/_schedule.py, _join.py), written out.


def ox_linear(t, v0, v1, steps, begin=0):
    count = min(max(t - begin, 0), steps)
    return (v0 - v1) * (1 - count / steps) + v1


def ox_polynomial(t, v0, v1, power, steps, begin=0):
    count = min(max(t - begin, 0), steps)
    return (v0 - v1) * (1 - count / steps) ** power + v1


def ox_exponential(t, v0, steps, rate, begin=0, staircase=False, end=None):
    d = t - begin
    p = math.floor(d / steps) if staircase else d / steps
    v = v0 if d <= 0 else v0 * rate**p
    if end is not None:
        v = max(v, end) if rate < 1 else min(v, end)
    return v


def ox_cosine(t, v0, steps, alpha=0.0, exponent=1.0):
    c = min(t, steps)
    return v0 * ((1 - alpha) * (0.5 * (1 + math.cos(math.pi * c / steps))) ** exponent + alpha)


def ox_warmup_cosine(t, v0, peak, warm, decay, end=0.0, exponent=1.0):
    if t < warm:
        return ox_linear(t, v0, peak, warm)
    return ox_cosine(t - warm, peak, decay - warm, end / peak if peak else 0.0, exponent)


def ox_piecewise_constant(t, v0, bs):
    v = v0
    for b, s in sorted(bs.items()):
        if t >= b:
            v *= s
    return v


def ox_piecewise_interpolate(t, kind, v0, bs):
    bounds = [0] + sorted(bs)
    values = [v0]
    for b in sorted(bs):
        values.append(values[-1] * bs[b])
    if t >= bounds[-1]:
        return values[-1]
    for i in range(len(bounds) - 1):
        if bounds[i] <= t < bounds[i + 1]:
            pct = (t - bounds[i]) / (bounds[i + 1] - bounds[i])
            a, b = values[i], values[i + 1]
            if kind == "linear":
                return (b - a) * pct + a
            return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)
    raise AssertionError


def ox_join(t, fns, boundaries):
    value = fns[0](t)
    for b, f in zip(boundaries, fns[1:]):
        if t >= b:
            value = f(t - b)
    return value


OPTAX_CASES = {
    "polynomial": (sch.polynomial(1.0, 0.01, 2.0, 200, 30),
                   lambda t: ox_polynomial(t, 1.0, 0.01, 2.0, 200, 30)),
    "polynomial_sqrt": (sch.polynomial(0.5, 0.0, 0.5, 150),
                        lambda t: ox_polynomial(t, 0.5, 0.0, 0.5, 150)),
    "warmup_constant": (sch.warmup_constant(0.0, 1.0, 40),
                        lambda t: ox_linear(t, 0.0, 1.0, 40)),
    "warmup_exponential_decay": (
        sch.warmup_exponential_decay(0.0, 1.0, 20, 30, 0.5, transition_begin=10,
                                     staircase=True, end_value=0.05),
        lambda t: ox_join(t, [lambda s: ox_linear(s, 0.0, 1.0, 20),
                              lambda s: ox_exponential(s, 1.0, 30, 0.5, 10, True, 0.05)], [20])),
    "piecewise_constant": (sch.piecewise_constant(1.0, {50: 0.5, 120: 0.1, 200: 2.0}),
                           lambda t: ox_piecewise_constant(t, 1.0, {50: 0.5, 120: 0.1,
                                                                    200: 2.0})),
    "piecewise_linear": (sch.piecewise_interpolate("linear", 1.0, {40: 2.0, 100: 0.1,
                                                                   180: 0.5}),
                         lambda t: ox_piecewise_interpolate(t, "linear", 1.0,
                                                            {40: 2.0, 100: 0.1, 180: 0.5})),
    "piecewise_cosine": (sch.piecewise_interpolate("cosine", 2.0, {70: 0.5, 220: 0.01}),
                         lambda t: ox_piecewise_interpolate(t, "cosine", 2.0,
                                                            {70: 0.5, 220: 0.01})),
    "join": (sch.join([sch.constant(0.5), sch.linear(0.5, 1.0, 50), sch.cosine_decay(1.0, 100)],
                      [30, 80]),
             lambda t: ox_join(t, [lambda s: 0.5, lambda s: ox_linear(s, 0.5, 1.0, 50),
                                   lambda s: ox_cosine(s, 1.0, 100)], [30, 80])),
    "sgdr": (sch.sgdr([dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100),
                       dict(init_value=0.1, peak_value=0.5, warmup_steps=5, decay_steps=80,
                            end_value=0.01),
                       dict(init_value=0.0, peak_value=0.2, warmup_steps=0,
                            decay_steps=150)]),
             lambda t: ox_join(t, [lambda s: ox_warmup_cosine(s, 0.0, 1.0, 10, 100),
                                   lambda s: ox_warmup_cosine(s, 0.1, 0.5, 5, 80, 0.01),
                                   lambda s: ox_warmup_cosine(s, 0.0, 0.2, 0, 150)],
                               [100, 180])),
    "cosine_onecycle": (sch.cosine_onecycle(250, 1.0),
                        lambda t: ox_piecewise_interpolate(t, "cosine", 1.0 / 25,
                                                           {75: 25.0, 250: 1 / (25 * 1e4)})),
    "linear_onecycle": (sch.linear_onecycle(250, 1.0, pct_start=0.2, pct_final=0.7),
                        lambda t: ox_piecewise_interpolate(t, "linear", 1.0 / 25,
                                                           {50: 25.0, 175: 1 / 25,
                                                            250: 1e-4})),
}


@pytest.mark.parametrize("case", list(OPTAX_CASES))
def test_matches_optax_formula(case):
    schedule, ref = OPTAX_CASES[case]
    assert_sequence(schedule, [ref(t) for t in range(N)], rtol=1e-12, where=case)


# --------------------------------------------------------------------------------------------
# Every schedule: tensor hparams, meta-gradients, vmap over an hparam, compile, no host sync.

ALL = {**{k: v[0] for k, v in TORCH_CASES.items()},
       **{k: (lambda s=v[0]: s) for k, v in HF_CASES.items()},
       **{k: (lambda s=v[0]: s) for k, v in OPTAX_CASES.items()}}


def _first_float(tree):
    """The path of the first float hparam (nested dicts/tuples)."""
    if isinstance(tree, dict):
        items = list(tree.items())
    elif isinstance(tree, tuple):
        items = list(enumerate(tree))
    else:
        return () if isinstance(tree, float) and tree != 0 else None
    for k, v in items:
        sub = _first_float(v)
        if sub is not None:
            return (k, *sub)
    return None


def _set(tree, path, value):
    if not path:
        return value
    k, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, k: _set(tree[k], rest, value)}
    return tuple(_set(v, rest, value) if i == k else v for i, v in enumerate(tree))


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


@pytest.mark.parametrize("case", list(ALL))
def test_hparam_as_tensor_grad_vmap_compile(case):
    s = ALL[case]()
    path = _first_float(s.hparams)
    base = _get(s.hparams, path)
    steps = torch.arange(0, 280, 7)
    ref = s(steps)
    # as a tensor with grad: same values, finite gradient matching finite differences
    h = torch.tensor(base, dtype=torch.float64, requires_grad=True)
    v = s(steps, _set(s.hparams, path, h))
    torch.testing.assert_close(v.detach(), ref, rtol=1e-12, atol=1e-15)
    (g,) = torch.autograd.grad(v.sum(), h)
    assert torch.isfinite(g)
    eps = 1e-7 * abs(base)
    fd = (s(steps, _set(s.hparams, path, base + eps)).sum()
          - s(steps, _set(s.hparams, path, base - eps)).sum()) / (2 * eps)
    assert g.item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)
    # vmap over the hparam
    hs = torch.tensor([base, base * 0.9], dtype=torch.float64)
    out = torch.func.vmap(lambda x: s(torch.tensor(150), _set(s.hparams, path, x)))(hs)
    for i in range(2):
        assert out[i].item() == pytest.approx(
            s(150, _set(s.hparams, path, hs[i].item())).item(), rel=1e-13)
    # the fake-CUDA trace has no host sync
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    with FakeTensorMode():
        step = torch.tensor(3, device="cuda")
        ht = torch.tensor(base, dtype=torch.float64, device="cuda")
    graph = make_fx(lambda st, x: s(st, _set(s.hparams, path, x)))(step, ht).graph
    ops = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert not any("item" in o or "local_scalar" in o or "nonzero" in o for o in ops), ops


def test_compile_fullgraph_join_no_recompile():
    s = sch.join([sch.linear(0.0, 1.0, 10), sch.cosine_annealing_warm_restarts(1.0, 5, 2)], [10])
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    f = torch.compile(lambda t, h: s(t, h), backend=counter, fullgraph=True, dynamic=False)
    torch._dynamo.reset()
    try:
        for t in range(0, 60, 9):
            h = {"schedules": ({"end_value": torch.tensor(1.0 + t / 100, dtype=torch.float64)},
                               {}), "boundaries": (10,)}
            torch.testing.assert_close(f(torch.tensor(t), h), s(t, h))
            if t == 0:
                first = counter.frame_count  # a restarted analysis may count twice
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == first


def test_any_hparam_is_schedulable_through_join():
    # a momentum schedule driving trace's momentum through inject_hparams works the same way
    s = sch.join([sch.constant(0.85), sch.linear(0.85, 0.95, 100)], [50])
    assert s(0).item() == 0.85 and s(150).item() == pytest.approx(0.95)
    assert s.hparams["schedules"][1]["end_value"] == 0.95


@pytest.mark.parametrize("make,match", [
    (lambda: sch.step_lr(0.1, 0), "step_size"),
    (lambda: sch.cosine_annealing_warm_restarts(0.1, 10, T_mult=1.5), "T_mult"),
    (lambda: sch.cyclic_lr(0.1, 1.0, mode="sawtooth"), "mode"),
    (lambda: sch.one_cycle_lr(0.1, 100, anneal_strategy="cosine"), "anneal_strategy"),
    (lambda: sch.join([sch.constant(1.0)], [3]), "boundaries"),
    (lambda: sch.piecewise_interpolate("cubic", 1.0, {3: 0.5}), "interpolate_type"),
    (lambda: sch.polynomial_decay_with_warmup(1e-7, 1, 10), "lr_end"),
    (lambda: sch.warmup_stable_decay(0.1, 10, 10), "num_stable_steps"),
    (lambda: sch.linear_lr(0.1, start_factor=0.0), "start_factor"),
])
def test_invalid_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_in_a_transform_counts_steps():
    tx = fo.scale_by_learning_rate(sch.step_lr(0.1, 2, 0.5))
    g = {"w": torch.ones(2, dtype=torch.float64)}
    state = tx.init(g)
    got = []
    for _ in range(5):
        u, state = tx.update(g, state)
        got.append(-u["w"][0].item())
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025], rel=1e-15)

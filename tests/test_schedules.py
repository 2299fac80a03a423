"""Schedules against plain-Python ``math`` formulas (optax's published semantics), over a few
hundred steps; their hyperparameters as tensors, overridden at call time, and differentiated.
"""

from __future__ import annotations

import math

import pytest
import torch

import functional_optim as fo
from functional_optim import schedules as sch

STEPS = range(0, 400)
RTOL = 1e-12


# --------------------------------------------------------------------------------------------
# The references, written out from optax's definitions (optax/schedules/_schedule.py).


def ref_constant(t, value):
    return value


def ref_linear(t, init_value, end_value, transition_steps, transition_begin=0):
    # optax.linear_schedule = polynomial_schedule(power=1)
    count = min(max(t - transition_begin, 0), transition_steps)
    frac = 1 - count / transition_steps
    return (init_value - end_value) * frac + end_value


def ref_cosine_decay(t, init_value, decay_steps, alpha=0.0, exponent=1.0):
    count = min(t, decay_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * count / decay_steps))
    return init_value * ((1 - alpha) * cosine**exponent + alpha)


def ref_warmup_cosine_decay(t, init_value, peak_value, warmup_steps, decay_steps, end_value=0.0,
                            exponent=1.0):
    # optax: join_schedules([linear(init, peak, warmup_steps),
    #                        cosine_decay(peak, decay_steps - warmup_steps, alpha=end/peak)],
    #                       boundaries=[warmup_steps]); decay_steps counts the warmup.
    if t < warmup_steps:
        return ref_linear(t, init_value, peak_value, warmup_steps)
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return ref_cosine_decay(t - warmup_steps, peak_value, decay_steps - warmup_steps, alpha,
                            exponent)


def ref_exponential_decay(t, init_value, transition_steps, decay_rate, transition_begin=0,
                          staircase=False, end_value=None):
    decreased = t - transition_begin
    p = decreased / transition_steps
    if staircase:
        p = math.floor(p)
    value = init_value if decreased <= 0 else init_value * decay_rate**p
    if end_value is not None:
        value = max(value, end_value) if decay_rate < 1 else min(value, end_value)
    return value


def ref_decay_rate_schedule(t, exponent=0.8):
    # PaLM's beta2 at step k = t + 1: 1 - k^-0.8
    return 1 - (t + 1) ** -exponent


CASES = {
    "decay_rate": (sch.decay_rate_schedule, ref_decay_rate_schedule, dict(exponent=0.8)),
    "decay_rate_fast": (sch.decay_rate_schedule, ref_decay_rate_schedule, dict(exponent=2.5)),
    "constant": (sch.constant, ref_constant, dict(value=0.3)),
    "constant_negative": (sch.constant, ref_constant, dict(value=-2.5)),
    "linear": (sch.linear, ref_linear, dict(init_value=1.0, end_value=0.01,
                                            transition_steps=250)),
    "linear_begin": (sch.linear, ref_linear, dict(init_value=0.0, end_value=3e-4,
                                                  transition_steps=120, transition_begin=75)),
    "linear_increasing_long": (sch.linear, ref_linear, dict(init_value=-1.0, end_value=2.0,
                                                            transition_steps=1000,
                                                            transition_begin=5)),
    "cosine": (sch.cosine_decay, ref_cosine_decay, dict(init_value=0.1, decay_steps=300)),
    "cosine_alpha": (sch.cosine_decay, ref_cosine_decay, dict(init_value=2.0, decay_steps=250,
                                                              alpha=0.1)),
    "cosine_exponent": (sch.cosine_decay, ref_cosine_decay,
                        dict(init_value=1.0, decay_steps=333, alpha=0.05, exponent=2.5)),
    "warmup_cosine": (sch.warmup_cosine_decay, ref_warmup_cosine_decay,
                      dict(init_value=0.0, peak_value=1e-3, warmup_steps=50, decay_steps=350)),
    "warmup_cosine_end": (sch.warmup_cosine_decay, ref_warmup_cosine_decay,
                          dict(init_value=1e-4, peak_value=1.0, warmup_steps=37,
                               decay_steps=301, end_value=0.05, exponent=1.5)),
    "warmup_cosine_no_warmup": (sch.warmup_cosine_decay, ref_warmup_cosine_decay,
                                dict(init_value=0.5, peak_value=1.0, warmup_steps=0,
                                     decay_steps=200, end_value=0.1)),
    "warmup_cosine_one_step": (sch.warmup_cosine_decay, ref_warmup_cosine_decay,
                               dict(init_value=0.2, peak_value=1.0, warmup_steps=1,
                                    decay_steps=150)),
    "exp": (sch.exponential_decay, ref_exponential_decay,
            dict(init_value=1.0, transition_steps=30, decay_rate=0.5)),
    "exp_staircase": (sch.exponential_decay, ref_exponential_decay,
                      dict(init_value=0.1, transition_steps=40, decay_rate=0.3, staircase=True)),
    "exp_begin": (sch.exponential_decay, ref_exponential_decay,
                  dict(init_value=2.0, transition_steps=25, decay_rate=0.9,
                       transition_begin=100)),
    "exp_begin_staircase": (sch.exponential_decay, ref_exponential_decay,
                            dict(init_value=2.0, transition_steps=25, decay_rate=0.9,
                                 transition_begin=100, staircase=True)),
    "exp_floor": (sch.exponential_decay, ref_exponential_decay,
                  dict(init_value=1.0, transition_steps=10, decay_rate=0.8, end_value=0.05)),
    "exp_growth_ceiling": (sch.exponential_decay, ref_exponential_decay,
                           dict(init_value=1e-3, transition_steps=20, decay_rate=1.5,
                                end_value=0.5, transition_begin=10)),
    "exp_growth_ceiling_staircase": (sch.exponential_decay, ref_exponential_decay,
                                     dict(init_value=1e-3, transition_steps=20, decay_rate=1.5,
                                          end_value=0.5, staircase=True)),
    "exp_growth": (sch.exponential_decay, ref_exponential_decay,
                   dict(init_value=1e-3, transition_steps=50, decay_rate=2.0)),
}

# the keys that are hyperparameters (staircase is static)
STATIC = {"staircase"}


def _hparam_args(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in STATIC}


def _close(actual: float, expected: float, scale: float, where: str) -> None:
    # rtol 1e-12 relative to the value, or to the schedule's scale where the value crosses 0
    # (1 + cos(x) near x = pi cancels: one ulp of cos is 1e-16 of the schedule's scale)
    assert abs(actual - expected) <= RTOL * max(abs(expected), scale), (
        where, actual, expected)


def _scale(args: dict) -> float:
    return max((abs(v) for k, v in args.items() if k.endswith("value") and v is not None),
               default=1.0)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case):
    make, ref, args = CASES[case]
    schedule = make(**args)
    values = schedule(torch.arange(STEPS.stop))  # a vector of steps evaluates elementwise
    for t in STEPS:
        v = schedule(torch.tensor(t))
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float64 and v.ndim == 0
        expected = ref(t, **args)
        _close(v.item(), expected, _scale(args), f"{case} step {t}")
        _close(values[t].item(), v.item(), _scale(args), f"{case} step {t} (vector)")


@pytest.mark.parametrize("case", list(CASES))
def test_step_types_agree(case):
    make, _, args = CASES[case]
    schedule = make(**args)
    for t in (0, 1, 37, 120, 399):
        expected = schedule(torch.tensor(t, dtype=torch.int64))
        for step in (t, float(t), torch.tensor(t, dtype=torch.int32),
                     torch.tensor(float(t), dtype=torch.float32),
                     torch.tensor(float(t), dtype=torch.float64)):
            v = schedule(step)
            assert v.dtype == torch.float64 and v.ndim == 0
            assert v.item() == expected.item(), (case, t, step)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tdtype", [torch.float64, torch.float32])
def test_tensor_hparams_give_the_same_values(case, tdtype):
    make, ref, args = CASES[case]
    numbers = make(**args)
    tensor_args = {k: (torch.tensor(v, dtype=tdtype) if k not in STATIC and v is not None
                       else v) for k, v in args.items()}
    tensors = make(**tensor_args)
    # ... constructed with tensors, and given as tensors at call time
    given = {k: v for k, v in tensor_args.items() if k not in STATIC}
    for t in range(0, 400, 7):
        a = numbers(torch.tensor(t))
        b = tensors(torch.tensor(t))
        c = numbers(torch.tensor(t), hparams=given)
        assert b.dtype == c.dtype == torch.float64
        if tdtype == torch.float64:
            _close(b.item(), a.item(), _scale(args), f"{case} step {t}")
            _close(c.item(), a.item(), _scale(args), f"{case} step {t}")
        else:  # the float32-rounded hparams, computed in float64
            rounded = {k: (float(v) if isinstance(v, torch.Tensor) else v)
                       for k, v in tensor_args.items()}
            expected = ref(t, **rounded)
            _close(b.item(), expected, _scale(args), f"{case} step {t} (f32 hparams)")
            _close(c.item(), expected, _scale(args), f"{case} step {t} (f32 hparams)")


def test_hparams_override_at_call():
    s = sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=10, decay_steps=100)
    for t in (0, 5, 10, 50, 100, 150):
        v = s(t, hparams={"peak_value": 2.0, "end_value": 0.1})
        expected = ref_warmup_cosine_decay(t, 0.0, 2.0, 10, 100, 0.1)
        _close(v.item(), expected, 2.0, f"step {t}")
        # the defaults are untouched
        _close(s(t).item(), ref_warmup_cosine_decay(t, 0.0, 1.0, 10, 100), 1.0, f"step {t}")
    e = sch.exponential_decay(1.0, 10, 0.5, staircase=True)
    assert e(25, hparams={"decay_rate": 0.1}).item() == pytest.approx(0.01, rel=1e-14)
    lin = sch.linear(1.0, 0.0, transition_steps=10)
    assert lin(5, hparams={"transition_begin": 5}).item() == 1.0
    assert lin(5, hparams={"transition_steps": 20}).item() == 0.75


def test_unknown_override_key_raises():
    with pytest.raises(fo.HParamError, match="init_value"):
        sch.cosine_decay(1.0, 10)(0, hparams={"init_vlaue": 2.0})


def test_hparams_are_the_constructor_values():
    s = sch.exponential_decay(1.0, 10, 0.5, transition_begin=3, end_value=0.1)
    assert s.hparams == dict(init_value=1.0, transition_steps=10, decay_rate=0.5,
                             transition_begin=3, end_value=0.1)
    assert sch.warmup_cosine_decay(0.0, 1.0, 10, 100).hparams == dict(
        init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100, end_value=0.0,
        exponent=1.0)


def test_warmup_cosine_decay_steps_include_warmup():
    # optax: decay_steps is the total length; the end value is reached at decay_steps, not at
    # warmup_steps + decay_steps.
    s = sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=100, decay_steps=300, end_value=0.25)
    assert s(0).item() == 0.0
    assert s(50).item() == pytest.approx(0.5, rel=1e-15)
    assert s(100).item() == 1.0  # the peak at the end of warmup
    assert s(200).item() == pytest.approx(0.625, rel=1e-14)  # halfway through the cosine
    assert s(300).item() == pytest.approx(0.25, rel=1e-14)
    assert s(1000).item() == pytest.approx(0.25, rel=1e-14)


def test_cosine_decay_alpha_floor():
    s = sch.cosine_decay(2.0, 100, alpha=0.1)
    assert s(0).item() == 2.0
    assert s(100).item() == pytest.approx(0.2, rel=1e-14)
    assert s(10_000).item() == pytest.approx(0.2, rel=1e-14)


def test_step_on_a_device_gives_a_value_there():
    s = sch.cosine_decay(1.0, 10)
    v = s(torch.tensor(3, device="meta"))
    assert v.device.type == "meta" and v.dtype == torch.float64


# --------------------------------------------------------------------------------------------
# Meta-gradients: d value / d hparam against central finite differences.

GRAD_CASES = [
    # (case, hparam, steps at which the schedule is smooth in that hparam)
    ("constant", "value", (0, 10)),
    ("decay_rate", "exponent", (1, 10, 300)),
    ("linear", "init_value", (0, 100, 300)),
    ("linear", "end_value", (100, 300)),
    ("linear", "transition_steps", (100, 200)),
    ("linear_begin", "transition_begin", (100, 150)),
    ("cosine_alpha", "init_value", (0, 100, 300)),
    ("cosine_alpha", "alpha", (100, 300)),
    ("cosine_alpha", "decay_steps", (10, 100, 200)),
    ("cosine_exponent", "exponent", (1, 100, 332)),
    ("cosine_exponent", "exponent", (333, 400)),  # factor exactly 0: gradient 0, not NaN
    ("warmup_cosine_end", "init_value", (0, 10)),
    ("warmup_cosine_end", "peak_value", (10, 100, 200)),
    ("warmup_cosine_end", "end_value", (100, 350)),
    ("warmup_cosine_end", "warmup_steps", (10, 100)),
    ("warmup_cosine_end", "decay_steps", (100, 200)),
    ("warmup_cosine_end", "exponent", (100, 250)),
    ("exp", "init_value", (0, 50)),
    ("exp", "decay_rate", (0, 45, 299)),
    ("exp", "transition_steps", (45, 299)),
    ("exp_begin", "transition_begin", (150, 250)),
    ("exp_floor", "end_value", (100, 300)),
    ("exp_growth_ceiling", "decay_rate", (20, 50)),
]


@pytest.mark.parametrize("case,name,steps", GRAD_CASES,
                         ids=[f"{c}-{n}-{s[0]}" for c, n, s in GRAD_CASES])
def test_gradient_wrt_hparam_matches_finite_differences(case, name, steps):
    make, _, args = CASES[case]
    schedule = make(**args)
    base = float(args[name])
    for t in steps:
        h = torch.tensor(base, dtype=torch.float64, requires_grad=True)
        value = schedule(torch.tensor(t), hparams={name: h})
        (grad,) = torch.autograd.grad(value, h)
        assert torch.isfinite(grad), (case, name, t)
        eps = 1e-6 * max(1.0, abs(base))
        with torch.no_grad():
            up = schedule(torch.tensor(t), hparams={name: base + eps}).item()
            down = schedule(torch.tensor(t), hparams={name: base - eps}).item()
        fd = (up - down) / (2 * eps)
        assert grad.item() == pytest.approx(fd, rel=1e-6, abs=1e-9), (case, name, t)


def test_gradient_through_scale_by_learning_rate_schedule():
    # a schedule hparam given to the optimizer gets its meta-gradient through update
    peak = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    s = sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=2, decay_steps=10)
    tx = fo.scale_by_learning_rate(s)
    g = {"w": torch.ones(3, dtype=torch.float64)}
    state = tx.init(g)
    total = 0.0
    for _t in range(5):
        u, state = tx.update(g, state, hparams={"lr": {"peak_value": peak}})
        total = total + u["w"].sum()
    (grad,) = torch.autograd.grad(total, peak)
    expected = -3 * sum(ref_warmup_cosine_decay(t, 0.0, 1.0, 2, 10) for t in range(5))
    assert grad.item() == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Invalid construction arguments raise clear errors (ValueError; HParamError is one).


@pytest.mark.parametrize("make,match", [
    (lambda: sch.linear(1.0, 0.0, transition_steps=0), "transition_steps"),
    (lambda: sch.linear(1.0, 0.0, transition_steps=-5), "transition_steps"),
    (lambda: sch.linear(1.0, 0.0, transition_steps=10, transition_begin=-1), "transition_begin"),
    (lambda: sch.exponential_decay(1.0, transition_steps=0, decay_rate=0.5), "transition_steps"),
    (lambda: sch.exponential_decay(1.0, transition_steps=-1, decay_rate=0.5),
     "transition_steps"),
    (lambda: sch.exponential_decay(1.0, 10, decay_rate=-0.5), "decay_rate"),
    (lambda: sch.exponential_decay(1.0, 10, decay_rate=0.5, transition_begin=-3),
     "transition_begin"),
    (lambda: sch.cosine_decay(1.0, decay_steps=0), "decay_steps"),
    (lambda: sch.cosine_decay(1.0, decay_steps=-10), "decay_steps"),
    (lambda: sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=100, decay_steps=100),
     "decay_steps"),
    (lambda: sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=100, decay_steps=50),
     "decay_steps"),
    (lambda: sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=-1, decay_steps=50),
     "warmup_steps"),
    (lambda: sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=torch.tensor(100),
                                     decay_steps=torch.tensor(100.0)), "decay_steps"),
    (lambda: sch.warmup_cosine_decay(0.0, 1.0, warmup_steps=10, decay_steps=torch.tensor(5)),
     "decay_steps"),
    (lambda: sch.linear(1.0, 0.0, transition_steps=torch.tensor(0.0)), "transition_steps"),
    (lambda: sch.exponential_decay(1.0, 10, decay_rate=torch.tensor(-0.5)), "decay_rate"),
    (lambda: sch.constant(torch.ones(2)), "value"),
    (lambda: sch.constant(float("nan")), "value"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_invalid_construction_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()

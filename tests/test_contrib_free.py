"""optax.contrib's parameter-free and schedule-free optimizers against their reference formulas.

Each reference below is written out plainly from optax's source (``optax/contrib/_prodigy.py``,
``_dadapt_adamw.py``, ``_dog.py``, ``_cocob.py``, ``_momo.py``, ``_mechanic.py``,
``_schedule_free.py``, ``optax/_src/transform.py``) and the papers: a loop over steps with torch
ops on a dict of tensors, nothing from the library. The library's alias (or block) runs the same
closed loop (the gradient and the loss are taken at its parameters: a noisy quadratic, whose
steps go one way long enough for the step-size estimates to grow), and both trajectories agree
to 1e-10 relative in float64 over 25 steps, on three parameter shapes, with non-default
arguments. The drop-in classes' own behaviour (``train()``/``eval()``, the loss from the
closure, checkpoints) is tested at the end.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

import functional_optim as fo
from functional_optim import optim as fo_optim
from functional_optim import schedules

F64 = torch.float64
STEPS = 25
SHAPES = {"w": (3, 4), "b": (4,), "s": (1,)}


def _map(fn, *trees):
    return {k: fn(*(t[k] for t in trees)) for k in trees[0]}


def _vdot(a, b) -> float:
    return sum(float((a[k] * b[k]).sum()) for k in a)


def _norm(a) -> float:
    return math.sqrt(_vdot(a, a))


def _problem(seed: int):
    """Initial parameters and ``oracle(params, t) -> (loss, grads)`` of a noisy quadratic
    :math:`\\frac12 \\sum c (x - x_*)^2` (gradient noise of step ``t`` fixed by the seed)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(scale=1.0, shift=0.0):
        return {k: shift + scale * torch.rand(s, generator=gen, dtype=F64) for k, s in
                SHAPES.items()}

    params = draw(2.0, -1.0)
    target = draw(2.0, 1.0)
    curvature = draw(1.0, 0.5)
    noise = [draw(0.2, -0.1) for _ in range(STEPS)]

    def oracle(p, t):
        diff = _map(torch.sub, p, target)
        loss = 0.5 * sum((curvature[k] * diff[k] ** 2).sum() for k in p)
        return loss, _map(lambda c, d, n: c * d + n, curvature, diff, noise[t])

    return params, oracle


def _native(tx: fo.Transform, seed: int = 0, value: bool = False):
    """The trajectory of ``tx`` on the problem, and its last state."""
    params, oracle = _problem(seed)
    state = tx.init(params)
    out = []
    for t in range(STEPS):
        loss, grads = oracle(params, t)
        updates, state = tx.update(grads, state, params, **({"value": loss} if value else {}))
        params = fo.apply_updates(params, updates)
        out.append(params)
    return out, state


def _reference(step, seed: int = 0):
    """The trajectory of ``step(params, grads, loss, t) -> params`` on the problem."""
    params, oracle = _problem(seed)
    out = []
    for t in range(STEPS):
        loss, grads = oracle(params, t)
        params = step(params, grads, float(loss), t)
        out.append(params)
    return out


def _close(actual: dict, expected: dict, where: str, rtol: float = 1e-10) -> None:
    for k in expected:
        e = expected[k]
        torch.testing.assert_close(actual[k], e, rtol=rtol, atol=rtol * float(e.abs().max()),
                                   msg=lambda m, k=k: f"{where} {k}: {m}")


def _same(native, reference) -> None:
    assert len(native) == len(reference) == STEPS
    for t, (a, e) in enumerate(zip(native, reference)):
        _close(a, e, f"step {t + 1}")


def _linear(v0, v1, steps):
    """optax's linear schedule (and warmup_constant: from ``v0`` to ``v1`` over ``steps``)."""
    return lambda t: v0 + (v1 - v0) * min(t, steps) / steps


# --------------------------------------------------------------------------------------------
# Schedule-free


def ref_schedule_free(base, lr_at, b1, power):
    """optax's ``schedule_free``: ``base(grads, y, t) -> u`` (its count from 0), the wrapper's
    learning rate read at its count from 1. ``step.eval(y)`` gives :math:`x`."""
    st = {"z": None, "weight_sum": 0.0, "max_lr": 0.0}

    def step(y, g, f, t):
        z = st["z"] if st["z"] is not None else dict(y)
        st["max_lr"] = max(st["max_lr"], lr_at(t + 1))
        weight = st["max_lr"] ** power
        st["weight_sum"] += weight
        ck = weight / st["weight_sum"]
        z_next = _map(torch.add, z, base(g, y, t))
        x = _map(lambda yi, zi: (yi - (1 - b1) * zi) / b1, y, z)
        x = _map(lambda xi, zi: (1 - ck) * xi + ck * zi, x, z_next)
        st["z"] = z_next
        return _map(lambda xi, zi: b1 * xi + (1 - b1) * zi, x, z_next)

    step.eval = lambda y: _map(lambda yi, zi: (yi - (1 - b1) * zi) / b1, y, st["z"])
    return step


def ref_sgd_base(lr_at, wd):
    return lambda g, y, t: _map(lambda gi, yi: -lr_at(t) * (gi + wd * yi), g, y)


def ref_adamw_base(lr_at, b2, eps, wd):
    """optax's ``scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True)``, decay and
    learning rate."""
    st = {}

    def base(g, y, t):
        v = st.get("v", _map(torch.zeros_like, g))
        st["v"] = v = _map(lambda vi, gi: b2 * vi + (1 - b2) * gi * gi, v, g)
        bc = 1 - b2 ** (t + 1)
        return _map(lambda gi, vi, yi: -lr_at(t) * (gi / (torch.sqrt(vi / bc) + eps) + wd * yi),
                    g, v, y)

    return base


@pytest.mark.parametrize("power", [2.0, 1.5])
def test_schedule_free_sgd(power):
    lr = _linear(0.1, 0.4, 10)
    tx = fo.schedule_free_sgd(lr=schedules.linear(0.1, 0.4, 10), momentum=0.8,
                              weight_decay=0.01, weight_lr_power=power)
    ref = ref_schedule_free(ref_sgd_base(lr, 0.01), lr, 0.8, power)
    native, state = _native(tx)
    _same(native, _reference(ref))
    _close(fo.schedule_free_eval_params(state, native[-1]), ref.eval(native[-1]), "eval")


@pytest.mark.parametrize("warmup_steps", [None, 5])
def test_schedule_free_adamw(warmup_steps):
    lr = _linear(0.0, 0.05, warmup_steps) if warmup_steps else (lambda t: 0.05)
    tx = fo.schedule_free_adamw(lr=0.05, betas=(0.95, 0.99), eps=1e-6, weight_decay=0.02,
                                warmup_steps=warmup_steps, weight_lr_power=1.0)
    ref = ref_schedule_free(ref_adamw_base(lr, 0.99, 1e-6, 0.02), lr, 0.95, 1.0)
    native, state = _native(tx, seed=1)
    _same(native, _reference(ref, seed=1))
    x = fo.schedule_free_eval_params(state, native[-1])
    _close(x, ref.eval(native[-1]), "eval")
    _close(fo.schedule_free_train_params(state, x), native[-1], "train")


def test_scale_by_rms_bias_correction():
    """The block's option (schedule-free AdamW's preconditioner), centered too: the means
    over :math:`1 - \\alpha^t` before the root (the centered variance is 0 at the first step:
    a large ``eps``)."""
    alpha, eps = 0.9, 0.1

    def ref(centered):
        st = {}

        def step(p, g, f, t):
            v = st.get("v", _map(torch.zeros_like, g))
            m = st.get("m", _map(torch.zeros_like, g))
            st["v"] = v = _map(lambda vi, gi: alpha * vi + (1 - alpha) * gi * gi, v, g)
            st["m"] = m = _map(lambda mi, gi: alpha * mi + (1 - alpha) * gi, m, g)
            bc = 1 - alpha ** (t + 1)
            var = _map(lambda vi, mi: torch.clamp(vi / bc - (mi / bc) ** 2, min=0) if centered
                       else vi / bc, v, m)
            return _map(lambda pi, gi, si: pi - 0.1 * gi / (torch.sqrt(si) + eps), p, g, var)

        return step

    for centered in (False, True):
        tx = fo.chain(fo.scale_by_rms(alpha, eps, centered, bias_correction=True),
                      fo.scale(-0.1))
        _same(_native(tx)[0], _reference(ref(centered)))


# --------------------------------------------------------------------------------------------
# Prodigy and D-Adaptation


def ref_prodigy(lr_at, b1, b2, b3, eps, wd, d0, coef, safeguard=False):
    st = {"d": d0, "num": 0.0}

    def step(p, g, f, t):
        if "m" not in st:
            st.update(m=_map(torch.zeros_like, p), v=_map(torch.zeros_like, p),
                      s=_map(torch.zeros_like, p), x0=dict(p))
        d = st["d"]
        dlr = d * lr_at(t) * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        acc = _vdot(g, _map(torch.sub, st["x0"], p))
        st["m"] = m = _map(lambda mi, gi: b1 * mi + (1 - b1) * d * gi, st["m"], g)
        st["v"] = v = _map(lambda vi, gi: b2 * vi + (1 - b2) * (d * gi) ** 2, st["v"], g)
        weight = d if safeguard else dlr
        st["s"] = _map(lambda si, gi: b3 * si + weight * d * gi / d0, st["s"], g)
        st["num"] = b3 * st["num"] + d / d0 * dlr * acc
        den = sum(float(si.abs().sum()) for si in st["s"].values())
        st["d"] = d_next = max(d, coef * st["num"] / den)
        return _map(lambda pi, mi, vi: pi - wd * dlr * pi - dlr * mi / (torch.sqrt(vi)
                                                                       + d_next * eps),
                    p, m, v)

    return step


def test_prodigy():
    tx = fo.prodigy(lr=0.8, betas=(0.85, 0.99), beta3=0.95, eps=1e-6, weight_decay=0.01,
                    d0=1e-3, d_coef=2.0)
    ref = ref_prodigy(lambda t: 0.8, 0.85, 0.99, 0.95, 1e-6, 0.01, 1e-3, 2.0)
    native, state = _native(tx)
    _same(native, _reference(ref))
    assert float(state.d) > 1e-2  # the estimate grew: the test exercises it


def test_prodigy_defaults_safeguard_and_schedule():
    lr = _linear(1.0, 0.5, 10)
    tx = fo.prodigy(lr=schedules.linear(1.0, 0.5, 10), safeguard_warmup=True, d0=1e-2)
    ref = ref_prodigy(lr, 0.9, 0.999, 0.999 ** 0.5, 1e-8, 0.0, 1e-2, 1.0, safeguard=True)
    _same(_native(tx, seed=2)[0], _reference(ref, seed=2))


def ref_dadapt_adamw(lr_at, b1, b2, eps, wd, d0):
    sb2 = b2 ** 0.5
    st = {"d": d0, "num": 0.0}

    def step(p, g, f, t):
        if "m" not in st:
            st.update(m=_map(torch.zeros_like, p), v=_map(torch.zeros_like, p),
                      s=_map(torch.zeros_like, p))
        dlr = st["d"] * lr_at(t) * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        acc = _vdot(g, _map(lambda si, vi: si / (torch.sqrt(vi) + eps), st["s"], st["v"]))
        st["m"] = m = _map(lambda mi, gi: b1 * mi + (1 - b1) * dlr * gi, st["m"], g)
        st["v"] = v = _map(lambda vi, gi: b2 * vi + (1 - b2) * gi * gi, st["v"], g)
        st["s"] = _map(lambda si, gi: sb2 * si + (1 - sb2) * dlr * gi, st["s"], g)
        st["num"] = sb2 * st["num"] + (1 - sb2) * dlr * acc
        l1 = sum(float(si.abs().sum()) for si in st["s"].values())
        st["d"] = max(st["d"], st["num"] / ((1 - sb2) * l1))
        return _map(lambda pi, mi, vi: pi - wd * dlr * pi - mi / (torch.sqrt(vi) + eps), p, m, v)

    return step


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_dadapt_adamw(wd):
    tx = fo.dadapt_adamw(lr=0.9, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, d0=1e-3)
    ref = ref_dadapt_adamw(lambda t: 0.9, 0.8, 0.99, 1e-6, wd, 1e-3)
    native, state = _native(tx)
    _same(native, _reference(ref))
    assert float(state.d) > 1e-2


# --------------------------------------------------------------------------------------------
# DoG, DoWG, layer-wise DoG


def ref_dog(lr_at, kind, value, eps, wd):
    st = {"sum": 0.0}

    def step(p, g, f, t):
        if "x0" not in st:
            st["x0"] = dict(p)
            st["max"] = {"heuristic": value * (1 + _norm(p)), "distance": value,
                         "learning_rate": 0.0}[kind]
        g = _map(lambda gi, pi: gi + wd * pi, g, p)
        st["max"] = max(st["max"], _norm(_map(torch.sub, st["x0"], p)))
        st["sum"] += _vdot(g, g)
        eta = st["max"] / math.sqrt(st["sum"] + eps)
        if kind == "learning_rate" and t == 0:
            eta = value
        return _map(lambda pi, gi: pi - lr_at(t) * eta * gi, p, g)

    return step


@pytest.mark.parametrize("kind, value", [("heuristic", 1e-3), ("distance", 0.05),
                                         ("learning_rate", 0.02)])
def test_dog(kind, value):
    tx = fo.dog(lr=0.7, init_step=value, eps=1e-6, weight_decay=0.01, init_step_type=kind)
    _same(_native(tx)[0], _reference(ref_dog(lambda t: 0.7, kind, value, 1e-6, 0.01)))


def ref_dowg(lr_at, guess, eps, wd):
    st = {"weighted": 0.0, "estim": guess}

    def step(p, g, f, t):
        st.setdefault("x0", dict(p))
        g = _map(lambda gi, pi: gi + wd * pi, g, p)
        d = _map(torch.sub, st["x0"], p)
        st["estim"] = max(st["estim"], _vdot(d, d))
        st["weighted"] += st["estim"] * _vdot(g, g)
        eta = st["estim"] / (math.sqrt(st["weighted"]) + eps)
        return _map(lambda pi, gi: pi - lr_at(t) * eta * gi, p, g)

    return step


@pytest.mark.parametrize("guess", [None, 0.01])
def test_dowg(guess):
    lr = _linear(1.0, 0.5, 20)
    tx = fo.dowg(lr=schedules.linear(1.0, 0.5, 20), init_estim_sq_dist=guess, eps=1e-3,
                 weight_decay=0.02)
    ref = ref_dowg(lr, 1e-3 if guess is None else guess, 1e-3, 0.02)
    _same(_native(tx)[0], _reference(ref))


def ref_ldog(reps_rel, eps, scale):
    st = {}

    def step(p, g, f, t):
        if "x0" not in st:
            st["x0"] = dict(p)
            st["max"] = {k: reps_rel * (1 + float(p[k].norm())) for k in p}
            st["sum"] = {k: 0.0 for k in p}
        out = {}
        for k in p:
            st["max"][k] = max(st["max"][k], float((p[k] - st["x0"][k]).norm()))
            st["sum"][k] += float((g[k] ** 2).sum())
            out[k] = p[k] + scale * st["max"][k] / math.sqrt(st["sum"][k] + eps) * g[k]
        return out

    return step


def test_scale_by_distance_over_gradients():
    tx = fo.scale_by_distance_over_gradients(reps_rel=1e-3, eps=1e-6, global_scale=-0.5)
    _same(_native(tx)[0], _reference(ref_ldog(1e-3, 1e-6, -0.5)))


# --------------------------------------------------------------------------------------------
# COCOB


def ref_cocob(lr_at, alpha, eps, wd):
    st = {}

    def step(p, g, f, t):
        if "x0" not in st:
            st.update(x0=dict(p), c=_map(torch.zeros_like, p), big_g=_map(torch.zeros_like, p),
                      r=_map(torch.zeros_like, p), scale=_map(lambda x: torch.full_like(x, eps),
                                                               p))
        g = _map(lambda gi, pi: lr_at(t) * (gi + wd * pi), g, p)
        st["scale"] = big_l = _map(lambda li, gi: torch.maximum(li, gi.abs()), st["scale"], g)
        st["big_g"] = big_g = _map(lambda s, gi: s + gi.abs(), st["big_g"], g)
        st["r"] = r = _map(lambda ri, gi, pi, x0: torch.clamp(ri - gi * (pi - x0), min=0),
                           st["r"], g, p, st["x0"])
        st["c"] = c = _map(torch.sub, st["c"], g)
        return _map(lambda x0, ci, li, gs, ri: x0 + ci / (li * torch.maximum(gs + li, alpha * li))
                    * (li + ri), st["x0"], c, big_l, big_g, r)

    return step


def test_cocob():
    tx = fo.cocob(lr=0.5, alpha=20.0, eps=1e-4, weight_decay=0.01)
    _same(_native(tx)[0], _reference(ref_cocob(lambda t: 0.5, 20.0, 1e-4, 0.01)))


# --------------------------------------------------------------------------------------------
# MoMo and MoMo-Adam (the loss as ``value=``)

_FLAT = torch.finfo(F64).eps


def ref_momo(lr_at, beta, lower_bound, wd, adapt, adam=None):
    """optax's ``momo`` (``adam=None``) and ``momo_adam`` (``adam=(b2, eps)``: ``beta`` is
    ``b1``)."""
    st = {"barf": 0.0, "gamma": 0.0, "lb": lower_bound}

    def step(p, g, f, t):
        if "m" not in st:
            st.update(m=_map(torch.zeros_like, p), v=_map(torch.zeros_like, p))
        bt = beta if adam or t > 0 else 0.0
        st["barf"] = barf = bt * st["barf"] + (1 - bt) * f
        st["m"] = m = _map(lambda mi, gi: bt * mi + (1 - bt) * gi, st["m"], g)
        st["gamma"] = gamma = bt * st["gamma"] + (1 - bt) * _vdot(g, p)
        if adam:
            b2, eps = adam
            st["v"] = _map(lambda vi, gi: b2 * vi + (1 - b2) * gi * gi, st["v"], g)
            precond = _map(lambda vi: eps + torch.sqrt(vi / (1 - b2 ** (t + 1))), st["v"])
            bc1 = 1 - beta ** (t + 1)
        else:
            precond, bc1 = _map(torch.ones_like, m), 1.0
        direction = _map(torch.div, m, precond)
        norm = _vdot(m, direction)
        iprod = _vdot(m, p)
        alpha = lr_at(t)
        decay = 1 + alpha * wd
        lb = st["lb"]
        if adapt:
            cap = decay * (barf - gamma) + iprod
            if cap < decay * bc1 * lb:
                lb = max(cap / (2 * bc1 * decay), lower_bound)
        t1 = max(decay * (barf - bc1 * lb - gamma) + iprod, 0.0) / norm
        tau = min(alpha / bc1, 0.0 if norm <= _FLAT else t1)
        if adapt:
            st["lb"] = max((barf + iprod - gamma - 0.5 * tau * norm) / bc1, lower_bound)
        return _map(lambda pi, di: pi - alpha * wd / decay * pi - tau * di, p, direction)

    return step


@pytest.mark.parametrize("adapt", [False, True])
def test_momo(adapt):
    tx = fo.momo(lr=0.5, beta=0.8, lower_bound=0.05, weight_decay=0.01, adapt_lower_bound=adapt)
    ref = ref_momo(lambda t: 0.5, 0.8, 0.05, 0.01, adapt)
    _same(_native(tx, value=True)[0], _reference(ref))


@pytest.mark.parametrize("adapt", [False, True])
def test_momo_adam(adapt):
    lr = _linear(0.2, 0.05, 20)
    tx = fo.momo_adam(lr=schedules.linear(0.2, 0.05, 20), betas=(0.85, 0.99), eps=1e-6,
                      lower_bound=0.02, weight_decay=0.01, adapt_lower_bound=adapt)
    ref = ref_momo(lr, 0.85, 0.02, 0.01, adapt, adam=(0.99, 1e-6))
    _same(_native(tx, value=True)[0], _reference(ref))


def test_momo_needs_the_loss():
    params, oracle = _problem(0)
    tx = fo.momo()
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(oracle(params, 0)[1], tx.init(params), params)


# --------------------------------------------------------------------------------------------
# Mechanic (over Adam)


def ref_mechanic_adam(lr, b1, b2, eps, wd, m_eps, s_init, n):
    betas = [1 - 0.1 ** j for j in range(1, n + 1)]
    st = {"r": [0.0] * n, "m": [0.0] * n, "v": [0.0] * n, "s": [s_init] * n}

    def adam(g, t):
        st["am"] = _map(lambda mi, gi: b1 * mi + (1 - b1) * gi,
                        st.get("am", _map(torch.zeros_like, g)), g)
        st["av"] = _map(lambda vi, gi: b2 * vi + (1 - b2) * gi * gi,
                        st.get("av", _map(torch.zeros_like, g)), g)
        bc1, bc2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
        return _map(lambda mi, vi: -lr * (mi / bc1) / (torch.sqrt(vi / bc2) + eps), st["am"],
                    st["av"])

    def step(p, g, f, t):
        u = adam(g, t)
        x0 = st.setdefault("x0", dict(p))
        s_sum = sum(st["s"])
        coef = wd * s_sum * _norm(g) / (_norm(p) + m_eps)
        g = _map(lambda gi, pi: gi + coef * pi, g, p)
        delta_prev = _map(lambda pi, x0i: (x0i - pi) / (s_sum + m_eps), p, x0)
        h = _vdot(g, delta_prev)
        for j, beta in enumerate(betas):
            clipped = min(max(h, -st["m"][j]), st["m"][j])
            st["r"][j] = beta * st["r"][j] + clipped * st["s"][j]
            st["m"][j] = max(beta * st["m"][j], abs(h) + m_eps)
            st["v"][j] = beta ** 2 * st["v"][j] + h * h
            wealth = s_init / n * st["m"][j] + max(st["r"][j], 0.0)
            st["s"][j] = wealth / (math.sqrt(st["v"][j]) + m_eps)
        total = sum(st["s"])
        return _map(lambda x0i, di, ui: x0i - total * (di - ui), x0, delta_prev, u)

    return step


def test_mechanic_adam():
    tx = fo.mechanic_adam(lr=0.5, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.05,
                          mechanic_eps=1e-7, s_init=1e-4, num_betas=4)
    ref = ref_mechanic_adam(0.5, 0.8, 0.99, 1e-7, 0.05, 1e-7, 1e-4, 4)
    native, state = _native(tx)
    _same(native, _reference(ref))
    assert sum(float(s) for s in state.s) > 1e-3  # the scale was learnt


# --------------------------------------------------------------------------------------------
# The drop-in classes


def _module_params(seed: int) -> dict:
    params, _ = _problem(seed)
    return {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}


def _pure(tx: fo.Transform, seed: int, steps: int, value: bool = False):
    params, oracle = _problem(seed)
    state = tx.init(params)
    for t in range(steps):
        loss, grads = oracle(params, t)
        updates, state = tx.update(grads, state, params, **({"value": loss} if value else {}))
        params = fo.apply_updates(params, updates)
    return params, state


def _class_steps(opt, params: dict, seed: int, start: int, stop: int) -> None:
    _, oracle = _problem(seed)
    for t in range(start, stop):
        grads = oracle({k: p.detach() for k, p in params.items()}, t)[1]
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()


def _values(params: dict) -> dict:
    return {k: p.detach().clone() for k, p in params.items()}


def test_schedule_free_class_swaps_eval_and_train_parameters():
    """``eval()`` puts the parameters at :func:`fo.schedule_free_eval_params` of the pure
    loop's state, ``train()`` back at the stepped ones; stepping in eval mode raises; a
    checkpoint taken in eval mode keeps the mode and the run continues as the pure one."""
    kwargs = dict(lr=0.05, betas=(0.95, 0.99), weight_decay=0.02, warmup_steps=3)
    params = _module_params(1)
    opt = fo_optim.ScheduleFreeAdamW(list(params.values()), **kwargs)
    _class_steps(opt, params, 1, 0, 10)
    y, state = _pure(fo.schedule_free_adamw(**kwargs), 1, 10)
    _close(_values(params), y, "train", 1e-12)
    opt.eval()
    opt.eval()  # (already in eval mode: unchanged)
    _close(_values(params), fo.schedule_free_eval_params(state, y), "eval", 1e-12)
    with pytest.raises(RuntimeError, match="eval mode.*train()"):
        opt.step()
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    assert saved["param_groups"][0]["train_mode"] is False
    resumed = fo_optim.ScheduleFreeAdamW(list(params.values()), **kwargs)
    resumed.load_state_dict(saved)
    resumed.train()
    _close(_values(params), y, "train again", 1e-12)
    _class_steps(resumed, params, 1, 10, 15)
    _close(_values(params), _pure(fo.schedule_free_adamw(**kwargs), 1, 15)[0], "resumed",
           1e-10)


def test_schedule_free_class_swaps_each_group_with_its_own_momentum():
    params = _module_params(0)
    opt = fo_optim.ScheduleFreeSGD([{"params": [params["w"]]},
                                    {"params": [params["b"], params["s"]], "momentum": 0.5}],
                                   lr=0.1)
    _class_steps(opt, params, 0, 0, 6)
    before = _values(params)
    opt.eval()
    moved = _values(params)
    opt.train()
    _close(_values(params), before, "round trip", 1e-12)
    for k in params:
        assert not torch.equal(moved[k], before[k]), k
    assert [g["train_mode"] for g in opt.param_groups] == [True, True]


def test_momo_class_takes_the_loss_from_the_closure():
    """The closure's loss is the update's ``value=`` (its gradients autograd's); without a
    closure the step says what it needs."""
    _, oracle = _problem(0)

    def loss_of(p, t):
        return oracle(p, t)[0]

    params = _module_params(0)
    opt = fo_optim.MomoAdam(list(params.values()), lr=0.1, lower_bound=0.05,
                            adapt_lower_bound=True)
    tx = fo.momo_adam(lr=0.1, lower_bound=0.05, adapt_lower_bound=True)
    expected = _problem(0)[0]
    state = tx.init(expected)
    for t in range(8):
        def closure(t=t):
            opt.zero_grad()
            loss = loss_of(params, t)
            loss.backward()
            return loss

        loss = opt.step(closure)
        grads, value = torch.func.grad_and_value(loss_of)(expected, t)
        updates, state = tx.update(grads, state, expected, value=value)
        expected = fo.apply_updates(expected, updates)
        torch.testing.assert_close(loss.detach(), value)
    _close(_values(params), expected, "closure", 1e-12)
    with pytest.raises(RuntimeError, match="closure that returns the loss"):
        opt.step()


def test_schedule_free_class_swaps_in_the_flat_layout():
    """The modes need no step of their own: the flat layout stays open to the schedule-free
    classes (equal steps and swaps), and is refused to MoMo's (its step passes the loss)."""
    runs = []
    for flat in (False, True):
        params = _module_params(2)
        opt = fo_optim.ScheduleFreeSGD(list(params.values()), lr=0.1, weight_decay=0.01)
        if flat:
            opt.use_flat()
        _class_steps(opt, params, 2, 0, 5)
        y = _values(params)
        opt.eval()
        runs.append((y, _values(params)))
    (y, x), (y_flat, x_flat) = runs
    _close(y_flat, y, "flat y", 1e-12)
    _close(x_flat, x, "flat x", 1e-12)
    with pytest.raises(TypeError, match="keyword arguments"):
        fo_optim.Momo(list(_module_params(0).values())).use_flat()

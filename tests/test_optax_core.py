"""optax's core algorithms (``aliases.optax_core``, ``aliases.optax_adaptive`` and their blocks)
against their reference formulas, written out plainly below from optax 0.2.x's
``optax/_src/alias.py`` and ``transform.py`` (a loop over steps with torch ops, nothing from the
library): float64 trajectories of 25 steps on three parameter shapes agree to 1e-10 relative,
with non-default arguments. (The formulas were cross-checked by hand against optax itself:
equal to ~1e-16.) Then what the formulas cannot say: the noise's reproducibility and
distribution, and the options' errors."""

from __future__ import annotations

import math

import pytest
import torch

import functional_optim as fo
from functional_optim import _random

F64 = torch.float64
SHAPES = {"w": (4, 3), "b": (5,), "c": (2, 3, 2)}
STEPS = 25


def _start():
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=gen, dtype=F64) for k, s in SHAPES.items()}
    noise = [{k: torch.randn(s, generator=gen, dtype=F64) for k, s in SHAPES.items()}
             for _ in range(STEPS)]
    return params, noise


def _grads(noise, params):
    """Gradients that depend on the parameters (a quadratic plus noise): a trajectory."""
    return {k: noise[k] + 0.5 * params[k] for k in params}


def _values(i):
    return 3.0 + math.sin(i)


def ours(tx, with_value: bool = False):
    params, noise = _start()
    state = tx.init(params)
    out = []
    for i, n in enumerate(noise):
        extra = {"value": _values(i)} if with_value else {}
        u, state = tx.update(_grads(n, params), state, params, **extra)
        params = fo.apply_updates(params, u)
        out.append(params)
    return out


def reference(step, init):
    """``step(p, g, s, t, i) -> (p_new, s)`` per leaf, ``init(p) -> s``; ``t`` from 1."""
    params, noise = _start()
    states = {k: init(p) for k, p in params.items()}
    out = []
    for i, n in enumerate(noise):
        g = _grads(n, params)
        new = {}
        for k in params:
            new[k], states[k] = step(params[k], g[k], states[k], i + 1, i)
        params = new
        out.append(params)
    return out


def reference_tree(step, init):
    """As :func:`reference` for rules that read all leaves at once (a global norm):
    ``step(p, g, s, t, i)`` on dicts."""
    params, noise = _start()
    state = init(params)
    out = []
    for i, n in enumerate(noise):
        params, state = step(params, _grads(n, params), state, i + 1, i)
        out.append(params)
    return out


def assert_same(actual, expected, rtol=1e-10):
    for a, e in zip(actual, expected):
        for k in e:
            scale = float(e[k].abs().max())
            torch.testing.assert_close(a[k], e[k], rtol=rtol, atol=rtol * scale)


def zeros(*n):
    return lambda p: tuple(torch.zeros_like(p) for _ in range(n[0] if n else 1))


def norm(x):
    return torch.sqrt((x * x).sum())


def floored_norm(x, floor):
    return torch.clamp(norm(x), min=floor)


# --------------------------------------------------------------------------------------------
# the reference formulas (optax's), one per block


def adam_direction(g, s, t, b1, b2, eps, eps_root, nesterov=False):
    m, v = s
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    if nesterov:
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
    else:
        m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return m_hat / (torch.sqrt(v_hat + eps_root) + eps), (m, v)


def trust_ratio(u, p, min_norm=0.0, coefficient=1.0, eps=0.0):
    pn, un = floored_norm(p, min_norm), floored_norm(u, min_norm)
    if pn == 0 or un == 0:
        return u
    return u * (coefficient * pn / (un + eps))


def lion_ref(lr, b1, b2, wd, mode="hard", smooth=1.0):
    def step(p, g, m, t, i):
        x = (1 - b1) * g + b1 * m
        if mode == "hard":
            u = torch.sign(x)
        elif mode == "smooth":
            u = torch.tanh(smooth * x)
        else:
            u = torch.where(x.abs() < 1, x, torch.sign(x))
        return p - lr * (u + wd * p), (1 - b2) * g + b2 * m
    return reference(step, torch.zeros_like)


def lamb_ref(lr, b1, b2, eps, eps_root, wd):
    def step(p, g, s, t, i):
        u, s = adam_direction(g, s, t, b1, b2, eps, eps_root)
        return p - lr * trust_ratio(u + wd * p, p), s
    return reference(step, zeros(2))


def lars_ref(lr, wd, coefficient, eps, momentum, nesterov, wd_mask=None, tr_mask=None):
    def step(p, g, b, t, i):
        key = [k for k, s in SHAPES.items() if s == tuple(p.shape)][0]
        if wd_mask is None or wd_mask[key]:
            g = g + wd * p
        if tr_mask is None or tr_mask[key]:
            g = trust_ratio(g, p, 0.0, coefficient, eps)
        g = lr * g
        b = g + momentum * b
        return p - (g + momentum * b if nesterov else b), b
    return reference(step, torch.zeros_like)


def fromage_ref(lr, min_norm):
    mult = 1 / math.sqrt(1 + lr**2)

    def step(p, g, s, t, i):
        return p - lr * mult * trust_ratio(g, p, min_norm) + (mult - 1) * p, s
    return reference(step, lambda p: None)


def belief_ref(lr, b1, b2, eps, eps_root, nesterov=False):
    def step(p, g, s, t, i):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g - m) ** 2 + eps_root
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        return p - lr * m_hat / (torch.sqrt(v / (1 - b2**t)) + eps), (m, v)
    return reference(step, zeros(2))


def yogi_ref(lr, b1, b2, eps, eps_root=0.0, start=1e-6):
    def step(p, g, s, t, i):
        m, v = s
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * torch.sign(v - g * g) * g * g
        u = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps)
        return p - lr * u, (m, v)
    return reference(step, lambda p: (torch.full_like(p, start), torch.full_like(p, start)))


def novograd_ref(lr, b1, b2, eps, eps_root, wd):
    def step(p, g, s, t, i):
        m, v = s
        n2 = (g * g).sum()
        v = n2 if t == 1 else b2 * v + (1 - b2) * n2
        d = g / (torch.sqrt(v + eps_root) + eps) + wd * p
        m = d if t == 1 else b1 * m + d
        return p - lr * m, (m, v)
    return reference(step, lambda p: (None, None))


def adan_ref(lr, b1, b2, b3, eps, eps_root, wd):
    def step(p, g, s, t, i):
        m, v, n, prev = s
        diff = torch.zeros_like(g) if t == 1 else g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + (1 - b2) * diff) ** 2
        u = (m / (1 - b1**t) + (1 - b2) * v / (1 - b2**t)) / (
            torch.sqrt(n / (1 - b3**t) + eps_root) + eps)
        return p - lr * (u + wd * p), (m, v, n, g)
    return reference(step, zeros(4))


def sm3_ref(lr, b1, b2, eps):
    """With one accumulator vector per dimension (the min over the cover; the max over the
    other dimensions), written with explicit broadcasting."""
    weight = 1.0 if b2 == 1 else 1 - b2

    def step(p, g, s, t, i):
        covers, m = s
        if p.ndim < 2:
            nu = weight * g * g + b2 * covers[0]
            covers = [nu]
        else:
            low = covers[0].reshape(-1, *([1] * (p.ndim - 1)))
            for d in range(1, p.ndim):
                shape = [1] * p.ndim
                shape[d] = -1
                low = torch.minimum(low, covers[d].reshape(shape))
            nu = weight * g * g + b2 * low
            covers = [nu.amax(dim=tuple(j for j in range(p.ndim) if j != d))
                      for d in range(p.ndim)]
        scaled = torch.where(nu > 0, g / torch.sqrt(nu + eps), 0.0)
        m = b1 * m + (1 - b1) * scaled
        return p - lr * m, (covers, m)

    def init(p):
        if p.ndim < 2:
            return [torch.zeros_like(p)], torch.zeros_like(p)
        return [torch.zeros(n, dtype=F64) for n in p.shape], torch.zeros_like(p)
    return reference(step, init)


def polyak_ref(scaling, max_lr, f_min, eps, plus=False):
    def step(params, g, s, t, i):
        d = {k: scaling * x for k, x in g.items()}
        sq = sum((x * x).sum() for x in d.values())
        gap = _values(i) - f_min
        if plus:
            gap = max(gap, 0.0)
        rate = 0.0 if sq + eps <= torch.finfo(F64).eps else min(gap / (sq + eps), max_lr)
        return {k: params[k] - rate * d[k] for k in params}, s
    return reference_tree(step, lambda p: None)


def optimistic_ref(lr, alpha, beta):
    def step(p, g, prev, t, i):
        prev = g if t == 1 else prev
        return p - lr * ((alpha + beta) * g - beta * prev), g
    return reference(step, lambda p: None)


def optimistic_adam_ref(lr, b1, b2, eps, eps_root, alpha, beta):
    def step(p, g, s, t, i):
        a, s_adam = adam_direction(g, s[0], t, b1, b2, eps, eps_root, nesterov=True)
        prev = a if t == 1 else s[1]
        return p - lr * ((alpha + beta) * a - beta * prev), (s_adam, a)
    return reference(step, lambda p: (zeros(2)(p), None))


def signum_ref(lr, beta):
    def step(p, g, m, t, i):
        m = beta * m + (1 - beta) * g
        return p - lr * torch.sign(m), m
    return reference(step, torch.zeros_like)


def adamaxw_ref(lr, b1, b2, eps, wd):
    def step(p, g, s, t, i):
        m, n = s
        m = b1 * m + (1 - b1) * g
        n = torch.maximum(b2 * n, g.abs() + eps)
        return p - lr * (m / (1 - b1**t) / n + wd * p), (m, n)
    return reference(step, zeros(2))


def adamw_ref(lr, b1, b2, eps, eps_root, wd, nesterov):
    def step(p, g, s, t, i):
        u, s = adam_direction(g, s, t, b1, b2, eps, eps_root, nesterov)
        return p - lr * (u + wd * p), s
    return reference(step, zeros(2))


def block_ref(lr, scale):
    def step(p, g, s, t, i):
        return p - lr * g * scale(p), s
    return reference(step, lambda p: None)


def lr_chain(block, lr=0.01):
    return fo.chain(block, fo.scale_by_learning_rate(lr))


CASES = {
    "lion": (lambda: fo.lion(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1),
             lambda: lion_ref(1e-3, 0.8, 0.95, 0.1)),
    "lion_defaults": (fo.lion, lambda: lion_ref(1e-4, 0.9, 0.99, 1e-3)),
    "scale_by_lion_smooth": (
        lambda: lr_chain(fo.scale_by_lion((0.8, 0.9), mode="smooth", smooth_beta=2.0)),
        lambda: lion_ref(0.01, 0.8, 0.9, 0.0, "smooth", 2.0)),
    "scale_by_lion_refined": (lambda: lr_chain(fo.scale_by_lion((0.8, 0.9), mode="refined")),
                              lambda: lion_ref(0.01, 0.8, 0.9, 0.0, "refined")),
    "lamb": (lambda: fo.lamb(lr=0.01, betas=(0.8, 0.9), eps=1e-5, eps_root=1e-7,
                             weight_decay=0.1),
             lambda: lamb_ref(0.01, 0.8, 0.9, 1e-5, 1e-7, 0.1)),
    "lars_nesterov": (lambda: fo.lars(lr=0.1, weight_decay=0.01, trust_coefficient=0.02,
                                      eps=1e-3, momentum=0.8, nesterov=True),
                      lambda: lars_ref(0.1, 0.01, 0.02, 1e-3, 0.8, True)),
    "lars_masks": (lambda: fo.lars(lr=0.1, weight_decay=0.01,
                                   weight_decay_mask={"w": True, "b": False, "c": True},
                                   trust_ratio_mask={"w": False, "b": True, "c": True}),
                   lambda: lars_ref(0.1, 0.01, 1e-3, 0.0, 0.9, False,
                                    {"w": True, "b": False, "c": True},
                                    {"w": False, "b": True, "c": True})),
    "lars_masks_false": (lambda: fo.lars(lr=0.1, weight_decay=0.01, weight_decay_mask=False,
                                         trust_ratio_mask=False),
                         lambda: lars_ref(0.1, 0.01, 1e-3, 0.0, 0.9, False,
                                          dict.fromkeys(SHAPES, False),
                                          dict.fromkeys(SHAPES, False))),
    "fromage": (lambda: fo.fromage(lr=0.05, min_norm=1e-4), lambda: fromage_ref(0.05, 1e-4)),
    "adabelief": (lambda: fo.adabelief(lr=0.01, betas=(0.8, 0.95), eps=1e-10, eps_root=1e-12),
                  lambda: belief_ref(0.01, 0.8, 0.95, 1e-10, 1e-12)),
    "adabelief_nesterov": (lambda: fo.adabelief(lr=0.01, nesterov=True),
                           lambda: belief_ref(0.01, 0.9, 0.999, 1e-16, 1e-16, True)),
    "yogi": (lambda: fo.yogi(lr=0.01, betas=(0.8, 0.95), eps=1e-4),
             lambda: yogi_ref(0.01, 0.8, 0.95, 1e-4)),
    "scale_by_yogi": (lambda: lr_chain(fo.scale_by_yogi((0.8, 0.95), 1e-4, 1e-8,
                                                        initial_accumulator_value=0.1)),
                      lambda: yogi_ref(0.01, 0.8, 0.95, 1e-4, 1e-8, 0.1)),
    "novograd": (lambda: fo.novograd(lr=0.01, betas=(0.8, 0.5), eps=1e-5, eps_root=1e-9,
                                     weight_decay=0.05),
                 lambda: novograd_ref(0.01, 0.8, 0.5, 1e-5, 1e-9, 0.05)),
    "adan": (lambda: fo.adan(lr=0.01, betas=(0.9, 0.85, 0.95), eps=1e-7, eps_root=1e-9,
                             weight_decay=0.05),
             lambda: adan_ref(0.01, 0.9, 0.85, 0.95, 1e-7, 1e-9, 0.05)),
    "sm3": (lambda: fo.sm3(lr=0.01, momentum=0.8), lambda: sm3_ref(0.01, 0.8, 1.0, 1e-8)),
    "scale_by_sm3": (lambda: lr_chain(fo.scale_by_sm3((0.8, 0.9), 1e-6)),
                     lambda: sm3_ref(0.01, 0.8, 0.9, 1e-6)),
    "optimistic_gradient_descent": (
        lambda: fo.optimistic_gradient_descent(lr=0.01, alpha=0.7, beta=0.4),
        lambda: optimistic_ref(0.01, 0.7, 0.4)),
    "optimistic_adam": (
        lambda: fo.optimistic_adam(lr=0.01, betas=(0.85, 0.95), eps=1e-6, eps_root=1e-9,
                                   alpha=0.8, beta=0.5),
        lambda: optimistic_adam_ref(0.01, 0.85, 0.95, 1e-6, 1e-9, 0.8, 0.5)),
    "sign_sgd": (lambda: fo.sign_sgd(lr=0.01),
                 lambda: reference(lambda p, g, s, t, i: (p - 0.01 * torch.sign(g), s),
                                   lambda p: None)),
    "signum": (lambda: fo.signum(lr=0.01, momentum=0.8), lambda: signum_ref(0.01, 0.8)),
    "adamaxw": (lambda: fo.adamaxw(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
                lambda: adamaxw_ref(0.01, 0.8, 0.95, 1e-6, 0.1)),
    "nadamw": (lambda: fo.nadamw(lr=0.01, betas=(0.8, 0.95), eps=1e-6, eps_root=1e-9,
                                 weight_decay=0.1),
               lambda: adamw_ref(0.01, 0.8, 0.95, 1e-6, 1e-9, 0.1, True)),
    "nadamw_defaults": (fo.nadamw, lambda: adamw_ref(1e-3, 0.9, 0.999, 1e-8, 0.0, 1e-4, True)),
    "scale_by_trust_ratio": (
        lambda: lr_chain(fo.scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.3,
                                                 eps=1e-3)),
        lambda: block_ref(0.01, None)),
    "scale_by_param_block_norm": (lambda: lr_chain(fo.scale_by_param_block_norm(1.5)),
                                  lambda: block_ref(0.01, lambda p: floored_norm(p, 1.5))),
    "scale_by_param_block_rms": (
        lambda: lr_chain(fo.scale_by_param_block_rms(0.9)),
        lambda: block_ref(0.01, lambda p: torch.clamp(norm(p) / p.numel() ** 0.5, min=0.9))),
}


def _trust_ratio_ref():
    def step(p, g, s, t, i):
        return p - 0.01 * trust_ratio(g, p, 0.5, 0.3, 1e-3), s
    return reference(step, lambda p: None)


CASES["scale_by_trust_ratio"] = (CASES["scale_by_trust_ratio"][0], _trust_ratio_ref)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_equals_the_reference_formula(name):
    make, ref = CASES[name]
    assert_same(ours(make()), ref())


@pytest.mark.parametrize("plus", [False, True], ids=["sps", "sps+"])
def test_polyak_sgd_equals_the_reference_formula(plus):
    tx = (fo.polyak_sgd(lr=0.5, max_lr=3.5, f_min=3.5, eps=1e-3, variant="sps+") if plus
          else fo.polyak_sgd(lr=0.7, max_lr=0.5, f_min=0.3, eps=1e-3))
    expected = polyak_ref(0.5, 3.5, 3.5, 1e-3, True) if plus else polyak_ref(0.7, 0.5, 0.3,
                                                                             1e-3)
    assert_same(ours(tx, with_value=True), expected)


def test_polyak_needs_the_loss():
    tx = fo.polyak_sgd()
    params = {"w": torch.ones(3)}
    with pytest.raises(TypeError, match=r"scale_by_polyak needs the loss: .*value=loss"):
        tx.update({"w": torch.ones(3)}, tx.init(params), params)


def test_noisy_sgd_adds_the_annealed_noise_of_its_stream():
    """u = -lr (g + sqrt(eta / t^gamma) xi_t), xi_t the draw of leaf 0 with the state's key at
    step t (the seed's key, advanced once per step)."""
    eta, gamma = 0.3, 0.6
    tx = fo.noisy_sgd(lr=0.5, eta=eta, gamma=gamma, seed=7)
    params = {"w": torch.zeros(300, 200, dtype=F64)}
    grads = {"w": torch.randn(300, 200, dtype=F64)}
    state = tx.init(params)
    key = _random.key(7)
    for t in (1, 2, 3):
        assert torch.equal(state["noise"].key, key)
        u, state = tx.update(grads, state, params)
        noise = -u["w"] / 0.5 - grads["w"]
        xi = _random.normal(key, 0, grads["w"])
        torch.testing.assert_close(noise, math.sqrt(eta / t**gamma) * xi, rtol=1e-12,
                                   atol=1e-12)
        # a standard normal sample: 60000 draws
        assert abs(float(xi.mean())) < 0.02 and abs(float(xi.var()) - 1) < 0.03
        assert abs(float((xi.abs() < 1).double().mean()) - 0.6827) < 0.01
        key = _random.next_key(key)


def test_noise_is_reproducible_and_seeded():
    params = {"a": torch.zeros(50, dtype=F64), "b": torch.zeros(50, dtype=F64),
              "c": torch.zeros(25, dtype=torch.complex128)}
    grads = {k: torch.zeros_like(v) for k, v in params.items()}

    def draw(seed):
        tx = fo.add_noise(1.0, 0.0, seed=seed)
        u1, state = tx.update(grads, tx.init(params), params)
        u2, _ = tx.update(grads, state, params)
        return u1, u2

    first, again, other = draw(0), draw(0), draw(1)
    for x, y in zip(first, again):
        assert all(torch.equal(x[k], y[k]) for k in params)
    assert not torch.equal(first[0]["a"], first[0]["b"])  # each leaf its own stream
    assert not torch.equal(first[0]["a"], first[1]["a"])  # a new draw each step
    assert not torch.equal(first[0]["a"], other[0]["a"])  # another seed, other noise
    c = torch.view_as_real(first[0]["c"])  # independent real and imaginary parts
    assert not torch.equal(c[:, 0], c[:, 1]) and bool((c != 0).all())


def test_noise_under_vmap_follows_each_members_key():
    tx = fo.add_noise(1.0, 0.0)
    params = {"w": torch.zeros(6, dtype=F64)}
    state = tx.init(params)
    keys = torch.func.vmap(_random.key)(torch.arange(3))  # three members, three streams

    def one(key):
        return tx.update(params, state._replace(key=key), params)[0]["w"]

    batched = torch.func.vmap(one)(keys)
    for i, key in enumerate(keys):
        assert torch.equal(batched[i], one(key))
    assert not torch.equal(batched[0], batched[1])


def test_sm3_keeps_a_sublinear_cover_and_takes_scalars():
    tx = fo.sm3(lr=0.1)
    params = {"m": torch.zeros(30, 40), "t": torch.zeros(2, 3, 4), "s": torch.zeros(())}
    state = tx.init(params)
    covers = state["sm3"].accumulators
    assert covers["m"].shape == (70,) and covers["t"].shape == (9,) and covers["s"].shape == ()
    u, _ = tx.update({k: torch.ones_like(v) for k, v in params.items()}, state, params)
    assert torch.isfinite(u["s"]) and u["s"] < 0


@pytest.mark.parametrize("make, block", [
    (lambda: fo.lion(mu_dtype=torch.bfloat16), "lion"),
    (lambda: fo.nadamw(mu_dtype=torch.bfloat16), "adam"),
    (lambda: fo.optimistic_adam(mu_dtype=torch.bfloat16), "adam"),
], ids=["lion", "nadamw", "optimistic_adam"])
def test_low_precision_momentum(make, block):
    tx = make()
    params = {"w": torch.randn(4, 3), "z": torch.randn(2, dtype=torch.complex64)}
    state = tx.init(params)
    assert state[block].mu["w"].dtype == torch.bfloat16
    assert state[block].mu["z"].is_complex()
    grads = {"w": torch.randn(4, 3), "z": torch.randn(2, dtype=torch.complex64)}
    u, state = tx.update(grads, state, params)
    assert u["w"].dtype == torch.float32 and state[block].mu["w"].dtype == torch.bfloat16


def test_lion_momentum_in_mu_dtype_follows_optax():
    """optax's Lion with ``mu_dtype``: each product with the stored momentum in ``mu_dtype``,
    the sums in the update's dtype, the new momentum rounded to ``mu_dtype`` (bit for bit)."""
    b1, b2 = 0.8, 0.95
    tx = fo.scale_by_lion((b1, b2), mu_dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    params = {"w": torch.zeros(1000, dtype=F64)}
    state, m = tx.init(params), torch.zeros(1000, dtype=torch.float32)
    for _ in range(10):
        g = torch.randn(1000, generator=gen, dtype=F64)
        u, state = tx.update({"w": g}, state, params)
        x = (b1 * m).to(F64) + (1 - b1) * g
        m = ((b2 * m).to(F64) + (1 - b2) * g).to(torch.float32)
        assert torch.equal(u["w"], torch.sign(x)) and torch.equal(state.mu["w"], m)

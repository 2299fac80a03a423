"""optax's variants (``aliases.optax_variants`` and the block options they use) against optax's
formulas, written out plainly here as loops of steps with torch ops (nothing from the library),
following optax 0.2.8's ``alias.py``, ``transform.py``, ``factorized.py`` and
``transforms/_accumulation.py``: float64 trajectories over 25 steps on a few shapes, to 1e-10.

(These formulas were also checked by hand against optax itself, same inputs, float64 with
``jax_enable_x64``: every alias and option here agrees with it to 1e-11 or better.)
"""

from __future__ import annotations

import math

import pytest
import torch

import functional_optim as fo
from functional_optim._execute import multi_tensor

F64 = torch.float64
# (5, 3): its largest dimension first, so that optax's Adafactor factors it along dimension 0
SHAPES = {"w": (5, 3), "b": (4,), "s": (), "t": (2, 3, 4)}
STEPS = 25


def _tree(seed: int, scale: float = 1.0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=gen, dtype=F64) for k, s in SHAPES.items()}


def _grads(steps: int = STEPS) -> list[dict]:
    return [_tree(100 + i) for i in range(steps)]


def _trajectory(tx: fo.Transform, grads: list, params: dict | None = None) -> list[dict]:
    """The parameters after each step of ``tx`` (applied to them)."""
    params = dict(params if params is not None else _tree(0))
    state, out = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        params = fo.apply_updates(params, u)
        out.append(params)
    return out


def _reference(step, grads: list, params: dict | None = None, **state) -> list[dict]:
    """``step(p, g, t, st) -> new p`` run leaf by leaf (``t`` from 1; ``st`` the leaf's own
    dict of running values, empty at first)."""
    params = dict(params if params is not None else _tree(0))
    states = {k: dict(state) for k in params}
    out = []
    for t, g in enumerate(grads, start=1):
        params = {k: step(params[k], g[k], t, states[k]) for k in params}
        out.append(params)
    return out


def _assert_close(actual: list, expected: list, rtol: float = 1e-10) -> None:
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        for k in e:
            torch.testing.assert_close(a[k], e[k], rtol=rtol, atol=rtol * float(e[k].abs().max()),
                                       msg=lambda m, i=i, k=k: f"step {i + 1}, leaf {k}: {m}")


# --------------------------------------------------------------------------------------------
# optax.scale_by_adam (nesterov) and scale_by_amsgrad


def _adam_step(lr, b1, b2, eps, eps_root=0.0, *, nesterov=False, amsgrad=False, mu=True,
               nu=True, wd=0.0, decoupled=True, mu_dtype=None):
    def step(p, g, t, st):
        if wd and not decoupled:
            g = g + wd * p
        m = st.get("m", torch.zeros_like(p, dtype=mu_dtype or p.dtype))
        decayed = (b1 * m).to(p.dtype)  # (optax: the product in mu_dtype)
        m = (1 - b1) * g + decayed
        v = (1 - b2) * g * g + b2 * st.get("v", torch.zeros_like(p))
        c1 = (1 - b1**t) if mu else 1.0
        c1_next = (1 - b1 ** (t + 1)) if mu else 1.0
        c2 = (1 - b2**t) if nu else 1.0
        m_hat = b1 * m / c1_next + (1 - b1) * g / c1 if nesterov else m / c1
        v_hat = v / c2
        if amsgrad:  # optax: the maximum of the corrected second moment
            v_hat = torch.maximum(st.get("v_max", torch.zeros_like(p)), v_hat)
            st["v_max"] = v_hat
        u = m_hat / (torch.sqrt(v_hat + eps_root) + eps)
        st["m"], st["v"] = m.to(mu_dtype or p.dtype), v
        if wd and decoupled:
            u = u + wd * p
        return p - lr * u

    return step


@pytest.mark.parametrize("decoupled", [True, False], ids=["nadamw", "nadam_l2"])
def test_optax_nadam(decoupled):
    grads = _grads()
    tx = fo.optax_nadam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, eps_root=1e-5, weight_decay=0.1,
                        decoupled_weight_decay=decoupled)
    ref = _adam_step(0.01, 0.8, 0.99, 1e-6, 1e-5, nesterov=True, wd=0.1, decoupled=decoupled)
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


@pytest.mark.parametrize("mu, nu", [(True, True), (False, True), (True, False),
                                    (False, False)])
def test_optax_amsgrad(mu, nu):
    grads = _grads()
    tx = fo.optax_amsgrad(lr=0.01, betas=(0.8, 0.99), eps=1e-6, eps_root=1e-5,
                          bias_correction_mu=mu, bias_correction_nu=nu)
    ref = _adam_step(0.01, 0.8, 0.99, 1e-6, 1e-5, amsgrad=True, mu=mu, nu=nu)
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


def test_scale_by_adam_nesterov_uncorrected_first_moment():
    """Dozat's momentum without the first moment's correction: :math:`\\beta_1 m_t +
    (1-\\beta_1) g_t`."""
    grads = _grads()
    tx = fo.chain(fo.scale_by_adam((0.8, 0.99), 1e-6, 1e-5, nesterov=True,
                                   bias_correction="second_moment"),
                  fo.scale_by_learning_rate(0.01))
    ref = _adam_step(0.01, 0.8, 0.99, 1e-6, 1e-5, nesterov=True, mu=False)
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


def test_scale_by_adam_nesterov_step_size_correction():
    """Dozat's momentum under the "efficient version" (``ε`` on the uncorrected root):
    :math:`\\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t}\\,\\frac{\\beta_1 m_t
    \\frac{1-\\beta_1^t}{1-\\beta_1^{t+1}} + (1-\\beta_1) g_t}{\\sqrt{v_t + \\epsilon_{root}}
    + \\epsilon}`."""
    grads = _grads()
    b1, b2, eps, eps_root, lr = 0.8, 0.99, 1e-6, 1e-5, 0.01

    def ref(p, g, t, st):
        m = (1 - b1) * g + b1 * st.get("m", torch.zeros_like(p))
        v = (1 - b2) * g * g + b2 * st.get("v", torch.zeros_like(p))
        st["m"], st["v"] = m, v
        num = b1 * m * (1 - b1**t) / (1 - b1 ** (t + 1)) + (1 - b1) * g
        u = num / (torch.sqrt(v + eps_root) + eps) * math.sqrt(1 - b2**t) / (1 - b1**t)
        return p - lr * u

    tx = fo.chain(fo.scale_by_adam((b1, b2), eps, eps_root, nesterov=True,
                                   bias_correction="step_size"),
                  fo.scale_by_learning_rate(lr))
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


@pytest.mark.parametrize("nesterov", [False, True])
def test_corrected_first_moment(nesterov):
    """The public helper: :math:`m_t / (1-\\beta_1^t)`, or Dozat's :math:`\\beta_1 m_t /
    (1-\\beta_1^{t+1}) + (1-\\beta_1) g_t / (1-\\beta_1^t)`; an integer step count is taken in
    the update's dtype."""
    m, g = _tree(1)["w"], _tree(2)["w"]
    b1, t = 0.8, 3
    expected = (b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t) if nesterov
                else m / (1 - b1**t))
    for step in (t, torch.tensor(t), torch.tensor(float(t), dtype=F64)):
        actual = fo.transforms.corrected_first_moment(m, g, b1, step, nesterov)
        assert actual.dtype == F64
        torch.testing.assert_close(actual, expected, rtol=1e-14, atol=0)


def test_mu_dtype_keeps_the_first_moment_in_its_dtype():
    """optax's ``mu_dtype``: :math:`\\beta_1 m_{t-1}` in float32, the update from the unrounded
    :math:`m_t`, the state rounded; the multi-tensor path gives the same numbers."""
    grads = _grads()
    tx = fo.optax_nadam(lr=0.01, mu_dtype=torch.float32)
    ref = _adam_step(0.01, 0.9, 0.999, 1e-8, nesterov=True, mu_dtype=torch.float32)
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))
    params = _tree(0)
    state = tx.init(params)
    assert state["adam"].mu["w"].dtype == torch.float32 and state["adam"].nu["w"].dtype == F64
    with torch.no_grad(), multi_tensor(True):
        multi = _trajectory(tx, grads)
    _assert_close(multi, _trajectory(tx, grads), rtol=0)


# --------------------------------------------------------------------------------------------
# optax.sgd (trace with accumulator_dtype), optax.scale_by_rss, scale_by_rms/scale_by_stddev


def test_trace_accumulator_dtype():
    """optax's ``trace(decay, nesterov, accumulator_dtype)``: :math:`b_t = g_t + \\mu b_{t-1}`
    with the product in the accumulator's dtype, the Nesterov output from the unrounded
    :math:`b_t`."""
    grads = _grads()

    def ref(p, g, t, st):
        b = g + (0.9 * st.get("b", torch.zeros_like(p, dtype=torch.float32))).to(F64)
        st["b"] = b.to(torch.float32)
        return p - 0.1 * (g + 0.9 * b)

    tx = fo.chain(fo.trace(0.9, nesterov=True, accumulator_dtype=torch.float32),
                  fo.scale_by_learning_rate(0.1))
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))
    with torch.no_grad(), multi_tensor(True):
        multi = _trajectory(tx, grads)
    _assert_close(multi, _trajectory(tx, grads), rtol=0)


@pytest.mark.parametrize("init, eps", [(0.1, 1e-7), (0.0, 0.0)], ids=["default", "zeros"])
def test_optax_adagrad(init, eps):
    """:math:`s_t = s_{t-1} + g_t^2`, :math:`u = g / \\sqrt{s_t + \\epsilon}` where
    :math:`s_t > 0`, else 0 (a leaf whose gradients are all 0 so far, with ``eps`` 0)."""
    grads = _grads()
    for g in grads[:3]:
        g["b"] = torch.zeros_like(g["b"])

    def ref(p, g, t, st):
        s = st.get("s", torch.full_like(p, init)) + g * g
        st["s"] = s
        u = torch.where(s > 0, g / torch.sqrt(torch.where(s > 0, s + eps, 1.0)), 0.0)
        return p - 0.1 * u

    tx = fo.optax_adagrad(lr=0.1, initial_accumulator_value=init, eps=eps)
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


def test_optax_adagrad_sparse_gradients_as_dense():
    """A sparse gradient (rows of an embedding) steps as its dense equivalent: the rows it
    leaves out have :math:`u = 0` either way (:math:`0 / \\sqrt{s + \\epsilon}`)."""
    gen = torch.Generator().manual_seed(3)
    params = {"e": torch.randn(6, 3, generator=gen, dtype=F64)}
    sparse = []
    for _ in range(5):
        index = torch.randint(0, 6, (1, 4), generator=gen)  # (repeated rows are summed)
        values = torch.randn(4, 3, generator=gen, dtype=F64)
        sparse.append({"e": torch.sparse_coo_tensor(index, values, (6, 3), check_invariants=True)})
    dense = [{"e": g["e"].to_dense()} for g in sparse]
    tx = fo.optax_adagrad(lr=0.1, initial_accumulator_value=0.0, eps=1e-3)
    _assert_close(_trajectory(tx, sparse, params), _trajectory(tx, dense, params), rtol=1e-14)


@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("eps_in_sqrt, bias_correction, momentum, nesterov", [
    (True, False, None, False), (False, True, 0.9, False), (True, True, 0.8, True)])
def test_optax_rmsprop(centered, eps_in_sqrt, bias_correction, momentum, nesterov):
    """optax's rmsprop: the moments from ``initial_scale`` (the mean from 0), optionally
    corrected, ``ε`` inside or outside the root, then ``-lr``, then the trace."""
    grads = _grads()
    decay, eps, lr = 0.8, 1e-4, 0.01

    def ref(p, g, t, st):
        v = (1 - decay) * g * g + decay * st.get("v", torch.full_like(p, 0.2))
        m = (1 - decay) * g + decay * st.get("m", torch.zeros_like(p))
        st["v"], st["m"] = v, m
        c = 1 - decay**t if bias_correction else 1.0
        second = v / c - (m / c) ** 2 if centered else v / c
        u = g / torch.sqrt(second + eps) if eps_in_sqrt else g / (torch.sqrt(second) + eps)
        d = -lr * u
        if momentum is not None:
            b = d + momentum * st.get("b", torch.zeros_like(p))
            st["b"] = b
            d = d + momentum * b if nesterov else b
        return p + d

    tx = fo.optax_rmsprop(lr=lr, alpha=decay, eps=eps, momentum=momentum, centered=centered,
                          nesterov=nesterov, eps_in_sqrt=eps_in_sqrt,
                          bias_correction=bias_correction, initial_scale=0.2)
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


# --------------------------------------------------------------------------------------------
# optax.scale_by_radam, scale_by_rprop


@pytest.mark.parametrize("threshold, nesterov", [(5.0, False), (4.5, True)])
def test_optax_radam(threshold, nesterov):
    """:math:`\\rho_t = \\rho_\\infty - 2t\\beta_2^t/(1-\\beta_2^t)`; where
    :math:`\\rho_t \\ge \\tau`, :math:`r_t \\hat m_t / (\\sqrt{\\hat v_t + \\epsilon_{root}} +
    \\epsilon)`, else :math:`\\hat m_t`."""
    grads = _grads()
    b1, b2, eps, eps_root, lr = 0.9, 0.99, 1e-6, 1e-5, 0.01
    rho_inf = 2 / (1 - b2) - 1

    def ref(p, g, t, st):
        m = (1 - b1) * g + b1 * st.get("m", torch.zeros_like(p))
        v = (1 - b2) * g * g + b2 * st.get("v", torch.zeros_like(p))
        st["m"], st["v"] = m, v
        m_hat = (b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t) if nesterov
                 else m / (1 - b1**t))
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho < threshold:
            return p - lr * m_hat
        r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return p - lr * r * m_hat / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps)

    tx = fo.optax_radam(lr=lr, betas=(b1, b2), eps=eps, eps_root=eps_root, threshold=threshold,
                        nesterov=nesterov)
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


def test_scale_by_radam_torch_variant_eps_root_nesterov():
    """torch's RAdam (``ε`` on :math:`\\sqrt{v_t}`, switch at :math:`\\rho_t > 5`) with
    ``eps_root`` inside that root and Dozat's first moment."""
    grads = _grads()
    b1, b2, eps, eps_root, lr = 0.9, 0.99, 1e-6, 1e-5, 0.01
    rho_inf = 2 / (1 - b2) - 1

    def ref(p, g, t, st):
        m = (1 - b1) * g + b1 * st.get("m", torch.zeros_like(p))
        v = (1 - b2) * g * g + b2 * st.get("v", torch.zeros_like(p))
        st["m"], st["v"] = m, v
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho <= 5:
            return p - lr * m_hat
        r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return p - lr * r * m_hat * math.sqrt(1 - b2**t) / (torch.sqrt(v + eps_root) + eps)

    tx = fo.chain(fo.scale_by_radam((b1, b2), eps, eps_root=eps_root, nesterov=True),
                  fo.scale_by_learning_rate(lr))
    _assert_close(_trajectory(tx, grads), _reference(ref, grads))


def test_optax_rprop():
    """optax 0.2.8: :math:`c = g_t d_{t-1}`; the step size moves (clipped) where
    :math:`c \\ne 0`; :math:`d_t = \\mathrm{sign}(g_t) s_t` (0 where :math:`c < 0`); the update
    is :math:`-d_{t-1}` (0 where :math:`c < 0`). An initial step size above the bound stays
    until it moves."""
    grads = _grads()
    for g in grads[4:9]:  # some steps of agreeing signs
        g["w"] = g["w"].abs()
    eta_minus, eta_plus, s_min, s_max, lr = 0.4, 1.3, 1e-3, 0.08, 0.1

    def ref(p, g, t, st):
        d_prev = st.get("d", torch.zeros_like(p))
        size = st.get("size", torch.full_like(p, lr))
        c = g * d_prev
        factor = torch.where(c > 0, torch.tensor(eta_plus, dtype=F64), eta_minus)  # (float64)
        moved = torch.clamp(size * factor, s_min, s_max)
        size = torch.where(c == 0, size, moved)
        st["d"] = torch.where(c < 0, 0.0, size * torch.sign(g))
        st["size"] = size
        return p - torch.where(c < 0, 0.0, d_prev)

    tx = fo.optax_rprop(lr=lr, etas=(eta_minus, eta_plus), step_sizes=(s_min, s_max))
    _assert_close(_trajectory(tx, grads), _reference(ref, grads), rtol=0)


# --------------------------------------------------------------------------------------------
# optax.adafactor: factorized.scale_by_factored_rms → clip_by_block_rms → lr →
# scale_by_param_block_rms → ema(debias=False) → add_decayed_weights → scale(-1)


def _adafactor_step(lr=1.0, min_dim=128, decay_rate=0.8, offset=0, mps=True, clip=1.0,
                    momentum=None, momentum_dtype=torch.float32, wd=0.0, eps=1e-30,
                    factored=True, exact_decay=False):
    def step(p, g, t, st):
        if exact_decay:  # the formula in float64 (for derivatives)
            beta = 1 - (t - offset) ** -decay_rate
        else:  # optax: t and the exponent in float32
            t32 = torch.tensor(float(t - offset), dtype=torch.float32)
            beta = float(1 - t32 ** torch.tensor(-decay_rate, dtype=torch.float32))
        sq = g * g + eps
        dims = [i for i in sorted(range(p.ndim), key=lambda i: p.shape[i])][-2:]
        if factored and p.ndim >= 2 and p.shape[dims[0]] >= min_dim:
            d1, d0 = dims
            row = beta * st.get("row", 0.0) + (1 - beta) * sq.mean(d0)
            col = beta * st.get("col", 0.0) + (1 - beta) * sq.mean(d1)
            st["row"], st["col"] = row, col
            row_mean = row.mean(d1 - 1 if d1 > d0 else d1, keepdim=True)
            u = g * ((row / row_mean) ** -0.5).unsqueeze(d0) * (col ** -0.5).unsqueeze(d1)
        else:
            v = beta * st.get("v", 0.0) + (1 - beta) * sq
            st["v"] = v
            u = g * v**-0.5
        if clip is not None:
            u = u / torch.clamp(torch.sqrt((u * u).mean()) / clip, min=1.0)
        u = u * lr
        if mps:
            u = u * torch.clamp(torch.sqrt((p * p).mean()), min=1e-3)
        if momentum is not None:
            m = st.get("m", torch.zeros_like(p, dtype=momentum_dtype or p.dtype))
            u = (1 - momentum) * u + (momentum * m).to(p.dtype)
            st["m"] = u.to(momentum_dtype or p.dtype)
        return p - (u + wd * p)

    return step


@pytest.mark.parametrize("options", [
    {},
    {"min_dim": 3},
    {"lr": 0.05, "min_dim": 3, "decay_rate": 0.7, "offset": -2, "mps": False, "clip": 1.5,
     "momentum": 0.9, "momentum_dtype": None, "wd": 0.01, "eps": 1e-20},
    {"lr": 0.05, "min_dim": 2, "clip": None, "momentum": 0.9},
    {"lr": 0.05, "min_dim": 1, "factored": False},
], ids=["defaults", "factored", "all_options", "float32_momentum_no_clip", "unfactored"])
def test_optax_adafactor(options):
    grads = _grads()
    if "eps" in options:  # squares of 1e-10 next to eps: it counts
        grads = [{k: v * 1e-10 for k, v in g.items()} for g in grads]
    names = {"min_dim": "min_dim_size_to_factor", "offset": "decay_offset",
             "mps": "multiply_by_parameter_scale", "clip": "clipping_threshold",
             "wd": "weight_decay"}
    tx = fo.optax_adafactor(**{names.get(k, k): v for k, v in options.items()})
    _assert_close(_trajectory(tx, grads), _reference(_adafactor_step(**options), grads))
    if options.get("momentum_dtype", torch.float32) is torch.float32 and "momentum" in options:
        with torch.no_grad(), multi_tensor(True):
            multi = _trajectory(tx, grads)
        _assert_close(multi, _trajectory(tx, grads), rtol=0)


@pytest.mark.parametrize("variant", ["torch", "huggingface"])
def test_factoring_options_of_the_other_variants(variant):
    """``factored=False`` keeps full second moments: a matrix steps as its flattened vector
    (elementwise moments; the RMS of the parameter and of the update are over all entries);
    ``min_dim_size_to_factor`` above a leaf's factored dimensions is ``factored=False`` for it;
    ``d=None`` (no clipping) is an unreachable threshold."""
    grads = _grads()
    params = _tree(0)

    def make(**options):
        return fo.scale_by_factored_rms(0.05, weight_decay=0.01, variant=variant, **options)

    unfactored = _trajectory(make(factored=False), grads, params)
    flat = _trajectory(make(), [{k: v.reshape(-1) for k, v in g.items()} for g in grads],
                       {k: v.reshape(-1) for k, v in params.items()})
    _assert_close(unfactored, [{k: v.reshape(SHAPES[k]) for k, v in p.items()} for p in flat],
                  rtol=1e-13)
    _assert_close(_trajectory(make(min_dim_size_to_factor=4), grads, params), unfactored, rtol=0)
    _assert_close(_trajectory(make(min_dim_size_to_factor=3), grads, params),
                  _trajectory(make(), grads, params), rtol=0)
    _assert_close(_trajectory(make(d=None), grads, params),
                  _trajectory(make(d=1e30), grads, params), rtol=0)


def test_optax_adafactor_decay_derivatives_are_the_exact_formulas():
    """The float32 decay's values with the float64 formula's derivatives: meta-gradients in
    ``decay_rate`` and ``decay_offset`` match the float64 reference's (to float32's rounding of
    the values they are taken at)."""
    grads = _grads(8)
    params = _tree(0)
    weights = [_tree(200 + i) for i in range(len(grads))]

    def loss(trajectory):
        return sum((p[k] * w[k]).sum() for p, w in zip(trajectory, weights) for k in p)

    tx = fo.optax_adafactor(lr=0.05, min_dim_size_to_factor=3, momentum=0.9,
                            momentum_dtype=None)

    def library(decay_rate, decay_offset):
        h = {**tx.hparams, "decay_rate": decay_rate, "decay_offset": decay_offset}
        p, state, out = dict(params), tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, p, h)
            p = fo.apply_updates(p, u)
            out.append(p)
        return loss(out)

    point = (torch.tensor(0.8, dtype=F64), torch.tensor(-1.5, dtype=F64))
    analytic = torch.func.grad(library, argnums=(0, 1))(*point)
    for i, a in enumerate(analytic):
        x = point[i].clone().requires_grad_(True)
        decay_rate, offset = (x, point[1]) if i == 0 else (point[0], x)
        step = _adafactor_step(0.05, 3, decay_rate, offset, momentum=0.9, momentum_dtype=None,
                               exact_decay=True)
        (expected,) = torch.autograd.grad(loss(_reference(step, grads, params)), x)
        torch.testing.assert_close(a, expected, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# construction errors


@pytest.mark.parametrize("make, message", [
    (lambda: fo.scale_by_radam(variant="keras"), r"variant must be one of \('torch', 'optax'\)"),
    (lambda: fo.scale_by_rprop(variant="jax"), r"variant must be one of"),
    (lambda: fo.scale_by_factored_rms(decay_offset=3.0),
     r"decay_offset is optax's \(variant='optax'\), got 3.0 with variant='torch'"),
    (lambda: fo.scale_by_factored_rms(variant="optax", min_dim_size_to_factor=-1),
     r"min_dim_size_to_factor must be an int >= 0, got -1"),
    (lambda: fo.scale_by_adam(mu_dtype=torch.int32),
     r"mu_dtype must be None or a floating dtype, got torch.int32"),
    (lambda: fo.trace(accumulator_dtype="float32"), r"accumulator_dtype must be None or"),
    (lambda: fo.scale_by_rms(initial_scale=torch.tensor(1.0)), r"initial_scale is read at init"),
    (lambda: fo.optax_rmsprop(nesterov=True), r"nesterov=True needs a momentum"),
    (lambda: fo.scale_by_adam(bias_correction="mu"), r"bias_correction must be one of"),
    (lambda: fo.scale_by_adam(amsgrad_corrected=True), r"amsgrad_corrected=True needs amsgrad"),
    (lambda: fo.scale_by_adam(amsgrad=True, amsgrad_corrected=True, bias_correction="step_size"),
     r"bias_correction='step_size' does not form"),
])
def test_construction_errors(make, message):
    with pytest.raises(fo.HParamError, match=message):
        make()

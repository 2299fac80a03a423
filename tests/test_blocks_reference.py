"""Each building block against its formula, written out plainly with torch ops in this file (a
loop of steps; nothing from the library's internals), or against the torch function it mirrors.
"""

from __future__ import annotations

import itertools
import math

import optree
import pytest
import torch
from tolerance import UPDATE_OPS, assert_close_ulps, ulp_budget

import functional_optim as fo

SHAPES = {"weight": (4, 3), "bias": (3,), "scale": ()}
STEPS = 30


def _tree(seed: int, dtype=torch.float64, scale: float = 1.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=gen, dtype=dtype) for k, s in SHAPES.items()}


def _grads(dtype=torch.float64, steps: int = STEPS, seed: int = 100) -> list[dict]:
    out = [_tree(seed + i, dtype) for i in range(steps)]
    # exact zeros in places (a second moment that is exactly zero, a zero norm at step 0)
    for i in (0, 1, 7):
        out[i]["bias"] = out[i]["bias"].clone()
        out[i]["bias"][0] = 0
    out[0]["scale"] = torch.zeros((), dtype=dtype)
    return out


def _close(actual, expected, rtol: float = 1e-12, atol: float = 1e-14, where: str = ""):
    a_leaves, a_spec = optree.tree_flatten(actual, none_is_leaf=True)
    e_leaves, e_spec = optree.tree_flatten(expected, none_is_leaf=True)
    assert a_spec == e_spec, (where, a_spec, e_spec)
    for a, e in zip(a_leaves, e_leaves, strict=True):
        if e is None:
            assert a is None, where
            continue
        assert a.dtype == e.dtype, (where, a.dtype, e.dtype)
        assert a.shape == e.shape, (where, a.shape, e.shape)
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")


def _run(tx: fo.Transform, grads: list, params=None, hparams=None) -> tuple[list, object]:
    """The update at every step and the final state (params fixed)."""
    state = tx.init(params if params is not None else grads[0])
    outs = []
    for g in grads:
        u, state = tx.update(g, state, params, hparams)
        outs.append(u)
    return outs, state


# --------------------------------------------------------------------------------------------
# scale_by_adam: Kingma & Ba (2015), Algorithm 1 (+ eps_root inside the root, + AMSGrad as
# torch.optim.Adam computes it: the running max of the *raw* second moment, then bias-corrected).


def _adam_reference(grads, b1, b2, eps, eps_root, amsgrad):
    m = {k: torch.zeros_like(v) for k, v in grads[0].items()}
    v = {k: torch.zeros_like(x) for k, x in grads[0].items()}
    vmax = {k: torch.zeros_like(x) for k, x in grads[0].items()}
    outs = []
    for t, g in enumerate(grads, start=1):
        u = {}
        for k in g:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            vmax[k] = torch.maximum(vmax[k], v[k])
            m_hat = m[k] / (1 - b1**t)
            v_hat = (vmax[k] if amsgrad else v[k]) / (1 - b2**t)
            u[k] = m_hat / (torch.sqrt(v_hat + eps_root) + eps)
        outs.append(u)
    return outs, m, v, vmax


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("eps_root", [0.0, 1e-8])
@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3)])
def test_scale_by_adam(betas, eps, eps_root, amsgrad):
    grads = _grads()
    outs, state = _run(fo.scale_by_adam(betas, eps, eps_root, amsgrad), grads)
    ref, m, v, vmax = _adam_reference(grads, *betas, eps, eps_root, amsgrad)
    for t, (u, r) in enumerate(zip(outs, ref, strict=True)):
        _close(u, r, where=f"step {t}")
    _close(state.mu, m, where="mu")
    _close(state.nu, v, where="nu")
    if amsgrad:
        _close(state.nu_max, vmax, where="nu_max")
    for count in optree.tree_leaves(state.step):
        assert int(count) == len(grads)


def test_scale_by_adam_hparams_override_equals_construction():
    grads = _grads()
    built, _ = _run(fo.scale_by_adam((0.6, 0.95), 1e-4, 1e-6), grads)
    given, _ = _run(fo.scale_by_adam(), grads,
                    hparams={"betas": (0.6, 0.95), "eps": 1e-4, "eps_root": 1e-6})
    tensors, _ = _run(fo.scale_by_adam(), grads,
                      hparams={"betas": (torch.tensor(0.6, dtype=torch.float64),
                                         torch.tensor(0.95, dtype=torch.float64)),
                               "eps": torch.tensor(1e-4, dtype=torch.float64),
                               "eps_root": torch.tensor(1e-6, dtype=torch.float64)})
    for a, b, c in zip(built, given, tensors, strict=True):
        _close(b, a, rtol=0, atol=0)
        _close(c, a, rtol=1e-13, atol=1e-15)


def test_scale_by_adam_complex_is_pairs_of_reals():
    gen = torch.Generator().manual_seed(3)
    grads = [{"z": torch.randn(5, dtype=torch.complex128, generator=gen)} for _ in range(10)]
    outs, _ = _run(fo.scale_by_adam(amsgrad=True), grads)
    real = [{"z": torch.view_as_real(g["z"])} for g in grads]
    ref, *_ = _adam_reference(real, 0.9, 0.999, 1e-8, 0.0, True)
    for u, r in zip(outs, ref, strict=True):
        assert u["z"].dtype == torch.complex128
        _close({"z": torch.view_as_real(u["z"])}, r)


def test_scale_by_adam_float32_in_float32():
    grads = _grads(torch.float32)
    outs, state = _run(fo.scale_by_adam(), grads)
    ref, *_ = _adam_reference(_grads(torch.float64), 0.9, 0.999, 1e-8, 0.0, False)
    peak = {k: 0.0 for k in ref[0]}
    for t, (u, r) in enumerate(zip(outs, ref, strict=True)):
        for k in u:
            assert u[k].dtype == torch.float32
            peak[k] = max(peak[k], r[k].abs().max().item())
            # against float64 only our side rounds: 1 ulp of the update's peak so far per op, for
            # the t + 1 steps the moments hold; the gradient's rounding to float32 and the 23 ops
            # of scale_by_adam (m lerp 4, v 6, bias corrections 7, m/bc1, v/bc2, sqrt, + eps 2,
            # the division)
            assert_close_ulps(u[k], r[k], scale=peak[k], where=f"step {t} {k}",
                              ulps=ulp_budget(t + 1, 24, ulps_per_op=1))
    assert all(x.dtype == torch.float32 for x in optree.tree_leaves(state.mu))


# --------------------------------------------------------------------------------------------
# scale_by_rms (RMSprop; Hinton 2012; centered: Graves 2013), eps outside the root like torch.


def _rms_reference(grads, alpha, eps, centered):
    v = {k: torch.zeros_like(x) for k, x in grads[0].items()}
    m = {k: torch.zeros_like(x) for k, x in grads[0].items()}
    outs = []
    for g in grads:
        u = {}
        for k in g:
            v[k] = alpha * v[k] + (1 - alpha) * g[k] ** 2
            if centered:
                m[k] = alpha * m[k] + (1 - alpha) * g[k]
                u[k] = g[k] / (torch.sqrt(v[k] - m[k] ** 2) + eps)
            else:
                u[k] = g[k] / (torch.sqrt(v[k]) + eps)
        outs.append(u)
    return outs, v, m


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("alpha,eps", [(0.99, 1e-8), (0.7, 1e-3)])
def test_scale_by_rms(alpha, eps, centered):
    grads = _grads()
    outs, state = _run(fo.scale_by_rms(alpha, eps, centered), grads)
    ref, v, m = _rms_reference(grads, alpha, eps, centered)
    for t, (u, r) in enumerate(zip(outs, ref, strict=True)):
        _close(u, r, rtol=1e-11, where=f"step {t}")
    _close(state.nu, v, where="nu")
    if centered:
        _close(state.mu, m, where="mu")


RMSPROP_OPTIONS = [
    dict(lr=lr, centered=c, momentum=mom, weight_decay=wd, maximize=mx)
    for lr, c, mom, wd, mx in itertools.product(
        (1.0, 0.01), (False, True), (0.0, 0.9), (0.0, 0.1), (False, True))
]


def _rmsprop_chain(lr, centered, momentum, weight_decay, maximize, alpha, eps):
    blocks = []
    if maximize:
        blocks.append(fo.scale(-1.0))
    if weight_decay:
        blocks.append(fo.add_decayed_weights(weight_decay))
    blocks.append(fo.scale_by_rms(alpha, eps, centered))
    if momentum:
        # torch's buffer starts at zero: b_1 = 0 * momentum + u_1 = u_1, trace's first step.
        blocks.append(fo.trace(momentum))
    blocks.append(fo.scale_by_learning_rate(lr))
    return fo.chain(*blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("opts", RMSPROP_OPTIONS,
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_rms_chain_matches_torch_rmsprop(opts, dtype):
    alpha, eps = 0.9, 1e-6
    grads = _grads(dtype)
    params = _tree(0, dtype)
    tx = _rmsprop_chain(alpha=alpha, eps=eps, **opts)
    state = tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
        params = fo.apply_updates(params, u)
    for foreach in (False, True):
        ref = _tree(0, dtype)
        opt = torch.optim.RMSprop(list(ref.values()), alpha=alpha, eps=eps, foreach=foreach,
                                  **opts)
        # rounding is relative to the largest magnitude a leaf had on the way (with lr=1 a 0-d
        # leaf can end near 0 after passing through values of several units)
        size = {k: p.abs().max().item() for k, p in ref.items()}
        for g in grads:
            for k, p in ref.items():
                p.grad = g[k].clone()
            opt.step()
            size = {k: max(size[k], p.abs().max().item()) for k, p in ref.items()}
        for k in ref:
            if dtype == torch.float32:  # the update rule's ops, 2 ulps each, every step
                assert_close_ulps(params[k], ref[k], scale=size[k], where=f"{k} {foreach}",
                                  ulps=ulp_budget(STEPS, UPDATE_OPS["rmsprop"]))
                continue
            err = (params[k] - ref[k]).abs().max().item()
            assert err <= 1e-10 * size[k], (k, foreach, err, size[k])


# --------------------------------------------------------------------------------------------
# trace: torch.optim.SGD's momentum buffer.


@pytest.mark.parametrize("momentum,dampening,nesterov",
                         [(0.9, 0.0, False), (0.9, 0.0, True), (0.5, 0.3, False),
                          (0.0, 0.0, False), (0.99, 0.0, True)])
@pytest.mark.parametrize("kind", ["number", "tensor"])
def test_trace(momentum, dampening, nesterov, kind):
    grads = _grads()
    live = torch.tensor(momentum, dtype=torch.float64) if kind == "tensor" else momentum
    outs, state = _run(fo.trace(live, dampening, nesterov), grads)
    skipped = kind == "number" and momentum == 0  # the number 0: no momentum, as torch.optim.SGD
    buf = {k: torch.zeros_like(x) for k, x in grads[0].items()}
    for t, (g, u) in enumerate(zip(grads, outs, strict=True)):
        ref = {}
        for k in g:
            if skipped:
                ref[k] = g[k]
                continue
            # first step: the buffer is the gradient itself (no dampening), as torch.optim.SGD
            buf[k] = g[k].clone() if t == 0 else momentum * buf[k] + (1 - dampening) * g[k]
            ref[k] = g[k] + momentum * buf[k] if nesterov else buf[k]
        _close(u, ref, where=f"step {t}")
    _close(state.momentum_buffer, buf)
    assert all(int(s) == (0 if skipped else len(grads)) for s in state.step.values())


def test_trace_hparams_override():
    grads = _grads()
    built, _ = _run(fo.trace(0.5, 0.25), grads)
    given, _ = _run(fo.trace(0.9), grads, hparams={"momentum": 0.5, "dampening": 0.25})
    for a, b in zip(built, given, strict=True):
        _close(b, a, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Clipping


def _torch_grads_of(g: dict) -> list[torch.Tensor]:
    """Tensors carrying ``g`` as their ``.grad`` (for torch.nn.utils.clip_grad_*_)."""
    out = []
    for x in g.values():
        p = torch.zeros_like(x, requires_grad=True)
        p.grad = x.clone()
        out.append(p)
    return out


@pytest.mark.parametrize("max_delta", [0.0, 0.3, 1.0, 100.0])
@pytest.mark.parametrize("foreach", [False, True])
def test_clip_equals_clip_grad_value(max_delta, foreach):
    g = _tree(5, scale=2.0)
    (u, _) = fo.clip(max_delta).update(g, fo.clip(max_delta).init(g))
    ps = _torch_grads_of(g)
    torch.nn.utils.clip_grad_value_(ps, max_delta, foreach=foreach)
    for (k, x), p in zip(u.items(), ps, strict=True):
        assert torch.equal(x, p.grad), k
        # the formula
        ref = torch.where(g[k] > max_delta, max_delta, torch.where(g[k] < -max_delta,
                                                                   -max_delta, g[k]))
        assert torch.equal(x, ref.to(x.dtype)), k


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 3.0, 1e3])
@pytest.mark.parametrize("foreach", [False, True])
def test_clip_by_global_norm_equals_clip_grad_norm(max_norm, foreach):
    g = _tree(6)
    tx = fo.clip_by_global_norm(max_norm)
    u, _ = tx.update(g, tx.init(g))
    ps = _torch_grads_of(g)
    total = torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=foreach)
    for (_, x), p in zip(u.items(), ps, strict=True):
        torch.testing.assert_close(x, p.grad, rtol=1e-15, atol=0)
    # the formula
    norm = math.sqrt(sum(float((x**2).sum()) for x in g.values()))
    assert math.isclose(float(total), norm, rel_tol=1e-14)
    coef = min(1.0, max_norm / (norm + 1e-6))
    for k in g:
        torch.testing.assert_close(u[k], g[k] * coef, rtol=1e-14, atol=0)
    if norm <= max_norm:
        for k in g:  # below the threshold: a no-op, bit for bit
            assert torch.equal(u[k], g[k]), k


def test_clip_by_global_norm_complex_equals_clip_grad_norm():
    gen = torch.Generator().manual_seed(2)
    g = {"z": torch.randn(4, dtype=torch.complex128, generator=gen),
         "x": torch.randn(3, dtype=torch.float64, generator=gen)}
    tx = fo.clip_by_global_norm(0.5)
    u, _ = tx.update(g, tx.init(g))
    ps = _torch_grads_of(g)
    torch.nn.utils.clip_grad_norm_(ps, 0.5)
    for (k, x), p in zip(u.items(), ps, strict=True):
        assert x.dtype == g[k].dtype
        torch.testing.assert_close(x, p.grad, rtol=1e-15, atol=0)


def test_clip_by_global_norm_none_leaves_and_float32():
    g = {"a": torch.randn(3, generator=torch.Generator().manual_seed(0)) * 10, "frozen": None,
         "b": torch.randn(2, 2, dtype=torch.float32, generator=torch.Generator().manual_seed(1))}
    tx = fo.clip_by_global_norm(1.0)
    u, _ = tx.update(g, tx.init(g))
    assert u["frozen"] is None
    ps = _torch_grads_of({k: v for k, v in g.items() if v is not None})
    torch.nn.utils.clip_grad_norm_(ps, 1.0)
    # every element times one coefficient, computed in another order by torch: each leaf's
    # squares, sum (2) and root, the roots' squares, sum and root, max_norm/(norm + 1e-6) (4),
    # the product: 12 ops, 2 ulps each, relative to each element
    for k, p in zip(("a", "b"), ps, strict=True):
        assert_close_ulps(u[k], p.grad, ulps=ulp_budget(1, 12), where=k)
    assert u["b"].dtype == torch.float32


@pytest.mark.parametrize("max_norm", [0.5, 2.0, 1e3])
def test_clip_by_norm_per_leaf(max_norm):
    g = _tree(7)
    g["zero"] = torch.zeros(2, dtype=torch.float64)
    tx = fo.clip_by_norm(max_norm)
    u, _ = tx.update(g, tx.init(g))
    for k, x in g.items():
        norm = math.sqrt(float((x**2).sum()))
        ref = x * min(1.0, max_norm / (norm + 1e-6))
        torch.testing.assert_close(u[k], ref, rtol=1e-14, atol=0)
        if norm <= max_norm:
            assert torch.equal(u[k], x), k


# --------------------------------------------------------------------------------------------
# Stateless blocks


def test_sign():
    g = _tree(8)
    g["bias"][1] = 0.0
    g["z"] = torch.tensor([3 + 4j, 0j, -2j], dtype=torch.complex128)
    tx = fo.sign()
    u, _ = tx.update(g, tx.init(g))
    for k, x in g.items():
        if x.is_complex():
            ref = torch.where(x.abs() > 0, x / torch.where(x.abs() > 0, x.abs(), 1.0), 0)
        else:
            ref = torch.where(x > 0, 1.0, torch.where(x < 0, -1.0, 0.0)).to(x.dtype)
        assert torch.equal(u[k], ref), k


@pytest.mark.parametrize("step_size", [0.5, -2.0, 0.0])
def test_scale(step_size):
    g = _tree(9)
    g["z"] = torch.randn(3, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    for s in (step_size, torch.tensor(step_size, dtype=torch.float64)):
        tx = fo.scale(s)
        u, _ = tx.update(g, tx.init(g))
        for k, x in g.items():
            assert u[k].dtype == x.dtype
            torch.testing.assert_close(u[k], step_size * x, rtol=1e-15, atol=0)
    u, _ = fo.scale(1.0).update(g, fo.scale(1.0).init(g), hparams={"step_size": 3.0})
    for k, x in g.items():
        torch.testing.assert_close(u[k], 3.0 * x, rtol=1e-15, atol=0)


def test_scale_float32_by_tensor_keeps_dtype():
    g = _tree(9, dtype=torch.float32)
    tx = fo.scale(torch.tensor(0.5, dtype=torch.float64))
    u, _ = tx.update(g, tx.init(g))
    for k, x in g.items():
        assert u[k].dtype == torch.float32, k
        assert torch.equal(u[k], x * 0.5), k


def test_identity():
    g = _tree(10)
    g["frozen"] = None
    tx = fo.identity()
    state = tx.init(g)
    u, new_state = tx.update(g, state)
    assert u["frozen"] is None
    for k, x in g.items():
        if x is not None:
            assert torch.equal(u[k], x)
    assert new_state == state == fo.EmptyState()
    assert tx.hparams == {}


def test_set_to_zero():
    g = _tree(11)
    g["half"] = torch.ones(2, dtype=torch.float16)
    g["frozen"] = None
    tx = fo.set_to_zero()
    u, _ = tx.update(g, tx.init(g))
    assert u["frozen"] is None
    for k, x in g.items():
        if x is not None:
            assert u[k].dtype == x.dtype and u[k].shape == x.shape
            assert torch.equal(u[k], torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# add_decayed_weights


def test_add_decayed_weights():
    g, p = _tree(12), _tree(13)
    for wd in (0.1, torch.tensor(0.1, dtype=torch.float64)):
        tx = fo.add_decayed_weights(wd)
        u, _ = tx.update(g, tx.init(p), p)
        for k in g:
            torch.testing.assert_close(u[k], g[k] + 0.1 * p[k], rtol=1e-15, atol=0)
    u, _ = tx.update(g, tx.init(p), p, {"weight_decay": 0.5})
    for k in g:
        torch.testing.assert_close(u[k], g[k] + 0.5 * p[k], rtol=1e-15, atol=0)


def test_add_decayed_weights_needs_params():
    g = _tree(12)
    tx = fo.add_decayed_weights(0.1)
    with pytest.raises(fo.MissingParamsError):
        tx.update(g, tx.init(g))


@pytest.mark.parametrize("kind", ["tree", "callable"])
def test_add_decayed_weights_mask(kind):
    g, p = _tree(14), _tree(15)
    wanted = {"weight": True, "bias": False, "scale": False}
    if kind == "tree":
        mask = wanted
    else:
        def mask(params):  # decay matrices only, a common rule
            return {k: v.ndim >= 2 for k, v in params.items()}
    tx = fo.add_decayed_weights(0.3, mask)
    u, _ = tx.update(g, tx.init(p), p)
    for k in g:
        ref = g[k] + 0.3 * p[k] if wanted[k] else g[k]  # one rounding apart (a fused add)
        torch.testing.assert_close(u[k], ref, rtol=1e-14, atol=1e-15)
        if not wanted[k]:
            assert torch.equal(u[k], g[k])


# --------------------------------------------------------------------------------------------
# scale_by_learning_rate


@pytest.mark.parametrize("flip_sign", [True, False])
@pytest.mark.parametrize("kind", ["number", "tensor"])
def test_scale_by_learning_rate_value(kind, flip_sign):
    g = _tree(16)
    lr = 0.03 if kind == "number" else torch.tensor(0.03, dtype=torch.float64)
    tx = fo.scale_by_learning_rate(lr, flip_sign=flip_sign)
    sign = -1.0 if flip_sign else 1.0
    state = tx.init(g)
    for _ in range(3):  # no step dependence
        u, state = tx.update(g, state)
        for k in g:
            torch.testing.assert_close(u[k], sign * 0.03 * g[k], rtol=1e-15, atol=0)
    u, _ = tx.update(g, state, hparams={"lr": 0.5})
    for k in g:
        torch.testing.assert_close(u[k], sign * 0.5 * g[k], rtol=1e-15, atol=0)


@pytest.mark.parametrize("flip_sign", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_scale_by_learning_rate_schedule(dtype, flip_sign):
    schedule = fo.schedules.linear(1.0, 0.1, transition_steps=10, transition_begin=2)
    tx = fo.scale_by_learning_rate(schedule, flip_sign=flip_sign)
    sign = -1.0 if flip_sign else 1.0
    g = _tree(17, dtype)
    state = tx.init(g)
    for step in range(15):
        u, state = tx.update(g, state)
        # the first update uses schedule(0)
        lr = 1.0 + (0.1 - 1.0) * min(max((step - 2) / 10, 0.0), 1.0)
        for k in g:
            assert u[k].dtype == dtype, k
            _assert_lr_times(u[k], sign * lr, g[k])
    assert int(state.step) == 15
    # the schedule's numbers are the hparam "lr"
    assert tx.hparams == {"lr": schedule.hparams}
    u, _ = tx.update(g, tx.init(g), hparams={"lr": {"init_value": 2.0}})
    for k in g:
        _assert_lr_times(u[k], sign * 2.0, g[k])


def _assert_lr_times(u, lr, g):
    """``u == lr * g`` rounded to ``g``'s dtype: float64 to 1e-15; float32 within 2 ops (the
    schedule's float64 lr rounded to float32, the product), 2 ulps each, of each element."""
    expected = (lr * g.double()).to(g.dtype)
    if g.dtype == torch.float64:
        torch.testing.assert_close(u, expected, rtol=1e-15, atol=0)
    else:
        assert_close_ulps(u, expected, ulps=ulp_budget(1, 2))


def test_scale_by_learning_rate_plain_callable():
    tx = fo.scale_by_learning_rate(lambda step: 0.5 ** step)
    g = _tree(18)
    state = tx.init(g)
    for step in range(5):
        u, state = tx.update(g, state)
        for k in g:
            torch.testing.assert_close(u[k], -(0.5**step) * g[k], rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------
# chain


def test_chain_positional():
    g = _tree(19, scale=3.0)
    a, b, c = fo.scale(2.0), fo.clip(1.0), fo.trace(0.5)
    tx = fo.chain(a, b, c)
    assert tx.hparams == ({"step_size": 2.0}, {"max_delta": 1.0},
                          {"momentum": 0.5, "dampening": 0.0})
    state = tx.init(g)
    assert isinstance(state, tuple) and len(state) == 3
    assert state[0] == fo.EmptyState() and isinstance(state[2], fo.TraceState)
    buf = None
    for t in range(3):
        u, state = tx.update(g, state)
        clipped = {k: torch.clamp(2.0 * x, -1.0, 1.0) for k, x in g.items()}
        buf = clipped if t == 0 else {k: 0.5 * buf[k] + clipped[k] for k in g}
        _close(u, buf, where=f"step {t}")
    # hparams addressed by position; None keeps a member's defaults
    u, _ = tx.update(g, tx.init(g), hparams=(None, {"max_delta": 0.5}, None))
    _close(u, {k: torch.clamp(2.0 * x, -0.5, 0.5) for k, x in g.items()})


def test_chain_named():
    g = _tree(20, scale=3.0)
    tx = fo.chain(scale=fo.scale(2.0), clip=fo.clip(1.0), momentum=fo.trace(0.5))
    assert tx.hparams == {"scale": {"step_size": 2.0}, "clip": {"max_delta": 1.0},
                          "momentum": {"momentum": 0.5, "dampening": 0.0}}
    state = tx.init(g)
    assert isinstance(state, dict) and list(state) == ["scale", "clip", "momentum"]
    assert isinstance(state["momentum"], fo.TraceState)
    u, state = tx.update(g, state, hparams={"clip": {"max_delta": 0.25}})
    _close(u, {k: torch.clamp(2.0 * x, -0.25, 0.25) for k, x in g.items()})
    # equals the blocks applied one after another
    positional = fo.chain(fo.scale(2.0), fo.clip(1.0), fo.trace(0.5))
    ps = positional.init(g)
    ns = tx.init(g)
    for _ in range(3):
        up, ps = positional.update(g, ps)
        un, ns = tx.update(g, ns)
        _close(un, up, rtol=0, atol=0)


def test_chain_passes_params():
    g, p = _tree(21), _tree(22)
    tx = fo.chain(fo.add_decayed_weights(0.1), fo.scale_by_learning_rate(0.5))
    u, _ = tx.update(g, tx.init(p), p)
    _close(u, {k: -0.5 * (g[k] + 0.1 * p[k]) for k in g})


def test_empty_chain_is_identity():
    g = _tree(23)
    tx = fo.chain()
    u, state = tx.update(g, tx.init(g))
    _close(u, g, rtol=0, atol=0)
    assert state == () and tx.hparams == ()


# --------------------------------------------------------------------------------------------
# apply_updates / apply_updates_


def test_apply_updates():
    p = {"a": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float32),
         "c": torch.randn(2, dtype=torch.bfloat16), "frozen": torch.randn(2)}
    u = {"a": torch.randn(3, dtype=torch.float32), "b": torch.randn(2, dtype=torch.float64),
         "c": torch.randn(2, dtype=torch.float32), "frozen": None}
    before = {k: v.clone() for k, v in p.items()}
    out = fo.apply_updates(p, u)
    for k in ("a", "b", "c"):  # added in the wider dtype, rounded once
        assert out[k].dtype == p[k].dtype, k
        assert torch.equal(out[k], (p[k] + u[k]).to(p[k].dtype)), k
    assert torch.equal(out["frozen"], p["frozen"])
    for k in p:  # pure
        assert torch.equal(p[k], before[k]), k


def test_apply_updates_rounds_a_wider_update_once():
    """A float32 update of a bfloat16 parameter (HuggingFace's Adafactor computes half
    precision in float32) lands as HuggingFace's ``p.copy_(p.float() + u)``: one rounding,
    where rounding the update first moves ~2% of the elements by an ulp."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(4096, generator=gen).bfloat16()
    u = torch.randn(4096, generator=gen) * 1e-2
    expected = (p.float() + u).bfloat16()
    assert not torch.equal(p + u.bfloat16(), expected)  # (the double rounding this avoids)
    assert torch.equal(fo.apply_updates({"p": p}, {"p": u})["p"], expected)
    q = p.clone()
    fo.apply_updates_({"p": q}, {"p": u})
    assert torch.equal(q, expected)


def test_apply_updates_none_param_and_nested():
    p = [{"w": torch.ones(2)}, None, (torch.zeros(1),)]
    u = [{"w": torch.ones(2)}, None, (torch.ones(1),)]
    out = fo.apply_updates(p, u)
    assert isinstance(out, list) and out[1] is None and isinstance(out[2], tuple)
    assert torch.equal(out[0]["w"], torch.full((2,), 2.0))
    assert torch.equal(out[2][0], torch.ones(1))


def test_apply_updates_in_place():
    p = {"a": torch.randn(3, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float32),
         "frozen": torch.randn(2)}
    u = {"a": torch.randn(3, dtype=torch.float32), "b": torch.randn(2, dtype=torch.float64),
         "frozen": None}
    expected = fo.apply_updates(p, u)
    ids = {k: id(v) for k, v in p.items()}
    frozen = p["frozen"].clone()
    out = fo.apply_updates_(p, u)
    assert out is p
    for k in p:
        assert id(p[k]) == ids[k], k  # the same tensors, changed in place
        assert p[k].dtype == expected[k].dtype
        assert torch.equal(p[k], expected[k]), k
    assert torch.equal(p["frozen"], frozen)


def test_apply_updates_in_place_on_leaf_parameters():
    # nn.Parameters that require grad: updated under no_grad, no autograd history
    lin = torch.nn.Linear(3, 2)
    params = dict(lin.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    updates = {k: torch.full_like(v, 0.5) for k, v in params.items()}
    fo.apply_updates_(params, updates)
    for k, v in params.items():
        assert v.requires_grad and v.grad_fn is None and v.is_leaf
        assert torch.equal(v.detach(), before[k] + 0.5)

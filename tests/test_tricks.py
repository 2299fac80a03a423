"""The tricks of issue 20 (``aliases.tricks`` and their blocks) against their reference
algorithms, written out plainly below from the authors' published code (C-Optim's cautious
AdamW, LaProp's ``LaProp``, MARS's ``mars.py``, Adam-mini's ``Adam_mini``, OrthoGrad's
``OrthoGrad``, Jordan's ``Muon``, the ASAM authors' ``ASAM``, Becker et al.'s ``MSAM``) and
papers (AdamC, PaLM's β2, Polyak averaging): float64 trajectories of 25 steps on a few shapes,
non-default arguments, ~1e-10 relative. Then the drop-in classes' own behaviour (ASAM's two
passes, the eval/train swaps of MSAM and AdamWEMA).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_contrib_more import _close, _grad_fn, _params, _trajectory

import functional_optim as fo
from functional_optim import optim as fo_optim

STEPS = 25
SHAPES = [(3,), (2, 4), (5, 3), (2, 3, 2)]


def _run(step, params, grads, steps=STEPS):
    """``step(t, params, grads) -> new params`` (all leaves at once), after each step."""
    out = []
    for t in range(steps):
        params = step(t, params, grads(params, t))
        out.append(params)
    return out


def _zeros(params):
    return [torch.zeros_like(p) for p in params]


# -- cautious AdamW ------------------------------------------------------------------------------

@pytest.mark.parametrize("cautious_wd", [False, True])
def test_cautious_adamw(cautious_wd):
    """C-Optim's cautious AdamW: Adam's step masked where ``u * g <= 0``, the rest divided by
    the mean of the mask (at least 1e-3); decoupled decay (cautious: where ``u * p >= 0``)."""
    lr, b1, b2, eps, wd = 0.02, 0.8, 0.95, 1e-6, 0.3
    params = _params(SHAPES)
    m, v = _zeros(params), _zeros(params)

    def step(t, ps, gs):
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = (m[i] / (1 - b1 ** (t + 1))) / (torch.sqrt(v[i] / (1 - b2 ** (t + 1))) + eps)
            mask = (u * g > 0).to(u.dtype)
            u = u * mask / torch.clamp(mask.mean(), min=1e-3)
            decay = p * (u * p >= 0).to(p.dtype) if cautious_wd else p
            out.append(p - lr * (u + wd * decay))
        return out

    tx = fo.cautious_adamw(lr, (b1, b2), eps, wd, cautious_weight_decay=cautious_wd)
    _close(_trajectory(tx, _params(SHAPES), _grad_fn()), _run(step, params, _grad_fn()))


def test_cautious_around_any_direction():
    """``cautious`` wraps any direction block: SGD's momentum here (timm's cautious SGD)."""
    lr, mu = 0.05, 0.9
    params = _params(SHAPES)
    buf = _zeros(params)

    def step(t, ps, gs):
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            buf[i] = mu * buf[i] + g
            mask = (buf[i] * g > 0).to(g.dtype)
            out.append(p - lr * buf[i] * mask / torch.clamp(mask.mean(), min=1e-3))
        return out

    tx = fo.chain(fo.cautious(fo.trace(mu)), fo.scale_by_learning_rate(lr))
    _close(_trajectory(tx, _params(SHAPES), _grad_fn()), _run(step, params, _grad_fn()))


# -- LaProp --------------------------------------------------------------------------------------

def test_laprop():
    """The authors' ``LaProp.step``: the rate folded into the momentum and its running mean in
    the bias correction; the stepped parameters decayed by ``λ``."""
    lr, b1, b2, eps, wd = 0.01, 0.7, 0.9, 1e-8, 0.05
    params = _params(SHAPES)
    m, v = _zeros(params), _zeros(params)
    lr_avg = [0.0]

    def step(t, ps, gs):
        lr_avg[0] = lr_avg[0] * b1 + (1 - b1) * lr
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            v[i] = v[i] * b2 + (1 - b2) * g * g
            denom = torch.sqrt(v[i] / (1 - b2 ** (t + 1))) + eps
            m[i] = m[i] * b1 + (1 - b1) * lr * (g / denom)
            p = p - m[i] / (lr_avg[0] / lr)
            out.append(p - wd * p)
        return out

    _close(_trajectory(fo.laprop(lr, (b1, b2), eps, wd), _params(SHAPES), _grad_fn()),
           _run(step, params, _grad_fn()))


# -- MARS-AdamW ----------------------------------------------------------------------------------

def test_mars_adamw():
    """``mars.py``'s ``update_fn`` (``mars-adamw``, ``optimize_1d=True``), the approximate
    form: ``c = g + γ β1/(1-β1) (g - g_prev)`` clipped to norm 1, Adam on ``c``."""
    lr, b1, b2, eps, wd, gamma = 0.01, 0.9, 0.99, 1e-8, 0.1, 0.5
    params = _params(SHAPES)
    m, v, last = _zeros(params), _zeros(params), _zeros(params)

    def step(t, ps, gs):
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            c = (g - last[i]) * (gamma * (b1 / (1 - b1))) + g
            norm = torch.linalg.vector_norm(c)
            if norm > 1:
                c = c / norm
            m[i] = m[i] * b1 + (1 - b1) * c
            v[i] = v[i] * b2 + (1 - b2) * c * c
            denom = (torch.sqrt(v[i]) / math.sqrt(1 - b2 ** (t + 1)) + eps) * (1 - b1 ** (t + 1))
            out.append(p - lr * (p * wd + m[i] / denom))
            last[i] = g
        return out

    tx = fo.mars_adamw(lr, (b1, b2), eps, wd, gamma)
    # tiny gradients too: the clipping then leaves c alone
    for scale in (1.0, 0.01):
        base = _grad_fn()

        def grads(ps, t, base=base, s=scale):
            return [s * g for g in base(ps, t)]
        m[:], v[:], last[:] = _zeros(params), _zeros(params), _zeros(params)
        _close(_trajectory(tx, _params(SHAPES), grads), _run(step, _params(SHAPES), grads))


# -- Adam-mini -----------------------------------------------------------------------------------

@pytest.mark.parametrize("partition", [False, True])
def test_adam_mini(partition):
    """The authors' ``Adam_mini.step``: ``vmean`` the running mean of ``mean(g²)`` over each
    block (the whole leaf; with the Transformer partition, also per head of a query's weight and
    per element of an embedding), ``p ← p(1 - ηλ) - η (m/bc1)/(sqrt(vmean/bc2) + ε)``."""
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.9, 1e-6, 0.1
    shapes = SHAPES + [(4, 2)]
    names = ["bias", "q_proj.weight", "w", "conv", "embed"]
    heads = {"q_proj.weight": 2, "embed": 8} if partition else {}
    params = dict(zip(names, _params(shapes)))
    m = {k: torch.zeros_like(p) for k, p in params.items()}
    vmean = {k: torch.zeros(heads.get(k, 1), 1, dtype=p.dtype) for k, p in params.items()}

    def step(t, ps, gs):
        out = {}
        for k, p in ps.items():
            g = gs[k].reshape(heads.get(k, 1), -1)
            p = p * (1 - lr * wd)
            m[k] = torch.lerp(m[k], gs[k], 1 - b1)
            vmean[k] = vmean[k] * b2 + (1 - b2) * torch.mean(g * g, dim=1, keepdim=True)
            h = torch.sqrt(vmean[k]) / math.sqrt(1 - b2 ** (t + 1)) + eps
            stepsize = (1 / (1 - b1 ** (t + 1))) / h
            out[k] = p - lr * (m[k].reshape(g.shape) * stepsize).reshape(p.shape)
        return out

    base = _grad_fn()

    def grads(ps, t):
        return dict(zip(ps, base(list(ps.values()), t)))

    def blocks(ps):
        return {k: heads.get(k, 1) for k in ps}

    tx = fo.adam_mini(lr, (b1, b2), eps, wd, blocks=blocks if partition else None)
    actual = _trajectory(tx, dict(params), grads)
    expected = _run(step, dict(params), grads)
    _close([list(a.values()) for a in actual], [list(e.values()) for e in expected])
    state = tx.init(params)
    assert {k: tuple(x.shape) for k, x in state["adam_mini"].nu.items()} == {
        k: (heads[k], 1) if k in heads else () for k in names}
    with pytest.raises(fo.HParamError, match="blocks of leaf 'embed' must be an int >= 1 "
                                             "dividing its 8 elements, got 3"):
        fo.adam_mini(blocks=lambda ps: {k: 3 for k in ps}).init(params)


# -- AdamC ---------------------------------------------------------------------------------------

def test_adamc_decay_follows_the_rate():
    """AdamW with ``λ_t = λ η_t / η_max``, the rate given per step (a scheduler's): torch's
    AdamW with ``weight_decay`` set to ``λ η_t/η_max`` each step."""
    lr, wd, max_lr = 0.05, 0.2, 0.08
    rates = [lr * (0.5 + 0.5 * math.cos(math.pi * t / STEPS)) for t in range(STEPS)]
    params = _params(SHAPES)
    ref = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.AdamW(ref, lr=lr, betas=(0.8, 0.9), weight_decay=wd)
    tx = fo.adamc(lr, (0.8, 0.9), 1e-8, wd, max_lr=max_lr)
    state, ours, grads = tx.init(params), params, _grad_fn()
    for t in range(STEPS):
        with torch.no_grad():
            g = grads([p.detach() for p in ref], t)
        for p, gi in zip(ref, g):
            p.grad = gi
        opt.param_groups[0].update(lr=rates[t], weight_decay=wd * rates[t] / max_lr)
        opt.step()
        u, state = tx.update(grads(ours, t), state, ours, dict(tx.hparams, lr=rates[t]))
        ours = fo.apply_updates(ours, u)
        _close([ours], [[p.detach() for p in ref]])
    with pytest.raises(fo.HParamError, match="lr must be a number"):
        fo.corrected_decay(fo.adamw(fo.schedules.constant(0.1)))
    with pytest.raises(fo.HParamError, match="'lr' and 'weight_decay'"):
        fo.corrected_decay(fo.scale_by_adam())


# -- OrthoGrad -----------------------------------------------------------------------------------

def test_orthograd_adamw():
    """``OrthoGrad(params, torch.optim.AdamW)``: each gradient minus its projection on the
    parameter, rescaled to the gradient's norm, then torch's AdamW."""
    lr, wd = 0.02, 0.1
    params = _params(SHAPES)
    ref = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.AdamW(ref, lr=lr, betas=(0.8, 0.9), eps=1e-7, weight_decay=wd)
    expected, grads = [], _grad_fn()
    for t in range(STEPS):
        with torch.no_grad():
            g = grads([p.detach() for p in ref], t)
            for p, gi in zip(ref, g):
                w, gv = p.view(-1), gi.view(-1)
                proj = torch.dot(w, gv) / (torch.dot(w, w) + 1e-30)
                orth = gv - proj * w
                p.grad = (orth * (gv.norm() / (orth.norm() + 1e-30))).view_as(p)
        opt.step()
        expected.append([p.detach().clone() for p in ref])
    tx = fo.orthograd_adamw(lr, (0.8, 0.9), 1e-7, wd)
    _close(_trajectory(tx, _params(SHAPES), _grad_fn()), expected)


# -- Muon with AdamW, Newton-Schulz variants -----------------------------------------------------

def _newton_schulz(g, coefficients, steps, eps=1e-7):
    """Jordan's ``zeropower_via_newtonschulz5`` in float64, coefficients per iteration."""
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / max(float(x.norm()), eps)
    for i in range(steps):
        a, b, c = coefficients[i]
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


@pytest.mark.parametrize("adjust", [None, "match_rms_adamw", "spectral"])
def test_muon_adamw(adjust):
    """Muon (Nesterov momentum, Newton-Schulz on the leaf as a ``rows x rest`` matrix, the
    adjusted rate, decoupled decay) on the 2-D and 3-D leaves; torch's AdamW on the vector."""
    lr, mu, wd, alr, awd = 0.05, 0.9, 0.1, 0.01, 0.2
    ratios = {None: lambda r, c: math.sqrt(max(1, r / c)),
              "match_rms_adamw": lambda r, c: 0.2 * math.sqrt(max(r, c)),
              "spectral": lambda r, c: math.sqrt(r / c)}
    params = _params(SHAPES)
    buf = _zeros(params)
    vec = params[0].clone().requires_grad_(True)
    adam = torch.optim.AdamW([vec], lr=alr, betas=(0.8, 0.9), eps=1e-7, weight_decay=awd)

    def step(t, ps, gs):
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            if p.ndim < 2:
                vec.grad = g
                adam.step()
                out.append(vec.detach().clone())
                continue
            buf[i] = buf[i] * mu + (1 - mu) * g
            d = (g * (1 - mu) + buf[i] * mu).reshape(p.shape[0], -1)
            o = _newton_schulz(d, [fo.transforms.MUON_NS_COEFFICIENTS] * 5, 5)
            o = o * ratios[adjust](*d.shape)
            out.append(p * (1 - lr * wd) - lr * o.reshape(p.shape))
        return out

    tx = fo.muon_adamw(lr, mu, wd, alr, (0.8, 0.9), 1e-7, awd, adjust_lr_fn=adjust,
                       ns_dtype=None)
    _close(_trajectory(tx, _params(SHAPES), _grad_fn()), _run(step, params, _grad_fn()))


def test_muon_adamw_steps_an_empty_3d_leaf():
    """An empty 3-D leaf (flattened to ``rows x rest``: ``reshape(0, -1)`` raised) gets an empty
    update, and the other leaves theirs."""
    params = {"empty": torch.zeros(0, 3, 3, dtype=torch.float64), "w": _params([(4, 3, 3)])[0]}
    tx = fo.muon_adamw(ns_dtype=None)
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["empty"].shape == (0, 3, 3) and torch.isfinite(updates["w"]).all()


def test_newton_schulz_coefficient_variants():
    """Per-iteration coefficients (You's six quintics), as many as iterations, and the cubic
    iteration; a drop-in class's group holding them as lists (as a checkpoint may)."""
    g = _params([(4, 6)])[0]
    you = fo.NS_COEFFICIENTS["you"]
    out = fo.orthogonalize_via_newton_schulz(g, you, 6, dtype=None)
    torch.testing.assert_close(out, _newton_schulz(g, you, 6), rtol=1e-12, atol=1e-12)
    cubic = fo.orthogonalize_via_newton_schulz(g, fo.NS_COEFFICIENTS["cubic"], 30, dtype=None)
    torch.testing.assert_close(cubic @ cubic.T, torch.eye(4, dtype=g.dtype), atol=1e-8,
                               rtol=0)
    tx = fo.scale_by_newton_schulz([list(c) for c in you], 6, ns_dtype=None)
    assert tx.hparams["ns_coefficients"] == you
    torch.testing.assert_close(tx.update([g], tx.init([g]))[0][0], out, rtol=1e-14, atol=0)
    with pytest.raises(fo.HParamError, match="ns_steps must be 6"):
        fo.muon(ns_coefficients=you)
    with pytest.raises(fo.HParamError, match="one per iteration"):
        fo.muon(ns_coefficients="you")
    runs = []
    for as_lists in (False, True):
        params = [torch.nn.Parameter(p) for p in _params([(4, 6), (3,)])]
        opt = fo_optim.MuonAdamW(params, ns_coefficients=you, ns_steps=6, ns_dtype=None)
        if as_lists:
            opt.param_groups[0]["ns_coefficients"] = [list(c) for c in you]
        for t in range(3):
            for p, gi in zip(params, _grad_fn()([p.detach() for p in params], t)):
                p.grad = gi
            opt.step()
        runs.append([p.detach().clone() for p in params])
    _close([runs[1]], [runs[0]], rtol=1e-14)


def test_muon_adamw_labels_by_name():
    """Rules over the parameters' names send a matrix to AdamW (an embedding)."""
    params = {"embed": _params([(5, 3)])[0], "w": _params([(3, 4)], seed=1)[0]}
    tx = fo.muon_adamw(labels=[(r"embed", "adamw"), (r".*", "muon")])
    state = tx.init(params)
    assert state["adamw"]["adam"].mu["embed"] is not None
    assert isinstance(state["adamw"]["adam"].mu["w"], fo.combinators.MaskedNode)


# -- PaLM's β2 schedule --------------------------------------------------------------------------

def test_decay_rate_schedule_drives_beta2():
    """PaLM's Adam: ``β2 = 1 - t^{-0.8}`` at step ``t ≥ 1``, no correction of ``v``; driven as a
    live schedule by ``inject_hparams``."""
    lr, b1, eps, c = 0.01, 0.9, 1e-8, 0.8
    params = _params(SHAPES)
    m, v = _zeros(params), _zeros(params)

    def step(t, ps, gs):
        b2 = 1 - (t + 1) ** -c
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            out.append(p - lr * (m[i] / (1 - b1 ** (t + 1))) / (torch.sqrt(v[i]) + eps))
        return out

    inner = fo.chain(fo.scale_by_adam((b1, 0.999), eps, bias_correction="first_moment"),
                     fo.scale_by_learning_rate(lr))
    tx = fo.inject_hparams(inner, {"0.betas.1": fo.schedules.decay_rate_schedule(c)})
    _close(_trajectory(tx, _params(SHAPES), _grad_fn()), _run(step, params, _grad_fn()))


# -- trust-region clipping -----------------------------------------------------------------------

def test_clip_by_trust_ratio():
    """``u · min(1, τ‖p‖/‖u‖)`` per leaf; a zero update stays zero, a zero parameter (a bias at
    initialization) leaves its update free."""
    params = _params(SHAPES)
    updates = [0.5 * p + 0.1 for p in params]
    updates[0] = torch.zeros_like(updates[0])
    params[1] = torch.zeros_like(params[1])
    tau = 0.3
    out, _ = fo.clip_by_trust_ratio(tau).update(updates, None, params)
    for u, p, o in zip(updates, params, out):
        bound = tau * p.norm()
        expected = u if u.norm() <= bound or bound == 0 else u * (bound / u.norm())
        torch.testing.assert_close(o, expected, rtol=1e-14, atol=0)


# -- parameter EMA -------------------------------------------------------------------------------

def test_adamw_ema_eval_params():
    """``p̄ ← β p̄ + (1-β) p`` after each AdamW step, ``p̄_0 = p_0``; the evaluation parameters
    and back, from the state alone."""
    beta = 0.8
    tx = fo.adamw_ema(0.05, ema_decay=beta)
    params, grads = _params(SHAPES), _grad_fn()
    state, avg = tx.init(params), [p.clone() for p in params]
    for t in range(STEPS):
        u, state = tx.update(grads(params, t), state, params)
        params = fo.apply_updates(params, u)
        avg = [beta * a + (1 - beta) * p for a, p in zip(avg, params)]
        evaluated = fo.ema_eval_params(state, params)
        _close([evaluated], [avg])
        _close([fo.ema_train_params(state, evaluated)], [params], rtol=1e-14)


def test_drop_in_adamw_ema_swaps():
    params = [torch.nn.Parameter(p) for p in _params(SHAPES)]
    opt = fo_optim.AdamWEMA(params, lr=0.05, ema_decay=0.5)
    for _ in range(3):
        for p in params:
            p.grad = p.detach() ** 3
        opt.step()
    trained = [p.detach().clone() for p in params]
    opt.eval()
    assert not all(torch.equal(p, q) for p, q in zip(params, trained))
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    opt.train()
    _close([[p.detach() for p in params]], [trained], rtol=1e-14)


# -- ASAM and Momentum-SAM -----------------------------------------------------------------------

def _asam_reference(params, lr, rho, eta, momentum, eps, steps, grads):
    """The ASAM authors' ``ascent_step`` (``T = |p| + η``, ``e = ρ T² g/(‖T g‖ + ε)``) and
    ``descent_step`` (back to ``p``, torch's SGD with the gradient at ``p + e``)."""
    ref = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.SGD(ref, lr=lr, momentum=momentum)
    out = []
    for t in range(steps):
        with torch.no_grad():
            g = grads([p.detach() for p in ref], t)
            scaled = [gi * (p.abs() + eta) for gi, p in zip(g, ref)]
            norm = torch.sqrt(sum((s * s).sum() for s in scaled)) + eps
            e = [rho * s * (p.abs() + eta) / norm for s, p in zip(scaled, ref)]
            for p, ei in zip(ref, e):
                p.add_(ei)
            g2 = grads([p.detach() for p in ref], t)
            for p, ei, gi in zip(ref, e, g2):
                p.sub_(ei)
                p.grad = gi
        opt.step()
        out.append([p.detach().clone() for p in ref])
    return out


def test_asam_sgd():
    lr, rho, eta, momentum, eps = 0.05, 0.3, 0.02, 0.8, 1e-10
    tx = fo.asam_sgd(lr, rho, momentum, eta=eta, eps=eps)
    base = _grad_fn()
    passes = _trajectory(tx, _params(SHAPES), lambda ps, t: base(ps, t // 2), steps=2 * 12)
    _close(passes[1::2], _asam_reference(_params(SHAPES), lr, rho, eta, momentum, eps, 12,
                                         base))


def test_drop_in_asam_closure_runs_both_passes():
    lr, rho, eta, momentum = 0.05, 0.3, 0.02, 0.8
    params = [torch.nn.Parameter(p) for p in _params(SHAPES)]
    opt = fo_optim.ASAM([{"params": params[:2]}, {"params": params[2:]}], lr=lr, rho=rho,
                        momentum=momentum, eta=eta)
    base = _grad_fn()
    actual = []
    for t in range(8):
        def closure(t=t):
            for p, g in zip(params, base([p.detach() for p in params], t)):
                p.grad = g
            return torch.zeros(())
        closure()
        opt.step(closure)
        actual.append([p.detach().clone() for p in params])
    _close(actual, _asam_reference(_params(SHAPES), lr, rho, eta, momentum, 1e-16, 8, base))


def _msam_reference(params, lr, momentum, wd, rho, steps, grads):
    """Becker et al.'s ``MSAM.step``: back to ``w`` from ``w - ρ b/‖b‖``, torch's SGD momentum
    with the decay at the perturbed point, then to the new perturbed point; returns the held
    (perturbed) parameters after each step."""
    held, buf, inv = [p.clone() for p in params], _zeros(params), 0.0
    out = []
    for t in range(steps):
        g = grads(held, t)
        d = [gi + wd * p for gi, p in zip(g, held)]
        held = [p + rho * inv * b for p, b in zip(held, buf)]
        buf = [momentum * b + di for b, di in zip(buf, d)]
        held = [p - lr * b for p, b in zip(held, buf)]
        inv = 1 / (float(torch.sqrt(sum((b * b).sum() for b in buf))) + 1e-12)
        held = [p - rho * inv * b for p, b in zip(held, buf)]
        out.append(held)
    return out


def test_msam_sgd_and_drop_in_swap():
    lr, momentum, wd, rho = 0.05, 0.8, 0.01, 0.2
    tx = fo.msam_sgd(lr, momentum, wd, rho, eps=0.0)
    actual = _trajectory(tx, _params(SHAPES), _grad_fn())
    _close(actual, _msam_reference(_params(SHAPES), lr, momentum, wd, rho, STEPS, _grad_fn()),
           rtol=1e-9)
    params = [torch.nn.Parameter(p) for p in _params(SHAPES)]
    opt = fo_optim.MSAM(params, lr=lr, momentum=momentum, weight_decay=wd, rho=rho)
    for t in range(3):
        for p, g in zip(params, _grad_fn()([p.detach() for p in params], t)):
            p.grad = g
        opt.step()
    held = [p.detach().clone() for p in params]
    opt.eval()
    state = opt.state[params[1]]
    assert state, "MSAM keeps its perturbation in the state"
    opt.train()
    _close([[p.detach() for p in params]], [held], rtol=1e-14)


@pytest.mark.parametrize("name,kwargs", [
    ("CautiousAdamW", dict(lr=0.02, weight_decay=0.1, cautious_weight_decay=True)),
    ("LaProp", dict(lr=0.01, weight_decay=0.1)), ("MARSAdamW", dict(weight_decay=0.1)),
    ("AdamMini", {}), ("AdamC", dict(max_lr=0.002)), ("OrthoAdamW", {}),
    ("MuonAdamW", dict(ns_dtype=None, weight_decay=0.1)), ("AdamWEMA", {}), ("MSAM", {}),
])
def test_drop_in_paths_agree(name, kwargs):
    """The adapter's paths (its fused step where there is one, multi-tensor, per leaf) give one
    trajectory."""
    shapes = SHAPES + [(1,), ()]
    runs = []
    for foreach in (None, True, False):
        params = [torch.nn.Parameter(p) for p in _params(shapes)]
        opt = getattr(fo_optim, name)(params, foreach=foreach, **kwargs)
        grads = _grad_fn()
        for t in range(4):
            for p, g in zip(params, grads([p.detach() for p in params], t)):
                p.grad = g
            opt.step()
        runs.append([p.detach().clone() for p in params])
    _close([runs[1], runs[2]], [runs[0], runs[0]], rtol=1e-12)

"""optax's last contrib names with a native home: ``split_real_and_imaginary`` (a combinator),
optax's ``reduce_on_plateau`` rule (an option of the plateau transform) and optax's Muon (options
of ``scale_by_muon``). Each reference formula is written out plainly following optax 0.2.8's
source, and compared in float64."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo

D = torch.float64


def _adam_reference(g_seq, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
    """optax's adam on one real tensor: the updates of each step."""
    m = torch.zeros_like(g_seq[0])
    v = torch.zeros_like(g_seq[0])
    out = []
    for t, g in enumerate(g_seq, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(-lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps))
    return out


def test_split_real_and_imaginary_is_adam_on_each_part():
    """optax: complex leaves become (real, imaginary) pairs of real leaves for the inner
    transform, and its pair of updates merges back; real leaves pass through."""
    gen = torch.Generator().manual_seed(0)
    steps = 20
    gz = [torch.randn(3, 2, dtype=torch.complex128, generator=gen) for _ in range(steps)]
    gr = [torch.randn(4, dtype=D, generator=gen) for _ in range(steps)]
    params = {"z": torch.randn(3, 2, dtype=torch.complex128, generator=gen),
              "r": torch.randn(4, dtype=D, generator=gen), "frozen": None}
    tx = fo.split_real_and_imaginary(fo.adam(lr=3e-2, betas=(0.8, 0.99)))
    state = tx.init(params)
    assert isinstance(state, fo.SplitRealAndImaginaryState)
    got_z, got_r = [], []
    for a, b in zip(gz, gr):
        u, state = tx.update({"z": a, "r": b, "frozen": None}, state, params)
        assert u["frozen"] is None and u["z"].dtype == torch.complex128
        got_z.append(u["z"])
        got_r.append(u["r"])
    ref = dict(lr=3e-2, b1=0.8, b2=0.99)
    re = _adam_reference([g.real for g in gz], **ref)
    im = _adam_reference([g.imag for g in gz], **ref)
    for t in range(steps):
        torch.testing.assert_close(got_z[t], torch.complex(re[t], im[t]), rtol=1e-10, atol=0)
    for a, b in zip(got_r, _adam_reference(gr, **ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


def test_split_real_and_imaginary_none_update_of_complex_param():
    params = {"z": torch.ones(2, dtype=torch.complex128), "r": torch.ones(2, dtype=D)}
    tx = fo.split_real_and_imaginary(fo.adam(lr=0.1))
    state = tx.init(params)
    u, state = tx.update({"z": None, "r": torch.ones(2, dtype=D)}, state, params)
    assert u["z"] is None
    u, _ = tx.update({"z": torch.ones(2, dtype=torch.complex128), "r": None}, state, params)
    assert u["r"] is None and u["z"].is_complex()


def _optax_plateau_reference(values, factor, patience, rtol, atol, cooldown, accumulation_size,
                             min_scale):
    """optax's reduce_on_plateau: the scale after each value (its rule, step by step)."""
    scale, best, plateau, cool, count, avg = 1.0, float("inf"), 0, 0, 0, 0.0
    out = []
    for v in values:
        avg = (count * avg + v) / (count + 1)
        count += 1
        if count == accumulation_size:
            improved = avg < (1 - rtol) * best - atol
            if improved:
                best = avg
            plateau = 0 if improved else plateau + 1
            if cool > 0:
                plateau, cool = 0, cool - 1
            else:
                reduce = plateau == patience
                scale = max(scale * factor if reduce else scale, min_scale)
                plateau = 0 if reduce else plateau
                cool = cooldown if reduce else 0
            count, avg = 0, 0.0
        out.append(scale)
    return out


def _losses(n):
    """Decreasing losses that stall: improvements, small improvements, flat stretches."""
    base = [1.0, 0.9, 0.85, 0.8499, 0.8499, 0.8498, 0.8, 0.8, 0.8, 0.79999, 0.7, 0.7]
    return [base[i % len(base)] - 0.01 * (i // len(base)) for i in range(n)]


def test_reduce_on_plateau_optax_rule():
    for kw in (dict(factor=0.5, patience=2, rtol=1e-4, atol=0.0, cooldown=0,
                    accumulation_size=1, min_scale=0.0),
               dict(factor=0.3, patience=1, rtol=1e-3, atol=1e-3, cooldown=2,
                    accumulation_size=2, min_scale=0.05),
               dict(factor=0.9, patience=3, rtol=0.0, atol=5e-3, cooldown=1,
                    accumulation_size=3, min_scale=0.2)):
        tx = fo.reduce_on_plateau(1.0, kw["factor"], kw["patience"], kw["rtol"], "rel",
                                  kw["cooldown"], kw["min_scale"], rule="optax",
                                  atol=kw["atol"], accumulation_size=kw["accumulation_size"])
        values = _losses(30)
        g = {"w": torch.ones(2, dtype=D)}
        state = tx.init(g)
        assert isinstance(state, fo.ReduceOnPlateauAveragedState)
        for v, want in zip(values, _optax_plateau_reference(values, **kw)):
            u, state = tx.update(g, state, value=torch.tensor(v, dtype=D))
            assert u["w"][0].item() == pytest.approx(want, rel=1e-12), kw
        assert float(state.scale) < 1.0
    with pytest.raises(ValueError, match="rule='optax'"):
        fo.reduce_on_plateau(atol=0.1)
    with pytest.raises(ValueError, match="rule='torch'"):
        fo.reduce_on_plateau(eps=0.0, rule="optax")


def _ns_reference(x, coeffs, steps, eps):
    """optax's Newton-Schulz: the wide orientation, X / (||X||_F + eps), quintic steps."""
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (torch.linalg.norm(x) + eps)
    per_step = isinstance(coeffs[0], tuple)
    for i in range(len(coeffs) if per_step else steps):
        a, b, c = coeffs[i] if per_step else coeffs
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _optax_muon_reference(params, grads, lr, beta=0.95, eps=1e-8, weight_decay=0.0,
                          adam_lr=None, b1=0.9, b2=0.999, eps_root=0.0, adam_weight_decay=0.0,
                          nesterov=True, adaptive=False, consistent_rms=None,
                          ns_coeffs=(3.4445, -4.7750, 2.0315), ns_steps=5, dims=None):
    """optax's muon: the parameters after each step (2-D leaves Muon's, the others AdamW's;
    ``dims``: each leaf's ``(reduction axis, output axis)``, ``None`` for AdamW's)."""
    adam_lr = lr if adam_lr is None else adam_lr
    if dims is None:
        dims = {k: (0, 1) if x.ndim == 2 else None for k, x in params.items()}
    p = {k: v.clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p.items()}
    out = []
    for t, grad_fn in enumerate(grads, 1):
        g = grad_fn(p)
        for k in p:
            if dims[k] is not None:
                m[k] = beta * m[k] + (1 - beta) * g[k]
                if nesterov:
                    d = beta * m[k] / (1 - beta ** (t + 1)) + (1 - beta) * g[k] / (1 - beta ** t)
                else:
                    d = m[k] / (1 - beta ** t)
                red, outax = dims[k]
                batch = [a for a in range(d.ndim) if a not in (red, outax)]
                # one (fan_in x fan_out) matrix per index of the batch axes (at most one here)
                mats = d.permute(batch + [red, outax])
                mats = mats.unsqueeze(0) if not batch else mats
                o = torch.stack([_ns_reference(x, ns_coeffs, ns_steps, eps) for x in mats])
                o = o[0] if not batch else o
                o = o.permute([(batch + [red, outax]).index(a) for a in range(d.ndim)])
                if adaptive:
                    o = (d * o).sum() * o
                fan_in, fan_out = p[k].shape[red], p[k].shape[outax]
                if consistent_rms is None:
                    o = o * max(1.0, fan_out / fan_in) ** 0.5
                else:
                    o = o * max(fan_in, fan_out) ** 0.5 * consistent_rms
                p[k] = p[k] - lr * (o + weight_decay * p[k])
            else:
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
                if nesterov:
                    mh = b1 * m[k] / (1 - b1 ** (t + 1)) + (1 - b1) * g[k] / (1 - b1 ** t)
                else:
                    mh = m[k] / (1 - b1 ** t)
                vh = v2[k] / (1 - b2 ** t)
                u = mh / ((vh + eps_root).sqrt() + eps) + adam_weight_decay * p[k]
                p[k] = p[k] - adam_lr * u
        out.append({k: x.clone() for k, x in p.items()})
    return out


def _muon_problem(steps=20):
    gen = torch.Generator().manual_seed(3)
    params = {"w": torch.randn(3, 5, dtype=D, generator=gen),
              "v": torch.randn(4, 2, dtype=D, generator=gen),
              "b": torch.randn(3, dtype=D, generator=gen)}
    noise = [{k: torch.randn(x.shape, dtype=D, generator=gen) for k, x in params.items()}
             for _ in range(steps)]
    return params, [lambda p, n=n: {k: n[k] + 0.3 * p[k] for k in p} for n in noise]


MUON_CASES = [
    ({}, {}),
    (dict(momentum=0.9, eps=1e-3, weight_decay=0.1, adam_lr=0.03, adam_betas=(0.8, 0.99),
          adam_eps_root=1e-4, adam_weight_decay=0.05, nesterov=False, adaptive=True,
          match_rms=True, rms_scale=0.2),
     dict(beta=0.9, eps=1e-3, weight_decay=0.1, adam_lr=0.03, b1=0.8, b2=0.99, eps_root=1e-4,
          adam_weight_decay=0.05, nesterov=False, adaptive=True, consistent_rms=0.2)),
    (dict(ns_coefficients=fo.NS_COEFFICIENTS["dion"], ns_steps=5),
     dict(ns_coeffs=fo.NS_COEFFICIENTS["dion"])),
]


@pytest.mark.parametrize("native, reference", MUON_CASES)
def test_optax_muon_matches_reference(native, reference):
    params, grads = _muon_problem()
    tx = fo.optax_muon(lr=0.02, **native)
    state = tx.init(params)
    p = dict(params)
    for want, grad_fn in zip(_optax_muon_reference(params, grads, 0.02, **reference), grads):
        u, state = tx.update(grad_fn(p), state, p)
        p = {k: p[k] + u[k] for k in p}
        for k in p:
            torch.testing.assert_close(p[k], want[k], rtol=1e-10, atol=1e-12)


def test_compat_muon_is_optax_muon():
    import functional_optim.compat.optax as optax

    params, grads = _muon_problem(steps=8)
    kw = dict(beta=0.9, eps=1e-3, weight_decay=0.1, adam_lr=0.03, b1=0.8, b2=0.99,
              eps_root=1e-4, adam_weight_decay=0.05, nesterov=False, adaptive=True,
              consistent_rms=0.2, ns_coeffs=fo.NS_COEFFICIENTS["dion"])
    tx = optax.contrib.muon(0.02, ns_coeffs="dion", beta=0.9, eps=1e-3, weight_decay=0.1,
                            adam_learning_rate=0.03, adam_b1=0.8, adam_b2=0.99,
                            adam_eps_root=1e-4, adam_weight_decay=0.05, nesterov=False,
                            adaptive=True, consistent_rms=0.2)
    state = tx.init(params)
    p = dict(params)
    for want, grad_fn in zip(_optax_muon_reference(params, grads, 0.02, **kw), grads):
        u, state = tx.update(grad_fn(p), state, p)
        p = optax.apply_updates(p, u)
        for k in p:
            torch.testing.assert_close(p[k], want[k], rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError, match="preconditioning"):
        optax.contrib.muon(0.02, preconditioning="aol")


def test_compat_scale_by_muon_has_no_shape_scaling():
    import functional_optim.compat.optax as optax

    gen = torch.Generator().manual_seed(5)
    g_seq = [torch.randn(2, 5, dtype=D, generator=gen) for _ in range(6)]
    tx = optax.contrib.scale_by_muon(beta=0.8)
    state = tx.init({"w": torch.zeros(2, 5, dtype=D)})
    assert isinstance(state, optax.contrib.MuonState)
    m = torch.zeros(2, 5, dtype=D)
    for t, g in enumerate(g_seq, 1):
        u, state = tx.update({"w": g}, state)
        m = 0.8 * m + 0.2 * g
        d = 0.8 * m / (1 - 0.8 ** (t + 1)) + 0.2 * g / (1 - 0.8 ** t)
        torch.testing.assert_close(u["w"], _ns_reference(d, (3.4445, -4.7750, 2.0315), 5, 1e-8),
                                   rtol=1e-10, atol=1e-12)


def test_optax_muon_dimension_numbers():
    """optax's muon_weight_dimension_numbers: a 3-D leaf as one (fan_in x fan_out) matrix per
    index of its batch axis, a transposed 2-D leaf, and a 2-D leaf given to AdamW."""
    params, grads = _muon_problem(steps=10)
    gen = torch.Generator().manual_seed(4)
    params["k"] = torch.randn(2, 3, 4, dtype=D, generator=gen)
    noise = [torch.randn(2, 3, 4, dtype=D, generator=gen) for _ in grads]
    grads = [lambda p, f=f, n=n: {**f({k: p[k] for k in "wvb"}), "k": n + 0.3 * p["k"]}
             for f, n in zip(grads, noise)]
    specs = {"w": fo.MuonDimensionNumbers(1, 0), "v": None, "b": None,
             "k": fo.MuonDimensionNumbers((0,), (2,))}
    tx = fo.optax_muon(lr=0.02, weight_decay=0.1, dimension_numbers=specs)
    state = tx.init(params)
    p = dict(params)
    ref = _optax_muon_reference(params, grads, 0.02, weight_decay=0.1,
                                dims={"w": (1, 0), "v": None, "b": None, "k": (0, 2)})
    for want, grad_fn in zip(ref, grads):
        u, state = tx.update(grad_fn(p), state, p)
        p = {k: p[k] + u[k] for k in p}
        for k in p:
            torch.testing.assert_close(p[k], want[k], rtol=1e-10, atol=1e-12)


def test_muon_dimension_numbers_errors():
    g = {"w": torch.ones(2, 3, dtype=D), "b": torch.ones(3, dtype=D)}
    for specs, match in (({"w": fo.MuonDimensionNumbers(0, 0), "b": None}, "overlap"),
                         ({"w": fo.MuonDimensionNumbers(0, 2), "b": None}, "do not fit"),
                         ({"w": fo.MuonDimensionNumbers(), "b": None}, "no dimension numbers")):
        tx = fo.transforms.scale_by_muon(layout="jax", dimension_numbers=specs, ns_dtype=None)
        with pytest.raises(ValueError, match=match):
            tx.update(g if match == "no dimension numbers" else {"w": g["w"], "b": None},
                      tx.init(g))
    with pytest.raises(ValueError, match="layout='jax'"):
        fo.transforms.scale_by_muon(dimension_numbers={"w": fo.MuonDimensionNumbers()})

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

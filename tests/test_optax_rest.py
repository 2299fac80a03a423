"""optax's last contrib names with a native home: ``split_real_and_imaginary`` (a combinator),
optax's ``reduce_on_plateau`` rule (an option of the plateau transform) and optax's Muon (options
of ``scale_by_muon``). Each reference formula is written out plainly following optax 0.2.8's
source, and compared in float64."""

from __future__ import annotations

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

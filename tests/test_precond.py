"""The Kronecker-factored and eigenbasis preconditioners (``aliases.preconditioned`` and their
blocks) against their reference algorithms, written out plainly below from the published code
(SOAP: the authors' ``soap.py``; Shampoo: Gupta et al.'s algorithm with the practical parts of
``distributed_shampoo``; PSGD-Kron: Li's ``psgd_torch`` Kron preconditioner): float64
trajectories of 20+ steps on a few shapes, non-default arguments, ~1e-10 relative.

The references loop over steps and leaves with plain torch ops (nothing from the library but
the counter-based random stream of :mod:`functional_optim._random`, where PSGD needs the same
draws)."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo

STEPS = 22
RTOL = 1e-10


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _grads(seed=1):
    """A step's gradients at ``params``: a quartic bowl's plus a fixed random term per step."""
    noise = {}

    def grads(params, step):
        if step not in noise:
            g = torch.Generator().manual_seed(seed * 1000 + step)
            noise[step] = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        return [p ** 3 / 3 + p + 0.5 * n for p, n in zip(params, noise[step])]

    return grads


def _trajectory(tx, params, grads, steps=STEPS):
    state = tx.init(params)
    out = []
    for t in range(steps):
        u, state = tx.update(grads(params, t), state, params)
        params = fo.apply_updates(params, u)
        out.append(params)
    return out


def _close(got, expected, rtol=RTOL):
    for t, (a, b) in enumerate(zip(got, expected)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=rtol, atol=rtol,
                                       msg=lambda m, t=t: f"step {t}: {m}")


# -- SOAP ----------------------------------------------------------------------------------------

def _merge(shape, max_dim):
    """The reference's dimension merging (consecutive axes while the product <= max_dim)."""
    out, run = [], 1
    for s in shape:
        if run * s > max_dim:
            out.append(run if run > 1 else s)
            run = s if run > 1 else 1
        else:
            run *= s
    if run > 1 or not out:
        out.append(run)
    return out


def _project(x, qs, back=False):
    for q in qs:
        x = x.movedim(0, -1) if q is None else torch.tensordot(x, q, dims=([0], [1 if back
                                                                                  else 0]))
    return x


def soap_reference(params, grads, lr, b1, b2, bs, eps, wd, freq, max_dim=10000, merge=False,
                   one_d=False, normalize=False, correct_bias=True, steps=STEPS):
    """The authors' SOAP (first release), per leaf: the first step builds GG and Q = eigh(GG)
    (decreasing eigenvalues) and does nothing else; later steps run Adam on the gradient
    projected by Q, step, then update GG and, every ``freq`` steps, refresh Q by one power
    iteration + QR (sorting the columns and exp_avg_sq by Q^T GG Q's diagonal). The decay is on
    the parameters before the step."""
    bs = b2 if bs < 0 else bs
    state = [None] * len(params)
    out = []
    for t in range(steps):
        gs = grads(params, t)
        new = []
        for i, (p, g) in enumerate(zip(params, gs)):
            if p.ndim == 1:
                view = list(p.shape)
                has = [one_d and p.shape[0] <= max_dim]
            else:
                view = _merge(p.shape, max_dim) if merge and p.ndim > 1 else list(p.shape)
                has = [d <= max_dim for d in view]
            x = g.reshape(view)
            st = state[i]
            first = st is None
            if first:
                st = state[i] = {"step": 0, "m": torch.zeros(view, dtype=p.dtype),
                                 "v": torch.zeros(view, dtype=p.dtype), "Q": None,
                                 "GG": [torch.zeros(d, d, dtype=p.dtype) if h else None
                                        for d, h in zip(view, has)]}
            else:
                xr = _project(x, st["Q"])
                st["step"] += 1
                k = st["step"]
                st["m"] = b1 * st["m"] + (1 - b1) * xr
                st["v"] = b2 * st["v"] + (1 - b2) * xr * xr
                size = lr * ((1 - b2 ** k) ** 0.5 / (1 - b1 ** k) if correct_bias else 1.0)
                u = _project(st["m"] / (st["v"].sqrt() + eps), st["Q"], back=True)
                if normalize:
                    u = u / (1e-30 + (u ** 2).mean() ** 0.5)
                p = p - size * u.reshape(p.shape) - lr * wd * p
            # update_preconditioner
            if st["Q"] is not None:
                st["m"] = _project(st["m"], st["Q"], back=True)
            for a, gg in enumerate(st["GG"]):
                if gg is not None:
                    xa = x.movedim(a, 0).reshape(x.shape[a], -1)
                    st["GG"][a] = gg + (1 - bs) * (xa @ xa.T - gg)
            if st["Q"] is None:
                st["Q"] = [None if gg is None else torch.linalg.eigh(
                    gg + 1e-30 * torch.eye(gg.shape[0], dtype=gg.dtype))[1].flip(1)
                    for gg in st["GG"]]
            if st["step"] > 0 and st["step"] % freq == 0:
                qs = []
                for a, (gg, o) in enumerate(zip(st["GG"], st["Q"])):
                    if gg is None:
                        qs.append(None)
                        continue
                    mo = gg @ o
                    order = torch.argsort(torch.diag(o.T @ mo), descending=True)
                    st["v"] = st["v"].index_select(a, order)
                    qs.append(torch.linalg.qr(mo[:, order])[0])
                st["Q"] = qs
            if st["step"] > 0:
                st["m"] = _project(st["m"], st["Q"])
            new.append(p)
        params = new
        out.append(params)
    return out


SOAP_SHAPES = [(), (3,), (4, 3), (2, 5), (2, 3, 2), (2, 2, 3)]


@pytest.mark.parametrize("options", [
    {},
    {"precondition_1d": True, "normalize_grads": True, "correct_bias": False},
    {"merge_dims": True, "max_precond_dim": 4, "shampoo_beta": 0.7},
], ids=["default", "1d_normalize_nobias", "merged_max_dim"])
def test_soap(options):
    lr, b1, b2, eps, wd, freq = 0.02, 0.9, 0.95, 1e-6, 0.1, 3
    opts = dict(options)
    bs = opts.pop("shampoo_beta", -1.0)
    tx = fo.soap(lr, (b1, b2), bs, eps, wd, precondition_frequency=freq, precond_dtype=None,
                 **opts)
    ref = dict(max_dim=opts.get("max_precond_dim", 10000), merge=opts.get("merge_dims", False),
               one_d=opts.get("precondition_1d", False),
               normalize=opts.get("normalize_grads", False),
               correct_bias=opts.get("correct_bias", True))
    grads = _grads()
    _close(_trajectory(tx, _params(SOAP_SHAPES), grads),
           soap_reference(_params(SOAP_SHAPES), grads, lr, b1, b2, bs, eps, wd, freq, **ref))


def test_soap_host_refresh_same_numbers():
    """Deciding the decompositions on the host gives the tensor-select trajectory."""
    kw = dict(precondition_frequency=2, precond_dtype=None, weight_decay=0.1)
    grads = _grads()
    _close(_trajectory(fo.soap(0.02, host_refresh=True, **kw), _params(SOAP_SHAPES), grads, 8),
           _trajectory(fo.soap(0.02, **kw), _params(SOAP_SHAPES), grads, 8), rtol=1e-12)

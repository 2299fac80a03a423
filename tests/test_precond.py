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


# -- Shampoo -------------------------------------------------------------------------------------

def _split_blocks(x, block):
    """The reference's block partitioner: each axis cut into pieces of ``block`` (the last
    smaller), blocks in row-major order."""
    pieces = [x]
    for axis, d in enumerate(x.shape):
        if d > block:
            sizes = [block] * (d // block) + ([d % block] if d % block else [])
            pieces = [q for p in pieces for q in torch.split(p, sizes, dim=axis)]
    return pieces


def _merge_blocks(pieces, shape, block):
    for axis in reversed(range(len(shape))):
        n = -(-shape[axis] // block)
        if n > 1:
            pieces = [torch.cat(pieces[i:i + n], dim=axis) for i in range(0, len(pieces), n)]
    return pieces[0]


def _small_dims_merged(shape, max_dim):
    """Anil et al.'s ``_merge_small_dims``."""
    out, product = [], 1
    for d in shape:
        if product * d <= max_dim:
            product *= d
        else:
            if product > 1:
                out.append(product)
            product = d
    if product > 1:
        out.append(product)
    return out


def shampoo_reference(params, grads, lr, mom, wd, b2, eps, gb2, geps, block, freq, start,
                      graft, nesterov=False, exponent=None, merge=True, steps=STEPS):
    """Shampoo as Anil et al.'s PyTorch ``Shampoo`` orders a step (statistics, roots every
    ``freq`` steps, preconditioned gradient, grafting by norm, L2 decay, heavy-ball momentum),
    with the root ``(L + eps I)^(-1/p)`` by eigendecomposition and the grafting method's own
    direction before ``start``."""
    state = [None] * len(params)
    out = []
    for t in range(1, steps + 1):
        gs = grads(params, t - 1)
        new = []
        for i, (p, g) in enumerate(zip(params, gs)):
            view = _small_dims_merged(p.shape, block) if merge else list(p.shape)
            rank = len(view)
            if state[i] is None:
                blocks = _split_blocks(torch.zeros(view, dtype=p.dtype), block) \
                    if rank > 1 else []
                state[i] = {"m": torch.zeros_like(p), "s": torch.zeros_like(p),
                            "L": [[torch.zeros(d, d, dtype=p.dtype) for d in b.shape]
                                  for b in blocks],
                            "P": [[torch.eye(d, dtype=p.dtype) for d in b.shape]
                                  for b in blocks]}
            st = state[i]
            if graft == "adagrad":
                st["s"] = st["s"] + g * g
                d = g / (st["s"].sqrt() + geps)
            elif graft == "adam":
                st["s"] = gb2 * st["s"] + (1 - gb2) * g * g
                d = g / ((st["s"] / (1 - gb2 ** t)).sqrt() + geps)
            else:
                d = g
            s = g
            if rank > 1:
                pieces = _split_blocks(g.reshape(view), block)
                outs = []
                for j, x in enumerate(pieces):
                    for k in range(rank):
                        axes = [a for a in range(rank) if a != k]
                        w = 1.0 if b2 == 1.0 else 1 - b2
                        st["L"][j][k] = b2 * st["L"][j][k] + w * torch.tensordot(x, x,
                                                                                 [axes, axes])
                        if t % freq == 0:
                            lam, v = torch.linalg.eigh(st["L"][j][k])
                            pw = exponent or 2 * rank
                            st["P"][j][k] = v @ torch.diag((lam.clamp(min=0) + eps)
                                                           ** (-1 / pw)) @ v.T
                    for k in range(rank):
                        x = torch.tensordot(x, st["P"][j][k], [[0], [0]])
                    outs.append(x)
                s = _merge_blocks(outs, view, block).reshape(p.shape)
            if graft != "none":
                s = s * (d.norm() / (s.norm() + 1e-16))
            u = s if t >= start else d
            u = u + wd * p
            st["m"] = mom * st["m"] + u
            u = mom * st["m"] + u if nesterov else st["m"]
            new.append(p - lr * u)
        params = new
        out.append(params)
    return out


SHAMPOO_SHAPES = [(), (3,), (4, 3), (5, 2), (2, 3, 2), (1, 7)]


@pytest.mark.parametrize("options", [
    dict(graft="adam", block_size=3, precondition_frequency=2, start_preconditioning_step=3),
    dict(graft="adagrad", block_size=4, beta2=1.0, nesterov=True, merge_small_dims=False),
    dict(graft="sgd", block_size=6, precondition_frequency=3, inverse_exponent=2),
    dict(graft="none", block_size=2),
], ids=["adam_blocked_start3", "adagrad_sums_nesterov_unmerged", "sgd_merged_p2", "none"])
def test_shampoo(options):
    lr, mom, wd, eps, gb2, geps = 0.05, 0.8, 0.05, 1e-6, 0.9, 1e-5
    opts = dict(options)
    b2 = opts.pop("beta2", 0.95)
    tx = fo.shampoo(lr, mom, wd, b2, eps, gb2, geps, **opts)
    ref = dict(block=opts["block_size"], freq=opts.get("precondition_frequency", 1),
               start=opts.get("start_preconditioning_step", 1), graft=opts["graft"],
               nesterov=opts.get("nesterov", False), exponent=opts.get("inverse_exponent"),
               merge=opts.get("merge_small_dims", True))
    grads = _grads()
    _close(_trajectory(tx, _params(SHAMPOO_SHAPES), grads),
           shampoo_reference(_params(SHAMPOO_SHAPES), grads, lr, mom, wd, b2, eps, gb2, geps,
                             **ref))


def test_shampoo_host_refresh_and_fallback():
    """The roots decided on the host give the same trajectory; a root that fails (a
    non-finite statistic) keeps the previous preconditioner."""
    kw = dict(block_size=3, precondition_frequency=2)
    grads = _grads()
    _close(_trajectory(fo.shampoo(0.05, host_refresh=True, **kw), _params(SHAMPOO_SHAPES),
                       grads, 6),
           _trajectory(fo.shampoo(0.05, **kw), _params(SHAMPOO_SHAPES), grads, 6), rtol=1e-12)
    tx = fo.scale_by_shampoo(block_size=4)
    g = torch.randn(4, 3, dtype=torch.float64)
    _, state = tx.update([g], tx.init([g]))
    kept = state.preconditioners[0]
    broken = state._replace(statistics=[tuple(torch.full_like(s, float("nan"))
                                              for s in state.statistics[0])])
    _, after = tx.update([g], broken)
    for old, new in zip(kept, after.preconditioners[0]):
        torch.testing.assert_close(new, old, rtol=0, atol=0)


# -- PSGD-Kron -----------------------------------------------------------------------------------

def _along(x, k, fn):
    """``fn`` applied to ``x`` viewed as a matrix with axis ``k`` as its rows."""
    moved = x.movedim(k, 0)
    return fn(moved.reshape(moved.shape[0], -1)).reshape(moved.shape).movedim(0, k)


def _spectral_lower_bound(a):
    """The reference's cheap lower bound of the spectral norm (its branch on the host)."""
    max_abs = a.abs().max()
    if max_abs == 0:
        return max_abs
    a = a / max_abs
    aa = a * a
    value0, i = torch.max(aa.sum(0), 0)
    value1, j = torch.max(aa.sum(1), 0)
    if value0 > value1:
        x = a[:, i] @ a
        return max_abs * torch.linalg.vector_norm((x / torch.linalg.vector_norm(x)) @ a.T)
    x = a @ a[j]
    return max_abs * torch.linalg.vector_norm(a.T @ (x / torch.linalg.vector_norm(x)))


def psgd_kron_reference(params, grads, lr, beta, wd, prob, plr, max_tri=2048, min_ndim=2,
                        mode=None, into=True, scale=1.0, seed=0, steps=STEPS):
    """``kron_torch``'s ``Kron`` step: debiased momentum; with probability ``prob`` (one draw
    per step) each factor steps on the whitening criterion with a normal probe; the momentum
    preconditioned by Q^T Q per axis, its RMS capped at 1.1; decay on matrices only. The draws
    are the library's documented stream (:mod:`functional_optim._random`)."""
    from functional_optim import _random
    tiny = torch.finfo(torch.bfloat16).tiny
    key = _random.key(seed)
    state = [None] * len(params)
    out = []
    for t in range(1, steps + 1):
        gs = grads(params, t - 1)
        p_t = prob(t - 1) if callable(prob) else prob
        do = bool(_random.uniform(key, 0, torch.zeros((), dtype=torch.float64)) < p_t)
        new = []
        for i, (p, g) in enumerate(zip(params, gs)):
            if state[i] is None:
                if p.ndim == 0:
                    qs = [scale * torch.ones((), dtype=p.dtype)]
                else:
                    s = scale ** (1 / p.ndim)
                    largest = max(range(p.ndim), key=lambda a: (p.shape[a], a))
                    qs = []
                    for a, d in enumerate(p.shape):
                        diag = (d == 1 or d > max_tri or p.ndim < min_ndim or mode == "all_diag"
                                or (mode == "one_diag" and a == largest))
                        qs.append(s * torch.ones(d, dtype=p.dtype) if diag
                                  else s * torch.eye(d, dtype=p.dtype))
                state[i] = {"m": torch.zeros_like(p), "Q": qs}
            st = state[i]
            st["m"] = beta * st["m"] + (1 - beta) * g
            mh = st["m"] / (1 - beta ** t)
            if do:
                h = mh if into else g
                v = _random.normal(key, 1 + i, h)
                a, b = h, v
                for k, q in enumerate(st["Q"]):
                    if q.ndim == 0:
                        a, b = a * q, b / q
                    elif q.ndim == 1:
                        a = _along(a, k, lambda x, q=q: q[:, None] * x)
                        b = _along(b, k, lambda x, q=q: x / q[:, None])
                    else:
                        a = _along(a, k, lambda x, q=q: q @ x)
                        b = _along(b, k, lambda x, q=q: torch.linalg.solve_triangular(
                            q.T, x, upper=False))
                for k, q in enumerate(st["Q"]):
                    if q.ndim == 0:
                        t1, t2 = a * a, b * b
                    else:
                        am = a.movedim(k, 0).reshape(a.shape[k], -1)
                        bm = b.movedim(k, 0).reshape(b.shape[k], -1)
                        t1, t2 = am @ am.T, bm @ bm.T
                        if q.ndim == 1:
                            t1, t2 = torch.diag(t1), torch.diag(t2)
                    if q.ndim < 2:
                        st["Q"][k] = q - plr * (t1 - t2) * q / ((t1 + t2).abs().max() + tiny)
                    else:
                        st["Q"][k] = q - plr * torch.triu(t1 - t2) @ q / (
                            _spectral_lower_bound(t1 + t2) + tiny)
            pre = mh
            for k, q in enumerate(st["Q"]):
                if q.ndim == 0:
                    pre = pre * q * q
                elif q.ndim == 1:
                    pre = _along(pre, k, lambda x, q=q: (q * q)[:, None] * x)
                else:
                    pre = _along(pre, k, lambda x, q=q: q.T @ q @ x)
            pre = pre * min(1.0, 1.1 / (float(pre.square().mean().sqrt()) + 1e-6))
            if p.ndim >= 2:
                pre = pre + wd * p
            new.append(p - lr * pre)
        key = _random.next_key(key)
        params = new
        out.append(params)
    return out


PSGD_SHAPES = [(), (3,), (4, 3), (2, 5), (2, 3, 2), (1, 4)]


@pytest.mark.parametrize("options", [
    {},
    dict(preconditioner_update_probability=0.5, memory_save_mode="one_diag",
         momentum_into_precond_update=False, precond_init_scale=2.0, seed=7),
    dict(max_size_triangular=3, min_ndim_triangular=1, memory_save_mode=None),
    dict(memory_save_mode="all_diag"),
], ids=["default", "half_prob_one_diag_grad_scale2", "max3_vectors_triangular", "all_diag"])
def test_psgd_kron(options):
    lr, beta, wd, plr = 0.05, 0.8, 0.1, 0.3
    opts = dict(options)
    prob = opts.pop("preconditioner_update_probability", 1.0)
    tx = fo.psgd_kron(lr, beta, wd, prob, plr, **opts)
    ref = dict(max_tri=opts.get("max_size_triangular", 2048),
               min_ndim=opts.get("min_ndim_triangular", 2), mode=opts.get("memory_save_mode"),
               into=opts.get("momentum_into_precond_update", True),
               scale=opts.get("precond_init_scale", 1.0), seed=opts.get("seed", 0))
    grads = _grads()
    _close(_trajectory(tx, _params(PSGD_SHAPES), grads),
           psgd_kron_reference(_params(PSGD_SHAPES), grads, lr, beta, wd, prob, plr, **ref))


@pytest.mark.parametrize("make", [fo.soap, lambda: fo.shampoo(block_size=3), fo.psgd_kron],
                         ids=["soap", "shampoo", "psgd_kron"])
def test_errors_name_the_leaf(make):
    """A state made for other parameters, a state of another dtype and a complex update each
    raise an error naming the leaf, not a deep stack trace."""
    tx = make()
    state = tx.init({"w": torch.randn(4, 3), "b": torch.randn(3)})
    with pytest.raises(fo.TreeMismatchError, match="leaf 'w'.*shape"):
        tx.update({"w": torch.randn(3, 4), "b": torch.randn(3)}, state,
                  {"w": torch.randn(3, 4), "b": torch.randn(3)})
    with pytest.raises(fo.TreeMismatchError, match="leaf 'b'.*dtype"):
        tx.update({"w": torch.randn(4, 3), "b": torch.randn(3, dtype=torch.float64)}, state,
                  {"w": torch.randn(4, 3), "b": torch.randn(3)})
    with pytest.raises(TypeError, match="complex.*leaf 'w'"):
        tx.update({"w": torch.randn(4, 3, dtype=torch.complex64), "b": torch.randn(3)}, state,
                  {"w": torch.randn(4, 3), "b": torch.randn(3)})


def test_soap_negative_shampoo_beta_tensor_means_beta2():
    """``shampoo_beta < 0`` as a tensor selects ``β2`` as the Python number does."""
    grads = _grads()
    kw = dict(precondition_frequency=2, precond_dtype=None)
    _close(_trajectory(fo.soap(0.02, shampoo_beta=torch.tensor(-1.0, dtype=torch.float64), **kw),
                       _params(SOAP_SHAPES), grads, 6),
           _trajectory(fo.soap(0.02, shampoo_beta=-1.0, **kw), _params(SOAP_SHAPES), grads, 6),
           rtol=1e-14)


def test_psgd_kron_annealed_update_probability():
    """The reference's annealing of the update probability, ``clamp(exp(-d (n - n0)), p_min,
    1)`` at step ``n`` (from 0), is optax's exponential decay injected as a live value."""
    import math
    d, n0, p_min = 0.4, 3, 0.2
    schedule = fo.schedules.exponential_decay(1.0, 1, math.exp(-d), transition_begin=n0,
                                              end_value=p_min)
    tx = fo.inject_hparams(fo.psgd_kron(0.05, 0.8, 0.1, precond_lr=0.3, seed=2),
                           {"preconditioner_update_probability": schedule})
    grads = _grads()
    _close(_trajectory(tx, _params(PSGD_SHAPES), grads),
           psgd_kron_reference(_params(PSGD_SHAPES), grads, 0.05, 0.8, 0.1,
                               lambda n: min(1.0, max(p_min, math.exp(-d * (n - n0)))), 0.3,
                               seed=2))

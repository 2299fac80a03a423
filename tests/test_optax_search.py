"""optax's line searches, optax's pure L-BFGS and microbatching against reference formulas
written out plainly here (Python loops and branches on numbers, following optax 0.2.8's
published algorithms; cross-checked by hand against optax itself), in float64 over 20 steps on
a tree of a few shapes, with default and non-default arguments; plus what the conformance suite
leaves to this file (a symbolic trace free of host syncs, meta-gradients along a moving
trajectory, complex parameters, the drop-in class, errors)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from test_conformance import SYNC_OPS
from torch.fx.experimental.proxy_tensor import make_fx

import functional_optim as fo
import functional_optim.optim as fo_optim
from functional_optim import microbatching as mb

F64 = torch.float64
STEPS = 20


# -- the problem: a smooth non-quadratic objective over a tree of three shapes -----------------


def _start():
    gen = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, generator=gen, dtype=F64),
            "m": torch.randn(2, 3, generator=gen, dtype=F64) * 0.5,
            "s": torch.tensor(0.7, dtype=F64)}


def _f_flat(x):
    """The objective on the flat vector (w: 4, m: 6, s: 1)."""
    w, m, s = x[:4], x[4:10], x[10]
    return (((w - 1.0) ** 4).sum() + 0.5 * (w ** 2).sum()
            + torch.nn.functional.softplus(m).sum() + 0.1 * (w.sum() * m.sum()) ** 2
            + (s - 0.3) ** 2 * (1 + m.sum() ** 2))


def _flat(tree):
    return torch.cat([tree["w"].reshape(-1), tree["m"].reshape(-1), tree["s"].reshape(-1)])


def _f(tree):
    return _f_flat(_flat(tree))


def _value_grad_flat(x):
    x = x.detach().requires_grad_(True)
    v = _f_flat(x)
    (g,) = torch.autograd.grad(v, x)
    return float(v.detach()), g.detach()


def _run(tx, steps=STEPS, from_state=False):
    """The library's trajectory (flat parameters after each step)."""
    params = _start()
    state = tx.init(params)
    vg = fo.value_and_grad_from_state(_f)
    out = []
    for _ in range(steps):
        if from_state:
            value, grad = vg(params, state=state)
        else:
            value, grad = fo.transforms.linesearch.value_and_grad(_f, params)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=_f)
        params = fo.apply_updates(params, updates)
        out.append(_flat(params))
    return torch.stack(out)


def _close(actual, expected, rtol=1e-10):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(
        expected.abs().max()))


# -- reference formulas --------------------------------------------------------------------------


def _ref_backtracking(x, v, g, u, lr_prev, J, c=1e-4, dec=0.8, inc=1.5, max_lr=1.0, atol=0.0,
                      rtol=0.0):
    """optax's Armijo backtracking: the step along ``u`` from ``x`` and the value there."""
    slope = float(g @ u)
    lr = min(inc * lr_prev, max_lr)
    it, err, new_v = 0, math.inf, v
    while not err <= atol and it <= J:
        if it > 0:
            lr = dec * lr
        new_v = float(_f_flat(x + lr * u))
        e = new_v - (1.0 + rtol) * v - lr * c * slope
        err = math.inf if math.isnan(e) else max(e, 0.0)
        it += 1
    return (0.0 if math.isinf(err) else lr), new_v


def _cubic(a, fa, fpa, b, fb, c, fc):
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    if denom == 0:
        return math.nan
    big_a = (dc ** 2 * (fb - fa - fpa * db) - db ** 2 * (fc - fa - fpa * dc)) / denom
    big_b = (-dc ** 3 * (fb - fa - fpa * db) + db ** 3 * (fc - fa - fpa * dc)) / denom
    radical = big_b * big_b - 3 * big_a * fpa
    if radical < 0 or big_a == 0:
        return math.nan
    return a + (-big_b + math.sqrt(radical)) / (3 * big_a)


def _quad(a, fa, fpa, b, fb):
    db = b - a
    if db == 0:
        return math.nan
    big_b = (fb - fa - fpa * db) / db ** 2
    return math.nan if big_b == 0 else a - fpa / (2 * big_b)


def _ref_zoom(x, v0, g0, u, guess, steps, max_lr=None, tol=0.0, inc=2.0, c1=1e-4, c2=0.9,
              c3=1e-6, precision=1e-5):
    """optax's zoom search (Nocedal & Wright 3.5/3.6 with Hager-Zhang's approximate decrease):
    ``(step, value, gradient)`` at the point it returns."""
    s0 = float(g0 @ u)

    def at(t):
        v, g = _value_grad_flat(x + t * u)
        return v, g, float(g @ u)

    def errors(t, v, s):
        dec = v - v0 - c1 * t * s0
        if c3 is not None:
            dec = min(max(s - (2 * c1 - 1) * s0, v - v0 - c3 * abs(v0)), dec)
        curv = abs(s) - c2 * abs(s0)
        fix = lambda e: math.inf if math.isnan(e) else max(e, 0.0)  # noqa: E731
        return fix(dec), fix(curv)

    t, v, g, s = 0.0, v0, g0, s0  # the current trial
    lo = hi = (0.0, v0, s0)       # bracket ends: (step, value, slope)
    ref = (0.0, v0)               # the cubic's third point
    safe = (0.0, v0, g0)          # best step with sufficient decrease
    found = False
    for count in range(steps):
        if not found:
            t_new = guess if count == 0 else inc * t
            reached = max_lr is not None and t_new >= max_lr
            if max_lr is not None:
                t_new = min(t_new, max_lr)
            v_new, g_new, s_new = at(t_new)
            dec, curv = errors(t_new, v_new, s_new)
            if dec <= tol:
                safe = (t_new, v_new, g_new)
            set_high = dec > 0 or (v_new >= v and count > 0)
            set_low = s_new >= 0 and not set_high
            lo, hi = ((t_new, v_new, s_new), (t, v, s)) if set_low else ((t, v, s),
                                                                          (t_new, v_new, s_new))
            ref = (lo[0], lo[1])
            found = set_high or set_low or max(dec, curv) <= tol
            done = max(dec, curv) <= tol or (reached and not found)
            failed = count + 1 >= steps and not done
        else:
            delta = abs(hi[0] - lo[0])
            left, right = min(lo[0], hi[0]), max(lo[0], hi[0])
            mid = _cubic(lo[0], lo[1], lo[2], hi[0], hi[1], ref[0], ref[1])
            if not (left + 0.2 * delta < mid < right - 0.2 * delta):
                mid = _quad(lo[0], lo[1], lo[2], hi[0], hi[1])
                if not (left + 0.1 * delta < mid < right - 0.1 * delta):
                    mid = (lo[0] + hi[0]) / 2
            t_new = mid
            v_new, g_new, s_new = at(t_new)
            dec, curv = errors(t_new, v_new, s_new)
            if dec <= tol and v_new < safe[1]:
                safe = (t_new, v_new, g_new)
            done = max(dec, curv) <= tol
            high_to_mid = dec > 0 or v_new >= lo[1]
            high_to_low = s_new * (hi[0] - lo[0]) >= 0 and not high_to_mid
            ref = (hi[0], hi[1]) if high_to_mid or high_to_low else (lo[0], lo[1])
            if high_to_mid:
                hi = (t_new, v_new, s_new)
            elif high_to_low:
                hi = lo
            if not high_to_mid:
                lo = (t_new, v_new, s_new)
            failed = (count + 1 >= steps or (delta <= precision and safe[0] > 0)) and not done
        t, v, g, s = t_new, v_new, g_new, s_new
        if failed and (safe[0] > 0 or math.isinf(dec)):
            t, v, g = safe
        if done or failed:
            break
    return t, v, g


def _ref_sgd_search(search, J, steps=STEPS, guess_one=False, **kw):
    """SGD's direction (the negative gradient) scaled by ``search``'s step, each step."""
    x = _flat(_start())
    lr_prev, out = 1.0, []
    for _ in range(steps):
        v, g = _value_grad_flat(x)
        u = -g
        if search == "backtracking":
            lr, _ = _ref_backtracking(x, v, g, u, lr_prev, J, **kw)
        else:
            lr = _ref_zoom(x, v, g, u, 1.0 if guess_one else lr_prev, J, **kw)[0]
        x = x + lr * u
        lr_prev = lr
        out.append(x)
    return torch.stack(out)


def _ref_lbfgs(steps=STEPS, memory=10, scale_init=True, lr=None, search=True, ls_steps=20):
    """optax's L-BFGS: the two-loop direction over the last ``memory`` pairs (every pair kept;
    rho = 0 for a zero product), -lr or the zoom search's step (guess 1)."""
    x = _flat(_start())
    pairs, prev, out = [], None, []
    for k in range(steps):
        v, g = _value_grad_flat(x)
        if prev is not None:
            dw, du = x - prev[0], g - prev[1]
            prod = float(du @ dw)
            pairs.append((dw, du, 0.0 if prod == 0 else 1.0 / prod))
            pairs = pairs[-memory:]
        if not scale_init:
            gamma = 1.0
        elif k == 0:
            gamma = min(1.0, 1.0 / float(g.norm()))
        else:
            den = float(du @ du)
            gamma = float(du @ dw) / den if den > 0 else 1.0
        q, alphas = g.clone(), []
        for dw_i, du_i, rho in reversed(pairs):
            a = rho * float(dw_i @ q)
            q = q - a * du_i
            alphas.append(a)
        q = gamma * q
        for (dw_i, du_i, rho), a in zip(pairs, reversed(alphas)):
            q = q + (a - rho * float(du_i @ q)) * dw_i
        u = -q if lr is None else -lr * q
        t = _ref_zoom(x, v, g, u, 1.0, ls_steps)[0] if search else 1.0
        prev = (x, g)
        x = x + t * u
        out.append(x)
    return torch.stack(out)


# -- trajectories --------------------------------------------------------------------------------

_BT_ARGS = dict(slope_rtol=0.3, decrease_factor=0.5, increase_factor=2.0, max_learning_rate=0.7,
                atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("store_grad", [False, True])
def test_backtracking_matches_reference(store_grad):
    tx = fo.chain(fo.sgd(lr=1.0), fo.scale_by_backtracking_linesearch(15, store_grad=store_grad))
    _close(_run(tx, from_state=store_grad), _ref_sgd_search("backtracking", J=15))


def test_backtracking_arguments_match_reference():
    tx = fo.chain(fo.sgd(lr=1.0), fo.scale_by_backtracking_linesearch(6, **_BT_ARGS))
    _close(_run(tx), _ref_sgd_search("backtracking", J=6, c=0.3, dec=0.5, inc=2.0, max_lr=0.7,
                                     atol=1e-3, rtol=1e-4))


def test_zoom_matches_reference():
    tx = fo.chain(fo.sgd(lr=1.0), fo.scale_by_zoom_linesearch(15))
    _close(_run(tx, from_state=True), _ref_sgd_search("zoom", J=15))


def test_zoom_arguments_match_reference():
    tx = fo.chain(fo.sgd(lr=1.0), fo.scale_by_zoom_linesearch(
        8, max_learning_rate=0.9, tol=1e-6, increase_factor=3.0, slope_rtol=1e-3,
        curv_rtol=0.5, approx_dec_rtol=None, stepsize_precision=1e-3,
        initial_guess_strategy="one"))
    _close(_run(tx), _ref_sgd_search("zoom", J=8, max_lr=0.9, tol=1e-6, inc=3.0, c1=1e-3,
                                     c2=0.5, c3=None, precision=1e-3, guess_one=True))


def test_optax_lbfgs_matches_reference():
    _close(_run(fo.optax_lbfgs(), from_state=True), _ref_lbfgs())


def test_optax_lbfgs_arguments_match_reference():
    tx = fo.optax_lbfgs(lr=0.05, memory_size=3, scale_init_precond=False, linesearch=None)
    _close(_run(tx), _ref_lbfgs(memory=3, scale_init=False, lr=0.05, search=False), rtol=1e-9)


@pytest.mark.parametrize("make", [
    lambda e: fo.chain(fo.sgd(lr=1.0), fo.scale_by_backtracking_linesearch(
        15, store_grad=True, early_exit=e)),
    lambda e: fo.optax_lbfgs(max_linesearch_steps=10, early_exit=e)])
def test_early_exit_gives_the_same_steps(make):
    torch.testing.assert_close(_run(make(True), steps=6, from_state=True),
                               _run(make(False), steps=6, from_state=True), rtol=0, atol=0)


# -- what the conformance suite leaves here -----------------------------------------------------


def _bound(tx):
    """``update(grads, state, params, hparams)`` with the objective bound (as for tracing)."""
    def update(grads, state, params, hparams):
        value, grad = fo.transforms.linesearch.value_and_grad(_f, params)
        return tx.update(fo.tree.map(torch.neg, grad), state, params, hparams, value=value,
                         grad=grad, value_fn=_f)
    return update


@pytest.mark.parametrize("make", [
    lambda: fo.scale_by_backtracking_linesearch(3, store_grad=True),
    lambda: fo.scale_by_zoom_linesearch(3, max_learning_rate=2.0)])
def test_searches_trace_without_host_syncs(make):
    """The masked loops make no host decision: a symbolic trace (on CPU: the fake-CUDA trace of
    the conformance suite cannot run autograd's engine) holds no syncing op, and replays the
    eager update with other hyperparameter values."""
    tx = make()
    params = _start()
    hparams = {k: torch.tensor(float(v), dtype=F64) for k, v in tx.hparams.items()}
    update = _bound(tx)
    graph = make_fx(update, tracing_mode="symbolic")(params, tx.init(params), params, hparams)
    synced = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"} & {
        f"{op}.default" for op in SYNC_OPS}
    assert not synced
    state = tx.init(params)
    for factor in (1.0, 0.7):
        h = {k: v * factor for k, v in hparams.items()}
        got = graph(params, state, params, h)
        expected = update(params, state, params, h)
        for a, b in zip(fo.tree.leaves(got), fo.tree.leaves(expected)):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lbfgs_meta_gradient_along_a_moving_trajectory():
    """d(final parameters)/d(initial parameters) through 4 steps of optax_lbfgs without a
    search (the pairs are nonzero: the suite's fixed-parameter state puts rho at its jump).
    Without the initial scaling: its first-step cap min(1, 1/|g|) has no gradient (optax's
    stop_gradient), which finite differences would see."""
    tx = fo.optax_lbfgs(lr=0.1, memory_size=2, scale_init_precond=False, linesearch=None)
    gen = torch.Generator().manual_seed(3)
    direction = torch.randn(11, generator=gen, dtype=F64)

    def final(x0):
        params = {"w": x0[:4], "m": x0[4:10].reshape(2, 3), "s": x0[10]}
        state = tx.init(params)
        for _ in range(4):
            grads = torch.func.grad(_f)(params)
            updates, state = tx.update(grads, state, params)
            params = fo.apply_updates(params, updates)
        return (_flat(params) * torch.arange(1.0, 12.0, dtype=F64)).sum()

    x0 = _flat(_start())
    analytic = torch.func.grad(final)(x0) @ direction
    eps = 1e-6
    numeric = (final(x0 + eps * direction) - final(x0 - eps * direction)) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_lbfgs_direction_on_complex_parameters_is_the_real_pairs_one():
    """Complex leaves: Re<du, dw> is the real inner product of the real pairs, so the direction
    of complex parameters is the direction of their real views."""
    gen = torch.Generator().manual_seed(5)
    tx = fo.scale_by_lbfgs_direction(memory_size=3)
    z = torch.randn(4, generator=gen, dtype=torch.complex128)
    sz, sr = tx.init({"z": z}), tx.init({"z": torch.view_as_real(z)})
    for _ in range(5):
        g = torch.randn(4, generator=gen, dtype=torch.complex128)
        uz, sz = tx.update({"z": g}, sz, {"z": z})
        ur, sr = tx.update({"z": torch.view_as_real(g)}, sr, {"z": torch.view_as_real(z)})
        torch.testing.assert_close(torch.view_as_real(uz["z"]), ur["z"], rtol=1e-12, atol=0)
        z = z - 0.1 * uz["z"]


def test_drop_in_without_a_search_follows_the_alias():
    params = {k: torch.nn.Parameter(v.clone()) for k, v in _start().items()}
    opt = fo_optim.OptaxLBFGS(list(params.values()), lr=0.05, memory_size=3, linesearch=None)
    expected = _run(fo.optax_lbfgs(lr=0.05, memory_size=3, linesearch=None), steps=5)
    for i in range(5):
        opt.zero_grad()
        _f(params).backward()
        opt.step()
        _close(_flat({k: p.detach() for k, p in params.items()}), expected[i], rtol=1e-12)


def test_errors_name_what_is_missing():
    params = _start()
    tx = fo.scale_by_zoom_linesearch(3)
    with pytest.raises(TypeError, match="missing: value_fn"):
        tx.update(params, tx.init(params), params, value=1.0, grad=params)
    with pytest.raises(ValueError, match="initial_guess_strategy"):
        fo.scale_by_zoom_linesearch(3, initial_guess_strategy="max")
    with pytest.raises(fo.HParamError, match="max_backtracking_steps"):
        fo.scale_by_backtracking_linesearch(0)
    with pytest.raises(fo.HParamError, match="memory_size"):
        fo.scale_by_lbfgs_direction(0)
    with pytest.raises(ValueError, match="linesearch"):
        fo.optax_lbfgs(linesearch="backtracking")
    bt = fo.scale_by_backtracking_linesearch(3)
    with pytest.raises(ValueError, match="no value or gradient"):
        fo.value_and_grad_from_state(_f)(params, state=bt.init(params))


def test_value_fn_takes_its_keyword_arguments():
    """Keyword arguments of ``update`` named like ``value_fn``'s parameters reach it; the
    others (for other blocks of a chain) do not."""
    def f(p, scale):
        return scale * _f(p)

    tx = fo.chain(fo.sgd(lr=1.0), fo.scale_by_backtracking_linesearch(5))
    params = _start()
    value, grad = fo.transforms.linesearch.value_and_grad(f, params, {"scale": 2.0})
    updates, _ = tx.update(grad, tx.init(params), params, value=value, grad=grad, value_fn=f,
                           scale=2.0, unrelated=1)
    assert all(torch.isfinite(u).all() for u in fo.tree.leaves(updates))


# -- microbatching -------------------------------------------------------------------------------


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64)


def test_microbatch_accumulators():
    x, w = _batch()

    def f(xb, w):
        return {"loss": torch.sin(xb @ w).pow(2).sum(), "rows": xb @ w, "n": xb.sum(0)}

    full = f(x, w)
    out = mb.microbatch(f, 0, 3, {"loss": mb.AccumulationType.SUM,
                                  "rows": mb.AccumulationType.CONCAT,
                                  "n": mb.AccumulationType.MEAN})(x, w)
    _close(out["loss"], full["loss"], rtol=1e-13)
    _close(out["rows"], full["rows"], rtol=1e-13)  # in the batch's order
    _close(out["n"], full["n"] / 4, rtol=1e-13)    # the mean of 4 micro-batch sums
    # micro-batch i holds examples i, i + 4, i + 8 (column-major, optax's split)
    first = mb.microbatch(lambda xb: xb, 0, 3, mb.AccumulationType.CONCAT,
                          num_real_microbatches=1)(x)
    _close(first[0::4], x[0::4], rtol=0)


def test_microbatch_real_count_as_number_or_tensor():
    x, w = _batch()

    def f(xb):
        return (xb @ w).sum()

    manual = sum(float((x[i::6] @ w).sum()) for i in range(3)) / 3
    for real in (3, torch.tensor(3)):
        out = mb.microbatch(f, 0, 2, mb.AccumulationType.RUNNING_MEAN,
                            num_real_microbatches=real)(x)
        _close(out, torch.tensor(manual, dtype=F64), rtol=1e-13)


def test_micro_grad_clipped_per_example_sum():
    x, w = _batch()

    def loss(w, xb):
        return torch.sin(xb @ w).pow(2).mean()

    def clip(g):
        return g / torch.clamp(g.norm() / 0.1, min=1.0)

    grad, out = mb.micro_grad(loss, batch_argnums=1, microbatch_size=4, transform_fn=clip,
                              metrics_fn=torch.linalg.norm)(w, x)
    per_example = [torch.func.grad(loss)(w, x[i:i + 1]) for i in range(12)]
    _close(grad, sum(clip(g) for g in per_example), rtol=1e-12)
    _close(out.metrics, torch.stack([g.norm() for g in per_example]), rtol=1e-12)
    _close(out.values, torch.stack([loss(w, x[i:i + 1]) for i in range(12)]), rtol=1e-12)
    squares = mb.micro_vmap(lambda xi: (xi @ w) ** 2, microbatch_size=3)(x)
    _close(squares, (x @ w) ** 2, rtol=1e-13)


# -- linear algebra --------------------------------------------------------------------------------


def _spd(seed=0, n=5):
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(n, n, generator=gen, dtype=F64)
    return b @ b.T + 0.1 * torch.eye(n, dtype=F64)


def test_power_iteration_finds_the_dominant_eigenpair():
    s = _spd()
    values, vectors = torch.linalg.eigh(s)
    for early_exit in (False, True):
        eig, vec = fo.power_iteration(s, num_iters=200, error_tolerance=1e-12,
                                      early_exit=early_exit)
        _close(eig, values[-1], rtol=1e-10)
        _close(vec.abs(), vectors[:, -1].abs(), rtol=1e-5)
    batch = torch.stack([_spd(i) for i in range(3)])
    v0 = torch.ones(5, dtype=F64)
    vmapped = torch.func.vmap(lambda m: fo.power_iteration(m, v0=v0, num_iters=30)[0])(batch)
    looped = torch.stack([fo.power_iteration(m, v0=v0, num_iters=30)[0] for m in batch])
    _close(vmapped, looped, rtol=1e-13)


@pytest.mark.parametrize("p", [2, 3, 4])
def test_matrix_inverse_pth_root_is_the_root(p):
    """(S + eps lambda_max I)^(-1/p) by eigendecomposition; the coupled Newton iterations reach
    it to optax's tolerance (its exponent -1/p rounded to float32)."""
    s = _spd()
    values, vectors = torch.linalg.eigh(s)
    ridge = 1e-6 * values[-1]
    expected = vectors @ torch.diag((values + ridge) ** (-1.0 / p)) @ vectors.T
    root, error = fo.matrix_inverse_pth_root(s, p)
    _close(root, expected, rtol=1e-5)
    assert error < 1e-6
    masked, _ = fo.matrix_inverse_pth_root(s, p, early_exit=True)
    torch.testing.assert_close(masked, root, rtol=0, atol=0)


def test_nnls_solves_the_constrained_problem():
    """Against the projected-gradient formulas written out, and the optimality conditions."""
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(8, 4, generator=gen, dtype=F64), torch.randn(8, generator=gen, dtype=F64)
    q_mat, q = a.T @ a, a.T @ b
    bound = min(float(torch.linalg.matrix_norm(q_mat)),
                float(torch.linalg.matrix_norm(q_mat, ord=1)))
    x = y = torch.zeros(4, dtype=F64)
    c = 0.0
    for _ in range(300):
        c_next = (1 + math.sqrt(1 + 4 * c * c)) / 2
        x_next = torch.clamp(y - (q_mat @ y - q) / bound, min=0)
        y, x, c = x_next + (c - 1) / c_next * (x_next - x), x_next, c_next
    got = fo.nnls(a, b, 300)
    _close(got, x, rtol=1e-12)
    gradient = q_mat @ got - q  # KKT: x >= 0, gradient >= 0, x * gradient = 0
    assert (got >= 0).all() and (gradient > -1e-8).all() and (got * gradient).abs().max() < 1e-8


def test_multi_normal_log_prob_and_samples():
    d = fo.multi_normal(torch.tensor([0.5, -1.0], dtype=F64),
                        torch.tensor([0.1, -0.3], dtype=F64))
    x = torch.tensor([0.2, 0.1], dtype=F64)
    expected = torch.distributions.Normal(d.params[0], d.log_scale.exp()).log_prob(x).sum()
    _close(d.log_prob(x), expected, rtol=1e-14)
    assert d.sample((7, 3), torch.Generator().manual_seed(0)).shape == (7, 3, 2)


@pytest.mark.parametrize("early_exit", [False, True])
def test_drop_in_with_its_search_follows_the_alias(early_exit):
    """OptaxLBFGS.step(closure), as torch.optim.LBFGS's: the closure gives the loss and the
    gradients at the parameters and at the search's trial points."""
    params = {k: torch.nn.Parameter(v.clone()) for k, v in _start().items()}
    opt = fo_optim.OptaxLBFGS(list(params.values()), max_linesearch_steps=10,
                              early_exit=early_exit)
    expected = _run(fo.optax_lbfgs(max_linesearch_steps=10), steps=6)

    def closure():
        opt.zero_grad()
        loss = _f(params)
        loss.backward()
        return loss

    for i in range(6):
        loss = opt.step(closure)
        _close(_flat({k: p.detach() for k, p in params.items()}), expected[i], rtol=1e-9)
    assert loss.requires_grad is False or loss.grad_fn is not None
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()


def test_drop_in_checkpoint_continues():
    """A state_dict saved after 3 steps continues as the uninterrupted run (its test_drop_ins
    checks step without a closure)."""
    def make():
        params = {k: torch.nn.Parameter(v.clone()) for k, v in _start().items()}
        return params, fo_optim.OptaxLBFGS(list(params.values()), memory_size=3,
                                           max_linesearch_steps=8)

    def steps(params, opt, n):
        def closure():
            opt.zero_grad()
            loss = _f(params)
            loss.backward()
            return loss
        for _ in range(n):
            opt.step(closure)

    params, opt = make()
    steps(params, opt, 5)
    resumed_params, resumed = make()
    steps(resumed_params, resumed, 3)
    saved = pickle.loads(pickle.dumps(resumed.state_dict()))
    params2, opt2 = make()
    with torch.no_grad():
        for p, q in zip(params2.values(), resumed_params.values()):
            p.copy_(q)
    opt2.load_state_dict(saved)
    steps(params2, opt2, 2)
    for k in params:
        torch.testing.assert_close(params2[k], params[k], rtol=0, atol=0)

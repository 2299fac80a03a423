"""The precision policy (``transforms.low_precision``, ``FunctionalOptimizer.use_precision``): its
numbers against plain formulas, stochastic rounding's law, the bfloat16 stall, the adapter's
paths and checkpoints."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, NamedTuple

import pytest
import torch

import functional_optim as fo
from functional_optim import _random
from functional_optim.optim import SGD, AdamW, FunctionalOptimizer
from functional_optim.transforms import low_precision as P

BF16 = torch.bfloat16


def _neighbours(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The two values of ``dtype`` around ``x`` (float64), below and above, by bisection-free
    search: round toward zero and step once away (plainly, without the library)."""
    r = x.to(dtype)
    up = torch.nextafter(r, torch.full_like(r, math.inf))
    down = torch.nextafter(r, torch.full_like(r, -math.inf))
    lo = torch.where(r.double() <= x, r, down)
    hi = torch.where(r.double() >= x, r, up)
    return lo.double(), hi.double()


@pytest.mark.parametrize("dtype", [BF16, torch.float16])
def test_stochastic_round_is_unbiased_within_the_binomial_bound(dtype):
    n = 20000
    values = torch.tensor([1.0 - 1e-4, 0.3, -2.7182818, 1.00390625 + 1e-3, 3e-6, -1e3 / 7])
    for k, v in enumerate(values.tolist()):
        x = torch.full((n,), v, dtype=torch.float32)
        out = P.stochastic_round(x, dtype, _random.key(7 + k), salt=1)
        lo, hi = _neighbours(x[:1].double(), dtype)
        lo, hi = lo.item(), hi.item()
        got = out.double()
        assert bool(((got == lo) | (got == hi)).all())  # one of the two neighbours
        if lo == hi:
            continue
        p = (float(x[0]) - lo) / (hi - lo)  # the chance of rounding up
        ups = int((got == hi).sum())
        bound = 5 * math.sqrt(n * p * (1 - p)) + 1  # five standard deviations
        assert abs(ups - n * p) <= bound, (v, ups, n * p, bound)


def test_stochastic_round_keeps_representable_values_and_non_finite():
    x = torch.tensor([1.0, -0.5, 0.0, 3.0, math.inf, -math.inf, math.nan])
    out = P.stochastic_round(x, BF16, _random.key(0), 0)
    assert torch.equal(out[:6].float(), x[:6]) and out[6].isnan()


def test_stochastic_round_streams_differ_by_key_and_salt_and_repeat():
    x = torch.full((64,), 1.0 + 2 ** -10)
    a = P.stochastic_round(x, BF16, _random.key(1), 0)
    assert torch.equal(a, P.stochastic_round(x, BF16, _random.key(1), 0))
    assert not torch.equal(a, P.stochastic_round(x, BF16, _random.key(2), 0))
    assert not torch.equal(a, P.stochastic_round(x, BF16, _random.key(1), 1))


def _stall(tx):
    p = {"w": torch.ones(4, dtype=BF16)}
    state = tx.init(p)
    for _ in range(100):
        u, state = tx.update({"w": torch.full((4,), 1e-4, dtype=BF16)}, state, p)
        p = fo.apply_updates(p, u)
    return p["w"].double(), state


def test_the_bfloat16_stall_and_its_remedies():
    target = 1.0 - 100 * 1.0013580322265625e-4  # 100 steps of -bf16(1e-4)
    plain, _ = _stall(fo.sgd(lr=1.0))
    assert bool((plain == 1.0).all())  # round to nearest eats every update
    sr, _ = _stall(fo.chain(fo.sgd(lr=1.0), fo.stochastic_rounding(0)))
    assert bool((sr < 1.0).all()) and abs(sr.mean().item() - target) < 4e-3
    kahan, state = _stall(fo.chain(fo.sgd(lr=1.0), fo.kahan_summation()))
    carried = kahan + state[1].compensation["w"].double()
    assert bool((kahan < 1.0).all()) and torch.allclose(carried, torch.full_like(carried, target),
                                                        atol=1e-4)
    master, state = _stall(fo.chain(fo.sgd(lr=1.0), fo.master_weights()))
    m = state[1].master_param["w"]
    assert m.dtype == torch.float32 and torch.allclose(m.double(), torch.full_like(m.double(),
                                                                              target), atol=1e-6)
    assert torch.equal(master, m.to(BF16).double())  # the model sees the master rounded
    policy, _ = _stall(fo.precision(fo.sgd(lr=1.0), params="kahan"))
    assert torch.equal(policy, kahan)


def test_kahan_and_master_against_plain_formulas():
    torch.manual_seed(0)
    p0 = torch.randn(5, 3).to(BF16)
    us = [torch.randn(5, 3) * 1e-3 for _ in range(20)]
    k_tx, m_tx = fo.kahan_summation(), fo.master_weights()
    pk = pm = {"w": p0}
    sk, sm = k_tx.init(pk), m_tx.init(pm)
    p, c, m = p0.clone(), torch.zeros_like(p0), p0.float()
    for u in us:
        y = u + c.float()  # Kahan: y = u + c, p' = rn(p + y), c = y - (p' - p)
        new = (p.float() + y).to(BF16)
        c = (y - (new.float() - p.float())).to(BF16)
        p = new
        m = m + u  # master: m += u, p = rn(m)
        d, sk = k_tx.update({"w": u}, sk, pk)
        pk = fo.apply_updates(pk, d)
        d, sm = m_tx.update({"w": u}, sm, pm)
        pm = fo.apply_updates(pm, d)
        assert torch.equal(pk["w"], p) and torch.equal(sk.compensation["w"], c)
        assert torch.equal(sm.master_param["w"], m) and torch.equal(pm["w"], m.to(BF16))


def test_adam_with_bfloat16_state_against_the_plain_formula():
    """AdamW with moments stored in bfloat16 (computed in the parameters' float64, cast on
    store) is the plain formula with each moment rounded to bfloat16 once this step used it."""
    torch.manual_seed(1)
    shapes = [(4, 3), (5,)]
    params = [torch.randn(s, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, dtype=torch.float64) for s in shapes] for _ in range(20)]
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.99, 1e-8, 0.1
    tx = fo.with_state_dtype(fo.adamw(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), BF16,
                             nu="fp32")
    ref = [p.clone() for p in params]
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    ps = {str(i): p for i, p in enumerate(params)}
    state = tx.init(ps)
    for t, gs in enumerate(grads, 1):
        for i, g in enumerate(gs):
            ref[i] = ref[i] * (1 - lr * wd)
            m = b1 * ms[i] + (1 - b1) * g  # this step uses the moments as computed,
            v = b2 * vs[i] + (1 - b2) * g * g  # and stores them rounded (as optax's mu_dtype)
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            ref[i] = ref[i] - lr * m_hat / (v_hat.sqrt() + eps)
            ms[i], vs[i] = m.to(BF16).double(), v.to(torch.float32).double()
        u, state = tx.update({str(i): g for i, g in enumerate(gs)}, state, ps)
        ps = fo.apply_updates(ps, u)
    adam = state.inner["adam"]
    assert adam.mu["0"].dtype == BF16 and adam.nu["0"].dtype == torch.float32
    for i in range(len(shapes)):
        torch.testing.assert_close(adam.mu[str(i)].double(), ms[i], rtol=0, atol=0)
        torch.testing.assert_close(ps[str(i)], ref[i], rtol=1e-10, atol=1e-12)


def test_bfloat16_parameters_compute_in_float32():
    p = {"w": torch.randn(3, 2).to(BF16)}
    tx = fo.precision(fo.adam(lr=0.1), "bf16", stochastic_rounding=True, seed=3)
    state = tx.init(p)
    assert state.inner["adam"].mu["w"].dtype == BF16 and state.rounding_key.shape == ()
    u, new = tx.update({"w": torch.randn(3, 2).to(BF16)}, state, p)
    assert u["w"].dtype == torch.float32 and new.inner["adam"].nu["w"].dtype == BF16
    assert int(new.rounding_key) == int(state.rounding_key) + 1
    stepped = fo.apply_updates(p, u)["w"]
    assert stepped.dtype == BF16
    # the update lands exactly: p + u in float32 is already a bfloat16 value
    assert torch.equal((p["w"].float() + u["w"]).to(BF16).float(), p["w"].float() + u["w"])


def test_vmap_gives_each_member_its_own_stream():
    p = torch.ones(2, 8, dtype=BF16)
    g = torch.full((2, 8), 1e-3, dtype=BF16)
    tx = lambda s: fo.chain(fo.sgd(lr=1.0), fo.stochastic_rounding(s))  # noqa: E731

    def run(seed, p, g):
        t = tx(seed)
        u, _ = t.update({"w": g}, t.init({"w": p}), {"w": p})
        return fo.apply_updates({"w": p}, u)["w"]

    seeds = torch.tensor([5, 9])
    batched = torch.func.vmap(run)(seeds, p, g)
    loop = torch.stack([run(s, p[i], g[i]) for i, s in enumerate(seeds)])
    assert torch.equal(batched, loop) and not torch.equal(loop[0], loop[1])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"with_state_dtype: mu: expected a floating"):
        fo.with_state_dtype(fo.adam(), mu=torch.int8)
    with pytest.raises(ValueError, match=r"params must be one of"):
        fo.precision(fo.adam(), params="fp32")
    tx = fo.with_state_dtype(fo.adam(), exp_avg=BF16)
    with pytest.raises(ValueError, match=r"no state field \['exp_avg'\].*'mu'"):
        tx.init({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"needs the parameters"):
        t = fo.precision(fo.sgd(), params="kahan")
        t.update({"w": torch.zeros(2)}, t.init({"w": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"AdamW.use_precision: stochastic_rounding"):
        AdamW([torch.zeros(2, requires_grad=True)]).use_precision(stochastic_rounding=BF16)


# -- the adapter -------------------------------------------------------------------------------

def _model(seed=0, dtype=BF16):
    torch.manual_seed(seed)
    return [torch.randn(4, 3).to(dtype).requires_grad_(), torch.randn(3).to(dtype)
            .requires_grad_()]


def _run(opt, params, steps=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("policy", [dict(state_dtype=BF16, stochastic_rounding=True),
                                    dict(state_dtype="fp32", params="kahan"),
                                    dict(params="master", mu=BF16)])
def test_drop_in_paths_agree_with_the_functional_policy(policy):
    ref = _model()
    tx = fo.precision(fo.adamw(lr=0.1), **policy)
    ps = {str(i): p.detach() for i, p in enumerate(ref)}
    state = tx.init(ps)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        gs = {k: torch.randn(p.shape, generator=gen).to(p.dtype) for k, p in ps.items()}
        u, state = tx.update(gs, state, ps)
        ps = fo.apply_updates(ps, u)
    flat_ok = not policy.get("stochastic_rounding")  # (the flat buffer draws other numbers)
    for foreach, flat in ((None, False), (False, False), (True, True)):
        params = _model()
        opt = AdamW(params, lr=0.1, foreach=foreach).use_precision(**policy)
        if flat:
            opt.use_flat()
        got = _run(opt, params)
        if flat and not flat_ok:
            continue
        for a, b in zip(got, ps.values()):
            assert torch.equal(a, b), (foreach, flat)


def test_state_dict_round_trips_the_policy_and_resumes_exactly():
    params = _model()
    opt = AdamW(params, lr=0.1).use_precision(BF16, stochastic_rounding=True, params="kahan")
    _run(opt, params, steps=2)
    saved = copy.deepcopy(opt.state_dict())  # (its tensors are the live state's)
    entry = saved["state"][0]
    assert {k: v.dtype for k, v in entry.items()} == {
        "step": torch.float32, "exp_avg": BF16, "exp_avg_sq": BF16,
        "rounding_key": torch.int64, "compensation": BF16}
    snapshot = [p.detach().clone() for p in params]
    straight = _run(opt, params, steps=2, seed=5)
    resumed = [p.detach().clone().requires_grad_() for p in snapshot]
    opt2 = AdamW(resumed, lr=0.1).use_precision(BF16, stochastic_rounding=True, params="kahan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to convert
        opt2.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(_run(opt2, resumed, steps=2, seed=5), straight))
    with pytest.raises(ValueError, match="rounding_key"):  # no policy: state it never keeps
        AdamW(_model(), lr=0.1).load_state_dict(saved)


def test_torch_float32_checkpoint_into_bfloat16_state_converts_explicitly():
    params = _model(dtype=torch.float32)
    torch_opt = torch.optim.AdamW(params, lr=0.1)
    _run(torch_opt, params, steps=2)
    saved = torch_opt.state_dict()
    mine = [p.detach().clone().requires_grad_() for p in params]
    opt = AdamW(mine, lr=0.1).use_precision(BF16)
    with pytest.warns(UserWarning, match=r"exp_avg torch.float32 -> torch.bfloat16"):
        opt.load_state_dict(saved)
    for p, q in zip(mine, params):
        s, t = opt.state[p], torch_opt.state[q]
        assert torch.equal(s["exp_avg"], t["exp_avg"].to(BF16))  # round to nearest
        assert torch.equal(s["exp_avg_sq"], t["exp_avg_sq"].to(BF16))
        assert s["step"].dtype == torch.float32 and float(s["step"]) == 2
    _run(opt, mine, steps=1)  # and it continues in bfloat16
    assert opt.state[mine[0]]["exp_avg"].dtype == BF16


def test_generic_adapter_and_sgd_stall():
    w = torch.ones(4, dtype=BF16, requires_grad=True)
    opt = SGD([w], lr=1.0).use_precision(stochastic_rounding=True)
    for _ in range(100):
        w.grad = torch.full_like(w, 1e-4)
        opt.step()
    assert bool((w < 1.0).all())
    v = torch.ones(4, dtype=BF16, requires_grad=True)
    generic = FunctionalOptimizer([v], fo.sgd(lr=1.0)).use_precision(params="kahan")
    for _ in range(100):
        v.grad = torch.full_like(v, 1e-4)
        generic.step()
    assert bool((v < 1.0).all()) and "compensation" in generic.state[v]


@pytest.mark.parametrize("policy", [dict(state_dtype=BF16, stochastic_rounding=True),
                                    dict(params="kahan"), dict(params="master")])
def test_bfloat16_policies_are_capturable(policy):
    """No host sync and every tensor on the device in a symbolic trace on fake CUDA bfloat16
    parameters (the conformance suite's check, on the low-precision paths)."""
    from test_conformance import _sync_ops
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    tx = fo.precision(fo.adamw(lr=0.1), **policy)
    with FakeTensorMode(shape_env=ShapeEnv()):
        params = {"w": torch.ones(3, 2, dtype=BF16, device="cuda")}
        grads = {"w": torch.ones(3, 2, dtype=BF16, device="cuda")}
        state = tx.init(params)
    graph = make_fx(lambda g, s, p: tx.update(g, s, p), tracing_mode="symbolic")(
        grads, state, params).graph
    assert not _sync_ops(graph)
    devices = {v.device.type for n in graph.nodes for v in [n.meta.get("val")]
               if isinstance(v, torch.Tensor)}
    assert devices <= {"cuda"}, devices


def test_stochastic_policy_compiles_to_the_eager_numbers():
    """One graph (``fullgraph``), the eager bits. (Inductor's code generation may fuse away
    the bfloat16 round trip that measures the rounding error: aot_eager runs the traced graph
    as traced.)"""
    tx = fo.precision(fo.adamw(lr=0.1), BF16, stochastic_rounding=True, seed=4)
    params = {"w": torch.randn(3, 2).to(BF16)}
    grads = {"w": torch.randn(3, 2).to(BF16)}
    state = tx.init(params)
    eager = tx.update(grads, state, params)
    compiled = torch.compile(tx.update, fullgraph=True, backend="aot_eager")(grads, state, params)
    for a, b in zip(fo.tree.leaves(eager), fo.tree.leaves(compiled)):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


class _AccState(NamedTuple):
    acc: Any


def test_stochastic_rounding_also_stores_state_that_keeps_its_dtype():
    """With ``stochastic_rounding`` and no storage given, bfloat16 state (that of bfloat16
    parameters) is stored stochastically too: an accumulator of steps below half an ulp moves
    on average (to nearest it stays)."""
    inner = fo.Transform(lambda p: _AccState(fo.tree.zeros_like(p)),
                         lambda u, s, p=None, h=None: (u, _AccState(fo.tree.map(
                             torch.add, s.acc, u))), {})
    params = {"w": torch.zeros(2000, dtype=BF16)}
    means = {}
    for stochastic in (False, True):
        tx = fo.with_state_dtype(inner, stochastic_rounding=stochastic)
        state = tx.init(params)
        _, state = tx.update({"w": torch.ones(2000, dtype=BF16)}, state, params)
        for _ in range(64):
            _, state = tx.update({"w": torch.full((2000,), 2.0 ** -10, dtype=BF16)}, state,
                                 params)
        assert state.inner.acc["w"].dtype == BF16
        means[stochastic] = state.inner.acc["w"].double().mean().item()
    assert means[False] == 1.0 and abs(means[True] - 1.0625) < 2e-3

"""The adapter's cache-blocked fast path (``functional_optim._blocked``).

By default the drop-in ``RMSprop``/``Adadelta``/``Adamax``/``NAdam``/``RAdam``/``ASGD``/``Rprop``/
``Adafactor`` (and ``FunctionalOptimizer`` over the matching aliases) run an in-place step over
blocks of about ``BLOCK`` elements instead of the chain. These tests check that it really runs,
that it gives the chain's numbers (``foreach=False``) up to rounding order and torch's
trajectory, that its 0-d state is replaced (never written in place), and that whatever it cannot
take runs the chain.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from adapter_checks import assert_same_state
from tolerance import (
    UPDATE_OPS,
    adafactor_ops,
    assert_close_ulps,
    assert_low_precision_trajectory,
    ulp_budget,
)

import functional_optim as fo
import functional_optim.optim as foo
from functional_optim import _blocked, _program_passes

CASES = [
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1,
                     maximize=True)),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, weight_decay=0.1, maximize=True)),
    ("Adamax", dict()),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, maximize=True)),
    ("NAdam", dict()),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict()),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, maximize=True)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("ASGD", dict()),
    ("ASGD", dict(lr=0.05, lambd=0.01, alpha=0.5, t0=4, weight_decay=0.1, maximize=True)),
    ("Rprop", dict()),
    ("Rprop", dict(lr=0.02, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05), maximize=True)),
    ("Adafactor", dict()),
    ("Adafactor", dict(lr=0.05, beta2_decay=-0.5, d=1.5, weight_decay=0.1, maximize=True)),
    ("Adafactor", dict(eps=(1e-20, 1e-2))),
]
# a tensor split into blocks, a non-contiguous one kept whole, and small ones grouped
SHAPES = [(7, 3), (_blocked.BLOCK + 1000,), (5,), (300, 500), (4, 2, 2)]


@pytest.fixture
def spy(monkeypatch):
    """Counts the blocks the blocked steps run: of a pointwise rule, the number of leaves in
    each; of a rule that reduces over each leaf (Adafactor's), ``(whole, shape)`` of each
    compiled plan run (``whole``: in one block; ``shape``: the leaf's or the stack's)."""
    calls = []
    blocks = _blocked.blocks
    plan = _program_passes.Passes.__call__

    def counting(columns, *args):
        for part in blocks(columns, *args):
            calls.append(len(part[0]))
            yield part

    def planned(self, env, tensors):
        calls.append((self.whole, tuple(self.program.shape)))
        return plan(self, env, tensors)

    monkeypatch.setattr(_blocked, "blocks", counting)
    monkeypatch.setattr(_program_passes.Passes, "__call__", planned)
    return calls


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in SHAPES:
        p = torch.randn(s, generator=gen, dtype=dtype)
        out.append((p.t().contiguous().t() if p.ndim == 2 and s[0] == 300 else p)
                   .requires_grad_())
    return out


def _run(make, dtype, steps=12, skip=()):
    """``steps`` steps (parameter ``k`` has no grad on the steps in ``skip``); returns the
    params, the optimizer and each param's peak ``max|p|`` along the way."""
    params = _params(dtype)
    opt = make(params)
    peak = [p.abs().max().item() for p in params]
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        for k, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=dtype)
            p.grad = None if (i, k) in skip else g
        opt.step()
        peak = [max(top, p.abs().max().item()) for top, p in zip(peak, params)]
    return params, opt, peak


def _close(a, b, dtype, peak=None, ulps=None):
    """float64: 1e-12 relative and absolute; float32: within ``ulps`` ulps of ``peak``, the
    magnitude the reference reached (see tests/tolerance.py)."""
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    else:
        assert_close_ulps(a, b, ulps=ulps, scale=peak)


def _ops(name: str) -> int:
    """The op count of one step of ``name`` (Adafactor's with its largest leaf's sums)."""
    if name == "Adafactor":
        return adafactor_ops(max(s.numel() for s in map(torch.Size, SHAPES)))
    return UPDATE_OPS[name.lower()]


def test_blocks_cover_every_element_once():
    big, small, odd = torch.zeros(10), torch.zeros(3), torch.zeros(4, 6).t()
    columns = [[big, small, small.clone(), odd], [big.clone(), small.clone(), small, odd]]
    parts = list(_blocked.blocks(columns, size=4))
    # 10 contiguous -> 3 views; the two small leaves fill one block; the transposed one whole
    assert [len(part[0]) for part in parts] == [1, 1, 1, 2, 1]
    assert [part[0][0].numel() for part in parts] == [4, 4, 2, 3, 24]
    for x in parts[0][0] + parts[1][0]:
        assert x.untyped_storage().data_ptr() == big.untyped_storage().data_ptr()
    total = sum(t.numel() for part in parts for t in part[0])
    assert total == sum(t.numel() for t in columns[0])


@pytest.mark.parametrize("leaves", [["empty"], ["big", "empty"], ["empty", "big"],
                                    ["small", "small", "empty"]])
def test_blocks_hold_every_leaf_empty_ones_too(leaves):
    """Every leaf is in a block, one with no elements too: a block that just filled, a leaf
    split in views or the end dropped it, and a pure update of a tree whose leaves were all
    empty raised ``StopIteration`` (its program made no new tensor for it)."""
    make = {"big": lambda: torch.zeros(10), "small": lambda: torch.zeros(2),
            "empty": lambda: torch.zeros(0, 3)}
    column = [make[kind]() for kind in leaves]
    parts = list(_blocked.blocks([column], size=4))
    seen = [t for part in parts for t in part[0]]
    assert sum(t.numel() == 0 for t in seen) == leaves.count("empty")
    tree = {str(i): t for i, t in enumerate(column)}
    for tx in (fo.adamw(), fo.sgd(lr=0.1, momentum=0.9), fo.rmsprop()):
        updates, _ = tx.update(tree, tx.init(tree), tree)
        assert [u.shape for u in updates.values()] == [t.shape for t in column]
        new, _ = fo.step(tx, tree, tx.init(tree), tree)
        assert [p.shape for p in new.values()] == [t.shape for t in column]


def test_scratch_is_one_kept_buffer_per_thread_and_dtype():
    """``_blocks.scratch``: contiguous tensors shaped as asked, views of one buffer per dtype
    (the same memory the next time, none of it the caller's), grown when a layout needs more
    (the smaller buffer's views dropped), its views' cache bounded."""
    from functional_optim import _blocks
    like = [torch.zeros(4, 6).t(), torch.zeros(3)]
    first = _blocks.scratch(like)
    assert [x.shape for x in first] == [(6, 4), (3,)] and all(x.is_contiguous() for x in first)
    assert len({x.untyped_storage().data_ptr() for x in first}) == 1
    assert all(x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()
               for x, y in zip(first, like))
    again = _blocks.scratch(like)
    assert [x.data_ptr() for x in again] == [x.data_ptr() for x in first]
    other = _blocks.scratch([x.double() for x in like])
    assert other[0].dtype == torch.float64 and \
        other[0].untyped_storage().data_ptr() != first[0].untyped_storage().data_ptr()
    larger = _blocks.scratch([torch.zeros(1000)])
    assert larger[0].numel() == 1000
    assert _blocks.scratch(like)[0].untyped_storage().data_ptr() == \
        larger[0].untyped_storage().data_ptr()  # (the grown buffer serves the small layout)
    for n in range(1, 2 * _blocks._LAYOUTS):
        _blocks.scratch([torch.zeros(n)])
    assert len(_blocks._KEPT.views) <= _blocks._LAYOUTS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_blocked_step_runs_and_matches_the_chain_and_torch(spy, name, kwargs, dtype):
    cls = getattr(foo, name)
    ours, opt, _ = _run(functools.partial(cls, **kwargs), dtype)
    # per step, in order: the first small tensor (a large one follows), the 2 pieces of the
    # split tensor, the next small one, the non-contiguous one (kept whole), the last small one;
    # Adafactor (norms per leaf): each leaf in one block but the two large ones, in passes
    if name == "Adafactor":
        assert spy == [(True, SHAPES[0]), (False, SHAPES[1]), (True, SHAPES[2]),
                       (False, SHAPES[3]), (True, SHAPES[4])] * 12
    else:
        assert spy == [1] * (12 * 6)
    calls = len(spy)
    chain, ref, _ = _run(functools.partial(cls, **kwargs, foreach=False), dtype)
    theirs, torch_opt, peak = _run(functools.partial(getattr(torch.optim, name), **kwargs), dtype)
    assert len(spy) == calls
    # float32: the blocked step, the chain and torch order the update rule's ops each their own
    # way: 2 ulps per op, every step, of the parameter's peak; of a state's max-abs for the state
    ulps = ulp_budget(12, _ops(name))
    for a, b, c, top in zip(ours, chain, theirs, peak):
        _close(a, b, dtype, top, ulps)
        _close(a, c, dtype, top, ulps)
    for p, q in zip(ours, theirs):
        assert set(opt.state[p]) == set(torch_opt.state[q])
        for key, value in torch_opt.state[q].items():
            assert opt.state[p][key].dtype == value.dtype
            _close(opt.state[p][key], value, dtype, value.abs().max(), ulps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adafactor_stacks_small_matrices_of_one_shape(spy, dtype):
    """Small matrices that share a shape (a non-contiguous one among them) run stacked, in one
    compiled block; 3-d ones, whose traced rule has views (``matmul``'s), one by one; with the
    numbers of the chain and torch.optim.Adafactor."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5)] * 3 + [(5, 6), (3, 4, 5), (3, 4, 5), (6,)]

    def run(make, steps=6):
        params = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
        params[1] = params[1].t().contiguous().t()  # (non-contiguous)
        params = [p.requires_grad_() for p in params]
        opt = make(params)
        grads = torch.Generator().manual_seed(1)
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads, dtype=dtype)
            opt.step()
        return params

    kwargs = dict(lr=0.05, weight_decay=0.1)
    ours = run(functools.partial(foo.Adafactor, **kwargs))
    assert spy == [(True, (3, 6, 5)), (True, (5, 6)), (True, (3, 4, 5)), (True, (3, 4, 5)),
                   (True, (6,))] * 6
    gen.manual_seed(0)
    chain = run(functools.partial(foo.Adafactor, **kwargs, foreach=False))
    gen.manual_seed(0)
    theirs = run(functools.partial(torch.optim.Adafactor, **kwargs))
    ulps = ulp_budget(6, adafactor_ops(30))
    for a, b, c in zip(ours, chain, theirs):
        top = c.abs().max()
        _close(a, b, dtype, top, ulps)
        _close(a, c, dtype, top, ulps)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_params_that_miss_steps_keep_their_own_counts(name, kwargs):
    skip = {(0, 1), (1, 1), (4, 0), (7, 2), (7, 4)}  # parameter 1 starts late; others pause
    ours, opt, _ = _run(functools.partial(getattr(foo, name), **kwargs), torch.float64, skip=skip)
    theirs, ref, _ = _run(functools.partial(getattr(torch.optim, name), **kwargs), torch.float64,
                          skip=skip)
    for a, b in zip(ours, theirs):
        _close(a, b, torch.float64)
    for p, q in zip(ours, theirs):
        assert opt.state[p]["step"] == ref.state[q]["step"]


def test_scalar_state_is_replaced_not_written_in_place():
    """Parameters that share one 0-d tensor (as a flat layout hands them out) and skip a step
    keep its value; the others get new tensors, one each."""
    params = [torch.zeros(3, requires_grad=True) for _ in range(3)]
    opt = foo.NAdam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones(3)
    opt.step()
    shared = {k: opt.state[params[0]][k] for k in ("step", "mu_product")}
    for p in params:
        opt.state[p].update(shared)
    before = {k: v.clone() for k, v in shared.items()}
    params[2].grad = None
    opt.step()
    for k, v in before.items():
        assert torch.equal(opt.state[params[2]][k], v)
        assert opt.state[params[0]][k] is not opt.state[params[1]][k]
    assert opt.state[params[0]]["step"] == 2


def test_generic_adapter_runs_the_blocked_step_with_every_block_counted(spy):
    """``FunctionalOptimizer(fo.rmsprop(momentum=...))`` keeps two counts (the rms block's and
    the momentum block's): both advance, as in the chain."""
    tx = functools.partial(fo.rmsprop, lr=0.01, momentum=0.9, centered=True)
    make = functools.partial(foo.FunctionalOptimizer, transform=tx)
    ours, opt, _ = _run(make, torch.float64, steps=5)
    assert spy
    chain, ref, _ = _run(functools.partial(make, foreach=False), torch.float64, steps=5)
    for a, b in zip(ours, chain):
        _close(a, b, torch.float64)
    assert_same_state(opt, ours, ref, chain, 1e-12)


FALLBACKS = [
    ("RMSprop", dict(foreach=True), torch.float64),
    ("RMSprop", dict(alpha=torch.tensor(0.9)), torch.float64),
    ("Adamax", dict(lr=torch.tensor(0.01)), torch.float64),
    ("NAdam", dict(), torch.bfloat16),
    ("RAdam", dict(), torch.complex128),
    ("ASGD", dict(lr=torch.tensor(0.01)), torch.float64),
    ("Rprop", dict(foreach=False), torch.float64),
    ("Adafactor", dict(lr=torch.tensor(0.01)), torch.float64),
]


@pytest.mark.parametrize("name,kwargs,dtype", FALLBACKS)
def test_what_the_blocked_step_cannot_take_runs_the_chain(spy, name, kwargs, dtype):
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(4, 3, generator=gen, dtype=dtype) for _ in range(2)]
    results = []
    for cls in (getattr(foo, name), getattr(torch.optim, name)):
        params = [b.clone().requires_grad_() for b in base]
        opt = cls(params, **kwargs)
        peak, largest_step = [b.abs() for b in base], [0.0 for _ in base]  # torch's, the last
        for i in range(4):
            before = [p.detach().clone() for p in params]
            for p in params:
                p.grad = torch.full_like(p, 0.1 * (i + 1))
            opt.step()
            peak = [torch.maximum(top, p.detach().abs()) for top, p in zip(peak, params)]
            largest_step = [max(s, (p.detach() - b).abs().max().item())
                            for s, p, b in zip(largest_step, params, before)]
        results.append(params)
    assert not spy
    if dtype == torch.bfloat16:  # the chain and torch round differently: see the helper
        assert_low_precision_trajectory(*results, peak, largest_step, 4, _ops(name))
        return
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_schedule_lr_runs_the_chain(spy):
    tx = functools.partial(fo.radam, lr=fo.schedules.linear(0.01, 0.0, 10))
    make = functools.partial(foo.FunctionalOptimizer, transform=tx)
    ours, *_ = _run(make, torch.float64, steps=4)
    assert not spy
    chain, *_ = _run(functools.partial(make, foreach=False), torch.float64, steps=4)
    for a, b in zip(ours, chain):
        _close(a, b, torch.float64)


@pytest.mark.parametrize("make,cls,key", [(fo.rmsprop, torch.optim.RMSprop, "momentum"),
                                          (fo.asgd, torch.optim.ASGD, "weight_decay")])
def test_hparam_built_as_zero_is_live_on_the_blocked_step(spy, make, cls, key):
    """A momentum or decay set on the group of an alias built with 0 runs in the blocked step
    and follows torch.optim built with that value."""
    def ours(params):
        opt = foo.FunctionalOptimizer(params, make(lr=0.1))
        opt.param_groups[0][key] = 0.1
        return opt

    actual, _, _ = _run(ours, torch.float64, steps=4)
    assert spy
    expected, _, _ = _run(lambda params: cls(params, lr=0.1, foreach=False, **{key: 0.1}),
                          torch.float64, steps=4)
    for a, b in zip(actual, expected):
        _close(a, b, torch.float64)


@pytest.mark.parametrize("name,kwargs", [("RMSprop", dict(lr=0.01, momentum=0.9)),
                                         ("ASGD", dict(t0=3)), ("NAdam", dict())])
def test_flat_layout_runs_the_blocked_step_on_its_buffers(spy, name, kwargs):
    cls = functools.partial(getattr(foo, name), **kwargs)
    ours, *_ = _run(lambda p: cls(p).use_flat(), torch.float64, steps=6)
    assert spy
    theirs, *_ = _run(cls, torch.float64, steps=6)
    for a, b in zip(ours, theirs):
        _close(a, b, torch.float64)


@pytest.mark.parametrize("name,kwargs", [CASES[1], CASES[8], CASES[13]])
def test_mixed_dtypes_in_one_group_run_per_dtype(spy, name, kwargs):
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(6, generator=gen, dtype=d) for d in (torch.float32, torch.float64) * 2]
    results = []
    for cls in (getattr(foo, name), getattr(torch.optim, name)):
        params = [b.clone().requires_grad_() for b in base]
        opt = cls(params, **kwargs)
        peak = [b.abs().max().item() for b in base]  # torch's, the last
        for i in range(5):
            for p in params:
                p.grad = torch.full_like(p, 0.1 * (i + 1)) * p.detach().sign()
            opt.step()
            peak = [max(top, p.abs().max().item()) for top, p in zip(peak, params)]
        results.append(params)
    assert spy == [2, 2] * 5
    for a, b, top in zip(*results, peak):
        assert a.dtype == b.dtype
        if a.dtype == torch.float32:  # the update rule's ops, 2 ulps each, every step
            assert_close_ulps(a, b, ulps=ulp_budget(5, _ops(name)), scale=top)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_counts_of_mixed_dtypes_keep_their_dtypes(spy):
    """A checkpoint may give one parameter an int64 count and another a float32 one: the
    blocked step runs the parameters of each count dtype apart (one block each), and each
    count keeps its dtype."""
    params = [torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)]
    opt = foo.RMSprop(params, lr=0.1)
    opt.state[params[1]]["step"] = torch.tensor(0, dtype=torch.int64)
    opt.state[params[1]]["square_avg"] = torch.zeros(3)
    for p in params:
        p.grad = torch.ones(3)
    opt.step()
    assert spy == [1, 1]
    assert opt.state[params[0]]["step"].dtype == torch.float32
    assert opt.state[params[1]]["step"].dtype == torch.int64
    assert opt.state[params[0]]["step"] == opt.state[params[1]]["step"] == 1


# -- non-finite gradients: they spoil the entries torch.optim's for-loop spoils, no others -----

# entries of each leaf of SHAPES set to the non-finite value (the split leaf: one per piece)
_SPOILED = [[(1, 2)], [(5,), (_blocked.BLOCK + 10,)], [(1,)], [(10, 20)], [(1, 0, 1)]]


def _snapshots(make, value, steps=3, bad_step=1):
    """Parameters and state after each of ``steps`` steps; step ``bad_step`` has ``value``
    at the entries of ``_SPOILED``."""
    params = _params(torch.float64)
    opt = make(params)
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(steps):
        for p, entries in zip(params, _SPOILED):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            for index in entries if i == bad_step else ():
                p.grad[index] = value
        opt.step()
        out.append([(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()
                                          if torch.is_tensor(v)}) for p in params])
    return out


def _same(a, b):
    torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_nonfinite_gradients_match_torch_on_the_blocked_step_and_the_chain(spy, name, kwargs,
                                                                            value):
    """Parameters and state, entry by entry (infinities and NaN where torch has them), after
    every step. Adafactor's step size clips by ``max(1, RMS(U)/d)`` in Python floats, where a
    NaN loses: only the rows and columns the bad entry reaches change, not the whole leaf."""
    theirs = _snapshots(functools.partial(getattr(torch.optim, name), **kwargs), value)
    blocked = _snapshots(functools.partial(getattr(foo, name), **kwargs), value)
    assert spy
    # (ASGD's chain adds its update -p·λη - ηg to a parameter that is now infinite: inf - inf,
    # where torch scales the parameter in place; torch's own foreach path gives NaN there too)
    checked = 2 if name == "ASGD" and math.isinf(value) else 3
    chain = _snapshots(functools.partial(getattr(foo, name), **kwargs, foreach=False), value)
    for step, (ref, ours, per_leaf) in enumerate(zip(theirs, blocked, chain)):
        for (p, state), (q, ours_state), (c, chain_state) in zip(ref, ours, per_leaf):
            _same(q, p)
            if step < checked:
                _same(c, p)
            for key, v in state.items():
                _same(ours_state[key], v)
                if step < checked:
                    _same(chain_state[key], v)


def test_rprop_stores_zero_where_an_infinite_gradient_flips_the_sign():
    """``-1`` then ``+inf``: the sign flipped, so ``prev`` is 0 (as torch), not ``inf * 0``."""
    results = []
    for cls, kwargs in ((torch.optim.Rprop, {}), (foo.Rprop, {}), (foo.Rprop, {"foreach": False})):
        p = torch.zeros(_blocked.BLOCK + 5, dtype=torch.float64, requires_grad=True)
        opt = cls([p], lr=0.01, **kwargs)
        for g in (-1.0, float("inf")):
            p.grad = torch.full_like(p, g)
            opt.step()
        results.append((p.detach(), opt.state[p]["prev"], opt.state[p]["step_size"]))
    for ours in results[1:]:
        assert torch.equal(ours[1], torch.zeros_like(ours[1]))
        for a, b in zip(ours, results[0]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("make", [lambda: fo.rmsprop(lr=1e-2), fo.adafactor])
def test_threads_taking_the_first_step_of_a_shared_transform_at_once(make):
    """The programs' layout is made at the first step: threads that take it at once (the
    interpreter switching threads as often as it can) each get their step (they extended the
    one list twice: ValueError, too many values to unpack)."""
    import sys
    import threading
    errors: list = []

    def run(tx, barrier, seed):
        gen = torch.Generator().manual_seed(seed)
        p = {"w": torch.randn(20, 30, generator=gen), "b": torch.randn(30, generator=gen)}
        state = tx.init(p)
        barrier.wait()
        try:
            fo.step(tx, {k: torch.randn(v.shape, generator=gen) for k, v in p.items()},
                    state, p, donate=True)
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(6):
            tx, barrier = make(), threading.Barrier(4)
            threads = [threading.Thread(target=run, args=(tx, barrier, i)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors

"""Memory reuse in the multi-tensor path (``functional_optim._foreach.TensorList``).

An op runs in place on its first operand only when nothing else can see that operand: a
temporary (by its reference count, calibrated at import on this interpreter) or donated state.
A named value must never change.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from functional_optim import _foreach
from functional_optim._foreach import TensorList


def _ops(fn) -> list[str]:
    with profile() as prof:
        fn()
    return [e.name for e in prof.events()]


def _lists():
    return TensorList([torch.ones(4), torch.full((2,), 2.0)])


def test_calibration_found_a_threshold():
    assert _foreach._TEMPORARY_REFS > 0


def test_temporaries_are_reused_in_place():
    x = _lists()
    ops = _ops(lambda: torch.sqrt((x * 2) * 3 + 1))
    assert ops.count("aten::_foreach_mul") == 1  # x * 2 allocates (x is named) ...
    assert "aten::_foreach_mul_" in ops and "aten::_foreach_add_" in ops  # ... the rest reuse it
    assert "aten::_foreach_sqrt_" in ops
    assert [t.tolist() for t in x.items] == [[1.0] * 4, [2.0] * 2]


def test_named_values_are_never_overwritten():
    x = _lists()
    y = x * 2
    z = y * 3 + y  # y is named: neither op may write into it
    w = torch.addcmul(y, y, y, value=0.5)
    assert [t.tolist() for t in y.items] == [[2.0] * 4, [4.0] * 2]
    assert [t.tolist() for t in z.items] == [[8.0] * 4, [16.0] * 2]
    assert [t.tolist() for t in w.items] == [[4.0] * 4, [12.0] * 2]


def test_fused_ops_match_per_tensor_ops():
    gen = torch.Generator().manual_seed(0)
    a, b, c = ([torch.randn(5, generator=gen) for _ in range(3)] for _ in range(3))
    for fn in (torch.addcmul, torch.addcdiv):
        out = fn(TensorList(a), TensorList(b), TensorList(c), value=0.3)
        for r, x, y, z in zip(out.items, a, b, c):
            torch.testing.assert_close(r, fn(x, y, z, value=0.3), rtol=0, atol=0)
    out = torch.abs(TensorList(a))
    for r, x in zip(out.items, a):
        assert torch.equal(r, x.abs())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_half_precision_lists_take_numbers_as_each_tensors_op_does(name, dtype):
    """A number against a bfloat16 or float16 list, in place on a temporary too, gives each
    tensor's own op's numbers (the kernels compute in float32 with the number in float32).
    (torch's in-place ``_foreach_mul_`` with a number rounds it to bfloat16 first: -0.001 and
    4.2496 moved a last bit in about one element of eight.)"""
    gen = torch.Generator().manual_seed(0)
    xs = [(3 * torch.randn(4096, generator=gen)).to(dtype) for _ in range(2)]
    op = getattr(torch, name)
    for number in (-0.001, 4.249591688004579, 0.999):
        out = op(TensorList(xs), number)
        fresh = op(TensorList(xs) * 1.0, number)  # (a temporary: computed in place)
        for a, b, x in zip(out.items, fresh.items, xs):
            assert torch.equal(a, op(x, number)) and torch.equal(b, op(x, number))


# -- a chain's pointwise transforms fused into one rule (functional_optim._execute.fuse) -------

def _trees(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(5 + i, dtype=torch.float64, generator=gen) for i in range(n)}


def _steps(tx, multi, steps=3):
    import optree

    from functional_optim import _execute
    params, state = _trees(), None
    state = tx.init(params)
    for k in range(steps):
        grads = _trees(seed=k + 1)
        with torch.no_grad(), _execute.multi_tensor(multi, donate=True):
            out, state = tx.update(grads, state, params)
            out = optree.tree_map(torch.clone, out)  # a donated state may alias an update
    return out, state


def test_chain_runs_consecutive_pointwise_transforms_as_one_rule(monkeypatch):
    import functional_optim as fo
    from functional_optim import _execute
    calls = []
    run = _execute.run_pointwise
    monkeypatch.setattr(_execute, "run_pointwise",
                        lambda spec, *a, **k: calls.append(spec.name) or run(spec, *a, **k))
    tx = fo.chain(fo.clip_by_norm(1.0), fo.trace(0.9), fo.add_decayed_weights(0.1),
                  fo.scale_by_learning_rate(0.1))
    _steps(tx, multi=True, steps=1)
    assert calls == ["chain(trace, add_decayed_weights, scale_by_learning_rate)"]


def test_pure_adamw_step_on_a_model_of_mixed_ranks_is_one_multi_tensor_group():
    """A pointwise rule runs its leaves of every rank in one group (weights and biases: one
    foreach kernel per op, not one per rank), and Adam's denominator ``sqrt(v) * c + eps``
    takes one buffer: (issue 18) the update allocates its moments, the root and the update;
    its bias corrections need no kernel."""
    import functional_optim as fo
    params = {"w1": torch.randn(6, 5), "b1": torch.randn(6), "w2": torch.randn(3, 6),
              "b2": torch.randn(3)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    tx = fo.adamw(lr=1e-3, weight_decay=1e-2)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    ops = _ops(lambda: tx.update(grads, state, params))
    assert ops.count("aten::_foreach_lerp") == 1 and ops.count("aten::_foreach_sqrt") == 1
    assert ops.count("aten::_foreach_mul") == 1  # v * beta2; the root is scaled in place
    assert ops.count("aten::_foreach_add") == 0 and ops.count("aten::_foreach_div") == 1
    # the counts are equal: Adam's bias corrections are Python numbers (no 0-d kernels)
    assert ops.count("aten::pow") == 0 and ops.count("aten::sub") == 0


def test_fused_run_never_overwrites_a_state_that_is_also_the_update():
    """Momentum returns its buffer as the update: the next rule must not scale it in place."""
    import optree

    import functional_optim as fo
    for tx in (fo.chain(fo.trace(0.9), fo.scale(2.0), fo.scale_by_learning_rate(0.1)),
               fo.chain(fo.scale(0.5), fo.trace(0.9, nesterov=True), fo.add_decayed_weights(0.1),
                        fo.scale_by_learning_rate(0.1))):
        fused, per_leaf = _steps(tx, multi=True), _steps(tx, multi=False)
        for a, b in zip(optree.tree_leaves(fused), optree.tree_leaves(per_leaf)):
            assert torch.equal(a, b)


def test_number_over_tensor_list_is_tensor_rtruediv():
    """``c / x`` on a TensorList gives the per-leaf path's digits: torch's ``Tensor.__rtruediv__``
    is ``x.reciprocal() * c`` (two roundings), which ``torch.div(c, x)`` is not (about a
    fifth of the elements differ for c = 0.05): the multi-tensor path of a rule with a number
    step size over a tensor (Adafactor with ``relative_step=False``) drifted from the per-leaf
    path."""
    x = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    expected = 0.05 / x
    assert not torch.equal(torch.div(0.05, x), expected)  # (the difference this is about)
    assert torch.equal((0.05 / TensorList([x.clone(), x.clone()])).items[1], expected)
    assert torch.equal((0.05 / TensorList(stacked=x.clone())).stacked, expected)


# -- donation reaches only state that nothing else reads (functional_optim._execute.donates_to)

def _twice(inner):
    """A user's transform that runs ``inner`` twice on the same state (e.g. two proposals) and
    keeps the second state: it reads its input state after the first inner update."""
    import optree

    import functional_optim as fo

    def update(updates, state, params=None, hparams=None, **extra):
        first, _ = inner.update(updates, state, params, hparams)
        second, new_state = inner.update(updates, state, params, hparams)
        return optree.tree_map(lambda a, b: (a + b) / 2, first, second), new_state

    return fo.Transform(inner.init, update, inner.hparams)


def _pure(tx, steps=3):
    """``tx`` stepped by the pure loop on ``_trees``: the parameters after ``steps`` steps."""
    import functional_optim as fo
    params = _trees()
    state = tx.init(params)
    for k in range(steps):
        updates, state = tx.update(_trees(seed=k + 1), state, params)
        params = fo.apply_updates(params, updates)
    return params


def _inners():
    import functional_optim as fo
    return [fo.adam(0.01), fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(0.01)),
            fo.sgd(0.1, momentum=0.9), fo.rmsprop(0.01, momentum=0.5, centered=True)]


@pytest.mark.parametrize("mode", [None, True, "flat"])
@pytest.mark.parametrize("inner", range(4))
def test_adapter_donates_no_state_to_a_users_transform(inner, mode):
    """The stateful adapter owns its state, but a user's ``update`` may read it again: it runs
    without donation (default, ``foreach=True`` and flat layouts) and follows the pure loop
    exactly (the flat layout: up to rounding order)."""
    from functional_optim.optim import FunctionalOptimizer
    tx = _twice(_inners()[inner])
    expected = _pure(tx)
    params = {k: v.clone().requires_grad_() for k, v in _trees().items()}
    opt = FunctionalOptimizer(list(params.items()), tx, foreach=None if mode == "flat" else mode)
    if mode == "flat":
        opt.use_flat()
    for k in range(3):
        for name, g in _trees(seed=k + 1).items():
            params[name].grad = g
        opt.step()
    for name, p in params.items():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-14, atol=1e-14)


def _wrapped():
    import functional_optim as fo
    user = _twice(fo.adam(0.01))
    return {
        "chain": fo.chain(user, fo.scale(0.5)),
        "named chain": fo.chain(a=fo.clip_by_global_norm(1.0), b=user),
        "masked": fo.masked(user, {"w0": True, "w1": False, "w2": True}),
        "partition": fo.partition({"x": user, "y": fo.sgd(0.1)},
                                  {"w0": "x", "w1": "y", "w2": "x"}),
        "inject_hparams": fo.inject_hparams(user, {"lr": fo.schedules.linear(0.01, 0.0, 10)}),
        "lookahead": fo.lookahead(user, sync_period=2),
        "flatten": fo.flatten(user),
        "reparametrize": fo.reparametrize(user, {"rate": 0.01}, lambda h: {**user.hparams,
                                                                           "lr": h["rate"]}),
    }


@pytest.mark.parametrize("name", list(_wrapped()))
def test_library_combinators_donate_nothing_to_a_users_transform(name):
    """A library chain or combinator passes the donation it got on to its own blocks only: a
    user's transform inside it gets none, and the donated multi-tensor run equals the pure
    per-leaf one."""
    import optree
    tx = _wrapped()[name]
    donated, pure = _steps(tx, multi=True), _steps(tx, multi=False)
    for a, b in zip(optree.tree_leaves(donated), optree.tree_leaves(pure)):
        assert torch.equal(a, b)


def test_library_transforms_still_update_the_adapters_state_in_place():
    """The fast path is kept: a chain of the library's blocks updates its moment buffers in
    place under the adapter (the same tensors after the step), a user's transform gets new
    ones."""
    import optree

    import functional_optim as fo
    from functional_optim.optim import FunctionalOptimizer

    def moments(opt, p):
        return [id(x) for x in optree.tree_leaves(opt.state[p]) if x.ndim > 0]

    for tx, in_place in ((fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(0.01)), True),
                         (_twice(fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(0.01))),
                          False)):
        p = torch.randn(5, requires_grad=True)
        opt = FunctionalOptimizer([p], tx, foreach=True)
        for _ in range(2):
            p.grad = torch.randn(5)
            before = moments(opt, p)
            opt.step()
        assert (moments(opt, p) == before) is in_place


def _keeps_inputs():
    """A user's transform that keeps the parameters and gradients it is given as its state
    (pure: they are values), and steps on their differences."""
    import optree

    import functional_optim as fo

    def init(params):
        return {"prev": params, "grad": optree.tree_map(torch.zeros_like, params)}

    def update(updates, state, params=None, hparams=None, **extra):
        out = optree.tree_map(lambda g, p, q, h: -0.1 * g + 0.5 * (p - q) + 0.01 * h,
                              updates, params, state["prev"], state["grad"])
        return out, {"prev": params, "grad": updates}

    return fo.Transform(init, update, {})


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize("wrap", ["alone", "in a chain", "in parameter_groups"])
def test_adapter_never_keeps_parameters_or_gradients_as_state(wrap, foreach, set_to_none):
    """The adapter adds to its parameters in place and backward writes the gradients, so a
    state that is one of them would change under the transform: it stores copies, and the
    trajectory is the pure loop's."""
    import functional_optim as fo
    from functional_optim.optim import FunctionalOptimizer
    inner = {"alone": _keeps_inputs, "in a chain": _keeps_inputs,
             "in parameter_groups": lambda: fo.parameter_groups(lambda **_: _keeps_inputs(),
                                                                [(["w0"], {})])}[wrap]()
    tx = inner if wrap == "alone" else fo.chain(inner, fo.scale(1.0))
    expected = _pure(tx, steps=4)
    params = {k: v.clone().requires_grad_() for k, v in _trees().items()}
    opt = FunctionalOptimizer(list(params.items()), tx, foreach=foreach)
    for k in range(4):
        opt.zero_grad(set_to_none=set_to_none)
        loss = sum((p * g).sum() for p, g in zip(params.values(), _trees(seed=k + 1).values()))
        loss.backward()
        opt.step()
    for name, p in params.items():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-14, atol=1e-14)


def test_where_on_one_condition_picks_a_whole_list_without_a_kernel():
    """A condition that is one value for every leaf (a branch on the step count) picks its
    operand as it is; conditions that differ between leaves run per leaf. Same values as the
    per-leaf ``torch.where`` either way."""
    a, b = _lists(), TensorList([torch.zeros(4), torch.zeros(2)])
    for flags in ((True, True), (False, False), (True, False)):
        cond = TensorList([torch.tensor(f) for f in flags]) == True  # noqa: E712 - a 0-d list
        ops = _ops(lambda cond=cond: torch.where(cond, a, b))
        out = torch.where(cond, a, b)
        for r, c, x, y in zip(out.items, flags, a.items, b.items):
            assert torch.equal(r, torch.where(torch.tensor(c), x, y))
        assert ("aten::where" in ops) == (flags[0] != flags[1])
    counts = TensorList([torch.tensor(3.0, dtype=torch.float64)] * 2)
    out = torch.where(counts > 5.0, counts, 1.0)  # a number for the other branch
    assert [x.item() for x in out.items] == [1.0, 1.0] and out.dtype == torch.float64


def test_function_forms_of_arithmetic_match_per_tensor_ops():
    """``torch.div(number, list)``, ``torch.pow(list, number)`` and friends: one foreach kernel
    (or the 0-d math of equal counts), the per-leaf values."""
    x = TensorList([torch.rand(3, dtype=torch.float64) + 0.5, torch.rand(2, dtype=torch.float64)])
    counts = TensorList([torch.tensor(7.0, dtype=torch.float64)] * 3)
    for fn, args in ((torch.div, (0.3, x)), (torch.pow, (x, 0.75)), (torch.mul, (x, 3.0)),
                     (torch.sub, (x, 0.5)), (torch.div, (0.3, counts)),
                     (torch.pow, (counts, 0.5)), (torch.pow, (1.5, counts))):
        out = fn(*args)
        lists = [a for a in args if isinstance(a, TensorList)][0]
        for k, r in enumerate(out.items):
            ref = fn(*(a.items[k] if isinstance(a, TensorList) else a for a in args))
            assert torch.equal(r, ref), (fn, args)
        assert len(out) == len(lists)


@pytest.mark.parametrize("count", [torch.tensor(3), torch.tensor(0),
                                   torch.tensor(2.5, dtype=torch.float64),
                                   torch.tensor(float("nan"), dtype=torch.float64)])
@pytest.mark.parametrize("other", [0, 3, 2.5, -1.0, 1 << 60])
def test_counts_compared_with_a_number_match_per_tensor_ops(count, other):
    """A list of equal counts compared with a number: one bool without a kernel where Python's
    comparison is torch's (else torch's kernel); its ``.to(float64)``, its product with a list
    and ``torch.where`` on it, the per-leaf values."""
    counts = TensorList([count.clone() for _ in range(3)])
    x = TensorList([torch.rand(3), torch.rand(2), torch.rand(4)])
    for op in (lambda t: t > other, lambda t: t < other, lambda t: t >= other,
               lambda t: t == other):
        out = op(counts)
        ref = op(count)
        assert [r.item() for r in out.items] == [ref.item()] * 3 and out.dtype == torch.bool
        as_float = out.to(torch.float64)
        assert as_float.dtype == torch.float64
        assert [r.item() for r in as_float.items] == [ref.to(torch.float64).item()] * 3
        for r, y in zip((x * out).items, x.items):
            assert torch.equal(r, y * ref)
        for r, y in zip(torch.where(out, x, 2 * x).items, x.items):
            assert torch.equal(r, torch.where(ref, y, 2 * y))


@pytest.mark.parametrize("name,dunder", [("add", "add"), ("sub", "sub"), ("mul", "mul"),
                                         ("div", "truediv")])
def test_an_accelerator_list_takes_a_cpu_coefficient_as_a_number(monkeypatch, name, dunder):
    """On a GPU the foreach kernels take their fast path only with a Python number or a 0-d
    tensor on the list's own device: a CPU 0-d tensor (one value for every leaf, or a list of
    them) sends each leaf to a kernel of its own. So a list off the CPU (meta here, as CUDA in
    the H200 run) gets one count-derived coefficient as a number: the value it would have had
    as a tensor of the list's dtype."""
    seen = []
    for op in (name, f"{name}_"):
        real = getattr(torch, f"_foreach_{op}")
        monkeypatch.setattr(torch, f"_foreach_{op}", lambda a, b, *r, _real=real, **k: (
            seen.append(b), _real(a, b, *r, **k))[1])
    xs = TensorList([torch.empty(4, device="meta"), torch.empty(3, device="meta")])
    counts = TensorList([torch.tensor(3.0), torch.tensor(3.0)])  # (torch's float32 counts)
    coefficient = 1 - 0.9 ** counts
    getattr(xs, f"__{dunder}__")(coefficient)
    getattr(xs, f"__{dunder}__")(torch.tensor(0.25, dtype=torch.float64))
    expected = float(1 - 0.9 ** torch.tensor(3.0))  # (in float32, as each leaf computes it)
    assert seen[0] == expected and type(seen[0]) is float
    assert seen[1] == 0.25 and type(seen[1]) is float


@pytest.mark.parametrize("reverse", [False, True])
def test_0d_lists_on_two_devices_compute_on_the_accelerator(reverse):
    """0-d values of accelerator tensors (Adafactor's RMS of each GPU parameter) against 0-d
    values from CPU counts (its step size, torch.optim's layout): each leaf's op takes the CPU
    operand as a number and gives its result on the accelerator; the stacked lists do the same
    (meta here, as CUDA in the H200 run, where they had raised)."""
    rms = TensorList([torch.tensor(2.0, device="meta")] * 3)
    step = TensorList([torch.tensor(0.5, dtype=torch.float64)] * 3) + 0.25
    out = step * rms if reverse else rms * step
    each = [x * y for x, y in zip(rms.items, step.items)]
    assert [(r.device, r.dtype) for r in out.items] == [(e.device, e.dtype) for e in each]

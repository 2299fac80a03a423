"""Memory reuse in the multi-tensor path (``functional_optim._foreach.TensorList``).

An op runs in place on its first operand only when nothing else can see that operand: a
temporary (by its reference count, calibrated at import on this interpreter) or donated state.
A named value must never change.
"""

from __future__ import annotations

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

"""The pure multi-tensor update of a pointwise transform or chain as its rule's exact program
(``functional_optim._program_calls``): the per-leaf path's numbers bit for bit, its inputs
untouched, and the multi-tensor path where the rule closes over a value of the call."""

from __future__ import annotations

import optree
import pytest
import torch
from conformance import CASES, SUMS_IN_BLOCKS

import functional_optim as fo
from functional_optim import _execute, _program_calls
from functional_optim._blocks import BLOCK
from functional_optim._pointwise import Pointwise, PointwiseCall
from functional_optim.base import pointwise_transform


def _user_chain():
    return fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.add_decayed_weights(1e-2),
                    fo.scale_by_learning_rate(fo.schedules.warmup_cosine_decay(0.0, 1e-2, 2, 20)))


def _spy(monkeypatch) -> list:
    """Whether each call of the exact path ran (``True``) or declined."""
    ran, exact = [], _program_calls.exact_update
    monkeypatch.setattr(_program_calls, "exact_update",
                        lambda *a: (lambda r: ran.append(r is not None) or r)(exact(*a)))
    return ran


def _trees(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"big": (BLOCK + 7,), "w": (6, 5), "b": (5,)}
    params = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
    params["t"] = torch.randn(5, 6, generator=gen, dtype=dtype).t()  # (transposed)
    grads = [{k: 3 * torch.randn(v.shape, generator=gen, dtype=dtype) for k, v in params.items()}
             for _ in range(4)]
    return params, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [_user_chain, lambda: fo.chain(fo.trace(0.9), fo.scale_by_rms(),
                                                                 fo.scale_by_learning_rate(0.1)),
                                  lambda: fo.chain(fo.scale_by_adam(amsgrad=True),
                                                   fo.add_decayed_weights(0.1),
                                                   fo.scale_by_learning_rate(0.01))],
                         ids=["clip_adam_schedule", "trace_rms", "amsgrad_decay"])
def test_a_chains_pure_update_is_its_program_with_the_per_leaf_numbers(make, dtype, monkeypatch):
    ran = _spy(monkeypatch)
    tx = make()
    params, grads = _trees(dtype)
    before = optree.tree_map(torch.clone, (params, grads))
    fast = slow = tx.init(params)
    for g in grads:
        kept = optree.tree_map(torch.clone, fast)
        updates, new = tx.update(g, fast, params)
        for a, b in zip(optree.tree_leaves(fast), optree.tree_leaves(kept)):
            assert torch.equal(a, b)  # (the state given: untouched)
        fast = new
        with _execute.multi_tensor(False):
            expected, slow = tx.update(g, slow, params)
        for k in updates:
            assert updates[k].dtype == expected[k].dtype and torch.equal(updates[k], expected[k])
    for a, b in zip(optree.tree_leaves(fast), optree.tree_leaves(slow)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for a, b in zip(optree.tree_leaves((params, grads)), optree.tree_leaves(before)):
        assert torch.equal(a, b)
    assert any(ran)


def test_a_0d_leaf_is_one_element_of_the_program(monkeypatch):
    """A 0-d leaf (a learned scale) runs in the program with the others, in its own dtype as on
    every path: float32, which the schedule's and the bias corrections' float64 0-d
    coefficients do not promote (leaf by leaf, a 0-d float32 leaf computed in float64 before
    and rounded back, a last bit away at step 2 here)."""
    ran = _spy(monkeypatch)
    tx = _user_chain()
    params, grads = _trees(torch.float32)
    params["scale"] = torch.tensor(2.0)
    grads = [{**g, "scale": torch.tensor(0.5 * i)} for i, g in enumerate(grads)]
    fast = slow = tx.init(params)
    for g in grads:
        updates, fast = tx.update(g, fast, params)
        assert ran[-1] and list(updates) == list(params)
        with _execute.multi_tensor(False):
            expected, slow = tx.update(g, slow, params)
        for k in updates:
            assert torch.equal(updates[k], expected[k]) and updates[k].dtype == expected[k].dtype
    for a, b in zip(optree.tree_leaves(fast), optree.tree_leaves(slow)):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("shape", ["list", "nested"])
def test_a_list_or_a_nested_tree_runs_the_program(shape, monkeypatch):
    """A list of parameters (``list(model.parameters())``) or nested dicts run the program on
    their leaves by position (1.5x faster than the multi-tensor path on 300 x 4096), in
    their own structure, with the per-leaf numbers."""
    ran = _spy(monkeypatch)
    tx = _user_chain()
    params, grads = _trees(torch.float32)

    def shaped(tree):
        if shape == "list":
            return list(tree.values())
        return {"a": {k: tree[k] for k in ("big", "w")}, "b": [tree["b"], (tree["t"],)]}

    params, grads = shaped(params), [shaped(g) for g in grads]
    fast = slow = tx.init(params)
    for g in grads:
        updates, fast = tx.update(g, fast, params)
        assert ran[-1]
        with _execute.multi_tensor(False):
            expected, slow = tx.update(g, slow, params)
        assert optree.tree_structure(updates) == optree.tree_structure(expected)
        for a, b in zip(optree.tree_leaves(updates), optree.tree_leaves(expected)):
            assert torch.equal(a, b)
    for a, b in zip(optree.tree_leaves(fast), optree.tree_leaves(slow)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_leaves_that_skipped_steps_run_by_their_counts(monkeypatch):
    """Leaves whose step counts differ (a parameter that got no gradient for a while) run in
    one group per count, each with its own bias corrections."""
    ran = _spy(monkeypatch)
    tx = fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(1e-2))
    params, grads = _trees(torch.float64)
    state = tx.init(params)
    _, state = tx.update({**grads[0], "w": None}, state, params)  # (w's count stays 0)
    updates, fast = tx.update(grads[1], state, params)
    assert ran[-1]
    with _execute.multi_tensor(False):
        expected, slow = tx.update(grads[1], state, params)
    for a, b in zip(optree.tree_leaves((updates, fast)), optree.tree_leaves((expected, slow))):
        assert torch.equal(a, b)


def test_parameters_and_state_in_another_key_order_than_the_gradients(monkeypatch):
    """The leaves are matched by key, not by position: gradients made in another order than
    the parameters (and so the state) decay each leaf with its own parameter (by position,
    two same-shaped leaves swapped parameters)."""
    ran = _spy(monkeypatch)
    tx = fo.chain(fo.scale_by_adam(), fo.add_decayed_weights(0.5), fo.scale_by_learning_rate(0.1))
    params = {"a": torch.ones(3), "b": -torch.ones(3)}
    grads = {"b": torch.full((3,), 2.0), "a": torch.full((3,), 3.0)}
    state = tx.init(params)
    updates, new = tx.update(grads, state, params)
    assert ran[-1]
    with _execute.multi_tensor(False):
        expected, slow = tx.update(grads, state, params)
    for a, b in zip(optree.tree_leaves((updates, new)), optree.tree_leaves((expected, slow))):
        assert torch.equal(a, b)


def test_a_donated_state_passed_again_raises_on_the_program_path_too():
    """A state that a donated update replaced (its counts) is refused by the pure update as
    by the multi-tensor path: the program declines and the error names it."""
    tx = _user_chain()
    params, grads = _trees(torch.float64)
    old = tx.init(params)
    tx.update(grads[0], old, params, donate=True)
    with pytest.raises(fo.DonatedStateError, match="donated to an earlier update"):
        tx.update(grads[1], old, params)


def _closing_over():
    """A pointwise transform whose rule multiplies by a 0-d tensor of the call (its step
    count, plus one), closed over rather than passed as a hyperparameter."""

    def prepare(updates, state, params, hparams):
        count = state + 1
        return PointwiseCall(lambda h, g: (g * count,), {}, finish=lambda new: count)

    return pointwise_transform(lambda params: torch.zeros(()), {},
                                  Pointwise(prepare, "closing_over"))


def test_a_rule_that_closes_over_a_value_of_its_call_runs_the_multi_tensor_path(monkeypatch):
    """Traced once and replayed, such a rule would multiply by the first call's value: its
    trace finds a tensor that is no argument and declines."""
    ran = _spy(monkeypatch)
    tx = _closing_over()
    params, grads = _trees(torch.float32)
    state = tx.init(params)
    for step, g in enumerate(grads[:3], start=1):
        updates, state = tx.update(g, state, params)
        for k in g:
            assert torch.equal(updates[k], g[k] * step)
    assert ran and not any(ran)


def _same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _trees_of(case, dtype, flat: bool):
    """The case's parameter and gradient trees (``flat``: as flat dicts of their leaves by
    dotted path), or ``None`` where a gradient is ``None``, sparse or complex."""
    params, grads = case.params_tree(0, dtype), case.adapt_grads(case.params_tree(1, dtype))
    leaves = optree.tree_leaves(grads, none_is_leaf=True)
    if any(g is None or g.is_sparse or g.is_complex() for g in leaves):
        return None
    if not flat:
        return params, grads
    named = fo.tree.named_leaves(params)
    return {n: x for n, x in named}, {n: g for (n, _), g in zip(named, leaves)}


def _three_steps(tx, params, grads, context) -> list:
    state = tx.init(params)
    with context():
        for step in range(3):
            g = grads if step != 1 else optree.tree_map(lambda v: 0.5 * v + 0.1, grads)
            updates, state = tx.update(g, state, params)
    return optree.tree_leaves((updates, state))


@pytest.mark.parametrize("flat", [True, False], ids=["flat_dict", "nested"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_registered_transform_keeps_its_numbers(case, flat):
    """Each registered transform updates its conformance tree (nested: dicts, a list, a
    tuple, a NamedTuple, a 0-d leaf) and a flat dict of its leaves (float32 and float64, three
    steps), wherever a program runs or declines: the per-leaf path's numbers."""
    blocked_sums = case.name in SUMS_IN_BLOCKS
    for dtype in (torch.float64,) if blocked_sums else (torch.float64, torch.float32):
        trees = _trees_of(case, dtype, flat)
        if trees is None:
            return
        ours = _three_steps(case.make(), *trees, lambda: _execute.multi_tensor(True))
        theirs = _three_steps(case.make(), *trees, lambda: _execute.multi_tensor(False))
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            if blocked_sums:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            else:
                assert _same(a, b)

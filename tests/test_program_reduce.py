"""Rules that reduce over each leaf (``functional_optim._program_reduce``): Adafactor's chain,
traced per leaf shape and run in passes over blocks of rows, stacked for small leaves of one
shape, whole where no pass plan divides the rule; the numbers of the chain, the plan's passes,
and no block-sized allocation per step."""

from __future__ import annotations

import optree
import pytest
import torch
from threaded import assert_threads_keep_their_numbers

import functional_optim as fo
from functional_optim import _program_passes
from functional_optim._blocks import BLOCK

# a matrix and a vector larger than a block (passes), a large 3-d leaf (whole: its traced
# matmul has views), small matrices of one shape (stacked), a small vector and a scalar
SHAPES = {"w": (600, 400), "v": (2 * BLOCK + 7,), "t": (4, 200, 300), "a": (6, 5),
          "b": (6, 5), "c": (6, 5), "s": (5,), "z": ()}


def _trees(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in SHAPES.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=dtype) for k, s in SHAPES.items()}
             for _ in range(4)]
    return params, grads


def _chain_and_fused(tx, dtype):
    """``(chain, fused)``: the parameters and state after the chain's pure updates, and after
    the alias's blocked step in place (which must take every step)."""
    params, grads = _trees(dtype)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fo.apply_updates(params, updates)
    chain = (params, state)
    params, _ = _trees(dtype)
    state = tx.init(params)
    for g in grads:
        state = tx.fused(params, g, state, None)
        assert state is not None
    return chain, (params, state)


@pytest.mark.parametrize("kwargs", [dict(), dict(lr=0.05, beta2_decay=-0.5, d=1.5,
                                                 weight_decay=0.1, maximize=True)])
def test_adafactor_passes_give_the_chains_numbers(kwargs):
    """float64: the blocked step (passes, stacks, whole leaves) is the chain up to the order of
    its sums (the blocks' norms added up, ``p·(1 - ηλ) + c·u`` in two ops)."""
    tx = fo.adafactor(**kwargs)
    (p1, s1), (p2, s2) = _chain_and_fused(tx, torch.float64)
    for k in SHAPES:
        torch.testing.assert_close(p2[k], p1[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(optree.tree_leaves(s2), optree.tree_leaves(s1)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_adafactor_pass_plans():
    """A matrix's plan: its statistics, the norm of its update, the update (three passes); a
    vector's: its moment and update norm, the update (two); the 3-d leaf has none (its traced
    matmul reshapes through views) and runs whole; the small leaves run in one block, the three
    matrices of one shape stacked."""
    tx = fo.adafactor(weight_decay=0.1)
    _chain_and_fused(tx, torch.float32)
    programs = {p.shape: p for p in tx.fused.reduced.programs.values()}
    assert programs[(600, 400)]._passes.n == 3
    assert programs[(2 * BLOCK + 7,)]._passes.n == 2
    assert programs[(4, 200, 300)]._passes is False
    assert programs[(6, 5)].stacked(3)._passes.whole
    assert programs[(6, 5)].stacked(3).shape == (3, 6, 5)
    # the last pass of the vector: u (3 ops), then p·(1 - ηλ) and + c·u in place (2 ops)
    last = programs[(2 * BLOCK + 7,)]._passes.code[-1]
    assert len(last.__globals__["F"]) == 5


def test_passes_allocate_no_block_sized_memory():
    """Once warm, a step of a large matrix and a large vector in passes makes no allocation
    of a block's size: the temporaries go to scratch blocks kept with the plan, or run in
    place (fresh blocks of 512 KB cost a page fault each)."""
    from torch.profiler import ProfilerActivity, profile

    tx = fo.adafactor(weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(600, 400, generator=gen), "v": torch.randn(2 * BLOCK + 7)}
    grads = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
    state = tx.init(params)
    for _ in range(2):
        state = tx.fused(params, grads, state, None)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        state = tx.fused(params, grads, state, None)
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events()
             if e.name() == "[memory]" and e.nbytes() > 0]
    assert sizes and max(sizes) < BLOCK  # (bytes: a quarter of a float32 block)


def test_a_rule_without_a_reduction_form_declines():
    """A reduction the passes cannot combine (a max over the rows) has no plan."""
    from functional_optim._program import Node, Ref, Value
    from functional_optim._program_passes import FULL, SMALL, Passes
    from functional_optim._program_reduce import ReduceProgram

    aten = torch.ops.aten
    values = [Value(FULL, torch.float32), Value(SMALL, torch.float32)]
    shapes = [(8, 4), ()]
    ops = [Node(aten.amax.default, (Ref(0), [0, 1]), {}, 1)]
    program = ReduceProgram((8, 4), values, shapes, ops, [Ref(1)], 1, [None], scalar=None)
    assert Passes.of(program, False) is None
    assert _program_passes.Passes.of(program, True) is not None


def test_lamb_runs_its_traced_rule_with_the_chains_numbers(monkeypatch):
    """LAMB's trust ratio (norms of the parameter and of its update) is a reduction too: its
    blocked step is its traced rule, with the chain's numbers (float64), its Adam moments
    (outputs read again by the update, so computed where first read and written at the end
    of the block) included."""
    runs = []
    plan = _program_passes.Passes.__call__
    monkeypatch.setattr(_program_passes.Passes, "__call__",
                        lambda self, *a: runs.append(self.whole) or plan(self, *a))
    tx = fo.lamb(lr=1e-2, weight_decay=0.1)
    (p1, s1), (p2, s2) = _chain_and_fused(tx, torch.float64)
    assert False in runs and True in runs  # (passes over the large leaves, whole the others)
    for k in SHAPES:
        torch.testing.assert_close(p2[k], p1[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(optree.tree_leaves(s2), optree.tree_leaves(s1)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _nested(tree: dict) -> dict:
    """``tree``'s leaves in nested dicts and a list (optree orders them otherwise)."""
    return {"layer": {"w": tree["w"], "t": tree["t"]}, "rest": [tree[k] for k in "vabcsz"]}


@pytest.mark.parametrize("layout", [dict, list, _nested], ids=["dict", "list", "nested"])
@pytest.mark.parametrize("make", [lambda: fo.adafactor(weight_decay=0.1),
                                  lambda: fo.lamb(lr=1e-2, weight_decay=0.1)],
                         ids=["adafactor", "lamb"])
def test_pure_update_runs_the_passes_with_the_chains_numbers(make, layout, monkeypatch):
    """The pure ``tx.update`` of Adafactor and LAMB runs their rule in passes too (the update
    into new tensors, the state it writes copied first), on a dict of parameters, a list or
    nested dicts: the inputs untouched, the chain's numbers (float64, ``donate=False`` sends
    the call to the chain) up to the order of the blocks' sums."""
    runs = []
    plan = _program_passes.Passes.__call__
    monkeypatch.setattr(_program_passes.Passes, "__call__",
                        lambda self, *a: runs.append(self.whole) or plan(self, *a))
    tx = make()
    arrange = {dict: dict, list: lambda tree: list(tree.values()), _nested: _nested}[layout]
    params, grads = _trees(torch.float64)
    params, grads = arrange(params), [arrange(g) for g in grads]
    ours, chain = (params, tx.init(params)), (params, tx.init(params))
    for g in grads:
        before = optree.tree_map(torch.clone, (ours, g))
        runs.clear()
        updates, state = tx.update(g, ours[1], ours[0])
        assert False in runs and True in runs
        for a, b in zip(optree.tree_leaves((ours, g)), optree.tree_leaves(before)):
            assert torch.equal(a, b)
        ours = fo.apply_updates(ours[0], updates), state
        updates, state = tx.update(g, chain[1], chain[0], donate=False)
        chain = fo.apply_updates(chain[0], updates), state
    for a, b in zip(optree.tree_leaves(ours), optree.tree_leaves(chain)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_pure_update_with_a_state_that_requires_grad_runs_the_chain():
    """A state that requires grad (a meta-learning loop's): the pure update records the graph
    through it (the chain runs; the passes run under ``no_grad``)."""
    tx = fo.adafactor(weight_decay=0.1)
    params, grads = _trees(torch.float64)
    state = optree.tree_map(lambda x: x.detach().requires_grad_()
                            if x.is_floating_point() and x.numel() else x, tx.init(params))
    updates, _ = tx.update(grads[0], state, params)
    assert all(u.requires_grad for k, u in updates.items() if k != "z")


@pytest.mark.parametrize("make", [fo.adafactor, lambda: fo.lamb(lr=1e-2)])
@pytest.mark.parametrize("pure", [False, True])
def test_a_transform_shared_by_threads_keeps_each_threads_numbers(make, pure):
    """The programs' scratch blocks and stacks are kept per thread: one transform stepping two
    threads' parameters at once gives each the numbers it gets alone (with the buffers shared,
    the threads overwrote each other's blocks)."""
    tx = make()

    def steps(params, grads):
        params, state = {k: v.clone() for k, v in params.items()}, tx.init(params)
        for _ in range(6):
            for g in grads:
                if pure:
                    updates, state = tx.update(g, state, params)
                    params = fo.apply_updates(params, updates)
                else:
                    params, state = fo.step(tx, g, state, params, donate=True)
        return params

    assert_threads_keep_their_numbers(steps, [_trees(torch.float64, seed) for seed in (1, 2)])

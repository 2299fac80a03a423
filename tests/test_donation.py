"""Donation (DESIGN.md §7, issue 18 §2): ``update(..., donate=True)``, ``apply_updates_`` and
``fo.step(..., donate=True)`` reuse the caller's state and parameters, give the pure step's
numbers, and never hand donated state to a user's transform."""

from __future__ import annotations

import optree
import pytest
import torch
from threaded import assert_threads_keep_their_numbers

import functional_optim as fo
from functional_optim import _execute


def _trees(seed=0, dtype=torch.float64, shapes=None):
    gen = torch.Generator().manual_seed(seed)
    shapes = shapes or {"w": (6, 3), "b": (6,), "s": ()}
    params = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
             for _ in range(3)]
    return params, grads


def _clone(tree):
    return optree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)


ALIASES = {
    "adamw": lambda: fo.adamw(lr=0.01, weight_decay=0.1),
    "adam_amsgrad": lambda: fo.adam(lr=0.01, amsgrad=True, weight_decay=0.1),
    "sgd": lambda: fo.sgd(lr=0.01, momentum=0.9, nesterov=True),
    "adagrad": lambda: fo.adagrad(lr=0.01),
    "rmsprop": lambda: fo.rmsprop(lr=0.01, momentum=0.9, centered=True),
    "adadelta": lambda: fo.adadelta(weight_decay=0.1),
    "adamax": lambda: fo.adamax(),
    "nadam": lambda: fo.nadam(weight_decay=0.1, decoupled_weight_decay=True),
    "radam": lambda: fo.radam(),
    "asgd": lambda: fo.asgd(t0=1),
    "rprop": lambda: fo.rprop(),
    "user_chain": lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                                   fo.add_decayed_weights(0.1),
                                   fo.scale_by_learning_rate(fo.schedules.linear(
                                       0.01, 0.001, 10))),
    "named_chain": lambda: fo.chain(momentum=fo.trace(0.9), rms=fo.scale_by_rms(),
                                    lr=fo.scale_by_learning_rate(torch.tensor(0.01))),
}


def _pure(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fo.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("name", ALIASES)
def test_donated_update_reuses_the_state_and_gives_the_pure_numbers(name):
    tx = ALIASES[name]()
    params, grads = _trees()
    expected = _pure(tx, params, grads)
    p, state = _clone(params), tx.init(params)
    kept = set()
    for g in grads:
        old = {id(x) for x in optree.tree_leaves(state) if x.ndim > 0}
        updates, state = tx.update(g, state, p, donate=True)
        kept |= old & {id(x) for x in optree.tree_leaves(state)}
        p = fo.apply_updates_(p, updates)
    for a, b in zip(optree.tree_leaves((p, state)), optree.tree_leaves(expected)):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    if name not in ("adadelta", "rprop", "asgd"):  # (their rules read a state twice)
        assert kept, f"{name}: no state tensor was reused"


@pytest.mark.parametrize("name", ALIASES)
def test_step_donated_matches_the_pure_step(name):
    tx = ALIASES[name]()
    params, grads = _trees()
    expected = _pure(tx, params, grads)
    p, state = _clone(params), tx.init(params)
    ids = {k: id(v) for k, v in p.items()}
    for g in grads:
        p, state = fo.step(tx, g, state, p, donate=True)
    assert {k: id(v) for k, v in p.items()} == ids  # the parameters updated in place
    for a, b in zip(optree.tree_leaves((p, state)), optree.tree_leaves(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)  # (a fused kernel's order)
    # the pure step runs the donated one on copies: its numbers, the inputs untouched
    pure = params, tx.init(params)
    for g in grads:
        inputs = (pure, g)
        before = _clone(inputs)
        pure = fo.step(tx, g, pure[1], pure[0])
        for a, b in zip(optree.tree_leaves(inputs), optree.tree_leaves(before)):
            assert torch.equal(a, b)
    for a, b in zip(optree.tree_leaves(pure), optree.tree_leaves((p, state))):
        assert torch.equal(a, b) and a.stride() == b.stride()


def test_step_donated_runs_torchs_fused_kernel(monkeypatch):
    calls = []
    kernel = torch._fused_adamw_
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    params, grads = _trees(dtype=torch.float32)
    tx = fo.adamw()
    state = tx.init(params)
    fo.step(tx, grads[0], state, params, donate=True)
    assert calls
    for tree in ({"layer": params}, list(params.values())):  # (nested, a list: by position)
        calls.clear()
        g = {"layer": grads[0]} if isinstance(tree, dict) else list(grads[0].values())
        fo.step(tx, g, tx.init(tree), tree, donate=True)
        assert calls


@pytest.mark.parametrize("shape", ["list", "nested"])
@pytest.mark.parametrize("name", ALIASES)
def test_step_on_a_list_or_nested_dicts_is_the_dicts_step(name, shape):
    """A list of parameters or nested dicts take the fused or blocked step as a flat dict
    does (by their leaves' positions; 6x faster donated than the update and apply they ran
    before, on 300 x 4096): the dict's numbers bit for bit, in their own structure, the
    donated parameters updated in place, the pure step's inputs untouched."""
    tx = ALIASES[name]()
    params, grads = _trees(dtype=torch.float32)

    def shaped(tree):
        return list(tree.values()) if shape == "list" else {"a": {"w": tree["w"]},
                                                             "b": [tree["b"], tree["s"]]}

    def flat(tree):
        return dict(zip(params, optree.tree_leaves(tree)))

    for donate in (True, False):
        p, state = _clone(params), tx.init(params)
        q = shaped(_clone(params))
        other = tx.init(q)
        ids = [id(x) for x in optree.tree_leaves(q)]
        for g in grads:
            p, state = fo.step(tx, g, state, p, donate=donate)
            before = _clone((q, other))
            q, other = fo.step(tx, shaped(g), other, q, donate=donate)
            if not donate:
                assert all(torch.equal(a, b) for a, b in zip(
                    optree.tree_leaves(before), optree.tree_leaves(_clone(before))))
        assert optree.tree_structure(q) == optree.tree_structure(shaped(params))
        assert ([id(x) for x in optree.tree_leaves(q)] == ids) is donate
        for a, b in zip(flat(q).values(), p.values()):
            assert torch.equal(a, b)
        assert optree.tree_structure(other) == optree.tree_structure(tx.init(q))


def test_step_passes_extra_keywords_and_hparams():
    tx = fo.chain(fo.scale_by_adam(), fo.reduce_on_plateau(patience=0, factor=0.5),
                  fo.scale_by_learning_rate(0.1))
    params, grads = _trees()
    state = tx.init(params)
    for i, g in enumerate(grads):
        params, state = fo.step(tx, g, state, params, donate=True, value=torch.tensor(1.0 + i))
    adam = fo.adamw(lr=0.1)
    p, s = _trees()[0], adam.init(params)
    p2, s2 = fo.step(adam, grads[0], s, _clone(p), {"lr": 0.0}, donate=True)
    for k in p:
        assert torch.equal(p2[k], p[k]) or k == "s"  # lr 0: only the decay moves them
    assert torch.equal(p2["w"], p["w"] * (1 - 0.0 * 1e-2))


def _users(inner):
    def update(updates, state, params=None, hparams=None, **extra):
        first, _ = inner.update(updates, state, params, hparams, **extra)
        again, new = inner.update(updates, state, params, hparams, **extra)  # reads it again
        assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(first),
                                                     optree.tree_leaves(again)))
        return again, new
    return fo.Transform(inner.init, update, inner.hparams)


@pytest.mark.parametrize("wrap", ["top", "in_chain", "masked"])
def test_no_donated_state_reaches_a_users_transform(wrap):
    """A user's update that calls an inner library update twice on the same state sees the
    same numbers with donate=True: the donation never reaches it (nor what it calls)."""
    user = _users(fo.scale_by_adam())
    tx = {"top": user, "in_chain": fo.chain(user, fo.scale_by_learning_rate(0.1)),
          "masked": fo.masked(fo.chain(user), lambda p: optree.tree_map(lambda _: True, p))}[wrap]
    params, grads = _trees()
    state = tx.init(params)
    before = _clone(state)
    if wrap != "top":  # (called with donate=True itself, a user's update decides what it does)
        tx.update(grads[0], state, params, donate=True)
        for a, b in zip(optree.tree_leaves(state), optree.tree_leaves(before)):
            assert torch.equal(a, b)
    fo.step(tx, grads[0], state, _clone(params), donate=True)
    for a, b in zip(optree.tree_leaves(state), optree.tree_leaves(before)):
        assert torch.equal(a, b)


def test_donation_context_levels():
    assert _execute._FLAGS.value == [True, 0, False]
    with _execute.donating(True):
        assert _execute._FLAGS.value[1] == _execute.DONATED
        with _execute.keep_state():
            with _execute.donating(True), _execute.multi_tensor(True, donate=True):
                assert _execute._FLAGS.value[1] == 0
        with _execute.donating(False):
            assert _execute._FLAGS.value[1] == _execute.DONATED
    with _execute.donating("yes"):  # only True donates
        assert _execute._FLAGS.value[1] == 0
    assert _execute._FLAGS.value == [True, 0, False]


@pytest.mark.parametrize("context", ["adapter", "donated update", "leaf by leaf"])
def test_a_context_in_one_thread_leaves_another_threads_updates_alone(context):
    """The execution contexts are per thread: while one thread is inside the adapter's
    donation (or a donated update, or ``multi_tensor(False)``), another thread's pure update
    leaves its input state alone and runs multi-tensor (with one flag for all threads, it
    updated its state in place)."""
    import threading
    make = {"adapter": lambda: _execute.multi_tensor(donate=True),
            "donated update": lambda: _execute.donating(True),
            "leaf by leaf": lambda: _execute.multi_tensor(False)}[context]
    entered, done = threading.Event(), threading.Event()

    def other():
        with make():
            entered.set()
            done.wait(30)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert entered.wait(30)
        tx = ALIASES["named_chain"]()
        params, grads = _trees()
        state = tx.init(params)
        before = _clone(state)
        assert _execute._FLAGS.value == [True, 0, False]
        updates, new = tx.update(grads[0], state, params)
        for a, b in zip(optree.tree_leaves(state), optree.tree_leaves(before)):
            assert torch.equal(a, b)
        expected, _ = tx.update(grads[0], before, params)
        for a, b in zip(optree.tree_leaves(updates), optree.tree_leaves(expected)):
            assert torch.equal(a, b)
    finally:
        done.set()
        thread.join()


def test_compiled_donated_step_writes_into_the_callers_buffers():
    """Compiled with donation, the new state and parameters are the old tensors, written in
    place: the optimizer allocates nothing per step (allocator statistics: no CPU allocation
    event as large as a parameter)."""
    tx = fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.add_decayed_weights(0.1),
                  fo.scale_by_learning_rate(0.01))
    params, grads = _trees(dtype=torch.float32, shapes={"w": (64, 64), "b": (64,)})
    expected = _pure(tx, params, grads)
    p, state = _clone(params), tx.init(params)
    buffers = [x.data_ptr() for x in optree.tree_leaves((p, state))]

    @torch.compile(fullgraph=True)
    def train_step(p, state, g):
        return fo.step(tx, g, state, p, donate=True)

    for g in grads:
        p, state = train_step(p, state, g)
    assert [x.data_ptr() for x in optree.tree_leaves((p, state))] == buffers
    for a, b in zip(optree.tree_leaves((p, state)), optree.tree_leaves(expected)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(p, state, grads[0])
    big = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage >= 64 * 4]
    assert not big, big


@pytest.mark.parametrize("name", [*ALIASES, "adafactor", "lion", "madgrad", "adopt"])
def test_every_compiled_donated_step_keeps_the_callers_state_buffers(name):
    """Compiled with donation, every alias returns its state shaped like the parameters in
    the donated tensors, whatever its rule declares for eager donation (``donate_state``, a
    rule that reads each old state once): Adadelta's, ASGD's, Rprop's, Lion's, MADGRAD's,
    ADOPT's and Adafactor's came back in new tensors, allocated every step (compiled Adadelta
    on 4 x 4M floats took twice torch's compiled step). The numbers are the pure update's
    (float64: the same ops, in another order where the steps fuse them, within a few ulps),
    the 0-d float64 parameter's too (torch 2.13's compiled code dropped its in-place update:
    it did not move)."""
    make = ALIASES.get(name) or getattr(fo, name)
    tx = make()
    params, grads = _trees()
    expected = _pure(tx, params, grads)
    p, state = _clone(params), tx.init(params)
    buffers = [x.data_ptr() for x in optree.tree_leaves((p, state)) if x.numel() > 1]
    torch._dynamo.reset()
    train_step = torch.compile(lambda p, s, g: fo.step(tx, g, s, p, donate=True),
                               fullgraph=True, backend="aot_eager")
    for g in grads:
        p, state = train_step(p, state, g)
    torch._dynamo.reset()
    assert [x.data_ptr() for x in optree.tree_leaves((p, state)) if x.numel() > 1] == buffers
    for a, b in zip(optree.tree_leaves((p, state)), optree.tree_leaves(expected)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["adamw", "user_chain", "sgd"])
def test_a_donated_state_passed_again_raises(name):
    """The state a donated update replaced is marked: passing it again (the caller forgot to
    take the returned one) raises, to a donated or a pure update alike; the returned state
    goes on."""
    tx = ALIASES[name]()
    params, grads = _trees()
    old = tx.init(params)
    updates, new = tx.update(grads[0], old, params, donate=True)
    for donate in (True, False):
        with pytest.raises(fo.DonatedStateError, match=r"donated to an earlier update.*returned"):
            tx.update(grads[1], old, params, donate=donate)
    tx.update(grads[1], new, params, donate=True)
    tree = {"layer": params, "frozen": None}  # (fo.step's chain path: no fused step takes
    state = tx.init(tree)                      # a None leaf)
    p, _ = fo.step(tx, {"layer": grads[0], "frozen": None}, state, tree, donate=True)
    with pytest.raises(fo.DonatedStateError):
        fo.step(tx, {"layer": grads[1], "frozen": None}, state, p, donate=True)


@pytest.mark.parametrize("name", ["adamw", "rmsprop", "user_chain"])
def test_a_donated_state_of_unsorted_keys_passed_again_raises_on_the_programs(name):
    """Keys made in another than their sorted order (``named_parameters``: ``0.weight`` before
    ``0.bias``): the mark sits on the first leaf in optree's order, where the programs look
    too (they read the dict's first key, another leaf, and took the stale state silently)."""
    tx = ALIASES[name]()
    params, grads = _trees(shapes={"weight": (6, 3), "bias": (6,)})
    old = tx.init(params)
    tx.update(grads[0], old, params, donate=True)
    with pytest.raises(fo.DonatedStateError, match="donated to an earlier update"):
        tx.update(grads[1], old, params)


def _counts(state):
    return [x for x in optree.tree_leaves(state) if x.dtype == torch.int64]


@pytest.mark.parametrize("name", ["sgd", "adam_chain"])
@pytest.mark.parametrize("share", [False, True])
def test_donated_kernel_step_advances_each_count_once(name, share):
    """A fused kernel step advances the donated counts in place, unless one count tensor
    stands for several leaves (the adapter's SGD derives one shared count from its buffers):
    then each leaf's count is advanced once, into new tensors."""
    tx = ALIASES["sgd"]() if name == "sgd" else fo.chain(  # (torch's Adam kernel runs it)
        fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.add_decayed_weights(0.1),
        fo.scale_by_learning_rate(0.01))
    params, grads = _trees(dtype=torch.float32, shapes={"w": (6, 3), "b": (6,), "c": (2,)})
    expected = _pure(tx, params, grads)
    state, one = tx.init(params), torch.zeros((), dtype=torch.int64)
    if share:
        state = optree.tree_map(lambda x: one if x.dtype == torch.int64 else x, state)
    p = _clone(params)
    for i, g in enumerate(grads):
        before = _counts(state)
        p, state = fo.step(tx, g, state, p, donate=True)
        in_place = not (share and i == 0)
        assert [a is b for a, b in zip(_counts(state), before)] == [in_place] * len(before)
    assert one.item() == 0
    for a, b in zip(optree.tree_leaves((p, state)), optree.tree_leaves(expected)):
        # (a fused kernel's rounding order: 8 float32 ulps bound 3 steps of a few ops)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_donated_grads_are_clipped_in_place_with_the_same_numbers():
    """``donate_grads=True``: a chain that runs torch's Adam kernel clips the caller's gradients
    in place (no new gradient tensors) and gives the numbers of the step that keeps them (which
    clips into a kept scratch: a leaf larger than a block a block at a time, a few small
    leaves with ``out=``, more with a copy and a multiply)."""
    from functional_optim._fused import _CLIP_BLOCK
    tx = ALIASES["user_chain"]()
    params, grads = _trees(shapes={"w": (6, 3), "b": (6,), "big": (_CLIP_BLOCK + 1000,),
                                   **{f"s{i}": (i + 2,) for i in range(5)}})
    grads = [optree.tree_map(lambda g: 10 * g, g) for g in grads]  # (norms above the clip)
    kept = _clone(params), tx.init(params)
    given = _clone(params), tx.init(params)
    for g in grads:
        callers = _clone(g)
        kept = fo.step(tx, callers, kept[1], kept[0], donate=True)
        assert all(torch.equal(callers[k], g[k]) for k in g)  # (the caller's: untouched)
        mine = _clone(g)
        before = {k: v.clone() for k, v in mine.items()}
        given = fo.step(tx, mine, given[1], given[0], donate=True, donate_grads=True)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v)
                                                     for v in before.values()]))
        for k, v in mine.items():  # (overwritten: the clipped gradient)
            torch.testing.assert_close(v, before[k] * (1.0 / (norm + 1e-6)), rtol=1e-12,
                                       atol=0)
    for a, b in zip(optree.tree_leaves(given), optree.tree_leaves(kept)):
        assert torch.equal(a, b)


def test_clipped_chain_steps_in_two_threads_keep_their_own_scratch():
    """The clip's scratch is kept per thread: two threads stepping at once get the numbers
    each gets alone."""
    from functional_optim._fused import _CLIP_BLOCK
    tx = ALIASES["user_chain"]()

    def steps(params, grads):
        trees = _clone(params), tx.init(params)
        for _ in range(4):
            for g in grads:
                trees = fo.step(tx, g, trees[1], trees[0], donate=True)
        return trees

    assert_threads_keep_their_numbers(steps, [
        _trees(seed, shapes={"w": (6, 3), "big": (_CLIP_BLOCK + 10,)}) for seed in (1, 2)])


@pytest.mark.parametrize("name", ["adamw", "user_chain", "rmsprop"])
def test_a_tensor_that_is_two_leaves_is_not_donated(name):
    """A donated step updates each leaf in place: a tensor given as two leaves (a tied weight)
    would take both leaves' updates in turn, so it is an error naming both leaves, before
    anything changes; the pure step updates each leaf on its own."""
    tx = ALIASES[name]()
    params, grads = _trees(shapes={"w": (6, 3), "b": (6,)})
    params["tied"] = params["w"]
    grads = grads[0]
    grads["tied"] = torch.randn(6, 3, dtype=torch.float64)
    state = tx.init(params)
    before = params["w"].clone()
    with pytest.raises(ValueError, match="params leaves 'tied' and 'w' are the same tensor"):
        fo.step(tx, grads, state, params, donate=True)
    assert torch.equal(params["w"], before)
    new, _ = fo.step(tx, grads, state, params)
    updates, _ = tx.update(grads, state, params)
    expected = fo.apply_updates(params, updates)
    assert not torch.equal(expected["w"], expected["tied"])  # (each leaf its own update)
    for k in expected:
        torch.testing.assert_close(new[k], expected[k], rtol=1e-12, atol=0)


def test_donated_grads_that_are_two_leaves_and_in_place_apply_are_errors():
    tx = ALIASES["user_chain"]()
    params, grads = _trees(shapes={"w": (6, 3), "v": (6, 3)})
    grads = grads[0]
    grads["v"] = grads["w"]
    with pytest.raises(ValueError, match="grads leaves 'v' and 'w' are the same tensor"):
        fo.step(tx, grads, tx.init(params), params, donate=True, donate_grads=True)
    params["v"] = params["w"]
    with pytest.raises(ValueError, match="apply_updates_: params leaves 'v' and 'w'"):
        fo.apply_updates_(params, {"w": torch.ones(6, 3), "v": torch.ones(6, 3)})


def test_donate_grads_needs_donate():
    tx = fo.adamw()
    params, grads = _trees()
    with pytest.raises(ValueError, match="donate=True"):
        fo.step(tx, grads[0], tx.init(params), params, donate_grads=True)


def test_pure_step_keeps_a_graph_through_the_chain():
    """Where a tensor requires grad (grad mode on), the pure step is the chain's update and
    apply (a graph through it), not the fused step on copies."""
    tx = fo.adamw(lr=0.01, weight_decay=0.1)
    params, grads = _trees()
    params = {k: v.requires_grad_() for k, v in params.items()}
    state = tx.init(params)
    new, new_state = fo.step(tx, grads[0], state, params)
    updates, expected_state = tx.update(grads[0], state, params)
    expected = fo.apply_updates(params, updates)
    for k, v in new.items():
        assert v.grad_fn is not None and torch.equal(v, expected[k])
    with torch.no_grad():  # (nothing records a graph: the fused step on copies)
        fast, _ = fo.step(tx, grads[0], state, params)
    for k, v in fast.items():
        assert v.grad_fn is None and v is not params[k]
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["adamw", "adam_amsgrad", "sgd", "adagrad", "rmsprop", "nadam",
                                  "user_chain"])
def test_pure_step_keeps_a_graph_through_a_state_that_requires_grad(name):
    """A state tensor that requires grad (a meta-learned state; the parameters do not) also
    sends the pure step to the chain, with grad mode on: the fused or blocked step finds it
    where it copies the state (not in a walk of its own), and the result carries the graph."""
    tx = ALIASES[name]()
    params, grads = _trees()
    state = tx.update(grads[0], tx.init(params), params)[1]
    leaves, spec = optree.tree_flatten(state, none_is_leaf=True)
    floating = [k for k, x in enumerate(leaves)
                if isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim]
    leaves[floating[0]] = leaves[floating[0]].detach().clone().requires_grad_()
    state = optree.tree_unflatten(spec, leaves)
    new, _ = fo.step(tx, grads[1], state, params)
    updates, _ = tx.update(grads[1], state, params)
    expected = fo.apply_updates(params, updates)
    assert any(v.grad_fn is not None for v in new.values())
    for k, v in new.items():
        assert torch.equal(v, expected[k])


@pytest.mark.parametrize("name", ["adamw", "adam_amsgrad", "sgd", "adagrad", "rmsprop_plain",
                                  "nadam", "adafactor", "lamb", "user_chain_constant_lr"])
def test_pure_step_on_large_and_strided_leaves_is_the_donated_step(name):
    """The pure ``fo.step`` runs the donated step on copies, also where the blocked steps split
    a leaf larger than a block or keep a transposed one whole: the donated step's numbers bit
    for bit, the inputs untouched, the layouts kept."""
    from functional_optim._blocks import BLOCK
    tx = {"rmsprop_plain": lambda: fo.rmsprop(lr=0.01),
          "adafactor": lambda: fo.adafactor(lr=0.01),
          "lamb": lambda: fo.lamb(lr=0.01, weight_decay=0.1),
          "user_chain_constant_lr": lambda: fo.chain(
              fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.add_decayed_weights(0.1),
              fo.scale_by_learning_rate(0.01))}.get(name, ALIASES.get(name))()
    gen = torch.Generator().manual_seed(0)
    shapes = {"big": (BLOCK + 1000,), "t": (7, 5), "w": (6, 3), "s": ()}

    def tree():
        out = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
        out["t"] = out["t"].t()  # (not contiguous)
        return out

    params, grads = tree(), [tree() for _ in range(3)]
    pure, donated = (params, tx.init(params)), (_clone(params), tx.init(params))
    for g in grads:
        inputs = (pure, g)
        before = _clone(inputs)
        pure = fo.step(tx, g, pure[1], pure[0])
        donated = fo.step(tx, g, donated[1], donated[0], donate=True)
        for a, b in zip(optree.tree_leaves(inputs), optree.tree_leaves(before)):
            assert torch.equal(a, b)
    for a, b in zip(optree.tree_leaves(pure), optree.tree_leaves(donated)):
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert pure[0]["t"].stride() == params["t"].stride()


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_pure_step_copies_keep_each_tensors_layout_and_share_the_counts(device):
    """The pure step's copies (``_fused._owned``): new tensors of each one's dtype, device and
    strides, the counts it replaces shared, other leaves as they are; off the CPU (meta here,
    as CUDA) grouped by dtype for the GPU's one-launch copy."""
    from functional_optim import _fused

    def t(*shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype, device=device)

    params = {"w": t(3, 4).t(), "b": t(4, dtype=torch.float64)}
    counts = {"w": t(dtype=torch.int64), "b": t(dtype=torch.int64)}
    state = {"mu": {"w": t(3, 4).t(), "b": t(4, dtype=torch.float64)}, "count": counts,
             "flag": True, "none": None}
    copies: list = []
    with _fused.owning(copies):
        new_params, new_state = _fused._owned(params, state, shared=(counts,))
    assert copies == [new_params]
    for old, new in [(params, new_params), (state["mu"], new_state["mu"])]:
        for k in old:
            assert new[k] is not old[k]
            assert (new[k].dtype, new[k].device, new[k].stride()) == (
                old[k].dtype, old[k].device, old[k].stride())
    assert all(new_state["count"][k] is counts[k] for k in counts)
    assert new_state["flag"] is True and new_state["none"] is None


def test_host_counts_puts_the_per_leaf_counts_on_the_cpu():
    """``fo.host_counts()``: ``init`` puts each leaf's step count on the CPU (parameters on
    ``meta`` here, standing for a GPU), and NAdam's and ASGD's other per-leaf 0-d state; a
    schedule's count stays with the parameters, and the setting ends with the block (nested
    blocks too)."""
    tx = fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(
        fo.schedules.cosine_decay(1e-3, 100)))
    params = {"w": torch.zeros(3, 2, device="meta"), "b": torch.zeros(3, device="meta")}
    with fo.host_counts():
        with fo.host_counts():
            pass
        state = tx.init(params)
    assert all(c.device.type == "cpu" for c in state[0].step.values())
    assert state[1].step.device.type == "meta"
    assert all(c.device.type == "meta" for c in tx.init(params)[0].step.values())
    for alias, per_leaf in ((fo.nadam(), 2), (fo.asgd(), 3)):  # (their other 0-d state)
        with fo.host_counts():
            scalars = [x for x in optree.tree_leaves(alias.init(params)) if not x.ndim]
        assert len(scalars) == per_leaf * len(params)
        assert all(x.device.type == "cpu" for x in scalars)


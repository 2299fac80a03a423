"""A rule traced into a foreach program (``functional_optim._program``), the mechanism of the
blocked steps: its scalar part gives torch's digits on Python numbers, its tensor part makes
torch.optim's passes, and what is not pointwise has no program (the chain runs). The blocked
steps' numbers against the chain and torch.optim: ``tests/test_blocked.py``."""

from __future__ import annotations

import math

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import functional_optim as fo
from functional_optim import _blocked, _execute, _foreach, _program, _program_calls
from functional_optim._program import SCALAR, TENSOR


def _scalar_rule(g, count, a, b):
    """Scalar arithmetic as the rules write it (a bias correction, a rectification, a cast to
    the state's float32, a branch) feeding one tensor op."""
    t = (count + 1).to(torch.float64)
    bc = 1 - a ** t
    r = torch.sqrt((t * 2 - 4) * (t - 2) / bc) / (1 - b)
    r = torch.where(r > 5.0, r * a, 1.0 / bc)
    low = (r * b).to(torch.float32) * (a.to(torch.float32) - 0.5)
    return [g * low + g * (b / a) ** 0.5]


def _program_of(rule, n_scalars=3):
    inputs = [torch.ones(2), torch.tensor(3), torch.tensor(0.9, dtype=torch.float64),
              torch.tensor(0.999, dtype=torch.float64)][:1 + n_scalars]
    prog = _program.trace(rule, inputs, [TENSOR] + [SCALAR] * n_scalars, [0])
    assert prog is not None
    return prog


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 10**6), a=st.floats(0.01, 0.9999), b=st.floats(1e-6, 0.9999))
def test_the_scalar_part_on_python_numbers_gives_torchs_digits(count, a, b):
    """Every scalar value the Python evaluation computes (float64 arithmetic, powers, casts to
    float32, comparisons, ``where``) equals the traced op's on 0-d tensors, bit for bit."""
    prog = _program_of(_scalar_rule)
    fast = prog.scalars([None, count, a, b])
    slow = list(fast)
    for node, run in zip(prog.scalar_nodes, prog._slow):
        slow[node.out] = run(slow)
    for node in prog.scalar_nodes:
        x, y = fast[node.out], slow[node.out]
        assert type(x) is type(y) and (x == y or math.isnan(x) and math.isnan(y)), (node, x, y)


def test_python_arithmetic_that_raises_gives_torchs_inf():
    """Where Python raises (a division by 0, a power past the float range) and torch gives inf
    or NaN, the scalar part runs torch's ops for that step."""
    prog = _program_of(lambda g, a: [g * (1 / (a - 0.5)) * 10.0 ** (a * 400)], 1)
    env = prog.scalars([None, 0.5])
    assert math.isinf(env[prog.scalar_nodes[-1].out])


_FOREACH_CALLS = {  # torch.optim's in-place foreach sequence per algorithm, per block
    "rmsprop": 5, "adadelta": 11, "adamax": 6, "nadam": 8, "radam": 6, "asgd": 3,
}


@pytest.mark.parametrize("name", sorted(_FOREACH_CALLS))
def test_a_blocked_program_makes_torchs_passes(name):
    """The program of each alias's rule makes no more foreach calls per block than torch.optim's
    hand-written foreach step: ``x + s·a/b`` as one ``addcdiv``, scalars multiplied into one
    coefficient, new state in place (RAdam after its fifth step, where it rectifies)."""
    tx = getattr(fo, name)()
    step = _blocked.rule_step(tx, tx.hparams, name)
    params = {"w": torch.randn(10), "b": torch.randn(3)}
    state = tx.init(params)
    for _ in range(6):
        state = step(params, {k: torch.randn(v.shape) for k, v in params.items()}, state, None)
        assert state is not None
    sources = [run.source for prog in step.programs.values() for run, _ in prog._plans.values()]
    assert sources
    last = max(sources, key=lambda s: s.count("torch._foreach_"))
    calls = last.count("torch._foreach_")
    assert calls <= _FOREACH_CALLS[name], last
    assert "_each(" not in last, last


@pytest.mark.parametrize("name, advanced", [("rmsprop", True), ("adadelta", True),
                                            ("adamax", False), ("nadam", False),
                                            ("asgd", False)])
def test_a_count_the_rule_only_advances_is_known_as_such(name, advanced):
    """A rule whose step count no coefficient depends on (RMSprop, Adadelta) has a program that
    says so (``Program.advances``): a count on a GPU then needs no value read on the host, a
    foreach kernel adds one (``test_cuda``); where a bias correction or an average reads it
    (Adamax, NAdam's ``mu_product``, ASGD), its value is read."""
    tx = getattr(fo, name)()
    step = _blocked.rule_step(tx, tx.hparams, name)
    params = {"w": torch.randn(10)}
    assert step(params, {"w": torch.randn(10)}, tx.init(params), None) is not None
    (prog,) = step.programs.values()
    _, _, scalar = step.rules.layout
    got = [prog.advances(1 + c, 2 + c) for c in scalar if not prog.unchanged(1 + c, 2 + c)]
    assert got and any(got) == advanced and (not advanced or all(got))


def test_a_rule_that_is_not_pointwise_has_no_program():
    """LAMB's trust ratio reads each parameter's norm: no pointwise program, the blocked step
    declines (the chain runs); with ``reduce`` (LAMB's alias vouches for it), the step is the
    one of a rule that reduces over each leaf (``tests/test_program_reduce.py``)."""
    tx = fo.lamb(lr=1e-2)
    params = {"w": torch.randn(10)}
    step = _blocked.rule_step(tx, tx.hparams, "lamb")
    assert step(params, {"w": torch.randn(10)}, tx.init(params), None) is None
    assert not step.rules.pointwise and all(p is None for p in step.programs.values())
    step = _blocked.rule_step(tx, tx.hparams, "lamb", reduce=True)
    assert step(params, {"w": torch.randn(10)}, tx.init(params), None) is not None
    assert len(step.reduced.programs) == 1


def test_a_state_with_more_than_parameter_shaped_parts_declines():
    """A schedule's count is shared by every parameter: the blocked step of a chain that keeps
    one declines (the chain runs)."""
    tx = fo.rmsprop(lr=fo.schedules.linear(1e-2, 0.0, 10))
    step = _blocked.rule_step(tx, tx.hparams, "rmsprop")
    params = {"w": torch.randn(10)}
    assert step(params, {"w": torch.randn(10)}, tx.init(params), None) is None


@pytest.mark.parametrize("name", ["lion", "adopt", "ademamix", "adan", "optax_nadam",
                                  "optax_rmsprop"])
def test_any_pointwise_alias_takes_its_blocked_step(name, monkeypatch):
    """An alias built from the library's blocks gets a blocked step from its rule without a line
    of its own (Adan's first step, whose ``where`` takes a scalar branch into a tensor op, runs
    the chain); its numbers are the chain's up to rounding order (float64, 8 steps)."""
    steps = []
    blocks = _blocked.blocks
    monkeypatch.setattr(_blocked, "blocks", lambda *a: steps.append(1) or blocks(*a))
    tx = getattr(fo, name)()
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(6, 5, generator=gen, dtype=torch.float64),
              "b": torch.randn(5, generator=gen, dtype=torch.float64)}
    chain_params, chain_state = params, tx.init(params)
    params = {k: v.clone() for k, v in params.items()}
    state = tx.init(params)
    for _ in range(8):
        grads = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
        updates, chain_state = tx.update(grads, chain_state, chain_params)
        chain_params = fo.apply_updates(chain_params, updates)
        params, state = fo.step(tx, grads, state, params, donate=True)
    assert len(steps) >= 7
    for k in params:
        torch.testing.assert_close(params[k], chain_params[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [*sorted(_FOREACH_CALLS), "rprop", "lion", "ademamix"])
def test_whole_lists_with_number_scalars_give_the_blocked_numbers(name, monkeypatch):
    """On a GPU a program runs on whole lists, its scalar operands Python numbers (torch's
    one-launch path), not cached CPU 0-d tensors: the same digits (the kernels round a number
    to the lists' dtype, as a 0-d tensor of that dtype is rounded), checked here on the CPU,
    float32, a leaf larger than a block included."""
    shapes = {"w": (3, _blocked.BLOCK // 2 + 5), "b": (7,), "s": ()}
    results = []
    for whole in (False, True):
        monkeypatch.setattr(_blocked, "_whole", lambda device, whole=whole: whole)
        tx = getattr(fo, name)()
        step = _blocked.rule_step(tx, tx.hparams, name)
        gen = torch.Generator().manual_seed(0)
        params = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
        state = tx.init(params)
        for _ in range(7):
            state = step(params, {k: torch.randn(s, generator=gen) for k, s in shapes.items()},
                         state, None)
            assert state is not None
        plans = [key[-2] for prog in step.programs.values() for key in prog._plans]
        assert plans and all(numbers == whole for numbers in plans)
        results.append((params, state))
    for a, b in zip(*(optree.tree_leaves(r) for r in results)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["rmsprop", "adadelta", "rprop", "asgd", "lion"])
def test_a_pure_step_runs_the_program_into_new_tensors(name, monkeypatch):
    """``fo.step`` without donation runs the blocked program out of place: no copy of the
    inputs first (a split leaf's new tensor is written a block at a time), the inputs left as
    they were, the donated step's numbers bit for bit and each tensor's layout."""
    from functional_optim import _fused

    monkeypatch.setattr(_fused, "_copies", lambda sources: pytest.fail("copied its inputs"))
    tx = getattr(fo, name)()
    gen = torch.Generator().manual_seed(0)
    shapes = {"big": (_blocked.BLOCK + 3,), "t": (4, 6), "b": (6,), "s": ()}

    def tree():
        out = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
        out["t"] = out["t"].t()
        return out

    params = tree()
    pure, donated = (params, tx.init(params)), ({k: v.clone() for k, v in params.items()},
                                                 tx.init(params))
    for _ in range(4):
        grads = tree()
        inputs = optree.tree_leaves((pure, grads))
        before = [x.clone() for x in inputs]
        pure = fo.step(tx, grads, pure[1], pure[0])
        donated = fo.step(tx, grads, donated[1], donated[0], donate=True)
        assert all(torch.equal(a, b) for a, b in zip(inputs, before))
    for a, b in zip(optree.tree_leaves(pure), optree.tree_leaves(donated)):
        assert torch.equal(a, b) and a.stride() == b.stride()


_EXACT = ["sgd", "adam", "adamw", "adagrad", "rmsprop", "adadelta", "adamax", "nadam", "radam",
          "asgd", "rprop", "lion", "adopt", "ademamix", "adan"]


def _exact_plans(monkeypatch) -> list:
    """The exact plans a test's updates run (one entry per group and step)."""
    used, plan = [], _program.Program.plan
    monkeypatch.setattr(_program.Program, "plan", lambda self, *a: (
        used.append(1) if a[-1] else None, plan(self, *a))[1])
    return used


@pytest.mark.parametrize("name", _EXACT)
def test_a_pure_update_runs_the_exact_program_with_the_per_leaf_numbers(name, monkeypatch):
    """An alias's pure ``tx.update`` runs its rule's exact program (op for op, into new
    tensors): the per-leaf path's numbers bit for bit (float32 and float64 leaves, one larger
    than a block, one transposed), its inputs untouched (Adan's first step runs the chain: its
    ``where`` puts a scalar into a tensor)."""
    used = _exact_plans(monkeypatch)
    tx = getattr(fo, name)()
    gen = torch.Generator().manual_seed(0)
    shapes = {"big": (_blocked.BLOCK + 3,), "t": (4, 6), "w": (5, 3), "d": (7,)}

    def tree():
        out = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
        out["t"], out["d"] = out["t"].t(), out["d"].double()
        return out

    params = tree()
    fast, slow = (params, tx.init(params)), (params, tx.init(params))
    for _ in range(5):
        grads = tree()
        inputs = optree.tree_leaves((fast, grads))
        versions = [x._version for x in inputs]
        updates, state = tx.update(grads, fast[1], fast[0])
        assert [x._version for x in inputs] == versions
        assert list(updates) == list(grads)
        fast = fo.apply_updates(fast[0], updates), state
        with _execute.multi_tensor(False):
            updates, state = tx.update(grads, slow[1], slow[0])
        slow = fo.apply_updates(slow[0], updates), state
    assert len(used) >= 8  # (two dtype groups, every step but Adan's first)
    for a, b in zip(optree.tree_leaves(fast), optree.tree_leaves(slow)):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("shape", ["list", "nested"])
@pytest.mark.parametrize("name", ["adamw", "sgd", "nadam", "rprop"])
def test_a_list_or_a_nested_tree_runs_the_exact_program(name, shape, monkeypatch):
    """A list of parameters or nested dicts run the alias's exact program on their leaves by
    position (the state's parameter-shaped parts too), in their own structure, with the
    per-leaf numbers; a None leaf (a frozen parameter) runs the chain."""
    used = _exact_plans(monkeypatch)
    tx = getattr(fo, name)()
    gen = torch.Generator().manual_seed(0)

    def tree():
        xs = [torch.randn(s, generator=gen) for s in ((_blocked.BLOCK + 3,), (4, 6), (5,))]
        return xs if shape == "list" else {"a": {"w": xs[0], "v": xs[1]}, "b": [xs[2]]}

    params = tree()
    fast = slow = tx.init(params)
    for _ in range(3):
        grads = tree()
        updates, fast = tx.update(grads, fast, params)
        with _execute.multi_tensor(False):
            expected, slow = tx.update(grads, slow, params)
        assert optree.tree_structure(updates) == optree.tree_structure(expected)
        assert optree.tree_structure(fast) == optree.tree_structure(slow)
        for a, b in zip(optree.tree_leaves((updates, fast)), optree.tree_leaves((expected,
                                                                                   slow))):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert len(used) == 3
    grads = tree()  # (a frozen parameter's None gradient: the chain, the same numbers)
    if shape == "list":
        grads[2] = None
    else:
        grads["b"][0] = None
    updates, _ = tx.update(grads, fast, params)
    with _execute.multi_tensor(False):
        expected, _ = tx.update(grads, slow, params)
    assert len(used) == 3
    for a, b in zip(optree.tree_leaves(updates, none_is_leaf=True),
                    optree.tree_leaves(expected, none_is_leaf=True)):
        assert a is b is None or torch.equal(a, b)


_CASTS = ("aten::to", "aten::_to_copy", "aten::item", "aten::lift_fresh")
"""Events of a scalar operand cast or wrapped for a kernel."""


@pytest.mark.parametrize("make", [lambda: fo.adamw(weight_decay=0.1), lambda: fo.nadam(),
                                  lambda: fo.sgd(lr=0.1, momentum=0.9, weight_decay=0.1),
                                  lambda: fo.rmsprop(momentum=0.9),
                                  lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                                                   fo.add_decayed_weights(0.1),
                                                   fo.scale_by_learning_rate(0.01))],
                         ids=["adamw", "nadam", "sgd", "rmsprop", "user_chain"])
def test_an_exact_program_casts_no_operand_per_tensor(make):
    """An exact program's scalar operands (a number, a 0-d float64 coefficient) go to the
    kernels as 0-d tensors in the lists' dtype: no cast or wrapped number per tensor, which
    added a microsecond per tensor and op (300 x 4096 floats: AdamW's pure update 1.39x ->
    1.18x torch's foreach step). Counted in work, with 8 and 16 leaves."""
    from collections import Counter

    from torch.profiler import profile

    counts = []
    for n in (8, 16):
        params = {f"p{i}": torch.randn(5, 3) for i in range(n)}
        grads = {k: torch.randn(5, 3) for k in params}
        tx = make()
        state = tx.init(params)
        for _ in range(2):
            _, state = tx.update(grads, state, params)
        _foreach._CONSTANTS.clear()  # (each run makes its step's numbers' tensors)
        with profile() as prof:
            tx.update(grads, state, params)
        counts.append(Counter(e.name for e in prof.events() if e.name in _CASTS))
    assert counts[0] == counts[1]


def test_an_exact_program_per_hyperparameter_value_within_a_bound(monkeypatch):
    """An exact program bakes in its hyperparameters' numbers: a Python-number lr that changes
    every step traces a program per value, up to a bound (the alias's programs, then its
    chain's call programs, :mod:`functional_optim._program_calls`), then runs the chain's
    multi-tensor path (the same numbers every way)."""
    used = _exact_plans(monkeypatch)
    tx = fo.rmsprop()
    params = {"w": torch.randn(5, 3)}
    fast = slow = (params, tx.init(params))
    bound = _blocked._EXACT_PROGRAMS + _program_calls._MAX_PROGRAMS
    for i in range(bound + 4):
        grads = {"w": torch.randn(5, 3)}
        h = {"lr": 0.01 / (1 + i)}
        updates, state = tx.update(grads, fast[1], fast[0], h)
        fast = fo.apply_updates(fast[0], updates), state
        with _execute.multi_tensor(False):
            updates, state = tx.update(grads, slow[1], slow[0], h)
        slow = fo.apply_updates(slow[0], updates), state
    assert len(used) == bound
    for a, b in zip(optree.tree_leaves(fast), optree.tree_leaves(slow)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [
    lambda: fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3)),
    lambda: fo.rmsprop(lr=fo.schedules.linear(1e-3, 0.0, 10))], ids=["user_chain", "schedule"])
def test_a_user_chain_or_a_schedule_runs_its_calls_program(make, monkeypatch):
    """A user's chain gets no program of the alias kind (its blocks could differ by leaf: a
    mask, a partition; only an alias vouches for its rule), nor does an alias that keeps a
    state that is not per parameter (a schedule's count); their fused rule's call program runs
    instead (:mod:`functional_optim._program_calls`: what differs by leaf is in the rule's
    arguments), with the per-leaf numbers."""
    used = _exact_plans(monkeypatch)
    calls = []
    exact = _program_calls.exact_update
    monkeypatch.setattr(_program_calls, "exact_update", lambda *a: calls.append(exact(*a))
                        or calls[-1])
    tx = make()
    params = {"w": torch.randn(5, 3)}
    fast = slow = tx.init(params)
    for _ in range(3):
        grads = {"w": torch.randn(5, 3)}
        updates, fast = tx.update(grads, fast, params)
        with _execute.multi_tensor(False):
            expected, slow = tx.update(grads, slow, params)
        assert torch.equal(updates["w"], expected["w"])
    assert len(used) == 3 and sum(c is not None for c in calls) == 3
    for a, b in zip(optree.tree_leaves(fast), optree.tree_leaves(slow)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["adamaxw", "nadamw", "adan", "lion"])
def test_an_alias_whose_rule_differs_by_leaf_gets_no_program(name):
    """A mask (decay only the matrices) makes the rule differ from leaf to leaf: a program
    traced on one leaf would decay every leaf or none. Such an alias runs its chain on every
    path: the donated and pure steps and the pure update give the per-leaf numbers."""
    tx = getattr(fo, name)(weight_decay=0.5, mask=lambda p: {k: v.ndim > 1 for k, v in p.items()})
    params = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    grads = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in params.items()}
    with _execute.multi_tensor(False):
        updates, _ = tx.update(grads, tx.init(params), params)
    expected = fo.apply_updates(params, updates)
    donated, _ = fo.step(tx, grads, tx.init(params), {k: v.clone() for k, v in params.items()},
                         donate=True)
    pure, _ = fo.step(tx, grads, tx.init(params), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for got in (donated, pure, fo.apply_updates(params, updates)):
        for k in params:  # (float64: the lr folded into the step is another rounding order)
            torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-14)

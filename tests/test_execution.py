"""Which execution runs a pure ``tx.update`` (DESIGN.md §6): multi-tensor (``torch._foreach_*``)
whenever nothing needs autograd or a ``torch.func`` transform, leaf by leaf otherwise; the same
numbers either way (every registered transform: ``test_conformance.py``)."""

from __future__ import annotations

import optree
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import _get_current_dispatch_mode

import functional_optim as fo
import functional_optim.optim as foo
from functional_optim import _execute, _modes, _program


def _trees(seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w": (8, 3), "b": (8,), "v": (5,)}
    params = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
    grads = {k: torch.randn(s, generator=gen, dtype=dtype) for k, s in shapes.items()}
    return params, grads


@pytest.fixture
def choices(monkeypatch):
    """The path each ``elementwise`` call took (True: multi-tensor)."""
    seen: list[bool] = []
    wanted = _execute.multi_tensor_wanted

    def spy(columns, hparams=None):
        result = wanted(columns, hparams)
        if not isinstance(_get_current_dispatch_mode(), _program._Recorder):
            seen.append(result)  # (not the trace of an alias's program: its rule leaf by leaf)
        return result

    for module in (_execute, _modes):  # (elementwise's name, and the modes' own)
        monkeypatch.setattr(module, "multi_tensor_wanted", spy)
    return seen


def _adamw():
    return fo.adamw(lr=1e-2, weight_decay=1e-1)


def _user_chain():
    return fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.add_decayed_weights(1e-1),
                    fo.scale_by_learning_rate(1e-2))


@pytest.mark.parametrize("make", [_adamw, _user_chain, lambda: fo.rmsprop(momentum=0.9),
                                  lambda: fo.nadam(weight_decay=0.1)],
                         ids=["adamw", "user_chain", "rmsprop", "nadam"])
def test_plain_update_runs_multi_tensor_with_grad_mode_on(make, choices):
    """The README's loop (grad mode on, nothing requires grad) takes the foreach path, with the
    per-leaf path's numbers, and mutates nothing."""
    tx = make()
    params, grads = _trees()
    results = []
    for multi in (True, False):
        state, p = tx.init(params), params
        versions = [t._version for t in optree.tree_leaves((params, grads))]
        choices.clear()
        with _execute.multi_tensor(multi):
            for _ in range(3):
                updates, state = tx.update(grads, state, p)
                p = fo.apply_updates(p, updates)
        assert choices and all(c == multi for c in choices)
        assert [t._version for t in optree.tree_leaves((params, grads))] == versions
        results.append((p, state))
    for a, b in zip(optree.tree_leaves(results[0]), optree.tree_leaves(results[1])):
        assert torch.equal(a, b)


def test_requires_grad_anywhere_takes_the_per_leaf_path(choices):
    tx = fo.adamw(lr=torch.tensor(1e-2), weight_decay=1e-1)
    params, grads = _trees()
    state = tx.init(params)
    cases = {
        "params": ({**params, "w": params["w"].clone().requires_grad_()}, grads, None),
        "grads": (params, {**grads, "b": grads["b"].clone().requires_grad_()}, None),
        "hparams": (params, grads, {"lr": torch.tensor(1e-2, dtype=torch.float64,
                                                       requires_grad=True)}),
    }
    for what, (p, g, h) in cases.items():
        choices.clear()
        updates, _ = tx.update(g, state, p, h)
        # (a block that reads none of them, Adam's moments of plain gradients, may run foreach)
        assert choices and not all(choices), what
        assert any(u.requires_grad for u in updates.values()), what
        with _execute.multi_tensor(False):
            expected, _ = tx.update(g, state, p, h)
        for k in updates:
            assert torch.equal(updates[k], expected[k]), what
    choices.clear()
    with torch.no_grad():  # no graph is recorded: the foreach path again
        tx.update(grads, state, cases["params"][0])
    assert choices and all(choices)


def test_state_that_requires_grad_takes_the_per_leaf_path(choices):
    tx = _adamw()
    params, grads = _trees()
    state = tx.init(params)
    state = optree.tree_map(lambda x: x.requires_grad_() if x.is_floating_point() else x, state)
    updates, _ = tx.update(grads, state, params)
    assert choices and not choices[-1]  # (the chain may fuse: its one rule runs leaf by leaf)
    assert all(u.requires_grad for u in updates.values())
    with _execute.multi_tensor(False):
        expected, _ = tx.update(grads, state, params)
    for k in updates:
        assert torch.equal(updates[k], expected[k])


def test_functorch_tracing_and_forward_ad_take_the_per_leaf_path(choices):
    tx = _adamw()
    params, grads = _trees()
    state = tx.init(params)

    def loss(p):
        updates, _ = tx.update(grads, state, p)
        return sum(u.sum() for u in updates.values())

    got = torch.func.grad(loss)(params)
    assert choices and not all(choices)  # (Adam's moments of the plain gradients: foreach)
    with _execute.multi_tensor(False):
        expected = torch.func.grad(loss)(params)
    for k in got:
        assert torch.equal(got[k], expected[k])
    choices.clear()
    torch.func.vmap(lambda g: tx.update({"w": g}, tx.init({"w": g}), {"w": g})[0])(
        torch.randn(4, 3, 2))
    assert choices and not any(choices)
    choices.clear()
    make_fx(lambda g, p: tx.update(g, state, p)[0])(grads, params)
    assert choices and not any(choices)
    choices.clear()
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) for k, v in grads.items()}
        tx.update(fake, tx.init(fake), fake)
    assert choices and not any(choices)
    choices.clear()
    import torch.autograd.forward_ad as fwad
    with fwad.dual_level():
        dual = {k: fwad.make_dual(v, torch.ones_like(v)) for k, v in params.items()}
        updates, _ = tx.update(grads, state, dual)
        assert fwad.unpack_dual(updates["w"]).tangent is not None
    assert choices and not any(choices)


def test_fused_run_hands_a_temporary_only_to_a_rule_that_reads_it_once():
    """A chain's fused run passed a fresh temporary to the next rule as donated memory, which
    RMSprop's rule (``g * g``, then ``g / d``) overwrote at its first read: with a tensor alpha
    and a tensor weight decay the multi-tensor path raised (the adapter with foreach=True too).
    """
    params, grads = _trees(dtype=torch.float64)
    tx = fo.rmsprop(lr=0.1, alpha=torch.tensor(0.9), weight_decay=torch.tensor(0.1),
                    momentum=0.5)
    out = []
    for multi in (True, False):
        with torch.no_grad(), _execute.multi_tensor(multi):
            state = tx.init(params)
            for _ in range(2):
                updates, state = tx.update(grads, state, params)
        out.append(updates)
    for k in params:
        assert torch.equal(out[0][k], out[1][k])
    model = torch.nn.Linear(3, 2)
    opt = foo.RMSprop(model.parameters(), lr=0.1, alpha=torch.tensor(0.9),
                           weight_decay=torch.tensor(0.1), foreach=True)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()


def test_apply_updates_foreach_matches_per_leaf():
    params, grads = _trees()
    params["h"] = torch.randn(4, dtype=torch.bfloat16)
    grads["h"] = torch.randn(4, dtype=torch.float32)  # another dtype: one rounding
    params["none"], grads["none"] = torch.ones(2), None
    with _execute.multi_tensor(False):
        expected = fo.apply_updates(params, grads)
    got = fo.apply_updates(params, grads)
    for k in params:
        assert got[k].dtype == params[k].dtype
        assert torch.equal(got[k], expected[k])
    assert got["none"] is params["none"]
    inplace = {k: v.clone() for k, v in params.items()}
    assert fo.apply_updates_(inplace, grads) is inplace
    for k in params:
        assert torch.equal(inplace[k], expected[k])


def test_apply_updates_names_the_leaf_of_a_wrong_shape():
    params, grads = _trees()
    grads["b"] = torch.zeros(3)
    with pytest.raises(fo.TreeMismatchError, match=r"'b'.*shape \(3,\).*shape \(8,\)"):
        fo.apply_updates(params, grads)
    before = params["w"].clone()
    with pytest.raises(fo.TreeMismatchError, match="'b'"):
        fo.apply_updates_(params, grads)
    assert torch.equal(params["w"], before)  # nothing changed


def test_a_chain_holding_an_alias_fuses_with_the_aliases_hyperparameters():
    """An alias's pointwise spec called itself (a closure that saw its own rebinding), with the
    inner chain's hyperparameters: ``chain(clip, adamw)`` raised an HParamError on the
    multi-tensor path (the adapter with foreach=True too)."""
    params, grads = _trees(dtype=torch.float64)
    tx = fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(lr=0.01, weight_decay=0.1))
    out = []
    for multi in (True, False):
        with torch.no_grad(), _execute.multi_tensor(multi):
            state = tx.init(params)
            for _ in range(2):
                updates, state = tx.update(grads, state, params)
        out.append(updates)
    for k in params:
        assert torch.equal(out[0][k], out[1][k])
    model = torch.nn.Linear(3, 2)
    opt = foo.FunctionalOptimizer(model.parameters(), tx, foreach=True)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()


def test_fused_run_keeps_a_0d_leaf_in_its_dtype():
    """A 0-d leaf times a 0-d float64 hyperparameter is float64: in a fused run that update
    reached the next rule as float64, and Adam's foreach lerp raised (``fo.optim.Adam`` with a
    tensor weight decay, a 0-d parameter and foreach=True too). Each transform's update is in
    the leaf's dtype, fused or not."""
    params = {"s": torch.randn(()), "v": torch.randn(3)}
    grads = {"s": torch.randn(()), "v": torch.randn(3)}
    tx = fo.adam(weight_decay=torch.tensor(0.1))
    out = []
    for multi in (True, False):
        with torch.no_grad(), _execute.multi_tensor(multi):
            updates, state = tx.update(grads, tx.init(params), params)
        out.append((updates, state))
    for a, b in zip(optree.tree_leaves(out[0]), optree.tree_leaves(out[1])):
        assert a.dtype == b.dtype and torch.equal(a, b)
    p = torch.nn.Parameter(torch.randn(()))
    opt = foo.Adam([p], weight_decay=torch.tensor(0.1), foreach=True)
    p.grad = torch.randn(())
    opt.step()
    assert p.dtype == torch.float32


@pytest.mark.parametrize("make", [lambda: fo.adam(lr=1e-3), lambda: fo.nadam(), fo.radam])
def test_many_leaves_take_each_leafs_bias_corrections(make):
    """A group of many leaves stacks their step counts; the CPU pow kernel's vector loop
    gives another ``0.999 ** t`` than the 0-d one at some steps (t = 32, 55, 64), which moved
    float64 updates by an ulp there. The multi-tensor path equals the per-leaf path (and
    torch.optim's Python-float bias corrections) at every step, with the counts equal (the
    0-d math on Python numbers) or not (on stacked counts)."""
    gen = torch.Generator().manual_seed(0)
    params = {str(i): torch.randn(2, generator=gen, dtype=torch.float64) for i in range(40)}
    grads = {k: torch.randn(2, generator=gen, dtype=torch.float64) for k in params}
    tx = make()
    states = [tx.init(params), tx.init(params)]
    for step in range(1, 66):
        # from step 40 leaf 0 skips every third step: its count differs from the others'
        batch = {**grads, "0": None} if step > 40 and step % 3 == 0 else grads
        out = []
        for k, multi in enumerate((True, False)):
            with _execute.multi_tensor(multi), torch.no_grad():
                u, states[k] = tx.update(batch, states[k], params)
            out.append(u)
        assert all(out[0][n] is None and out[1][n] is None or torch.equal(out[0][n], out[1][n])
                   for n in params), step


@pytest.mark.parametrize("shared", [True, False], ids=["one_dtype_each", "mixed"])
def test_a_multi_tensor_group_shares_the_dtypes_of_its_0d_state(shared):
    """0-d state keeps its own dtype on the multi-tensor path: a parameter whose NAdam
    ``mu_product`` is float32 (started fresh) beside float64 ones (loaded from torch.optim) is
    computed in float32, not stacked with the others into float64; the per-leaf numbers bit
    for bit."""
    tx = fo.nadam(lr=0.1)
    params, grads = _trees(dtype=torch.float64)
    state = tx.init(params)
    products = dict(state["nadam"].mu_product)
    for name in (params if shared else ["w", "b"]):
        products[name] = products[name].to(torch.float64) * 0.5
    state = {**state, "nadam": state["nadam"]._replace(mu_product=products)}
    results = []
    for multi in (True, False):
        with _execute.multi_tensor(multi):
            results.append(tx.update(grads, state, params))
    for a, b in zip(*(optree.tree_leaves(r) for r in results)):
        assert a.dtype == b.dtype and torch.equal(a, b)

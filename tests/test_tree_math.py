"""``functional_optim.tree_math`` (optax's ``optax.tree`` vocabulary) against its formulas written
out leaf by leaf, on nested trees with ``None`` leaves, real and complex; the reductions also on
DTensor trees (two gloo ranks)."""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import pytest
import torch
from dist_harness import full_value, init, worker_main
from dist_harness import launch as _launch

import functional_optim as fo
from functional_optim import tree_math as tm

F64 = torch.float64


def _tree(seed: int, dtype=F64):
    gen = torch.Generator().manual_seed(seed)

    def t(*shape):
        x = torch.randn(shape, generator=gen, dtype=F64)
        if dtype.is_complex:
            x = torch.complex(x, torch.randn(shape, generator=gen, dtype=F64))
        return x.to(dtype)

    return {"w": t(3, 2), "b": [t(4), None], "s": (t(),)}


def _pairs(a, b):
    return [(x, y) for x, y in zip(fo.tree.leaves(a), fo.tree.leaves(b)) if x is not None]


def _close(a, b):
    for x, y in zip(fo.tree.leaves(a), fo.tree.leaves(b)):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
def test_elementwise_and_reductions(dtype):
    a, b = _tree(0, dtype), _tree(1, dtype)
    _close(tm.mul(a, b), fo.tree.map(lambda x, y: x * y, a, b))
    _close(tm.div(a, b), fo.tree.map(lambda x, y: x / y, a, b))
    _close(tm.conj(a), fo.tree.map(lambda x: x.conj() if x.is_complex() else x, a))
    _close(tm.real(a), fo.tree.map(lambda x: x.real, a))
    dot = sum((x.conj() * y).sum() if x.is_complex() else (x * y).sum() for x, y in _pairs(a, b))
    torch.testing.assert_close(tm.vdot(a, b), dot, rtol=1e-13, atol=0)
    xs = [x for x in fo.tree.leaves(a) if x is not None]
    torch.testing.assert_close(tm.sum(a), sum(x.sum() for x in xs), rtol=1e-13, atol=0)
    squares = sum((x.abs() ** 2).sum() for x in xs)
    torch.testing.assert_close(tm.norm(a), squares.sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(tm.norm(a, 2, squared=True), squares, rtol=1e-13, atol=0)
    l1 = sum(x.abs().sum() for x in xs)
    torch.testing.assert_close(tm.norm(a, 1), l1, rtol=1e-13, atol=0)
    torch.testing.assert_close(tm.norm(a, 1, squared=True), l1 * l1, rtol=1e-13, atol=0)
    linf = max(x.abs().max() for x in xs)
    for ord_ in (math.inf, "inf", "infinity"):
        torch.testing.assert_close(tm.norm(a, ord_), linf, rtol=0, atol=0)
    if dtype == F64:
        assert tm.max(a) == max(x.max() for x in xs) and tm.min(a) == min(x.min() for x in xs)
    with pytest.raises(ValueError, match="unsupported ord 3"):
        tm.norm(a, 3)


def test_empty_trees_and_zero_gradient():
    assert tm.sum({}) == 0 and tm.vdot({}, {}) == 0
    assert tm.max({"a": torch.zeros(0)}) == -math.inf and tm.min({}) == math.inf
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(tm.norm({"x": x}), x)
    assert torch.equal(g, torch.zeros(3, dtype=F64))  # not NaN at zero


def test_fills_clip_where_batch_cast():
    a = _tree(0)
    _close(tm.ones_like(a), fo.tree.map(torch.ones_like, a))
    assert tm.ones_like(a, torch.float32)["w"].dtype == torch.float32
    _close(tm.full_like(a, 2.5), fo.tree.map(lambda x: torch.full_like(x, 2.5), a))
    v = torch.tensor(1.5, dtype=F64, requires_grad=True)
    filled = tm.full_like(a, v)
    assert filled["w"].requires_grad
    assert torch.equal(filled["w"], torch.full((3, 2), 1.5, dtype=F64))
    _close(tm.clip(a, -0.5, 0.2), fo.tree.map(lambda x: x.clamp(-0.5, 0.2), a))
    _close(tm.clip(a, max_value=0.1), fo.tree.map(lambda x: x.clamp(max=0.1), a))
    assert tm.clip(a) is a
    b = _tree(1)
    _close(tm.where(True, a, b), a)
    _close(tm.where(torch.tensor(False), a, b), b)
    batched = tm.batch_shape(a, (2, 5))
    assert batched["w"].shape == (2, 5, 3, 2) and torch.equal(batched["w"][1, 3], a["w"])
    ints = {"i": torch.arange(3), "f": torch.ones(2)}
    assert fo.tree.cast(ints, F64)["i"].dtype == torch.int64
    assert fo.tree.cast(ints, F64, floating_only=False)["i"].dtype == F64
    assert fo.tree.cast(ints, None) is ints
    like = tm.cast_like(a, fo.tree.map(lambda x: x.float(), a))
    assert like["w"].dtype == torch.float32 and like["b"][1] is None


def test_dtype_and_allclose():
    mixed = {"h": torch.zeros(1, dtype=torch.float16), "f": torch.zeros(1),
             "d": torch.zeros(1, dtype=F64)}
    assert tm.dtype({"a": torch.zeros(1), "b": None}) == torch.float32
    assert tm.dtype({}) == torch.get_default_dtype()
    with pytest.raises(ValueError, match="several dtypes"):
        tm.dtype(mixed)
    assert tm.dtype(mixed, "promote") == F64 and tm.dtype(mixed, "highest") == F64
    assert tm.dtype(mixed, "lowest") == torch.float16
    with pytest.raises(ValueError, match="do not promote"):
        tm.dtype({"a": torch.zeros(1, dtype=torch.bfloat16),
                  "b": torch.zeros(1, dtype=torch.float16)}, "highest")
    a = _tree(0)
    assert tm.allclose(a, fo.tree.map(lambda x: x + 1e-9, a))
    assert not tm.allclose(a, fo.tree.map(lambda x: x + 1e-3, a))
    with pytest.raises(fo.TreeMismatchError):
        tm.allclose(a, {"w": a["w"]})


def test_moments():
    g, m = _tree(0), _tree(1)
    decay, count = 0.9, torch.tensor(3)
    _close(tm.update_moment(g, m, decay, 2),
           fo.tree.map(lambda x, y: (1 - decay) * x ** 2 + decay * y, g, m))
    _close(tm.update_infinity_moment(g, m, decay, 1e-3),
           fo.tree.map(lambda x, y: torch.maximum(x.abs() + 1e-3, decay * y), g, m))
    _close(tm.bias_correction(m, decay, count), fo.tree.map(lambda y: y / (1 - 0.9 ** 3), m))
    cg, cm = _tree(0, torch.complex128), fo.tree.map(lambda x: x.abs(), _tree(1))
    for k in (2, 3):
        _close(tm.update_moment_per_elem_norm(cg, cm, decay, k),
               fo.tree.map(lambda x, y, k=k: (1 - decay) * x.abs() ** k + decay * y, cg, cm))


def test_random_trees_are_reproducible_and_independent():
    a = _tree(0)
    first = tm.random_like(torch.Generator().manual_seed(3), a)
    again = tm.random_like(torch.Generator().manual_seed(3), a)
    other = tm.random_like(torch.Generator().manual_seed(4), a)
    _close(first, again)
    assert not torch.equal(first["w"], other["w"]) and first["b"][1] is None
    assert not torch.equal(first["b"][0][:2], first["w"][0])  # leaves draw different streams
    uniform = tm.random_like(torch.Generator().manual_seed(3), a, torch.rand, torch.float32)
    assert uniform["w"].dtype == torch.float32 and (uniform["w"] >= 0).all()
    keys = tm.split_generator_like(torch.Generator().manual_seed(3), a)
    assert isinstance(keys["w"], torch.Generator) and keys["b"][1] is None


class Inner(NamedTuple):
    count: torch.Tensor
    lr: torch.Tensor


class Outer(NamedTuple):
    inner: Inner
    extra: dict


def test_get_set_and_paths():
    state = (Outer(Inner(torch.tensor(1), torch.tensor(0.1)), {"lr": torch.tensor(0.2)}),
             [{"count": torch.tensor(5)}])
    found = tm.get_all_with_path(state, "lr")
    assert [tuple(map(str, p)) for p, _ in found] == [
        ("0", "Outer.inner", "Inner.lr"), ("0", "Outer.extra", "lr")]
    assert [float(v) for _, v in found] == pytest.approx([0.1, 0.2])
    assert tm.get(state, "Inner") is state[0].inner  # a NamedTuple by its class name
    assert tm.get(state, "missing", default=7) == 7
    with pytest.raises(KeyError, match="2 values for 'count'"):
        tm.get(state, "count")
    only_named = lambda path, value: isinstance(path[-1], tm.NamedTupleKey)  # noqa: E731
    assert int(tm.get(state, "count", filtering=only_named)) == 1
    new = tm.set(state, only_named, lr=torch.tensor(0.5))
    assert float(new[0].inner.lr) == 0.5 and float(new[0].extra["lr"]) == pytest.approx(0.2)
    assert float(state[0].inner.lr) == pytest.approx(0.1)  # a copy: the input is unchanged
    replaced = tm.set(state, Inner=Inner(torch.tensor(9), torch.tensor(9.0)))
    assert int(replaced[0].inner.count) == 9 and int(replaced[1][0]["count"]) == 5
    with pytest.raises(KeyError, match="no value for 'nothing'"):
        tm.set(state, nothing=1)


def test_map_params_over_a_chain_state():
    params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
    tx = fo.chain(fo.scale_by_adam(), fo.masked(fo.trace(0.9), {"w": True, "b": False}))
    state = tx.init(params)
    specs = {"w": "row", "b": "replicated"}
    out = tm.map_params(tx, lambda x, spec: spec, state, specs,
                        transform_non_params=lambda v: "other",
                        is_leaf=lambda v: isinstance(v, fo.combinators.MaskedNode))
    assert out[0].mu == specs and out[0].nu == specs and out[0].nu_max == fo.EmptyState()
    assert out[1].momentum_buffer["w"] == "row"  # the masked-in leaf of the trace


# -- DTensor trees ------------------------------------------------------------------------------

WORLD = 2


def worker_reductions(outdir) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    init(WORLD)
    mesh = init_device_mesh("cpu", (WORLD,))
    mesh2 = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("dp", "tp"))
    full = [_tree(s) for s in range(2)]

    def place(tree):
        return {"w": distribute_tensor(tree["w"].repeat(2, 1), mesh, [Shard(0)]),
                "b": [distribute_tensor(tree["b"][0], mesh2, [Shard(0), Replicate()]), None],
                "s": (tree["s"][0],)}

    a, b = place(full[0]), place(full[1])
    values = {"vdot": tm.vdot(a, b), "sum": tm.sum(a), "max": tm.max(a), "min": tm.min(a),
              "l1": tm.norm(a, 1), "l2": tm.norm(a), "sq": tm.norm(a, squared=True),
              "linf": tm.norm(a, "inf")}
    plain = [fo.tree.map(full_value, t) for t in (a, b)]
    return {"values": values, "plain": plain}


def test_reductions_on_dtensor_trees(tmp_path):
    for res in _launch(__file__, "reductions", tmp_path, WORLD):
        a, b = res["plain"]
        expected = {"vdot": tm.vdot(a, b), "sum": tm.sum(a), "max": tm.max(a), "min": tm.min(a),
                    "l1": tm.norm(a, 1), "l2": tm.norm(a), "sq": tm.norm(a, squared=True),
                    "linf": tm.norm(a, "inf")}
        for name, value in res["values"].items():
            assert type(value) is torch.Tensor, name  # a plain (replicated) result
            torch.testing.assert_close(value, expected[name], rtol=1e-12, atol=0, msg=name)


if __name__ == "__main__":
    worker_main({"reductions": worker_reductions}, sys.argv)

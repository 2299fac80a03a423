"""Property-based tests (hypothesis): random pytrees through random chains keep every invariant.

For random trees (nested dicts / lists / tuples / NamedTuples up to depth 3; tensor leaves of
random shapes, 0-d and empty included, in float32 / float64 / bfloat16; ``None`` leaves) fed
through random chains of 1-4 blocks for 1-3 steps:

* the output updates have the structure of the grads (``None`` stays ``None``) and every leaf keeps
  its dtype, shape and device;
* the new state has the structure of the old one, leaf for leaf (dtype, shape, device too);
* no input (grads, state, params, hparams) is mutated: ``_version`` counters and values unchanged;
* ``apply_updates`` keeps the parameters' structure, dtypes and shapes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import optree
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import functional_optim as fo
from functional_optim import schedules

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


class Pair(NamedTuple):
    first: Any
    second: Any


class Triple(NamedTuple):
    x: Any
    y: Any
    z: Any


# ----------------------------------------------------------------------------------------------
# strategies: trees


@st.composite
def leaf_specs(draw):
    """``None`` or ``(shape, dtype, seed)``; shapes include 0-d and empty ones."""
    if draw(st.integers(0, 5)) == 0:
        return None
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    return (shape, draw(st.sampled_from(DTYPES)), draw(st.integers(0, 2**31 - 1)))


@st.composite
def tree_specs(draw, depth: int = 3):
    """A tree whose leaves are leaf specs, of depth at most ``depth``."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(leaf_specs())
    kind = draw(st.sampled_from(["dict", "list", "tuple", "pair", "triple"]))
    child = tree_specs(depth - 1)
    if kind == "dict":
        keys = draw(st.lists(st.sampled_from(["w", "b", "emb", "layer", "k0", "z"]),
                             min_size=0, max_size=3, unique=True))
        return {k: draw(child) for k in keys}
    if kind == "list":
        return draw(st.lists(child, min_size=0, max_size=3))
    if kind == "tuple":
        return tuple(draw(st.lists(child, min_size=0, max_size=3)))
    if kind == "pair":
        return Pair(draw(child), draw(child))
    return Triple(draw(child), draw(child), draw(child))


def _is_spec(x: Any) -> bool:
    return x is None or (isinstance(x, tuple) and len(x) == 3 and isinstance(x[1], torch.dtype))


def materialize(spec_tree: Any, salt: int = 0) -> Any:
    """Tensors for the leaf specs (deterministic in the seed and ``salt``)."""

    def make(spec):
        if spec is None:
            return None
        shape, dtype, seed = spec
        gen = torch.Generator().manual_seed(seed + 7919 * salt)
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    return optree.tree_map(make, spec_tree, is_leaf=_is_spec, none_is_leaf=True)


def drop_some(tree: Any, keep: list[bool]) -> Any:
    """``tree`` with some tensor leaves replaced by ``None`` (missing grads)."""
    leaves, spec = optree.tree_flatten(tree, none_is_leaf=True)
    out = [x if (x is None or keep[i % len(keep)]) else None for i, x in enumerate(leaves)]
    return optree.tree_unflatten(spec, out)


# ----------------------------------------------------------------------------------------------
# strategies: transforms

SCHEDULES = [
    lambda: schedules.constant(0.1),
    lambda: schedules.linear(1e-2, 1e-3, 5),
    lambda: schedules.cosine_decay(1e-2, 10, alpha=0.1),
    lambda: schedules.warmup_cosine_decay(0.0, 1e-2, 2, 10),
    lambda: schedules.exponential_decay(1e-2, 3, 0.5),
    lambda: (lambda step: 0.01 / (1.0 + step)),  # a plain callable
]


@st.composite
def learning_rates(draw, allow_schedule: bool = True):
    if allow_schedule and draw(st.booleans()):
        return draw(st.sampled_from(SCHEDULES))()
    return draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0]))


@st.composite
def betas_(draw):
    return (draw(st.sampled_from([0.0, 0.5, 0.9])), draw(st.sampled_from([0.0, 0.9, 0.999])))


@st.composite
def blocks(draw):
    """One building block or alias, with random (valid) constructor arguments."""
    name = draw(st.sampled_from([
        "identity", "scale", "sign", "clip", "clip_by_norm", "clip_by_global_norm",
        "scale_by_adam", "scale_by_rms", "trace", "add_decayed_weights", "set_to_zero",
        "scale_by_learning_rate", "sgd", "adam", "adamw",
    ]))
    eps = draw(st.sampled_from([0.0, 1e-8, 1e-3]))
    if name == "identity":
        return fo.identity()
    if name == "scale":
        return fo.scale(draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0])))
    if name == "sign":
        return fo.sign()
    if name == "clip":
        return fo.clip(draw(st.sampled_from([0.0, 0.1, 1.0])))
    if name in ("clip_by_norm", "clip_by_global_norm"):
        return getattr(fo, name)(draw(st.sampled_from([0.0, 0.1, 10.0])))
    if name == "scale_by_adam":
        return fo.scale_by_adam(draw(betas_()), eps, draw(st.sampled_from([0.0, 1e-8])),
                                amsgrad=draw(st.booleans()))
    if name == "scale_by_rms":
        return fo.scale_by_rms(draw(st.sampled_from([0.0, 0.9, 0.99, 1.0])), eps,
                               centered=draw(st.booleans()))
    if name == "trace":
        nesterov = draw(st.booleans())
        dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1]))
        return fo.trace(draw(st.sampled_from([0.0, 0.5, 0.9])), dampening, nesterov)
    if name == "add_decayed_weights":
        return fo.add_decayed_weights(draw(st.sampled_from([0.0, 1e-2])))
    if name == "set_to_zero":
        return fo.set_to_zero()
    if name == "scale_by_learning_rate":
        return fo.scale_by_learning_rate(draw(learning_rates()), flip_sign=draw(st.booleans()))
    if name == "sgd":
        momentum = draw(st.sampled_from([0.0, 0.9]))
        nesterov = momentum > 0 and draw(st.booleans())
        dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1]))
        return fo.sgd(draw(learning_rates()), momentum, dampening,
                      draw(st.sampled_from([0.0, 1e-2])), nesterov, maximize=draw(st.booleans()))
    kwargs = dict(betas=draw(betas_()), eps=draw(st.sampled_from([1e-8, 1e-3])),
                  amsgrad=draw(st.booleans()), maximize=draw(st.booleans()))
    if name == "adam":
        return fo.adam(draw(learning_rates()), weight_decay=draw(st.sampled_from([0.0, 1e-2])),
                       decoupled_weight_decay=draw(st.booleans()), **kwargs)
    return fo.adamw(draw(learning_rates()), weight_decay=draw(st.sampled_from([0.0, 1e-2])),
                    **kwargs)


@st.composite
def chains(draw):
    txs = draw(st.lists(blocks(), min_size=1, max_size=4))
    if draw(st.booleans()):
        return fo.chain(*txs)
    return fo.chain(**{f"b{i}": tx for i, tx in enumerate(txs)})


def tensorize(hparams: Any) -> Any:
    """Every nonzero number as a 0-d float64 tensor (zeros stay numbers: an alias drops a block
    whose default is the number 0, and then accepts only the number 0 for it)."""

    def conv(h):
        if isinstance(h, (int, float)) and not isinstance(h, bool) and h != 0:
            return torch.tensor(float(h), dtype=torch.float64)
        return h

    return optree.tree_map(conv, hparams)


# ----------------------------------------------------------------------------------------------
# checks


def snapshot(*trees: Any) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    out = []
    for tree in trees:
        for x in optree.tree_leaves(tree, none_is_leaf=True):
            if isinstance(x, torch.Tensor):
                out.append((x, x._version, x.detach().clone()))
    return out


def assert_unmutated(snap: list) -> None:
    for x, version, value in snap:
        assert x._version == version, "an input tensor was modified in place"
        torch.testing.assert_close(x, value, rtol=0, atol=0, equal_nan=True)


def assert_like(new: Any, old: Any, what: str) -> None:
    """Same structure (None where None), and each tensor leaf of the same dtype/shape/device."""
    new_leaves, new_spec = optree.tree_flatten(new, none_is_leaf=True)
    old_leaves, old_spec = optree.tree_flatten(old, none_is_leaf=True)
    assert new_spec == old_spec, f"{what}: structure {new_spec} != {old_spec}"
    for i, (a, b) in enumerate(zip(new_leaves, old_leaves, strict=True)):
        if b is None:
            assert a is None, f"{what}: leaf {i} should be None"
            continue
        assert isinstance(a, torch.Tensor) == isinstance(b, torch.Tensor), f"{what}: leaf {i}"
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype, f"{what}: leaf {i}: dtype {a.dtype} != {b.dtype}"
            assert a.shape == b.shape, f"{what}: leaf {i}: shape {a.shape} != {b.shape}"
            assert a.device == b.device, f"{what}: leaf {i}: device {a.device} != {b.device}"
        else:
            assert a == b, f"{what}: leaf {i}: {a!r} != {b!r}"


def run_steps(tx: fo.Transform, spec: Any, steps: int, hparam_mode: str,
              keep: list[bool]) -> None:
    params = materialize(spec)
    state = tx.init(params)
    if hparam_mode == "none":
        hparams = None
    elif hparam_mode == "defaults":
        hparams = tx.hparams
    else:
        hparams = tensorize(tx.hparams)
    for step in range(steps):
        grads = materialize(spec, salt=step + 1)
        if step % 2 == 1:
            grads = drop_some(grads, keep)
        snap = snapshot(grads, state, params, hparams)
        updates, new_state = tx.update(grads, state, params, hparams)
        assert_unmutated(snap)
        assert_like(updates, grads, "updates")
        assert_like(new_state, state, "state")
        new_params = fo.apply_updates(params, updates)
        assert_unmutated(snap)
        assert_like(new_params, params, "params")
        params, state = new_params, new_state


# ----------------------------------------------------------------------------------------------
# tests


@SETTINGS
@given(spec=tree_specs(), tx=chains(), steps=st.integers(1, 3),
       hparam_mode=st.sampled_from(["none", "defaults", "tensors"]),
       keep=st.lists(st.booleans(), min_size=1, max_size=4))
def test_random_chains_keep_invariants(spec, tx, steps, hparam_mode, keep):
    run_steps(tx, spec, steps, hparam_mode, keep)


@SETTINGS
@given(spec=tree_specs(), tx=blocks(), hparam_mode=st.sampled_from(["none", "tensors"]))
def test_single_blocks_keep_invariants(spec, tx, hparam_mode):
    run_steps(tx, spec, 2, hparam_mode, [True, False])


@SETTINGS
@given(spec=tree_specs(), keep=st.lists(st.booleans(), min_size=1, max_size=4),
       update_dtype=st.sampled_from(DTYPES))
def test_apply_updates_keeps_param_dtypes(spec, keep, update_dtype):
    params = materialize(spec)
    updates = optree.tree_map(lambda p: None if p is None else p.to(update_dtype),
                              drop_some(materialize(spec, salt=1), keep), none_is_leaf=True)
    snap = snapshot(params, updates)
    new_params = fo.apply_updates(params, updates)
    assert_unmutated(snap)
    assert_like(new_params, params, "params")
    for p, u, q in zip(*(optree.tree_leaves(t, none_is_leaf=True)
                         for t in (params, updates, new_params)), strict=True):
        if p is not None and u is None:
            assert q is p  # a None update leaves the parameter as it is


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_dim_leaves_keep_dtype_with_tensor_hparams(dtype):
    """Regression: a 0-d leaf times a 0-d float64 coefficient (bias correction, tensor hparam,
    schedule value) must not come out float64."""
    params = {"s": torch.ones((), dtype=dtype), "v": torch.ones(2, dtype=dtype)}
    for tx in (fo.scale_by_adam(), fo.adamw(torch.tensor(0.1)),
               fo.scale_by_learning_rate(schedules.constant(0.1)),
               fo.scale(torch.tensor(2.0)), fo.scale_by_rms(torch.tensor(0.9))):
        updates, state = tx.update(params, tx.init(params), params, tensorize(tx.hparams))
        assert updates["s"].dtype == dtype
        assert_like(state, tx.init(params), "state")


def test_strategy_corner_cases():
    """The tree strategy really produces the corner cases the properties are about."""
    spec = {"a": ((), torch.bfloat16, 1), "b": ((0, 2), torch.float32, 2), "c": None,
            "d": Pair(((3,), torch.float64, 3), [None])}
    tree = materialize(spec)
    assert tree["a"].shape == () and tree["a"].dtype == torch.bfloat16
    assert tree["b"].numel() == 0 and tree["c"] is None
    assert isinstance(tree["d"], Pair) and tree["d"].second == [None]
    assert math.isfinite(float(tree["d"].first.sum()))

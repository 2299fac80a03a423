"""Quantized state as a storage of the precision policy (issue 21): the policy's spellings give
the quantized aliases' numbers, a policy around a quantized state keeps its codes and scales,
Kahan and stochastic rounding compose with quantized moments, and a float torch.optim
checkpoint converts into quantized state explicitly."""

from __future__ import annotations

import io
import warnings

import optree
import pytest
import torch

import functional_optim as fo
import functional_optim.optim as foo

BF16 = torch.bfloat16
Q8 = dict(bits=8, block_size=16, min_size=8)


def _problem(steps: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(6, 20, generator=g, dtype=dtype),
              "b": torch.randn(5, generator=g, dtype=dtype)}
    grads = [{k: torch.randn(p.shape, generator=g, dtype=dtype) for k, p in params.items()}
             for _ in range(steps)]
    return params, grads


def _run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
        params = fo.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("spelling", ["fields", "default"])
def test_the_policy_with_quantized_storage_is_adamw_8bit(spelling):
    """``with_state_dtype(adamw(), mu=q8, nu=q8)`` (and the storage as the default, the
    unsigned map for ``nu`` by its name) is ``adamw_8bit``, exactly: one mechanism."""
    params, grads = _problem(6)
    kw = dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    q8 = fo.QuantizedStorage(**Q8)
    tx = fo.with_state_dtype(fo.adamw(**kw), mu=q8, nu=q8) if spelling == "fields" else \
        fo.with_state_dtype(fo.adamw(**kw), q8)
    got, state = _run(tx, params, grads)
    expected, _ = _run(fo.adamw_8bit(**kw, block_size=16, min_size=8), params, grads)
    adam = state.inner["adam"]
    assert adam.mu["w"].codes.dtype == torch.int8 and adam.nu["w"].codes.dtype == torch.uint8
    assert adam.mu["b"].dtype == torch.float64  # (5 elements: under min_size)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_int8_and_int4_spellings():
    assert isinstance(fo.transforms.storage.storage("int8"), fo.QuantizedStorage)
    params = {"w": torch.randn(64, 64)}
    tx = fo.with_state_dtype(fo.adamw(lr=0.01), "int4")
    _, state = _run(tx, params, [{"w": torch.randn(64, 64)}])
    assert state.inner["adam"].mu["w"].codes.numel() == 64 * 64 // 2
    with pytest.raises(fo.HParamError, match=r"mu: expected a floating torch.dtype, one of .*"
                                             r"'int8'.*got 'int3'"):
        fo.with_state_dtype(fo.adamw(), mu="int3")


def test_a_policy_around_a_quantized_state_keeps_its_scales_float32():
    """A bfloat16 policy around ``adamw_8bit`` passes each Quantized through whole (regression:
    the walk went into the pair and stored the block maxima in bfloat16)."""
    params = {"w": torch.randn(40, dtype=BF16)}
    tx = fo.precision(fo.adamw_8bit(lr=0.01, block_size=8, min_size=0), BF16,
                      stochastic_rounding=True)
    _, state = _run(tx, params, [{"w": torch.randn(40, dtype=BF16)}] * 2)
    pairs = optree.tree_leaves(state, is_leaf=lambda x: isinstance(x, fo.Quantized))
    pairs = [q for q in pairs if isinstance(q, fo.Quantized)]
    assert len(pairs) == 2  # (mu and nu)
    for q in pairs:
        assert q.absmax.dtype == torch.float32 and q.codes.dtype in (torch.int8, torch.uint8)


def test_kahan_with_quantized_moments_carries_what_rounding_dropped():
    """Kahan's invariant on bfloat16 parameters with 8-bit moments: the parameter plus its
    (float32) compensation is the float32 run of ``adamw_8bit`` (no weight decay: the updates
    do not read the parameters); plain rounding drifts away from it."""
    params, grads = _problem(15, torch.float32)
    inner = fo.adamw_8bit(lr=1e-3, weight_decay=0.0, block_size=16, min_size=0)
    low = {k: v.to(BF16) for k, v in params.items()}
    grads = [{k: g.to(BF16) for k, g in gs.items()} for gs in grads]
    exact, _ = _run(inner, {k: v.float() for k, v in low.items()},
                    [{k: g.float() for k, g in gs.items()} for gs in grads])
    kahan, state = _run(fo.precision(inner, params="kahan", param_dtype=torch.float32), low,
                        grads)
    rounded, _ = _run(fo.precision(inner), low, grads)
    for k in exact:
        total = kahan[k].float() + state.params.compensation[k]
        torch.testing.assert_close(total, exact[k], rtol=1e-6, atol=1e-7)
        assert (rounded[k].float() - exact[k]).abs().max() > \
            10 * (total - exact[k]).abs().max()


def test_drop_in_use_precision_with_quantized_storage_is_the_8bit_class():
    """``AdamW(...).use_precision(mu=q8, nu=q8)`` steps as ``AdamW8bit`` (float32 parameters:
    the same compute dtype), its state under torch's names: ``exp_avg.codes``."""
    params, grads = _problem(4, torch.float32)
    make = dict(lr=0.01, weight_decay=0.1)
    q8 = fo.QuantizedStorage(**Q8)
    runs = []
    for opt_of in (lambda ps: foo.AdamW(ps, **make).use_precision(mu=q8, nu=q8),
                   lambda ps: foo.AdamW8bit(ps, **make, block_size=16, min_size=8)):
        ps = [torch.nn.Parameter(v.clone()) for v in params.values()]
        opt = opt_of(ps)
        for g in grads:
            for p, gv in zip(ps, g.values()):
                p.grad = gv.clone()
            opt.step()
        runs.append((ps, opt))
    (ps, opt), (ps8, _) = runs
    for p, q in zip(ps, ps8):
        assert torch.equal(p, q)
    state = opt.state_dict()["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["exp_avg"]["codes"].dtype == torch.int8
    assert state["exp_avg_sq"]["absmax"].dtype == torch.float32


def test_float_torch_checkpoint_into_quantized_state_converts_explicitly():
    """A float32 torch.optim.AdamW checkpoint loads into ``AdamW(...).use_precision("int8")``
    through the storage's encode (each moment to its nearest codes), with the bfloat16 rule's
    warning naming the keys (regression: the spelling did not exist, and quantized state
    refused float checkpoints); the converted state round-trips through ``torch.save``."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 128))
    plain = torch.optim.AdamW([w], lr=0.01)
    w.grad = torch.randn_like(w)
    plain.step()
    saved = plain.state_dict()
    opt = foo.AdamW([w], lr=0.01).use_precision("int8")
    with pytest.warns(UserWarning, match=r"exp_avg torch.float32 -> 8-bit codes.*"
                                         r"exp_avg_sq torch.float32 -> 8-bit codes"):
        opt.load_state_dict(saved)
    mu = fo.transforms.quantize(saved["state"][0]["exp_avg"], 8, 256, signed=True)
    nu = fo.transforms.quantize(saved["state"][0]["exp_avg_sq"], 8, 256, signed=False)
    state = opt.state[w]
    assert torch.equal(state["exp_avg"]["codes"], mu.codes)
    assert torch.equal(state["exp_avg"]["absmax"], mu.absmax)
    assert torch.equal(state["exp_avg_sq"]["codes"], nu.codes)
    w.grad = torch.randn_like(w)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    again = foo.AdamW([torch.nn.Parameter(w.detach().clone())], lr=0.01).use_precision("int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.load_state_dict(torch.load(buffer))
    assert torch.equal(next(iter(again.state.values()))["exp_avg"]["codes"],
                       state["exp_avg"]["codes"])



@pytest.mark.parametrize("name", ["adamw_8bit", "int8_around_adamw", "bf16_kahan"])
def test_donated_updates_give_the_pure_numbers(name):
    """``update(..., donate=True)`` through the policy's mechanism (both paths, quantized and
    cast storages) gives the pure update's numbers and state."""
    make = {"adamw_8bit": lambda: fo.adamw_8bit(lr=0.01, block_size=16, min_size=8),
            "int8_around_adamw": lambda: fo.with_state_dtype(fo.adamw(lr=0.01),
                                                              fo.QuantizedStorage(**Q8)),
            "bf16_kahan": lambda: fo.precision(fo.adamw(lr=0.01), BF16, params="kahan",
                                               stochastic_rounding=True)}[name]
    params, grads = _problem(3, torch.float32)
    expected = _run(make(), params, grads)
    tx = make()
    p, state = {k: v.clone() for k, v in params.items()}, tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, p, donate=True)
        p = fo.apply_updates(p, u)
    leaves = optree.tree_leaves((p, state))
    assert len(leaves) == len(optree.tree_leaves(expected))
    for a, b in zip(leaves, optree.tree_leaves(expected)):
        assert a.dtype == b.dtype and torch.equal(a, b), name

"""The classic algorithms' blocks as pointwise rules (``Transform.pointwise``): their aliases'
chains fuse into one rule on the multi-tensor path, with the per-leaf path's numbers."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from functional_optim import _execute

ALIASES = [
    (fo.adadelta, dict(weight_decay=0.1, maximize=True)),
    (fo.adamax, dict(weight_decay=0.1, maximize=True)),
    (fo.nadam, dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    (fo.radam, dict(weight_decay=0.1, maximize=True)),
    (fo.rmsprop, dict(momentum=0.5, centered=True, weight_decay=0.1, maximize=True)),
    (fo.rprop, dict(maximize=True)),
    (fo.asgd, dict(weight_decay=0.1, t0=2, maximize=True)),
]


def _trees(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen, dtype=torch.float64)
            for name, shape in (("w", (4, 3)), ("b", (3,)), ("s", ()))}


@pytest.mark.parametrize("make,kwargs", ALIASES, ids=lambda x: getattr(x, "__name__", ""))
def test_alias_chain_is_one_pointwise_rule_with_the_per_leaf_numbers(make, kwargs):
    tx = make(**kwargs)
    assert tx.pointwise is not None
    params = _trees()
    results = []
    for multi in (False, True):
        p, state = dict(params), tx.init(params)
        for step in range(4):
            grads = _trees(step + 1)
            with torch.no_grad(), _execute.multi_tensor(multi):
                updates, state = tx.update(grads, state, p)
            p = fo.apply_updates(p, updates)
        results.append(p)
    for name in params:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=0, atol=0)


def test_alias_pointwise_prepare_takes_the_flat_hparams():
    """An alias's spec resolves its flat hparams and runs its inner chain's spec (it called
    itself with the inner hparams: 'unknown hyperparameter(s)')."""
    tx = fo.rmsprop(lr=0.1, momentum=0.5)
    params = _trees()
    call = tx.pointwise.prepare(_trees(1), tx.init(params), params, {"lr": 0.2})
    assert call.hparams[-1] == {"lr": -0.2}


def _as_tensors(h: dict) -> dict:
    """Every float hyperparameter (and float pair) as a 0-d float64 tensor."""
    def tensor(x):
        return torch.tensor(x, dtype=torch.float64) if isinstance(x, float) else x
    return {k: tuple(map(tensor, v)) if isinstance(v, tuple) else tensor(v) for k, v in h.items()}


@pytest.mark.parametrize("make,kwargs", ALIASES + [
    (fo.optax_nadam, dict(weight_decay=0.1, mu_dtype=torch.float32)),
    (fo.optax_rmsprop, dict(weight_decay=0.1, centered=True, bias_correction=True)),
    (fo.optax_radam, dict(weight_decay=0.1, nesterov=True)),
], ids=lambda x: getattr(x, "__name__", ""))
def test_tensor_hparams_keep_the_donated_update_readable(make, kwargs):
    """With tensor hyperparameters, a rule that squares its input (``ema_square``) or mixes it
    into a moment and reads it again got the fused run's donated update (the decay's or
    maximize's fresh result) overwritten in place by the first op: 'a donated state was read
    after its in-place update'. The multi-tensor path gives the per-leaf numbers."""
    tx = make(**kwargs)
    h = _as_tensors(tx.hparams)
    params = _trees()
    results = []
    for multi in (False, True):
        p, state = dict(params), tx.init(params)
        for step in range(3):
            with torch.no_grad(), _execute.multi_tensor(multi):
                updates, state = tx.update(_trees(step + 1), state, p, h)
            p = fo.apply_updates(p, updates)
        results.append(p)
    for name in params:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=1e-14, atol=0)


@pytest.mark.parametrize("second", [lambda: fo.scale_by_rms(centered=True), fo.scale_by_adam],
                         ids=["rms", "adam"])
def test_fused_run_hands_on_updates_in_the_leaf_dtype(second):
    """A fused run hands each rule's update to the next in the leaf's dtype, as the unfused
    chain does: momentum's 0-d float64 coefficients promoted a 0-d float32 leaf's update, which
    the next rule's lerp refused (regression: the multi-tensor path raised)."""
    tx = fo.chain(fo.trace(0.9), second())
    params = {k: v.float() for k, v in _trees().items()}
    results = []
    for multi in (False, True):
        state = tx.init(params)
        for step in range(3):
            grads = {k: v.float() for k, v in _trees(step + 1).items()}
            with torch.no_grad(), _execute.multi_tensor(multi):
                updates, state = tx.update(grads, state, params)
        results.append(updates)
    for k in params:
        assert results[1][k].dtype == torch.float32
        torch.testing.assert_close(results[1][k], results[0][k], rtol=1e-6, atol=1e-7)
